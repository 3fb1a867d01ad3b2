//! ServiceAccount tokens and RBAC with kubectl as users type it: `create serviceaccount`,
//! `create rolebinding`, `create token`, `auth can-i` (with `--as` and `--list`), `auth whoami`;
//! what a token may do is what its bindings say, no more, and a user cannot grant what it lacks;
//! long-lived token Secrets filled and revoked with their account; issuer discovery (OpenID
//! configuration and key set); pods naming a missing account refused.

use std::process::Output;

use nodeless_tests::{KUBECTL_VERSIONS, Nodeless, eventually};
use serde_json::{Value, json};

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_accounts_get_what_their_bindings_grant() {
    let n = Nodeless::start().unwrap();
    let kc = n.kubeconfig();
    for v in KUBECTL_VERSIONS {
        let ns = format!("team-{}", v.replace('.', "-"));
        let sa = format!("system:serviceaccount:{ns}:reader");
        n.kubectl_ok(v, &["create", "namespace", &ns]);
        n.kubectl_ok(v, &["create", "serviceaccount", "reader", "-n", &ns]);
        n.kubectl_ok(v, &["create", "serviceaccount", "boss", "-n", &ns]);
        n.kubectl_ok(
            v,
            &[
                "create",
                "rolebinding",
                "reader-view",
                "--clusterrole=view",
                &format!("--serviceaccount={ns}:reader"),
                "-n",
                &ns,
            ],
        );
        n.kubectl_ok(
            v,
            &[
                "create",
                "rolebinding",
                "boss-admin",
                "--clusterrole=admin",
                &format!("--serviceaccount={ns}:boss"),
                "-n",
                &ns,
            ],
        );
        n.kubectl_ok(v, &["create", "configmap", "c", "--from-literal=a=b", "-n", &ns]);

        // The admin answers for others with --as.
        let can = |args: &[&str]| n.kubectl(v, &[&["auth", "can-i"][..], args].concat());
        assert_eq!(out(&can(&["list", "pods", "-n", &ns, "--as", &sa])), "yes");
        let no = can(&["create", "pods", "-n", &ns, "--as", &sa]);
        assert_eq!(out(&no), "no", "{}", err(&no));
        assert!(!no.status.success());
        assert_eq!(out(&can(&["list", "pods", "-n", "default", "--as", &sa])), "no");
        assert_eq!(out(&can(&["get", "secrets", "-n", &ns, "--as", &sa])), "no");
        assert_eq!(
            out(&can(&["create", "pods", "--subresource=exec", "-n", &ns, "--as", &sa])),
            "no"
        );
        assert_eq!(out(&can(&["*", "*"])), "yes", "the admin may do anything");

        // A token of the ServiceAccount, and kubectl with it.
        let token = n.kubectl_ok(v, &["create", "token", "reader", "-n", &ns, "--duration=20m"]);
        let token = token.trim();
        assert_eq!(token.matches('.').count(), 2, "{token}");
        let as_reader = |args: &[&str]| n.kubectl_with(v, &kc, &[args, &["--token", token]].concat(), None);
        let pods = as_reader(&["get", "configmaps", "-n", &ns]);
        assert!(pods.status.success(), "{}", err(&pods));
        assert!(out(&pods).contains("c "), "{}", out(&pods));
        let run = as_reader(&["create", "configmap", "x", "--from-literal=a=b", "-n", &ns]);
        assert!(!run.status.success());
        assert!(
            err(&run).contains(&format!(
                "configmaps is forbidden: User \"{sa}\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"{ns}\""
            )),
            "{}",
            err(&run)
        );
        let elsewhere = as_reader(&["get", "pods", "-n", "default"]);
        assert!(err(&elsewhere).contains("forbidden"), "{}", err(&elsewhere));
        assert!(err(&as_reader(&["get", "secrets", "-n", &ns])).contains("forbidden"));
        assert_eq!(
            out(&as_reader(&["auth", "can-i", "watch", "deployments.apps", "-n", &ns])),
            "yes"
        );
        assert_eq!(
            out(&as_reader(&["auth", "can-i", "delete", "deployments.apps", "-n", &ns])),
            "no"
        );
        let list = as_reader(&["auth", "can-i", "--list", "-n", &ns]);
        assert!(list.status.success(), "{}", err(&list));
        let pods_line = out(&list)
            .lines()
            .find(|l| l.starts_with("pods "))
            .map(str::to_string)
            .unwrap_or_default();
        assert!(
            pods_line.contains("get") && pods_line.contains("list") && !pods_line.contains("create"),
            "{}",
            out(&list)
        );
        if v == "1.33" {
            let who = as_reader(&["auth", "whoami", "-o", "json"]);
            assert!(who.status.success(), "{}", err(&who));
            let who: Value = serde_json::from_str(&out(&who)).unwrap();
            assert_eq!(who["status"]["userInfo"]["username"], json!(sa));
            let groups = who["status"]["userInfo"]["groups"].to_string();
            assert!(groups.contains(&format!("system:serviceaccounts:{ns}")), "{groups}");
        }

        // A namespace admin may grant what it has, and nothing more.
        let boss = n.kubectl_ok(v, &["create", "token", "boss", "-n", &ns]);
        let as_boss = |args: &[&str]| n.kubectl_with(v, &kc, &[args, &["--token", boss.trim()]].concat(), None);
        let ok = as_boss(&[
            "create",
            "role",
            "pod-reader",
            "--verb=get,list",
            "--resource=pods",
            "-n",
            &ns,
        ]);
        assert!(ok.status.success(), "{}", err(&ok));
        let ok = as_boss(&[
            "create",
            "rolebinding",
            "r",
            "--role=pod-reader",
            &format!("--serviceaccount={ns}:reader"),
            "-n",
            &ns,
        ]);
        assert!(ok.status.success(), "{}", err(&ok));
        let more = as_boss(&[
            "create",
            "role",
            "node-reader",
            "--verb=get",
            "--resource=nodes",
            "-n",
            &ns,
        ]);
        assert!(
            err(&more).contains("is attempting to grant RBAC permissions not currently held"),
            "{}",
            err(&more)
        );
        let bind = as_boss(&[
            "create",
            "rolebinding",
            "root",
            "--clusterrole=cluster-admin",
            &format!("--serviceaccount={ns}:boss"),
            "-n",
            &ns,
        ]);
        assert!(err(&bind).contains("forbidden"), "{}", err(&bind));
        assert_eq!(
            out(&as_boss(&["auth", "can-i", "create", "pods", "-n", "default"])),
            "no"
        );

        // The token dies with its ServiceAccount.
        n.kubectl_ok(v, &["delete", "serviceaccount", "reader", "-n", &ns]);
        let gone = as_reader(&["get", "configmaps", "-n", &ns]);
        assert!(
            err(&gone).contains("Unauthorized") || err(&gone).contains("provide credentials"),
            "{}",
            err(&gone)
        );
        n.kubectl_ok(v, &["delete", "namespace", &ns, "--wait=false"]);
    }

    // The read-only token is an ordinary subject bound to a role.
    let viewer = n.viewer_kubeconfig();
    let as_viewer = |args: &[&str]| n.kubectl_with("1.33", &viewer, args, None);
    assert_eq!(out(&as_viewer(&["auth", "can-i", "list", "pods", "-A"])), "yes");
    assert_eq!(out(&as_viewer(&["auth", "can-i", "create", "pods"])), "no");
    assert_eq!(out(&as_viewer(&["auth", "can-i", "get", "secrets"])), "no");
    let bindings = n.kubectl_ok("1.33", &["get", "clusterrolebinding", "nodeless:viewer", "-o", "wide"]);
    assert!(
        bindings.contains("ClusterRole/nodeless:cluster-viewer") && bindings.contains("nodeless:viewer"),
        "{bindings}"
    );

    // Aggregation: a role labelled to join `view` joins it.
    let role = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: widget-view\n  labels: {rbac.authorization.k8s.io/aggregate-to-view: \"true\"}\nrules:\n- {apiGroups: [example.com], resources: [widgets], verbs: [get, list]}\n";
    let applied = n.kubectl_with("1.33", &kc, &["apply", "-f", "-"], Some(role));
    assert!(applied.status.success(), "{}", err(&applied));
    eventually("view to take in widget-view", 20, || {
        let rules = out(&n.kubectl("1.33", &["get", "clusterrole", "view", "-o", "jsonpath={.rules}"]));
        rules.contains("widgets")
    });
    eventually("edit to take in view", 20, || {
        out(&n.kubectl("1.33", &["get", "clusterrole", "edit", "-o", "jsonpath={.rules}"])).contains("widgets")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_bound_to_their_audience_and_objects() {
    let n = Nodeless::start().unwrap();
    let http = n.http();
    let admin = n.admin_token();
    n.kubectl_ok("1.33", &["create", "serviceaccount", "robot"]);
    n.kubectl_ok(
        "1.33",
        &[
            "create",
            "clusterrolebinding",
            "robot-view",
            "--clusterrole=view",
            "--serviceaccount=default:robot",
        ],
    );
    n.kubectl_ok("1.33", &["create", "secret", "generic", "anchor", "--from-literal=a=b"]);
    let request = |spec: Value| {
        let http = http.clone();
        let admin = admin.clone();
        let url = n.url("/api/v1/namespaces/default/serviceaccounts/robot/token");
        async move {
            let resp = http
                .post(url)
                .bearer_auth(admin)
                .json(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let pods = |token: String| {
        let http = http.clone();
        let url = n.url("/api/v1/namespaces/default/pods");
        async move { http.get(url).bearer_auth(token).send().await.unwrap().status().as_u16() }
    };

    // Too short a life is refused with the field.
    let (code, body) = request(json!({"expirationSeconds": 60})).await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("spec.expirationSeconds"),
        "{body}"
    );

    // Bound to a Secret: works while the Secret is there.
    let (code, body) =
        request(json!({"boundObjectRef": {"kind": "Secret", "apiVersion": "v1", "name": "anchor"}})).await;
    assert_eq!(code, 201, "{body}");
    let bound = body["status"]["token"].as_str().unwrap().to_string();
    assert!(body["status"]["expirationTimestamp"].is_string(), "{body}");
    assert_eq!(pods(bound.clone()).await, 200);
    let (code, _) = request(json!({"boundObjectRef": {"kind": "Secret", "apiVersion": "v1", "name": "nope"}})).await;
    assert_eq!(code, 404);

    // For another audience: not for this API, though a TokenReview for that audience accepts it.
    let (_, body) = request(json!({"audiences": ["vault"]})).await;
    let vault = body["status"]["token"].as_str().unwrap().to_string();
    assert_eq!(pods(vault.clone()).await, 401);
    let review = |token: String, audiences: Value| {
        let http = http.clone();
        let admin = admin.clone();
        let url = n.url("/apis/authentication.k8s.io/v1/tokenreviews");
        async move {
            http.post(url)
                .bearer_auth(admin)
                .json(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token, "audiences": audiences}}))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let r = review(vault.clone(), json!(["vault"])).await;
    assert_eq!(r["status"]["authenticated"], true, "{r}");
    assert_eq!(r["status"]["user"]["username"], "system:serviceaccount:default:robot");
    let r = review(vault, json!([])).await;
    assert_eq!(r["status"]["authenticated"], false, "{r}");

    // A SubjectAccessReview asks about anyone.
    let sar = http
        .post(n.url("/apis/authorization.k8s.io/v1/subjectaccessreviews"))
        .bearer_auth(&admin)
        .json(
            &json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": "system:serviceaccount:default:robot", "groups": ["system:serviceaccounts"],
                     "resourceAttributes": {"verb": "list", "resource": "pods", "namespace": "kube-system"}}}),
        )
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(sar["status"]["allowed"], true, "{sar}");
    assert!(
        sar["status"]["reason"].as_str().unwrap().contains("robot-view"),
        "{sar}"
    );

    // The Secret goes, and so does the token bound to it.
    n.kubectl_ok("1.33", &["delete", "secret", "anchor"]);
    assert_eq!(pods(bound).await, 401);

    // A forged token (signed by another key) and a mangled one are refused.
    let (_, body) = request(json!({})).await;
    let good = body["status"]["token"].as_str().unwrap().to_string();
    assert_eq!(pods(good.clone()).await, 200);
    let mut parts: Vec<String> = good.split('.').map(String::from).collect();
    let flipped = if parts[1].as_bytes()[10] == b'x' { "y" } else { "x" };
    parts[1].replace_range(10..11, flipped);
    assert_eq!(pods(parts.join(".")).await, 401);

    // A long-lived token Secret, as tools made before TokenRequest ask for one: filled by the
    // tokens controller, good while the Secret and its account are there.
    n.kubectl_ok("1.33", &["create", "serviceaccount", "legacy"]);
    n.kubectl_ok(
        "1.33",
        &[
            "create",
            "clusterrolebinding",
            "legacy-view",
            "--clusterrole=view",
            "--serviceaccount=default:legacy",
        ],
    );
    let secret = |name: &str, annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, annotations: {{{annotations}}}}}\ntype: kubernetes.io/service-account-token\n"
        )
    };
    let refused = n.kubectl_with(
        "1.33",
        &n.kubeconfig(),
        &["apply", "-f", "-"],
        Some(&secret("nameless", "")),
    );
    assert!(
        err(&refused).contains("metadata.annotations[kubernetes.io/service-account.name]: Required value"),
        "{}",
        err(&refused)
    );
    let made = n.kubectl_with(
        "1.33",
        &n.kubeconfig(),
        &["apply", "-f", "-"],
        Some(&secret("legacy-token", "kubernetes.io/service-account.name: legacy")),
    );
    assert!(made.status.success(), "{}", err(&made));
    let field = |path: &str| {
        out(&n.kubectl(
            "1.33",
            &["get", "secret", "legacy-token", "-o", &format!("jsonpath={path}")],
        ))
    };
    eventually("the token Secret filled", 20, || !field("{.data.token}").is_empty());
    use base64::Engine;
    let decode = |v: String| String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v).unwrap()).unwrap();
    let legacy = decode(field("{.data.token}"));
    assert_eq!(decode(field("{.data.namespace}")), "default");
    assert!(decode(field("{.data.ca\\.crt}")).contains("BEGIN CERTIFICATE"));
    assert_eq!(
        field("{.metadata.annotations.kubernetes\\.io/service-account\\.uid}"),
        out(&n.kubectl(
            "1.33",
            &["get", "serviceaccount", "legacy", "-o", "jsonpath={.metadata.uid}"]
        ))
    );
    assert_eq!(pods(legacy.clone()).await, 200);
    let who = n.kubectl(
        "1.33",
        &[
            "auth",
            "whoami",
            "--token",
            &legacy,
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert_eq!(out(&who), "system:serviceaccount:default:legacy", "{}", err(&who));
    // The account deleted: its token Secret goes, and the token with it.
    n.kubectl_ok("1.33", &["delete", "serviceaccount", "legacy"]);
    assert_eq!(pods(legacy).await, 401);
    eventually("the token Secret deleted with its account", 20, || {
        !out(&n.kubectl("1.33", &["get", "secrets", "-o", "name"])).contains("legacy-token")
    });

    // Issuer discovery: any ServiceAccount reads the OpenID configuration and the key set,
    // and the key set holds the key the tokens name.
    let get_json = |path: &str, token: String| {
        let (http, url) = (http.clone(), n.url(path));
        async move {
            let resp = http.get(url).bearer_auth(token).send().await.unwrap();
            (
                resp.status().as_u16(),
                resp.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (code, oidc) = get_json("/.well-known/openid-configuration", good.clone()).await;
    assert_eq!(code, 200, "{oidc}");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims: Value = serde_json::from_slice(&b64.decode(good.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(oidc["issuer"], claims["iss"], "{oidc}");
    assert!(
        oidc["jwks_uri"].as_str().unwrap().ends_with("/openid/v1/jwks"),
        "{oidc}"
    );
    let (code, jwks) = get_json("/openid/v1/jwks", good.clone()).await;
    assert_eq!(code, 200, "{jwks}");
    let header: Value = serde_json::from_slice(&b64.decode(good.split('.').next().unwrap()).unwrap()).unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["kid"], header["kid"], "{jwks}");
    assert_eq!(
        (key["kty"].as_str(), key["crv"].as_str(), key["alg"].as_str()),
        (Some("EC"), Some("P-256"), Some("ES256"))
    );
    for c in ["x", "y"] {
        assert_eq!(b64.decode(key[c].as_str().unwrap()).unwrap().len(), 32, "{jwks}");
    }

    // A role binding removed is obeyed by the next request.
    n.kubectl_ok("1.33", &["delete", "clusterrolebinding", "robot-view"]);
    assert_eq!(pods(good).await, 403);

    // A pod may run as robot; one naming an account the namespace lacks is refused, as
    // Kubernetes' ServiceAccount admission refuses it, naming the account.
    let pod = |account: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: as-{account}}}\nspec:\n  serviceAccountName: {account}\n  containers: [{{name: c, image: busybox}}]\n"
        )
    };
    let made = n.kubectl_with(
        "1.33",
        &n.kubeconfig(),
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&pod("robot")),
    );
    assert!(made.status.success(), "{}", err(&made));
    let refused = n.kubectl_with("1.33", &n.kubeconfig(), &["apply", "-f", "-"], Some(&pod("ghost")));
    assert!(!refused.status.success());
    assert!(
        err(&refused).contains(r#"pods "as-ghost" is forbidden: error looking up service account default/ghost: serviceaccount "ghost" not found"#),
        "{}",
        err(&refused)
    );
    // The same pods made by a Deployment: its ReplicaSet says why in a FailedCreate event and a
    // ReplicaFailure condition, which the Deployment carries.
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: ghosts}\nspec:\n  selector: {matchLabels: {app: ghosts}}\n  template:\n    metadata: {labels: {app: ghosts}}\n    spec:\n      serviceAccountName: ghost\n      containers: [{name: c, image: busybox}]\n";
    let made = n.kubectl_with("1.33", &n.kubeconfig(), &["apply", "-f", "-"], Some(deployment));
    assert!(made.status.success(), "{}", err(&made));
    let failure = || {
        out(&n.kubectl(
            "1.33",
            &[
                "get",
                "deployment",
                "ghosts",
                "-o",
                "jsonpath={.status.conditions[?(@.type=='ReplicaFailure')].message}",
            ],
        ))
    };
    eventually("the Deployment's ReplicaFailure", 20, || {
        failure().contains(r#"serviceaccount "ghost" not found"#)
    });
    let events = out(&n.kubectl("1.33", &["get", "events", "--field-selector", "reason=FailedCreate"]));
    assert!(events.contains("Error creating: pods"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_a_token_bound_to_them() {
    use nodeless_tests::images::BUSYBOX;
    let n = Nodeless::start_with_node(&[]).unwrap();
    let kc = n.kubeconfig();
    let pods = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: talker}}\nspec:\n  containers:\n  - {{name: c, image: {BUSYBOX}, command: [sh, -c, 'sleep 3600']}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: quiet}}\nspec:\n  automountServiceAccountToken: false\n  containers:\n  - {{name: c, image: {BUSYBOX}, command: [sh, -c, 'sleep 3600']}}\n"
    );
    let applied = n.kubectl_with("1.33", &kc, &["apply", "-f", "-"], Some(&pods));
    assert!(applied.status.success(), "{}", err(&applied));
    n.kubectl_ok(
        "1.33",
        &[
            "wait",
            "--for=condition=Ready",
            "pod/talker",
            "pod/quiet",
            "--timeout=90s",
        ],
    );
    let dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let read = |pod: &str, file: &str| n.kubectl("1.33", &["exec", pod, "--", "cat", &format!("{dir}/{file}")]);
    assert_eq!(out(&read("talker", "namespace")), "default");
    let ca = out(&read("talker", "ca.crt"));
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    assert_eq!(ca, String::from_utf8_lossy(&n.ca_pem()).trim());
    let token = out(&read("talker", "token"));
    assert_eq!(token.matches('.').count(), 2, "{token}");
    let quiet = read("quiet", "token");
    assert!(!quiet.status.success(), "a pod that opted out has no token");

    // The token is the pod's ServiceAccount's, bound to the pod.
    let who = n.kubectl_with("1.33", &kc, &["auth", "whoami", "-o", "json", "--token", &token], None);
    assert!(who.status.success(), "{}", err(&who));
    let who: Value = serde_json::from_str(&out(&who)).unwrap();
    assert_eq!(
        who["status"]["userInfo"]["username"],
        "system:serviceaccount:default:default"
    );
    assert_eq!(
        who["status"]["userInfo"]["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["talker"])
    );
    // The default account may do nothing but discover and ask.
    let denied = n.kubectl_with("1.33", &kc, &["get", "pods", "--token", &token], None);
    assert!(err(&denied).contains("forbidden"), "{}", err(&denied));
    n.kubectl_ok(
        "1.33",
        &["delete", "pod", "talker", "quiet", "--grace-period=1", "--timeout=60s"],
    );
    eventually("the token to die with its pod", 30, || {
        let o = n.kubectl_with("1.33", &kc, &["auth", "whoami", "--token", &token], None);
        err(&o).contains("Unauthorized") || err(&o).contains("provide credentials")
    });
}

/// A user's client certificate as on Kubernetes: a CertificateSigningRequest for the
/// `kubernetes.io/kube-apiserver-client` signer waits for an administrator (`kubectl certificate
/// approve`), is then signed by the cluster CA, and the certificate authenticates its common name
/// in its organization's group, with what RBAC binds to them. A denied request gets no
/// certificate; a request's own claim to be someone else is overwritten by the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_get_client_certificates_an_administrator_approves() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let n = Nodeless::start().unwrap();
    for v in KUBECTL_VERSIONS {
        let tag = v.replace('.', "");
        let user = format!("jane-{tag}");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, user.as_str());
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "dev-team");
        let request = params.serialize_request(&key).unwrap().pem().unwrap();
        for (name, decision) in [(format!("{user}-ok"), "approve"), (format!("{user}-no"), "deny")] {
            let csr = json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
                "metadata": {"name": name},
                "spec": {"request": b64(&request), "signerName": "kubernetes.io/kube-apiserver-client",
                         "usages": ["digital signature", "client auth"], "expirationSeconds": 3600,
                         "username": "system:admin", "groups": ["system:masters"]}});
            let made = n.kubectl_with(v, &n.kubeconfig(), &["create", "-f", "-"], Some(&csr.to_string()));
            assert!(made.status.success(), "kubectl {v} create csr: {}", err(&made));
            let pending = n.kubectl_ok(v, &["get", "csr", &name]);
            assert!(
                pending.contains("Pending") && pending.contains("kubernetes.io/kube-apiserver-client"),
                "{pending}"
            );
            let requester = n.kubectl_ok(v, &["get", "csr", &name, "-o", "jsonpath={.spec.username}"]);
            assert_eq!(requester, "nodeless:admin", "the server writes who asked");
            n.kubectl_ok(v, &["certificate", decision, &name]);
        }
        let approved = format!("{user}-ok");
        let mut cert = String::new();
        eventually(&format!("{approved} to be signed"), 30, || {
            cert = n.kubectl_ok(v, &["get", "csr", &approved, "-o", "jsonpath={.status.certificate}"]);
            !cert.is_empty()
        });
        let shown = n.kubectl_ok(v, &["get", "csr", &approved]);
        assert!(shown.contains("Approved,Issued"), "{shown}");
        let denied = n.kubectl_ok(
            v,
            &[
                "get",
                "csr",
                &format!("{user}-no"),
                "-o",
                "jsonpath={.status.certificate}",
            ],
        );
        assert_eq!(denied, "", "a denied request gets no certificate");
        let pem = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(&cert).unwrap()).unwrap();
        let admin: Value = serde_yaml::from_str(&std::fs::read_to_string(n.kubeconfig()).unwrap()).unwrap();
        let kc = json!({"apiVersion": "v1", "kind": "Config",
            "clusters": admin["clusters"], "contexts": [{"name": "c", "context": {"cluster": admin["clusters"][0]["name"], "user": "jane"}}],
            "current-context": "c",
            "users": [{"name": "jane", "user": {"client-certificate-data": b64(&pem), "client-key-data": b64(&key.serialize_pem())}}]});
        let path = n.data_dir().join(format!("{user}.kubeconfig"));
        std::fs::write(&path, kc.to_string()).unwrap();
        // The refusal names the certificate's user: not the system:admin the body claimed (in
        // system:masters it would have been allowed).
        let refused = n.kubectl_with(v, &path, &["get", "secrets"], None);
        assert!(
            !refused.status.success() && err(&refused).contains(&format!("User \"{user}\" cannot list")),
            "{}",
            err(&refused)
        );
        // kubectl 1.27 asks for SelfSubjectReview's beta version; the v1 one is served.
        if v != "1.27" {
            let who = n.kubectl_with(v, &path, &["auth", "whoami", "-o", "json"], None);
            assert!(who.status.success(), "kubectl {v} auth whoami: {}", err(&who));
            let info: Value = serde_json::from_str(&out(&who)).unwrap();
            assert_eq!(info["status"]["userInfo"]["username"], json!(user));
            let groups = info["status"]["userInfo"]["groups"].to_string();
            assert!(
                groups.contains("dev-team") && !groups.contains("system:masters"),
                "{groups}"
            );
        }
        n.kubectl_ok(
            v,
            &[
                "create",
                "rolebinding",
                &format!("dev-view-{tag}"),
                "--clusterrole=view",
                "--group=dev-team",
            ],
        );
        eventually(&format!("{user} to list pods through its group's binding"), 10, || {
            n.kubectl_with(v, &path, &["get", "pods"], None).status.success()
        });
    }
}
