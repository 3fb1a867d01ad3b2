//! A SPDY/3.1 server, enough for the Kubernetes stream protocols (`kubectl exec` before 1.30,
//! `kubectl port-forward` in every version, tunnelled through a websocket from 1.31): streams
//! opened by the client, data both ways, FIN, reset, ping. Header blocks are zlib with the
//! SPDY/3 dictionary, one compression context per direction for the whole connection.

use std::collections::HashMap;
use std::sync::Arc;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Mutex, mpsc};

const VERSION: u32 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 1;
/// Frames we send carry at most this much data.
const CHUNK: usize = 32 * 1024;
/// Frames we accept carry at most this much (the protocol allows 16 MiB).
const MAX_FRAME: usize = 1 << 20;

/// The SPDY/3 header-compression dictionary (draft 3, section 2.6.10.1): the header names and
/// common values below, each prefixed with its length as a 32-bit big-endian number, then a run
/// of common status lines, dates and media types.
pub fn dictionary() -> Vec<u8> {
    const WORDS: [&str; 65] = [
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized",
        "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable",
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut d = Vec::with_capacity(1423);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
}

#[derive(Debug)]
pub enum SpdyEvent {
    Open {
        id: u32,
        headers: HashMap<String, String>,
        fin: bool,
    },
    Data {
        id: u32,
        data: Vec<u8>,
        fin: bool,
    },
    Reset {
        id: u32,
    },
}

struct Writer<W> {
    io: W,
    compress: Compress,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    async fn control(&mut self, kind: u16, flags: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut f = Vec::with_capacity(8 + payload.len());
        f.extend_from_slice(&((0x8000_0000 | (VERSION << 16)) | kind as u32).to_be_bytes());
        f.extend_from_slice(&(((flags as u32) << 24) | payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        self.io.write_all(&f).await?;
        self.io.flush().await
    }

    fn header_block(&mut self, headers: &[(&str, &str)]) -> std::io::Result<Vec<u8>> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        self.compress
            .compress_vec(&raw, &mut out, FlushCompress::Sync)
            .map_err(std::io::Error::other)?;
        Ok(out)
    }
}

/// The sending side of a SPDY connection; cheap to clone.
pub struct Spdy<W> {
    w: Arc<Mutex<Writer<W>>>,
}

impl<W> Clone for Spdy<W> {
    fn clone(&self) -> Self {
        Self { w: self.w.clone() }
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> Spdy<W> {
    /// Accept a stream the client opened.
    pub async fn reply(&self, id: u32) -> std::io::Result<()> {
        let mut w = self.w.lock().await;
        let block = w.header_block(&[])?;
        let mut p = id.to_be_bytes().to_vec();
        p.extend_from_slice(&block);
        w.control(SYN_REPLY, 0, &p).await
    }

    /// Send data on a stream; `fin` closes our side of it.
    pub async fn send(&self, id: u32, data: &[u8], fin: bool) -> std::io::Result<()> {
        let mut w = self.w.lock().await;
        let mut chunks: Vec<&[u8]> = data.chunks(CHUNK).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        for (i, c) in chunks.into_iter().enumerate() {
            let flags = if fin && i == last { FLAG_FIN } else { 0 };
            let mut f = Vec::with_capacity(8 + c.len());
            f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
            f.extend_from_slice(&(((flags as u32) << 24) | c.len() as u32).to_be_bytes());
            f.extend_from_slice(c);
            w.io.write_all(&f).await?;
        }
        w.io.flush().await
    }

    pub async fn reset(&self, id: u32, status: u32) -> std::io::Result<()> {
        let mut p = id.to_be_bytes().to_vec();
        p.extend_from_slice(&status.to_be_bytes());
        self.w.lock().await.control(RST_STREAM, 0, &p).await
    }

    pub async fn goaway(&self) -> std::io::Result<()> {
        self.w.lock().await.control(GOAWAY, 0, &[0; 8]).await
    }
}

fn parse_headers(block: &[u8]) -> Option<HashMap<String, String>> {
    let mut i = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = block.get(i..i + n)?;
        i += n;
        Some(s)
    };
    let count = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
    let mut out = HashMap::new();
    for _ in 0..count.min(1024) {
        let n = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
        let name = String::from_utf8_lossy(take(n)?).to_ascii_lowercase();
        let n = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
        let value = String::from_utf8_lossy(take(n)?).to_string();
        out.insert(name, value);
    }
    Some(out)
}

fn inflate(d: &mut Decompress, dict: &[u8], input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() * 4 + 256);
    let mut consumed = 0usize;
    while consumed < input.len() {
        let before = d.total_in();
        if out.capacity() - out.len() < 1024 {
            out.reserve(4096);
        }
        match d.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync) {
            Ok(_) => {}
            Err(e) if e.needs_dictionary().is_some() => {
                d.set_dictionary(dict).ok()?;
            }
            Err(_) => return None,
        }
        consumed += (d.total_in() - before) as usize;
        if out.len() > MAX_FRAME {
            return None;
        }
    }
    Some(out)
}

async fn read_loop<R: AsyncRead + Unpin, W: AsyncWrite + Unpin + Send + 'static>(
    mut r: R,
    spdy: Spdy<W>,
    tx: mpsc::Sender<SpdyEvent>,
) {
    let dict = dictionary();
    let mut d = Decompress::new(true);
    let mut head = [0u8; 8];
    loop {
        if r.read_exact(&mut head).await.is_err() {
            return;
        }
        let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            let _ = spdy.goaway().await;
            return;
        }
        let mut payload = vec![0u8; len];
        if r.read_exact(&mut payload).await.is_err() {
            return;
        }
        let fin = flags & FLAG_FIN != 0;
        let ev = if word & 0x8000_0000 == 0 {
            Some(SpdyEvent::Data {
                id: word & 0x7fff_ffff,
                data: payload,
                fin,
            })
        } else {
            let be = |i: usize| {
                payload
                    .get(i..i + 4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            };
            match (word & 0xffff) as u16 {
                SYN_STREAM if len >= 10 => {
                    let id = be(0).unwrap_or(0) & 0x7fff_ffff;
                    let Some(headers) = inflate(&mut d, &dict, &payload[10..]).and_then(|b| parse_headers(&b)) else {
                        let _ = spdy.goaway().await;
                        return;
                    };
                    Some(SpdyEvent::Open { id, headers, fin })
                }
                RST_STREAM => be(0).map(|id| SpdyEvent::Reset { id: id & 0x7fff_ffff }),
                PING => {
                    let _ = spdy.w.lock().await.control(PING, 0, &payload).await;
                    None
                }
                GOAWAY => return,
                // SETTINGS, WINDOW_UPDATE, HEADERS: nothing to do for these protocols, but
                // HEADERS blocks still advance the compression context.
                8 if len >= 4 => {
                    let _ = inflate(&mut d, &dict, &payload[4..]);
                    None
                }
                _ => None,
            }
        };
        if let Some(ev) = ev {
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    }
}

/// Serve SPDY on an upgraded connection: the sender, and the client's stream events.
pub fn serve<S>(io: S) -> (Spdy<WriteHalf<S>>, mpsc::Receiver<SpdyEvent>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w): (ReadHalf<S>, WriteHalf<S>) = tokio::io::split(io);
    let mut compress = Compress::new(Compression::default(), true);
    let _ = compress.set_dictionary(&dictionary());
    let spdy = Spdy {
        w: Arc::new(Mutex::new(Writer { io: w, compress })),
    };
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(read_loop(r, spdy.clone(), tx));
    (spdy, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_specs() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert!(d.starts_with(b"\x00\x00\x00\x07options\x00\x00\x00\x04head"));
        assert!(d.ends_with(b"enq=0."));
    }

    #[tokio::test]
    async fn header_blocks_round_trip_through_the_shared_context() {
        let mut w = Writer {
            io: Vec::new(),
            compress: Compress::new(Compression::default(), true),
        };
        w.compress.set_dictionary(&dictionary()).unwrap();
        let mut d = Decompress::new(true);
        for i in 0..3 {
            let v = format!("{i}");
            let block = w.header_block(&[("streamtype", "stdout"), ("requestid", &v)]).unwrap();
            let h = parse_headers(&inflate(&mut d, &dictionary(), &block).unwrap()).unwrap();
            assert_eq!(h["streamtype"], "stdout");
            assert_eq!(h["requestid"], v);
        }
    }
}
