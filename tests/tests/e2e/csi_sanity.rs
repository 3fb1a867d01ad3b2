//! kubernetes-csi's own conformance suite, csi-sanity (built with Go from the module proxy,
//! pinned in `tests/csi-sanity`), against `nodeless csi disk` run alone on a socket: with a
//! filesystem volume and with a raw block one. Every test that applies to the driver's
//! capabilities passes; the ones csi-sanity skips are those of capabilities the driver does not
//! claim (snapshots, cloning, ModifyVolume…). The counts are printed. Nothing of the driver's
//! disks (loop devices, mounts) is left afterwards.

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

#[test]
fn csi_sanity_passes_against_the_disk_driver() {
    let dir = tempfile::Builder::new().prefix("csi-sanity-").tempdir().unwrap();
    let sanity = dir.path().join("csi-sanity");
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

    let socket = dir.path().join("csi.sock");
    let endpoint = format!("unix://{}", socket.display());
    let state = dir.path().join("state");
    let driver = Driver(
        Command::new(nodeless_binary().unwrap())
            .args(["csi", "disk", "--endpoint", &endpoint, "--state-dir"])
            .arg(&state)
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
    for (what, extra) in [
        ("filesystem", None),
        ("block", Some("--csi.testvolumeaccesstype=block")),
    ] {
        let staging = dir.path().join(format!("staging-{what}"));
        let mount = dir.path().join(format!("mount-{what}"));
        let mut cmd = Command::new(&sanity);
        cmd.args(["--csi.endpoint", &endpoint, "--csi.stagingdir"])
            .arg(&staging)
            .arg("--csi.mountdir")
            .arg(&mount)
            .args(["--csi.testnodevolumeattachlimit", "--ginkgo.no-color"]);
        if let Some(e) = extra {
            cmd.arg(e);
        }
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
        assert!(passed >= 55, "only {passed} csi-sanity tests ran and passed ({what})");
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
