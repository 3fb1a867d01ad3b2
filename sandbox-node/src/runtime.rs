//! The seam to the container runtime. `OciRuntime` drives an OCI runtime CLI (runc, crun, or
//! any that speaks the same commands) with every container under the node's supervisor; the
//! microVM runtime will be another implementation of [`Runtime`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

use crate::sandbox::Keeper;
use crate::shim_proto::RunRequest;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("running {binary}: {source}")]
    Spawn { binary: String, source: std::io::Error },
    #[error("{binary} {command} {id}: {message}")]
    Failed {
        binary: String,
        command: String,
        id: String,
        message: String,
    },
}

/// Where one container attempt lives on disk.
#[derive(Clone, Debug)]
pub struct Launch {
    pub id: String,
    pub bundle: PathBuf,
    pub log: PathBuf,
    pub exit: PathBuf,
    /// The container keeps a stdin open for `attach` (`stdin: true`).
    pub stdin: bool,
    /// The container's process has a terminal (`tty: true`).
    pub tty: bool,
}

/// A container attempt the runtime has taken on: resolves once it has ended (or never ran) and
/// its exit record is written.
pub struct Started {
    pub ended: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// A running container as `exec` needs it.
#[derive(Clone, Debug)]
pub struct ContainerRef {
    pub id: String,
    pub bundle: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub pid: i32,
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
}

#[async_trait]
pub trait Runtime: Send + Sync {
    fn name(&self) -> &str;
    /// `<name>://<version>`, as a Node's `containerRuntimeVersion` shows it.
    fn version(&self) -> String {
        format!("{}://unknown", self.name())
    }
    /// Start the container in `launch.bundle`; returns once it runs or has failed to start, and
    /// writes `launch.exit` when it ends.
    async fn start(&self, launch: &Launch) -> Result<Started, RuntimeError>;
    async fn kill(&self, id: &str, signal: &str) -> Result<(), RuntimeError>;
    /// Remove the container, killing it if it still runs. Gone already is success.
    async fn delete(&self, id: &str) -> Result<(), RuntimeError>;
    async fn list(&self) -> Result<Vec<ContainerState>, RuntimeError>;
    /// A command that runs `args` inside the running container (exec probes, hooks, `kubectl exec`)
    /// as the container's own process does: same user and groups, environment, working directory,
    /// capabilities and limits.
    fn exec(&self, c: &ContainerRef, args: &[String], tty: bool) -> Result<Command, RuntimeError>;
    /// A connection to a running container's stdin and output (`kubectl attach`), carrying
    /// frames as [`crate::shim_proto::attach`] says.
    async fn attach(&self, id: &str) -> Result<tokio::io::BufReader<tokio::net::UnixStream>, RuntimeError>;
}

pub struct OciRuntime {
    binary: PathBuf,
    root: PathBuf,
    supervisor: Arc<Keeper>,
    version: String,
    /// crun's compiled seccomp program for the node's profile, once a container has one.
    seccomp: std::sync::Mutex<Option<CompiledSeccomp>>,
}

/// crun compiles a container's seccomp profile with libseccomp at every start: 15 ms of the
/// node's allow-list per container, measured on 2026-12-06 (`crun run` of the same bundle 26
/// against 10 ms without the profile), more than the rest of a start. It keeps the program it
/// compiled in the container's state, `seccomp.bpf`, beside its copy of `config.json`; the node
/// takes it from the first container and gives it to the next ones in the annotation
/// `run.oci.seccomp_bpf_data`, which crun applies as it is (and then ignores the profile). Only
/// to a container whose profile equals, field for field, the one in that state's `config.json`.
struct CompiledSeccomp {
    profile: serde_json::Value,
    bpf_base64: String,
}

/// crun's annotation for a seccomp program compiled beforehand (base64 of the raw filter).
const SECCOMP_BPF_ANNOTATION: &str = "run.oci.seccomp_bpf_data";

impl OciRuntime {
    /// `root` holds the runtime's state (one per node, so nodes never see each other's containers).
    /// Containers run under `supervisor`, the node's `nodeless-shim keep`.
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>, supervisor: Arc<Keeper>) -> Self {
        let binary = binary.into();
        // runc and crun both print `<name> version <x.y.z>` first.
        let version = std::process::Command::new(&binary)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .and_then(|l| l.split_whitespace().nth(2))
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            binary,
            root: root.into(),
            supervisor,
            version,
            seccomp: std::sync::Mutex::new(None),
        }
    }

    fn compiles_seccomp_per_start(&self) -> bool {
        self.name() == "crun"
    }

    /// Give the container of `bundle` the compiled program for its profile, if there is one;
    /// whether its config now carries it.
    fn reuse_seccomp(&self, bundle: &Path) -> bool {
        let path = bundle.join("config.json");
        let Some(mut config) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        else {
            return false;
        };
        let bpf = {
            let cache = self.seccomp.lock().unwrap_or_else(|e| e.into_inner());
            match cache.as_ref() {
                Some(c) if config["linux"].get("seccomp") == Some(&c.profile) => c.bpf_base64.clone(),
                _ => return false,
            }
        };
        if !config["annotations"].is_object() {
            config["annotations"] = serde_json::json!({});
        }
        config["annotations"][SECCOMP_BPF_ANNOTATION] = serde_json::Value::String(bpf);
        crate::private::write(&path, &serde_json::to_vec(&config).unwrap_or_default()).is_ok()
    }

    /// Keep the program crun compiled for container `id`, with the profile it came from.
    fn keep_seccomp(&self, id: &str) {
        use base64::Engine;
        let state = self.root.join(id);
        let profile = std::fs::read(state.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|c| c["linux"].get("seccomp").cloned());
        // A BPF program is whole 8-byte instructions, at most 4096 of them.
        let bpf = std::fs::read(state.join("seccomp.bpf"))
            .ok()
            .filter(|b| !b.is_empty() && b.len() % 8 == 0 && b.len() <= 4096 * 8);
        if let (Some(profile), Some(bpf)) = (profile, bpf) {
            let bpf_base64 = base64::engine::general_purpose::STANDARD.encode(bpf);
            *self.seccomp.lock().unwrap_or_else(|e| e.into_inner()) = Some(CompiledSeccomp { profile, bpf_base64 });
        }
    }

    fn command(&self) -> Command {
        let (program, arg0) = crate::sealed_binary::program(&self.binary);
        let mut c = Command::new(program);
        c.arg0(arg0);
        c.arg("--root").arg(&self.root);
        c.stdin(Stdio::null());
        c
    }

    async fn run(&self, command: &str, id: &str, args: &[&str]) -> Result<String, RuntimeError> {
        let out = self
            .command()
            .arg(command)
            .args(args)
            .output()
            .await
            .map_err(|e| self.spawn_err(e))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).to_string());
        }
        Err(RuntimeError::Failed {
            binary: self.binary.display().to_string(),
            command: command.to_string(),
            id: id.to_string(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    fn spawn_err(&self, source: std::io::Error) -> RuntimeError {
        RuntimeError::Spawn {
            binary: self.binary.display().to_string(),
            source,
        }
    }
}

/// Write (once per distinct command) the process file for `exec` beside the bundle's config.json:
/// its `process` with `args` and `terminal` replaced. Returns the file's path.
fn exec_process(bundle: &Path, args: &[String], tty: bool) -> Result<PathBuf, String> {
    use sha2::Digest;
    let key = serde_json::to_vec(&(args, tty)).unwrap_or_default();
    let path = bundle.join(format!("exec-{}.json", &hex::encode(sha2::Sha256::digest(&key))[..16]));
    if path.exists() {
        return Ok(path);
    }
    let config =
        std::fs::read(bundle.join("config.json")).map_err(|e| format!("reading the container's config.json: {e}"))?;
    let config: serde_json::Value =
        serde_json::from_slice(&config).map_err(|e| format!("the container's config.json: {e}"))?;
    let mut process = config
        .get("process")
        .cloned()
        .ok_or("the container's config.json has no process")?;
    process["args"] = serde_json::json!(args);
    process["terminal"] = serde_json::json!(tty);
    let tmp = path.with_extension(format!("{:016x}.tmp", rand::random::<u64>()));
    // It holds the container's env (values from Secrets): 0600, as config.json.
    crate::private::write(&tmp, &serde_json::to_vec(&process).unwrap_or_default())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

fn gone(e: &RuntimeError) -> bool {
    matches!(e, RuntimeError::Failed { message, .. } if message.contains("does not exist") || message.contains("not found") || message.contains("not running") || message.contains("process already finished"))
}

#[async_trait]
impl Runtime for OciRuntime {
    fn name(&self) -> &str {
        Path::new(&self.binary)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("oci")
    }

    fn version(&self) -> String {
        format!("{}://{}", self.name(), self.version)
    }

    async fn start(&self, l: &Launch) -> Result<Started, RuntimeError> {
        let reused = self.compiles_seccomp_per_start() && self.reuse_seccomp(&l.bundle);
        // The supervisor runs the runtime it was started with (the keeper's, checked to be ours).
        let req = RunRequest {
            id: l.id.clone(),
            bundle: l.bundle.clone(),
            log: l.log.clone(),
            exit: l.exit.clone(),
            stdin: l.stdin,
            tty: l.tty,
        };
        let mut conn = self.supervisor.run(&req).await.map_err(|e| RuntimeError::Spawn {
            binary: e.what,
            source: e.source,
        })?;
        let mut line = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(60), conn.read_line(&mut line)).await;
        let answer = line.trim().to_string();
        let running = answer
            .strip_prefix("started ")
            .is_some_and(|p| p.parse::<i32>().is_ok());
        if !running && !answer.is_empty() {
            // `failed <why>` leaves an exit record behind; anything else is a supervisor that
            // does not know the request (an older one still running after an upgrade).
            if answer.starts_with("failed ") {
                return Ok(Started {
                    ended: Box::pin(std::future::ready(())),
                });
            }
            return Err(RuntimeError::Failed {
                binary: "the node's supervisor".into(),
                command: "run".into(),
                id: l.id.clone(),
                message: answer,
            });
        }
        if running && !reused && self.compiles_seccomp_per_start() {
            self.keep_seccomp(&l.id);
        }
        // `exited` once the exit record is written (or the end of the connection).
        let ended = Box::pin(async move {
            line.clear();
            let _ = conn.read_line(&mut line).await;
        });
        Ok(Started { ended })
    }

    async fn kill(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        match self.run("kill", id, &[id, signal]).await {
            Err(e) if gone(&e) => Ok(()),
            other => other.map(drop),
        }
    }

    async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        match self.run("delete", id, &["--force", id]).await {
            Err(e) if gone(&e) => Ok(()),
            other => other.map(drop),
        }
    }

    async fn list(&self) -> Result<Vec<ContainerState>, RuntimeError> {
        let out = self.run("list", "", &["--format", "json"]).await?;
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or(serde_json::Value::Null);
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .map(|c| ContainerState {
                id: c["id"].as_str().unwrap_or_default().to_string(),
                pid: c["pid"].as_i64().unwrap_or(0) as i32,
                status: c["status"].as_str().unwrap_or_default().to_string(),
            })
            .collect())
    }

    fn exec(&self, c: &ContainerRef, args: &[String], tty: bool) -> Result<Command, RuntimeError> {
        // runc's `exec` starts from the container's process (user, groups, env, cwd, caps); crun's
        // starts from root with nothing. A process file built from config.json gives both the same.
        let process = exec_process(&c.bundle, args, tty).map_err(|e| RuntimeError::Failed {
            binary: self.binary.display().to_string(),
            command: "exec".into(),
            id: c.id.clone(),
            message: e,
        })?;
        let mut cmd = self.command();
        cmd.arg("exec").arg("--process").arg(process).arg(&c.id);
        Ok(cmd)
    }

    async fn attach(&self, id: &str) -> Result<tokio::io::BufReader<tokio::net::UnixStream>, RuntimeError> {
        self.supervisor.attach(id).await.map_err(|e| RuntimeError::Failed {
            binary: "the node's supervisor".into(),
            command: "attach".into(),
            id: id.to_string(),
            message: e.to_string(),
        })
    }
}
