//! Control replicas on a 3-member etcd: kill -9 the etcd leader, then a control replica, under
//! 16 writers. Every acknowledged write is there afterwards, the API answers throughout with a
//! bounded error window, a watch that fails over between replicas misses nothing, and the
//! controllers move to the surviving replica.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nodeless_tests::Nodeless;
use nodeless_tests::etcd::EtcdCluster;
use serde_json::{Value, json};

/// One client's view: which writes were acknowledged, and when requests failed.
#[derive(Default)]
struct Tally {
    acked: Vec<String>,
    /// (ms since the start, replica index, what failed) of each failed request.
    errors: Vec<(u64, usize, String)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_etcd_survive_losing_the_etcd_leader_and_a_replica() {
    let t0 = Instant::now();
    let mut etcd = EtcdCluster::start(3).unwrap();
    println!("etcd up in {:?}", t0.elapsed());
    let endpoints = etcd.endpoints();
    let mut replicas: Vec<Nodeless> = (0..2)
        .map(|i| Nodeless::start_with(&["--etcd", &endpoints, "--replica-name", &format!("r{i}")]).unwrap())
        .collect();
    println!("replicas up in {:?}", t0.elapsed());
    // They share the cluster's keys: one CA and one admin token serve both.
    let token = replicas[0].admin_token();
    assert_eq!(token, replicas[1].admin_token(), "replicas share the admin token");
    assert_eq!(replicas[0].ca_pem(), replicas[1].ca_pem(), "replicas share the CA");
    let http = replicas[0].http();
    let urls: Vec<String> = replicas.iter().map(|r| r.url("")).collect();
    let lease_holder = |base: &str| {
        let (http, token, url) = (
            http.clone(),
            token.clone(),
            format!("{base}/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/nodeless-controllers"),
        );
        async move {
            let resp = http.get(&url).bearer_auth(&token).send().await.ok()?;
            let v: Value = resp.json().await.ok()?;
            v.pointer("/spec/holderIdentity")
                .and_then(Value::as_str)
                .map(str::to_string)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let first_leader = loop {
        if let Some(h) = lease_holder(&urls[1]).await {
            break h;
        }
        assert!(Instant::now() < deadline, "no replica took the controllers' Lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The replica to kill is the controllers' leader, so the handover is tested too.
    let victim: usize = first_leader.trim_start_matches('r').parse().unwrap();
    let survivor = 1 - victim;

    let ns = "load";
    let created = http
        .post(format!("{}/api/v1/namespaces", urls[survivor]))
        .bearer_auth(&token)
        .json(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let start_rv: String = created.json::<Value>().await.unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    // A watch on the writes' namespace that follows the replicas: when its stream ends or fails,
    // it resumes on the next replica from the last resourceVersion it saw.
    let seen: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let watch_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (http, token, urls, seen, stop) = (
            http.clone(),
            token.clone(),
            urls.clone(),
            seen.clone(),
            watch_stop.clone(),
        );
        tokio::spawn(async move {
            use futures::StreamExt;
            let mut rv = start_rv;
            let mut at = 0usize;
            let mut resumes = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let url = format!(
                    "{}/api/v1/namespaces/{ns}/configmaps?watch=1&resourceVersion={rv}&allowWatchBookmarks=false",
                    urls[at]
                );
                if let Ok(resp) = http.get(&url).bearer_auth(&token).send().await {
                    if resp.status().is_success() {
                        let mut body = resp.bytes_stream();
                        let mut buf = Vec::new();
                        loop {
                            let next = tokio::time::timeout(Duration::from_millis(500), body.next()).await;
                            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                                break;
                            }
                            let chunk = match next {
                                Err(_) => continue,
                                Ok(Some(Ok(c))) => c,
                                _ => break,
                            };
                            buf.extend_from_slice(&chunk);
                            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                                let line: Vec<u8> = buf.drain(..=nl).collect();
                                let ev: Value = serde_json::from_slice(&line).unwrap();
                                assert_ne!(ev["type"], "ERROR", "the watch failed: {ev}");
                                let meta = &ev["object"]["metadata"];
                                let name = meta["name"].as_str().unwrap().to_string();
                                let v = meta["resourceVersion"].as_str().unwrap().to_string();
                                seen.lock().unwrap().push((name, v.parse().unwrap()));
                                rv = v;
                            }
                        }
                    }
                }
                at = (at + 1) % urls.len();
                resumes += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            resumes
        })
    };

    // 16 writers, half starting on each replica; a writer whose request fails moves to the other.
    let started = Instant::now();
    let stop_at = started + Duration::from_secs(18);
    let tallies: Vec<Arc<Mutex<Tally>>> = (0..16).map(|_| Arc::default()).collect();
    let mut writers = Vec::new();
    for (w, tally) in tallies.iter().enumerate() {
        let (http, token, urls, tally) = (http.clone(), token.clone(), urls.clone(), tally.clone());
        writers.push(tokio::spawn(async move {
            let mut at = w % urls.len();
            let mut i = 0u64;
            while Instant::now() < stop_at {
                let name = format!("w{w}-{i}");
                let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"i": i.to_string()}});
                let sent = http
                    .post(format!("{}/api/v1/namespaces/{ns}/configmaps", urls[at]))
                    .bearer_auth(&token)
                    .timeout(Duration::from_secs(5))
                    .json(&body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().as_u16() == 201 => {
                        tally.lock().unwrap().acked.push(name);
                        i += 1;
                        // A steady stream, not a flood: the suite runs other tests beside this.
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                    Ok(r) if r.status().as_u16() == 409 => {
                        // An earlier attempt whose answer was lost did land: it is not counted
                        // as acknowledged, and the writer moves on.
                        i += 1;
                    }
                    other => {
                        let what = match other {
                            Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                            Err(e) => e.to_string(),
                        };
                        tally
                            .lock()
                            .unwrap()
                            .errors
                            .push((started.elapsed().as_millis() as u64, at, what));
                        at = (at + 1) % urls.len();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(4)).await;
    let leader = etcd.leader().unwrap();
    let killed_etcd_at = started.elapsed();
    etcd.kill(leader);
    println!("killed etcd's leader {} at {killed_etcd_at:?}", etcd.name(leader));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let killed_replica_at = started.elapsed();
    replicas[victim].stop(true).unwrap();
    println!("killed control replica r{victim} (the controllers' leader) at {killed_replica_at:?}");
    for w in writers {
        w.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    watch_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let resumes = watcher.await.unwrap();

    // Every acknowledged write is there.
    let acked: BTreeSet<String> = tallies.iter().flat_map(|t| t.lock().unwrap().acked.clone()).collect();
    let list: Value = http
        .get(format!("{}/api/v1/namespaces/{ns}/configmaps", urls[survivor]))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let present: BTreeSet<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let missing: Vec<&String> = acked.difference(&present).collect();
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    assert!(acked.len() > 200, "the load ran: {} writes acknowledged", acked.len());

    // The error window: the span in which some request failed, per writer (from its first failure
    // to its next success); the longest is printed and bounded.
    let mut longest = 0u64;
    let mut failed = 0usize;
    let mut per_second = std::collections::BTreeMap::<u64, usize>::new();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for t in &tallies {
        let t = t.lock().unwrap();
        failed += t.errors.len();
        for (ms, _, what) in &t.errors {
            *per_second.entry(ms / 1000).or_default() += 1;
            *kinds.entry(what.chars().take(160).collect()).or_default() += 1;
        }
        if let (Some(first), Some(last)) = (t.errors.first(), t.errors.last()) {
            longest = longest.max(last.0 - first.0);
        }
    }
    println!(
        "{} writes acknowledged in {:?}; {failed} requests failed; longest span of one writer's failures: {longest} ms; the watch resumed {resumes} times",
        acked.len(),
        stop_at - started
    );
    println!("failed requests per second of the run: {per_second:?}");
    for (what, n) in &kinds {
        println!("  {n} × {what}");
    }
    assert!(longest < 15_000, "writers failed for {longest} ms");

    // The watch saw every acknowledged create, in resourceVersion order, across its resumes.
    let seen = seen.lock().unwrap().clone();
    let seen_names: BTreeSet<String> = seen.iter().map(|(n, _)| n.clone()).collect();
    let unseen: Vec<&String> = acked.difference(&seen_names).collect();
    assert!(
        unseen.is_empty(),
        "the watch missed {} acknowledged writes: {unseen:?}",
        unseen.len()
    );
    assert!(
        seen.windows(2).all(|p| p[0].1 < p[1].1),
        "the watch's resourceVersions only grow"
    );

    // The controllers moved to the survivor: its Lease, and a Deployment gets its ReplicaSet.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if lease_holder(&urls[survivor]).await.as_deref() == Some(&format!("r{survivor}")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "r{survivor} did not take the controllers' Lease"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "after"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "after"}},
                 "template": {"metadata": {"labels": {"app": "after"}}, "spec": {"containers": [{"name": "c", "image": "nodeless.local/busybox:1"}]}}}});
    let resp = http
        .post(format!("{}/apis/apps/v1/namespaces/{ns}/deployments", urls[survivor]))
        .bearer_auth(&token)
        .json(&deploy)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rs: Value = http
            .get(format!("{}/apis/apps/v1/namespaces/{ns}/replicasets", urls[survivor]))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if rs["items"].as_array().is_some_and(|i| !i.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no ReplicaSet from the surviving replica's controllers:\n{}",
            nodeless_tests::tail(&replicas[survivor].log(), 3000)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(replicas);
    drop(etcd);
}
