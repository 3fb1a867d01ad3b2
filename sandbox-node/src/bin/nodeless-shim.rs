//! `nodeless-shim`: one small process per container, started by the node and outliving it.
//!
//! It runs the OCI runtime's `run --detach`, becomes the container's parent (child subreaper),
//! copies the container's stdout and stderr into a CRI-format log file, and when the container's
//! init process exits writes an exit record for the node. It prints `started <pid>` once the
//! runtime has started the container. Because it, not the node, holds the
//! pipes and reaps the process, a node can restart while containers run and lose nothing.
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use nodeless_sandbox_node::shim_proto::{ExitRecord, START_FAILED_EXIT_CODE, cri_line, now_rfc3339};

/// Lines longer than this are split into partial (`P`) records, as kubelet does.
const MAX_LINE: usize = 16 * 1024;

struct Args {
    runtime: PathBuf,
    root: PathBuf,
    id: String,
    bundle: PathBuf,
    log: PathBuf,
    exit: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut runtime, mut root, mut id, mut bundle, mut log, mut exit) = (None, None, None, None, None, None);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--runtime" => runtime = Some(PathBuf::from(value)),
            "--root" => root = Some(PathBuf::from(value)),
            "--id" => id = Some(value),
            "--bundle" => bundle = Some(PathBuf::from(value)),
            "--log" => log = Some(PathBuf::from(value)),
            "--exit" => exit = Some(PathBuf::from(value)),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let need = |v: Option<PathBuf>, n: &str| v.ok_or_else(|| format!("--{n} is required"));
    Ok(Args {
        runtime: need(runtime, "runtime")?,
        root: need(root, "root")?,
        id: id.ok_or("--id is required")?,
        bundle: need(bundle, "bundle")?,
        log: need(log, "log")?,
        exit: need(exit, "exit")?,
    })
}

/// Copy both streams into the log until both reach end of file.
fn copy_streams(out: OwnedFd, err: OwnedFd, mut log: File) {
    let mut streams = [(File::from(out), "stdout", Vec::new(), false), (File::from(err), "stderr", Vec::new(), false)];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let open: Vec<usize> = (0..2).filter(|i| !streams[*i].3).collect();
        if open.is_empty() {
            break;
        }
        let ready: Vec<usize> = {
            let mut fds: Vec<PollFd<'_>> = open.iter().map(|i| PollFd::new(streams[*i].0.as_fd(), PollFlags::POLLIN)).collect();
            if poll(&mut fds, PollTimeout::NONE).is_err() {
                continue;
            }
            open.iter()
                .zip(fds.iter())
                .filter(|(_, fd)| fd.revents().is_some_and(|r| !r.is_empty()))
                .map(|(i, _)| *i)
                .collect()
        };
        for i in ready {
            let (file, stream, pending, eof) = &mut streams[i];
            match file.read(&mut buf) {
                Ok(0) | Err(_) => {
                    *eof = true;
                    if !pending.is_empty() {
                        let _ = log.write_all(&cri_line(&now_rfc3339(), stream, true, pending));
                        pending.clear();
                    }
                }
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    let ts = now_rfc3339();
                    let mut out = Vec::new();
                    while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                        out.extend(cri_line(&ts, stream, true, &pending[..pos]));
                        pending.drain(..=pos);
                    }
                    while pending.len() >= MAX_LINE {
                        out.extend(cri_line(&ts, stream, false, &pending[..MAX_LINE]));
                        pending.drain(..MAX_LINE);
                    }
                    let _ = log.write_all(&out);
                }
            }
        }
    }
}

/// The first error the runtime logged: runc and crun write JSON lines `{"level": "error",
/// "msg": …}` with `--log-format json`, youki `{"level": "ERROR", "message": …}`.
fn runtime_error(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"].as_str().is_some_and(|l| l.eq_ignore_ascii_case("error")))
        .find_map(|v| v["msg"].as_str().or(v["message"].as_str()).map(str::to_string))
        .unwrap_or_else(|| "the OCI runtime failed to start the container".to_string())
}

fn run(args: Args) -> Result<ExitRecord, String> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
    let log = OpenOptions::new().create(true).append(true).open(&args.log).map_err(|e| format!("{}: {e}", args.log.display()))?;
    let (out_r, out_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        copy_streams(out_r, err_r, log);
        let _ = done_tx.send(());
    });
    let runtime_log = args.bundle.join("runtime.log");
    let pid_file = args.bundle.join("pid");
    let status = Command::new(&args.runtime)
        .arg("--root")
        .arg(&args.root)
        .arg("--log")
        .arg(&runtime_log)
        .args(["--log-format", "json", "run", "--detach", "--bundle"])
        .arg(&args.bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&args.id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .status()
        .map_err(|e| format!("{}: {e}", args.runtime.display()))?;
    if !status.success() {
        return Ok(ExitRecord {
            exit_code: START_FAILED_EXIT_CODE,
            signal: None,
            reason: "StartError".into(),
            message: runtime_error(&runtime_log),
            finished_at: now_rfc3339(),
        });
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .map_err(|e| format!("{}: {e}", pid_file.display()))?
        .trim()
        .parse()
        .map_err(|e| format!("pid file: {e}"))?;
    // Tell the node the container runs; nothing more is ever written here, so a node that
    // went away in the meantime costs nothing.
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "started {pid}");
        let _ = out.flush();
    }
    let (code, signal) = loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(p, c)) if p.as_raw() == pid => break (c, None),
            Ok(WaitStatus::Signaled(p, s, _)) if p.as_raw() == pid => break (128 + s as i32, Some(s as i32)),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            // No children left: the container is gone and someone else reaped it.
            Err(_) => break (255, None),
        }
    };
    // Every process of the container has gone with its init; give the copier a moment to drain.
    let _ = done_rx.recv_timeout(Duration::from_secs(2));
    Ok(ExitRecord {
        exit_code: code,
        signal,
        reason: if code == 0 { "Completed".into() } else { "Error".into() },
        message: String::new(),
        finished_at: now_rfc3339(),
    })
}

/// `nodeless-shim hold --node N --hostname H`: new network, IPC and UTS namespaces for a pod,
/// with its hostname and loopback up, held until the process is killed. Prints `ready`.
fn hold() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let hostname = args.iter().position(|a| a == "--hostname").and_then(|i| args.get(i + 1)).cloned().unwrap_or_default();
    let flags = nix::sched::CloneFlags::CLONE_NEWNET | nix::sched::CloneFlags::CLONE_NEWIPC | nix::sched::CloneFlags::CLONE_NEWUTS;
    if let Err(e) = nix::sched::unshare(flags) {
        eprintln!("nodeless-shim hold: unshare: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = nix::unistd::sethostname(&hostname) {
        eprintln!("nodeless-shim hold: sethostname {hostname:?}: {e}");
        return ExitCode::FAILURE;
    }
    match Command::new("ip").args(["link", "set", "lo", "up"]).stdin(Stdio::null()).status() {
        Ok(s) if s.success() => {}
        other => {
            eprintln!("nodeless-shim hold: ip link set lo up: {other:?}");
            return ExitCode::FAILURE;
        }
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    loop {
        nix::unistd::pause();
    }
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("hold") {
        return hold();
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("nodeless-shim: {e}");
            return ExitCode::from(2);
        }
    };
    let exit_path = args.exit.clone();
    let record = run(args).unwrap_or_else(|message| ExitRecord {
        exit_code: START_FAILED_EXIT_CODE,
        signal: None,
        reason: "StartError".into(),
        message,
        finished_at: now_rfc3339(),
    });
    match record.write(&exit_path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodeless-shim: writing {}: {e}", exit_path.display());
            ExitCode::FAILURE
        }
    }
}
