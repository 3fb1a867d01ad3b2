//! Interactive debugging as users type it, with every kubectl: `kubectl run -i --rm` and
//! `run -it --rm` (a TTY), `kubectl attach` to a running container's stdin, `kubectl debug`
//! into a running pod (an ephemeral container seeing its target's processes) and
//! `kubectl debug --copy-to` (a copy sharing one process namespace); and the pod update rules
//! around them.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nodeless_tests::images::BUSYBOX;
use nodeless_tests::{KUBECTL_VERSIONS, Nodeless, eventually, kubectl_path};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Run `command` under `script` (a pseudo-terminal sized 91x33), typing a return every second
/// until it ends; bounded by `limit`. Its output and exit code.
fn in_terminal(command: &str, limit: Duration) -> (String, Option<i32>) {
    let mut child = Command::new("script")
        .args(["-qfec", &format!("stty cols 91 rows 33; {command}"), "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let typist = std::thread::spawn(move || {
        for _ in 0..limit.as_secs() {
            std::thread::sleep(Duration::from_secs(1));
            if stdin.write_all(b"\r").is_err() {
                return;
            }
        }
    });
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let start = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = String::from_utf8_lossy(&reader.join().unwrap()).to_string();
    let _ = typist.join();
    (out, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_attach_and_debug_with_every_kubectl() {
    let n = Nodeless::start_with_node(&[]).unwrap();
    let kc = n.kubeconfig();
    let mut pods = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: target}}\nspec:\n  containers:\n  - {{name: app, image: {BUSYBOX}, command: [sh, -c, 'echo up; exec sleep 3600']}}\n"
    );
    for v in KUBECTL_VERSIONS {
        let tag = v.replace('.', "");
        // A container reading its stdin once: what `kubectl attach -i` types reaches it, and
        // the end of the session is the end of its input.
        pods.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: reader-{tag}}}\nspec:\n  restartPolicy: Never\n  containers:\n  - {{name: r, image: {BUSYBOX}, stdin: true, stdinOnce: true, command: [sh, -c, 'while read l; do echo echo:$l; done; echo input-ended']}}\n"
        ));
    }
    let applied = n.kubectl_with("1.33", &kc, &["apply", "-f", "-"], Some(&pods));
    assert!(applied.status.success(), "{}", text(&applied));
    let mut wait = vec!["wait", "--for=condition=Ready", "pod/target", "--timeout=90s"];
    let readers: Vec<String> = KUBECTL_VERSIONS
        .iter()
        .map(|v| format!("pod/reader-{}", v.replace('.', "")))
        .collect();
    wait.extend(readers.iter().map(String::as_str));
    n.kubectl_ok("1.33", &wait);

    for v in KUBECTL_VERSIONS {
        let tag = v.replace('.', "");

        // kubectl run -i --rm: stdin piped in, the exit code carried back, the pod removed.
        let name = format!("once-{tag}");
        let out = n.kubectl_with(
            v,
            &kc,
            &[
                "run",
                &name,
                "-i",
                "--rm",
                "--restart=Never",
                "--image",
                BUSYBOX,
                "--",
                "sh",
                "-c",
                "read l; echo got:$l; exit 3",
            ],
            Some("hello\n"),
        );
        assert!(text(&out).contains("got:hello"), "kubectl {v} run -i: {}", text(&out));
        assert_eq!(out.status.code(), Some(3), "kubectl {v} run -i: {}", text(&out));
        eventually(&format!("kubectl {v} run --rm to remove pod {name}"), 30, || {
            let o = n.kubectl(v, &["get", "pod", &name]);
            !o.status.success() && text(&o).contains("NotFound")
        });

        // kubectl run -it --rm: a terminal of the caller's size.
        let (out, code) = in_terminal(
            &format!(
                "KUBECONFIG={} {} run tty-{tag} -it --rm --restart=Never --image {BUSYBOX} -- sh -c 'read l; sleep 1; tty; stty size; exit 5'",
                kc.display(),
                kubectl_path(v).display()
            ),
            Duration::from_secs(90),
        );
        assert!(
            out.contains("/dev/pts/") && out.contains("33 91"),
            "kubectl {v} run -it: {out}"
        );
        assert_eq!(code, Some(5), "kubectl {v} run -it: {out}");

        // kubectl attach -i: typed lines reach the running container; the end of the
        // session closes its stdin (stdinOnce), so it ends.
        let out = n.kubectl_with(
            v,
            &kc,
            &["attach", &format!("reader-{tag}"), "-i", "--quiet"],
            Some("one\ntwo\n"),
        );
        let t = text(&out);
        assert!(
            t.contains("echo:one") && t.contains("echo:two"),
            "kubectl {v} attach -i: {t}"
        );
        eventually(
            &format!("reader-{tag} to see the end of its input (kubectl {v} attach)"),
            30,
            || {
                let o = n.kubectl(v, &["logs", &format!("reader-{tag}")]);
                text(&o).contains("input-ended")
            },
        );
        // A container that reads no stdin says so, in words.
        let out = n.kubectl_with(v, &kc, &["attach", "target", "-i"], Some(""));
        assert!(!out.status.success());
        assert!(
            text(&out).contains("does not read stdin"),
            "kubectl {v} attach -i: {}",
            text(&out)
        );

        // kubectl debug: an ephemeral container in the running pod sees its target's processes.
        let dbg = format!("dbg-{tag}");
        let out = n.kubectl_with(
            v,
            &kc,
            &[
                "debug",
                "target",
                "-i",
                "--image",
                BUSYBOX,
                "--target=app",
                "--container",
                &dbg,
                "--",
                "sh",
                "-c",
                "read l; ps; echo debugged:$l",
            ],
            Some("now\n"),
        );
        let t = text(&out);
        assert!(
            t.contains("sleep 3600") && t.contains("debugged:now"),
            "kubectl {v} debug: {t}"
        );
        let mut status = String::new();
        eventually(&format!("{dbg}'s status (kubectl {v} debug)"), 30, || {
            let o = n.kubectl(
                v,
                &[
                    "get",
                    "pod",
                    "target",
                    "-o",
                    &format!("jsonpath={{.status.ephemeralContainerStatuses[?(@.name==\"{dbg}\")].state.terminated.exitCode}}"),
                ],
            );
            status = String::from_utf8_lossy(&o.stdout).trim().to_string();
            !status.is_empty()
        });
        assert_eq!(status, "0", "kubectl {v} debug: {dbg}'s exit code");
        // The pod it runs in is still running and ready.
        let ready = n.kubectl_ok(
            v,
            &[
                "get",
                "pod",
                "target",
                "-o",
                "jsonpath={.status.containerStatuses[0].ready}",
            ],
        );
        assert_eq!(ready.trim(), "true");

        // kubectl debug --copy-to: a copy with the debug container beside the app, one process
        // namespace between them.
        let copy = format!("copy-{tag}");
        let out = n.kubectl_with(
            v,
            &kc,
            &[
                "debug",
                "target",
                "-i",
                "--copy-to",
                &copy,
                "--share-processes=true",
                "--container",
                "dbg",
                "--image",
                BUSYBOX,
                "--",
                "sh",
                "-c",
                "read l; ps; echo copied:$l",
            ],
            Some("yes\n"),
        );
        let t = text(&out);
        assert!(
            t.contains("sleep 3600") && t.contains("copied:yes"),
            "kubectl {v} debug --copy-to: {t}"
        );
        n.kubectl_ok(v, &["delete", "pod", &copy, "--wait=false"]);
    }

    // Ephemeral containers are added through their subresource only, and once there stay.
    let out = n.kubectl(
        "1.33",
        &[
            "patch", "pod", "target", "--type=json", "-p",
            &format!("[{{\"op\":\"add\",\"path\":\"/spec/ephemeralContainers/-\",\"value\":{{\"name\":\"sneak\",\"image\":\"{BUSYBOX}\"}}}}]"),
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("ephemeralcontainers subresource"), "{}", text(&out));
    let out = n.kubectl(
        "1.33",
        &[
            "patch",
            "pod",
            "target",
            "--subresource=ephemeralcontainers",
            "--type=json",
            "-p",
            "[{\"op\":\"remove\",\"path\":\"/spec/ephemeralContainers/0\"}]",
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("may not be removed"), "{}", text(&out));
    let out = n.kubectl(
        "1.33",
        &[
            "patch", "pod", "target", "--subresource=ephemeralcontainers", "--type=json", "-p",
            &format!("[{{\"op\":\"add\",\"path\":\"/spec/ephemeralContainers/-\",\"value\":{{\"name\":\"porty\",\"image\":\"{BUSYBOX}\",\"ports\":[{{\"containerPort\":80}}]}}}}]"),
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("cannot be set for an Ephemeral Container"),
        "{}",
        text(&out)
    );
    // A running pod's command is not changed by an update (its image may be).
    let out = n.kubectl(
        "1.33",
        &[
            "patch",
            "pod",
            "target",
            "--type=json",
            "-p",
            "[{\"op\":\"replace\",\"path\":\"/spec/containers/0/command\",\"value\":[\"true\"]}]",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("pod updates may not change fields"),
        "{}",
        text(&out)
    );
}
