//! The eBPF fast path, driven by the pool service rather than the plugin: attaching a program
//! to a new interface waits for an RCU grace period in the kernel (~9 ms here), which ADD need
//! not wait for — the pod's host route already carries its traffic, the fast path only
//! shortens it. So ADD hands the attach to the pool and returns; a per-network worker applies
//! publishes and withdrawals in the order they came, and DEL, GC and CHECK wait for it.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot};

use crate::bpf::{Pins, PodEndpoint, Walls};

enum Op {
    Publish {
        host_ifname: String,
        ip: Ipv4Addr,
        endpoint: PodEndpoint,
        accelerate: bool,
        walls: Walls,
    },
    Withdraw {
        host_ifname: String,
        ip: Option<Ipv4Addr>,
        done: oneshot::Sender<Result<(), String>>,
    },
    Sync {
        done: oneshot::Sender<()>,
    },
}

#[derive(Default)]
pub struct FastPath {
    workers: Mutex<HashMap<String, mpsc::UnboundedSender<Op>>>,
}

impl FastPath {
    fn send(&self, network: &str, op: Op) {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let tx = workers.entry(network.to_string()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(work(Pins::for_network(network), rx));
            tx
        });
        if let Err(mpsc::error::SendError(op)) = tx.send(op) {
            // The worker is gone (it never ends on its own); start another for this op.
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(work(Pins::for_network(network), rx));
            let _ = tx.send(op);
            workers.insert(network.to_string(), tx);
        }
    }

    /// Attach to the pod's host end and publish the pod, soon (`accelerate`: whether the
    /// network's datapath, if this pod is the one to load it, accelerates sockets; `walls`:
    /// what the network's pods may reach, written again by every publish).
    pub fn publish(
        &self,
        network: &str,
        host_ifname: &str,
        ip: Ipv4Addr,
        endpoint: PodEndpoint,
        accelerate: bool,
        walls: Walls,
    ) {
        self.send(
            network,
            Op::Publish {
                host_ifname: host_ifname.to_string(),
                ip,
                endpoint,
                accelerate,
                walls,
            },
        );
    }

    /// Undo a publish, after everything asked before it.
    pub async fn withdraw(&self, network: &str, host_ifname: &str, ip: Option<Ipv4Addr>) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.send(
            network,
            Op::Withdraw {
                host_ifname: host_ifname.to_string(),
                ip,
                done,
            },
        );
        wait.await.map_err(|_| "the fast-path worker went away".to_string())?
    }

    /// Wait until everything asked so far is done.
    pub async fn sync(&self, network: &str) {
        let (done, wait) = oneshot::channel();
        self.send(network, Op::Sync { done });
        let _ = wait.await;
    }
}

async fn work(pins: Pins, mut rx: mpsc::UnboundedReceiver<Op>) {
    while let Some(op) = rx.recv().await {
        match op {
            Op::Publish {
                host_ifname,
                ip,
                endpoint,
                accelerate,
                walls,
            } => {
                let p = pins.clone();
                let name = host_ifname.clone();
                match tokio::task::spawn_blocking(move || p.attach(&name, ip, endpoint, accelerate, walls)).await {
                    Ok(Ok(())) => {}
                    // The pod keeps its routed path; CHECK reports the missing fast path.
                    Ok(Err(e)) => {
                        tracing::warn!(pod = %ip, interface = %host_ifname, error = %e, "eBPF fast path not attached")
                    }
                    Err(e) => tracing::warn!(error = %e, "eBPF attach task"),
                }
            }
            Op::Withdraw { host_ifname, ip, done } => {
                let p = pins.clone();
                let r = tokio::task::spawn_blocking(move || p.detach(&host_ifname, ip))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                let _ = done.send(r);
            }
            Op::Sync { done } => {
                let _ = done.send(());
            }
        }
    }
}
