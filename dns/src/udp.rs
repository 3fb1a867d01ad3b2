//! The UDP path. hickory's `Server` hands every UDP answer through a channel back to the
//! socket's receive task, which costs a cross-task wake-up per query; here each receive loop
//! decodes the request with hickory, runs the same `RequestHandler`, and an answer that is
//! ready at once (cluster names, cache hits) is encoded (truncated to the asker's EDNS size,
//! TC set, by hickory's encoder) and sent from the loop itself. Only answers that wait for an
//! upstream get a task of their own. TCP stays on hickory's `Server`.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::MessageType;
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::net::UdpSocket;

use crate::handler::Handler;

#[derive(Clone)]
struct Reply {
    socket: Arc<UdpSocket>,
    to: SocketAddr,
}

#[async_trait::async_trait]
impl ResponseHandler for Reply {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        // RFC 1035 4.2.1: 512 bytes unless the asker's EDNS says more.
        encoder.set_max_size(response.edns().map_or(512, |e| e.max_payload()));
        let id = response.metadata().id;
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(e) => {
                // As hickory does: a bare SERVFAIL rather than silence.
                tracing::warn!(error = %e, "encoding a DNS response");
                let mut h = [0u8; 12];
                h[..2].copy_from_slice(&id.to_be_bytes());
                h[2] = 0x80;
                h[3] = 2;
                self.socket.send_to(&h, self.to).await.map_err(|e| NetError::from(e.to_string()))?;
                return Err(NetError::from(e.to_string()));
            }
        };
        self.socket.send_to(&bytes, self.to).await.map_err(|e| NetError::from(e.to_string()))?;
        Ok(info)
    }
}

/// FORMERR for a packet whose header could be read but not the rest.
fn format_error(packet: &[u8]) -> Option<[u8; 12]> {
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return None;
    }
    let mut h = [0u8; 12];
    h[..2].copy_from_slice(&packet[..2]);
    h[2] = 0x80 | (packet[2] & 0x78); // QR, the opcode
    h[3] = 1; // FORMERR
    Some(h)
}

/// Serve one UDP socket until it fails.
pub async fn serve(socket: UdpSocket, handler: Handler) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "dns udp receive");
                continue;
            }
        };
        if from.port() == 0 || from.ip().is_unspecified() {
            continue;
        }
        let request = match Request::from_bytes(buf[..n].to_vec(), from, Protocol::Udp) {
            Ok(r) => r,
            Err(_) => {
                if let Some(h) = format_error(&buf[..n]) {
                    let _ = socket.send_to(&h, from).await;
                }
                continue;
            }
        };
        // Answers are not questions.
        if request.metadata.message_type == MessageType::Response {
            continue;
        }
        let reply = Reply { socket: socket.clone(), to: from };
        let handler = handler.clone();
        let mut work = Box::pin(async move {
            handler.handle_request::<Reply, TokioTime>(&request, reply).await;
        });
        if futures::poll!(&mut work).is_pending() {
            tokio::spawn(work);
        }
    }
}
