pub mod bpf;
pub mod datapath;
pub mod plugin;
pub mod pool;
pub mod spec;
