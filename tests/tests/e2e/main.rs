//! Black-box end-to-end tests against the real `nodeless` binary. One test binary; each module
//! starts its own `nodeless up` on a free port with its own data directory.

mod bad_input;
mod client_go;
mod cni;
mod csi_sanity;
mod debugging;
mod disruption;
mod dns;
mod durability;
mod etcd_store;
mod hosts;
mod ingress;
mod isolation;
mod isolation_network;
mod isolation_node;
mod isolation_seccomp;
mod isolation_userns;
mod jobs;
mod knative;
mod knative_conformance;
mod kubectl;
mod lifecycle;
mod metrics;
mod microvm;
mod nas;
mod node;
mod oss;
mod python_client;
mod quota;
mod rbac;
mod reflector;
mod replicas;
mod services;
mod statefulset;
mod up;
mod volumes;
