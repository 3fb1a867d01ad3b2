//! The resource metrics API: `kubectl top pods|nodes` with what the node measures in its cgroups.

use nodeless_tests::images::BUSYBOX;
use nodeless_tests::{KUBECTL_VERSIONS, Nodeless, eventually};

/// Millicores from a `kubectl top` CPU cell (`250m`, or whole cores).
fn millicores(cell: &str) -> u64 {
    match cell.strip_suffix('m') {
        Some(m) => m.parse().unwrap_or(0),
        None => cell.parse::<u64>().unwrap_or(0) * 1000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_top_shows_what_pods_use() {
    let n = Nodeless::start_with_node(&[]).unwrap();
    let pods = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: burner, labels: {{app: burn}}}}\nspec:\n  containers:\n  - {{name: spin, image: {BUSYBOX}, command: [sh, -c, 'while :; do :; done'], resources: {{limits: {{cpu: 500m}}}}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: idler}}\nspec:\n  containers:\n  - {{name: c, image: {BUSYBOX}, command: [sleep, '3600']}}\n"
    );
    let applied = n.kubectl_with("1.33", &n.kubeconfig(), &["apply", "-f", "-"], Some(&pods));
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    n.kubectl_ok(
        "1.33",
        &[
            "wait",
            "--for=condition=Ready",
            "pod/burner",
            "pod/idler",
            "--timeout=90s",
        ],
    );
    for v in KUBECTL_VERSIONS {
        let mut last = String::new();
        eventually(&format!("kubectl {v} top pods to show the burner busy"), 60, || {
            let o = n.kubectl(v, &["top", "pods", "--no-headers"]);
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            let cpu = |pod: &str| {
                last.lines()
                    .find(|l| l.starts_with(&format!("{pod} ")))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .map(millicores)
            };
            // Busy, within its 500m limit (and some slack for the measuring window); the idler idle.
            matches!((cpu("burner"), cpu("idler")), (Some(b), Some(i)) if (250..=650).contains(&b) && i < 50)
        });
        let containers = n.kubectl_ok(v, &["top", "pod", "burner", "--containers", "--no-headers"]);
        assert!(
            containers.contains("burner") && containers.contains("spin"),
            "{containers}"
        );
        let selected = n.kubectl_ok(v, &["top", "pods", "-l", "app=burn", "--no-headers"]);
        assert!(selected.contains("burner") && !selected.contains("idler"), "{selected}");
        let nodes = n.kubectl_ok(v, &["top", "nodes", "--no-headers"]);
        let cols: Vec<&str> = nodes.split_whitespace().collect();
        assert!(cols.len() >= 5 && millicores(cols[1]) >= 250, "{nodes}");
    }
    n.kubectl_ok("1.33", &["delete", "pod", "burner", "idler", "--grace-period=1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autoscaler_scales_a_deployment_up_under_load_and_down_after_it() {
    let n = Nodeless::start_with_node(&[]).unwrap();
    // Every pod spins until one wall-clock moment, then idles: load that starts and ends.
    let busy_for = 100;
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + busy_for;
    let deployment = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: burn}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: burn}}}}\n  template:\n    metadata: {{labels: {{app: burn}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: spin\n        image: {BUSYBOX}\n        command: [sh, -c, 'while [ $(date +%s) -lt {end} ]; do :; done; sleep 3600']\n        resources: {{requests: {{cpu: 100m}}, limits: {{cpu: 200m}}}}\n"
    );
    let applied = n.kubectl_with("1.33", &n.kubeconfig(), &["apply", "-f", "-"], Some(&deployment));
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    n.kubectl_ok(
        "1.33",
        &[
            "autoscale",
            "deployment",
            "burn",
            "--cpu-percent=50",
            "--min=1",
            "--max=3",
        ],
    );
    let hpa = n.kubectl_ok("1.33", &["get", "hpa", "burn", "-o", "json"]);
    assert!(hpa.contains("\"apiVersion\": \"autoscaling/v2\""), "{hpa}");
    // Scale down after 15 s of low usage rather than the default 5 minutes.
    n.kubectl_ok(
        "1.33",
        &[
            "patch",
            "hpa",
            "burn",
            "--type=merge",
            "-p",
            r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":15}}}}"#,
        ],
    );
    let replicas = || {
        n.kubectl_ok(
            "1.33",
            &["get", "deployment", "burn", "-o", "jsonpath={.spec.replicas}"],
        )
        .trim()
        .parse::<i64>()
        .unwrap_or(0)
    };
    let started = std::time::Instant::now();
    eventually("the autoscaler to scale up to its maximum under load", 90, || {
        replicas() == 3
    });
    let up_after = started.elapsed();
    let table = n.kubectl_ok("1.33", &["get", "hpa", "burn"]);
    assert!(table.contains("Deployment/burn") && table.contains("cpu: "), "{table}");
    assert!(
        up_after.as_secs() < busy_for,
        "scaled up only after the load ended ({up_after:?})"
    );
    // Never above the maximum, and back to the minimum once the load is gone.
    eventually(
        "the autoscaler to scale back down after the load",
        busy_for + 120,
        || {
            let r = replicas();
            assert!(r <= 3, "{r} replicas, above the maximum");
            r == 1
        },
    );
    let events = n.kubectl_ok(
        "1.33",
        &["get", "events", "--field-selector", "reason=SuccessfulRescale"],
    );
    assert!(
        events.contains("New size: 3") && events.contains("New size: 1"),
        "{events}"
    );
    let status = n.kubectl_ok(
        "1.33",
        &[
            "get",
            "hpa",
            "burn",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"ScalingActive\")].status}",
        ],
    );
    assert_eq!(status.trim(), "True");
    n.kubectl_ok("1.33", &["delete", "deployment", "burn"]);
}

/// ASK's CronHPA: a job on a six-field schedule sizes a Deployment, another raises an HPA's
/// floor, a bad schedule is reported in the job's condition, with either kubectl.
#[test]
fn cron_hpa_sizes_its_targets_on_schedule() {
    let n = Nodeless::start().unwrap();
    let objects = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: office}
spec:
  replicas: 1
  selector: {matchLabels: {app: office}}
  template:
    metadata: {labels: {app: office}}
    spec: {containers: [{name: c, image: nodeless.local/busybox:1}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: night}
spec:
  replicas: 1
  selector: {matchLabels: {app: night}}
  template:
    metadata: {labels: {app: night}}
    spec: {containers: [{name: c, image: nodeless.local/busybox:1}]}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: night}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: night}
  minReplicas: 1
  maxReplicas: 2
---
apiVersion: autoscaling.alibabacloud.com/v1beta1
kind: CronHorizontalPodAutoscaler
metadata: {name: office-hours}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: office}
  jobs:
  - {name: every-few-seconds, schedule: "*/3 * * * * *", targetSize: 3}
  - {name: broken, schedule: "at nine", targetSize: 5}
---
apiVersion: autoscaling.alibabacloud.com/v1beta1
kind: CronHorizontalPodAutoscaler
metadata: {name: floor}
spec:
  scaleTargetRef: {apiVersion: autoscaling/v2, kind: HorizontalPodAutoscaler, name: night}
  jobs:
  - {name: raise, schedule: "*/3 * * * * *", targetSize: 4, runOnce: true}
"#;
    let applied = n.kubectl_with("1.33", &n.kubeconfig(), &["apply", "-f", "-"], Some(objects));
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    for v in KUBECTL_VERSIONS {
        let get = |what: &str, path: &str| n.kubectl_ok(v, &["get", what, "-o", &format!("jsonpath={path}")]);
        eventually(
            &format!("the CronHPA job to size the Deployment (kubectl {v})"),
            30,
            || {
                get("deployment/office", "{.spec.replicas}") == "3"
                    && get(
                        "cronhpa/office-hours",
                        "{.status.conditions[?(@.name==\"every-few-seconds\")].state}",
                    ) == "Succeed"
            },
        );
        let broken = get(
            "cronhpa/office-hours",
            "{.status.conditions[?(@.name==\"broken\")].state} {.status.conditions[?(@.name==\"broken\")].message}",
        );
        assert!(broken.starts_with("Failed unparseable schedule"), "{broken}");
        eventually(
            &format!("the CronHPA job to raise the HPA's floor (kubectl {v})"),
            30,
            || get("hpa/night", "{.spec.minReplicas} {.spec.maxReplicas}") == "4 4",
        );
    }
    // A job that does not say its size is refused by the CRD's schema.
    let bad = "apiVersion: autoscaling.alibabacloud.com/v1beta1\nkind: CronHorizontalPodAutoscaler\nmetadata: {name: bad}\nspec:\n  scaleTargetRef: {kind: Deployment, name: office}\n  jobs: [{name: j, schedule: '0 0 9 * * *'}]\n";
    let out = n.kubectl_with("1.33", &n.kubeconfig(), &["apply", "-f", "-"], Some(bad));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("targetSize"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
