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
