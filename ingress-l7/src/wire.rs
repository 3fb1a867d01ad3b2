//! HTTP/1.1 as bytes, read and written by both sides of the proxy: the size of a head, a
//! `Content-Length` value, how a response's body ends (by length, chunked, or at the close), the
//! chunked-body scanner, the hop-by-hop fields, and a write with a deadline. No routes, no
//! sockets of its own: the fronts ([`crate::front`]), the admission policy ([`crate::admit`])
//! and the upstream layer ([`crate::upstream`]) all read through here, so a framing rule is
//! written once.

use std::time::Duration;

use bytes::BytesMut;
use http::HeaderMap;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Header fields taken in one head.
pub(crate) const MAX_HEADERS: usize = 128;
/// Read buffer growth step.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// The hop-by-hop fields (RFC 9110 section 7.6.1): about one connection, so a proxy does not
/// pass them on as they came. The one list every path of the ingress starts from; each says what
/// it adds to it or, for the HTTP/1.1 response relayed with its own framing, keeps of it.
pub(crate) const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` is one of [`HOP_BY_HOP`], in any letter case.
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Remove from `h` the hop-by-hop fields, those its `Connection` fields name, and
/// `Proxy-Authenticate` (which answers for a proxy on the way, not the endpoint's client): what
/// hyper's requests to endpoints and the HTTP/2 and HTTP/3 responses from them carry.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<String> = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for n in HOP_BY_HOP
        .iter()
        .copied()
        .chain(["proxy-authenticate"])
        .chain(named.iter().map(String::as_str))
    {
        h.remove(n);
    }
}

/// Parse the response head at the start of `ubuf` into `resp`: its length, status and version,
/// or `None` while it is incomplete.
pub(crate) fn parse_response<'b>(
    resp: &mut httparse::Response<'_, 'b>,
    ubuf: &'b [u8],
) -> Result<Option<(usize, u16, u8)>, httparse::Error> {
    let httparse::Status::Complete(len) = resp.parse(ubuf)? else {
        return Ok(None);
    };
    match (resp.code, resp.version) {
        (Some(status), Some(version)) => Ok(Some((len, status, version))),
        _ => Err(httparse::Error::Status),
    }
}

/// How a response's body ends, and whether the endpoint keeps the connection open after it,
/// from its status, version and fields (and whether it answers a HEAD).
pub(crate) fn framing(status: u16, version: u8, head_request: bool, fields: &[httparse::Header<'_>]) -> (Body, bool) {
    let mut keep_alive = version == 1;
    let (mut length, mut chunked, mut coded) = (None::<u64>, false, false);
    for h in fields {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("connection") {
            keep_alive &= !value.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"));
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            coded = true;
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            length = value.parse().ok();
        }
    }
    let body = if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        Body::Length(0)
    } else if coded {
        if chunked {
            Body::Chunked(Chunked::default())
        } else {
            Body::UntilClose
        }
    } else {
        length.map_or(Body::UntilClose, Body::Length)
    };
    (body, keep_alive)
}

/// How a response body ends.
pub(crate) enum Body {
    /// After this many more bytes.
    Length(u64),
    /// After its last chunk and trailer.
    Chunked(Chunked),
    /// When the endpoint closes.
    UntilClose,
}

impl Body {
    /// How many bytes at the start of `buf` belong to the body (all of them are passed on as
    /// they are); `None` for a malformed chunked body.
    pub(crate) fn take(&mut self, buf: &[u8]) -> Option<usize> {
        match self {
            Body::Length(rest) => {
                let n = (*rest).min(buf.len() as u64);
                *rest -= n;
                Some(n as usize)
            }
            Body::Chunked(c) => c.scan(buf),
            Body::UntilClose => Some(buf.len()),
        }
    }

    pub(crate) fn finished(&self) -> bool {
        match self {
            Body::Length(rest) => *rest == 0,
            Body::Chunked(c) => c.state == ChunkState::Done,
            Body::UntilClose => false,
        }
    }
}

/// Where a scan of a chunked body is: it finds where the body ends, passing every byte on.
#[derive(Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    /// The size being read, or the data left in the current chunk.
    n: u64,
    digits: u8,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunked {
    /// How many bytes of `buf` belong to the body: all of them, or fewer when the body ends in
    /// them. `None` when the framing is malformed.
    fn scan(&mut self, buf: &[u8]) -> Option<usize> {
        self.scan_into(buf, None)
    }

    /// [`Chunked::scan`], with the chunks' data appended to `data` (the body without its
    /// framing, as HTTP/2 carries it).
    pub(crate) fn scan_into(&mut self, buf: &[u8], mut data: Option<&mut BytesMut>) -> Option<usize> {
        use ChunkState::*;
        let mut k = 0;
        while k < buf.len() && self.state != Done {
            let b = buf[k];
            match self.state {
                Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        self.digits += 1;
                        if self.digits > 15 {
                            return None;
                        }
                        self.n = self.n * 16 + (b as char).to_digit(16)? as u64;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = Extension,
                    b'\r' if self.digits > 0 => self.state = SizeLf,
                    _ => return None,
                },
                Extension => {
                    if b == b'\r' {
                        self.state = SizeLf;
                    }
                }
                SizeLf => {
                    if b != b'\n' {
                        return None;
                    }
                    self.state = if self.n == 0 { TrailerStart } else { Data };
                }
                Data => {
                    let n = (self.n).min((buf.len() - k) as u64) as usize;
                    if let Some(d) = data.as_deref_mut() {
                        d.extend_from_slice(&buf[k..k + n]);
                    }
                    self.n -= n as u64;
                    k += n;
                    if self.n == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => {
                    if b != b'\r' {
                        return None;
                    }
                    self.state = DataLf;
                }
                DataLf => {
                    if b != b'\n' {
                        return None;
                    }
                    (self.state, self.n, self.digits) = (Size, 0, 0);
                }
                TrailerStart => self.state = if b == b'\r' { EndLf } else { Trailer },
                Trailer => {
                    if b == b'\r' {
                        self.state = TrailerLf;
                    }
                }
                TrailerLf => {
                    if b != b'\n' {
                        return None;
                    }
                    self.state = TrailerStart;
                }
                EndLf => {
                    if b != b'\n' {
                        return None;
                    }
                    self.state = Done;
                }
                Done => {}
            }
            k += 1;
        }
        Some(k)
    }
}

/// A Content-Length value: ASCII digits and nothing else (optional whitespace around them),
/// within u64. Not `str::parse`, which takes a leading `+`; a list (`5, 5`) is refused too,
/// as RFC 9110 section 8.6 allows.
pub(crate) fn content_length(value: &[u8]) -> Option<u64> {
    let start = value.iter().position(|b| !matches!(b, b' ' | b'\t'))?;
    let end = value.iter().rposition(|b| !matches!(b, b' ' | b'\t'))? + 1;
    let mut n: u64 = 0;
    for &b in &value[start..end] {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// Write all of `bytes` and flush (a TLS stream sends its records on flush), within `limit`.
pub(crate) async fn write_out<S: AsyncWrite + Unpin>(io: &mut S, bytes: &[u8], limit: Duration) -> std::io::Result<()> {
    match tokio::time::timeout(limit, async {
        io.write_all(bytes).await?;
        io.flush().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out")),
    }
}

/// `f`, given at most `limit` (`None`: no limit); `None` when the time ran out. How a read of a
/// response body waits ([`crate::routes::Settings::body_idle`]).
pub(crate) async fn within<F: std::future::Future>(limit: Option<Duration>, f: F) -> Option<F::Output> {
    match limit {
        Some(d) => tokio::time::timeout(d, f).await.ok(),
        None => Some(f.await),
    }
}

/// Fuzz targets for the chunked scanner (its state stays private here), and the reader of
/// choices the other targets share.
#[doc(hidden)]
pub mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailer() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let mut c = Chunked::default();
        assert_eq!(c.scan(body), Some(body.len() - 4));
        assert_eq!(c.state, ChunkState::Done);
        // Byte by byte, the same end.
        let mut c = Chunked::default();
        let mut total = 0;
        for b in body.iter() {
            total += c.scan(std::slice::from_ref(b)).unwrap();
            if c.state == ChunkState::Done {
                break;
            }
        }
        assert_eq!(total, body.len() - 4);
        // Without a trailer.
        let mut c = Chunked::default();
        assert_eq!(c.scan(b"0\r\n\r\n"), Some(5));
        assert_eq!(c.state, ChunkState::Done);
        // Malformed: no size, a missing CRLF after data, an oversized size.
        assert_eq!(Chunked::default().scan(b"\r\n"), None);
        assert_eq!(Chunked::default().scan(b"2\r\nabXY"), None);
        assert_eq!(Chunked::default().scan(b"ffffffffffffffffff\r\n"), None);
    }

    #[test]
    fn content_length_is_ascii_digits_only() {
        assert_eq!(content_length(b"5"), Some(5));
        assert_eq!(content_length(b" 0042\t"), Some(42));
        assert_eq!(content_length(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b" ",
            b"+5",
            b"-5",
            b"0x5",
            b"5 ,6",
            b"5,5",
            b"5 5",
            b"5.0",
            b"\xd9\xa5",
            b"18446744073709551616",
        ] {
            assert_eq!(content_length(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn body_framing_by_length_and_until_close() {
        let mut b = Body::Length(5);
        assert_eq!(b.take(b"abc"), Some(3));
        assert!(!b.finished());
        assert_eq!(b.take(b"defgh"), Some(2));
        assert!(b.finished());
        let mut b = Body::UntilClose;
        assert_eq!(b.take(b"abc"), Some(3));
        assert!(!b.finished());
    }
}
