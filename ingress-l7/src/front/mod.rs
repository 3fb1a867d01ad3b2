//! The fronts: what serves a client connection once it is accepted (and, on the HTTPS listener,
//! past its TLS handshake). [`h1`] serves HTTP/1.1 and hands what it does not take to the pingora
//! fallback ([`End::HandOff`]), [`h2`] serves HTTP/2 (h2c by its preface, h2 by ALPN), and [`h3`]
//! serves HTTP/3 on its own QUIC endpoint. Each parses its protocol, asks the admission policy
//! ([`crate::admit`]) what to do, and sends the request on through the upstream layer
//! ([`crate::upstream`]); the fronts share what is here, never each other's code.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::BytesMut;

use crate::limits::ClientLimits;
use crate::metrics::Metrics;
use crate::routes::Table;
use crate::upstream::client::Pool;

pub mod h1;
pub mod h2;
pub mod h3;

/// One TCP listener's HTTP/1.1 and HTTP/2 fronts on one worker thread: what both need to serve
/// a connection ([`Front::serve_h1`] in [`h1`], [`Front::serve_h2`] in [`h2`]).
pub struct Front {
    pub table: Arc<ArcSwap<Table>>,
    pub metrics: Arc<Metrics>,
    /// `http` or `https`: what X-Forwarded-Proto says.
    pub scheme: &'static str,
    /// The internal listener (`--internal-http`): cluster-local Knative routes are served too.
    pub internal: bool,
    /// The Alt-Svc value that advertises HTTP/3 in this listener's responses.
    pub alt_svc: Option<http::HeaderValue>,
    /// Connections to h2c endpoints (HTTP/2 clients' requests for them; HTTP/1.1 clients' go to
    /// pingora).
    pub h2c: Pool,
    /// How long a client may take over a head and stay idle between requests.
    pub limits: ClientLimits,
}

/// How a connection left this path.
pub enum End<S> {
    /// Closed, by either side or after an error.
    Closed,
    /// To be served by pingora from here on: the stream, and the bytes read from it and not
    /// consumed (the next request's head first), to be read again.
    HandOff(S, BytesMut),
}

/// HTTP/2's connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain connection opens with HTTP/2's preface (h2c with prior knowledge). Found by
/// peeking, so nothing is consumed, and once per connection: pingora, with h2c on, reads for the
/// preface before every request of a kept-alive HTTP/1.1 connection. `None`: the client closed,
/// or sent nothing within `limit` (the idle limit: it has not begun a request).
pub async fn opens_with_h2_preface(tcp: &tokio::net::TcpStream, limit: Duration) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        // The preface so far, split across segments: its rest is on its way.
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn the_h2_preface_is_told_from_http1_without_consuming_anything() {
        let (mut c, mut s) = pair().await;
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        assert_eq!(opens_with_h2_preface(&s, Duration::from_secs(5)).await, Some(false));
        let mut first = [0u8; 3];
        s.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"GET");

        let (mut c, s) = pair().await;
        // A preface in two segments.
        c.write_all(&H2_PREFACE[..10]).await.unwrap();
        let rest = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            c.write_all(&H2_PREFACE[10..]).await.unwrap();
            c
        });
        assert_eq!(opens_with_h2_preface(&s, Duration::from_secs(5)).await, Some(true));
        let _c = rest.await.unwrap();

        let (c, s) = pair().await;
        drop(c);
        assert_eq!(opens_with_h2_preface(&s, Duration::from_secs(5)).await, None);
    }
}
