//! Types shared by every Nodeless component. No I/O lives here.
//!
//! * [`catalogue`]: the API resources the control plane serves (group, version, kind, plural,
//!   scope, verbs, short names, subresources) — the one table discovery, routing and clients use.
//! * [`keys`]: well-known label, annotation and taint keys, so components agree on spelling.
//! * [`knative`]: the contract between control's Knative Serving controllers and ingress-l7.
//! * [`caps`]: the capabilities a container may hold, one rule for admission and the node.
//! * [`pod_features`]: what a pod may ask of a node (runtime class, seccomp and AppArmor
//!   profiles, procMount, sysctls), one rule for admission and the node.
#![forbid(unsafe_code)]

pub mod caps;
pub mod catalogue;
pub mod keys;
pub mod knative;
pub mod pod_features;
pub mod privatezone;
pub mod quantity;

pub use catalogue::{BUILTIN, ResourceDef, Scope};
