//! PodDisruptionBudgets and the eviction subresource: an eviction spends an allowed disruption,
//! and is refused with 429 while the budget has none, until the replacement is ready.

use nodeless_tests::images::BUSYBOX;
use nodeless_tests::{KUBECTL_VERSIONS, Nodeless, eventually};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_respect_the_disruption_budget() {
    let n = Nodeless::start_with_node(&[]).unwrap();
    let yaml = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: 2\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - {{name: c, image: {BUSYBOX}, command: [sleep, '3600']}}\n---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {{name: web}}\nspec:\n  minAvailable: 1\n  selector: {{matchLabels: {{app: web}}}}\n"
    );
    let applied = n.kubectl_with("1.33", &n.kubeconfig(), &["apply", "-f", "-"], Some(&yaml));
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    n.kubectl_ok("1.33", &["rollout", "status", "deployment/web", "--timeout=90s"]);
    let allowed = || {
        n.kubectl_ok(
            "1.33",
            &["get", "pdb", "web", "-o", "jsonpath={.status.disruptionsAllowed}"],
        )
    };
    eventually("the budget to allow one disruption", 30, || allowed().trim() == "1");
    for v in KUBECTL_VERSIONS {
        let table = n.kubectl_ok(v, &["get", "pdb", "web"]);
        assert!(
            table.contains("ALLOWED DISRUPTIONS") && table.contains("web "),
            "{table}"
        );
    }

    let http = n.http();
    let evict = |pod: String| {
        let http = http.clone();
        let url = n.url(&format!("/api/v1/namespaces/default/pods/{pod}/eviction"));
        let token = n.admin_token();
        async move {
            let resp = http
                .post(url)
                .bearer_auth(token)
                .json(
                    &json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod},
                    "deleteOptions": {"gracePeriodSeconds": 1}}),
                )
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or_default())
        }
    };
    let pods = n.kubectl_ok(
        "1.33",
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    );
    let pods: Vec<String> = pods.split_whitespace().map(String::from).collect();
    assert_eq!(pods.len(), 2, "{pods:?}");
    let (code, body) = evict(pods[0].clone()).await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = evict(pods[1].clone()).await;
    assert_eq!(code, 429, "{body}");
    assert_eq!(body["reason"], "TooManyRequests", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("would violate the pod's disruption budget"),
        "{body}"
    );
    assert!(
        body["details"]["causes"][0]["message"]
            .as_str()
            .unwrap()
            .contains("disruption budget web"),
        "{body}"
    );
    // The Deployment replaces the evicted pod; once it is ready, the budget allows one again.
    eventually(
        "the replacement to be ready and the budget to allow one again",
        90,
        || allowed().trim() == "1",
    );
    let (code, body) = evict(pods[1].clone()).await;
    assert_eq!(code, 201, "{body}");

    // Both bounds at once is refused, naming the spec.
    let both = "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: both}\nspec: {minAvailable: 1, maxUnavailable: 1, selector: {matchLabels: {app: web}}}\n";
    let o = n.kubectl_with("1.33", &n.kubeconfig(), &["apply", "-f", "-"], Some(both));
    assert!(String::from_utf8_lossy(&o.stderr).contains("minAvailable and maxUnavailable cannot be both set"));
    n.kubectl_ok("1.33", &["delete", "deployment", "web"]);
}
