//! CSI volume drivers, served over gRPC on a Unix socket with the official CSI protobufs
//! (`csi.v1`), so the node calls them as kubelet calls any CSI driver and `control` as the
//! external provisioner, attacher and resizer would (DESIGN.md: "Storage is CSI-shaped").
//!
//! The protocol itself (the generated `csi` module, endpoints, Kubernetes' mapping) is the
//! shared crate `nodeless-csi`, re-exported here.
//!
//! - [`disk`]: `disk.csi.nodeless.io`, loop devices over sparse files standing for cloud disks.
//! - [`nas`]: `nas.csi.nodeless.io`, NFS exports, through the kernel's client or a FUSE one.
//! - [`oss`]: `oss.csi.nodeless.io`, buckets mounted as FUSE file systems over the S3 API.
//! - [`fuse`], [`mounter`]: the mount processes behind FUSE volumes.
//! - [`host`]: every kernel and tool call the drivers make (losetup, mkfs, mount, statvfs),
//!   behind one trait that unit tests fake.

#![forbid(unsafe_code)]

pub mod disk;
pub mod error;
pub mod fuse;
pub mod host;
pub mod locks;
pub mod mounter;
pub mod nas;
pub mod oss;
pub mod purge;
pub mod records;
pub mod shared_fs;

pub use disk::{DISK_DRIVER, DiskConfig, DiskDriver};
pub use error::Error;
pub use nas::{NAS_DRIVER, NasConfig, NasDriver};
pub use nodeless_csi::{EndpointError, capability, connect, csi, endpoint, listen, serve, serve_on};
pub use oss::{OSS_DRIVER, OssConfig, OssDriver};
