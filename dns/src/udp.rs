//! The UDP path. hickory's `Server` hands every UDP answer through a channel back to the
//! socket's receive task, which costs a cross-task wake-up per query; here each receive loop
//! decodes the request with hickory, runs the same `RequestHandler`, and an answer that is
//! ready at once (cluster names, cache hits) is encoded (truncated to the asker's EDNS size,
//! TC set, by hickory's encoder) and sent from the loop itself. Only answers that wait for an
//! upstream get a task of their own. TCP stays on hickory's `Server`. Before any of that, the
//! asker is checked ([`crate::guard`]): over its network's rate it gets a truncated reply or
//! none, outside the allowed networks a bare REFUSED.
//!
//! Each loop also keeps the bytes of the answers it sent that depend on nothing but the
//! request's bytes, the zones and the clock: cluster names, and fresh forwarded answers, not
//! PrivateZone answers. The same request again — the same bytes after the ID, the name in any
//! case — gets those bytes back with its own ID and its own spelling of the name patched in (in
//! the question and in every record owned by the name), and a forwarded answer its TTLs
//! counted down, without decoding or encoding anything. Cluster answers are kept until the
//! zones change, forwarded ones while the forwarding cache would call them fresh.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use hickory_server::net::NetError;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::ProtoError;
use hickory_server::proto::op::MessageType;
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use rustc_hash::FxHashMap;
use tokio::net::UdpSocket;

use crate::batch::{BATCH, Inbox, Outbox};
use crate::guard::{REFUSED, Verdict, bare_reply};
use crate::handler::{Handler, Keep};
use crate::metrics::{Guarded, Proto, Tally};
use hickory_server::proto::rr::RecordType;

#[derive(Clone)]
struct Reply {
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    /// The bytes sent, for the loop's kept answers.
    sent: Vec<u8>,
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
        let (id, encoded) = encode(response);
        let (bytes, info) = match encoded {
            Ok(done) => done,
            Err(e) => {
                // As hickory does: a bare SERVFAIL rather than silence.
                tracing::warn!(error = %e, "encoding a DNS response");
                let mut h = [0u8; 12];
                h[..2].copy_from_slice(&id.to_be_bytes());
                h[2] = 0x80;
                h[3] = 2;
                self.socket
                    .send_to(&h, self.to)
                    .await
                    .map_err(|e| NetError::from(e.to_string()))?;
                return Err(NetError::from(e.to_string()));
            }
        };
        self.socket
            .send_to(&bytes, self.to)
            .await
            .map_err(|e| NetError::from(e.to_string()))?;
        self.sent = bytes;
        Ok(info)
    }
}

/// A response encoded as the UDP path sends it, with its request's ID: at most 512 bytes unless
/// the asker's EDNS says more (RFC 1035 4.2.1).
fn encode<'a>(
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> (u16, Result<(Vec<u8>, ResponseInfo), ProtoError>) {
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(response.edns().map_or(512, |e| e.max_payload()));
    let id = response.metadata().id;
    let info = response.destructive_emit(&mut encoder);
    (id, info.map(|info| (bytes, info)))
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

/// How many answers one loop keeps before it starts over.
const KEPT_ANSWERS: usize = 16 * 1024;

/// Answers sent before, by the request's bytes after the ID with the question's name in lower
/// case.
#[derive(Default)]
struct Kept {
    generation: u64,
    answers: FxHashMap<Box<[u8]>, KeptAnswer>,
}

struct KeptAnswer {
    bytes: Box<[u8]>,
    layout: Layout,
    /// For a forwarded answer: when it was kept and when it stops being fresh.
    clock: Option<(Instant, Instant)>,
}

/// Where to patch an answer's bytes.
#[derive(Debug, Default, PartialEq, Eq)]
struct Layout {
    /// The records' owner names that spell the asked name out in full.
    owners: Vec<usize>,
    /// The records' TTL fields (the OPT pseudo-record's is not a TTL).
    ttls: Vec<usize>,
}

/// Skip a name, compressed or not; the offset after it.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return (at + 2 <= msg.len()).then_some(at + 2),
            l if l & 0xc0 == 0 => at += 1 + usize::from(l),
            _ => return None,
        }
    }
}

/// Where to patch an answer to a one-question query whose name is `msg[12..end]`; None if the
/// message does not parse to its end.
fn layout(msg: &[u8], end: usize) -> Option<Layout> {
    let name = msg.get(12..end)?;
    let count = |i: usize| usize::from(u16::from_be_bytes([msg[i], msg[i + 1]]));
    if msg.len() < end + 4 || count(4) != 1 {
        return None;
    }
    let records = count(6) + count(8) + count(10);
    let mut at = end + 4;
    let mut layout = Layout::default();
    for _ in 0..records {
        let owner_end = skip_name(msg, at)?;
        if msg[at..owner_end].eq_ignore_ascii_case(name) {
            layout.owners.push(at);
        }
        let fixed = msg.get(owner_end..owner_end + 10)?;
        if fixed[..2] != [0, 41] {
            layout.ttls.push(owner_end + 4);
        }
        at = owner_end + 10 + usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    }
    (at == msg.len()).then_some(layout)
}

/// The kept answer for the request in `packet` (its name ending at `end`) in `out`, patched
/// for it; false if the answer is no longer fresh.
fn patch(kept: &KeptAnswer, packet: &[u8], end: usize, out: &mut Vec<u8>) -> bool {
    out.clear();
    out.extend_from_slice(&kept.bytes);
    out[..2].copy_from_slice(&packet[..2]);
    for at in std::iter::once(12).chain(kept.layout.owners.iter().copied()) {
        out[at..at + end - 12].copy_from_slice(&packet[12..end]);
    }
    if let Some((stored, fresh_until)) = kept.clock {
        let now = Instant::now();
        if now >= fresh_until {
            return false;
        }
        let age = (now - stored).as_secs().min(u64::from(u32::MAX)) as u32;
        if age > 0 {
            for &at in &kept.layout.ttls {
                let ttl = u32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
                out[at..at + 4].copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
            }
        }
    }
    true
}

/// The key of a plain query with one question and no records, and where its name ends; None
/// for anything else (a compressed name in the question included).
fn query_key(packet: &[u8], key: &mut Vec<u8>) -> Option<usize> {
    if packet.len() < 17 || packet[2] & 0xf8 != 0 || packet[4..10] != [0, 1, 0, 0, 0, 0] {
        return None;
    }
    key.clear();
    key.extend_from_slice(&packet[2..]);
    let mut at = 12;
    loop {
        let len = usize::from(*packet.get(at)?);
        if len == 0 {
            return Some(at + 1);
        }
        if len & 0xc0 != 0 || at + 1 + len > packet.len() {
            return None;
        }
        key[at - 1..at - 1 + len].make_ascii_lowercase();
        at += 1 + len;
    }
}

/// Serve one UDP socket until it fails.
/// Count an answer sent again from the kept ones: the question's type follows its name (at
/// `end`); the answer's code and count are in its header.
fn kept_answer_sent(tally: &mut Tally, packet: &[u8], end: usize, answer: &[u8], start: Instant) {
    let qtype = packet
        .get(end..end + 2)
        .map_or(RecordType::NULL, |t| RecordType::from(u16::from_be_bytes([t[0], t[1]])));
    let rcode = answer.get(3).map_or(0, |b| u16::from(b & 0x0f));
    let empty = answer.get(6..8).is_some_and(|c| c == [0, 0]);
    tally.kept(qtype, rcode, rcode == 3 || empty, start.elapsed());
}

pub async fn serve(socket: UdpSocket, handler: Handler) {
    let metrics = crate::metrics::metrics();
    let mut tally = Tally::default();
    let socket = Arc::new(socket);
    let mut inbox = Inbox::default();
    let mut outbox = Outbox::default();
    let mut kept = Kept::default();
    let mut key = Vec::with_capacity(512);
    let mut out = Vec::with_capacity(512);
    loop {
        let n = match inbox.recv(&socket).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "dns udp receive");
                continue;
            }
        };
        let generation = handler.shared.generation.load(Ordering::Acquire);
        if generation != kept.generation {
            kept.answers.clear();
            kept.generation = generation;
        }
        let views = handler.shared.views.load_full();
        // The rate limit for the whole batch first: its lock (if any asker needs it) is not
        // held while answering.
        let guard = &handler.shared.guard;
        let verdicts: [Verdict; BATCH] = {
            let mut batch = guard.batch();
            std::array::from_fn(|i| {
                if i < n {
                    batch.verdict(inbox.packet(i).1.ip())
                } else {
                    Verdict::Answer
                }
            })
        };
        for (i, verdict) in verdicts.into_iter().enumerate().take(n) {
            let (packet, from) = inbox.packet(i);
            if from.port() == 0 || from.ip().is_unspecified() {
                continue;
            }
            match verdict {
                Verdict::Answer => {}
                Verdict::Truncate => {
                    metrics.guarded(Guarded::Truncated);
                    if bare_reply(packet, 0, true, &mut out) {
                        outbox.push(&out, from);
                    }
                    continue;
                }
                Verdict::Drop => {
                    metrics.guarded(Guarded::Dropped);
                    continue;
                }
            }
            if !guard.allowed(from.ip()) {
                metrics.guarded(Guarded::Refused);
                if bare_reply(packet, REFUSED, false, &mut out) {
                    outbox.push(&out, from);
                }
                continue;
            }
            // A question answered before, from an asker no PrivateZone is bound to.
            let name_end = query_key(packet, &mut key);
            let viewless = || !views.binds(from.ip().to_canonical());
            if let Some(end) = name_end {
                if let Some(answer) = kept.answers.get(key.as_slice()) {
                    if viewless() {
                        let start = Instant::now();
                        if patch(answer, packet, end, &mut out) {
                            outbox.push(&out, from);
                            kept_answer_sent(&mut tally, packet, end, &out, start);
                            continue;
                        }
                        kept.answers.remove(key.as_slice());
                    }
                }
            }
            let request = match Request::from_bytes(packet.to_vec(), from, Protocol::Udp) {
                Ok(r) => r,
                Err(_) => {
                    metrics.malformed(Proto::Udp);
                    if let Some(h) = format_error(packet) {
                        outbox.push(&h, from);
                    }
                    continue;
                }
            };
            // Answers are not questions.
            if request.metadata.message_type == MessageType::Response {
                continue;
            }
            let mut reply = Reply {
                socket: socket.clone(),
                to: from,
                sent: Vec::new(),
            };
            let h = handler.clone();
            let mut work = Box::pin(async move {
                let (_, keep) = h.respond(&request, &mut reply).await;
                (keep, reply.sent)
            });
            match futures::poll!(&mut work) {
                std::task::Poll::Ready((keep, sent)) => {
                    let Some(end) = name_end else { continue };
                    let clock = match keep {
                        Keep::Never => continue,
                        Keep::UntilZonesChange => None,
                        Keep::For(d) if d.is_zero() => continue,
                        Keep::For(d) => {
                            let now = Instant::now();
                            Some((now, now + d))
                        }
                    };
                    // Kept only when the answer repeats the question where the patching expects it.
                    let same_question = sent.len() >= end && sent[12..end].eq_ignore_ascii_case(&packet[12..end]);
                    if !same_question || !viewless() {
                        continue;
                    }
                    let Some(layout) = layout(&sent, end) else { continue };
                    if kept.answers.len() >= KEPT_ANSWERS {
                        kept.answers.clear();
                    }
                    kept.answers.insert(
                        key.as_slice().into(),
                        KeptAnswer {
                            bytes: sent.into_boxed_slice(),
                            layout,
                            clock,
                        },
                    );
                }
                std::task::Poll::Pending => {
                    tokio::spawn(work);
                }
            }
        }
        outbox.flush(&socket).await;
        tally.flush(metrics);
    }
}

/// Fuzz targets for the packet parsers above (they stay private here).
#[doc(hidden)]
pub mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use fuzz::query_packet as query;

    #[test]
    fn keys_ignore_the_id_and_the_case_of_the_name_only() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let end = query_key(&query(7, &["Web", "DEFAULT", "svc"]), &mut a).unwrap();
        assert_eq!(end, 12 + 1 + 3 + 1 + 7 + 1 + 3 + 1);
        query_key(&query(9, &["web", "default", "svc"]), &mut b).unwrap();
        assert_eq!(a, b);
        query_key(&query(9, &["web", "default", "svd"]), &mut b).unwrap();
        assert_ne!(a, b);
        // The rest of the packet is kept as it is: a different EDNS size is a different key.
        let mut q = query(9, &["web", "default", "svc"]);
        let last = q.len() - 8;
        q[last] = 0x04;
        query_key(&q, &mut b).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn only_plain_queries_have_keys() {
        let mut key = Vec::new();
        let mut response = query(1, &["a"]);
        response[2] |= 0x80;
        assert!(query_key(&response, &mut key).is_none());
        let mut notify = query(1, &["a"]);
        notify[2] = 4 << 3;
        assert!(query_key(&notify, &mut key).is_none());
        let mut two = query(1, &["a"]);
        two[5] = 2;
        assert!(query_key(&two, &mut key).is_none());
        let mut pointer = query(1, &["a"]);
        pointer[12] = 0xc0;
        assert!(query_key(&pointer, &mut key).is_none());
        let cut = query(1, &["abcdef"]);
        assert!(query_key(&cut[..16], &mut key).is_none());
        assert!(query_key(&[0u8; 5], &mut key).is_none());
    }

    #[test]
    fn owners_spelled_in_full_are_found_and_others_left() {
        // An answer to "Ab.c A": the question, one A record owned by "ab.c" in full, one owned
        // by a pointer to the question, and one owned by another name.
        let mut m = vec![0, 1, 0x85, 0, 0, 1, 0, 3, 0, 0, 0, 0];
        m.extend_from_slice(&[2, b'A', b'b', 1, b'c', 0, 0, 1, 0, 1]);
        let rr = |m: &mut Vec<u8>, owner: &[u8]| {
            m.extend_from_slice(owner);
            m.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 0, 1]);
        };
        rr(&mut m, &[2, b'a', b'b', 1, b'c', 0]);
        rr(&mut m, &[0xc0, 12]);
        rr(&mut m, &[2, b'x', b'b', 1, b'c', 0]);
        assert_eq!(
            layout(&m, 18),
            Some(Layout {
                owners: vec![22],
                ttls: vec![32, 48, 68]
            })
        );
        // Trailing garbage or a cut record: not kept.
        let mut longer = m.clone();
        longer.push(0);
        assert_eq!(layout(&longer, 18), None);
        assert_eq!(layout(&m[..m.len() - 1], 18), None);
    }

    #[test]
    fn kept_answers_get_the_askers_id_and_spelling_and_ttls_counted_down() {
        let mut m = vec![0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        m.extend_from_slice(&[2, b'a', b'b', 0, 0, 1, 0, 1]);
        m.extend_from_slice(&[2, b'a', b'b', 0, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 0, 1]);
        let layout = layout(&m, 16).unwrap();
        let now = Instant::now();
        let kept = KeptAnswer {
            bytes: m.clone().into(),
            layout,
            clock: Some((now - Duration::from_secs(3), now + Duration::from_secs(10))),
        };
        let mut asked = vec![
            0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 2, b'A', b'B', 0, 0, 1, 0, 1,
        ];
        let mut out = Vec::new();
        assert!(patch(&kept, &asked, 16, &mut out));
        assert_eq!(&out[..2], &[0xbe, 0xef]);
        assert_eq!(&out[12..16], &[2, b'A', b'B', 0]);
        assert_eq!(&out[20..24], &[2, b'A', b'B', 0]);
        assert_eq!(&out[28..32], &2u32.to_be_bytes());
        assert_eq!(&out[34..], &[10, 0, 0, 1]);
        // Past its freshness it is not sent.
        let stale = KeptAnswer {
            clock: Some((now - Duration::from_secs(3), now)),
            ..kept
        };
        asked[0] = 0;
        assert!(!patch(&stale, &asked, 16, &mut out));
    }
}
