//! Bad requests get the right 4xx `Status` and change nothing; authentication and the
//! read-only role; the platform's admission rules.

use nodeless_tests::Nodeless;
use serde_json::{Value, json};

struct Api {
    n: Nodeless,
    http: reqwest::Client,
    token: String,
}

impl Api {
    async fn send(&self, method: reqwest::Method, path: &str, ctype: &str, body: Vec<u8>) -> (u16, Value) {
        let resp = self
            .http
            .request(method, self.n.url(path))
            .bearer_auth(&self.token)
            .header("Content-Type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        let code = resp.status().as_u16();
        let v = resp.json().await.unwrap_or(Value::Null);
        (code, v)
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            path,
            "application/json",
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }
}

fn assert_status(code: u16, v: &Value, want: u16, reason: &str) {
    assert_eq!(code, want, "{v}");
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["code"], want, "{v}");
    assert_eq!(v["reason"], reason, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_statuses_and_write_nothing() {
    let n = Nodeless::start().unwrap();
    let api = Api {
        http: n.http(),
        token: n.admin_token(),
        n,
    };
    let cms = "/api/v1/namespaces/default/configmaps";

    let (c, v) = api
        .send(reqwest::Method::POST, cms, "application/json", b"{\"kind\": ".to_vec())
        .await;
    assert_status(c, &v, 400, "BadRequest");
    let (c, v) = api
        .send(
            reqwest::Method::POST,
            cms,
            "application/yaml",
            b"kind: [unclosed".to_vec(),
        )
        .await;
    assert_status(c, &v, 400, "BadRequest");
    let (c, v) = api
        .send(reqwest::Method::POST, cms, "text/plain", b"hello".to_vec())
        .await;
    assert_status(c, &v, 415, "UnsupportedMediaType");
    let big = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"x": "a".repeat(4 << 20)}});
    let (c, v) = api.post(cms, &big).await;
    assert_status(c, &v, 413, "RequestEntityTooLarge");
    let unknown = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unk"}, "dataa": {}});
    let (c, v) = api.post(&format!("{cms}?fieldValidation=Strict"), &unknown).await;
    assert_status(c, &v, 400, "BadRequest");
    assert!(
        v["message"].as_str().unwrap().contains("unknown field \"dataa\""),
        "{v}"
    );
    let bad_name = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name"}});
    let (c, v) = api.post(cms, &bad_name).await;
    assert_status(c, &v, 422, "Invalid");
    assert_eq!(v["details"]["causes"][0]["field"], "metadata.name", "{v}");
    let wrong_kind = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wk"}});
    let (c, v) = api.post(cms, &wrong_kind).await;
    assert_status(c, &v, 400, "BadRequest");
    let (c, v) = api
        .post(
            "/api/v1/namespaces/nowhere/configmaps",
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}),
        )
        .await;
    assert_status(c, &v, 404, "NotFound");

    // Nothing of the above was written.
    let list: Value = api
        .http
        .get(api.n.url(cms))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The only ConfigMap is the cluster CA control publishes in every namespace.
    let written: Vec<&Value> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["metadata"]["name"] != "kube-root-ca.crt")
        .collect();
    assert!(written.is_empty(), "{list}");

    // Optimistic concurrency.
    let (c, created) = api
        .post(
            cms,
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "occ"}, "data": {"a": "1"}}),
        )
        .await;
    assert_eq!(c, 201);
    let mut stale = created.clone();
    stale["data"]["a"] = json!("2");
    let (c, _) = api
        .send(
            reqwest::Method::PUT,
            &format!("{cms}/occ"),
            "application/json",
            serde_json::to_vec(&stale).unwrap(),
        )
        .await;
    assert_eq!(c, 200);
    stale["data"]["a"] = json!("3");
    let (c, v) = api
        .send(
            reqwest::Method::PUT,
            &format!("{cms}/occ"),
            "application/json",
            serde_json::to_vec(&stale).unwrap(),
        )
        .await;
    assert_status(c, &v, 409, "Conflict");
    let (c, v) = api
        .post(
            cms,
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "occ"}}),
        )
        .await;
    assert_status(c, &v, 409, "AlreadyExists");
    let (c, v) = api
        .send(
            reqwest::Method::GET,
            "/apis/apps/v1/namespaces/default/deployments/none",
            "application/json",
            vec![],
        )
        .await;
    assert_status(c, &v, 404, "NotFound");

    // Authentication and the read-only token.
    let resp = api.http.get(api.n.url(cms)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = api.http.get(api.n.url(cms)).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let viewer = api.n.viewer_token();
    let resp = api.http.get(api.n.url(cms)).bearer_auth(&viewer).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = api
        .http
        .post(api.n.url(cms))
        .bearer_auth(&viewer)
        .json(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ro"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
}

fn pod(name: &str, container: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": [container]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_rules_are_enforced_at_admission() {
    let n = Nodeless::start().unwrap();
    let api = Api {
        http: n.http(),
        token: n.admin_token(),
        n,
    };
    let pods = "/api/v1/namespaces/default/pods";
    let (c, v) = api
        .post(
            pods,
            &pod(
                "priv",
                json!({"name": "c", "image": "busybox", "securityContext": {"privileged": true}}),
            ),
        )
        .await;
    assert_status(c, &v, 403, "Forbidden");
    assert!(v["message"].as_str().unwrap().contains("privileged"), "{v}");
    let (c, v) = api
        .post(
            pods,
            &pod(
                "hp",
                json!({"name": "c", "image": "busybox", "ports": [{"containerPort": 80, "hostPort": 80}]}),
            ),
        )
        .await;
    assert_status(c, &v, 403, "Forbidden");
    assert!(
        v["message"].as_str().unwrap().to_lowercase().contains("hostport"),
        "{v}"
    );
    let (c, v) = api
        .post(
            pods,
            &pod(
                "q",
                json!({"name": "c", "image": "busybox", "resources": {"limits": {"memory": "12 GB"}}}),
            ),
        )
        .await;
    assert_status(c, &v, 422, "Invalid");
    assert!(
        v["details"]["causes"][0]["field"]
            .as_str()
            .unwrap()
            .contains("resources.limits"),
        "{v}"
    );
    let mut hostnet = pod("hn", json!({"name": "c", "image": "busybox"}));
    hostnet["spec"]["hostNetwork"] = json!(true);
    let (c, v) = api.post(pods, &hostnet).await;
    assert_status(c, &v, 403, "Forbidden");
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "np"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
    let (c, v) = api.post("/api/v1/namespaces/default/services", &svc).await;
    assert_status(c, &v, 403, "Forbidden");
    assert!(v["message"].as_str().unwrap().contains("NodePort"), "{v}");
    let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "ds"}, "spec": {
        "selector": {"matchLabels": {"a": "b"}},
        "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
    let (c, v) = api.post("/apis/apps/v1/namespaces/default/daemonsets", &ds).await;
    assert_status(c, &v, 403, "Forbidden");
    assert!(v["message"].as_str().unwrap().contains("DaemonSet"), "{v}");
    let list: Value = api
        .http
        .get(api.n.url(pods))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(0),
        "nothing refused was stored"
    );
}
