//! The cells of each row, formatted as kube-apiserver's printers format them.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn int(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

pub fn name(v: &Value) -> &str {
    s(v, "/metadata/name")
}

/// Durations as kubectl shows ages: `45s`, `3m2s`, `10m`, `5h3m`, `2d3h`, `400d`, `3y10d`.
pub fn human_duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds();
    if secs < 0 {
        return "<invalid>".into();
    }
    let (m, h, days) = (secs / 60, secs / 3600, secs / 86_400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        if secs % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", secs % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{}h", h % 24)
        }
    } else if h < 24 * 365 * 2 {
        format!("{days}d")
    } else if h < 24 * 365 * 8 {
        let y = days / 365;
        if days % 365 == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{}d", days % 365)
        }
    } else {
        format!("{}y", days / 365)
    }
}

pub fn age_of(ts: &str, now: DateTime<Utc>) -> String {
    match DateTime::parse_from_rfc3339(ts) {
        Ok(t) => human_duration(now - t.with_timezone(&Utc)),
        Err(_) => "<unknown>".into(),
    }
}

pub fn age(v: &Value, now: DateTime<Utc>) -> String {
    age_of(s(v, "/metadata/creationTimestamp"), now)
}

/// The JSONPath subset CRD printer columns use: `.spec.replicas`, `.status.items[0].name`,
/// `.metadata.labels['serving\.knative\.dev/configuration']` (a quoted key, `\.` a dot) and
/// `.status.conditions[?(@.type=='Ready')].status` (the first element whose field equals).
pub fn json_path(v: &Value, path: &str) -> Option<Value> {
    let mut cur = v;
    let mut rest = path.trim();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let field = &r[..end];
            if !field.is_empty() {
                cur = cur.get(field)?;
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("[?(@.") {
            let close = r.find(")]")?;
            let (field, want) = r[..close].split_once("==")?;
            let want = want.trim().trim_matches(|c| c == '\'' || c == '"');
            cur = cur.as_array()?.iter().find(|e| match e.get(field.trim()) {
                Some(Value::String(s)) => s == want,
                Some(Value::Number(n)) => n.to_string() == want,
                Some(Value::Bool(b)) => b.to_string() == want,
                _ => false,
            })?;
            rest = &r[close + 2..];
        } else if let Some(r) = rest.strip_prefix("['").or_else(|| rest.strip_prefix("[\"")) {
            let close = r.find(['\'', '"'])?;
            let key = r[..close].replace("\\.", ".");
            cur = cur.get(key.as_str())?;
            rest = r[close + 1..].strip_prefix(']')?;
        } else if let Some(r) = rest.strip_prefix('[') {
            let close = r.find(']')?;
            cur = cur.get(r[..close].trim().parse::<usize>().ok()?)?;
            rest = &r[close + 1..];
        } else {
            return None;
        }
    }
    Some(cur.clone())
}

fn pod_status(p: &Value) -> (String, i64, Option<String>, usize, usize) {
    let mut reason = if s(p, "/status/reason").is_empty() {
        s(p, "/status/phase").to_string()
    } else {
        s(p, "/status/reason").to_string()
    };
    let total = arr(p, "/spec/containers").len();
    let mut ready = 0;
    let mut restarts = 0;
    let mut last_restart: Option<String> = None;
    let init_total = arr(p, "/spec/initContainers").len();
    let mut initializing = false;
    for (i, c) in arr(p, "/status/initContainerStatuses").iter().enumerate() {
        restarts += int(c, "/restartCount");
        let term = c.pointer("/state/terminated");
        if term.is_some_and(|t| int(t, "/exitCode") == 0) {
            continue;
        }
        initializing = true;
        reason = if let Some(t) = term {
            let r = s(t, "/reason");
            if r.is_empty() {
                format!("Init:ExitCode:{}", int(t, "/exitCode"))
            } else {
                format!("Init:{r}")
            }
        } else if let Some(w) = c
            .pointer("/state/waiting")
            .filter(|w| !s(w, "/reason").is_empty() && s(w, "/reason") != "PodInitializing")
        {
            format!("Init:{}", s(w, "/reason"))
        } else {
            format!("Init:{i}/{init_total}")
        };
        break;
    }
    if !initializing {
        let mut has_running = false;
        for c in arr(p, "/status/containerStatuses").iter().rev() {
            restarts += int(c, "/restartCount");
            if let Some(t) = c.pointer("/lastState/terminated/finishedAt").and_then(Value::as_str) {
                if last_restart.as_deref().is_none_or(|l| l < t) {
                    last_restart = Some(t.to_string());
                }
            }
            if let Some(w) = c.pointer("/state/waiting").filter(|w| !s(w, "/reason").is_empty()) {
                reason = s(w, "/reason").to_string();
            } else if let Some(t) = c.pointer("/state/terminated") {
                reason = if !s(t, "/reason").is_empty() {
                    s(t, "/reason").to_string()
                } else if t.get("signal").is_some() {
                    format!("Signal:{}", int(t, "/signal"))
                } else {
                    format!("ExitCode:{}", int(t, "/exitCode"))
                };
            } else if c.get("ready") == Some(&json!(true)) && c.pointer("/state/running").is_some() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if p.pointer("/metadata/deletionTimestamp").is_some() {
        reason = if s(p, "/status/reason") == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    (reason, restarts, last_restart, ready, total)
}

fn joined(items: impl Iterator<Item = String>, none: &str) -> String {
    let v: Vec<String> = items.filter(|x| !x.is_empty()).collect();
    if v.is_empty() { none.to_string() } else { v.join(",") }
}

/// Access modes as kubectl abbreviates them: `RWO,ROX`.
fn access_modes(modes: Option<&Value>) -> String {
    modes
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|m| match m.as_str().unwrap_or_default() {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn or_unset(s: &str) -> &str {
    if s.is_empty() { "<unset>" } else { s }
}

fn selector_string(sel: Option<&Value>) -> String {
    let Some(m) = sel
        .and_then(|s| s.get("matchLabels").or(Some(s)))
        .and_then(Value::as_object)
    else {
        return "<none>".into();
    };
    joined(
        m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())),
        "<none>",
    )
}

pub fn cells(group: &str, kind: &str, v: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let name = json!(name(v));
    let age = json!(age(v, now));
    match (group, kind) {
        ("", "Pod") => {
            let (status, restarts, last, ready, total) = pod_status(v);
            let restarts = match last {
                Some(t) if restarts > 0 => format!("{restarts} ({} ago)", age_of(&t, now)),
                _ => restarts.to_string(),
            };
            let gates = arr(v, "/spec/readinessGates");
            let gates = if gates.is_empty() {
                "<none>".to_string()
            } else {
                format!("0/{}", gates.len())
            };
            let or_none = |x: &str| {
                if x.is_empty() {
                    "<none>".to_string()
                } else {
                    x.to_string()
                }
            };
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts),
                age,
                json!(or_none(s(v, "/status/podIP"))),
                json!(or_none(s(v, "/spec/nodeName"))),
                json!(or_none(s(v, "/status/nominatedNodeName"))),
                json!(gates),
            ]
        }
        ("", "Namespace") => vec![name, json!(s(v, "/status/phase")), age],
        ("", "Service") => {
            let ty = s(v, "/spec/type");
            let cluster_ip = if s(v, "/spec/clusterIP").is_empty() {
                "<none>"
            } else {
                s(v, "/spec/clusterIP")
            };
            let mut external: Vec<String> = arr(v, "/spec/externalIPs")
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect();
            let lb: Vec<String> = arr(v, "/status/loadBalancer/ingress")
                .iter()
                .map(|i| {
                    if s(i, "/ip").is_empty() {
                        s(i, "/hostname").to_string()
                    } else {
                        s(i, "/ip").to_string()
                    }
                })
                .collect();
            let ext = match ty {
                "ExternalName" => s(v, "/spec/externalName").to_string(),
                "LoadBalancer" => {
                    external.extend(lb);
                    if external.is_empty() {
                        "<pending>".into()
                    } else {
                        external.join(",")
                    }
                }
                _ => {
                    if external.is_empty() {
                        "<none>".into()
                    } else {
                        external.join(",")
                    }
                }
            };
            let ports = joined(
                arr(v, "/spec/ports").iter().map(|p| {
                    let proto = if s(p, "/protocol").is_empty() {
                        "TCP"
                    } else {
                        s(p, "/protocol")
                    };
                    match p.get("nodePort").and_then(Value::as_i64) {
                        Some(np) if np > 0 => format!("{}:{np}/{proto}", int(p, "/port")),
                        _ => format!("{}/{proto}", int(p, "/port")),
                    }
                }),
                "<none>",
            );
            vec![
                name,
                json!(ty),
                json!(cluster_ip),
                json!(ext),
                json!(ports),
                age,
                json!(selector_string(v.pointer("/spec/selector"))),
            ]
        }
        ("", "Endpoints") => {
            let mut list = Vec::new();
            for sub in arr(v, "/subsets") {
                for a in arr(sub, "/addresses") {
                    let ports = arr(sub, "/ports");
                    if ports.is_empty() {
                        list.push(s(a, "/ip").to_string());
                    }
                    for p in ports {
                        list.push(format!("{}:{}", s(a, "/ip"), int(p, "/port")));
                    }
                }
            }
            let shown = if list.len() > 3 {
                format!("{} + {} more...", list[..3].join(","), list.len() - 3)
            } else {
                joined(list.into_iter(), "<none>")
            };
            vec![name, json!(shown), age]
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            let ports = joined(arr(v, "/ports").iter().map(|p| int(p, "/port").to_string()), "<unset>");
            let addrs: Vec<String> = arr(v, "/endpoints")
                .iter()
                .flat_map(|e| arr(e, "/addresses").iter().filter_map(|a| a.as_str().map(String::from)))
                .collect();
            let shown = if addrs.len() > 3 {
                format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
            } else {
                joined(addrs.into_iter(), "<unset>")
            };
            vec![name, json!(s(v, "/addressType")), json!(ports), json!(shown), age]
        }
        ("", "ConfigMap") => {
            let n = v.get("data").and_then(Value::as_object).map(|m| m.len()).unwrap_or(0)
                + v.get("binaryData")
                    .and_then(Value::as_object)
                    .map(|m| m.len())
                    .unwrap_or(0);
            vec![name, json!(n), age]
        }
        ("", "Secret") => vec![
            name,
            json!(s(v, "/type")),
            json!(v.get("data").and_then(Value::as_object).map(|m| m.len()).unwrap_or(0)),
            age,
        ],
        ("", "Node") => {
            let conds = arr(v, "/status/conditions");
            let ready = conds.iter().find(|c| s(c, "/type") == "Ready");
            let mut status = match ready.map(|c| s(c, "/status")) {
                Some("True") => "Ready".to_string(),
                Some(_) => "NotReady".to_string(),
                None => "Unknown".to_string(),
            };
            if v.pointer("/spec/unschedulable") == Some(&json!(true)) {
                status.push_str(",SchedulingDisabled");
            }
            let roles = joined(
                v.pointer("/metadata/labels")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/").map(String::from)),
                "<none>",
            );
            let addr = |t: &str| {
                arr(v, "/status/addresses")
                    .iter()
                    .find(|a| s(a, "/type") == t)
                    .map(|a| s(a, "/address").to_string())
                    .unwrap_or_else(|| "<none>".into())
            };
            vec![
                name,
                json!(status),
                json!(roles),
                age,
                json!(s(v, "/status/nodeInfo/kubeletVersion")),
                json!(addr("InternalIP")),
                json!(addr("ExternalIP")),
                json!(s(v, "/status/nodeInfo/osImage")),
                json!(s(v, "/status/nodeInfo/kernelVersion")),
                json!(s(v, "/status/nodeInfo/containerRuntimeVersion")),
            ]
        }
        ("", "Event") => {
            let last = [
                s(v, "/lastTimestamp"),
                s(v, "/eventTime"),
                s(v, "/metadata/creationTimestamp"),
            ]
            .into_iter()
            .find(|t| !t.is_empty())
            .unwrap_or_default();
            let obj = format!(
                "{}/{}",
                s(v, "/involvedObject/kind").to_ascii_lowercase(),
                s(v, "/involvedObject/name")
            );
            vec![
                json!(age_of(last, now)),
                json!(s(v, "/type")),
                json!(s(v, "/reason")),
                json!(obj),
                json!(s(v, "/message").trim()),
            ]
        }
        ("", "ServiceAccount") => vec![name, json!(arr(v, "/secrets").len()), age],
        ("policy", "PodDisruptionBudget") => {
            let shown = |p: &str| match v.pointer(p) {
                Some(Value::String(x)) => json!(x),
                Some(Value::Number(n)) => json!(n.to_string()),
                _ => json!("N/A"),
            };
            vec![
                name,
                shown("/spec/minAvailable"),
                shown("/spec/maxUnavailable"),
                json!(int(v, "/status/disruptionsAllowed")),
                age,
            ]
        }
        ("", "ResourceQuota") => {
            let hard = v
                .pointer("/status/hard")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let part = |limits: bool| {
                hard.iter()
                    .filter(|(k, _)| k.starts_with("limits.") == limits)
                    .map(|(k, h)| {
                        let used = v
                            .pointer(&format!("/status/used/{}", k.replace('/', "~1")))
                            .and_then(Value::as_str)
                            .unwrap_or("0");
                        format!("{k}: {used}/{}", h.as_str().unwrap_or_default())
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![name, age, json!(part(false)), json!(part(true))]
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            let reference = format!(
                "{}/{}",
                s(v, "/spec/scaleTargetRef/kind"),
                s(v, "/spec/scaleTargetRef/name")
            );
            let current = arr(v, "/status/currentMetrics");
            let targets: Vec<String> = arr(v, "/spec/metrics")
                .iter()
                .map(|m| {
                    let res = s(m, "/resource/name");
                    let now = current.iter().find(|c| s(c, "/resource/name") == res);
                    match s(m, "/resource/target/type") {
                        "Utilization" => {
                            let got = now
                                .and_then(|c| c.pointer("/resource/current/averageUtilization"))
                                .map(|u| format!("{u}%"))
                                .unwrap_or_else(|| "<unknown>".into());
                            format!(
                                "{res}: {got}/{}%",
                                m.pointer("/resource/target/averageUtilization").unwrap_or(&json!(0))
                            )
                        }
                        _ => {
                            let got = now
                                .and_then(|c| c.pointer("/resource/current/averageValue").and_then(Value::as_str))
                                .unwrap_or("<unknown>");
                            format!("{res}: {got}/{}", s(m, "/resource/target/averageValue"))
                        }
                    }
                })
                .collect();
            vec![
                name,
                json!(reference),
                json!(targets.join(", ")),
                json!(
                    v.pointer("/spec/minReplicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                        .to_string()
                ),
                json!(int(v, "/spec/maxReplicas")),
                json!(int(v, "/status/currentReplicas")),
                age,
            ]
        }
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => {
            vec![name, json!(s(v, "/metadata/creationTimestamp"))]
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            let subjects = |kind: &str| {
                let names: Vec<String> = arr(v, "/subjects")
                    .iter()
                    .filter(|x| s(x, "/kind") == kind)
                    .map(|x| match (kind, s(x, "/namespace")) {
                        ("ServiceAccount", ns) => format!("{ns}/{}", s(x, "/name")),
                        _ => s(x, "/name").to_string(),
                    })
                    .collect();
                json!(names.join(", "))
            };
            let role = format!("{}/{}", s(v, "/roleRef/kind"), s(v, "/roleRef/name"));
            vec![
                name,
                json!(role),
                age,
                subjects("User"),
                subjects("Group"),
                subjects("ServiceAccount"),
            ]
        }
        ("batch", "Job") => {
            let containers = arr(v, "/spec/template/spec/containers");
            let cond = |ty: &str| {
                arr(v, "/status/conditions")
                    .iter()
                    .any(|c| s(c, "/type") == ty && s(c, "/status") == "True")
            };
            let status = if cond("Failed") {
                "Failed"
            } else if cond("Complete") {
                "Complete"
            } else if cond("Suspended") {
                "Suspended"
            } else if cond("FailureTarget") {
                "FailureTarget"
            } else {
                "Running"
            };
            let succeeded = int(v, "/status/succeeded");
            let completions = match v.pointer("/spec/completions").and_then(Value::as_i64) {
                Some(c) => format!("{succeeded}/{c}"),
                None => {
                    let p = v.pointer("/spec/parallelism").and_then(Value::as_i64).unwrap_or(1);
                    if p > 1 {
                        format!("{succeeded}/1 of {p}")
                    } else {
                        format!("{succeeded}/1")
                    }
                }
            };
            let started = v.pointer("/status/startTime").and_then(Value::as_str);
            let ended = v.pointer("/status/completionTime").and_then(Value::as_str);
            let parse = |t: &str| DateTime::parse_from_rfc3339(t).ok().map(|t| t.with_timezone(&Utc));
            let duration = match (started.and_then(parse), ended.and_then(parse)) {
                (Some(a), Some(b)) => human_duration(b - a),
                (Some(a), None) => human_duration(now - a),
                _ => String::new(),
            };
            vec![
                name,
                json!(status),
                json!(completions),
                json!(duration),
                age,
                json!(joined(containers.iter().map(|c| s(c, "/name").to_string()), "<none>")),
                json!(joined(containers.iter().map(|c| s(c, "/image").to_string()), "<none>")),
                json!(selector_string(v.pointer("/spec/selector"))),
            ]
        }
        ("batch", "CronJob") => {
            let containers = arr(v, "/spec/jobTemplate/spec/template/spec/containers");
            let last = v
                .pointer("/status/lastScheduleTime")
                .and_then(Value::as_str)
                .map(|t| age_of(t, now))
                .unwrap_or_else(|| "<none>".into());
            vec![
                name,
                json!(s(v, "/spec/schedule")),
                json!(v.pointer("/spec/timeZone").and_then(Value::as_str).unwrap_or("<none>")),
                json!(v.pointer("/spec/suspend").and_then(Value::as_bool).unwrap_or(false)),
                json!(arr(v, "/status/active").len()),
                json!(last),
                age,
                json!(joined(containers.iter().map(|c| s(c, "/name").to_string()), "<none>")),
                json!(joined(containers.iter().map(|c| s(c, "/image").to_string()), "<none>")),
                json!(selector_string(v.pointer("/spec/jobTemplate/spec/selector"))),
            ]
        }
        ("apps", "Deployment") => {
            let desired = int(v, "/spec/replicas");
            let containers = arr(v, "/spec/template/spec/containers");
            vec![
                name,
                json!(format!("{}/{desired}", int(v, "/status/readyReplicas"))),
                json!(int(v, "/status/updatedReplicas")),
                json!(int(v, "/status/availableReplicas")),
                age,
                json!(joined(containers.iter().map(|c| s(c, "/name").to_string()), "<none>")),
                json!(joined(containers.iter().map(|c| s(c, "/image").to_string()), "<none>")),
                json!(selector_string(v.pointer("/spec/selector"))),
            ]
        }
        ("", "PersistentVolume") => {
            let claim = match (s(v, "/spec/claimRef/namespace"), s(v, "/spec/claimRef/name")) {
                (_, "") => String::new(),
                (ns, n) => format!("{ns}/{n}"),
            };
            vec![
                name,
                json!(s(v, "/spec/capacity/storage")),
                json!(access_modes(v.pointer("/spec/accessModes"))),
                json!(s(v, "/spec/persistentVolumeReclaimPolicy")),
                json!(s(v, "/status/phase")),
                json!(claim),
                json!(s(v, "/spec/storageClassName")),
                json!(or_unset(s(v, "/spec/volumeAttributesClassName"))),
                json!(s(v, "/status/reason")),
                age,
                json!(s(v, "/spec/volumeMode")),
            ]
        }
        ("", "PersistentVolumeClaim") => vec![
            name,
            json!(s(v, "/status/phase")),
            json!(s(v, "/spec/volumeName")),
            json!(s(v, "/status/capacity/storage")),
            json!(access_modes(v.pointer("/status/accessModes"))),
            json!(s(v, "/spec/storageClassName")),
            json!(or_unset(s(v, "/spec/volumeAttributesClassName"))),
            age,
            json!(s(v, "/spec/volumeMode")),
        ],
        ("storage.k8s.io", "StorageClass") => {
            let shown = if crate::admission::storage::is_default_class(v) {
                format!("{} (default)", s(v, "/metadata/name"))
            } else {
                s(v, "/metadata/name").to_string()
            };
            vec![
                json!(shown),
                json!(s(v, "/provisioner")),
                json!(s(v, "/reclaimPolicy")),
                json!(s(v, "/volumeBindingMode")),
                json!(v.get("allowVolumeExpansion").and_then(Value::as_bool).unwrap_or(false)),
                age,
            ]
        }
        ("storage.k8s.io", "CSIDriver") => {
            let flag = |p: &str| json!(v.pointer(p).and_then(Value::as_bool).unwrap_or(false));
            let tokens = joined(
                arr(v, "/spec/tokenRequests")
                    .iter()
                    .map(|t| s(t, "/audience").to_string()),
                "<unset>",
            );
            vec![
                name,
                flag("/spec/attachRequired"),
                flag("/spec/podInfoOnMount"),
                flag("/spec/storageCapacity"),
                json!(tokens),
                flag("/spec/requiresRepublish"),
                json!(joined(
                    arr(v, "/spec/volumeLifecycleModes")
                        .iter()
                        .map(|m| m.as_str().unwrap_or_default().to_string()),
                    "<none>"
                )),
                age,
            ]
        }
        ("storage.k8s.io", "CSINode") => vec![name, json!(arr(v, "/spec/drivers").len()), age],
        ("storage.k8s.io", "VolumeAttachment") => vec![
            name,
            json!(s(v, "/spec/attacher")),
            json!(s(v, "/spec/source/persistentVolumeName")),
            json!(s(v, "/spec/nodeName")),
            json!(v.pointer("/status/attached").and_then(Value::as_bool).unwrap_or(false)),
            age,
        ],
        ("apps", "StatefulSet") => {
            let containers = arr(v, "/spec/template/spec/containers");
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    int(v, "/status/readyReplicas"),
                    int(v, "/spec/replicas")
                )),
                age,
                json!(joined(containers.iter().map(|c| s(c, "/name").to_string()), "<none>")),
                json!(joined(containers.iter().map(|c| s(c, "/image").to_string()), "<none>")),
            ]
        }
        ("apps", "ControllerRevision") => {
            let owner = arr(v, "/metadata/ownerReferences")
                .iter()
                .find(|o| o.get("controller") == Some(&json!(true)))
                .map(|o| {
                    format!(
                        "{}/{}",
                        s(o, "/kind").to_lowercase() + "." + s(o, "/apiVersion").split('/').next().unwrap_or(""),
                        s(o, "/name")
                    )
                })
                .unwrap_or_else(|| "<none>".into());
            vec![name, json!(owner), json!(int(v, "/revision")), age]
        }
        ("apps", "ReplicaSet") | ("", "ReplicationController") => {
            let containers = arr(v, "/spec/template/spec/containers");
            vec![
                name,
                json!(int(v, "/spec/replicas")),
                json!(int(v, "/status/replicas")),
                json!(int(v, "/status/readyReplicas")),
                age,
                json!(joined(containers.iter().map(|c| s(c, "/name").to_string()), "<none>")),
                json!(joined(containers.iter().map(|c| s(c, "/image").to_string()), "<none>")),
                json!(selector_string(v.pointer("/spec/selector"))),
            ]
        }
        ("networking.k8s.io", "Ingress") => {
            let class = if s(v, "/spec/ingressClassName").is_empty() {
                "<none>"
            } else {
                s(v, "/spec/ingressClassName")
            };
            let hosts = joined(
                arr(v, "/spec/rules").iter().map(|r| {
                    if s(r, "/host").is_empty() {
                        "*".to_string()
                    } else {
                        s(r, "/host").to_string()
                    }
                }),
                "*",
            );
            let addr = joined(
                arr(v, "/status/loadBalancer/ingress").iter().map(|i| {
                    if s(i, "/ip").is_empty() {
                        s(i, "/hostname").to_string()
                    } else {
                        s(i, "/ip").to_string()
                    }
                }),
                "",
            );
            let ports = if arr(v, "/spec/tls").is_empty() {
                "80"
            } else {
                "80, 443"
            };
            vec![name, json!(class), json!(hosts), json!(addr), json!(ports), age]
        }
        ("networking.k8s.io", "IngressClass") => {
            let params = v
                .pointer("/spec/parameters")
                .map(|p| format!("{}/{}", s(p, "/kind"), s(p, "/name")))
                .unwrap_or_else(|| "<none>".into());
            vec![name, json!(s(v, "/spec/controller")), json!(params), age]
        }
        ("coordination.k8s.io", "Lease") => vec![name, json!(s(v, "/spec/holderIdentity")), age],
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            let duration = v
                .pointer("/spec/expirationSeconds")
                .and_then(Value::as_u64)
                .map(|secs| human_duration(chrono::Duration::seconds(secs as i64)))
                .unwrap_or_else(|| "<none>".into());
            let mut condition: Vec<String> = arr(v, "/status/conditions")
                .iter()
                .filter(|c| s(c, "/status") != "False")
                .map(|c| s(c, "/type").to_string())
                .collect();
            if !s(v, "/status/certificate").is_empty() {
                condition.push("Issued".into());
            }
            let condition = if condition.is_empty() {
                "Pending".to_string()
            } else {
                condition.join(",")
            };
            vec![
                name,
                age,
                json!(s(v, "/spec/signerName")),
                json!(s(v, "/spec/username")),
                json!(duration),
                json!(condition),
            ]
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => vec![name, json!(s(v, "/metadata/creationTimestamp"))],
        _ => vec![name, age],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn json_paths_of_crd_columns() {
        let v = json!({"metadata": {"labels": {"serving.knative.dev/configuration": "hello"}},
            "status": {"replicas": 2, "items": [{"name": "a"}],
            "conditions": [{"type": "Active", "status": "False"}, {"type": "Ready", "status": "True", "reason": "x"}]}});
        assert_eq!(json_path(&v, ".status.replicas"), Some(json!(2)));
        assert_eq!(json_path(&v, ".status.items[0].name"), Some(json!("a")));
        assert_eq!(
            json_path(&v, ".metadata.labels['serving\\.knative\\.dev/configuration']"),
            Some(json!("hello"))
        );
        assert_eq!(
            json_path(&v, ".status.conditions[?(@.type=='Ready')].status"),
            Some(json!("True"))
        );
        assert_eq!(json_path(&v, ".status.conditions[?(@.type==\"Gone\")].status"), None);
        assert_eq!(json_path(&v, ".status.missing"), None);
    }

    #[test]
    fn ages() {
        let d = |s: i64| human_duration(chrono::Duration::seconds(s));
        assert_eq!(
            [
                d(5),
                d(119),
                d(182),
                d(600),
                d(4 * 3600 + 120),
                d(20 * 3600),
                d(50 * 3600),
                d(400 * 86_400)
            ],
            ["5s", "119s", "3m2s", "10m", "4h2m", "20h", "2d2h", "400d"]
        );
    }

    #[test]
    fn pod_rows() {
        let now = at("2026-01-01T00:10:00Z");
        let crash = json!({"metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "vk"},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 5, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": {"finishedAt": "2026-01-01T00:09:30Z"}}}]}});
        let c = cells("", "Pod", &crash, now);
        assert_eq!(
            &c[..6],
            &[
                json!("p"),
                json!("1/2"),
                json!("CrashLoopBackOff"),
                json!("5 (30s ago)"),
                json!("10m"),
                json!("10.0.0.5")
            ]
        );
        let pending = json!({"metadata": {"name": "q", "creationTimestamp": "2026-01-01T00:09:55Z"}, "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Pending"}});
        let c = cells("", "Pod", &pending, now);
        assert_eq!(
            &c[..5],
            &[json!("q"), json!("0/1"), json!("Pending"), json!("0"), json!("5s")]
        );
    }

    #[test]
    fn service_and_deployment_rows() {
        let now = at("2026-01-01T00:00:30Z");
        let svc = json!({"metadata": {"name": "s", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}], "selector": {"app": "x"}}});
        assert_eq!(
            cells("", "Service", &svc, now),
            vec![
                json!("s"),
                json!("LoadBalancer"),
                json!("10.96.0.10"),
                json!("<pending>"),
                json!("80/TCP,53/UDP"),
                json!("30s"),
                json!("app=x")
            ]
        );
        let d = json!({"metadata": {"name": "d", "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "x"}},
            "template": {"spec": {"containers": [{"name": "c", "image": "i:1"}]}}}, "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        assert_eq!(
            &cells("apps", "Deployment", &d, now)[..5],
            &[json!("d"), json!("2/3"), json!(3), json!(2), json!("30s")]
        );
    }
}
