//! CSI volume drivers, served over gRPC on a Unix socket with the official CSI protobufs
//! (`csi.v1`), so the node calls them as kubelet calls any CSI driver and `control` as the
//! external provisioner, attacher and resizer would (DESIGN.md: "Storage is CSI-shaped").
//!
//! - [`csi`]: the generated messages, servers and clients of CSI v1.14 (`proto/csi.proto`).
//! - [`endpoint`]: [`serve`] a driver on `unix:///path.sock` and [`connect`] to one.
//! - [`disk`]: `disk.csi.nodeless.io`, loop devices over sparse files standing for cloud disks.
//! - [`capability`]: Kubernetes' spelling of CSI (a PV as a `VolumeCapability`, the names
//!   kubelet and the attach/detach controller derive), shared by control and the node.
//! - [`host`]: every kernel and tool call the drivers make (losetup, mkfs, mount, statvfs),
//!   behind one trait that unit tests fake.

#![forbid(unsafe_code)]

pub mod capability;
pub mod csi;
pub mod disk;
pub mod endpoint;
pub mod error;
pub mod host;
pub mod purge;

pub use disk::{DISK_DRIVER, DiskConfig, DiskDriver};
pub use endpoint::{EndpointError, connect, listen, serve, serve_on};
pub use error::Error;
