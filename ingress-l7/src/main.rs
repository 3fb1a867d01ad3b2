//! `ingress-l7`: the L7 ingress. It follows a cluster's Ingresses (of IngressClasses whose
//! controller is `nodeless.io/ingress-l7`), Services, EndpointSlices and TLS Secrets, and
//! proxies HTTP/1.1 and HTTP/2 (TLS by SNI, h2 by ALPN) to the ready endpoints, by its own
//! HTTP/1.1 and HTTP/2 fronts on its own listeners with pingora-core's TLS acceptor (and
//! pingora's proxy for the HTTP/1.1 requests those leave to it), and HTTP/3 over QUIC on the
//! HTTPS port (quinn and h3).
//! The same ingress runs as `nodeless ingress`, and inside `nodeless up`.
//!
//!     ingress-l7 --kubeconfig nodeless.kubeconfig --http 0.0.0.0:80 --https 0.0.0.0:443

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "An L7 ingress on pingora: Ingress v1, TLS by SNI, HTTP/2, HTTP/3")]
struct Cli {
    #[command(flatten)]
    args: nodeless_ingress_l7::server::Args,
}

// The proxy allocates a little for every request; glibc's allocator showed up as a tenth of
// the CPU under load.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Cli::parse().args;
    nodeless_ingress_l7::server::run(args, nodeless_ingress_l7::server::on_signal()?)
}
