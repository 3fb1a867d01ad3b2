//! The CSI protocol as Nodeless speaks it, shared by the volume drivers (`volumes/`), control
//! (provisioner, attacher and resizer) and the node (kubelet's side), so none of them depends on
//! another's internals (DESIGN.md: "Storage is CSI-shaped").
//!
//! - [`csi`]: the generated messages, servers and clients of CSI v1.14 (`proto/csi.proto`).
//! - [`endpoint`]: [`serve`] a driver on `unix:///path.sock` and [`connect`] to one.
//! - [`capability`]: Kubernetes' spelling of CSI (a PV as a `VolumeCapability`, the names
//!   kubelet and the attach/detach controller derive).

#![forbid(unsafe_code)]

pub mod capability;
pub mod csi;
pub mod endpoint;

pub use endpoint::{EndpointError, connect, listen, serve, serve_on};
