//! A write buffer in front of a downstream connection, as pingora's own listeners put one.
//!
//! Pingora's HTTP/1 server writes a response's header and its body with separate writes and
//! flushes at the end, expecting a buffered stream. Its listeners set that buffer up after
//! accepting (privately); connections accepted by our own loops (SO_REUSEPORT per thread) come
//! without one, so every response went out in two `sendto`s and two segments. Wrapped in
//! [`Buffered`], a small response leaves in one. Over TLS the buffer sits above the TLS stream,
//! so the header and body also go out in one record.
//!
//! A connection the HTTP/1.1 front ([`crate::front::h1`]) hands to pingora comes with the bytes
//! it read and did not consume; [`Buffered`] returns them first.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, IO, Peek, Shutdown, SocketDigest, Ssl, TimingDigest,
    UniqueID, UniqueIDType, raw_connect::ProxyDigest,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};

/// Bytes gathered before a write goes out (pingora's own default is one segment, 1460).
pub const WRITE_BUFFER: usize = 4096;

/// `S` with writes gathered until a flush or a full buffer.
#[derive(Debug)]
pub struct Buffered<S: IO> {
    inner: BufWriter<S>,
    /// Read already, to be read again before the stream.
    replay: bytes::BytesMut,
}

impl<S: IO> Buffered<S> {
    pub fn new(stream: S) -> Buffered<S> {
        Buffered::replaying(stream, bytes::BytesMut::new())
    }

    /// `stream`, whose reads return `replay` first.
    pub fn replaying(stream: S, replay: bytes::BytesMut) -> Buffered<S> {
        Buffered {
            inner: BufWriter::with_capacity(WRITE_BUFFER, stream),
            replay,
        }
    }

    fn stream(&self) -> &S {
        self.inner.get_ref()
    }
}

impl<S: IO> AsyncRead for Buffered<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(self.inner.get_mut()).poll_read(cx, buf)
    }
}

impl<S: IO> AsyncWrite for Buffered<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl<S: IO> Shutdown for Buffered<S> {
    async fn shutdown(&mut self) {
        // What is still buffered goes first.
        let _ = self.inner.flush().await;
        Shutdown::shutdown(self.inner.get_mut()).await
    }
}

impl<S: IO> UniqueID for Buffered<S> {
    fn id(&self) -> UniqueIDType {
        self.stream().id()
    }
}

impl<S: IO> Ssl for Buffered<S> {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.stream().get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.stream().get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.stream().selected_alpn_proto()
    }
}

impl<S: IO> GetTimingDigest for Buffered<S> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.stream().get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.stream().get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.stream().get_write_pending_time()
    }
}

impl<S: IO> GetProxyDigest for Buffered<S> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.stream().get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.get_mut().set_proxy_digest(digest)
    }
}

impl<S: IO> GetSocketDigest for Buffered<S> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.stream().get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.get_mut().set_socket_digest(digest)
    }
}

#[async_trait]
impl<S: IO> Peek for Buffered<S> {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.get_mut().try_peek(buf).await
    }
}

/// `stream` buffered, as the stream pingora's apps take.
pub fn boxed<S: IO + 'static>(stream: S) -> pingora_core::protocols::Stream {
    Box::new(Buffered::new(stream))
}

/// `stream` buffered, reading `replay` first, as the stream pingora's apps take.
pub fn boxed_replaying<S: IO + 'static>(stream: S, replay: bytes::BytesMut) -> pingora_core::protocols::Stream {
    Box::new(Buffered::replaying(stream, replay))
}
