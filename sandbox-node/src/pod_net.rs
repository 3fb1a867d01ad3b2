//! Where the node reaches a pod's ports from (probes, port-forward): inside its network
//! namespace for a sandbox, through the agent inside the VM for a microVM pod.

use std::path::PathBuf;

/// A byte stream to a port of a pod.
pub trait PodStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> PodStream for T {}

/// Where the node reaches a pod's ports from (probes, port-forward): inside its network
/// namespace, or, for a microVM, through the agent inside the VM.
#[derive(Clone)]
pub enum PodNet {
    Netns(PathBuf),
    Vm(std::sync::Arc<crate::vm::MicroVm>),
}

impl PodNet {
    pub async fn connect(
        &self,
        addr: std::net::SocketAddr,
        timeout: std::time::Duration,
    ) -> Result<Box<dyn PodStream>, String> {
        match self {
            PodNet::Netns(netns) => Ok(Box::new(crate::sandbox::connect_in(netns, addr, timeout).await?)),
            PodNet::Vm(vm) => {
                let host = addr.ip().to_string();
                let dial = vm.dial(&host, addr.port());
                let stream = tokio::time::timeout(timeout, dial)
                    .await
                    .map_err(|_| format!("dial tcp {addr}: i/o timeout"))??;
                Ok(Box::new(stream))
            }
        }
    }
}
