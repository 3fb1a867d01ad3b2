//! The gRPC service the node calls (`proto/agent.proto`).

use std::io::{Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use nix::mount::{MsFlags, mount};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::containers::{Containers, pipes, terminal};
use nodeless_guest_agent::proto::agent_server::Agent;
use nodeless_guest_agent::proto::{
    ContainerId, ContainerState, DialInput, DialOutput, Empty, ExecInput, ExecOutput, HelloReply, HelloRequest,
    ListReply, RunReply, RunRequest, SetupReply, SetupRequest, SignalRequest, StatsReply, WaitReply, dial_input,
    exec_input, exec_output,
};

pub struct Service {
    pub containers: Arc<Containers>,
    pub init_uptime: f64,
    pub serving_uptime: f64,
}

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn failed(e: String) -> Status {
    Status::failed_precondition(e)
}

fn mounted(path: &str) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(path))
}

fn meminfo(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0)
        * 1024
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else { return 0.0 };
    // user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let busy: u64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| *x)
        .take(8)
        .sum();
    busy as f64 / 100.0
}

#[tonic::async_trait]
impl Agent for Service {
    async fn hello(&self, _: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(HelloReply {
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            init_uptime_seconds: self.init_uptime,
            serving_uptime_seconds: self.serving_uptime,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }

    async fn setup(&self, req: Request<SetupRequest>) -> Result<Response<SetupReply>, Status> {
        let req = req.into_inner();
        for share in &req.shares {
            if mounted(&share.path) {
                continue;
            }
            std::fs::create_dir_all(&share.path).map_err(|e| failed(format!("{}: {e}", share.path)))?;
            mount(
                Some(share.tag.as_str()),
                Path::new(&share.path),
                Some("9p"),
                MsFlags::empty(),
                Some("trans=virtio,version=9p2000.L,msize=524288,cache=none,access=client"),
            )
            .map_err(|e| failed(format!("mounting the share {} on {}: {e}", share.tag, share.path)))?;
        }
        if !req.hostname.is_empty() {
            rustix::system::sethostname(req.hostname.as_bytes()).map_err(|e| failed(format!("hostname: {e}")))?;
        }
        super::net::configure(&req.interfaces).await.map_err(failed)?;
        Ok(Response::new(SetupReply {}))
    }

    async fn run(&self, req: Request<RunRequest>) -> Result<Response<RunReply>, Status> {
        let r = req.into_inner();
        let pid = self
            .containers
            .run(
                &r.id,
                Path::new(&r.bundle),
                Path::new(&r.log),
                Path::new(&r.exit),
                r.stdin,
                r.tty,
            )
            .map_err(failed)?;
        Ok(Response::new(RunReply { pid }))
    }

    async fn wait(&self, req: Request<ContainerId>) -> Result<Response<WaitReply>, Status> {
        let (exit_code, signal) = self
            .containers
            .wait(&req.into_inner().id)
            .await
            .map_err(Status::not_found)?;
        Ok(Response::new(WaitReply { exit_code, signal }))
    }

    async fn signal(&self, req: Request<SignalRequest>) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        self.containers.signal(&r.id, r.signal).map_err(failed)?;
        Ok(Response::new(Empty {}))
    }

    async fn remove(&self, req: Request<ContainerId>) -> Result<Response<Empty>, Status> {
        self.containers.remove(&req.into_inner().id).await.map_err(failed)?;
        Ok(Response::new(Empty {}))
    }

    async fn list(&self, _: Request<Empty>) -> Result<Response<ListReply>, Status> {
        let containers = self
            .containers
            .list()
            .into_iter()
            .map(|(id, pid, running)| ContainerState {
                id,
                pid,
                status: if running { "running" } else { "stopped" }.into(),
            })
            .collect();
        Ok(Response::new(ListReply { containers }))
    }

    type ExecStream = Out<ExecOutput>;

    async fn exec(&self, req: Request<Streaming<ExecInput>>) -> Result<Response<Self::ExecStream>, Status> {
        let mut input = req.into_inner();
        let Ok(Some(ExecInput {
            input: Some(exec_input::Input::Start(start)),
        })) = input.message().await
        else {
            return Err(Status::invalid_argument("the first message of an exec must be `start`"));
        };
        let (io, master) = if start.tty {
            // From the container's own devpts, so its /dev/pts has the process's terminal.
            let (pid, _, _) = self
                .containers
                .pid(&start.id)
                .ok_or_else(|| failed(format!("no container {}", start.id)))?;
            let ptmx = std::path::PathBuf::from(format!("/proc/{pid}/root/dev/pts/ptmx"));
            let (master, io) = terminal(Some(&ptmx)).map_err(failed)?;
            resize(&master, start.cols, start.rows);
            (io, Some(master))
        } else {
            (pipes(start.stdin).map_err(failed)?, None)
        };
        let (parts, outputs, stdin) = io.split();
        let ended = self.containers.exec(&start.id, &start.args, parts).map_err(failed)?;
        let (tx, rx) = mpsc::channel::<Result<ExecOutput, Status>>(64);
        let mut readers = Vec::new();
        for (mut r, name) in outputs {
            let tx = tx.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let data = buf[..n].to_vec();
                            let output = if name == "stderr" {
                                exec_output::Output::Stderr(data)
                            } else {
                                exec_output::Output::Stdout(data)
                            };
                            if tx.blocking_send(Ok(ExecOutput { output: Some(output) })).is_err() {
                                break;
                            }
                        }
                    }
                }
            }));
        }
        let stdin = Arc::new(Mutex::new(stdin.filter(|_| start.stdin)));
        let master = Arc::new(master);
        let (stdin2, master2) = (stdin.clone(), master.clone());
        tokio::spawn(async move {
            while let Ok(Some(msg)) = input.message().await {
                match msg.input {
                    Some(exec_input::Input::Stdin(data)) => {
                        let stdin = stdin2.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            if let Some(f) = stdin.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                                let _ = f.write_all(&data);
                            }
                        })
                        .await;
                    }
                    Some(exec_input::Input::Resize(r)) => {
                        if let Some(m) = master2.as_ref() {
                            resize(m, r.cols, r.rows);
                        }
                    }
                    Some(exec_input::Input::CloseStdin(_)) => {
                        if master2.is_some() {
                            // A terminal's end of input is ^D.
                            if let Some(f) = stdin2.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                                let _ = f.write_all(&[4]);
                            }
                        } else {
                            stdin2.lock().unwrap_or_else(|e| e.into_inner()).take();
                        }
                    }
                    _ => {}
                }
            }
        });
        tokio::spawn(async move {
            let (code, _) = ended.await.unwrap_or((255, 0));
            // The process is gone: its output ends once everything it left has closed it; a
            // terminal's ends when the agent lets go of the master.
            drop(master);
            stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
            let _ = tokio::task::spawn_blocking(move || {
                for r in readers {
                    let _ = r.join();
                }
            })
            .await;
            let _ = tx
                .send(Ok(ExecOutput {
                    output: Some(exec_output::Output::ExitCode(code)),
                }))
                .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type DialStream = Out<DialOutput>;

    async fn dial(&self, req: Request<Streaming<DialInput>>) -> Result<Response<Self::DialStream>, Status> {
        let mut input = req.into_inner();
        let Ok(Some(DialInput {
            input: Some(dial_input::Input::Dial(d)),
        })) = input.message().await
        else {
            return Err(Status::invalid_argument("the first message of a dial must be `dial`"));
        };
        let host = if d.host.is_empty() {
            "127.0.0.1".to_string()
        } else {
            d.host
        };
        let addr = format!("{host}:{}", d.port);
        let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| Status::unavailable(format!("dial tcp {addr}: timed out")))?
            .map_err(|e| Status::unavailable(format!("dial tcp {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = input.message().await {
                if let Some(dial_input::Input::Data(data)) = msg.input
                    && wr.write_all(&data).await.is_err()
                {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx
                            .send(Ok(DialOutput {
                                data: buf[..n].to_vec(),
                            }))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stats(&self, _: Request<Empty>) -> Result<Response<StatsReply>, Status> {
        Ok(Response::new(StatsReply {
            memory_total_bytes: meminfo("MemTotal:"),
            memory_available_bytes: meminfo("MemAvailable:"),
            cpu_seconds: cpu_seconds(),
            containers_running: self.containers.running() as u32,
        }))
    }

    async fn shutdown(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            super::init::power_off();
        });
        Ok(Response::new(Empty {}))
    }
}

fn resize(master: &std::fs::File, cols: u32, rows: u32) {
    if cols == 0 || rows == 0 {
        return;
    }
    let size = rustix::termios::Winsize {
        ws_row: rows as u16,
        ws_col: cols as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let _ = rustix::termios::tcsetwinsize(master, size);
}
