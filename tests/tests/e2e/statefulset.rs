//! StatefulSets with kubectl as users type it (1.33 and 1.27), on `nodeless up --pod-cidr`:
//! ordinal pods made one after another, each Ready (for minReadySeconds) before the next, with stable names and DNS
//! names through the headless Service (`web-1.web.<ns>.svc.cluster.local`); `rollout status`,
//! `rollout restart` (every pod replaced, highest ordinal first), `rollout history`; a
//! partitioned update that replaces only the ordinals at or above the partition; `scale` down
//! from the highest ordinal; `rollout undo`; deleting the set takes its pods. Sets with
//! `volumeClaimTemplates` are in `volumes.rs`.

use std::net::SocketAddr;
use std::process::Command;

use nodeless_tests::images::BUSYBOX;
use nodeless_tests::{Nodeless, eventually};

/// The A records `dig` finds for a name at the cluster DNS.
fn resolve(server: SocketAddr, name: &str) -> Vec<String> {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args([
            "-p",
            &server.port().to_string(),
            "+short",
            "+time=2",
            "+tries=1",
            name,
            "A",
        ])
        .output()
        .expect("dig (apt-get install bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn manifest(ns: &str, replicas: u32, extra_template_annotation: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  clusterIP: None
  selector: {{app: web}}
  ports: [{{name: http, port: 80}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: web, namespace: {ns}}}
spec:
  serviceName: web
  replicas: {replicas}
  minReadySeconds: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata:
      labels: {{app: web}}
      annotations: {{note: "{extra_template_annotation}"}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {{name: c, image: {BUSYBOX}, command: [sleep, "3600"]}}
"#
    )
}

#[test]
fn stateful_sets_keep_names_order_and_partitions() {
    let net = nodeless_tests::pod_net();
    let n = Nodeless::start_with_node(&["--pod-cidr", &net.cidr, "--cluster-dns", &net.dns]).unwrap();
    let dns = n.dns_addr().unwrap();
    for v in ["1.33", "1.27"] {
        let ns = format!("sts-{}", v.replace('.', "-"));
        n.kubectl_ok(v, &["create", "namespace", &ns]);
        let get = |what: &str, path: &str| {
            String::from_utf8_lossy(
                &n.kubectl(v, &["get", what, "-n", &ns, "-o", &format!("jsonpath={path}")])
                    .stdout,
            )
            .to_string()
        };
        let apply = |yaml: &str| n.kubectl_with(v, &n.kubeconfig(), &["apply", "-f", "-"], Some(yaml));
        let set_partition = |p: u32| {
            let patch = format!(r#"{{"spec":{{"updateStrategy":{{"rollingUpdate":{{"partition":{p}}}}}}}}}"#);
            n.kubectl_ok(v, &["patch", "sts", "web", "-n", &ns, "-p", &patch]);
        };
        let out = apply(&manifest(&ns, 3, "one"));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let status = n.kubectl_ok(
            v,
            &["rollout", "status", "statefulset/web", "-n", &ns, "--timeout=120s"],
        );
        assert!(status.contains("3 new pods have been updated"), "{status}");
        // In order: each ordinal made once the one below it had been Ready for minReadySeconds.
        let time = |pod: &str, path: &str| {
            let t = get(&format!("pod/{pod}"), path);
            chrono::DateTime::parse_from_rfc3339(&t).unwrap_or_else(|e| panic!("{pod} {path}: {t:?}: {e}"))
        };
        for (lower, higher) in [("web-0", "web-1"), ("web-1", "web-2")] {
            let ready = time(lower, "{.status.conditions[?(@.type=='Ready')].lastTransitionTime}");
            let made = time(higher, "{.metadata.creationTimestamp}");
            assert!(
                (made - ready).num_seconds() >= 2,
                "{higher} made at {made}, {lower} Ready at {ready}: not 2 s apart"
            );
        }
        // Ready is what `rollout status` waits for; available follows minReadySeconds later.
        eventually("three pods available", 10, || {
            get("sts/web", "{.status.availableReplicas}") == "3"
        });
        let table = n.kubectl_ok(v, &["get", "sts", "web", "-n", &ns]);
        assert!(table.contains("READY") && table.contains("3/3"), "{table}");
        // Stable identity: the hostname, and a DNS name per pod through the headless Service.
        assert_eq!(
            n.kubectl_ok(v, &["exec", "web-1", "-n", &ns, "--", "hostname"]).trim(),
            "web-1"
        );
        let ip = get("pod/web-1", "{.status.podIP}");
        let name = format!("web-1.web.{ns}.svc.cluster.local");
        eventually("web-1's DNS name", 20, || resolve(dns, &name) == vec![ip.clone()]);

        // rollout restart: every pod replaced from the highest ordinal, under the same names.
        let uid0 = get("pod/web-0", "{.metadata.uid}");
        n.kubectl_ok(v, &["rollout", "restart", "statefulset/web", "-n", &ns]);
        n.kubectl_ok(
            v,
            &["rollout", "status", "statefulset/web", "-n", &ns, "--timeout=120s"],
        );
        eventually("web-0 replaced", 60, || {
            let uid = get("pod/web-0", "{.metadata.uid}");
            !uid.is_empty() && uid != uid0
        });
        let update = get("sts/web", "{.status.updateRevision}");
        for pod in ["web-0", "web-1", "web-2"] {
            assert_eq!(
                get(&format!("pod/{pod}"), "{.metadata.labels.controller-revision-hash}"),
                update
            );
        }
        let history = n.kubectl_ok(v, &["rollout", "history", "statefulset/web", "-n", &ns]);
        let revisions: Vec<u32> = history
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        assert_eq!(revisions, vec![1, 2], "{history}");

        // A partitioned update: only ordinals at or above the partition take the new template.
        set_partition(2);
        let before = get("pod/web-0", "{.metadata.labels.controller-revision-hash}");
        let out = apply(&manifest(&ns, 3, "two"));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let newest = || get("sts/web", "{.status.updateRevision}");
        eventually("web-2 at the new revision", 60, || {
            let rev = newest();
            rev != update && get("pod/web-2", "{.metadata.labels.controller-revision-hash}") == rev
        });
        n.kubectl_ok(v, &["rollout", "status", "statefulset/web", "-n", &ns, "--timeout=60s"]);
        for pod in ["web-0", "web-1"] {
            assert_eq!(
                get(&format!("pod/{pod}"), "{.metadata.labels.controller-revision-hash}"),
                before,
                "{pod} is below the partition"
            );
        }

        // Scaling down goes from the highest ordinal.
        n.kubectl_ok(v, &["scale", "sts", "web", "-n", &ns, "--replicas=1"]);
        eventually("only web-0 left", 60, || {
            let out = n.kubectl(v, &["get", "pods", "-n", &ns, "-o", "name"]);
            String::from_utf8_lossy(&out.stdout).trim() == "pod/web-0"
        });

        // rollout undo: back to the template before the last change, from its ControllerRevision.
        set_partition(0);
        n.kubectl_ok(v, &["rollout", "undo", "statefulset/web", "-n", &ns]);
        eventually("web-0 back at the restarted revision", 60, || {
            get("sts/web", "{.status.updateRevision}") == update
                && get("pod/web-0", "{.metadata.labels.controller-revision-hash}") == update
        });

        // Deleting the set takes its pods.
        n.kubectl_ok(v, &["delete", "sts", "web", "-n", &ns]);
        eventually("the set's pods gone", 60, || {
            let out = n.kubectl(v, &["get", "pods", "-n", &ns, "-o", "name"]);
            String::from_utf8_lossy(&out.stdout).trim().is_empty()
        });
    }
}
