//! Scheduling, garbage collection with each propagation policy, and pod logs through control.

use nodeless_tests::kubelet::FakeKubelet;
use nodeless_tests::{Nodeless, eventually};

fn deployment(name: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers:\n      - name: c\n        image: busybox:1\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_cascades_and_logs() {
    let n = Nodeless::start().unwrap();
    let v = "1.33";
    let out_of = |args: &[&str]| String::from_utf8_lossy(&n.kubectl(v, args).stdout).into_owned();

    // No node yet: the pod stays Pending and says why.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: picky\nspec:\n  nodeSelector: {disk: ssd}\n  containers:\n  - name: c\n    image: busybox:1\n";
    let out = n.kubectl_with(v, &n.kubeconfig(), &["apply", "-f", "-"], Some(pod));
    assert!(out.status.success());
    eventually("a FailedScheduling event with the reason", 20, || {
        out_of(&["describe", "pod", "picky"]).contains("no virtual node is registered")
    });
    let _kubelet = FakeKubelet::start(n.client().await.unwrap(), "vk-life").await.unwrap();
    eventually("the reason names the node selector", 20, || {
        out_of(&["get", "pod", "picky", "-o", "jsonpath={.status.conditions[0].message}"])
            .contains("didn't match Pod's node affinity/selector")
    });
    assert_eq!(
        out_of(&["get", "pod", "picky", "-o", "jsonpath={.status.phase}"]),
        "Pending"
    );
    n.kubectl_ok(v, &["label", "node", "vk-life", "disk=ssd"]);
    eventually("the pod is bound once a node matches", 20, || {
        out_of(&["get", "pod", "picky", "-o", "jsonpath={.spec.nodeName}"]) == "vk-life"
    });
    eventually("the pod runs", 20, || {
        out_of(&["get", "pod", "picky", "-o", "jsonpath={.status.phase}"]) == "Running"
    });

    // kubectl logs goes through control to the node's kubelet API.
    let logs = n.kubectl_ok(v, &["logs", "picky"]);
    assert_eq!(logs.trim(), "log of default/picky/c");

    // Orphan: the ReplicaSet stays, without its owner reference.
    n.kubectl_with(v, &n.kubeconfig(), &["apply", "-f", "-"], Some(&deployment("orphans")));
    eventually("the ReplicaSet exists", 20, || {
        !out_of(&["get", "rs", "-l", "app=orphans", "-o", "name"]).is_empty()
    });
    n.kubectl_ok(v, &["delete", "deployment", "orphans", "--cascade=orphan"]);
    eventually("the deployment is gone", 20, || {
        !n.kubectl(v, &["get", "deployment", "orphans"]).status.success()
    });
    eventually("the ReplicaSet lost its owner", 20, || {
        out_of(&[
            "get",
            "rs",
            "-l",
            "app=orphans",
            "-o",
            "jsonpath={.items[0].metadata.ownerReferences}",
        ])
        .is_empty()
    });
    assert_eq!(
        out_of(&["get", "rs", "-l", "app=orphans", "-o", "name"])
            .lines()
            .count(),
        1
    );

    // Foreground: dependents go first, then the owner.
    n.kubectl_with(v, &n.kubeconfig(), &["apply", "-f", "-"], Some(&deployment("fg")));
    eventually("2 pods of fg", 20, || {
        out_of(&["get", "pods", "-l", "app=fg", "-o", "name"]).lines().count() == 2
    });
    n.kubectl_ok(
        v,
        &["delete", "deployment", "fg", "--cascade=foreground", "--timeout=60s"],
    );
    assert!(!n.kubectl(v, &["get", "deployment", "fg"]).status.success());
    eventually("fg's ReplicaSet and pods are gone", 20, || {
        out_of(&["get", "rs,pods", "-l", "app=fg", "-o", "name"])
            .trim()
            .is_empty()
    });

    // Background (the default): the owner goes at once, the collector removes the rest.
    n.kubectl_with(v, &n.kubeconfig(), &["apply", "-f", "-"], Some(&deployment("bg")));
    eventually("2 pods of bg", 20, || {
        out_of(&["get", "pods", "-l", "app=bg", "-o", "name"]).lines().count() == 2
    });
    n.kubectl_ok(v, &["delete", "deployment", "bg"]);
    eventually("bg's ReplicaSet and pods are collected", 20, || {
        out_of(&["get", "rs,pods", "-l", "app=bg", "-o", "name"])
            .trim()
            .is_empty()
    });
}
