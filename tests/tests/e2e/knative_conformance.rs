//! Knative Serving's own conformance tests (`knative.dev/serving` v0.42.2, Knative 1.15:
//! `test/conformance/api/v1` and `test/conformance/runtime`) against `nodeless up` with a node,
//! eni-cni and ingress-l7, built and run by `tests/knative-conformance/{build,run}` (see its
//! README for what passes and why the rest fails). Prints every test's result and fails if one
//! that passed when this test was written fails now: the list below only grows.
//!
//! Times on the 2-core machine: the build takes about 5 minutes with an empty Go cache and
//! 35 s with a warm one. The run is bounded by the suites' timeout, 3 minutes here: the tests
//! that pass take seconds, and one that waits for a Service Nodeless never readies is cut off
//! there. Since pods get ServiceAccount tokens, every test of the two suites passes but the
//! three the suites skip themselves.

use std::process::Command;
use std::time::Instant;

use nodeless_tests::{Nodeless, eventually, kubectl_path, workspace_root};

const V: &str = "1.33";

/// `<suite> <test>` of every test that passed on Nodeless.
const PASSING: [&str; 46] = [
    "api TestAnnotationPropagation",
    "api TestBlueGreenRoute",
    "api TestConfigMapVolume",
    "api TestConfigurationGetAndList",
    "api TestContainerExitingMsg",
    "api TestCustomResourcesLimits",
    "api TestProjectedComplex",
    "api TestProjectedConfigMapVolume",
    "api TestProjectedSecretVolume",
    "api TestProjectedServiceAccountToken",
    "api TestRevisionGetAndList",
    "api TestRevisionTimeout",
    "api TestRouteAndConfigGenerateName",
    "api TestRouteCreation",
    "api TestRouteGetAndList",
    "api TestSecretVolume",
    "api TestServiceAccountValidation",
    "api TestServiceBYOName",
    "api TestServiceCreateAndUpdate",
    "api TestServiceCreateListAndDelete",
    "api TestServiceGenerateName",
    "api TestServiceWithTrafficSplit",
    "api TestSingleConcurrency",
    "api TestUpdateConfigurationMetadata",
    "runtime TestCmdArgs",
    "runtime TestConfigsViaEnv",
    "runtime TestLivenessWithFail",
    "runtime TestMustEnvVars",
    "runtime TestMustHaveCgroupConfigured",
    "runtime TestMustHaveFiles",
    "runtime TestMustHaveHeadersSet",
    "runtime TestMustNotContainerConstraints",
    "runtime TestMustRunAsUser",
    "runtime TestProbeRuntime",
    "runtime TestProbeRuntimeAfterStartup",
    "runtime TestProtocols",
    "runtime TestSecretsViaEnv",
    "runtime TestShouldEnvVars",
    "runtime TestShouldHaveCgroupReadOnly",
    "runtime TestShouldHaveFiles",
    "runtime TestShouldHaveHeadersSet",
    "runtime TestShouldHaveStdinEOF",
    "runtime TestShouldHaveSysctlReadOnly",
    "runtime TestShouldNotContainerConstraints",
    "runtime TestShouldRunAsUserContainerDefault",
    "runtime TestWorkingDirService",
];

#[test]
fn knative_conformance_suite() {
    let started = Instant::now();
    let scripts = workspace_root().join("tests/knative-conformance");
    let out = workspace_root().join("target/knative-conformance");
    let build = Command::new("bash")
        .arg(scripts.join("build"))
        .arg(&out)
        .status()
        .expect("running tests/knative-conformance/build (needs Go)");
    assert!(build.success(), "tests/knative-conformance/build failed");
    let built = started.elapsed();

    // `nodeless up` with its own ingress (as a user runs it) on a free port; its internal
    // listener serves cluster-local routes on the pod network's gateway, port 80.
    let net = nodeless_tests::pod_net();
    let http = format!("127.0.0.1:{}", nodeless_tests::free_port());
    let n = Nodeless::start_with_node(&[
        "--pod-cidr",
        &net.cidr,
        "--cluster-dns",
        &net.dns,
        "--ingress-http",
        &http,
        "--ingress-https",
        "127.0.0.1:0",
        "--ingress-metrics",
        "127.0.0.1:0",
        "--no-lb-pool",
    ])
    .unwrap();
    let images = std::fs::read_to_string(out.join("images.txt")).unwrap();
    for layout in images.lines() {
        n.nodeless(&["image", "import", layout]).unwrap();
    }
    let addr: std::net::SocketAddr = http.parse().unwrap();
    eventually("nodeless up's ingress listening", 60, || {
        std::net::TcpStream::connect(addr).is_ok()
    });

    let run_started = Instant::now();
    let run = Command::new("bash")
        .arg(scripts.join("run"))
        .arg(n.kubeconfig())
        .arg(&http)
        .arg(&out)
        .env("KUBECTL", kubectl_path(V))
        // The passing tests take seconds to a minute; one that waits for what Nodeless does not
        // do is cut off here rather than at the 5-minute default, to keep the wall time down.
        .env("KC_TIMEOUT", "180s")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    assert!(
        run.status.success(),
        "tests/knative-conformance/run failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    println!(
        "build {:?}, run {:?}, whole test {:?}",
        built,
        run_started.elapsed(),
        started.elapsed()
    );

    let results = std::fs::read_to_string(out.join("results.txt")).unwrap();
    let passed: Vec<&str> = results.lines().filter_map(|l| l.strip_prefix("PASS ")).collect();
    let regressed: Vec<&str> = PASSING.iter().copied().filter(|t| !passed.contains(t)).collect();
    assert!(
        regressed.is_empty(),
        "conformance tests that passed before fail now: {regressed:?} (logs: {})",
        out.display()
    );
    let newly: Vec<&&str> = passed.iter().filter(|t| !PASSING.contains(t)).collect();
    if !newly.is_empty() {
        println!("passing now and not yet listed in PASSING: {newly:?}");
    }
}
