//! The L7 ingress: Ingress v1 routing ([`routes`]), certificates by SNI ([`tls`]), the proxy on
//! pingora ([`proxy`]) and the watch that keeps them in step with the control API ([`watch`]).

pub mod proxy;
pub mod routes;
pub mod tls;
pub mod watch;
