//! Job → Pods: run pods from the template until `completions` of them succeed (or, with no
//! `completions`, until one does and the others end), at most `parallelism` at once; replace
//! failed pods after a back-off (10 s doubling to 6 min, as Kubernetes) until `backoffLimit`;
//! `podFailurePolicy` rules, `activeDeadlineSeconds`, `suspend`, Indexed completion and
//! `ttlSecondsAfterFinished`. Conditions and status as the Kubernetes Job controller writes them.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{
    Outcome, all_keys, event, is_deleting, owned_by, owner_keys, owner_ref, pod_active, pod_ready, split_key, str_at,
    time_at, uid,
};
use crate::api::error::ApiError;
use crate::api::local::LocalClient;
use crate::store::Event;

/// The label every pod of a Job carries (and the Job's default selector), with the Job's uid.
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// An Indexed Job's pods carry their index as this annotation and label.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// A failed pod is replaced after 10 s, doubling with each failure, at most 6 min.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);

pub fn interested(_: &LocalClient, ev: &Event) -> Vec<String> {
    owner_keys(ev, "/batch/jobs/", "Job", "/core/pods/")
}

pub fn resync(client: &LocalClient) -> Vec<String> {
    all_keys(client, "batch", "jobs")
}

fn int(v: &Value, ptr: &str) -> Option<i64> {
    v.pointer(ptr).and_then(Value::as_i64)
}

fn now_rfc3339() -> String {
    crate::api::objects::now_rfc3339()
}

/// The condition of `ty` on a status, if any.
fn condition<'a>(status: &'a Value, ty: &str) -> Option<&'a Value> {
    status
        .get("conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type") == Some(&json!(ty)))
}

fn condition_is_true(status: &Value, ty: &str) -> bool {
    condition(status, ty).is_some_and(|c| c.get("status") == Some(&json!("True")))
}

/// Set a condition, keeping its transition time when its status does not change.
fn set_condition(status: &mut Value, ty: &str, on: bool, reason: &str, message: &str) {
    let now = now_rfc3339();
    let want = if on { "True" } else { "False" };
    if !status.get("conditions").is_some_and(Value::is_array) {
        status["conditions"] = json!([]);
    }
    let conds = status["conditions"].as_array_mut().expect("set above");
    if let Some(c) = conds.iter_mut().find(|c| c.get("type") == Some(&json!(ty))) {
        if c.get("status") != Some(&json!(want)) {
            c["lastTransitionTime"] = json!(now);
        }
        c["status"] = json!(want);
        c["reason"] = json!(reason);
        c["message"] = json!(message);
        c["lastProbeTime"] = json!(now);
    } else {
        conds.push(json!({"type": ty, "status": want, "reason": reason, "message": message,
            "lastProbeTime": now, "lastTransitionTime": now}));
    }
}

/// The index of an Indexed Job's pod.
fn index_of(pod: &Value) -> Option<i64> {
    pod.pointer("/metadata/annotations")
        .and_then(|a| a.get(COMPLETION_INDEX))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

/// `1,3-5,7` from a set of indexes, as `status.completedIndexes` writes them.
pub fn compress_indexes(set: &BTreeSet<i64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().unwrap_or(end);
        }
        out.push(if end == start {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// What a rule of `podFailurePolicy` does with a failed pod.
#[derive(Debug, PartialEq)]
enum OnFailure {
    FailJob(String),
    Ignore,
    Count,
}

/// The first `podFailurePolicy` rule a failed pod matches decides; none matching counts it.
fn failure_action(job: &Value, pod: &Value) -> OnFailure {
    let rules = job
        .pointer("/spec/podFailurePolicy/rules")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for (i, rule) in rules.iter().enumerate() {
        let matched = if let Some(codes) = rule.get("onExitCodes") {
            let container = codes.get("containerName").and_then(Value::as_str);
            let values: Vec<i64> = codes
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_i64)
                .collect();
            let in_values = codes.get("operator") != Some(&json!("NotIn"));
            statuses.iter().find_map(|s| {
                if container.is_some_and(|c| s.get("name").and_then(Value::as_str) != Some(c)) {
                    return None;
                }
                let code = s.pointer("/state/terminated/exitCode").and_then(Value::as_i64)?;
                // Exit code 0 never matches: the container succeeded.
                (code != 0 && values.contains(&code) == in_values).then_some(code)
            })
        } else if let Some(conds) = rule.get("onPodConditions").and_then(Value::as_array) {
            conds
                .iter()
                .any(|c| {
                    let ty = c.get("type").and_then(Value::as_str).unwrap_or_default();
                    let want = c.get("status").and_then(Value::as_str).unwrap_or("True");
                    pod.pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .any(|pc| pc.get("type") == Some(&json!(ty)) && pc.get("status") == Some(&json!(want)))
                })
                .then_some(0)
        } else {
            None
        };
        let Some(code) = matched else { continue };
        return match rule.get("action").and_then(Value::as_str) {
            Some("FailJob") => OnFailure::FailJob(format!(
                "Container of pod {}/{} failed with exit code {code} matching FailJob rule at index {i}",
                str_at(pod, "/metadata/namespace"),
                str_at(pod, "/metadata/name")
            )),
            Some("Ignore") => OnFailure::Ignore,
            _ => OnFailure::Count,
        };
    }
    OnFailure::Count
}

/// When a pod finished (its containers' latest termination), else when it was created.
fn finished_at(pod: &Value) -> Option<DateTime<Utc>> {
    pod.pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| time_at(s, "/state/terminated/finishedAt"))
        .max()
        .or_else(|| time_at(pod, "/metadata/creationTimestamp"))
}

fn backoff(failures: i64) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    BACKOFF_BASE
        .saturating_mul(1u32 << (failures - 1).min(10) as u32)
        .min(BACKOFF_MAX)
}

fn until(t: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (t - now).to_std().unwrap_or(Duration::ZERO)
}

fn pod_from_template(job: &Value, index: Option<i64>) -> Value {
    let template = job.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let mut meta = template.get("metadata").cloned().unwrap_or(json!({}));
    let name = str_at(job, "/metadata/name");
    meta["ownerReferences"] = json!([owner_ref("batch/v1", "Job", job)]);
    let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
    if let Some(m) = meta.as_object_mut() {
        m.remove("name");
        m.remove("namespace");
    }
    meta["labels"][CONTROLLER_UID] = json!(uid(job));
    meta["labels"][JOB_NAME] = json!(name);
    meta["labels"]["controller-uid"] = json!(uid(job));
    meta["labels"]["job-name"] = json!(name);
    match index {
        Some(i) => {
            meta["generateName"] = json!(format!("{name}-{i}-"));
            meta["annotations"][COMPLETION_INDEX] = json!(i.to_string());
            meta["labels"][COMPLETION_INDEX] = json!(i.to_string());
            if spec.get("hostname").is_none() {
                spec["hostname"] = json!(format!("{name}-{i}"));
            }
            for list in ["initContainers", "containers"] {
                for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                    if !c.get("env").is_some_and(Value::is_array) {
                        c["env"] = json!([]);
                    }
                    if let Some(env) = c["env"].as_array_mut() {
                        env.push(json!({"name": "JOB_COMPLETION_INDEX", "value": i.to_string()}));
                    }
                }
            }
        }
        None => meta["generateName"] = json!(format!("{name}-")),
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
}

pub async fn reconcile(client: LocalClient, key: String) -> Outcome {
    let jobs = client.served("batch", "jobs");
    let pods_res = client.served("", "pods");
    let (ns, name) = split_key(&key);
    let Some(job) = client.get(&jobs, ns, name) else {
        return Ok(None);
    };
    if is_deleting(&job.obj) {
        return Ok(None);
    }
    let j = &*job.obj;
    let job_uid = uid(j).to_string();
    let pods = client.list(&pods_res, ns, &|p| owned_by(p, &job_uid));
    let pods: Vec<&Value> = pods.iter().map(|s| &*s.obj).collect();
    let now = Utc::now();
    let old_status = j.get("status").cloned().unwrap_or(json!({}));
    let mut status = old_status.clone();
    let mut requeue: Option<Duration> = None;
    let mut soonest = |d: Duration| requeue = Some(requeue.map_or(d, |r: Duration| r.min(d)));

    let active: Vec<&Value> = pods.iter().copied().filter(|p| pod_active(p)).collect();
    let finished = condition_is_true(&status, "Complete") || condition_is_true(&status, "Failed");

    if finished {
        delete_pods(&client, ns, &active).await?;
        status["active"] = json!(0);
        status["ready"] = json!(0);
        if let Some(ttl) = int(j, "/spec/ttlSecondsAfterFinished") {
            let done = time_at(&status, "/completionTime")
                .or_else(|| condition(&status, "Failed").and_then(|c| time_at(c, "/lastTransitionTime")))
                .unwrap_or(now);
            let due = done + chrono::Duration::seconds(ttl.max(0));
            if now >= due {
                client.delete(&jobs, ns, name, Some("Background")).await?;
                return Ok(None);
            }
            soonest(until(due, now));
        }
        write_status(&client, &job, status, &old_status).await?;
        return Ok(requeue);
    }

    let indexed = str_at(j, "/spec/completionMode") == "Indexed";
    let completions = int(j, "/spec/completions");
    let parallelism = int(j, "/spec/parallelism").unwrap_or(1).max(0);
    let backoff_limit = int(j, "/spec/backoffLimit").unwrap_or(6).max(0);

    // Count finished pods, keeping what earlier rounds counted (pods may be deleted since).
    let mut succeeded_indexes: BTreeSet<i64> = BTreeSet::new();
    let mut succeeded = 0i64;
    let mut failed = 0i64;
    let mut last_failure: Option<DateTime<Utc>> = None;
    let mut fail_job: Option<String> = None;
    for p in &pods {
        match str_at(p, "/status/phase") {
            "Succeeded" => {
                succeeded += 1;
                if let Some(i) = index_of(p) {
                    succeeded_indexes.insert(i);
                }
            }
            "Failed" => match failure_action(j, p) {
                OnFailure::Ignore => {}
                OnFailure::Count => {
                    failed += 1;
                    last_failure = last_failure.max(finished_at(p));
                }
                OnFailure::FailJob(why) => {
                    failed += 1;
                    fail_job.get_or_insert(why);
                }
            },
            _ => {}
        }
    }
    let succeeded = succeeded.max(int(&status, "/succeeded").unwrap_or(0));
    let failed = failed.max(int(&status, "/failed").unwrap_or(0));
    status["succeeded"] = json!(succeeded);
    status["failed"] = json!(failed);
    if indexed {
        if let Some(s) = status.get("completedIndexes").and_then(Value::as_str) {
            succeeded_indexes.extend(parse_indexes(s));
        }
        status["completedIndexes"] = json!(compress_indexes(&succeeded_indexes));
    }

    // Suspended: no pods run; the deadline clock stops.
    if j.pointer("/spec/suspend") == Some(&json!(true)) {
        delete_pods(&client, ns, &active).await?;
        if !condition_is_true(&status, "Suspended") {
            set_condition(&mut status, "Suspended", true, "JobSuspended", "Job suspended");
            event(&client, j, "Normal", "Suspended", "Job suspended", "job-controller").await;
        }
        if let Some(m) = status.as_object_mut() {
            m.remove("startTime");
        }
        status["active"] = json!(0);
        status["ready"] = json!(0);
        write_status(&client, &job, status, &old_status).await?;
        return Ok(None);
    }
    if condition_is_true(&status, "Suspended") {
        set_condition(&mut status, "Suspended", false, "JobResumed", "Job resumed");
        event(&client, j, "Normal", "Resumed", "Job resumed", "job-controller").await;
    }
    let start = time_at(&status, "/startTime").unwrap_or(now);
    if status.get("startTime").is_none() {
        status["startTime"] = json!(now_rfc3339());
    }

    // Why the Job fails, if it does: a FailJob rule, too many failures, or its deadline.
    let deadline = int(j, "/spec/activeDeadlineSeconds").map(|s| start + chrono::Duration::seconds(s));
    let failure = if let Some(why) = fail_job {
        Some(("PodFailurePolicy", why))
    } else if failed > backoff_limit {
        Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit".to_string(),
        ))
    } else if deadline.is_some_and(|d| now >= d) {
        Some((
            "DeadlineExceeded",
            "Job was active longer than specified deadline".to_string(),
        ))
    } else {
        None
    };
    if let Some((reason, message)) = failure {
        delete_pods(&client, ns, &active).await?;
        set_condition(&mut status, "FailureTarget", true, reason, &message);
        set_condition(&mut status, "Failed", true, reason, &message);
        status["active"] = json!(0);
        status["ready"] = json!(0);
        event(&client, j, "Warning", reason, &message, "job-controller").await;
        write_status(&client, &job, status, &old_status).await?;
        return Ok(int(j, "/spec/ttlSecondsAfterFinished").map(|t| Duration::from_secs(t.max(0) as u64)));
    }
    if let Some(d) = deadline {
        soonest(until(d, now));
    }

    // Done when enough pods succeeded (every index, for an Indexed Job; with no completions,
    // one pod and no others still running).
    let complete = match (indexed, completions) {
        (true, Some(c)) => (0..c).all(|i| succeeded_indexes.contains(&i)),
        (false, Some(c)) => succeeded >= c,
        (_, None) => succeeded >= 1 && active.is_empty(),
    };
    if complete {
        delete_pods(&client, ns, &active).await?;
        set_condition(
            &mut status,
            "SuccessCriteriaMet",
            true,
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        );
        set_condition(
            &mut status,
            "Complete",
            true,
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        );
        status["completionTime"] = json!(now_rfc3339());
        status["active"] = json!(0);
        status["ready"] = json!(0);
        event(&client, j, "Normal", "Completed", "Job completed", "job-controller").await;
        write_status(&client, &job, status, &old_status).await?;
        return Ok(int(j, "/spec/ttlSecondsAfterFinished").map(|t| Duration::from_secs(t.max(0) as u64)));
    }

    // How many should run now, and which indexes they take.
    let want = match completions {
        Some(c) if !indexed => parallelism.min((c - succeeded).max(0)),
        Some(c) => parallelism.min(c - succeeded_indexes.len() as i64),
        // Work queue: once one pod succeeded, no new pods start.
        None if succeeded > 0 => 0,
        None => parallelism,
    } as usize;
    let mut to_delete: Vec<&Value> = Vec::new();
    if active.len() > want {
        let mut extra = active.clone();
        extra.sort_by_key(|p| std::cmp::Reverse(str_at(p, "/metadata/creationTimestamp").to_string()));
        to_delete.extend(extra.into_iter().take(active.len() - want));
    }
    delete_pods(&client, ns, &to_delete).await?;
    let mut created = 0usize;
    if active.len() < want {
        // A failed pod is replaced only after its back-off.
        let wait = last_failure
            .map(|t| until(t + chrono::Duration::from_std(backoff(failed)).unwrap_or_default(), now))
            .unwrap_or(Duration::ZERO);
        if wait > Duration::ZERO {
            soonest(wait);
        } else {
            let missing = want - active.len();
            let indexes: Vec<Option<i64>> = if indexed {
                let taken: BTreeSet<i64> = active.iter().filter_map(|p| index_of(p)).collect();
                (0..completions.unwrap_or(0))
                    .filter(|i| !succeeded_indexes.contains(i) && !taken.contains(i))
                    .take(missing)
                    .map(Some)
                    .collect()
            } else {
                vec![None; missing]
            };
            for index in indexes {
                client.create(&pods_res, ns, pod_from_template(j, index)).await?;
                created += 1;
            }
        }
    }
    let running = active.len() - to_delete.len();
    status["active"] = json!(running + created);
    status["ready"] = json!(active.iter().filter(|p| pod_ready(p)).count());
    status["terminating"] = json!(pods.iter().filter(|p| is_deleting(p) && pod_active_phase(p)).count());
    write_status(&client, &job, status, &old_status).await?;
    Ok(requeue)
}

fn pod_active_phase(p: &Value) -> bool {
    !matches!(str_at(p, "/status/phase"), "Succeeded" | "Failed")
}

fn parse_indexes(s: &str) -> Vec<i64> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .flat_map(|p| match p.split_once('-') {
            Some((a, b)) => match (a.parse::<i64>(), b.parse::<i64>()) {
                (Ok(a), Ok(b)) => (a..=b).collect(),
                _ => Vec::new(),
            },
            None => p.parse().into_iter().collect(),
        })
        .collect()
}

async fn delete_pods(client: &LocalClient, ns: Option<&str>, pods: &[&Value]) -> Result<(), ApiError> {
    let pods_res = client.served("", "pods");
    for p in pods {
        match client
            .delete(&pods_res, ns, str_at(p, "/metadata/name"), Some("Background"))
            .await
        {
            Ok(_) | Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn write_status(
    client: &LocalClient,
    job: &crate::store::Stored,
    status: Value,
    old: &Value,
) -> Result<(), ApiError> {
    if &status == old {
        return Ok(());
    }
    let jobs = client.served("batch", "jobs");
    let mut new = (*job.obj).clone();
    new["status"] = status;
    client.update_status(&jobs, job, new).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_compress_into_ranges() {
        let set: BTreeSet<i64> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(compress_indexes(&set), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7"), vec![0, 1, 2, 4, 6, 7]);
        assert_eq!(compress_indexes(&BTreeSet::new()), "");
    }

    #[test]
    fn failed_pods_back_off_doubling_to_six_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(30), BACKOFF_MAX);
    }

    #[test]
    fn pod_failure_policy_rules_match_in_order() {
        let job = json!({"spec": {"podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [0]}}
        ]}}});
        let pod = |code: i64, cond: Option<&str>| {
            json!({"metadata": {"name": "p", "namespace": "n"}, "status": {
                "conditions": cond.map(|c| vec![json!({"type": c, "status": "True"})]).unwrap_or_default(),
                "containerStatuses": [{"name": "main", "state": {"terminated": {"exitCode": code}}}]}})
        };
        assert!(matches!(failure_action(&job, &pod(42, None)), OnFailure::FailJob(m) if m.contains("exit code 42")));
        assert_eq!(
            failure_action(&job, &pod(42, Some("DisruptionTarget"))),
            OnFailure::Ignore
        );
        assert_eq!(failure_action(&job, &pod(1, None)), OnFailure::Count);
        assert_eq!(failure_action(&json!({}), &pod(42, None)), OnFailure::Count);
    }

    #[test]
    fn indexed_pods_carry_their_index() {
        let job = json!({"metadata": {"name": "j", "uid": "u1"}, "spec": {"template": {
            "metadata": {"labels": {"app": "x"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}});
        let p = pod_from_template(&job, Some(3));
        assert_eq!(p["metadata"]["generateName"], "j-3-");
        assert_eq!(p["metadata"]["annotations"][COMPLETION_INDEX], "3");
        assert_eq!(p["metadata"]["labels"][CONTROLLER_UID], "u1");
        assert_eq!(p["spec"]["hostname"], "j-3");
        assert_eq!(
            p["spec"]["containers"][0]["env"][0],
            json!({"name": "JOB_COMPLETION_INDEX", "value": "3"})
        );
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "Job");
    }
}
