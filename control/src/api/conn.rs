//! Accepting and keeping the API server's connections, within limits a slow or hostile client
//! cannot stretch: a TLS handshake timeout, HTTP/1.1's header read timeout (hyper's), an idle
//! timeout for connections with no request under way, and a cap on connections open at once.
//! Without them a client that connects and sends nothing (or a byte now and then) holds a task
//! and a descriptor for ever, and a few thousand such clients exhaust the process's descriptors
//! (nofile is 20,000 here), the node's and controllers' watches included.
//!
//! A response still streaming (a watch, a log follow) keeps its connection busy, so watches never
//! meet the idle timeout. A connection upgraded for exec, attach or port-forward leaves hyper,
//! and so these limits, once the upgrade is answered.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::ApiState;
use super::http::Body;

/// The API server's connection limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    /// From accept to a finished TLS handshake. 10 s, as Go's `TLSHandshakeTimeout`.
    pub tls_handshake: Duration,
    /// HTTP/1.1: from when hyper starts waiting for a request head to its end. 32 s, as
    /// kube-apiserver's `ReadHeaderTimeout`. hyper starts it when a kept-alive connection begins
    /// waiting for its next request, so it also bounds HTTP/1.1's idle time; it also bounds how
    /// long a new connection may take over its first request.
    pub header: Duration,
    /// A connection with no request under way for this long is closed (HTTP/2: GOAWAY). 90 s, as
    /// kube-apiserver's HTTP/2 `IdleTimeout`.
    pub idle: Duration,
    /// Connections open at once; one over it is closed as soon as it is accepted. 4,096: a
    /// hundred nodes' and components' watches many times over, and a fifth of the descriptors.
    pub max_connections: usize,
}

impl Default for ServeLimits {
    fn default() -> ServeLimits {
        ServeLimits {
            tls_handshake: Duration::from_secs(10),
            header: Duration::from_secs(32),
            idle: Duration::from_secs(90),
            max_connections: 4096,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitsError {
    #[error("{0} must be above zero")]
    Zero(&'static str),
}

impl ServeLimits {
    /// Zero would close every connection at once.
    pub fn validate(&self) -> Result<(), LimitsError> {
        for (d, name) in [
            (self.tls_handshake, "the TLS handshake timeout"),
            (self.header, "the header read timeout"),
            (self.idle, "the idle timeout"),
        ] {
            if d.is_zero() {
                return Err(LimitsError::Zero(name));
            }
        }
        if self.max_connections == 0 {
            return Err(LimitsError::Zero("the connection cap"));
        }
        Ok(())
    }
}

/// Connections turned away at the cap, logged at most once a second.
#[derive(Default)]
struct Refusals {
    count: AtomicU64,
    logged_at: std::sync::Mutex<Option<Instant>>,
}

impl Refusals {
    fn refuse(&self, max: usize, peer: SocketAddr) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.logged_at.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::warn!(%peer, max, refused_so_far = n, "API connection cap reached: new connections are closed at once");
        }
    }
}

/// What a connection is doing, for its idle timer: requests whose responses are not finished,
/// and when the last one started or finished.
struct Activity {
    started: Instant,
    under_way: AtomicUsize,
    /// Milliseconds from `started` to the last change.
    last_ms: AtomicU64,
    any: AtomicBool,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.any.store(true, Ordering::Relaxed);
        self.under_way.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Busy(self.clone())
    }

    /// Returns once no request has been under way for `idle` (for the first request, which
    /// has no reason to be slow, `first`).
    async fn idle_for(&self, idle: Duration, first: Duration) {
        loop {
            let limit = if self.any.load(Ordering::Relaxed) { idle } else { first };
            let due = self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + limit;
            if self.under_way.load(Ordering::Relaxed) > 0 {
                // Busy (a watch may stream for hours): look again later.
                tokio::time::sleep(limit).await;
            } else if Instant::now() >= due {
                return;
            } else {
                tokio::time::sleep_until(due).await;
            }
        }
    }
}

/// A request under way until its response body is finished or dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.under_way.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A response body that keeps its request counted as under way until it is dropped; its length
/// and end are the body's own (so a known length is still sent as Content-Length).
struct Counted {
    inner: Body,
    _busy: Busy,
}

impl hyper::body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serve the API on `listener` until the task is dropped.
pub async fn serve(state: Arc<ApiState>, listener: TcpListener, tls: Arc<rustls::ServerConfig>, limits: ServeLimits) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Refusals::default());
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header);
    let builder = Arc::new(builder);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(tcp);
            refusals.refuse(limits.max_connections, peer);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, state, builder) = (acceptor.clone(), state.clone(), builder.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(limits.tls_handshake, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let activity = Arc::new(Activity {
                started: Instant::now(),
                under_way: AtomicUsize::new(0),
                last_ms: AtomicU64::new(0),
                any: AtomicBool::new(false),
            });
            let seen = activity.clone();
            // A client certificate the handshake verified against the cluster CA names the user
            // of every request on this connection that brings no other credentials.
            let certified = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| crate::auth::certificate_user(leaf.as_ref()))
                .map(super::CertifiedUser);
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let (state, busy) = (state.clone(), seen.begin());
                if let Some(user) = &certified {
                    req.extensions_mut().insert(user.clone());
                }
                async move {
                    let resp = super::handle(state, req, peer).await;
                    // The request is under way until its body is sent (or dropped).
                    Ok::<_, std::convert::Infallible>(resp.map(|inner| Counted { inner, _busy: busy }.boxed_unsync()))
                }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let mut closing: Option<Instant> = None;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        return;
                    }
                    _ = activity.idle_for(limits.idle, limits.header.min(limits.idle)), if closing.is_none() => {
                        tracing::debug!(%peer, "closing an idle connection");
                        conn.as_mut().graceful_shutdown();
                        closing = Some(Instant::now() + limits.tls_handshake);
                    }
                    // A client that does not take its GOAWAY or close in time is dropped.
                    _ = tokio::time::sleep_until(closing.unwrap_or_else(Instant::now)), if closing.is_some() => return,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;
    use crate::{Config, ControlPlane};

    fn quick() -> ServeLimits {
        ServeLimits {
            tls_handshake: Duration::from_secs(1),
            header: Duration::from_secs(1),
            idle: Duration::from_secs(1),
            max_connections: 64,
        }
    }

    async fn control(limits: ServeLimits) -> (ControlPlane, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::new(dir.path());
        cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.controllers = false;
        cfg.limits = limits;
        (ControlPlane::start(cfg).await.unwrap(), dir)
    }

    /// How long until the server closes `c` (a read ends: EOF or reset), at most `within`.
    fn closed_after(c: &mut impl Read, within: Duration) -> Option<Duration> {
        let started = std::time::Instant::now();
        let mut buf = [0u8; 4096];
        while started.elapsed() < within {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(_) => {}
            }
        }
        None
    }

    fn tcp(addr: SocketAddr) -> TcpStream {
        let c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        c
    }

    /// A TLS client connection to the API server, trusting its CA.
    fn tls(cp: &ControlPlane) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut cp.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut s = rustls::StreamOwned::new(
            rustls::ClientConnection::new(Arc::new(cfg), name).unwrap(),
            tcp(cp.addr),
        );
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).unwrap();
        }
        s
    }

    #[test]
    fn zero_limits_are_refused() {
        assert_eq!(ServeLimits::default().validate(), Ok(()));
        assert!(
            ServeLimits {
                header: Duration::ZERO,
                ..ServeLimits::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            ServeLimits {
                max_connections: 0,
                ..ServeLimits::default()
            }
            .validate()
            .is_err()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_slow_and_idle_clients_are_closed() {
        let (cp, _dir) = control(quick()).await;
        let (addr, cp) = (cp.addr, Arc::new(cp));
        let c2 = cp.clone();
        tokio::task::spawn_blocking(move || {
            // TCP and then nothing: closed at the handshake timeout.
            let took = closed_after(&mut tcp(addr), Duration::from_secs(5)).expect("a silent connection is closed");
            assert!(
                took >= Duration::from_millis(800) && took < Duration::from_secs(3),
                "{took:?}"
            );

            // A handshake, then half a request head, a byte at a time (slowloris): closed at the
            // header timeout.
            let mut s = tls(&c2);
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
            let started = std::time::Instant::now();
            s.sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let mut buf = [0u8; 256];
            let cut = loop {
                assert!(started.elapsed() < Duration::from_secs(5), "slowloris kept for 5 s");
                let _ = s.write_all(b"X");
                match s.read(&mut buf) {
                    Ok(0) => break started.elapsed(),
                    Ok(_) => {}
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => break started.elapsed(),
                }
            };
            assert!(cut < Duration::from_secs(3), "{cut:?}");

            // A request answered, then idle: closed.
            let mut s = tls(&c2);
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut got = Vec::new();
            while !String::from_utf8_lossy(&got).ends_with("\r\n\r\nok") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
            closed_after(&mut s, Duration::from_secs(5)).expect("an idle connection is closed");
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quiet_watch_outlives_the_timeouts() {
        let (cp, _dir) = control(quick()).await;
        let cp = Arc::new(cp);
        let c2 = cp.clone();
        let watch = tokio::task::spawn_blocking(move || {
            let mut s = tls(&c2);
            let req = format!(
                "GET /api/v1/namespaces/default/configmaps?watch=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
                c2.tokens.admin
            );
            s.write_all(req.as_bytes()).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains("\"quiet\"") {
                let n = s.read(&mut buf).expect("the watch is still open");
                assert!(n > 0, "the watch was closed: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
            String::from_utf8_lossy(&got).to_string()
        });
        // Three times the idle and header timeouts with nothing to send, then an event.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let client = crate::api::local::LocalClient {
            state: cp.state.clone(),
        };
        let configmaps = client.served("", "configmaps");
        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "quiet", "namespace": "default"}});
        client.create(&configmaps, Some("default"), cm).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), watch)
            .await
            .unwrap()
            .unwrap();
        assert!(got.contains("ADDED"), "{got}");
    }

    /// The same over HTTP/2 (kubectl's watches): a stream with nothing to send keeps its
    /// connection out of the idle timeout, and once it ends the connection is closed when idle.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_http2_watch_outlives_the_idle_timeout() {
        let (cp, _dir) = control(quick()).await;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut cp.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(cp.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap();
        let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let req = ::http::Request::get("https://localhost/api/v1/namespaces/default/configmaps?watch=1")
            .header("authorization", format!("Bearer {}", cp.tokens.admin))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = h2.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let client = crate::api::local::LocalClient {
            state: cp.state.clone(),
        };
        let configmaps = client.served("", "configmaps");
        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "quiet2", "namespace": "default"}});
        client.create(&configmaps, Some("default"), cm).await.unwrap();
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("quiet2") {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("an event")
                .expect("the stream is open")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                got.extend_from_slice(&data);
            }
        }
        // Not even a GOAWAY was sent while the watch was quiet: the connection takes a new request.
        let health = ::http::Request::get("https://localhost/healthz")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        assert_eq!(
            h2.send_request(health)
                .await
                .expect("the connection still takes requests")
                .status(),
            200
        );
        // Dropping the body cancels the watch; then the connection, idle, is closed (GOAWAY).
        drop(body);
        tokio::time::timeout(Duration::from_secs(10), conn)
            .await
            .expect("the idle HTTP/2 connection is closed")
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_over_the_cap_are_closed_at_once() {
        let (cp, _dir) = control(ServeLimits {
            tls_handshake: Duration::from_secs(10),
            max_connections: 2,
            ..quick()
        })
        .await;
        let addr = cp.addr;
        tokio::task::spawn_blocking(move || {
            let (mut a, _b) = (tcp(addr), tcp(addr));
            std::thread::sleep(Duration::from_millis(200));
            let took = closed_after(&mut tcp(addr), Duration::from_secs(5)).expect("the third is closed");
            assert!(took < Duration::from_secs(1), "closed at once, not at a timeout: {took:?}");
            // The two within the cap are still open (waiting for their handshakes).
            a.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            let mut buf = [0u8; 1];
            assert!(matches!(a.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut));
            drop(a);
            std::thread::sleep(Duration::from_millis(200));
            // A place freed: the next one is let in (and waits for its handshake).
            let mut d = tcp(addr);
            d.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            assert!(matches!(d.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut));
        })
        .await
        .unwrap();
    }
}
