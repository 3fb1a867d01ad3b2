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

/// `nodeless-shim keep --socket S`: the node's namespace keeper, the pause container's job for
/// every pod at once. On request it makes a pod's network, IPC and UTS namespaces (with the
/// pod's hostname and loopback up) by unsharing into them and back, and keeps an open file of
/// each; the runtime, the CNI plugins and the node reach them as `/proc/<keeper>/fd/<n>`. One
/// process and three descriptors per pod instead of a process per pod, and no bind mounts, so
/// the host's mount table (which every new container copies) stays short. It answers one
/// connection at a time, line by line (`new <key> <hostname>`, `get <key>`, `del <key>`), and
/// answers `ok <pid> <net> <ipc> <uts>` with its PID and descriptors, and
/// exits when a connection ends while it holds nothing; while it holds namespaces it outlives
/// the node, which finds it again after a restart.
mod keeper {
    use std::collections::HashMap;
    use std::fs::File;
    use std::io::{BufRead, BufReader, Write};
    use std::os::fd::AsRawFd;
    use std::os::linux::fs::MetadataExt;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::Path;
    use std::process::ExitCode;

    use nix::sched::{CloneFlags, setns, unshare};

    const KINDS: [(&str, CloneFlags); 3] =
        [("net", CloneFlags::CLONE_NEWNET), ("ipc", CloneFlags::CLONE_NEWIPC), ("uts", CloneFlags::CLONE_NEWUTS)];

    struct Keeper {
        home: Vec<File>,
        held: HashMap<String, Vec<File>>,
    }

    impl Keeper {
        fn fds(files: &[File]) -> String {
            let fds: Vec<String> = files.iter().map(|f| f.as_raw_fd().to_string()).collect();
            format!("ok {} {}", std::process::id(), fds.join(" "))
        }

        fn new_namespaces(&mut self, key: &str, hostname: &str) -> Result<String, String> {
            if let Some(files) = self.held.get(key) {
                return Ok(Self::fds(files));
            }
            let flags = KINDS.iter().fold(CloneFlags::empty(), |a, k| a | k.1);
            unshare(flags).map_err(|e| format!("unshare: {e}"))?;
            let made = (|| -> Result<Vec<File>, String> {
                nix::unistd::sethostname(hostname).map_err(|e| format!("sethostname {hostname:?}: {e}"))?;
                loopback_up().map_err(|e| format!("setting lo up: {e}"))?;
                KINDS.iter().map(|(k, _)| File::open(format!("/proc/thread-self/ns/{k}")).map_err(|e| format!("opening the new {k} namespace: {e}"))).collect()
            })();
            // Back home, or this process would keep the pod's namespaces alive after `del`.
            for (file, (kind, flag)) in self.home.iter().zip(KINDS) {
                if let Err(e) = setns(file, flag) {
                    eprintln!("nodeless-shim keep: cannot return to the host's {kind} namespace: {e}");
                    std::process::exit(1);
                }
            }
            let files = made?;
            let reply = Self::fds(&files);
            self.held.insert(key.to_string(), files);
            Ok(reply)
        }

        fn answer(&mut self, line: &str) -> String {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["new", key, hostname] => self.new_namespaces(key, hostname).unwrap_or_else(|e| format!("err {e}")),
                ["get", key] => self.held.get(*key).map_or_else(|| "none".to_string(), |f| Self::fds(f)),
                ["del", key] => {
                    self.held.remove(*key);
                    "ok".to_string()
                }
                _ => format!("err unknown request {line:?}"),
            }
        }
    }

    /// `ip link set lo up` as one rtnetlink request: RTM_NEWLINK for ifindex 1 (a new network
    /// namespace's loopback) with IFF_UP, acknowledged.
    fn loopback_up() -> Result<(), String> {
        use nix::sys::socket::{AddressFamily, NetlinkAddr, MsgFlags, SockFlag, SockProtocol, SockType, recv, sendto, socket};
        const RTM_NEWLINK: u16 = 16;
        const NLM_F_REQUEST_ACK: u16 = 1 | 4;
        const NLMSG_ERROR: u16 = 2;
        const IFF_UP: u32 = 1;
        let sock = socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkRoute).map_err(|e| e.to_string())?;
        let mut msg = Vec::with_capacity(32);
        msg.extend(32u32.to_ne_bytes()); // nlmsg_len
        msg.extend(RTM_NEWLINK.to_ne_bytes());
        msg.extend(NLM_F_REQUEST_ACK.to_ne_bytes());
        msg.extend(1u32.to_ne_bytes()); // seq
        msg.extend(0u32.to_ne_bytes()); // pid: the kernel fills it in
        msg.extend([0u8, 0]); // ifi_family AF_UNSPEC, padding
        msg.extend(0u16.to_ne_bytes()); // ifi_type
        msg.extend(1i32.to_ne_bytes()); // ifi_index: lo
        msg.extend(IFF_UP.to_ne_bytes()); // ifi_flags
        msg.extend(IFF_UP.to_ne_bytes()); // ifi_change
        sendto(sock.as_raw_fd(), &msg, &NetlinkAddr::new(0, 0), MsgFlags::empty()).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 256];
        let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(|e| e.to_string())?;
        if n < 20 || u16::from_ne_bytes([buf[4], buf[5]]) != NLMSG_ERROR {
            return Err("unexpected rtnetlink reply".into());
        }
        match i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]) {
            0 => Ok(()),
            e => Err(nix::errno::Errno::from_raw(-e).to_string()),
        }
    }

    fn bind(path: &Path) -> Result<Option<UnixListener>, String> {
        if UnixStream::connect(path).is_ok() {
            return Ok(None);
        }
        let _ = std::fs::remove_file(path);
        UnixListener::bind(path).map(Some).map_err(|e| format!("binding {}: {e}", path.display()))
    }

    pub fn main(socket: &Path) -> ExitCode {
        let home: Result<Vec<File>, _> = KINDS.iter().map(|(k, _)| File::open(format!("/proc/thread-self/ns/{k}"))).collect();
        let listener = match home.as_ref().map_err(|e| e.to_string()).and_then(|_| bind(socket)) {
            Ok(Some(l)) => l,
            Ok(None) => {
                // Another keeper already serves this socket.
                println!("ready");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("nodeless-shim keep: {e}");
                return ExitCode::FAILURE;
            }
        };
        let inode = std::fs::metadata(socket).map(|m| m.st_ino()).unwrap_or(0);
        println!("ready");
        let _ = std::io::stdout().flush();
        let mut keeper = Keeper { home: home.unwrap_or_default(), held: HashMap::new() };
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let Ok(mut out) = conn.try_clone() else { continue };
            for line in BufReader::new(conn).lines() {
                let Ok(line) = line else { break };
                let reply = keeper.answer(&line);
                if writeln!(out, "{reply}").is_err() {
                    break;
                }
            }
            if keeper.held.is_empty() {
                break;
            }
        }
        drop(listener);
        // Remove the socket unless a newer keeper has bound the path since.
        if std::fs::metadata(socket).is_ok_and(|m| m.st_ino() == inode) {
            let _ = std::fs::remove_file(socket);
        }
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("keep") {
        return match argv.iter().position(|a| a == "--socket").and_then(|i| argv.get(i + 1)) {
            Some(socket) => keeper::main(std::path::Path::new(socket)),
            None => {
                eprintln!("nodeless-shim keep: --socket is required");
                ExitCode::from(2)
            }
        };
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
