//! When pods became Ready, as a watch saw it: the benchmarks' clock for create-to-Ready.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;

/// The first moment each pod (by name) was seen Ready.
pub type ReadyTimes = Arc<Mutex<HashMap<String, Instant>>>;

/// Watch the pods `config` selects and note when each is first seen Ready; the task runs until
/// aborted (or the process ends).
pub fn watch_ready(api: Api<Pod>, config: watcher::Config) -> (ReadyTimes, tokio::task::JoinHandle<()>) {
    let times: ReadyTimes = Default::default();
    let t = times.clone();
    let task = tokio::spawn(async move {
        let mut s = watcher(api, config).boxed();
        while let Some(Ok(ev)) = s.next().await {
            if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev {
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                if ready {
                    t.lock()
                        .unwrap()
                        .entry(p.metadata.name.unwrap_or_default())
                        .or_insert_with(Instant::now);
                }
            }
        }
    });
    (times, task)
}

/// When the last of `names` became Ready; an error once `limit` has passed without all of them.
pub async fn wait_ready(times: &ReadyTimes, names: &[String], limit: Duration) -> Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        {
            let t = times.lock().unwrap();
            if names.iter().all(|n| t.contains_key(n)) {
                return Ok(names.iter().map(|n| t[n]).max().unwrap_or_else(Instant::now));
            }
        }
        if Instant::now() > deadline {
            let done = names.iter().filter(|n| times.lock().unwrap().contains_key(*n)).count();
            bail!("only {done}/{} pods Ready after {limit:?}", names.len());
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}
