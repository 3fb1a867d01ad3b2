//! The node's end of the agent protocol: gRPC over the Unix socket QEMU holds for the VM's
//! virtio-serial port. QEMU takes one connection at a time, so the node keeps one channel per
//! VM and everything (containers, execs, dials) is a call or stream on it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use nodeless_guest_agent::proto::agent_client::AgentClient;
use tonic::transport::{Channel, Endpoint};

pub type Client = AgentClient<Channel>;

/// Connect to the agent behind `socket` and wait (up to `wait`) until it answers Hello. The
/// channel is made once: a connection QEMU accepted is handed to the guest as soon as the agent
/// opens its port. No HTTP/2 keep-alive: under TCG on a busy machine a boot can outlast its
/// timeout, and a VM that is gone is seen by its pid, not by pings.
pub async fn connect(
    socket: &Path,
    wait: Duration,
) -> Result<(Client, nodeless_guest_agent::proto::HelloReply), String> {
    let path: PathBuf = socket.to_path_buf();
    let deadline = tokio::time::Instant::now() + wait;
    // QEMU makes the socket before it daemonizes; a node adopting a VM finds it there.
    while !path.exists() {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{} never appeared", path.display()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let p = path.clone();
    let channel = Endpoint::from_static("http://agent")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_| {
            let p = p.clone();
            async move { tokio::net::UnixStream::connect(p).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|e| format!("connecting to {}: {e}", path.display()))?;
    let mut client = AgentClient::new(channel).max_decoding_message_size(8 << 20);
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let hello = tokio::time::timeout(left, client.hello(nodeless_guest_agent::proto::HelloRequest {}))
        .await
        .map_err(|_| format!("the guest agent did not answer within {}s", wait.as_secs()))?
        .map_err(|e| format!("the guest agent: {}", e.message()))?
        .into_inner();
    Ok((client, hello))
}
