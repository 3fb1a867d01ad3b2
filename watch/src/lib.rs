//! One way to follow the cluster. DNS, the eBPF service balancer and the ingress each list and
//! watch Services, EndpointSlices and a few other kinds, rebuild a plain table of their own from
//! the whole state after a burst of changes and swap it in. The loop that does that lives here
//! ([`follow`]), and so does the reading every one of them makes of EndpointSlices: which Service
//! a slice belongs to and which of its endpoints serve a Service port ([`endpoints`]).
//! Each component keeps only its table builder.
#![forbid(unsafe_code)]

pub mod endpoints;
pub mod follow;

pub use endpoints::{Conditions, PortEndpoints, SlicesByService, port_endpoints, service_of};
pub use follow::{Follow, RETRY, SETTLE};
