//! `nodeless-shim keep --socket S`: the node's supervisor, one process per node that outlives the
//! node. It holds every pod's shared namespaces (`namespaces`) and is the parent of every
//! container (`containers`), so a node can restart, or crash, while pods run.
//!
//! It serves a Unix socket, a thread per connection, a request per line:
//! `new <key> <hostname>`, `get <key>` and `del <key>` for namespaces, answered on the same line;
//! `run <RunRequest JSON>`, answered `started <pid>` and later `exited`, or `failed <why>`, after
//! which the connection belongs to that container. It exits when its last connection ends while
//! it holds no namespace and runs no container; otherwise the node finds it again after a restart.
#![forbid(unsafe_code)]

mod containers;
mod namespaces;

use std::io::{BufRead, BufReader, Write};
use std::os::linux::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use containers::Supervisor;
use namespaces::Namespaces;
use nodeless_sandbox_node::shim_proto::RunRequest;

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
            let reply = self.namespaces().answer(request);
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
    UnixListener::bind(path).map(Some).map_err(|e| format!("binding {}: {e}", path.display()))
}

fn keep(socket: &Path) -> Result<(), String> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
    let namespaces = Namespaces::new().map_err(|e| format!("opening the host's namespaces: {e}"))?;
    let Some(listener) = bind(socket)? else {
        // Another supervisor already serves this socket.
        println!("ready");
        return Ok(());
    };
    let containers = Supervisor::start().map_err(|e| format!("starting the supervisor's threads: {e}"))?;
    let inode = std::fs::metadata(socket).map(|m| m.st_ino()).unwrap_or(0);
    let shared = Arc::new(Shared { socket: socket.to_path_buf(), inode, namespaces: Mutex::new(namespaces), containers, connections: Mutex::new(0) });
    // The last container may end after the node has gone.
    let weak = Arc::downgrade(&shared);
    shared.containers.when_idle(move || {
        if let Some(s) = weak.upgrade() {
            s.maybe_leave();
        }
    });
    println!("ready");
    let _ = std::io::stdout().flush();
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
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

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let socket = match (argv.get(1).map(String::as_str), argv.iter().position(|a| a == "--socket").and_then(|i| argv.get(i + 1))) {
        (Some("keep"), Some(socket)) => PathBuf::from(socket),
        _ => {
            eprintln!("usage: nodeless-shim keep --socket <path>");
            return ExitCode::from(2);
        }
    };
    match keep(&socket) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodeless-shim keep: {e}");
            ExitCode::FAILURE
        }
    }
}
