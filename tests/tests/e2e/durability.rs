//! Concurrent writers, `kill -9` mid-load, restart: every acknowledged write is there, resource
//! versions only grow, and the store opens cleanly.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nodeless_tests::Nodeless;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let mut n = Nodeless::start().unwrap();
    let http = n.http();
    let token = n.admin_token();
    let url = n.url("/api/v1/namespaces/default/configmaps");
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let stop_at = Instant::now() + Duration::from_millis(1500);
    let mut writers = Vec::new();
    for w in 0..16 {
        let (http, token, url, acked) = (http.clone(), token.clone(), url.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut last_rv = 0u64;
            for i in 0.. {
                if Instant::now() > stop_at {
                    break;
                }
                let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("w{w}-{i}")}, "data": {"i": i.to_string()}});
                let Ok(resp) = http.post(&url).bearer_auth(&token).json(&body).send().await else { break };
                if resp.status().as_u16() != 201 {
                    break;
                }
                let v: Value = resp.json().await.unwrap();
                let rv: u64 = v["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
                assert!(rv > last_rv, "one writer's resourceVersions grow");
                last_rv = rv;
                acked.lock().unwrap().push((format!("w{w}-{i}"), rv));
            }
        }));
    }
    // Crash the server while the writers are still going.
    tokio::time::sleep(Duration::from_millis(800)).await;
    n.stop(true).unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "the load did run: {} writes acknowledged",
        acked.len()
    );

    n.restart(false).unwrap();
    let http = n.http();
    let list: Value = http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = list["items"].as_array().unwrap();
    let stored: std::collections::HashMap<&str, u64> = items
        .iter()
        .map(|i| {
            (
                i["metadata"]["name"].as_str().unwrap(),
                i["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    for (name, rv) in &acked {
        assert_eq!(
            stored.get(name.as_str()),
            Some(rv),
            "acknowledged write {name} (rv {rv}) is stored unchanged"
        );
    }
    let max_acked = acked.iter().map(|(_, rv)| *rv).max().unwrap();
    let list_rv: u64 = list["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    assert!(list_rv >= max_acked);
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "after-restart"}});
    let v: Value = http
        .post(&url)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rv: u64 = v["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    assert!(
        rv > list_rv,
        "resourceVersions keep growing after the crash: {rv} > {list_rv}"
    );
}
