//! client-go, the library Kubernetes controllers are written with, speaking only protobuf to
//! control: `tests/client-go` creates, gets, lists, watches, updates, patches and deletes built-in
//! kinds with `application/vnd.kubernetes.protobuf` as both its content type and its only Accept,
//! and checks every field it wrote comes back (IntOrString, Quantity, inline Go structs, bytes).

use std::process::Command;

use nodeless_tests::{Nodeless, workspace_root};

#[test]
fn client_go_speaks_protobuf_only() {
    let n = Nodeless::start().unwrap();
    let bin = n.dir.path().join("client-go-proto");
    let build = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(workspace_root().join("tests/client-go"))
        .envs([
            ("GOWORK", "off"),
            ("GOFLAGS", "-mod=mod"),
            ("CGO_ENABLED", "0"),
            ("GOTOOLCHAIN", "local"),
        ])
        .output()
        .expect("running go build (Go is needed for the client-go test)");
    assert!(
        build.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    let out = Command::new(&bin).arg(n.kubeconfig()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().last() == Some("PASS"),
        "client-go: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in ["deployment answer", "watch events", "not found", "invalid"] {
        assert!(stdout.contains(&format!("ok {step}\n")), "{stdout}");
    }
}
