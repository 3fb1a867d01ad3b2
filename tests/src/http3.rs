//! A small HTTP/3 client for the tests and benchmarks: quinn for QUIC, h3 for HTTP/3, rustls
//! trusting only the CA given.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::{Buf, Bytes};

/// One answer: status, headers and the whole body.
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// A QUIC connection to `addr` for `host` (the SNI and the authority), trusting the
/// certificates in `ca_pem`; HTTP/3 requests go over it one after another.
pub struct Client {
    endpoint: quinn::Endpoint,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    driver: tokio::task::JoinHandle<()>,
    host: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr, host: &str, ca_pem: &str) -> Result<Client> {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(c.context("the CA's PEM")?)?;
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let local: SocketAddr = if addr.is_ipv4() {
            "127.0.0.1:0".parse()?
        } else {
            "[::1]:0".parse()?
        };
        let mut endpoint = quinn::Endpoint::client(local)?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        let conn = endpoint
            .connect(addr, host)?
            .await
            .with_context(|| format!("QUIC to {addr} for {host}"))?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
        let driver = tokio::spawn(async move {
            let _ = futures::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(Client {
            endpoint,
            send,
            driver,
            host: host.to_string(),
        })
    }

    /// `method path` with `body` (sent with its length when not empty).
    pub async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Result<Answer> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.host));
        if !body.is_empty() {
            req = req.header(http::header::CONTENT_LENGTH, body.len());
        }
        let mut stream = self.send.send_request(req.body(())?).await?;
        if !body.is_empty() {
            stream.send_data(Bytes::copy_from_slice(body)).await?;
        }
        stream.finish().await?;
        let resp = stream.recv_response().await?;
        let mut data = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await? {
            data.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        Ok(Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: String::from_utf8_lossy(&data).into_owned(),
        })
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"done");
        self.driver.abort();
    }
}
