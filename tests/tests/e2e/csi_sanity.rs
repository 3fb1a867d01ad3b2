//! kubernetes-csi's own conformance suite, csi-sanity (built with Go from the module proxy,
//! pinned in `tests/csi-sanity`), against each driver run alone on a socket: `nodeless csi disk`
//! with a filesystem volume and with a raw block one, `nodeless csi oss` against a bucket the
//! test serves (with the provisioner and node-publish secrets csi-sanity passes). Every test
//! that applies to a driver's capabilities passes; the ones csi-sanity skips are those of
//! capabilities the driver does not claim (snapshots, cloning, ModifyVolume…). The counts are
//! printed. Nothing of the drivers' volumes (loop devices, mounts, mount processes) is left
//! afterwards.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nodeless_tests::{nodeless_binary, workspace_root};

/// The driver process, stopped however the test ends.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// csi-sanity's summary line: `SUCCESS! -- 59 Passed | 0 Failed | 1 Pending | 43 Skipped`.
fn counts(out: &str) -> Option<(u32, u32, u32, u32)> {
    let line = out.lines().rev().find(|l| l.contains(" Passed | "))?;
    let num = |word: &str| -> Option<u32> {
        line.split('|')
            .find(|p| p.contains(word))?
            .split_whitespace()
            .rev()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((num("Passed")?, num("Failed")?, num("Pending")?, num("Skipped")?))
}

/// Build csi-sanity into `dir`.
fn build_sanity(dir: &Path) -> PathBuf {
    let sanity = dir.join("csi-sanity");
    let t0 = Instant::now();
    let build = Command::new(workspace_root().join("tests/csi-sanity/build"))
        .arg(&sanity)
        .output()
        .expect("tests/csi-sanity/build (Go is needed for csi-sanity)");
    assert!(
        build.status.success(),
        "building csi-sanity: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    println!("csi-sanity built in {:.1} s", t0.elapsed().as_secs_f64());
    sanity
}

/// `nodeless csi <driver> --endpoint … --state-dir <dir>/state --node-id …`, once its socket is
/// there.
fn start_driver(dir: &Path, driver: &str) -> (Driver, String) {
    let socket = dir.join(format!("{driver}.sock"));
    let endpoint = format!("unix://{}", socket.display());
    let d = Driver(
        Command::new(nodeless_binary().unwrap())
            .args(["csi", driver, "--endpoint", &endpoint, "--state-dir"])
            .arg(dir.join(format!("state-{driver}")))
            .args(["--node-id", &format!("sanity-{}", std::process::id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the driver's socket did not appear");
        std::thread::sleep(Duration::from_millis(50));
    }
    (d, endpoint)
}

/// Run csi-sanity; every test that runs passes, and at least `at_least` of them.
fn run_sanity(sanity: &Path, endpoint: &str, dir: &Path, what: &str, extra: &[String], at_least: u32) {
    let staging = dir.join(format!("staging-{what}"));
    let mount = dir.join(format!("mount-{what}"));
    let mut cmd = Command::new(sanity);
    cmd.args(["--csi.endpoint", endpoint, "--csi.stagingdir"])
        .arg(&staging)
        .arg("--csi.mountdir")
        .arg(&mount)
        .args(["--csi.testnodevolumeattachlimit", "--ginkgo.no-color"])
        .args(extra);
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let Some((passed, failed, pending, skipped)) = counts(&text) else {
        panic!(
            "csi-sanity ({what}) printed no summary:\n{}",
            nodeless_tests::tail(&text, 4000)
        );
    };
    println!("csi-sanity ({what}): {passed} passed, {failed} failed, {pending} pending, {skipped} skipped");
    assert_eq!(failed, 0, "csi-sanity ({what}):\n{}", nodeless_tests::tail(&text, 8000));
    assert!(out.status.success(), "{}", nodeless_tests::tail(&text, 4000));
    assert!(
        passed >= at_least,
        "only {passed} csi-sanity tests ran and passed ({what})"
    );
}

#[test]
fn csi_sanity_passes_against_the_disk_driver() {
    let dir = tempfile::Builder::new().prefix("csi-sanity-").tempdir().unwrap();
    let sanity = build_sanity(dir.path());
    let (driver, endpoint) = start_driver(dir.path(), "disk");
    for (what, extra) in [
        ("filesystem", vec![]),
        ("block", vec!["--csi.testvolumeaccesstype=block".to_string()]),
    ] {
        run_sanity(&sanity, &endpoint, dir.path(), what, &extra, 55);
    }
    drop(driver);
    assert!(
        crate::volumes::loops_under(dir.path()).is_empty(),
        "loop devices left behind"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*dir.path().to_string_lossy()),
        "mounts left under {}",
        dir.path().display()
    );
}

#[test]
fn csi_sanity_passes_against_the_oss_driver() {
    use nodeless_tests::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
    let dir = tempfile::Builder::new().prefix("csi-sanity-oss-").tempdir().unwrap();
    let s3 = S3Server::start("sanity-bucket").unwrap();
    let sanity = build_sanity(dir.path());
    let (driver, endpoint) = start_driver(dir.path(), "oss");
    let params = dir.path().join("params.yaml");
    std::fs::write(
        &params,
        format!("bucket: sanity-bucket\nurl: \"{}\"\npath: /sanity\n", s3.url),
    )
    .unwrap();
    let keys = format!("  akId: {ACCESS_KEY}\n  akSecret: {SECRET_KEY}\n");
    let secrets = dir.path().join("secrets.yaml");
    std::fs::write(
        &secrets,
        ["CreateVolumeSecret", "DeleteVolumeSecret", "NodePublishVolumeSecret"]
            .iter()
            .map(|k| format!("{k}:\n{keys}"))
            .collect::<String>(),
    )
    .unwrap();
    let extra = vec![
        format!("--csi.testvolumeparameters={}", params.display()),
        format!("--csi.secrets={}", secrets.display()),
    ];
    run_sanity(&sanity, &endpoint, dir.path(), "oss", &extra, 30);
    drop(driver);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*dir.path().to_string_lossy()),
        "mounts left under {}",
        dir.path().display()
    );
    // Every volume csi-sanity made was deleted with its objects.
    let left: Vec<_> = walk(&s3.bucket_dir().join("sanity"));
    assert!(left.is_empty(), "objects left: {left:?}");
}

#[test]
fn csi_sanity_passes_against_the_nas_driver() {
    let dir = tempfile::Builder::new().prefix("csi-sanity-nas-").tempdir().unwrap();
    let nfs = nodeless_tests::nfs::NfsServer::start().unwrap();
    std::fs::create_dir_all(nfs.root.path().join("sanity")).unwrap();
    let sanity = build_sanity(dir.path());
    let (driver, endpoint) = start_driver(dir.path(), "nas");
    let params = dir.path().join("params.yaml");
    std::fs::write(
        &params,
        format!(
            "volumeAs: subpath\nserver: \"127.0.0.1:/export/sanity\"\nport: \"{p}\"\nmountport: \"{p}\"\n",
            p = nfs.port
        ),
    )
    .unwrap();
    let extra = vec![format!("--csi.testvolumeparameters={}", params.display())];
    run_sanity(&sanity, &endpoint, dir.path(), "nas", &extra, 30);
    drop(driver);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*dir.path().to_string_lossy()),
        "mounts left under {}",
        dir.path().display()
    );
    // Every volume csi-sanity made was deleted with its directory.
    let left: Vec<_> = std::fs::read_dir(nfs.root.path().join("sanity"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "directories left: {left:?}");
}

/// Files under `dir` (none if it is gone).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn the_summary_line_is_read() {
    assert_eq!(
        counts("...\nRan 60 of 103 Specs\nSUCCESS! -- 59 Passed | 0 Failed | 1 Pending | 43 Skipped\nPASS\n"),
        Some((59, 0, 1, 43))
    );
    assert_eq!(
        counts("FAIL! -- 50 Passed | 9 Failed | 1 Pending | 43 Skipped"),
        Some((50, 9, 1, 43))
    );
    assert_eq!(counts("no summary"), None);
}
