//! The kubelet's streaming endpoints: exec, attach and port-forward, over the two transports kubectl
//! speaks — websockets (`v5.channel.k8s.io`, `v4.channel.k8s.io`; kubectl 1.30+ for exec) and
//! SPDY/3.1 (`v4.channel.k8s.io` for exec, `portforward.k8s.io`; every kubectl).
//!
//! A transport turns into numbered channels, as the websocket protocol numbers them:
//! 0 stdin, 1 stdout, 2 stderr, 3 error (a `Status` at the end), 4 resize.

pub mod attach;
pub mod exec;
pub mod portforward;
pub mod spdy;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::WriteHalf;
use tokio::sync::{Mutex, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;

pub type Io = TokioIo<Upgraded>;
type WsSink = futures::stream::SplitSink<WebSocketStream<Io>, Message>;

/// What arrives from the client: data on a channel, or `None` when the client closed it.
pub type Input = mpsc::Receiver<(u8, Option<Vec<u8>>)>;

/// The sending half of a stream session.
#[derive(Clone)]
pub enum Output {
    Ws {
        sink: Arc<Mutex<WsSink>>,
    },
    Spdy {
        spdy: spdy::Spdy<WriteHalf<Io>>,
        ids: Arc<HashMap<u8, u32>>,
    },
}

impl Output {
    pub async fn write(&self, channel: u8, data: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Ws { sink } => {
                let mut m = Vec::with_capacity(data.len() + 1);
                m.push(channel);
                m.extend_from_slice(data);
                sink.lock()
                    .await
                    .send(Message::Binary(m.into()))
                    .await
                    .map_err(std::io::Error::other)
            }
            Output::Spdy { spdy, ids } => match ids.get(&channel) {
                Some(id) => spdy.send(*id, data, false).await,
                None => Ok(()),
            },
        }
    }

    /// Close every channel and the session.
    pub async fn finish(&self) {
        match self {
            Output::Ws { sink } => {
                // A normal closure: the client reads it as the end of every stream (the
                // per-channel close signal of v5 goes only from client to server).
                use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
                let frame = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                };
                let _ = sink.lock().await.send(Message::Close(Some(frame))).await;
            }
            Output::Spdy { spdy, ids } => {
                for id in ids.values() {
                    let _ = spdy.send(*id, &[], true).await;
                }
            }
        }
    }
}

/// A websocket session: channel-prefixed binary messages; v5 adds a close message per channel.
pub async fn websocket(io: Io, v5: bool) -> (Output, Input) {
    let ws = WebSocketStream::from_raw_socket(io, tokio_tungstenite::tungstenite::protocol::Role::Server, None).await;
    let (sink, mut stream) = ws.split();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            let data = match m {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&ch, rest)) = data.split_first() else {
                continue;
            };
            let ev = if ch == 255 && v5 {
                (rest.first().copied().unwrap_or(STDIN), None)
            } else {
                (ch, Some(rest.to_vec()))
            };
            if tx.send(ev).await.is_err() {
                break;
            }
        }
        let _ = tx.send((STDIN, None)).await;
    });
    (
        Output::Ws {
            sink: Arc::new(Mutex::new(sink)),
        },
        rx,
    )
}

/// A SPDY exec session: wait for the client to open the streams it asked for (by their
/// `streamType` header), accept them, and map them to channels.
pub async fn spdy_channels(io: Io, expected: &[u8]) -> Result<(Output, Input), String> {
    let (spdy, mut events) = spdy::serve(io);
    let mut ids: HashMap<u8, u32> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !expected.iter().all(|c| ids.contains_key(c)) {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .map_err(|_| "timed out waiting for the client's streams".to_string())?;
        match ev {
            Some(spdy::SpdyEvent::Open { id, headers, .. }) => {
                let ch = match headers.get("streamtype").map(String::as_str) {
                    Some("stdin") => STDIN,
                    Some("stdout") => STDOUT,
                    Some("stderr") => STDERR,
                    Some("error") => ERROR,
                    Some("resize") => RESIZE,
                    _ => {
                        let _ = spdy.reset(id, 2).await;
                        continue;
                    }
                };
                spdy.reply(id).await.map_err(|e| e.to_string())?;
                ids.insert(ch, id);
            }
            Some(_) => {}
            None => return Err("the client went away".into()),
        }
    }
    let by_id: HashMap<u32, u8> = ids.iter().map(|(c, i)| (*i, *c)).collect();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            let msg = match ev {
                spdy::SpdyEvent::Data { id, data, fin } => {
                    let Some(&ch) = by_id.get(&id) else { continue };
                    if !data.is_empty() && tx.send((ch, Some(data))).await.is_err() {
                        return;
                    }
                    if !fin {
                        continue;
                    }
                    (ch, None)
                }
                spdy::SpdyEvent::Reset { id } => match by_id.get(&id) {
                    Some(&ch) => (ch, None),
                    None => continue,
                },
                spdy::SpdyEvent::Open { .. } => continue,
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
        let _ = tx.send((STDIN, None)).await;
    });
    Ok((
        Output::Spdy {
            spdy,
            ids: Arc::new(ids),
        },
        rx,
    ))
}
