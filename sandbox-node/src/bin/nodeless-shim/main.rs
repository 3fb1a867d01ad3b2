//! `nodeless-shim keep --socket S --runtime R --root D`: the node's supervisor, one process per
//! node that outlives the node. It holds every pod's shared namespaces (`namespaces`) and is the
//! parent of every container (`containers`), so a node can restart, or crash, while pods run.
//!
//! It serves a Unix socket, a thread per connection, a request per line:
//! `new <key> <hostname> [<host uid base>]`, `get <key>` and `del <key>` for namespaces, answered on the same line;
//! `runtime`, answered `ok <RuntimeIdentity JSON>`; `run <RunRequest JSON>`, answered
//! `started <pid>` and later `exited`, or `failed <why>`, after which the connection belongs to
//! that container; `attach <id>`, answered `ok` and then the container's streams in frames
//! (see `shim_proto::attach`), or `failed <why>`. It exits when its last connection ends while
//! it holds no namespace and runs no container; otherwise the node finds it again after a
//! restart.
//!
//! It runs as root and execs the runtime as root, so who may talk to it is narrow: the socket is
//! 0600 in the node's 0700 run directory, a peer whose uid (SO_PEERCRED) is not the
//! supervisor's own is hung up on before a byte is read, and the only program it ever runs is
//! the runtime on its command line (a request names none).
#![forbid(unsafe_code)]

mod attach;
mod containers;
mod namespaces;
mod vm_exec;

use std::io::{BufRead, BufReader, Write};
use std::os::linux::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containers::Supervisor;
use namespaces::Namespaces;
use nodeless_sandbox_node::shim_proto::{RunRequest, RuntimeIdentity};

struct Shared {
    socket: PathBuf,
    /// The socket file's inode, to tell ours from a newer supervisor's.
    inode: u64,
    namespaces: Mutex<Namespaces>,
    containers: Arc<Supervisor>,
    /// Connections open and not handed to a container.
    connections: Mutex<usize>,
}

impl Shared {
    fn namespaces(&self) -> std::sync::MutexGuard<'_, Namespaces> {
        self.namespaces.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection ended.
    fn ended(&self) {
        *self.connections.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.maybe_leave();
    }

    /// Leave when nobody is connected and nothing is held.
    fn maybe_leave(&self) {
        let open = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if *open == 0 && self.namespaces().is_empty() && self.containers.is_idle() {
            // Remove the socket unless a newer supervisor has bound the path since.
            if std::fs::metadata(&self.socket).is_ok_and(|m| m.st_ino() == self.inode) {
                let _ = std::fs::remove_file(&self.socket);
            }
            std::process::exit(0);
        }
    }

    fn serve(&self, conn: UnixStream) {
        let Ok(mut out) = conn.try_clone() else { return };
        let mut lines = BufReader::new(conn);
        let mut line = String::new();
        loop {
            line.clear();
            match lines.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let request = line.trim_end();
            if let Some(json) = request.strip_prefix("run ") {
                match serde_json::from_str::<RunRequest>(json) {
                    // The connection now waits for the container's end.
                    Ok(req) => return self.containers.run(req, out),
                    Err(e) => {
                        let _ = writeln!(out, "failed bad run request: {e}");
                        return;
                    }
                }
            }
            if let Some(id) = request.strip_prefix("attach ") {
                // The connection now carries the container's streams.
                return self.containers.attach(id, out);
            }
            let reply = if request == "runtime" {
                format!(
                    "ok {}",
                    serde_json::to_string(self.containers.identity()).unwrap_or_default()
                )
            } else {
                self.namespaces().answer(request)
            };
            if writeln!(out, "{reply}").is_err() {
                return;
            }
        }
    }
}

fn bind(path: &Path) -> Result<Option<UnixListener>, String> {
    if UnixStream::connect(path).is_ok() {
        return Ok(None);
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|e| format!("binding {}: {e}", path.display()))?;
    nodeless_sandbox_node::private::restrict(path).map_err(|e| format!("making {} 0600: {e}", path.display()))?;
    Ok(Some(listener))
}

/// Refused peers, logged at most every few seconds (a loop of connections must not fill the log).
struct Refusals {
    count: u64,
    logged: Option<Instant>,
}

impl Refusals {
    fn refused(&mut self, uid: Option<u32>) {
        self.count += 1;
        if self.logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            let who = uid.map_or_else(|| "of unknown uid".to_string(), |u| format!("uid {u}"));
            eprintln!(
                "nodeless-shim keep: refused a connection from {who} ({} refused so far): only the node's own uid may connect",
                self.count
            );
            self.logged = Some(Instant::now());
        }
    }
}

fn keep(socket: &Path, runtime: RuntimeIdentity) -> Result<(), String> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
    let namespaces = Namespaces::new().map_err(|e| format!("opening the host's namespaces: {e}"))?;
    let Some(listener) = bind(socket)? else {
        // Another supervisor already serves this socket.
        println!("ready");
        return Ok(());
    };
    let containers = Supervisor::start(runtime).map_err(|e| format!("starting the supervisor's threads: {e}"))?;
    let inode = std::fs::metadata(socket).map(|m| m.st_ino()).unwrap_or(0);
    let shared = Arc::new(Shared {
        socket: socket.to_path_buf(),
        inode,
        namespaces: Mutex::new(namespaces),
        containers,
        connections: Mutex::new(0),
    });
    // The last container may end after the node has gone.
    let weak = Arc::downgrade(&shared);
    shared.containers.when_idle(move || {
        if let Some(s) = weak.upgrade() {
            s.maybe_leave();
        }
    });
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut refusals = Refusals { count: 0, logged: None };
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        match nodeless_sandbox_node::private::peer_uid(&conn) {
            Ok(uid) if nodeless_sandbox_node::private::peer_allowed(uid) => {}
            other => {
                refusals.refused(other.ok());
                continue;
            }
        }
        *shared.connections.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        let s = shared.clone();
        let spawned = std::thread::Builder::new().name("conn".into()).spawn(move || {
            s.serve(conn);
            s.ended();
        });
        if spawned.is_err() {
            shared.ended();
        }
    }
    Ok(())
}

/// The value after `--<name>` on the command line.
fn flag(argv: &[String], name: &str) -> Option<PathBuf> {
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .map(PathBuf::from)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    // The supervisor's own child for a pod's user namespace (see `namespaces::child`): before
    // anything could start a thread.
    if let (Some("pod-namespaces"), Some(hostname)) = (argv.get(1).map(String::as_str), argv.get(2)) {
        return match namespaces::child(hostname) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nodeless-shim pod-namespaces: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if argv.get(1).map(String::as_str) == Some("vm-exec") {
        let split = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
        let head = &argv[..split];
        let args: Vec<String> = argv.iter().skip(split + 1).cloned().collect();
        return match (flag(head, "--socket"), flag(head, "--id")) {
            (Some(socket), Some(id)) if !args.is_empty() => {
                vm_exec::run(&socket, &id.to_string_lossy(), head.iter().any(|a| a == "--tty"), args)
            }
            _ => {
                eprintln!("usage: nodeless-shim vm-exec --socket <path> --id <container> [--tty] -- <command...>");
                ExitCode::from(2)
            }
        };
    }
    let (socket, runtime, root) = match (
        argv.get(1).map(String::as_str),
        flag(&argv, "--socket"),
        flag(&argv, "--runtime"),
        flag(&argv, "--root"),
    ) {
        (Some("keep"), Some(socket), Some(runtime), Some(root)) => (socket, runtime, root),
        _ => {
            eprintln!(
                "usage: nodeless-shim keep --socket <path> --runtime <OCI runtime binary> --root <its state directory>"
            );
            return ExitCode::from(2);
        }
    };
    match keep(&socket, RuntimeIdentity { runtime, root }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodeless-shim keep: {e}");
            ExitCode::FAILURE
        }
    }
}
