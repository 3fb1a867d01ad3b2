//! The L7 ingress, in layers a request passes down through:
//!
//! - [`front`]: the client side, one front per protocol ([`front::h1`], [`front::h2`],
//!   [`front::h3`]), each parsing its own and never another's;
//! - [`admit`]: the one admission policy all of them ask, over the routing table ([`routes`],
//!   and its Knative part, [`routes::knative`]), and the balancer's state ([`balance`]);
//! - [`activator`]: where a Knative revision's requests wait for a pod with room;
//! - [`upstream`]: reaching the endpoints (which one, how many tries, kept-alive connections);
//! - [`forwarding`]: the forwarding fields every front writes for the endpoint;
//! - [`wire`]: HTTP/1.1 as bytes (heads, lengths, chunked bodies, hop-by-hop fields), read by
//!   every layer above;
//! - [`fallback`]: pingora's proxy, for the HTTP/1.1 requests the own front hands over.
//!
//! Beside them: certificates by SNI ([`tls`]), what a client may hold ([`limits`]), counters and
//! the access log ([`metrics`]), the layer-4 balancer for LoadBalancer Services ([`lb`]), the
//! watch that keeps the table in step with the control API ([`watch`]), and the wiring of it all
//! ([`server`]).

pub mod activator;
pub mod admit;
pub mod balance;
pub mod fallback;
pub mod forwarding;
pub mod front;
pub mod lb;
pub mod limits;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod watch;
pub mod wire;
