pub mod bpf;
pub mod datapath;
pub mod fastpath;
pub mod node;
pub mod plugin;
pub mod pool;
pub mod snat;
pub mod spec;
