//! ASK's CronHPA (`autoscaling.alibabacloud.com/v1beta1` CronHorizontalPodAutoscaler): jobs that
//! set a workload's size on a schedule, for load known in advance (office hours, a nightly
//! batch). Each job is `{name, schedule, targetSize, runOnce}`; the schedule has six fields
//! (seconds first) as ASK's does, or five. At a job's time the target (a Deployment,
//! ReplicaSet, StatefulSet or ReplicationController) gets `targetSize` replicas; a target that
//! is a HorizontalPodAutoscaler gets `targetSize` as its floor (`minReplicas`, and `maxReplicas`
//! raised to it if lower), so the HPA still scales above it. `excludeDates` (cron expressions
//! of days, such as `* * * 1 1 *`) skip the jobs on the days they match. Each job's state is
//! in `status.conditions`, as ASK writes it: `Submitted`, `Succeed` or `Failed` with the
//! message, and `lastProbeTime` the time it last ran. A run is not made up for once its time is
//! more than a minute past (a control plane that was down does not replay the night).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{Outcome, all_keys, event, own_keys, split_key, str_at};
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::store::Event;

pub const GROUP: &str = "autoscaling.alibabacloud.com";
pub const VERSION: &str = "v1beta1";
const PLURAL: &str = "cronhorizontalpodautoscalers";
const KIND: &str = "CronHorizontalPodAutoscaler";
/// A run later than this after its time is skipped.
const STARTING_DEADLINE: i64 = 60;
/// Looked at again at least this often (a schedule edit is an event anyway).
const RESYNC: Duration = Duration::from_secs(60);

pub fn interested(_: &LocalClient, ev: &Event) -> Vec<String> {
    own_keys(ev, GROUP, PLURAL)
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    match client.lookup(GROUP, VERSION, PLURAL) {
        Some(_) => all_keys(client, GROUP, PLURAL),
        None => Vec::new(),
    }
}

/// A job's schedule: six fields (seconds first) or five.
fn schedule(text: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(text.trim())
        .map_err(|e| format!("unparseable schedule {text:?}: {e}"))
}

/// Whether `at` falls on a day one of `exclude` (cron expressions of days) matches.
fn excluded(exclude: &[Value], at: DateTime<Utc>) -> bool {
    let day = at.date_naive().and_hms_opt(0, 0, 0).map(|d| d.and_utc());
    exclude.iter().filter_map(Value::as_str).any(|e| {
        let Ok(c) = schedule(e) else { return false };
        // Any time of that day the expression matches.
        day.is_some_and(|d| {
            c.find_next_occurrence(&(d - chrono::Duration::seconds(1)), false)
                .is_ok_and(|n| n.date_naive() == d.date_naive())
        })
    })
}

/// What a job should do at `now`: run for the time it was due, or nothing, and when to look next.
fn due(
    cron: &croner::Cron,
    last: Option<DateTime<Utc>>,
    created: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let latest = cron.find_previous_occurrence(&now, true).ok();
    let next = cron.find_next_occurrence(&now, false).ok();
    let run = latest
        .filter(|t| *t >= created && last.is_none_or(|l| *t > l) && (now - *t).num_seconds() <= STARTING_DEADLINE);
    (run, next)
}

fn condition(job: &Value, state: &str, message: &str, probe: Option<DateTime<Utc>>) -> Value {
    json!({
        "name": job["name"], "jobId": job["name"],
        "schedule": job["schedule"], "targetSize": job["targetSize"], "runOnce": job["runOnce"].as_bool().unwrap_or(false),
        "state": state, "message": message,
        "lastProbeTime": probe.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    })
}

/// Set the target's size (a workload's replicas, an HPA's floor); what was set.
async fn scale(client: &LocalClient, ns: &str, target: &Value, size: i64) -> Result<String, String> {
    let kind = str_at(target, "/kind");
    let name = str_at(target, "/name");
    let (group, plural) = match (kind, super::scalable(kind)) {
        (_, Some(gp)) => gp,
        ("HorizontalPodAutoscaler", None) => ("autoscaling", "horizontalpodautoscalers"),
        (other, None) => return Err(format!("CronHPA does not scale {other:?}")),
    };
    let served = client
        .state
        .registry
        .by_plural(group, plural)
        .ok_or_else(|| format!("{kind} is not served"))?;
    let cur = client
        .get(&served, Some(ns), name)
        .ok_or_else(|| format!("{kind} {ns}/{name} not found"))?;
    let mut new = (*cur.obj).clone();
    if kind == "HorizontalPodAutoscaler" {
        new["spec"]["minReplicas"] = json!(size);
        if new.pointer("/spec/maxReplicas").and_then(Value::as_i64).unwrap_or(0) < size {
            new["spec"]["maxReplicas"] = json!(size);
        }
    } else {
        new["spec"]["replicas"] = json!(size);
    }
    client.update(&served, &cur, new).await.map_err(|e| e.to_string())?;
    Ok(format!("{kind} {name} set to {size}"))
}

pub async fn reconcile(client: LocalClient, key: String) -> Outcome {
    let Some(served) = client.lookup(GROUP, VERSION, PLURAL) else {
        return Ok(None);
    };
    let (ns, name) = split_key(&key);
    let ns = ns.unwrap_or("default").to_string();
    let Some(cur) = client.get(&served, Some(&ns), name) else {
        return Ok(None);
    };
    let obj = (*cur.obj).clone();
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        return Ok(None);
    }
    let now = Utc::now();
    let created = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or(now, |t| t.with_timezone(&Utc));
    let previous: Vec<Value> = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let exclude = obj
        .pointer("/spec/excludeDates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let target = obj.pointer("/spec/scaleTargetRef").cloned().unwrap_or(Value::Null);
    let mut conditions = Vec::new();
    let mut wake = RESYNC;
    for job in obj
        .pointer("/spec/jobs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let jname = str_at(&job, "/name").to_string();
        let before = previous.iter().find(|c| c["name"] == jname.as_str());
        let last = before
            .and_then(|c| c["lastProbeTime"].as_str())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        // The state a job had stays while the schedule and size it ran with stay.
        let same_job = before.is_some_and(|c| c["schedule"] == job["schedule"] && c["targetSize"] == job["targetSize"]);
        let kept = before.filter(|_| same_job).cloned();
        let cron = match schedule(str_at(&job, "/schedule")) {
            Ok(c) => c,
            Err(why) => {
                if kept.as_ref().is_none_or(|c| c["state"] != "Failed") {
                    event(
                        &client,
                        &obj,
                        "Warning",
                        "Failed",
                        &format!("job {jname}: {why}"),
                        "cron-hpa-controller",
                    )
                    .await;
                }
                conditions.push(condition(&job, "Failed", &why, None));
                continue;
            }
        };
        let run_once_done =
            job["runOnce"].as_bool() == Some(true) && kept.as_ref().is_some_and(|c| c["state"] == "Succeed");
        let (run, next) = due(&cron, last.filter(|_| same_job), created, now);
        if let Some(n) = next {
            let secs = (n - now).num_milliseconds().max(0) as u64;
            wake = wake.min(Duration::from_millis(secs + 50));
        }
        match run {
            Some(at) if !run_once_done && !excluded(&exclude, at) => {
                let size = job["targetSize"].as_i64().unwrap_or(0);
                match scale(&client, &ns, &target, size).await {
                    Ok(what) => {
                        let msg = format!("cron hpa job {jname} executed successfully: {what}");
                        event(&client, &obj, "Normal", "Succeed", &msg, "cron-hpa-controller").await;
                        conditions.push(condition(&job, "Succeed", &msg, Some(at)));
                    }
                    Err(why) => {
                        let msg = format!("cron hpa job {jname} failed: {why}");
                        event(&client, &obj, "Warning", "Failed", &msg, "cron-hpa-controller").await;
                        conditions.push(condition(&job, "Failed", &msg, Some(at)));
                    }
                }
            }
            Some(at) if excluded(&exclude, at) => {
                conditions.push(condition(
                    &job,
                    "Submitted",
                    "skipped: the day is in excludeDates",
                    Some(at),
                ));
            }
            _ => conditions.push(kept.unwrap_or_else(|| condition(&job, "Submitted", "", None))),
        }
    }
    let status = json!({"conditions": conditions, "scaleTargetRef": target, "excludeDates": exclude});
    if obj.get("status") != Some(&status) {
        let mut new = obj.clone();
        new["status"] = status;
        match client.update_status(&served, &cur, new).await {
            Ok(_) | Err(ApiError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(wake.max(Duration::from_millis(200))))
}

/// Install (or bring up to date) the CronHPA CRD.
pub async fn install(client: &LocalClient) -> Result<(), String> {
    client.ensure_crd(crd()).await?;
    crate::api::refresh_crds(&client.state);
    Ok(())
}

/// The CRD, with the structure ASK's has.
fn crd() -> Value {
    let job = json!({"type": "object", "required": ["name", "schedule", "targetSize"], "properties": {
        "name": {"type": "string"}, "schedule": {"type": "string"},
        "targetSize": {"type": "integer", "minimum": 0}, "runOnce": {"type": "boolean"}}});
    let target = json!({"type": "object", "required": ["kind", "name"], "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "name": {"type": "string"}}});
    let spec = json!({"type": "object", "required": ["scaleTargetRef", "jobs"], "properties": {
        "scaleTargetRef": target,
        "excludeDates": {"type": "array", "items": {"type": "string"}},
        "jobs": {"type": "array", "items": job},
    }});
    let schema = json!({"openAPIV3Schema": {"type": "object", "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
        "spec": spec,
        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
    }}});
    let columns = json!([
        {"name": "Target", "type": "string", "jsonPath": ".spec.scaleTargetRef.name"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]);
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{PLURAL}.{GROUP}"), "labels": {"app.kubernetes.io/part-of": "nodeless"}},
        "spec": {
            "group": GROUP, "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": "cronhorizontalpodautoscaler",
                "listKind": format!("{KIND}List"), "shortNames": ["cronhpa"]},
            "versions": [{
                "name": VERSION, "served": true, "storage": true, "subresources": {"status": {}},
                "additionalPrinterColumns": columns, "schema": schema,
            }],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_job_runs_once_per_time_and_not_long_after_it() {
        let every_ten = schedule("*/10 * * * * *").unwrap();
        let created = at("2026-12-07T08:00:00Z");
        let (run, next) = due(&every_ten, None, created, at("2026-12-07T08:00:12Z"));
        assert_eq!(run, Some(at("2026-12-07T08:00:10Z")));
        assert_eq!(next, Some(at("2026-12-07T08:00:20Z")));
        let (run, _) = due(&every_ten, run, created, at("2026-12-07T08:00:15Z"));
        assert_eq!(run, None, "the 08:00:10 run was made");
        let daily = schedule("0 0 9 * * *").unwrap();
        let (run, _) = due(&daily, None, at("2026-12-01T00:00:00Z"), at("2026-12-07T09:05:00Z"));
        assert_eq!(run, None, "five minutes late is too late");
        let (run, _) = due(&daily, None, at("2026-12-07T09:00:30Z"), at("2026-12-07T09:00:40Z"));
        assert_eq!(run, None, "not for a time before the CronHPA existed");
        assert!(schedule("0 9 * * *").is_ok(), "five fields too");
        assert!(schedule("every day").is_err());
    }

    #[test]
    fn excluded_days_match_by_day() {
        // 2026-12-07 is a Monday (day of week 1).
        let mondays = vec![json!("* * * * * 1")];
        assert!(excluded(&mondays, at("2026-12-07T09:00:00Z")));
        assert!(!excluded(&mondays, at("2026-12-08T09:00:00Z")));
        let christmas = vec![json!("* * * 25 12 *")];
        assert!(excluded(&christmas, at("2026-12-25T23:00:00Z")));
    }
}
