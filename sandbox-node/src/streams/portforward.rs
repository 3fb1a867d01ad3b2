//! `kubectl port-forward` over SPDY (`portforward.k8s.io`): the client opens an error stream and
//! a data stream per connection, tagged with the port and a request ID; each data stream is
//! joined to a TCP connection to that port on the pod's loopback, inside its network namespace.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::Io;
use super::spdy::{self, SpdyEvent};

pub async fn serve(io: Io, net: crate::pod_net::PodNet) {
    let (spdy, mut events) = spdy::serve(io);
    // request ID → the error stream's ID, until its data stream arrives.
    let mut errors: HashMap<String, u32> = HashMap::new();
    // data stream ID → the feed into its TCP connection.
    let mut feeds: HashMap<u32, mpsc::Sender<Option<Vec<u8>>>> = HashMap::new();
    while let Some(ev) = events.recv().await {
        match ev {
            SpdyEvent::Open { id, headers, .. } => {
                if spdy.reply(id).await.is_err() {
                    return;
                }
                let request = headers.get("requestid").cloned().unwrap_or_default();
                match headers.get("streamtype").map(String::as_str) {
                    Some("error") => {
                        errors.insert(request, id);
                    }
                    Some("data") => {
                        let port: Option<u16> = headers.get("port").and_then(|p| p.parse().ok());
                        let error_id = errors.remove(&request);
                        let (tx, rx) = mpsc::channel(64);
                        feeds.insert(id, tx);
                        tokio::spawn(connection(spdy.clone(), net.clone(), port, id, error_id, rx));
                    }
                    _ => {
                        let _ = spdy.reset(id, 2).await;
                    }
                }
            }
            SpdyEvent::Data { id, data, fin } => {
                if let Some(tx) = feeds.get(&id) {
                    if !data.is_empty() {
                        let _ = tx.send(Some(data)).await;
                    }
                    if fin {
                        let _ = tx.send(None).await;
                    }
                }
            }
            SpdyEvent::Reset { id } => {
                if let Some(tx) = feeds.remove(&id) {
                    let _ = tx.send(None).await;
                }
            }
        }
    }
}

async fn connection(
    spdy: spdy::Spdy<tokio::io::WriteHalf<Io>>,
    net: crate::pod_net::PodNet,
    port: Option<u16>,
    data_id: u32,
    error_id: Option<u32>,
    mut feed: mpsc::Receiver<Option<Vec<u8>>>,
) {
    let fail = |msg: String| {
        let spdy = spdy.clone();
        async move {
            if let Some(e) = error_id {
                let _ = spdy.send(e, msg.as_bytes(), true).await;
            }
            let _ = spdy.send(data_id, &[], true).await;
        }
    };
    let Some(port) = port else {
        return fail("the data stream names no port".into()).await;
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let stream = match net.connect(addr, Duration::from_secs(5)).await {
        Ok(s) => s,
        Err(e) => return fail(format!("error forwarding port {port} to pod: {e}")).await,
    };
    let (mut r, mut w) = tokio::io::split(stream);
    let up = tokio::spawn(async move {
        while let Some(msg) = feed.recv().await {
            match msg {
                Some(d) => {
                    if w.write_all(&d).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = w.shutdown().await;
                    return;
                }
            }
        }
    });
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if spdy.send(data_id, &buf[..n], false).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = spdy.send(data_id, &[], true).await;
    if let Some(e) = error_id {
        let _ = spdy.send(e, &[], true).await;
    }
    let _ = up.await;
}
