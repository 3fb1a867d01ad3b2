//! The pod's status as kubelet reports it: phase, conditions and a status per container.

use serde_json::{Value, json};

use super::Worker;
use super::state::{Attempt, Ctr};
use crate::beneath::{self, Resolve};

fn terminated(a: &Attempt, runtime: &str) -> Option<Value> {
    let e = a.exit.as_ref()?;
    let mut t = json!({
        "exitCode": e.exit_code, "reason": e.reason, "startedAt": a.started_at, "finishedAt": e.finished_at,
        "containerID": format!("{runtime}://{}", a.id),
    });
    if let Some(s) = e.signal {
        t["signal"] = json!(s);
    }
    if !e.message.is_empty() {
        t["message"] = json!(e.message);
    }
    Some(t)
}

fn container_status(c: &Ctr, runtime: &str, image: &str, termination_message: Option<String>) -> Value {
    let mut s = json!({
        "name": c.name, "image": image, "imageID": c.current.as_ref().map(|a| a.image_id.clone()).unwrap_or_default(),
        "ready": c.ready && c.running(), "restartCount": c.restart_count(), "started": c.running() && c.started,
        "state": {}, "lastState": {},
    });
    if let Some(a) = &c.current {
        s["containerID"] = json!(format!("{runtime}://{}", a.id));
    }
    if let Some((reason, message)) = c.waiting.as_ref().filter(|_| !c.running()) {
        s["state"] = json!({"waiting": {"reason": reason, "message": message}});
        if let Some(t) = c.current.as_ref().and_then(|a| terminated(a, runtime)) {
            s["lastState"] = json!({"terminated": t});
        }
    } else if let Some(a) = &c.current {
        match terminated(a, runtime) {
            Some(mut t) => {
                if let Some(m) = termination_message.filter(|m| !m.is_empty()) {
                    t["message"] = json!(m);
                }
                s["state"] = json!({"terminated": t});
            }
            None => s["state"] = json!({"running": {"startedAt": a.started_at}}),
        }
        if let Some(t) = c.previous.as_ref().and_then(|a| terminated(a, runtime)) {
            s["lastState"] = json!({"terminated": t});
        }
    } else {
        s["state"] = json!({"waiting": {"reason": "ContainerCreating"}});
    }
    s
}

pub fn pod_status(w: &mut Worker) -> Value {
    let policy = w.restart_policy();
    let inits: Vec<&Ctr> = w.ctrs.iter().filter(|c| c.init).collect();
    let mains: Vec<&Ctr> = w.ctrs.iter().filter(|c| !c.init && !c.ephemeral).collect();
    let ephemerals: Vec<&Ctr> = w.ctrs.iter().filter(|c| c.ephemeral).collect();
    let init_done = inits.iter().all(|c| c.exited().is_some_and(|e| e.exit_code == 0));
    let init_failed = policy == "Never" && inits.iter().any(|c| c.exited().is_some_and(|e| e.exit_code != 0));
    let will_restart = |c: &Ctr| match c.exited() {
        None => true,
        Some(e) => match policy.as_str() {
            "Never" => false,
            "OnFailure" => e.exit_code != 0,
            _ => true,
        },
    };
    let phase = if init_failed {
        "Failed"
    } else if !init_done || mains.iter().all(|c| c.current.is_none()) {
        "Pending"
    } else if mains.iter().any(|c| c.running() || will_restart(c)) {
        "Running"
    } else if mains.iter().all(|c| c.exited().is_some_and(|e| e.exit_code == 0)) {
        "Succeeded"
    } else {
        "Failed"
    };
    let all_ready = !mains.is_empty() && mains.iter().all(|c| c.ready && c.running());
    let term_msg = |c: &Ctr| {
        let a = c.current.as_ref()?;
        // The pod writes this file: read at most kubelet's 4096 bytes of it, and only a file.
        let bundle = beneath::open_dir(&super::attempt_bundle(&w.run_dir, &w.dir, &c.name, a.number)).ok()?;
        let bytes = beneath::read(
            &bundle,
            std::path::Path::new("termination-log"),
            Resolve::NoSymlinks,
            4096,
            true,
        )
        .ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    };
    let image_of = |name: &str| w.spec_of(name).and_then(|c| c.image).unwrap_or_default();
    let runtime = w.runtime();
    let runtime = runtime.name();
    let init_statuses: Vec<Value> = inits
        .iter()
        .map(|c| container_status(c, runtime, &image_of(&c.name), term_msg(c)))
        .collect();
    let statuses: Vec<Value> = mains
        .iter()
        .map(|c| container_status(c, runtime, &image_of(&c.name), term_msg(c)))
        .collect();
    let ephemeral_statuses: Vec<Value> = ephemerals
        .iter()
        .map(|c| {
            let mut s = container_status(c, runtime, &image_of(&c.name), term_msg(c));
            // Ephemeral containers have no probes and no readiness of their own.
            if let Some(o) = s.as_object_mut() {
                o.remove("started");
                o.insert("ready".into(), json!(false));
            }
            s
        })
        .collect();
    let not_ready: Vec<String> = mains
        .iter()
        .filter(|c| !(c.ready && c.running()))
        .map(|c| c.name.clone())
        .collect();
    let reason_for = |ok: bool| {
        if ok {
            (None, None)
        } else {
            (
                Some("ContainersNotReady"),
                Some(format!("containers with unready status: [{}]", not_ready.join(" "))),
            )
        }
    };
    let conds = [
        ("PodReadyToStartContainers", w.sandbox_ready, (None, None)),
        (
            "Initialized",
            init_done,
            if init_done {
                (None, None)
            } else {
                (
                    Some("ContainersNotInitialized"),
                    Some("containers with incomplete status".to_string()),
                )
            },
        ),
        ("Ready", all_ready, reason_for(all_ready)),
        ("ContainersReady", all_ready, reason_for(all_ready)),
        ("PodScheduled", true, (None, None)),
    ];
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut conditions = Vec::new();
    for (kind, ok, (reason, message)) in conds {
        let value = if ok { "True" } else { "False" };
        let entry = w
            .transitions
            .entry(kind.to_string())
            .or_insert_with(|| (value.to_string(), now.clone()));
        if entry.0 != value {
            *entry = (value.to_string(), now.clone());
        }
        let mut c = json!({"type": kind, "status": value, "lastProbeTime": null, "lastTransitionTime": entry.1});
        if let Some(r) = reason {
            c["reason"] = json!(r);
        }
        if let Some(m) = message {
            c["message"] = json!(m);
        }
        conditions.push(c);
    }
    let phase = if w.evicted.is_some() { "Failed" } else { phase };
    let start = w
        .pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0.to_string());
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": w.ctx.host_ip, "hostIPs": [{"ip": w.ctx.host_ip}],
        "startTime": start.unwrap_or_else(|| w.transitions.get("PodScheduled").map(|t| t.1.clone()).unwrap_or_default()),
        "containerStatuses": statuses,
        "qosClass": w.pod.status.as_ref().and_then(|s| s.qos_class.clone()).unwrap_or_else(|| "BestEffort".into()),
    });
    if !init_statuses.is_empty() {
        status["initContainerStatuses"] = json!(init_statuses);
    }
    if !ephemeral_statuses.is_empty() {
        status["ephemeralContainerStatuses"] = json!(ephemeral_statuses);
    }
    if let Some(why) = &w.evicted {
        status["reason"] = json!("Evicted");
        status["message"] = json!(why);
    }
    if !w.pod_ip.is_empty() {
        status["podIP"] = json!(w.pod_ip);
        status["podIPs"] = json!([{"ip": w.pod_ip}]);
    }
    status
}
