//! Fuzz targets for the DNS server's handling of a packet from anyone: hickory's decoding, and
//! this server's own byte-level parsers on the UDP path — the FORMERR header, the kept-answer
//! key read straight from the request's bytes, and the layout and patching of a kept answer.
//! `fuzz/` runs them under libfuzzer and `tests/fuzz_props.rs` on stable; both panic when a
//! property fails, not only when a parser does.
//!
//! A child of [`super`] so that it reaches those private parsers without widening them. The
//! handler answers from a cluster zone with one service and no upstreams, so every request is
//! answered at once and nothing leaves the process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arc_swap::ArcSwap;
use hickory_server::net::NetError;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Message, MessageType};
use hickory_server::proto::rr::{LowerName, Name, Record};
use hickory_server::proto::serialize::binary::BinEncodable;
use hickory_server::server::{Request, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use nodeless_types::keys;

use super::{KeptAnswer, format_error, layout, patch, query_key};
use crate::forward::{ForwardConfig, Forwarder};
use crate::handler::{Handler, Keep, Shared};
use crate::{cluster, guard, privatezone};

/// The bytes of the answer, encoded as the UDP path encodes them.
#[derive(Clone, Default)]
struct Captured {
    sent: Vec<u8>,
}

#[async_trait::async_trait]
impl ResponseHandler for Captured {
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
        let (bytes, info) = super::encode(response).1.map_err(|e| NetError::from(e.to_string()))?;
        self.sent = bytes;
        Ok(info)
    }
}

/// A query for `labels`, type A, class IN, with this ID and an EDNS OPT record of 4096 bytes:
/// the seed the unit and property tests start from.
pub fn query_packet(id: u16, labels: &[&str]) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
    for l in labels {
        p.push(l.len() as u8);
        p.extend_from_slice(l.as_bytes());
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    p.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    p
}

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).expect("a fixed object"))
}

fn handler() -> Handler {
    let origin = cluster::origin("cluster.local").expect("a fixed domain");
    let services = [
        obj(
            serde_json::json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
        ),
        obj(
            serde_json::json!({"metadata": {"name": "db", "namespace": "default"}, "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}}),
        ),
    ];
    let slices = [obj(
        serde_json::json!({"metadata": {"name": "db-x", "namespace": "default", "labels": {keys::SERVICE_NAME: "db"}}, "addressType": "IPv4",
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}], "endpoints": [{"addresses": ["10.0.0.5"], "hostname": "db-0"}, {"addresses": ["10.0.0.6"]}]}),
    )];
    let pod_zone = LowerName::from(
        Name::from_ascii("pod")
            .and_then(|n| n.append_domain(&origin))
            .expect("a fixed name"),
    );
    let shared = Shared {
        cluster: ArcSwap::from_pointee(cluster::build(&origin, 30, 1, &services, &slices)),
        views: ArcSwap::from_pointee(privatezone::Views::default()),
        pod_zone,
        ttl: 30,
        forwarder: Forwarder::new(ForwardConfig::new(Vec::new())),
        generation: AtomicU64::new(0),
        guard: guard::Guard::new(
            Vec::new(),
            guard::RateLimit {
                per_second: 0,
                ..guard::RateLimit::default()
            },
        ),
    };
    Handler {
        shared: Arc::new(shared),
    }
}

thread_local! {
    static HANDLER: Handler = handler();
}

const ASKER: &str = "10.0.0.9:5353";

/// The same request from another asker's resolver: another ID, the name in other letter case.
fn respelled(packet: &[u8], end: usize) -> Vec<u8> {
    let mut p = packet.to_vec();
    p[0] ^= 0x5a;
    p[1] ^= 0xa5;
    for (i, b) in p[12..end].iter_mut().enumerate() {
        if b.is_ascii_alphabetic() && i % 2 == 0 {
            *b ^= 0x20;
        }
    }
    p
}

/// One packet from anyone, through everything the UDP path does with it:
/// - a FORMERR header is made only from a query's 12 header bytes, and keeps its ID;
/// - a packet with a key gives the same key and name end with another ID and letter case, and
///   hickory reads the same question from it;
/// - a request hickory decodes is answered, the answer decodes, with the request's ID;
/// - a kept answer patched for the respelled request decodes to the same answer with that
///   request's ID and spelling of the name.
pub fn packet(data: &[u8]) {
    if let Some(h) = format_error(data) {
        assert!(data.len() >= 12 && data[2] & 0x80 == 0);
        assert_eq!((&h[..2], h[2] & 0x80, h[3] & 0x0f), (&data[..2], 0x80, 1));
    }
    let mut key = Vec::new();
    let end = query_key(data, &mut key);
    if let Some(end) = end {
        assert!(
            end > 12 && end <= data.len() && data[end - 1] == 0,
            "a name ending at {end}"
        );
        assert_eq!(key.len(), data.len() - 2);
        let mut again = Vec::new();
        assert_eq!(query_key(&respelled(data, end), &mut again), Some(end));
        assert_eq!(again, key, "another ID or letter case is another key");
    }
    let src: SocketAddr = ASKER.parse().unwrap();
    let Ok(request) = Request::from_bytes(data.to_vec(), src, Protocol::Udp) else {
        return;
    };
    if let Some(end) = end {
        let q = request
            .queries
            .queries()
            .first()
            .expect("a keyed packet has one question")
            .original();
        let mut read = q.name().to_bytes().expect("a decoded name encodes");
        read.make_ascii_lowercase();
        assert_eq!(
            read,
            data[12..end].to_ascii_lowercase(),
            "hickory reads {} where the key has another name",
            q.name()
        );
    }
    if request.metadata.message_type == MessageType::Response {
        return;
    }
    let mut captured = Captured::default();
    let keep = HANDLER.with(|h| futures::executor::block_on(h.respond(&request, &mut captured)).1);
    let sent = captured.sent;
    if sent.is_empty() {
        return;
    }
    let answer = Message::from_vec(&sent).unwrap_or_else(|e| panic!("the answer does not decode: {e}"));
    assert_eq!(answer.metadata.id, request.metadata.id);
    assert_eq!(answer.metadata.message_type, MessageType::Response);
    let Some(end) = end else { return };
    if keep == Keep::Never || sent.len() < end || !sent[12..end].eq_ignore_ascii_case(&data[12..end]) {
        return;
    }
    let Some(layout) = layout(&sent, end) else { return };
    let asked = respelled(data, end);
    let kept = KeptAnswer {
        bytes: sent.clone().into(),
        layout,
        clock: None,
    };
    let mut out = Vec::new();
    assert!(patch(&kept, &asked, end, &mut out));
    let patched = Message::from_vec(&out).unwrap_or_else(|e| panic!("a patched answer does not decode: {e}"));
    assert_eq!(&out[..2], &asked[..2]);
    assert_eq!(&out[12..end], &asked[12..end]);
    let mut same = patched.clone();
    same.metadata.id = answer.metadata.id;
    assert_eq!(
        same, answer,
        "patching changed more than the ID and the name's spelling"
    );
    let spelled = Request::from_bytes(asked.clone(), src, Protocol::Udp)
        .unwrap()
        .queries
        .queries()[0]
        .original()
        .name()
        .clone();
    for r in patched.answers.iter().chain(&patched.additionals) {
        if r.name == spelled {
            assert_eq!(
                r.name.to_ascii(),
                spelled.to_ascii(),
                "a record owned by the asked name kept the old spelling"
            );
        }
    }
}

/// Reads an input as a stream of choices; past its end every choice is 0.
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }
}

/// A query built from choices: names under the cluster zone, pod names and others in any
/// letter case, every common type and class, with or without EDNS (versions 0 and 1, sizes
/// from 0 up), now and then a flag, count or trailing byte that is wrong.
pub fn query(data: &[u8]) {
    const LABELS: [&str; 14] = [
        "web", "db", "db-0", "default", "svc", "cluster", "local", "pod", "10-0-0-5", "fd00--1", "_http", "_tcp",
        "in-addr", "arpa",
    ];
    const NAMES: [&[usize]; 8] = [
        &[0, 3, 4, 5, 6],
        &[1, 3, 4, 5, 6],
        &[2, 1, 3, 4, 5, 6],
        &[8, 3, 7, 5, 6],
        &[10, 11, 0, 3, 4, 5, 6],
        &[5, 6],
        &[9, 3, 7, 5, 6],
        &[],
    ];
    let mut c = Choices(data);
    let mut p = vec![
        c.byte(),
        c.byte(),
        [0x01, 0x00, 0x81, 0x20, 0x00][c.below(5)],
        [0x00, 0x10, 0x20][c.below(3)],
    ];
    let questions = [1u8, 1, 1, 0, 2][c.below(5)];
    let edns = c.below(3) != 0;
    p.extend_from_slice(&[0, questions, 0, 0, 0, 0, 0, u8::from(edns)]);
    for _ in 0..questions {
        let labels: Vec<&str> = if c.below(6) == 0 {
            (0..c.below(5)).map(|_| LABELS[c.below(LABELS.len())]).collect()
        } else {
            NAMES[c.below(NAMES.len())].iter().map(|&i| LABELS[i]).collect()
        };
        for l in labels {
            p.push(l.len() as u8);
            p.extend(
                l.bytes()
                    .map(|b| if c.below(3) == 0 { b.to_ascii_uppercase() } else { b }),
            );
        }
        p.push(0);
        let qtype: u16 = [1, 28, 33, 12, 255, 16, 5, 6, 2, 0, 65535][c.below(11)];
        let class: u16 = [1, 1, 1, 3, 255, 254][c.below(6)];
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&class.to_be_bytes());
    }
    if edns {
        let size: u16 = [512, 1232, 4096, 0, 65535, 100][c.below(6)];
        let version = [0u8, 0, 1][c.below(3)];
        p.extend_from_slice(&[0, 0, 41]);
        p.extend_from_slice(&size.to_be_bytes());
        p.extend_from_slice(&[0, version, 0, 0, 0, 0]);
    }
    if c.below(10) == 0 {
        p.push(c.byte());
    }
    packet(&p);
}
