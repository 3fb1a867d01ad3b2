//! A user's day with the real kubectl, newest and oldest installed version.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use nodeless_tests::kubelet::FakeKubelet;
use nodeless_tests::{Nodeless, eventually, kubectl_path};

fn manifest(env_value: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  namespace: shop
data:
  greeting: hello
---
apiVersion: v1
kind: Secret
metadata:
  name: web-secret
  namespace: shop
type: Opaque
stringData:
  password: s3cret
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: app
        image: registry.example/echo:1.0
        ports:
        - name: http
          containerPort: 8080
        env:
        - name: MODE
          value: "{env_value}"
        - name: GREETING
          valueFrom:
            configMapKeyRef:
              name: web-config
              key: greeting
        resources:
          requests:
            cpu: 100m
            memory: 64Mi
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: http
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  namespace: shop
spec:
  rules:
  - host: shop.example.com
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: web
            port:
              number: 80
"#
    )
}

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names:
    kind: Widget
    plural: widgets
    singular: widget
    shortNames: [wd]
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size:
                type: integer
                minimum: 1
"#;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn user_workflow(v: &str) {
    let n = Nodeless::start().unwrap();
    let _kubelet = FakeKubelet::start(n.client().await.unwrap(), "vk-e2e").await.unwrap();
    let file = n.dir.path().join("app.yaml");
    std::fs::write(&file, manifest("blue")).unwrap();
    let f = file.to_str().unwrap();
    let k = |args: &[&str]| n.kubectl_ok(v, args);

    // apply, get, get -o yaml, rollout status
    let out = k(&["apply", "-f", f]);
    for created in [
        "namespace/shop created",
        "deployment.apps/web created",
        "service/web created",
        "ingress.networking.k8s.io/web created",
        "configmap/web-config created",
        "secret/web-secret created",
    ] {
        assert!(out.contains(created), "{out}");
    }
    let out = k(&["rollout", "status", "deployment/web", "-n", "shop", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let table = k(&["get", "deployments", "-n", "shop"]);
    assert!(
        table.contains("READY") && table.contains("web") && table.contains("2/2"),
        "{table}"
    );
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&k(&["get", "deployment", "web", "-n", "shop", "-o", "yaml"])).unwrap();
    assert_eq!(yaml["kind"].as_str(), Some("Deployment"));
    assert_eq!(yaml["spec"]["replicas"].as_i64(), Some(2));
    assert_eq!(yaml["status"]["readyReplicas"].as_i64(), Some(2));
    let secret = k(&[
        "get",
        "secret",
        "web-secret",
        "-n",
        "shop",
        "-o",
        "jsonpath={.data.password}",
    ]);
    assert_eq!(secret, "czNjcmV0", "stringData becomes base64 data");
    let svc_ip = k(&["get", "svc", "web", "-n", "shop", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(svc_ip.starts_with("10.96."), "{svc_ip}");
    eventually("the EndpointSlice lists both ready pods", 20, || {
        let eps = n.kubectl(
            v,
            &[
                "get",
                "endpointslices",
                "-n",
                "shop",
                "-l",
                "kubernetes.io/service-name=web",
                "-o",
                "jsonpath={.items[0].endpoints[*].conditions.ready}",
            ],
        );
        stdout(&eps) == "true true"
    });

    // A second identical apply changes nothing.
    let rv = k(&[
        "get",
        "deployment",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    let out = k(&["apply", "-f", f]);
    assert!(out.contains("deployment.apps/web unchanged"), "{out}");
    let rv2 = k(&[
        "get",
        "deployment",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    assert_eq!(rv, rv2, "an unchanged apply must not write");

    // Changing one env var merges into the container (strategic merge patch by name).
    std::fs::write(&file, manifest("green")).unwrap();
    let out = k(&["apply", "-f", f]);
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let env = k(&[
        "get",
        "deployment",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={range .spec.template.spec.containers[0].env[*]}{.name}={.value}{.valueFrom.configMapKeyRef.key};{end}",
    ]);
    assert_eq!(env, "MODE=green;GREETING=greeting;", "{env}");
    let image = k(&[
        "get",
        "deployment",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(image, "registry.example/echo:1.0");
    let out = k(&["rollout", "status", "deployment/web", "-n", "shop", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let rs = k(&["get", "rs", "-n", "shop", "-o", "name"]);
    assert_eq!(rs.lines().count(), 2, "one ReplicaSet per template: {rs}");

    // rollout undo goes back to the first template.
    k(&["rollout", "undo", "deployment/web", "-n", "shop"]);
    k(&["rollout", "status", "deployment/web", "-n", "shop", "--timeout=60s"]);
    let mode = k(&[
        "get",
        "deployment",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].env[0].value}",
    ]);
    assert_eq!(mode, "blue");

    // scale
    k(&["scale", "deployment/web", "-n", "shop", "--replicas=3"]);
    k(&["rollout", "status", "deployment/web", "-n", "shop", "--timeout=60s"]);
    eventually("3 pods run", 20, || {
        stdout(&n.kubectl(v, &["get", "pods", "-n", "shop", "-l", "app=web", "-o", "name"]))
            .lines()
            .count()
            == 3
    });

    // describe
    let d = k(&["describe", "deployment", "web", "-n", "shop"]);
    assert!(d.contains("Replicas:") && d.contains("3 desired"), "{d}");
    let pod = k(&[
        "get",
        "pods",
        "-n",
        "shop",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let d = k(&["describe", "pod", &pod, "-n", "shop"]);
    assert!(d.contains("Status:") && d.contains("Running"), "{d}");

    // server-side apply
    let cm =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  namespace: shop\ndata:\n  a: \"1\"\n  b: \"2\"\n";
    let out = n.kubectl_with(v, &n.kubeconfig(), &["apply", "--server-side", "-f", "-"], Some(cm));
    assert!(
        out.status.success() && stdout(&out).contains("configmap/ssa serverside-applied"),
        "{} {}",
        stdout(&out),
        stderr(&out)
    );
    let cm2 = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  namespace: shop\ndata:\n  a: \"10\"\n";
    let out = n.kubectl_with(v, &n.kubeconfig(), &["apply", "--server-side", "-f", "-"], Some(cm2));
    assert!(out.status.success(), "{}", stderr(&out));
    let data = k(&["get", "cm", "ssa", "-n", "shop", "-o", "jsonpath={.data}"]);
    assert_eq!(data, r#"{"a":"10"}"#, "a field the manager stopped applying is removed");

    // get -w sees a change
    let mut watch = Command::new(kubectl_path(v))
        .env("KUBECONFIG", n.kubeconfig())
        .args([
            "get",
            "cm",
            "web-config",
            "-n",
            "shop",
            "-w",
            "-o",
            "jsonpath={.data.greeting}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let out = watch.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        })
    };
    eventually("the watch prints the current value", 20, || {
        lines.lock().unwrap().iter().any(|l| l == "hello")
    });
    k(&[
        "patch",
        "cm",
        "web-config",
        "-n",
        "shop",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"greeting":"bonjour"}}"#,
    ]);
    eventually("the watch prints the new value", 20, || {
        lines.lock().unwrap().iter().any(|l| l == "bonjour")
    });
    let _ = watch.kill();
    let _ = watch.wait();
    let _ = reader.join();

    // A CRD, then its objects.
    let out = n.kubectl_with(v, &n.kubeconfig(), &["apply", "-f", "-"], Some(CRD));
    assert!(out.status.success(), "{}", stderr(&out));
    let widget =
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\n  namespace: shop\nspec:\n  size: 3\n";
    let out = n.kubectl_with(v, &n.kubeconfig(), &["apply", "-f", "-"], Some(widget));
    assert!(
        out.status.success() && stdout(&out).contains("widget.example.com/w1 created"),
        "{} {}",
        stdout(&out),
        stderr(&out)
    );
    let got = k(&["get", "wd", "-n", "shop", "-o", "jsonpath={.items[0].spec.size}"]);
    assert_eq!(got, "3");
    let bad_widget =
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w2\n  namespace: shop\nspec:\n  size: 0\n";
    let out = n.kubectl_with(v, &n.kubeconfig(), &["apply", "-f", "-"], Some(bad_widget));
    assert!(
        !out.status.success() && stderr(&out).contains("spec.size"),
        "{}",
        stderr(&out)
    );

    // A bad manifest gets kubectl's error with the field.
    let bad = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: broken\n  namespace: shop\nspec:\n  selector:\n    matchLabels: {app: b}\n  template:\n    metadata:\n      labels: {app: b}\n    spec:\n      containers:\n      - name: c\n";
    let out = n.kubectl_with(v, &n.kubeconfig(), &["apply", "-f", "-"], Some(bad));
    assert!(!out.status.success(), "a container without an image must be refused");
    assert!(
        stderr(&out).contains("spec.template.spec.containers[0].image"),
        "{}",
        stderr(&out)
    );
    let typo = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: typo\n  namespace: shop\ndatta:\n  a: b\n";
    let out = n.kubectl_with(v, &n.kubeconfig(), &["apply", "-f", "-"], Some(typo));
    assert!(
        !out.status.success() && stderr(&out).contains("unknown field \"datta\""),
        "{}",
        stderr(&out)
    );

    // delete: the namespace takes everything in it along.
    // The file's namespace comes first, and its controller may delete the
    // service before kubectl's own delete reaches it, as on any cluster:
    // users pass --ignore-not-found for that.
    let out = k(&["delete", "-f", f, "--ignore-not-found", "--wait=true", "--timeout=60s"]);
    assert!(out.contains("namespace \"shop\" deleted"), "{out}");
    eventually("the namespace is gone", 30, || {
        !n.kubectl(v, &["get", "ns", "shop"]).status.success()
    });
    let left = k(&[
        "get",
        "pods,rs,deploy,svc,cm,endpointslices",
        "-A",
        "-o",
        "name",
        "--field-selector",
        "metadata.namespace=shop",
    ]);
    assert!(left.trim().is_empty(), "objects left behind: {left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_newest() {
    user_workflow("1.33").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_oldest() {
    user_workflow("1.27").await;
}

/// control's `/metrics`, as `kubectl get --raw /metrics` reads it: requests by kube-apiserver's
/// verb, resource and code, open watches, the store's commits; the read-only user may read it,
/// a client without a token may not.
#[test]
fn control_serves_its_metrics() {
    let n = Nodeless::start().unwrap();
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: m1}\ndata: {a: b}\n";
    let created = n.kubectl_with("1.33", &n.kubeconfig(), &["create", "-f", "-"], Some(cm));
    assert!(created.status.success(), "{}", stderr(&created));
    n.kubectl_ok("1.33", &["get", "configmaps"]);
    let mut watch = Command::new(kubectl_path("1.33"))
        .env("KUBECONFIG", n.kubeconfig())
        .args(["get", "configmaps", "--watch", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(watch.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // kubectl prints the list's first line before it opens the watch: wait for the watch to be
    // counted (bounded), then read everything from that one answer.
    let gauge = r#"apiserver_registered_watchers{group="",version="v1",kind="ConfigMap"}"#;
    let mut text = String::new();
    eventually("the open watch to be counted", 30, || {
        text = n.kubectl_ok("1.33", &["get", "--raw", "/metrics"]);
        text.lines().any(|l| l.starts_with(gauge) && !l.ends_with(" 0"))
    });
    let _ = watch.kill();
    let _ = watch.wait();
    let has = |needle: &str| text.lines().any(|l| l.starts_with(needle));
    assert!(
        has(
            r#"apiserver_request_total{verb="POST",group="",version="v1",resource="configmaps",subresource="",code="201"}"#
        ),
        "{text}"
    );
    assert!(
        has(
            r#"apiserver_request_total{verb="LIST",group="",version="v1",resource="configmaps",subresource="",code="200"}"#
        ),
        "{text}"
    );
    assert!(
        has(r#"apiserver_request_duration_seconds_count{verb="LIST",group="",version="v1",resource="configmaps""#),
        "{text}"
    );
    let watchers = text
        .lines()
        .find(|l| l.starts_with(r#"apiserver_registered_watchers{group="",version="v1",kind="ConfigMap"}"#))
        .unwrap_or_else(|| panic!("no watcher gauge: {text}"));
    assert!(watchers.ends_with(" 1"), "the open watch is counted: {watchers}");
    let commits: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("nodeless_store_commit_duration_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no commit histogram: {text}"));
    assert!(commits >= 1, "{text}");
    // The read-only user reads it; no token, no metrics.
    let viewer = n.kubectl_with("1.33", &n.viewer_kubeconfig(), &["get", "--raw", "/metrics"], None);
    assert!(viewer.status.success(), "{}", stderr(&viewer));
    let anonymous = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://127.0.0.1:{}/metrics", n.port))
        .output()
        .unwrap();
    assert_eq!(stdout(&anonymous), "401");
}

/// kubectl's typed commands send protobuf bodies (kubectl 1.33 answered 415 before) and read
/// protobuf answers; what they create reads back as JSON exactly as it was meant.
fn typed_commands(v: &str) {
    let n = Nodeless::start().unwrap();
    let k = |args: &[&str]| n.kubectl_ok(v, args);
    assert!(k(&["create", "namespace", "typed"]).contains("namespace/typed created"));
    let out = k(&[
        "create",
        "deployment",
        "web",
        "-n",
        "typed",
        "--image=registry.local/web:1.2",
        "--replicas=3",
        "--port=8080",
        "-o",
        "yaml",
    ]);
    assert!(
        out.contains("image: registry.local/web:1.2") && out.contains("replicas: 3"),
        "{out}"
    );
    assert!(
        out.contains("creationTimestamp: \"20"),
        "the answer carries the server's metadata: {out}"
    );
    let out = k(&[
        "create",
        "configmap",
        "conf",
        "-n",
        "typed",
        "--from-literal=a=b",
        "--from-literal=empty=",
    ]);
    assert!(out.contains("configmap/conf created"), "{out}");
    let out = k(&[
        "create",
        "secret",
        "generic",
        "pw",
        "-n",
        "typed",
        "--from-literal=pw=s3cret",
    ]);
    assert!(out.contains("secret/pw created"), "{out}");
    let out = k(&["create", "service", "clusterip", "web", "-n", "typed", "--tcp=80:8080"]);
    assert!(out.contains("service/web created"), "{out}");

    let get = |what: &str, path: &str| k(&["get", what, "-n", "typed", "-o", &format!("jsonpath={path}")]);
    assert_eq!(get("configmap/conf", "{.data}"), r#"{"a":"b","empty":""}"#);
    assert_eq!(get("secret/pw", "{.data.pw}"), "czNjcmV0");
    assert_eq!(
        get(
            "deployment/web",
            "{.spec.template.spec.containers[0].ports[0].containerPort}"
        ),
        "8080"
    );
    assert_eq!(get("service/web", "{.spec.ports[0].targetPort}"), "8080");
    assert!(!get("service/web", "{.spec.clusterIP}").is_empty());

    // Typed updates and deletes go as protobuf as well.
    let out = k(&["scale", "deployment/web", "-n", "typed", "--replicas=1"]);
    assert!(out.contains("scaled"), "{out}");
    assert_eq!(get("deployment/web", "{.spec.replicas}"), "1");
    let out = k(&[
        "set",
        "image",
        "deployment/web",
        "-n",
        "typed",
        "web=registry.local/web:1.3",
    ]);
    assert!(out.contains("image updated"), "{out}");
    assert_eq!(
        get("deployment/web", "{.spec.template.spec.containers[0].image}"),
        "registry.local/web:1.3"
    );
    let out = k(&["delete", "configmap", "conf", "-n", "typed"]);
    assert!(out.contains("deleted"), "{out}");
    assert!(
        !n.kubectl(v, &["get", "configmap", "conf", "-n", "typed"])
            .status
            .success()
    );

    // kubectl autoscale: 1.27 makes the HPA in autoscaling/v1, 1.33 in v2; either reads back in
    // both versions (v1 is a view of the stored v2 object).
    let out = k(&[
        "autoscale",
        "deployment/web",
        "-n",
        "typed",
        "--min=1",
        "--max=4",
        "--cpu-percent=60",
    ]);
    assert!(out.contains("autoscaled"), "{out}");
    assert_eq!(
        get(
            "hpa/web",
            "{.apiVersion} {.spec.metrics[0].resource.target.averageUtilization}"
        ),
        "autoscaling/v2 60"
    );
    assert_eq!(
        get(
            "horizontalpodautoscalers.v1.autoscaling/web",
            "{.apiVersion} {.spec.targetCPUUtilizationPercentage} {.spec.maxReplicas}"
        ),
        "autoscaling/v1 60 4"
    );
    let out = k(&[
        "patch",
        "horizontalpodautoscalers.v1.autoscaling/web",
        "-n",
        "typed",
        "-p",
        r#"{"spec":{"targetCPUUtilizationPercentage":75}}"#,
    ]);
    assert!(out.contains("patched"), "{out}");
    assert_eq!(
        get("hpa/web", "{.spec.metrics[0].resource.target.averageUtilization}"),
        "75"
    );

    // The legacy ReplicationController, which client libraries' own tests still use.
    let rc = "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: legacy, namespace: typed}\nspec:\n  replicas: 2\n  template:\n    metadata: {labels: {app: legacy}}\n    spec: {containers: [{name: c, image: registry.local/web:1}]}\n";
    let out = n.kubectl_with(v, &n.kubeconfig(), &["apply", "-f", "-"], Some(rc));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        get("rc/legacy", "{.spec.selector.app}"),
        "legacy",
        "the selector defaults to the template's labels"
    );
    let out = k(&["scale", "rc/legacy", "-n", "typed", "--replicas=3"]);
    assert!(out.contains("scaled"), "{out}");
    nodeless_tests::eventually("the ReplicationController keeps three pods", 30, || {
        let pods = n.kubectl(v, &["get", "pods", "-n", "typed", "-l", "app=legacy", "-o", "name"]);
        stdout(&pods).lines().count() == 3 && get("rc/legacy", "{.status.replicas}") == "3"
    });

    // A LimitRange sizes pods that do not say (as ASK sizes each pod from its requests) and
    // refuses those out of bounds.
    let lr = "apiVersion: v1\nkind: LimitRange\nmetadata: {name: sizes, namespace: typed}\nspec:\n  limits:\n  - type: Container\n    default: {cpu: 500m, memory: 256Mi}\n    defaultRequest: {cpu: 100m, memory: 128Mi}\n    max: {cpu: \"2\"}\n";
    let out = n.kubectl_with(v, &n.kubeconfig(), &["apply", "-f", "-"], Some(lr));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = k(&["run", "sized", "-n", "typed", "--image=registry.local/web:1"]);
    assert!(out.contains("pod/sized created"), "{out}");
    assert_eq!(
        get("pod/sized", "{.spec.containers[0].resources}"),
        r#"{"limits":{"cpu":"500m","memory":"256Mi"},"requests":{"cpu":"100m","memory":"128Mi"}}"#
    );
    assert_eq!(get("pod/sized", "{.status.qosClass}"), "Burstable");
    let big = n.kubectl(
        v,
        &["run", "big", "-n", "typed", "--image=registry.local/web:1", "--overrides", r#"{"spec":{"containers":[{"name":"big","image":"registry.local/web:1","resources":{"limits":{"cpu":"3"}}}]}}"#],
    );
    assert!(!big.status.success());
    assert!(
        stderr(&big).contains("maximum cpu usage per Container is 2, but limit is 3"),
        "{}",
        stderr(&big)
    );

    // Aggregated discovery: a cold cache fills from /api and /apis alone.
    let cache = n.dir.path().join(format!("cache-{v}"));
    let cache_arg = format!("--cache-dir={}", cache.display());
    let out = n.kubectl(v, &["get", "deployments", "-A", "-v=6", &cache_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    let fetched: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("https://").nth(1))
        .filter_map(|l| l.split(['?', '"', ' ']).next())
        .filter_map(|l| l.split_once('/').map(|(_, path)| path))
        .collect();
    assert_eq!(fetched, ["api", "apis", "apis/apps/v1/deployments"], "{log}");
}

#[test]
fn typed_commands_speak_protobuf_newest() {
    typed_commands("1.33");
}

#[test]
fn typed_commands_speak_protobuf_oldest() {
    typed_commands("1.27");
}
