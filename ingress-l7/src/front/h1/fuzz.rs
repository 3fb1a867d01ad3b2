//! Fuzz targets for the HTTP/1.1 front's parser of client bytes: the request head (httparse,
//! then this front's framing and forwarding rules in [`Front::plan`]). The chunked-body scanner's
//! targets are with the scanner ([`crate::wire::fuzz`]). `fuzz/` runs them under libfuzzer and
//! `tests/fuzz_props.rs` on stable; both panic when a property fails, not only when the parser
//! does.
//!
//! A child of [`super`] so that it reaches the private planner without widening it; the front it
//! plans with routes host `h` to an endpoint nothing connects to.

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde_json::json;

use super::{Plan, request_dropped};
use crate::front::Front;
use crate::metrics::Metrics;
use crate::routes::{self, Table};
use crate::wire::fuzz::Choices;
use crate::wire::{MAX_HEADERS, content_length};

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).expect("a fixed object"))
}

/// A front routing every request for host `h` to 192.0.2.1:80 (never connected to).
fn front() -> Front {
    let class = obj(
        json!({"metadata": {"name": "nodeless", "annotations": {nodeless_types::keys::DEFAULT_INGRESS_CLASS: "true"}}, "spec": {"controller": "nodeless.io/ingress-l7"}}),
    );
    let service = obj(
        json!({"metadata": {"name": "up", "namespace": "default"}, "spec": {"ports": [{"name": "http", "port": 80}]}}),
    );
    let slice = obj(
        json!({"metadata": {"name": "up-x", "namespace": "default", "labels": {nodeless_types::keys::SERVICE_NAME: "up"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}], "endpoints": [{"addresses": ["192.0.2.1"]}]}),
    );
    let ingress = obj(
        json!({"metadata": {"name": "i", "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"rules": [{"host": "h", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "up", "port": {"number": 80}}}}]}}]}}),
    );
    let table: Table = routes::build(&[ingress], &[class], &[service], &[slice], &Table::default());
    Front {
        table: Arc::new(ArcSwap::from_pointee(table)),
        metrics: Arc::new(Metrics::new(0)),
        scheme: "http",
        internal: false,
        alt_svc: None,
        h2c: Default::default(),
        limits: Default::default(),
    }
}

thread_local! {
    static FRONT: Front = front();
}

/// A request head from a client. It is incomplete, refused with a 4xx, handed to pingora, or
/// taken; a taken head is as long as httparse says, and the head forwarded for it parses
/// again with the client's method, target and fields (less the hop-by-hop ones) in order, one
/// of each forwarding field, and the body length the client declared.
pub fn head(data: &[u8]) {
    FRONT.with(|front| check_head(front, data));
}

fn check_head(front: &Front, data: &[u8]) {
    let mut out = Vec::new();
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let status = parsed.parse(data);
    match front.plan(data, std::net::IpAddr::from([192, 0, 2, 7]), &mut out) {
        Ok(None) => assert!(
            matches!(status, Ok(httparse::Status::Partial)),
            "an incomplete head that httparse calls {status:?}"
        ),
        Err((code, _)) => assert!((400..500).contains(&code), "a refused head answered with {code}"),
        Ok(Some(req)) => {
            assert_eq!(
                status,
                Ok(httparse::Status::Complete(req.head_len)),
                "the head's length"
            );
            let Plan::Forward(f) = &req.plan else { return };
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS + 4];
            let mut fwd = httparse::Request::new(&mut fields);
            assert_eq!(
                fwd.parse(&out),
                Ok(httparse::Status::Complete(out.len())),
                "the forwarded head: {:?}",
                String::from_utf8_lossy(&out)
            );
            assert_eq!(
                (fwd.method, fwd.path, fwd.version),
                (parsed.method, parsed.path, Some(1))
            );
            let kept: Vec<(&str, &[u8])> = parsed
                .headers
                .iter()
                .filter(|h| !request_dropped(h.name, false))
                .map(|h| (h.name, h.value))
                .collect();
            let sent: Vec<(&str, &[u8])> = fwd.headers.iter().map(|h| (h.name, h.value)).collect();
            assert!(sent.len() >= kept.len() + 3, "fields went missing");
            assert_eq!(&sent[..kept.len()], &kept[..], "the client's fields, in order");
            for name in ["x-forwarded-for", "x-forwarded-proto", "x-request-id"] {
                assert_eq!(
                    sent.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).count(),
                    1,
                    "{name}"
                );
            }
            assert!(
                !sent.iter().any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding")),
                "a taken request with a coded body"
            );
            let declared: Vec<u64> = sent
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| content_length(v).expect("a checked length"))
                .collect();
            assert!(
                declared.iter().all(|&n| n == f.body),
                "Content-Length {declared:?} but a body of {}",
                f.body
            );
            assert!(
                !declared.is_empty() || f.body == 0,
                "a body of {} without a Content-Length",
                f.body
            );
        }
    }
}

/// A head built from choices of request line, names and values (every `Content-Length`
/// spelling that has smuggled a request somewhere), checked against the framing rules: a
/// length that is not plain digits, two that differ, or a length beside `Transfer-Encoding` is
/// a 400, a head with more fields than the front reads is a 431 (whatever they say), and a head
/// that breaks none of the rules is never refused for its framing.
pub fn head_fields(data: &[u8]) {
    const LENGTHS: [&str; 12] = [
        "0",
        "5",
        " 7 ",
        "+5",
        "-1",
        "0x5",
        "5,5",
        "5 5",
        "007",
        "18446744073709551615",
        "18446744073709551616",
        "",
    ];
    const CODINGS: [&str; 6] = [
        "chunked",
        "gzip",
        "gzip, chunked",
        "chunked, gzip",
        "CHUNKED",
        " chunked ",
    ];
    const NAMES: [&str; 10] = [
        "Host",
        "Connection",
        "X-Request-Id",
        "X-Forwarded-For",
        "Accept",
        "Content-Length",
        "Transfer-Encoding",
        "Upgrade",
        "Expect",
        "TE",
    ];
    let mut c = Choices(data);
    let mut text = String::new();
    text.push_str(c.pick(&["GET", "POST", "HEAD", "PUT", "OPTIONS"]));
    text.push(' ');
    text.push_str(c.pick(&["/", "/a?b=c", "*", "http://h/", "/%2e%2e/x"]));
    text.push_str(c.pick(&[" HTTP/1.1\r\n", " HTTP/1.0\r\n"]));
    let (mut lengths, mut coded, mut hosts, mut fields) = (Vec::new(), false, 0, 0);
    while !c.done() && text.len() < 2048 {
        let name = match c.below(4) {
            0 => "Content-Length",
            1 => "Host",
            _ => c.pick(&NAMES),
        };
        let value = match name {
            "Content-Length" => {
                let v = c.pick(&LENGTHS);
                lengths.push(content_length(v.as_bytes()));
                v
            }
            "Transfer-Encoding" => {
                coded = true;
                c.pick(&CODINGS)
            }
            "Host" => {
                hosts += 1;
                c.pick(&["h", "H", "h:80", "other", ""])
            }
            "Connection" => c.pick(&["close", "keep-alive", "Upgrade", "close, te"]),
            _ => c.pick(&["1", "x", "100-continue", "websocket", "a, b"]),
        };
        text.push_str(&format!("{name}: {value}\r\n"));
        fields += 1;
    }
    text.push_str("\r\n");
    FRONT.with(|front| {
        check_head(front, text.as_bytes());
        let mut out = Vec::new();
        let verdict = front.plan(text.as_bytes(), std::net::IpAddr::from([192, 0, 2, 7]), &mut out);
        let digits: Vec<u64> = lengths.iter().flatten().copied().collect();
        let framing_bad = lengths.iter().any(Option::is_none)
            || digits.windows(2).any(|w| w[0] != w[1])
            || (coded && !lengths.is_empty());
        // A head with more fields than the front reads is refused whole (431) before any of them
        // is looked at: refused all the same, so nothing of it reaches pingora or an endpoint.
        if fields > MAX_HEADERS {
            assert!(
                matches!(verdict, Err((431, _))),
                "{text:?}: {fields} fields were not refused"
            );
        } else if framing_bad {
            assert!(matches!(verdict, Err((400, _))), "{text:?} was not refused");
        }
        if hosts > 1 {
            assert!(verdict.is_err(), "{text:?}: two Host fields");
        }
        if let Err((status, why)) = &verdict {
            if !framing_bad && hosts <= 1 && !coded {
                assert!(
                    !why.contains("Content-Length"),
                    "{text:?} refused for its length ({status}: {why})"
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::{Plan, front};

    #[test]
    fn an_ingress_route_adds_no_forwarded_and_passes_the_clients_on() {
        let front = front();
        for (client, want) in [
            ("", None),
            ("Forwarded: for=10.0.0.1\r\n", Some("Forwarded: for=10.0.0.1\r\n")),
        ] {
            let head = format!("GET / HTTP/1.1\r\nHost: h\r\n{client}\r\n");
            let mut out = Vec::new();
            let planned = front.plan(head.as_bytes(), std::net::IpAddr::from([192, 0, 2, 7]), &mut out);
            assert!(matches!(planned, Ok(Some(r)) if matches!(r.plan, Plan::Forward(_))));
            let out = String::from_utf8(out).unwrap();
            assert!(out.contains("X-Forwarded-For: 192.0.2.7\r\n"), "{out}");
            assert_eq!(out.matches("orwarded:").count(), usize::from(want.is_some()), "{out}");
            if let Some(w) = want {
                assert!(out.contains(w), "{out}");
            }
        }
    }
}
