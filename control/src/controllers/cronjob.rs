//! CronJob → Jobs: at each time its `schedule` names (in `timeZone`, UTC when unset), create a
//! Job from `jobTemplate`, named `<cronjob>-<minutes since the epoch>` as Kubernetes names them;
//! `concurrencyPolicy` (Allow, Forbid, Replace), `startingDeadlineSeconds`, `suspend`, and the
//! history limits for finished Jobs. Looks again at the next scheduled time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{
    Outcome, all_keys, condition_true, event, is_deleting, owned_by, owner_keys, owner_ref, split_key, str_at, time_at,
    uid,
};
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::schedule::Schedule;
use crate::store::Event;

/// The annotation a Job made by a CronJob carries: the time it was scheduled for.
const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

pub fn interested(_: &LocalClient, ev: &Event) -> Vec<String> {
    owner_keys(ev, "/batch/cronjobs/", "CronJob", "/batch/jobs/")
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    all_keys(client, "batch", "cronjobs")
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn finished(job: &Value) -> Option<bool> {
    if condition_true(job, "Complete") {
        Some(true)
    } else if condition_true(job, "Failed") {
        Some(false)
    } else {
        None
    }
}

/// The Job for the run scheduled at `at`.
fn job_for(cj: &Value, at: DateTime<Utc>) -> Value {
    let template = cj.pointer("/spec/jobTemplate").cloned().unwrap_or(json!({}));
    let mut meta = template.get("metadata").cloned().unwrap_or(json!({}));
    meta["name"] = json!(format!("{}-{}", str_at(cj, "/metadata/name"), at.timestamp() / 60));
    meta["ownerReferences"] = json!([owner_ref("batch/v1", "CronJob", cj)]);
    meta["annotations"][SCHEDULED_AT] = json!(rfc3339(at));
    if let Some(m) = meta.as_object_mut() {
        m.remove("namespace");
        m.remove("generateName");
    }
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
        "spec": template.get("spec").cloned().unwrap_or(json!({}))})
}

fn job_ref(job: &Value) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job", "namespace": str_at(job, "/metadata/namespace"),
        "name": str_at(job, "/metadata/name"), "uid": uid(job),
        "resourceVersion": str_at(job, "/metadata/resourceVersion")})
}

pub async fn reconcile(client: LocalClient, key: String) -> Outcome {
    let cjs = client.served("batch", "cronjobs");
    let jobs_res = client.served("batch", "jobs");
    let (ns, name) = split_key(&key);
    let Some(cj) = client.get(&cjs, ns, name) else {
        return Ok(None);
    };
    if is_deleting(&cj.obj) {
        return Ok(None);
    }
    let c = &*cj.obj;
    let cj_uid = uid(c).to_string();
    let jobs = client.list(&jobs_res, ns, &|j| owned_by(j, &cj_uid));
    let mut jobs: Vec<&Value> = jobs.iter().map(|s| &*s.obj).filter(|j| !is_deleting(j)).collect();
    let now = Utc::now();
    let old_status = c.get("status").cloned().unwrap_or(json!({}));
    let mut status = old_status.clone();

    let schedule = match Schedule::parse(
        str_at(c, "/spec/schedule"),
        c.pointer("/spec/timeZone").and_then(Value::as_str),
    ) {
        Ok(s) => s,
        Err(why) => {
            event(&client, c, "Warning", "InvalidSchedule", &why, "cronjob-controller").await;
            return Ok(None);
        }
    };

    // Finished Jobs beyond the history limits go, oldest first.
    jobs.sort_by_key(|j| str_at(j, "/metadata/creationTimestamp").to_string());
    for (outcome, limit) in [
        (
            true,
            c.pointer("/spec/successfulJobsHistoryLimit")
                .and_then(Value::as_i64)
                .unwrap_or(3),
        ),
        (
            false,
            c.pointer("/spec/failedJobsHistoryLimit")
                .and_then(Value::as_i64)
                .unwrap_or(1),
        ),
    ] {
        let done: Vec<&Value> = jobs.iter().copied().filter(|j| finished(j) == Some(outcome)).collect();
        let extra = done.len().saturating_sub(limit.max(0) as usize);
        for j in &done[..extra] {
            client
                .delete(&jobs_res, ns, str_at(j, "/metadata/name"), Some("Background"))
                .await?;
        }
    }
    let active: Vec<&Value> = jobs.iter().copied().filter(|j| finished(j).is_none()).collect();
    if let Some(last) = jobs
        .iter()
        .filter(|j| finished(j) == Some(true))
        .filter_map(|j| time_at(j, "/status/completionTime"))
        .max()
    {
        status["lastSuccessfulTime"] = json!(rfc3339(last));
    }
    let mut active_refs: Vec<Value> = active.iter().map(|j| job_ref(j)).collect();

    let suspended = c.pointer("/spec/suspend") == Some(&json!(true));
    let since = time_at(&status, "/lastScheduleTime")
        .or_else(|| time_at(c, "/metadata/creationTimestamp"))
        .unwrap_or(now);
    let due = schedule.latest(now).filter(|t| *t > since);
    if let (Some(at), false) = (due, suspended) {
        let late = (now - at).num_seconds();
        let deadline = c.pointer("/spec/startingDeadlineSeconds").and_then(Value::as_i64);
        let policy = c
            .pointer("/spec/concurrencyPolicy")
            .and_then(Value::as_str)
            .unwrap_or("Allow");
        if deadline.is_some_and(|d| late > d) {
            let msg = format!("Missed scheduled time to start a job: {}", rfc3339(at));
            event(&client, c, "Warning", "MissSchedule", &msg, "cronjob-controller").await;
            status["lastScheduleTime"] = json!(rfc3339(at));
        } else if policy == "Forbid" && !active.is_empty() {
            // Skipped until the running Job ends; the run is not made up later.
            tracing::debug!(cronjob = %key, "a Job is still running: this run is skipped");
        } else {
            if policy == "Replace" {
                for j in &active {
                    client
                        .delete(&jobs_res, ns, str_at(j, "/metadata/name"), Some("Background"))
                        .await?;
                }
                active_refs.clear();
            }
            match client.create(&jobs_res, ns, job_for(c, at)).await {
                Ok(job) => {
                    let msg = format!("Created job {}", str_at(&job, "/metadata/name"));
                    event(&client, c, "Normal", "SuccessfulCreate", &msg, "cronjob-controller").await;
                    active_refs.push(job_ref(&job));
                }
                Err(ApiError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
            status["lastScheduleTime"] = json!(rfc3339(at));
        }
    }
    if active_refs.is_empty() {
        if let Some(m) = status.as_object_mut() {
            m.remove("active");
        }
    } else {
        status["active"] = json!(active_refs);
    }
    if status != old_status {
        let mut new = c.clone();
        new["status"] = status;
        client.update_status(&cjs, &cj, new).await?;
    }
    if suspended {
        return Ok(None);
    }
    // Again just after the next scheduled time.
    Ok(schedule
        .next(now)
        .map(|t| (t - now).to_std().unwrap_or_default() + Duration::from_millis(50)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn jobs_are_named_by_their_scheduled_minute() {
        let cj = json!({"metadata": {"name": "backup", "uid": "u"}, "spec": {"jobTemplate": {
            "metadata": {"labels": {"app": "b"}}, "spec": {"template": {"spec": {"containers": []}}}}}});
        let t = Utc.with_ymd_and_hms(2026, 12, 6, 20, 5, 0).unwrap();
        let j = job_for(&cj, t);
        assert_eq!(j["metadata"]["name"], format!("backup-{}", t.timestamp() / 60));
        assert_eq!(j["metadata"]["labels"]["app"], "b");
        assert_eq!(j["metadata"]["annotations"][SCHEDULED_AT], "2026-12-06T20:05:00Z");
        assert_eq!(j["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    }
}
