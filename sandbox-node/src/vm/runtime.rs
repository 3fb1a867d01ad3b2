//! One pod's VM as the node's [`Runtime`]: containers are started, signalled, listed and
//! removed through the agent; `exec` is a command (`nodeless-shim vm-exec`) that reaches the
//! agent through the node's exec proxy on `<vm dir>/exec.sock`; TCP to the pod (probes,
//! port-forward) is dialed by the agent inside the VM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nodeless_guest_agent::proto::{
    ContainerId, DialInput, Empty, ExecInput, ExecStart, HelloReply, Resize, RunRequest, SetupRequest, SignalRequest,
    dial_input, exec_input, exec_output,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::client::{self, Client};
use super::qemu;
use crate::runtime::{ContainerRef, ContainerState, Launch, Runtime, RuntimeError, Started};
use crate::shim_proto::{ExitRecord, attach, now_rfc3339};

/// How long a guest may take from QEMU's start to its agent answering: TCG boots in about 5 s
/// on an idle machine here, and in many times that when the machine is busy.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Where a VM's start went, for the pod's events and the benchmark.
#[derive(Clone, Debug, Default)]
pub struct BootTimes {
    /// Spawn to QEMU daemonized (machine built, tap made).
    pub qemu: Duration,
    /// The guest's uptime when its init started: kernel boot.
    pub kernel: Duration,
    /// From init to the agent serving, in the guest.
    pub agent: Duration,
    /// QEMU daemonized to the agent's first answer.
    pub to_hello: Duration,
    /// Shares, hostname and network set up in the guest.
    pub setup: Duration,
    pub total: Duration,
}

/// The first line on an exec proxy connection.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecHeader {
    pub id: String,
    pub args: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub cols: u16,
    pub rows: u16,
}

pub struct MicroVm {
    pub dir: PathBuf,
    pub pid: u32,
    pub hello: HelloReply,
    client: Client,
    shim: PathBuf,
    exec_proxy: tokio::task::JoinHandle<()>,
}

impl Drop for MicroVm {
    fn drop(&mut self) {
        self.exec_proxy.abort();
    }
}

fn failed(command: &str, id: &str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Failed {
        binary: "the pod's VM".into(),
        command: command.into(),
        id: id.into(),
        message: message.into(),
    }
}

impl MicroVm {
    /// Start the pod's VM, wire its NIC to the pod's interface, wait for the agent, set the
    /// guest up.
    pub async fn launch(
        settings: &super::VmSettings,
        launch: qemu::Launch<'_>,
        mut setup: SetupRequest,
        shim: PathBuf,
    ) -> Result<(Arc<MicroVm>, BootTimes), String> {
        let t0 = Instant::now();
        let netns = launch.netns.to_path_buf();
        let interface = qemu::read_interface(&netns)?;
        let launch = qemu::Launch {
            mac: interface.mac.clone(),
            ..launch
        };
        let dir = launch.dir.to_path_buf();
        let pid = qemu::start(settings, &launch)?;
        let spawned = t0.elapsed();
        let up = async {
            qemu::wire_tap(&netns, interface.mtu)?;
            let (client, hello) = client::connect(&qemu::agent_socket(&dir), BOOT_TIMEOUT).await?;
            let ready = t0.elapsed();
            setup.interfaces = vec![interface];
            let mut c = client.clone();
            c.setup(setup)
                .await
                .map_err(|e| format!("setting the guest up: {}", e.message()))?;
            let times = BootTimes {
                qemu: spawned,
                kernel: Duration::from_secs_f64(hello.init_uptime_seconds),
                agent: Duration::from_secs_f64((hello.serving_uptime_seconds - hello.init_uptime_seconds).max(0.0)),
                to_hello: ready - spawned,
                setup: t0.elapsed() - ready,
                total: t0.elapsed(),
            };
            Ok::<_, String>((client, hello, times))
        };
        match up.await {
            Ok((client, hello, times)) => Ok((Self::new(dir, pid, hello, client, shim), times)),
            Err(e) => {
                let console = std::fs::read_to_string(qemu::console_log(&dir)).unwrap_or_default();
                let _ = qemu::stop(&dir, Duration::from_secs(1)).await;
                let tail: Vec<&str> = console.lines().rev().take(5).collect();
                Err(if tail.is_empty() {
                    e
                } else {
                    format!(
                        "{e} (the guest's console ends: {})",
                        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                    )
                })
            }
        }
    }

    /// The VM a node before this one started for the pod, if it still runs.
    pub async fn adopt(dir: &Path, shim: PathBuf) -> Result<Arc<MicroVm>, String> {
        let pid = qemu::running_pid(dir).ok_or("its QEMU is gone")?;
        let (client, hello) = client::connect(&qemu::agent_socket(dir), Duration::from_secs(10)).await?;
        Ok(Self::new(dir.to_path_buf(), pid, hello, client, shim))
    }

    fn new(dir: PathBuf, pid: u32, hello: HelloReply, client: Client, shim: PathBuf) -> Arc<MicroVm> {
        let socket = dir.join("exec.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = std::os::unix::net::UnixListener::bind(&socket).and_then(|l| {
            std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            l.set_nonblocking(true)?;
            tokio::net::UnixListener::from_std(l)
        });
        let proxy_client = client.clone();
        let exec_proxy = tokio::spawn(async move {
            let listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "the VM's exec proxy");
                    return;
                }
            };
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(proxy_exec(proxy_client.clone(), conn));
            }
        });
        Arc::new(MicroVm {
            dir,
            pid,
            hello,
            client,
            shim,
            exec_proxy,
        })
    }

    /// Whether the VM's QEMU still runs.
    pub fn alive(&self) -> bool {
        qemu::running_pid(&self.dir) == Some(self.pid)
    }

    /// Power the guest off, then make sure QEMU has gone.
    pub async fn shutdown(&self) -> Result<(), String> {
        let mut c = self.client.clone();
        let _ = tokio::time::timeout(Duration::from_secs(2), c.shutdown(Empty {})).await;
        qemu::stop(&self.dir, Duration::from_secs(3)).await
    }

    /// A TCP connection to `host:port` made inside the VM (probes, port-forward).
    pub async fn dial(&self, host: &str, port: u16) -> Result<tokio::io::DuplexStream, String> {
        let (tx, rx) = mpsc::channel(16);
        let _ = tx
            .send(DialInput {
                input: Some(dial_input::Input::Dial(nodeless_guest_agent::proto::Dial {
                    host: host.to_string(),
                    port: port as u32,
                })),
            })
            .await;
        let mut c = self.client.clone();
        let mut output = c
            .dial(ReceiverStream::new(rx))
            .await
            .map_err(|e| e.message().to_string())?
            .into_inner();
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        let (mut rd, mut wr) = tokio::io::split(theirs);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let data = DialInput {
                            input: Some(dial_input::Input::Data(buf[..n].to_vec())),
                        };
                        if tx.send(data).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        tokio::spawn(async move {
            while let Ok(Some(msg)) = output.message().await {
                if wr.write_all(&msg.data).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        Ok(ours)
    }

    fn exit_record_for_lost_vm(exit: &Path) {
        let _ = ExitRecord {
            exit_code: 255,
            signal: None,
            reason: "Error".into(),
            message: "the pod's VM stopped".into(),
            finished_at: now_rfc3339(),
        }
        .write(exit);
    }
}

fn signal_number(signal: &str) -> Result<i32, String> {
    if let Ok(n) = signal.parse::<i32>() {
        return Ok(n);
    }
    let name = if signal.starts_with("SIG") {
        signal.to_string()
    } else {
        format!("SIG{signal}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| format!("unknown signal {signal}"))
}

#[async_trait]
impl Runtime for MicroVm {
    fn name(&self) -> &str {
        super::HANDLER
    }

    fn version(&self) -> String {
        format!("{}://{}", super::HANDLER, self.hello.kernel)
    }

    async fn start(&self, l: &Launch) -> Result<Started, RuntimeError> {
        let mut c = self.client.clone();
        c.run(RunRequest {
            id: l.id.clone(),
            bundle: l.bundle.display().to_string(),
            log: l.log.display().to_string(),
            exit: l.exit.display().to_string(),
            stdin: l.stdin,
            tty: l.tty,
        })
        .await
        .map_err(|e| failed("run", &l.id, e.message()))?;
        let (id, exit, dir, pid) = (l.id.clone(), l.exit.clone(), self.dir.clone(), self.pid);
        let ended = Box::pin(async move {
            loop {
                match c.wait(ContainerId { id: id.clone() }).await {
                    Ok(_) if exit.exists() => return,
                    _ => {}
                }
                if exit.exists() {
                    return;
                }
                if qemu::running_pid(&dir) != Some(pid) {
                    MicroVm::exit_record_for_lost_vm(&exit);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Ok(Started { ended })
    }

    async fn kill(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        let signal = signal_number(signal).map_err(|e| failed("kill", id, e))?;
        let mut c = self.client.clone();
        c.signal(SignalRequest { id: id.into(), signal })
            .await
            .map(drop)
            .map_err(|e| failed("kill", id, e.message()))
    }

    async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        if !self.alive() {
            return Ok(());
        }
        let mut c = self.client.clone();
        c.remove(ContainerId { id: id.into() })
            .await
            .map(drop)
            .map_err(|e| failed("delete", id, e.message()))
    }

    async fn list(&self) -> Result<Vec<ContainerState>, RuntimeError> {
        let mut c = self.client.clone();
        let list = c
            .list(Empty {})
            .await
            .map_err(|e| failed("list", "", e.message()))?
            .into_inner();
        Ok(list
            .containers
            .into_iter()
            .map(|s| ContainerState {
                id: s.id,
                pid: s.pid,
                status: s.status,
            })
            .collect())
    }

    fn exec(&self, c: &ContainerRef, args: &[String], tty: bool) -> Result<tokio::process::Command, RuntimeError> {
        let mut cmd = Command::new(&self.shim);
        cmd.arg("vm-exec")
            .arg("--socket")
            .arg(self.dir.join("exec.sock"))
            .arg("--id")
            .arg(&c.id);
        if tty {
            cmd.arg("--tty");
        }
        cmd.arg("--").args(args);
        Ok(cmd)
    }

    async fn attach(&self, id: &str) -> Result<tokio::io::BufReader<tokio::net::UnixStream>, RuntimeError> {
        Err(failed(
            "attach",
            id,
            "attaching to a microVM pod's container is not supported; use exec",
        ))
    }
}

/// One `vm-exec` connection: its header, then attach frames both ways until the process ends
/// (an `EXIT` frame with its code).
async fn proxy_exec(mut client: Client, conn: tokio::net::UnixStream) {
    let (rd, mut wr) = conn.into_split();
    let mut rd = tokio::io::BufReader::new(rd);
    let mut line = String::new();
    if tokio::io::AsyncBufReadExt::read_line(&mut rd, &mut line).await.is_err() {
        return;
    }
    let header: ExecHeader = match serde_json::from_str(&line) {
        Ok(h) => h,
        Err(e) => {
            let _ = wr
                .write_all(&attach::frame(
                    attach::STDERR,
                    format!("bad exec header: {e}\n").as_bytes(),
                ))
                .await;
            let _ = wr.write_all(&attach::frame(attach::EXIT, &126i32.to_be_bytes())).await;
            return;
        }
    };
    let (tx, rx) = mpsc::channel(16);
    let _ = tx
        .send(ExecInput {
            input: Some(exec_input::Input::Start(ExecStart {
                id: header.id.clone(),
                args: header.args.clone(),
                tty: header.tty,
                stdin: header.stdin,
                cols: header.cols as u32,
                rows: header.rows as u32,
            })),
        })
        .await;
    let feeder = tokio::spawn(async move {
        loop {
            let mut h = [0u8; 5];
            if rd.read_exact(&mut h).await.is_err() {
                break;
            }
            let Ok((kind, len)) = attach::header(h) else { break };
            let mut data = vec![0u8; len];
            if rd.read_exact(&mut data).await.is_err() {
                break;
            }
            let input = match kind {
                attach::STDIN => exec_input::Input::Stdin(data),
                attach::CLOSE_STDIN => exec_input::Input::CloseStdin(true),
                attach::RESIZE => match attach::parse_size(&data) {
                    Some((cols, rows)) => exec_input::Input::Resize(Resize {
                        cols: cols as u32,
                        rows: rows as u32,
                    }),
                    None => continue,
                },
                _ => continue,
            };
            if tx.send(ExecInput { input: Some(input) }).await.is_err() {
                break;
            }
        }
    });
    let code = match client.exec(ReceiverStream::new(rx)).await {
        Err(e) => {
            let _ = wr
                .write_all(&attach::frame(attach::STDERR, format!("{}\n", e.message()).as_bytes()))
                .await;
            126
        }
        Ok(resp) => {
            let mut out = resp.into_inner();
            let mut code = 255;
            while let Ok(Some(msg)) = out.message().await {
                let frame = match msg.output {
                    Some(exec_output::Output::Stdout(d)) => attach::frame(attach::STDOUT, &d),
                    Some(exec_output::Output::Stderr(d)) => attach::frame(attach::STDERR, &d),
                    Some(exec_output::Output::ExitCode(c)) => {
                        code = c;
                        break;
                    }
                    None => continue,
                };
                if wr.write_all(&frame).await.is_err() {
                    break;
                }
            }
            code
        }
    };
    feeder.abort();
    let _ = wr.write_all(&attach::frame(attach::EXIT, &code.to_be_bytes())).await;
}
