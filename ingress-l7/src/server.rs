//! The ingress put together: listeners and a runtime per worker thread, HTTP/3 on a thread of
//! its own, the layer-4 balancer for LoadBalancer Services, metrics, and the watch that keeps
//! the routing table in step with the cluster; and for Knative, the internal listener
//! (`--internal-http`, where cluster-local routes are served) and the activator's reports to the
//! autoscaler. `ingress-l7`, `nodeless ingress` and `nodeless up` all run [`run`].

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::activator::{self, Activator};
use crate::fallback::{Ingress, stream};
use crate::front::{End, Front, h3, opens_with_h2_preface};
use crate::limits::{ClientLimits, Gate};
use crate::{lb, metrics::Metrics, routes::Table, tls::Certs, upstream, watch};
use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use pingora_core::apps::{HttpServerOptions, ServerApp};
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::GetSocketDigest;
use pingora_core::protocols::SocketDigest;
use pingora_core::protocols::Ssl;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::server::ShutdownWatch;
use pingora_core::server::configuration::ServerConf;
use pingora_proxy::HttpProxy;
use tokio::net::TcpListener;

/// The ingress's settings: `ingress-l7`'s and `nodeless ingress`'s flags, which `nodeless up`
/// also fills in.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// The control API to follow.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Where to serve plain HTTP (port 0 picks one; the address is printed).
    #[arg(long, default_value = "0.0.0.0:80")]
    pub http: String,
    /// Where to serve HTTPS (port 0 picks one; the address is printed).
    #[arg(long, default_value = "0.0.0.0:443")]
    pub https: String,
    /// The address published in the status of the Ingresses served.
    #[arg(long)]
    pub address: Option<String>,
    /// Where to serve Prometheus metrics at /metrics (port 0 picks one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:9113")]
    pub metrics: String,
    /// Make this IngressClass (for this controller, marked the default) if it does not exist.
    #[arg(long)]
    pub ensure_class: Option<String>,
    /// Access-log lines a second at most (0: none).
    #[arg(long, default_value_t = 100)]
    pub access_log_rate: u64,
    /// Worker threads, each with its own listeners and event loop (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Serve no HTTP/3 (by default QUIC is served on the HTTPS port's number, over UDP, and
    /// advertised by Alt-Svc).
    #[arg(long)]
    pub no_http3: bool,
    /// Serve LoadBalancer Services from this pool of addresses (an IPv4 CIDR, standing for
    /// SLB/EIP addresses), put on `--lb-interface`, with TCP and UDP forwarded to the endpoints.
    #[arg(long)]
    pub lb_pool: Option<ipnet::Ipv4Net>,
    /// The interface the pool's addresses go on (a dummy interface, made if missing and then
    /// removed at exit).
    #[arg(long, default_value = "nodeless-lb0")]
    pub lb_interface: String,
    /// Seconds a client may take over its TLS handshake.
    #[arg(long, default_value_t = ClientLimits::default().tls_handshake.as_secs_f64())]
    pub tls_handshake_timeout: f64,
    /// Seconds a client may take over a request head, from its first byte.
    #[arg(long, default_value_t = ClientLimits::default().header.as_secs_f64())]
    pub client_header_timeout: f64,
    /// Seconds a client connection may stay idle between requests (HTTP/2: with no stream open).
    #[arg(long, default_value_t = ClientLimits::default().idle.as_secs_f64())]
    pub client_idle_timeout: f64,
    /// Client connections open at once, over all threads; one over it is closed at once.
    #[arg(long, default_value_t = ClientLimits::default().max_connections)]
    pub max_connections: usize,
    /// Where to serve plain HTTP for the cluster (port 0 picks one; the address is printed):
    /// Knative's cluster-local routes (`hello.default.svc.cluster.local`) are served here, beside
    /// everything the public listeners serve. On port 80 its IP is published in KIngresses'
    /// status, and pods reach it through the Route's Service. None by default.
    #[arg(long)]
    pub internal_http: Option<String>,
    /// Bind the internal listener with IP_FREEBIND: its address may not exist yet (a pod
    /// network's gateway before the node's first pod brings it up). `nodeless up` sets it for
    /// the gateway.
    #[arg(long)]
    pub internal_freebind: bool,
    /// Requests that may wait for a pod of one Knative revision; one more gets 503.
    #[arg(long, default_value_t = activator::QUEUE_CAPACITY)]
    pub revision_queue: usize,
}

impl Args {
    fn limits(&self) -> Result<ClientLimits> {
        let secs = |s: f64, what: &str| {
            Duration::try_from_secs_f64(s).with_context(|| format!("{what}: {s} is not a number of seconds"))
        };
        let limits = ClientLimits {
            tls_handshake: secs(self.tls_handshake_timeout, "--tls-handshake-timeout")?,
            header: secs(self.client_header_timeout, "--client-header-timeout")?,
            idle: secs(self.client_idle_timeout, "--client-idle-timeout")?,
            max_connections: self.max_connections,
        };
        limits.validate()?;
        Ok(limits)
    }
}

impl Args {
    /// The defaults of every flag, following the cluster of `kubeconfig`.
    pub fn following(kubeconfig: &std::path::Path) -> Args {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            args: Args,
        }
        let argv = [
            std::ffi::OsStr::new("ingress"),
            "--kubeconfig".as_ref(),
            kubeconfig.as_os_str(),
        ];
        <Flags as clap::Parser>::parse_from(argv).args
    }
}

/// Serve until `stopping` resolves (or its sender is dropped), then close the listeners and take
/// the LoadBalancer addresses down. Blocks the calling thread, which must not be in a tokio
/// runtime: the ingress runs a runtime per worker thread and one for following the cluster.
pub fn run(args: Args, stopping: tokio::sync::oneshot::Receiver<()>) -> Result<()> {
    let limits = args.limits()?;
    let gate = Gate::new(limits.max_connections);
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        .max(1);

    // Every worker thread has its own listening sockets on the same addresses (SO_REUSEPORT:
    // the kernel spreads connections over them) and its own single-threaded runtime, as nginx's
    // workers do: a connection stays on one thread, with no wakeups across threads.
    let mut http = vec![reuseport_listener(&args.http)?];
    let mut https = vec![reuseport_listener(&args.https)?];
    let (http_addr, https_addr) = (http[0].local_addr()?, https[0].local_addr()?);
    let mut internal = match &args.internal_http {
        Some(a) => vec![Some(bind_listener(a, args.internal_freebind)?)],
        None => vec![None],
    };
    let internal_addr = internal[0].as_ref().map(|l| l.local_addr()).transpose()?;
    for _ in 1..threads {
        http.push(reuseport_listener(&http_addr.to_string())?);
        https.push(reuseport_listener(&https_addr.to_string())?);
        internal.push(
            internal_addr
                .map(|a| bind_listener(&a.to_string(), args.internal_freebind))
                .transpose()?,
        );
    }

    let control = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = control.block_on(client(&args.kubeconfig))?;
    let table = Arc::new(ArcSwap::from_pointee(Table::default()));
    let certs = Arc::new(Certs::new().map_err(anyhow::Error::msg)?);
    let metrics = Arc::new(Metrics::new(args.access_log_rate));
    let activator = Arc::new(Activator::new(metrics.clone(), args.revision_queue));
    let metrics_listener =
        std::net::TcpListener::bind(&args.metrics).with_context(|| format!("binding {}", args.metrics))?;
    metrics_listener.set_nonblocking(true)?;
    let metrics_addr = metrics_listener.local_addr()?;
    // HTTP/3 has a thread and runtime of its own: one UDP socket, whose connections quinn keeps.
    let quic = if args.no_http3 {
        None
    } else {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let endpoint = {
            let _in = rt.enter();
            h3::endpoint(https_addr, certs.clone())?
        };
        Some((rt, endpoint))
    };
    let alt_svc = match &quic {
        Some(_) => Some(http::HeaderValue::from_str(&format!(
            "h3=\":{}\"; ma=86400",
            https_addr.port()
        ))?),
        None => None,
    };
    let conf = Arc::new(ServerConf::default());
    let app = |scheme: &'static str, internal: bool| {
        let alt_svc = if scheme == "https" { alt_svc.clone() } else { None };
        let mut proxy = pingora_proxy::http_proxy(
            &conf,
            Ingress {
                table: table.clone(),
                metrics: metrics.clone(),
                scheme,
                internal,
                alt_svc,
            },
        );
        proxy.server_options = Some(HttpServerOptions::default());
        Arc::new(proxy)
    };
    // Each listener has its HTTP/1.1 and HTTP/2 fronts and a pingora proxy for the connections
    // the HTTP/1.1 front hands over. Plain listeners also take HTTP/2 with prior knowledge (h2c):
    // which protocol a connection speaks is found once, when it opens.
    let front = |scheme: &'static str, internal: bool| {
        Arc::new(Front {
            table: table.clone(),
            metrics: metrics.clone(),
            scheme,
            internal,
            alt_svc: if scheme == "https" { alt_svc.clone() } else { None },
            h2c: Default::default(),
            limits,
        })
    };
    let plain = |internal: bool| Apps {
        front: front("http", internal),
        http1: app("http", internal),
        h2c: true,
    };
    let secure = || Apps {
        front: front("https", false),
        http1: app("https", false),
        h2c: false,
    };
    let mut server_tls =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
    server_tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = Arc::new(Acceptor::from_server_config(Arc::new(server_tls)));
    let (stop, shutdown) = tokio::sync::watch::channel(false);

    for (i, ((h, s), n)) in http.into_iter().zip(https).zip(internal).enumerate() {
        // Each worker has its own proxies and so its own pools of upstream connections: a
        // connection is kept, watched while idle and reused on one thread (shared pools had
        // threads race for the same idle connection, which pingora then drops).
        let cluster = n.map(|n| (n, plain(true)));
        let (plain, secure, acceptor, shutdown, gate) =
            (plain(false), secure(), acceptor.clone(), shutdown.clone(), gate.clone());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new()
            .name(format!("ingress-{i}"))
            .spawn(move || {
                rt.block_on(async move {
                    let (h, s) = match (TcpListener::from_std(h), TcpListener::from_std(s)) {
                        (Ok(h), Ok(s)) => (h, s),
                        (Err(e), _) | (_, Err(e)) => {
                            tracing::error!(error = %e, "listening");
                            return;
                        }
                    };
                    tokio::spawn(upstream::tcp::sweep_idle());
                    let internal = async {
                        if let Some((n, apps)) = cluster {
                            match TcpListener::from_std(n) {
                                Ok(n) => serve(n, apps, None, shutdown.clone(), gate.clone()).await,
                                Err(e) => tracing::error!(error = %e, "listening (internal)"),
                            }
                        }
                    };
                    tokio::join!(
                        serve(h, plain, None, shutdown.clone(), gate.clone()),
                        serve(s, secure, Some(acceptor), shutdown.clone(), gate.clone()),
                        internal,
                    );
                })
            })?;
    }
    if let Some((rt, endpoint)) = quic {
        let app = Arc::new(h3::Http3::new(table.clone(), metrics.clone()));
        std::thread::Builder::new()
            .name("ingress-h3".into())
            .spawn(move || rt.block_on(app.serve(endpoint)))?;
    }
    // LoadBalancer Services: a thread of their own forwards layer 4; the watch sends it plans.
    let (lbs, lb_done) = match args.lb_pool {
        None => (None, None),
        Some(pool) => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let mut forwarder = rt
                .block_on(lb::Forwarder::new(&args.lb_interface, pool))
                .with_context(|| format!("the load balancer interface {}", args.lb_interface))?;
            let (plans, mut next) = tokio::sync::watch::channel(Arc::new(Vec::new()));
            let (done_tx, done) = std::sync::mpsc::channel();
            let mut shutdown = shutdown.clone();
            std::thread::Builder::new().name("ingress-l4".into()).spawn(move || {
                rt.block_on(async move {
                    loop {
                        tokio::select! {
                            changed = next.changed() => {
                                if changed.is_err() {
                                    break;
                                }
                                let plan = next.borrow_and_update().clone();
                                forwarder.apply(&plan).await;
                            }
                            _ = shutdown.changed() => break,
                        }
                    }
                    forwarder.shutdown().await;
                });
                let _ = done_tx.send(());
            })?;
            (Some(watch::LoadBalancers { pool, plans }), Some(done))
        }
    };
    let over = if args.no_http3 { "https" } else { "https and http3" };
    println!("ingress-l7: http on {http_addr}, {over} on {https_addr}, metrics on {metrics_addr}");
    let domain = args.address.clone().unwrap_or_else(|| http_addr.ip().to_string());
    let at = watch::kingress::Addresses::of(domain, internal_addr);
    match (internal_addr, at.internal) {
        (Some(a), Some(_)) => println!("ingress-l7: internal http on {a} (cluster-local routes, for pods)"),
        (Some(a), None) => {
            println!("ingress-l7: internal http on {a} (cluster-local routes)");
            tracing::warn!(
                listener = %a,
                "the internal listener is not on one address at port {}: KIngresses' status names no internal address, so pods get no Service for cluster-local routes",
                watch::kingress::INTERNAL_PORT
            );
        }
        (None, _) => {}
    }
    let reporter = format!("{}@{http_addr}", hostname());
    control.block_on(async move {
        if let Some(name) = args.ensure_class.clone() {
            tokio::spawn(watch::ensure_class(client.clone(), name));
        }
        tokio::spawn(activator::report::run(client.clone(), activator.clone(), reporter));
        tokio::spawn(watch::run(
            client,
            table,
            certs,
            args.address.clone(),
            lbs,
            watch::Knative { activator, at },
        ));
        tokio::spawn(serve_metrics(TcpListener::from_std(metrics_listener)?, metrics));
        let _ = stopping.await;
        let _ = stop.send(true);
        // The load balancer's addresses (and interface) go before the process does.
        if let Some(done) = lb_done {
            let _ = done.recv_timeout(std::time::Duration::from_secs(5));
        }
        Ok(())
    })
}

/// This machine's name, for the activator's reports.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "ingress-l7".into())
}

/// A receiver that resolves at the first SIGTERM or SIGINT: the stop of a process that runs
/// only the ingress. The signals are taken on a thread of their own: with several runtimes in
/// the process, tokio's shared signal pipe has been seen to let a first SIGTERM go unnoticed.
pub fn on_signal() -> Result<tokio::sync::oneshot::Receiver<()>> {
    let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])?;
    std::thread::Builder::new()
        .name("ingress-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "stopping");
                let _ = stopping_tx.send(());
            }
        })?;
    Ok(stopping)
}

async fn client(kubeconfig: &std::path::Path) -> Result<kube::Client> {
    let file =
        kube::config::Kubeconfig::read_from(kubeconfig).with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .context("the kubeconfig")?;
    kube::Client::try_from(config).context("the control API client")
}

/// `/metrics` in the Prometheus text format, anything else 404.
async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) {
    use http_body_util::Full;
    use hyper::{Response, body::Incoming, service::service_fn};
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<Incoming>| {
                let metrics = metrics.clone();
                async move {
                    if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(Full::new(bytes::Bytes::from(metrics.encode())))
                    } else {
                        Response::builder()
                            .status(404)
                            .body(Full::new(bytes::Bytes::from_static(b"not found\n")))
                    }
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// A listening socket with SO_REUSEPORT, non-blocking, for a worker's runtime to take.
fn reuseport_listener(addr: &str) -> Result<std::net::TcpListener> {
    bind_listener(addr, false)
}

/// [`reuseport_listener`], with IP_FREEBIND when `freebind`: bound before its address exists.
fn bind_listener(addr: &str, freebind: bool) -> Result<std::net::TcpListener> {
    let addr: std::net::SocketAddr = addr.parse().with_context(|| format!("{addr}: not an address:port"))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    if freebind {
        if addr.is_ipv4() {
            socket.set_freebind_v4(true)?;
        } else {
            socket.set_freebind_v6(true)?;
        }
    }
    socket.bind(&addr.into()).with_context(|| format!("binding {addr}"))?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// A listener's proxies: the HTTP/1.1 and HTTP/2 paths, and pingora's proxy for what the
/// HTTP/1.1 path hands over; plain listeners also take h2c.
struct Apps {
    front: Arc<Front>,
    http1: Arc<HttpProxy<Ingress>>,
    h2c: bool,
}

/// Accept connections and hand each to the front for its protocol (after the TLS handshake on an
/// HTTPS listener), keeping a connection while the client keeps it alive; past the connection
/// cap, a new connection is closed at once.
async fn serve(
    listener: TcpListener,
    apps: Apps,
    tls: Option<Arc<Acceptor>>,
    shutdown: ShutdownWatch,
    gate: Arc<Gate>,
) {
    let limits = apps.front.limits;
    loop {
        let (tcp, client) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, "accept");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(admitted) = gate.admit() else {
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (front, http1, h2c, tls, shutdown) = (
            apps.front.clone(),
            apps.http1.clone(),
            apps.h2c,
            tls.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let _admitted = admitted;
            let fd = tcp.as_raw_fd();
            // HTTP/1.1 goes to the HTTP/1.1 path (which may hand a connection over to pingora),
            // HTTP/2 (h2c by its preface, h2 by ALPN) to the HTTP/2 path.
            let stream: pingora_core::protocols::Stream = match (h2c, tls) {
                (true, _) => match opens_with_h2_preface(&tcp, limits.idle).await {
                    Some(true) => return front.serve_h2(tcp, client, &shutdown).await,
                    Some(false) => match front.serve_h1(tcp, client, &shutdown).await {
                        End::Closed => return,
                        End::HandOff(tcp, replay) => stream::boxed_replaying(l4(tcp, fd), replay),
                    },
                    None => return,
                },
                (false, Some(a)) => {
                    let secure = match tokio::time::timeout(limits.tls_handshake, a.tls_handshake(l4(tcp, fd))).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake"),
                        Err(_) => return tracing::debug!(%client, "TLS handshake timed out"),
                    };
                    if matches!(secure.selected_alpn_proto(), Some(pingora_core::protocols::ALPN::H2)) {
                        return front.serve_h2(secure, client, &shutdown).await;
                    } else {
                        match front.serve_h1(secure, client, &shutdown).await {
                            End::Closed => return,
                            End::HandOff(secure, replay) => stream::boxed_replaying(secure, replay),
                        }
                    }
                }
                (false, None) => match front.serve_h1(tcp, client, &shutdown).await {
                    End::Closed => return,
                    End::HandOff(tcp, replay) => stream::boxed_replaying(l4(tcp, fd), replay),
                },
            };
            keep_serving(&http1, stream, &shutdown).await
        });
    }
}

/// A TCP connection as pingora's stream type.
fn l4(tcp: tokio::net::TcpStream, fd: std::os::fd::RawFd) -> L4Stream {
    let mut l4 = L4Stream::from(tcp);
    l4.set_socket_digest(SocketDigest::from_raw_fd(fd));
    l4
}

/// Hand `stream` to a pingora proxy, request after request, while the client keeps it alive.
async fn keep_serving(
    app: &Arc<HttpProxy<Ingress>>,
    mut stream: pingora_core::protocols::Stream,
    shutdown: &ShutdownWatch,
) {
    while let Some(s) = app.process_new(stream, shutdown).await {
        stream = s;
    }
}

#[cfg(test)]
mod tests {
    /// `nodeless up` binds the internal listener to the pod network's gateway, which may not be
    /// on this machine yet: with IP_FREEBIND that works, as it does not without.
    #[test]
    fn the_internal_listener_binds_before_its_address_exists() {
        // TEST-NET-1: no machine holds it.
        let absent = "192.0.2.77:0";
        assert!(super::bind_listener(absent, false).is_err());
        let l = super::bind_listener(absent, true).unwrap();
        assert_eq!(l.local_addr().unwrap().ip().to_string(), "192.0.2.77");
    }
}
