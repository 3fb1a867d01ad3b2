//! Knative Serving end to end: `nodeless up` with a node and eni-cni, ingress-l7 following it,
//! kubectl applying Knative Services as Knative's docs write them (with the local echo image),
//! and curl through the ingress. A Service becomes Ready with its URL; an env change makes a
//! new revision; a 50/50 split holds within ±5 % over 1,000 requests; tags route by host and by
//! header; a pinned revision takes everything; an idle revision goes to zero after the grace
//! period and the next request wakes it, none failing; `containerConcurrency: 1` answers ten
//! concurrent requests one at a time; a revision of the HPA class scales on requests per
//! second through an `autoscaling/v2` HPA; a missing image is Ready=False naming it, and so are
//! pods the API refuses; bad specs are refused naming the field.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nodeless_tests::{Nodeless, eventually};

const V: &str = "1.33";

/// The ingress `nodeless up` runs in its own process (the product's own wiring: the internal
/// listener on the pod network's gateway, port 80, for cluster-local routes), on a free port.
struct Ingress {
    http: std::net::SocketAddr,
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .unwrap()
}

/// The revision that answered `GET http://<host><path>` through the ingress (the echo server
/// shows the `Knative-Serving-Revision` field the ingress added), or the status and body.
fn revision_of(ing: &Ingress, host: &str, path: &str, headers: &[&str]) -> String {
    let mut args = vec![
        "-H".to_string(),
        format!("Host: {host}"),
        "-w".into(),
        "\n%{http_code}".into(),
    ];
    for h in headers {
        args.extend(["-H".to_string(), h.to_string()]);
    }
    args.push(format!("http://{}{path}", ing.http));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = curl(&args);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    match body.lines().find_map(revision_line) {
        Some(rev) if code == "200" => rev,
        _ => format!("{code} {} {}", body.trim(), String::from_utf8_lossy(&out.stderr)),
    }
}

/// The revision in the echo server's `header: Knative-Serving-Revision: <name>` line (field
/// names are case-insensitive).
fn revision_line(line: &str) -> Option<String> {
    let (name, value) = line.strip_prefix("header: ")?.split_once(": ")?;
    name.eq_ignore_ascii_case("knative-serving-revision")
        .then(|| value.to_string())
}

/// How many of `n` requests each revision answered (one curl, one kept-alive connection),
/// with the status of each that was not a 200 under `"status <code>"`.
fn tally(ing: &Ingress, host: &str, n: usize) -> std::collections::BTreeMap<String, usize> {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("urls");
    std::fs::write(&config, format!("url = \"http://{}/\"\n", ing.http).repeat(n)).unwrap();
    let out = curl(&[
        "-H",
        &format!("Host: {host}"),
        "-w",
        "\nstatus %{http_code}\n",
        "-K",
        &config.to_string_lossy(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut counts = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rev) = revision_line(line) {
            *counts.entry(rev).or_default() += 1;
        } else if line.starts_with("status ") && line != "status 200" {
            *counts.entry(line.to_string()).or_default() += 1;
        }
    }
    counts
}

fn apply(n: &Nodeless, yaml: &str) -> Output {
    n.kubectl_with(V, &n.kubeconfig(), &["apply", "-f", "-"], Some(yaml))
}

fn ksvc(name: &str, annotations: &str, spec: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    metadata:\n      annotations: {{{annotations}}}\n    spec:\n{spec}"
    )
}

/// `kubectl get <what> -o jsonpath=<path>`; `what` may carry more arguments (`cm/x -n ns`).
fn jsonpath(n: &Nodeless, what: &str, path: &str) -> String {
    let mut args: Vec<&str> = vec!["get"];
    args.extend(what.split_whitespace());
    let path = format!("jsonpath={path}");
    args.extend(["-o", path.as_str()]);
    let out = n.kubectl(V, &args);
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn wait_ready(n: &Nodeless, what: &str) {
    let out = n.kubectl(V, &["wait", what, "--for=condition=Ready", "--timeout=90s"]);
    assert!(
        out.status.success(),
        "{what} not Ready: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(
            &n.kubectl(V, &["get", "ksvc,rev,route,kingress,kpa,pods", "-o", "wide"])
                .stdout
        )
    );
}

fn pods_of(n: &Nodeless, service: &str) -> usize {
    let out = n.kubectl(
        V,
        &[
            "get",
            "pods",
            "-l",
            &format!("serving.knative.dev/service={service}"),
            "-o",
            "name",
        ],
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn knative_services_route_split_and_scale_to_zero() {
    let net = nodeless_tests::pod_net();
    let http_port = nodeless_tests::free_port().to_string();
    let n = Nodeless::start_with_node(&[
        "--pod-cidr",
        &net.cidr,
        "--cluster-dns",
        &net.dns,
        "--ingress-http",
        &format!("127.0.0.1:{http_port}"),
        "--ingress-https",
        "127.0.0.1:0",
        "--ingress-metrics",
        "127.0.0.1:0",
        "--no-lb-pool",
    ])
    .unwrap();
    let ing = Ingress {
        http: format!("127.0.0.1:{http_port}").parse().unwrap(),
    };
    eventually("nodeless up's ingress listening", 60, || {
        std::net::TcpStream::connect(ing.http).is_ok()
    });
    // Knative's install: the CRDs, the knative-serving namespace and its ConfigMaps.
    let crds = n.kubectl_ok(V, &["get", "crd", "-o", "name"]);
    for crd in [
        "services.serving.knative.dev",
        "revisions.serving.knative.dev",
        "routes.serving.knative.dev",
    ] {
        assert!(crds.contains(crd), "{crds}");
    }
    assert_eq!(
        jsonpath(&n, "cm/config-autoscaler -n knative-serving", "{.data.stable-window}"),
        "60s"
    );
    // The grace period short, so the test sees a scale to zero.
    n.kubectl_ok(
        V,
        &[
            "patch",
            "cm",
            "config-autoscaler",
            "-n",
            "knative-serving",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"scale-to-zero-grace-period":"6s"}}"#,
        ],
    );

    // Knative's hello world, with the local image.
    let hello = |target: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  template:\n    spec:\n      containers:\n        - image: nodeless.local/echo:1\n          ports:\n            - containerPort: 8080\n          env:\n            - name: TARGET\n              value: \"{target}\"\n"
        )
    };
    let out = apply(&n, &hello("World"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_ready(&n, "ksvc/hello");
    assert_eq!(
        jsonpath(&n, "ksvc/hello", "{.status.url}"),
        "http://hello.default.example.com"
    );
    assert_eq!(
        jsonpath(&n, "ksvc/hello", "{.status.latestReadyRevisionName}"),
        "hello-00001"
    );
    let table = n.kubectl_ok(V, &["get", "ksvc,configuration,revision,route"]);
    for column in [
        "URL",
        "LATESTCREATED",
        "LATESTREADY",
        "READY",
        "REASON",
        "CONFIG NAME",
        "ACTUAL REPLICAS",
    ] {
        assert!(table.contains(column), "{column} missing in:\n{table}");
    }
    assert!(table.contains("http://hello.default.example.com"), "{table}");
    assert_eq!(revision_of(&ing, "hello.default.example.com", "/", &[]), "hello-00001");
    let env = jsonpath(
        &n,
        "deploy/hello-00001-deployment",
        "{.spec.template.spec.containers[0].env}",
    );
    for var in ["PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION", "TARGET"] {
        assert!(env.contains(var), "{var} not in {env}");
    }

    // An env change: a new revision, and the traffic follows it once it is ready.
    assert!(apply(&n, &hello("Nodeless")).status.success());
    eventually("hello-00002 ready and routed", 90, || {
        jsonpath(&n, "ksvc/hello", "{.status.latestReadyRevisionName}") == "hello-00002"
            && revision_of(&ing, "hello.default.example.com", "/", &[]) == "hello-00002"
    });

    // A 50/50 split with a tag on each side.
    let split = r#"{"spec":{"traffic":[{"revisionName":"hello-00001","percent":50,"tag":"old"},{"latestRevision":true,"percent":50,"tag":"new"}]}}"#;
    n.kubectl_ok(V, &["patch", "ksvc", "hello", "--type", "merge", "-p", split]);
    eventually("the split in the route's status", 30, || {
        jsonpath(&n, "route/hello", "{.status.traffic[*].tag}") == "old new"
            && jsonpath(&n, "ksvc/hello", "{.status.conditions[?(@.type=='Ready')].status}") == "True"
    });
    assert_eq!(
        jsonpath(&n, "ksvc/hello", "{.status.traffic[0].url}"),
        "http://old-hello.default.example.com"
    );
    let counts = tally(&ing, "hello.default.example.com", 1000);
    let (a, b) = (
        counts.get("hello-00001").copied().unwrap_or(0),
        counts.get("hello-00002").copied().unwrap_or(0),
    );
    assert_eq!(a + b, 1000, "{counts:?}");
    assert!((450..=550).contains(&a), "not 50/50 within 5 %: {counts:?}");
    // Tags: by host, and by the Knative-Serving-Tag header on the main host.
    assert_eq!(
        revision_of(&ing, "old-hello.default.example.com", "/", &[]),
        "hello-00001"
    );
    assert_eq!(
        revision_of(&ing, "new-hello.default.example.com", "/", &[]),
        "hello-00002"
    );
    assert_eq!(
        revision_of(&ing, "hello.default.example.com", "/", &["Knative-Serving-Tag: old"]),
        "hello-00001"
    );
    // Pinning the old revision.
    n.kubectl_ok(
        V,
        &[
            "patch",
            "ksvc",
            "hello",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"traffic":[{"revisionName":"hello-00001","percent":100}]}}"#,
        ],
    );
    eventually("everything to hello-00001", 30, || {
        jsonpath(&n, "route/hello", "{.status.traffic[*].revisionName}") == "hello-00001"
    });
    let pinned = tally(&ing, "hello.default.example.com", 50);
    assert_eq!(pinned.get("hello-00001"), Some(&50), "{pinned:?}");

    // Bad specs are refused, naming the field.
    for (traffic, field) in [
        (
            r#"[{"latestRevision":true,"percent":50},{"revisionName":"hello-00001","percent":40}]"#,
            "spec.traffic",
        ),
        (
            r#"[{"latestRevision":true,"percent":50,"tag":"a"},{"revisionName":"hello-00001","percent":50,"tag":"a"}]"#,
            "spec.traffic[1].tag",
        ),
    ] {
        let out = n.kubectl(
            V,
            &[
                "patch",
                "ksvc",
                "hello",
                "--type",
                "merge",
                "-p",
                &format!(r#"{{"spec":{{"traffic":{traffic}}}}}"#),
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(field), "{field}: {err}");
    }
    let bad_name = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: named}\nspec:\n  template:\n    metadata: {name: other-1}\n    spec: {containers: [{image: nodeless.local/echo:1}]}\n";
    let err = String::from_utf8_lossy(&apply(&n, bad_name).stderr).to_string();
    assert!(err.contains("spec.template.metadata.name"), "{err}");
    // initial-scale 0 only where config-autoscaler allows it (it does not by default).
    let at_zero = ksvc(
        "zero",
        "autoscaling.knative.dev/initial-scale: \"0\"",
        "      containers: [{image: nodeless.local/echo:1}]\n",
    );
    let err = String::from_utf8_lossy(&apply(&n, &at_zero).stderr).to_string();
    assert!(
        err.contains("invalid value: 0: spec.template.metadata.annotations.autoscaling.knative.dev/initial-scale"),
        "{err}"
    );
    let two_ports = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: ports}\nspec:\n  template:\n    spec: {containers: [{image: nodeless.local/echo:1, ports: [{containerPort: 8080}, {containerPort: 8081}]}]}\n";
    let err = String::from_utf8_lossy(&apply(&n, two_ports).stderr).to_string();
    assert!(err.contains("spec.template.spec.containers[*].ports"), "{err}");

    // containerConcurrency 1 on one pod: ten concurrent requests of 300 ms, all answered, one
    // at a time (so no sooner than ten times one).
    let single = ksvc(
        "single",
        "autoscaling.knative.dev/min-scale: \"1\", autoscaling.knative.dev/max-scale: \"1\"",
        "      containerConcurrency: 1\n      containers: [{image: nodeless.local/echo:1}]\n",
    );
    assert!(apply(&n, &single).status.success());
    wait_ready(&n, "ksvc/single");
    let started = Instant::now();
    let workers: Vec<_> = (0..10)
        .map(|_| {
            let url = format!("http://{}/sleep/300", ing.http);
            std::thread::spawn(move || {
                let out = curl(&[
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-H",
                    "Host: single.default.example.com",
                    &url,
                ]);
                String::from_utf8_lossy(&out.stdout).to_string()
            })
        })
        .collect();
    let codes: Vec<String> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let took = started.elapsed();
    assert!(codes.iter().all(|c| c == "200"), "{codes:?}");
    assert!(
        took >= Duration::from_millis(2900),
        "ten 300 ms requests on cc=1 took only {took:?}"
    );
    assert_eq!(pods_of(&n, "single"), 1);

    // Scale to zero after the grace period, and back on the next request, none failing.
    let sleepy = ksvc(
        "sleepy",
        "autoscaling.knative.dev/window: \"6s\"",
        "      containers: [{image: nodeless.local/echo:1}]\n",
    );
    assert!(apply(&n, &sleepy).status.success());
    wait_ready(&n, "ksvc/sleepy");
    assert_eq!(
        revision_of(&ing, "sleepy.default.example.com", "/", &[]),
        "sleepy-00001"
    );
    eventually("sleepy at zero pods", 90, || pods_of(&n, "sleepy") == 0);
    assert_eq!(jsonpath(&n, "kpa/sleepy-00001", "{.status.desiredScale}"), "0");
    // Knative's autoscaler metrics, in control's /metrics.
    let labels = r#"{namespace_name="default",configuration_name="sleepy",revision_name="sleepy-00001"}"#;
    eventually("the autoscaler's metrics at zero", 10, || {
        let metrics = n.kubectl_ok(V, &["get", "--raw", "/metrics"]);
        [
            format!("autoscaler_desired_pods{labels} 0"),
            format!("autoscaler_actual_pods{labels} 0"),
            format!("autoscaler_panic_mode{labels} 0"),
        ]
        .iter()
        .all(|line| metrics.lines().any(|l| l == line))
    });
    assert_eq!(
        jsonpath(
            &n,
            "rev/sleepy-00001",
            "{.status.conditions[?(@.type=='Active')].reason}"
        ),
        "NoTraffic"
    );
    let started = Instant::now();
    let woke: Vec<_> = (0..5)
        .map(|_| {
            let url = format!("http://{}/", ing.http);
            std::thread::spawn(move || {
                let out = curl(&[
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-H",
                    "Host: sleepy.default.example.com",
                    &url,
                ]);
                String::from_utf8_lossy(&out.stdout).to_string()
            })
        })
        .collect();
    let codes: Vec<String> = woke.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(
        codes.iter().all(|c| c == "200"),
        "requests during the cold start: {codes:?}"
    );
    println!(
        "knative: five requests to a revision at zero answered in {:?}",
        started.elapsed()
    );
    assert!(pods_of(&n, "sleepy") >= 1);

    // A cluster-local Service: reachable from a pod by its cluster name, not from outside.
    let local = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: local\n  labels: {networking.knative.dev/visibility: cluster-local}\nspec:\n  template:\n    spec: {containers: [{image: nodeless.local/echo:1}]}\n";
    assert!(apply(&n, local).status.success());
    wait_ready(&n, "ksvc/local");
    assert_eq!(
        jsonpath(&n, "ksvc/local", "{.status.url}"),
        "http://local.default.svc.cluster.local"
    );
    assert!(
        revision_of(&ing, "local.default.svc.cluster.local", "/", &[]).starts_with("404"),
        "a cluster-local route answered on the public listener"
    );
    assert!(apply(&n, &nodeless_tests::echo_pod("asker", "asker")).status.success());
    n.kubectl_ok(V, &["wait", "--for=condition=Ready", "pod/asker", "--timeout=60s"]);
    eventually("local.default.svc.cluster.local from a pod", 60, || {
        let out = n.kubectl(
            V,
            &[
                "exec",
                "asker",
                "--",
                "/echo-server",
                "get",
                "http://local.default.svc.cluster.local:80/",
            ],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| revision_line(l).as_deref() == Some("local-00001"))
    });

    // A missing image: Ready=False, naming it.
    let bad = ksvc(
        "bad",
        "",
        "      containers: [{image: nodeless.local/does-not-exist:1}]\n",
    );
    assert!(apply(&n, &bad).status.success());
    eventually("bad image reported", 60, || {
        jsonpath(&n, "ksvc/bad", "{.status.conditions[?(@.type=='Ready')].status}") == "False"
    });
    let message = jsonpath(&n, "ksvc/bad", "{.status.conditions[?(@.type=='Ready')].message}");
    assert!(message.contains("nodeless.local/does-not-exist:1"), "{message}");
    assert_eq!(
        jsonpath(&n, "ksvc/bad", "{.status.conditions[?(@.type=='Ready')].reason}"),
        "RevisionFailed"
    );

    // The HPA class on Knative's request metric: the revision gets an autoscaling/v2 HPA on
    // `rps` (per pod, measured by the ingress), which scales its Deployment up under load and
    // back to min-scale after it, within the window.
    let busy = ksvc(
        "busy",
        "autoscaling.knative.dev/class: hpa.autoscaling.knative.dev, autoscaling.knative.dev/metric: rps, autoscaling.knative.dev/target: \"5\", autoscaling.knative.dev/max-scale: \"3\", autoscaling.knative.dev/window: \"10s\"",
        "      containers: [{image: nodeless.local/echo:1}]\n",
    );
    assert!(apply(&n, &busy).status.success());
    wait_ready(&n, "ksvc/busy");
    let hpa = |path: &str| jsonpath(&n, "hpa/busy-00001", path);
    assert_eq!(hpa("{.spec.metrics[0].pods.metric.name}"), "rps");
    assert_eq!(hpa("{.spec.metrics[0].pods.target.averageValue}"), "5");
    assert_eq!(hpa("{.spec.minReplicas} {.spec.maxReplicas}"), "1 3");
    assert_eq!(hpa("{.spec.behavior.scaleDown.stabilizationWindowSeconds}"), "10");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, http) = (stop.clone(), ing.http);
        // At most 120 s of requests, about 100 per curl.
        std::thread::spawn(move || {
            let started = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
                tally(&Ingress { http }, "busy.default.example.com", 100);
            }
        })
    };
    eventually("the HPA scaled busy to 3 pods under load", 90, || {
        jsonpath(&n, "deploy/busy-00001-deployment", "{.spec.replicas}") == "3"
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    let current = hpa("{.status.currentMetrics[0].pods.current.averageValue}");
    assert!(!current.is_empty(), "the HPA reports the rps it saw");
    let events = n.kubectl_ok(
        V,
        &["get", "events", "--field-selector", "involvedObject.name=busy-00001"],
    );
    assert!(events.contains("pods metric rps above target"), "{events}");
    eventually("busy back to one pod after the load", 90, || {
        jsonpath(&n, "deploy/busy-00001-deployment", "{.spec.replicas}") == "1"
    });
    // The PodAutoscaler's status follows (the autoscaler's next tick, every 2 s).
    eventually("busy's PodAutoscaler at one", 10, || {
        jsonpath(&n, "kpa/busy-00001", "{.status.desiredScale}") == "1"
    });

    // Pods the API refuses (here: a ServiceAccount the namespace lacks): Ready=False with the
    // reason, not Unknown forever.
    let refused = ksvc(
        "nobody",
        "",
        "      serviceAccountName: ghost\n      containers: [{image: nodeless.local/echo:1}]\n",
    );
    assert!(apply(&n, &refused).status.success());
    eventually("refused pods reported", 60, || {
        jsonpath(
            &n,
            "rev/nobody-00001",
            "{.status.conditions[?(@.type=='Ready')].status}",
        ) == "False"
    });
    let message = jsonpath(
        &n,
        "rev/nobody-00001",
        "{.status.conditions[?(@.type=='Ready')].message}",
    );
    assert!(message.contains(r#"serviceaccount "ghost" not found"#), "{message}");
    assert_eq!(
        jsonpath(
            &n,
            "rev/nobody-00001",
            "{.status.conditions[?(@.type=='Ready')].reason}"
        ),
        "FailedCreate"
    );

    // Deleting the Service takes everything it made with it.
    n.kubectl_ok(V, &["delete", "ksvc", "hello"]);
    eventually("hello's children gone", 60, || {
        let left = n.kubectl(
            V,
            &["get", "configuration,revision,route,kingress,deploy", "-o", "name"],
        );
        !String::from_utf8_lossy(&left.stdout).contains("hello")
    });
}
