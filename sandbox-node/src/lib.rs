//! sandbox-node: a virtual node that turns every pod bound to it into a sandbox.
//!
//! The node registers a Node object, watches the pods bound to it, and gives each pod its own
//! network, IPC and UTS namespaces; each container is an OCI bundle (an overlay of image layers)
//! run by an OCI runtime (runc or crun) under a small shim that outlives the node. Status flows
//! back to control as a kubelet's does; logs and exec are served on the kubelet API, over mutual
//! TLS with control's client certificate.

pub mod beneath;
pub mod cgroups;
pub mod context;
pub mod csi;
pub mod image;
pub mod kubelet_tls;
pub mod metrics;
pub mod network;
pub mod node;
pub mod pod;
pub mod pod_net;
pub mod private;
pub mod purge;
pub mod rundir;
pub mod runtime;
pub mod sandbox;
pub mod sealed_binary;
pub mod seccomp;
pub mod server;
pub mod shim_proto;
pub mod spec;
pub mod stats;
pub mod streams;
pub mod userns;
pub mod vm;
pub mod warm;
