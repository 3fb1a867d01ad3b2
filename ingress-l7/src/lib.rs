//! The L7 ingress: Ingress v1 routing ([`routes`]), certificates by SNI ([`tls`]), the proxy on
//! pingora ([`proxy`]) its own HTTP/1.1 and HTTP/2 paths ([`h1`], [`h2`]), HTTP/3 over QUIC ([`http3`]), its counters and access log ([`metrics`]) and the watch that keeps them in step with the control API ([`watch`]).

pub mod h1;
pub mod h2;
pub mod http3;
pub mod lb;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod routes;
pub mod stream;
pub mod tls;
pub mod watch;
