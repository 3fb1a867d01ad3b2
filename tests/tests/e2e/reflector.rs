//! A `kube` reflector sees every change, in order, across a restart of control.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use nodeless_tests::Nodeless;
use serde_json::json;

type Rx = tokio::sync::mpsc::UnboundedReceiver<watcher::Event<ConfigMap>>;

/// The next change the reflector passed on (initial-list events included), within 30 s.
async fn next(rx: &mut Rx) -> Result<(&'static str, ConfigMap), tokio::time::error::Elapsed> {
    let fut = async move {
        loop {
            match rx.recv().await.expect("stream open") {
                watcher::Event::Apply(cm) => return ("apply", cm),
                watcher::Event::Delete(cm) => return ("delete", cm),
                watcher::Event::InitApply(cm) => return ("init-apply", cm),
                _ => continue,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), fut).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_sees_added_modified_deleted_across_restart() {
    let mut n = Nodeless::start().unwrap();
    let client = n.client().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let (reader, writer) = reflector::store::<ConfigMap>();
    let stream = reflector(
        writer,
        watcher(api.clone(), watcher::Config::default().labels("test=reflector")),
    )
    .default_backoff();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Ok(ev) = ev {
                let _ = tx.send(ev);
            }
        }
    });
    reader.wait_until_ready().await.unwrap();

    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "watched", "labels": {"test": "reflector"}}, "data": {"v": "1"}
    }))
    .unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
    let (what, got) = next(&mut rx).await.unwrap();
    assert_eq!((what, got.data.unwrap()["v"].as_str()), ("apply", "1"));

    // Restart control: the watcher resumes from its last resourceVersion.
    n.restart(false).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(n.client().await.unwrap(), "default");
    api.patch(
        "watched",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "2"}})),
    )
    .await
    .unwrap();
    let (what, got) = next(&mut rx).await.unwrap();
    assert_eq!(
        (what, got.data.unwrap()["v"].as_str()),
        ("apply", "2"),
        "MODIFIED after the restart"
    );

    n.restart(true).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(n.client().await.unwrap(), "default");
    api.delete("watched", &DeleteParams::default()).await.unwrap();
    let (what, got) = next(&mut rx).await.unwrap();
    assert_eq!(
        (what, got.metadata.name.as_deref()),
        ("delete", Some("watched")),
        "DELETED after a crash restart"
    );
    assert!(reader.state().is_empty(), "the reflector's store is empty again");
    task.abort();
}
