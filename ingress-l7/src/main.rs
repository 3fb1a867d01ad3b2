//! `ingress-l7`: the L7 ingress. It follows a cluster's Ingresses (of IngressClasses whose
//! controller is `nodeless.io/ingress-l7`), Services, EndpointSlices and TLS Secrets, and
//! proxies HTTP/1.1 and HTTP/2 (TLS by SNI, h2 by ALPN) to the ready endpoints, on pingora.
//!
//!     ingress-l7 --kubeconfig nodeless.kubeconfig --http 0.0.0.0:80 --https 0.0.0.0:443

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use clap::Parser;
use nodeless_ingress_l7::{proxy::Ingress, routes::Table, tls::Certs, watch};
use pingora_core::apps::ServerApp;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::GetSocketDigest;
use pingora_core::protocols::SocketDigest;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::server::ShutdownWatch;
use pingora_core::server::configuration::ServerConf;
use pingora_proxy::HttpProxy;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(version, about = "An L7 ingress on pingora: Ingress v1, TLS by SNI, HTTP/2")]
struct Args {
    /// The control API to follow.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Where to serve plain HTTP (port 0 picks one; the address is printed).
    #[arg(long, default_value = "0.0.0.0:80")]
    http: String,
    /// Where to serve HTTPS (port 0 picks one; the address is printed).
    #[arg(long, default_value = "0.0.0.0:443")]
    https: String,
    /// The address published in the status of the Ingresses served.
    #[arg(long)]
    address: Option<String>,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())).with_writer(std::io::stderr).init();
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig).with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.context("the kubeconfig")?;
    let client = kube::Client::try_from(config).context("the control API client")?;

    let table = Arc::new(ArcSwap::from_pointee(Table::default()));
    let certs = Arc::new(Certs::default());
    let http = TcpListener::bind(&args.http).await.with_context(|| format!("binding {}", args.http))?;
    let https = TcpListener::bind(&args.https).await.with_context(|| format!("binding {}", args.https))?;

    let conf = Arc::new(ServerConf::default());
    let app = |scheme| Arc::new(pingora_proxy::http_proxy(&conf, Ingress { table: table.clone(), scheme }));
    let mut server_tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
    server_tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = Arc::new(Acceptor::from_server_config(Arc::new(server_tls)));

    let (stop, shutdown) = tokio::sync::watch::channel(false);
    println!("ingress-l7: http on {}, https on {}", http.local_addr()?, https.local_addr()?);
    tokio::spawn(watch::run(client, table.clone(), certs.clone(), args.address.clone()));
    tokio::spawn(serve(http, app("http"), None, shutdown.clone()));
    tokio::spawn(serve(https, app("https"), Some(acceptor), shutdown.clone()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let _ = stop.send(true);
    Ok(())
}

/// Accept connections and hand each to the proxy (after the TLS handshake on an HTTPS
/// listener), keeping a connection while the client keeps it alive.
async fn serve(listener: TcpListener, app: Arc<HttpProxy<Ingress>>, tls: Option<Arc<Acceptor>>, shutdown: ShutdownWatch) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, "accept");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (app, tls, shutdown) = (app.clone(), tls.clone(), shutdown.clone());
        tokio::spawn(async move {
            let fd = tcp.as_raw_fd();
            let mut l4 = L4Stream::from(tcp);
            l4.set_socket_digest(SocketDigest::from_raw_fd(fd));
            let mut stream: pingora_core::protocols::Stream = match tls {
                Some(a) => match a.tls_handshake(l4).await {
                    Ok(s) => Box::new(s),
                    Err(e) => {
                        tracing::debug!(error = %e, "TLS handshake");
                        return;
                    }
                },
                None => Box::new(l4),
            };
            while let Some(s) = app.process_new(stream, &shutdown).await {
                stream = s;
            }
        });
    }
}
