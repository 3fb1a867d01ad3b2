//! The official Kubernetes Python client (PyPI `kubernetes`) drives create, get, list, patch,
//! watch and delete of every served kind, pods included, and its typed models read what the
//! server answers (see `tests/python-client`).

use std::process::Command;

use nodeless_tests::{Nodeless, workspace_root};

#[test]
fn the_python_client_drives_every_served_kind() {
    let dir = workspace_root().join("tests/python-client");
    let venv = workspace_root().join("target/python-client/venv");
    let python = venv.join("bin/python");
    // A venv that an interrupted run left half made (a python but no pip) is made again.
    if !python.exists() || !venv.join("bin/pip").exists() {
        let made = Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv)
            .status()
            .expect("running python3 -m venv (Python 3 is needed for the Python client test)");
        assert!(made.success(), "python3 -m venv {} failed", venv.display());
    }
    let pip = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(dir.join("requirements.txt"))
        .output()
        .unwrap();
    assert!(
        pip.status.success(),
        "pip install: {}",
        String::from_utf8_lossy(&pip.stderr)
    );
    let n = Nodeless::start().unwrap();
    let out = Command::new(&python)
        .arg(dir.join("drive.py"))
        .arg(n.kubeconfig())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().last() == Some("PASS"),
        "python client: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "ok core/v1 Pod create get list patch watch delete",
        "ok rbac.authorization.k8s.io/v1 Role create get list patch watch delete",
        "ok batch/v1 Job create get list patch watch delete",
        "ok apps/v1 DaemonSet refused with its reason",
        "ok typed replicationcontroller typed-rc",
        "ok not found is 404",
    ] {
        assert!(stdout.contains(step), "missing {step:?}: {stdout}");
    }
    let kinds = stdout
        .lines()
        .filter(|l| l.ends_with("create get list patch watch delete"))
        .count();
    assert!(kinds >= 30, "only {kinds} kinds driven: {stdout}");
}
