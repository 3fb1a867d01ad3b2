//! The store on a real etcd (one member, started by the test): the same contract as the embedded
//! store — creates refuse an existing key, updates and deletes compare the revision they expect,
//! resourceVersions are etcd's revisions, watches resume from a revision, two stores on one etcd
//! see each other's writes, and a reopened store loads what was written.

use std::time::Duration;

use nodeless_control::store::etcd::EtcdConfig;
use nodeless_control::store::{EventType, Store, StoreError, Write};
use nodeless_tests::etcd::EtcdCluster;
use serde_json::json;

fn obj(name: &str, v: i64) -> serde_json::Value {
    json!({"metadata": {"name": name}, "v": v})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_on_etcd_keeps_the_stores_contract() {
    let etcd = EtcdCluster::start(1).unwrap();
    let mut cfg = EtcdConfig::new(etcd.endpoints().split(',').map(str::to_string).collect());
    cfg.prefix = "/contract".into();
    let a = Store::open_etcd(&cfg).await.unwrap();
    let b = Store::open_etcd(&cfg).await.unwrap();

    let created = a
        .write(Write::Create {
            key: "/g/r/x".into(),
            obj: obj("x", 1),
        })
        .await
        .unwrap();
    assert_eq!(
        created.obj["metadata"]["resourceVersion"],
        created.rev.to_string(),
        "resourceVersion is the etcd revision"
    );
    assert!(a.get("/g/r/x").is_some(), "a reads its own write at once");
    assert!(matches!(
        b.write(Write::Create {
            key: "/g/r/x".into(),
            obj: obj("x", 2)
        })
        .await,
        Err(StoreError::AlreadyExists)
    ));
    // A stale revision is a conflict naming the current one, from either store.
    let updated = b
        .write(Write::Update {
            key: "/g/r/x".into(),
            obj: obj("x", 2),
            expect_rev: Some(created.rev),
        })
        .await
        .unwrap();
    match a
        .write(Write::Update {
            key: "/g/r/x".into(),
            obj: obj("x", 3),
            expect_rev: Some(created.rev),
        })
        .await
    {
        Err(StoreError::Conflict { current }) => assert_eq!(current, updated.rev),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(
        a.write(Write::Update {
            key: "/g/r/missing".into(),
            obj: obj("m", 0),
            expect_rev: None
        })
        .await,
        Err(StoreError::NotFound)
    ));

    // a's watch from before b's update sees it, then a deletion.
    let mut w = a.watch("/g/r/", created.rev).unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (e.kind, e.rev, e.obj["v"].as_i64()),
        (EventType::Modified, updated.rev, Some(2))
    );
    b.write(Write::Delete {
        key: "/g/r/x".into(),
        expect_rev: Some(updated.rev),
    })
    .await
    .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.kind, EventType::Deleted);
    assert_eq!(e.obj["v"], 2, "a deletion carries the last state");
    assert!(a.get("/g/r/x").is_none());

    // Many writers at once, then a store opened afresh sees every one.
    let writes = (0..200).map(|i| {
        a.write(Write::Create {
            key: format!("/g/r/many{i:03}"),
            obj: obj("m", i),
        })
    });
    for r in futures::future::join_all(writes).await {
        r.unwrap();
    }
    let c = Store::open_etcd(&cfg).await.unwrap();
    let (all, _, _) = c.list("/g/r/", None, 0, &|_| true);
    assert_eq!(all.len(), 200);
    assert_eq!(c.get("/g/r/many042").unwrap().obj["v"], 42);
    // A watch from before the new store's start is older than its history: 410 Gone.
    assert!(matches!(c.watch("/g/r/", 1), Err(StoreError::Gone { .. })));
}
