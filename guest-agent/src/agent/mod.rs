//! The agent as the guest's PID 1 (see the crate's README).

pub mod containers;
pub mod init;
pub mod net;
pub mod oci;
pub mod port;
pub mod service;
pub mod setup;
