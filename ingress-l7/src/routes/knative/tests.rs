//! The Knative table without a network: hosts, visibility, header matches in order, weighted
//! splits, appended fields, the class filter, and what a revision's Service becomes.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use nodeless_types::keys;
use nodeless_types::knative as kn;
use serde_json::json;

use super::{Path, Routes, build};
use crate::activator::Activator;
use crate::metrics::Metrics;
use crate::routes::{Table, Target};

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).unwrap())
}

/// A revision's Service, with `ready` endpoints 10.0.0.N:8080.
fn revision(name: &str, ready: &[u8]) -> (Arc<Service>, Arc<EndpointSlice>) {
    let svc = obj(
        json!({"metadata": {"name": name, "namespace": "default", "labels": {kn::REVISION: name},
        "annotations": {kn::CONTAINER_CONCURRENCY: "2", kn::TIMEOUT_SECONDS: "7"}},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
    );
    let eps: Vec<_> = ready
        .iter()
        .map(|n| json!({"addresses": [format!("10.0.0.{n}")], "conditions": {"ready": true}}))
        .collect();
    let slice = obj(
        json!({"metadata": {"name": format!("{name}-x"), "namespace": "default", "labels": {keys::SERVICE_NAME: name}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": eps}),
    );
    (svc, slice)
}

fn split(rev: &str, percent: u32) -> serde_json::Value {
    json!({"serviceName": rev, "serviceNamespace": "default", "servicePort": 80, "percent": percent,
        "appendHeaders": {kn::REVISION_HEADER: rev, kn::NAMESPACE_HEADER: "default"}})
}

fn kingress(name: &str, annotations: serde_json::Value, spec: serde_json::Value) -> Arc<DynamicObject> {
    obj(
        json!({"apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default", "generation": 3, "annotations": annotations}, "spec": spec}),
    )
}

/// The Route of Knative's own docs: `hello`, 50/50 over two revisions, tag `v1` on its own host
/// and by header, and the cluster-local hosts.
fn hello() -> Arc<DynamicObject> {
    let main_paths = json!([
        {"headers": {kn::TAG_HEADER: {"exact": "v1"}}, "appendHeaders": {kn::TAG_HEADER: "v1"}, "splits": [split("hello-00001", 100)]},
        {"path": "/only2", "splits": [split("hello-00002", 100)]},
        {"splits": [split("hello-00001", 50), split("hello-00002", 50)]}
    ]);
    kingress(
        "hello",
        json!({kn::INGRESS_CLASS: kn::NODELESS_INGRESS_CLASS}),
        json!({"httpOption": "Enabled", "rules": [
            {"hosts": ["hello.default.example.com"], "visibility": "ExternalIP", "http": {"paths": main_paths}},
            {"hosts": ["v1-hello.default.example.com"], "visibility": "ExternalIP", "http": {"paths": [{"splits": [split("hello-00001", 100)]}]}},
            {"hosts": ["hello.default", "hello.default.svc", "hello.default.svc.cluster.local"], "visibility": "ClusterLocal", "http": {"paths": main_paths}}
        ]}),
    )
}

fn routes(kingresses: &[Arc<DynamicObject>]) -> (Routes, Activator) {
    let (s1, e1) = revision("hello-00001", &[1]);
    let (s2, e2) = revision("hello-00002", &[2]);
    let activator = Activator::new(Arc::new(Metrics::new(0)), 10);
    let r = build(kingresses, &[s1, s2], &[e1, e2], &activator, &Table::default());
    (r, activator)
}

fn no_headers(_: &str) -> Option<&'static [u8]> {
    None
}

/// The revision a request goes to (the first split of the matched path), or "none".
fn to(r: &Routes, host: &str, path: &str, internal: bool, tag: Option<&'static str>) -> String {
    let header = move |n: &str| {
        (n.eq_ignore_ascii_case(kn::TAG_HEADER))
            .then_some(tag)
            .flatten()
            .map(str::as_bytes)
    };
    match r.find(host, path, internal, &header) {
        Some(p) if p.splits.len() == 1 => p.splits[0].revision.as_ref().unwrap().name.clone(),
        Some(_) => "split".into(),
        None => "none".into(),
    }
}

#[test]
fn hosts_match_exactly_without_case_or_port() {
    let (r, _a) = routes(&[hello()]);
    assert_eq!(to(&r, "hello.default.example.com", "/", false, None), "split");
    assert_eq!(to(&r, "HELLO.default.example.com:8081", "/x", false, None), "split");
    assert_eq!(to(&r, "v1-hello.default.example.com", "/", false, None), "hello-00001");
    assert_eq!(to(&r, "other.default.example.com", "/", false, None), "none");
    assert_eq!(to(&r, "x.hello.default.example.com", "/", false, None), "none");
}

#[test]
fn the_first_matching_path_wins_headers_and_prefixes_included() {
    let (r, _a) = routes(&[hello()]);
    let h = "hello.default.example.com";
    assert_eq!(
        to(&r, h, "/only2", false, Some("v1")),
        "hello-00001",
        "the tag's path comes first"
    );
    assert_eq!(to(&r, h, "/only2/more", false, None), "hello-00002");
    assert_eq!(
        to(&r, h, "/", false, Some("v2")),
        "split",
        "another tag's value does not match"
    );
    assert_eq!(to(&r, h, "/", false, None), "split");
}

#[test]
fn cluster_local_hosts_only_on_the_internal_listener() {
    let (r, _a) = routes(&[hello()]);
    for host in ["hello.default", "hello.default.svc", "hello.default.svc.cluster.local"] {
        assert_eq!(to(&r, host, "/", false, None), "none", "{host} on a public listener");
        assert_eq!(to(&r, host, "/", true, Some("v1")), "hello-00001", "{host} internally");
    }
    assert_eq!(
        to(&r, "hello.default.example.com", "/", true, None),
        "split",
        "the internal listener serves the external rules too"
    );
}

#[test]
fn splits_are_picked_by_weight_and_zero_is_never_picked() {
    let spec = json!({"rules": [{"hosts": ["w.example"], "http": {"paths": [{"splits": [
        split("hello-00001", 30), split("hello-00002", 70), split("hello-00001", 0)]}]}}]});
    let (r, _a) = routes(&[kingress("w", json!({}), spec)]);
    let p: &Path = r.find("w.example", "/", false, &no_headers).unwrap();
    assert_eq!(p.split_at(0).unwrap().percent, 30);
    assert_eq!(p.split_at(29).unwrap().percent, 30);
    assert_eq!(p.split_at(30).unwrap().percent, 70);
    assert!(p.split_at(100).is_none(), "the 0 % split takes no draw");
    let n = 10_000;
    let first = (0..n).filter(|_| p.pick().unwrap().percent == 30).count();
    let share = first as f64 / n as f64;
    assert!((0.25..=0.35).contains(&share), "30 % split got {share}");
}

#[test]
fn append_headers_of_the_path_and_the_split() {
    let (r, _a) = routes(&[hello()]);
    let tag = |n: &str| n.eq_ignore_ascii_case(kn::TAG_HEADER).then_some(&b"v1"[..]);
    let p = r.find("hello.default.example.com", "/", false, &tag).unwrap();
    let mut append: Vec<_> = p.splits[0].append.to_vec();
    append.sort();
    assert_eq!(
        append,
        vec![
            ("Knative-Serving-Namespace".to_string(), "default".to_string()),
            ("Knative-Serving-Revision".to_string(), "hello-00001".to_string()),
            ("Knative-Serving-Tag".to_string(), "v1".to_string()),
        ]
    );
}

#[test]
fn another_class_is_left_alone() {
    let other = kingress(
        "other",
        json!({kn::INGRESS_CLASS: "kourier.ingress.networking.knative.dev"}),
        json!({"rules": [{"hosts": ["o.example"], "http": {"paths": [{"splits": [split("hello-00001", 100)]}]}}]}),
    );
    let none = kingress(
        "none",
        json!({}),
        json!({"rules": [{"hosts": ["n.example"], "http": {"paths": [{"splits": [split("hello-00001", 100)]}]}}]}),
    );
    let (r, _a) = routes(&[other, none]);
    assert_eq!(to(&r, "o.example", "/", false, None), "none");
    assert_eq!(to(&r, "n.example", "/", false, None), "hello-00001", "no class is ours");
    assert_eq!(r.served.len(), 1);
    assert_eq!((r.served[0].name.as_str(), r.served[0].generation), ("none", 3));
}

#[test]
fn a_revision_without_pods_is_a_target_and_a_plain_service_without_them_is_not() {
    let (s1, e1) = revision("hello-00001", &[]);
    let plain = obj(
        json!({"metadata": {"name": "plain", "namespace": "default"}, "spec": {"ports": [{"name": "http", "port": 80}]}}),
    );
    let spec = json!({"rules": [
        {"hosts": ["a.example"], "http": {"paths": [{"splits": [split("hello-00001", 100)]}]}},
        {"hosts": ["b.example"], "http": {"paths": [{"splits": [{"serviceName": "plain", "servicePort": 80, "percent": 100}]}]}},
        {"hosts": ["c.example"], "http": {"paths": [{"splits": [{"serviceName": "gone", "servicePort": 80, "percent": 100}]}]}}
    ]});
    let activator = Activator::new(Arc::new(Metrics::new(0)), 10);
    let r = build(
        &[kingress("k", json!({}), spec)],
        &[s1, plain],
        &[e1],
        &activator,
        &Table::default(),
    );
    let first = |host: &str| r.find(host, "/", false, &no_headers).unwrap().splits[0].clone();
    let a = first("a.example");
    match &a.target {
        Target::Upstream(u) => assert!(u.endpoints.is_empty()),
        Target::Unavailable(m) => panic!("{m}"),
    }
    assert_eq!(a.revision.as_ref().unwrap().id, "default/hello-00001");
    assert_eq!(a.settings.read_timeout, std::time::Duration::from_secs(7));
    assert_eq!(r.revisions.len(), 1);
    assert_eq!(r.revisions[0].config.concurrency, 2);
    assert!(
        matches!(&first("b.example").target, Target::Unavailable(m) if m.contains("no ready endpoints")),
        "a plain Service gets the Ingress's 503"
    );
    assert!(matches!(&first("c.example").target, Target::Unavailable(m) if m.contains("does not exist")));
}
