//! The guest agent of a microVM pod and what the node shares with it: the protocol
//! (`proto/agent.proto`), and the container records both sides write the same way (exit records
//! and CRI log lines), so a container's log and exit read alike whether it ran in a sandbox on
//! the host or in a VM.

pub mod records;

/// The generated protocol: `agent_server` for the agent, `agent_client` for the node.
#[allow(clippy::all, rust_2018_idioms)]
pub mod proto {
    tonic::include_proto!("nodeless.agent.v1");
}

/// The virtio-serial port's name: the node gives QEMU `virtserialport,name=<this>`.
pub const PORT_NAME: &str = "agent";
