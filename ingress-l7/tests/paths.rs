//! The HTTP/1.1 and HTTP/2 paths against a scripted HTTP/1.1 endpoint, over in-memory client
//! connections: keep-alive reuse of upstream connections, bodies by length, chunked and delimited
//! by close (passed through to HTTP/1.1 clients, decoded for HTTP/2 ones), request bodies by
//! length and (from HTTP/2) of unknown length, HEAD, pipelining, the ingress's own answers, and
//! the hand-over to pingora of what the HTTP/1.1 path does not take; and what a slow or
//! hostile client gets: cut off when idle or sending its head slowly (slowloris), 413 for a body
//! over the default limit, 400 for a `Content-Length` that is not plain digits, conflicting or
//! beside `Transfer-Encoding`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Buf, Bytes, BytesMut};
use nodeless_ingress_l7::front::{End, Front};
use nodeless_ingress_l7::limits::ClientLimits;
use nodeless_ingress_l7::metrics::Metrics;
use nodeless_ingress_l7::routes::{self, Table};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).unwrap())
}

/// A table sending every request for host `h` to one endpoint.
fn table(endpoint: SocketAddr) -> Table {
    let class = obj(
        json!({"metadata": {"name": "nodeless", "annotations": {nodeless_types::keys::DEFAULT_INGRESS_CLASS: "true"}}, "spec": {"controller": "nodeless.io/ingress-l7"}}),
    );
    let service = obj(
        json!({"metadata": {"name": "up", "namespace": "default"}, "spec": {"ports": [{"name": "http", "port": 80}]}}),
    );
    let slice = obj(
        json!({"metadata": {"name": "up-x", "namespace": "default", "labels": {nodeless_types::keys::SERVICE_NAME: "up"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": endpoint.port(), "protocol": "TCP"}], "endpoints": [{"addresses": [endpoint.ip().to_string()]}]}),
    );
    let ingress = obj(
        json!({"metadata": {"name": "i", "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"rules": [{"host": "h", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "up", "port": {"number": 80}}}}]}}]}}),
    );
    routes::build(&[ingress], &[class], &[service], &[slice], &Table::default())
}

/// The scripted endpoint: answers by path, and counts the connections it accepted.
/// - `/cl`: "hello" by Content-Length;
/// - `/chunked`: "hello world" in two chunks and a trailer;
/// - `/close`: "bye" delimited by closing the connection;
/// - anything else: the request's head and body, by Content-Length.
async fn endpoint() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(answer_requests(conn));
        }
    });
    (addr, accepted)
}

async fn answer_requests(mut conn: TcpStream) {
    let mut buf = BytesMut::new();
    loop {
        let (head_len, path, method, length, chunked, head_text) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut fields);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let field = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).to_string())
                };
                let length = field("content-length").map(|v| v.parse::<usize>().unwrap());
                let chunked = field("transfer-encoding").is_some_and(|v| v.contains("chunked"));
                break (
                    n,
                    req.path.unwrap().to_string(),
                    req.method.unwrap().to_string(),
                    length,
                    chunked,
                    String::from_utf8_lossy(&buf[..n]).to_string(),
                );
            }
            if conn.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
        };
        buf.advance(head_len);
        // The body: by length, or chunked (decoded here).
        let mut body = Vec::new();
        if let Some(n) = length {
            while buf.len() < n {
                if conn.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
            }
            body.extend_from_slice(&buf.split_to(n));
        } else if chunked {
            loop {
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text
                    .find("0\r\n\r\n")
                    .filter(|&e| e == 0 || text[..e].ends_with("\r\n"))
                {
                    let mut rest = &text[..end];
                    while let Some((size, after)) = rest.split_once("\r\n") {
                        let size = usize::from_str_radix(size, 16).unwrap();
                        body.extend_from_slice(&after.as_bytes()[..size]);
                        rest = &after[size + 2..];
                    }
                    buf.advance(end + 5);
                    break;
                }
                if conn.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
            }
        }
        let reply: Vec<u8> = match path.as_str() {
            "/cl" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n".to_vec(),
            "/close" => {
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\n\r\nbye").await;
                return;
            }
            _ => {
                let mut echo = format!("{method} {head_text}").into_bytes();
                echo.extend_from_slice(b"body=");
                echo.extend_from_slice(&body);
                let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", echo.len()).into_bytes();
                if method != "HEAD" {
                    r.extend_from_slice(&echo);
                }
                r
            }
        };
        if conn.write_all(&reply).await.is_err() {
            return;
        }
    }
}

fn front(endpoint: SocketAddr) -> Arc<Front> {
    Arc::new(Front {
        table: Arc::new(ArcSwap::from_pointee(table(endpoint))),
        metrics: Arc::new(Metrics::new(0)),
        scheme: "http",
        internal: false,
        alt_svc: None,
        h2c: Default::default(),
        limits: Default::default(),
    })
}

const CLIENT: &str = "192.0.2.7:5555";

/// An HTTP/1.1 connection to `front`; the task ends with how the path let it go.
fn connect_h1(front: Arc<Front>) -> (DuplexStream, tokio::task::JoinHandle<Option<Vec<u8>>>) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let (_tx, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let _keep = _tx;
        match front.serve_h1(server, CLIENT.parse().unwrap(), &shutdown).await {
            End::Closed => None,
            End::HandOff(_, replay) => Some(replay.to_vec()),
        }
    });
    (client, task)
}

/// Read one response (by Content-Length, chunked up to its end, or to the end of the stream)
/// from `c`, with `buf` keeping what follows it.
async fn response(c: &mut DuplexStream, buf: &mut BytesMut) -> String {
    loop {
        let text = String::from_utf8_lossy(buf).to_string();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let head = &text[..head_end];
            let length = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.parse::<usize>().unwrap())
            });
            let total = match length {
                Some(n) => Some(head_end + 4 + n),
                _ if head.to_ascii_lowercase().contains("transfer-encoding: chunked") => text
                    .find("\r\n0\r\n")
                    .and_then(|z| text[z..].find("\r\n\r\n").map(|e| z + e + 4)),
                _ => None,
            };
            if let Some(total) = total.filter(|&t| t <= buf.len()) {
                return String::from_utf8_lossy(&buf.split_to(total)).to_string();
            }
        }
        if c.read_buf(buf).await.unwrap() == 0 {
            return String::from_utf8_lossy(&buf.split()).to_string();
        }
    }
}

#[tokio::test]
async fn http1_requests_through_kept_alive_connections() {
    let (addr, accepted) = endpoint().await;
    let (mut c, task) = connect_h1(front(addr));
    let mut buf = BytesMut::new();

    // A GET with the forwarding fields, then others on the same upstream connection.
    c.write_all(b"GET /echo?q=1 HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.1.1.1\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let r = response(&mut c, &mut buf).await;
    assert!(
        r.starts_with("HTTP/1.1 200 OK\r\n") && r.to_ascii_lowercase().contains("x-request-id: "),
        "{r}"
    );
    assert!(r.contains("GET GET /echo?q=1 HTTP/1.1\r\nHost: h\r\n"), "{r}");
    assert!(
        r.contains(
            "X-Forwarded-For: 10.1.1.1, 192.0.2.7\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nX-Request-Id: "
        ),
        "{r}"
    );
    assert!(
        !r.contains("Connection: keep-alive\r\nX"),
        "hop-by-hop fields are not passed on: {r}"
    );

    c.write_all(b"GET /cl HTTP/1.1\r\nHost: h\r\nX-Request-Id: abc\r\n\r\n")
        .await
        .unwrap();
    let r = response(&mut c, &mut buf).await;
    assert!(
        r.starts_with("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Request-Id: abc\r\n\r\nhello"),
        "{r}"
    );

    // A chunked response passes through as it is, trailer and all.
    c.write_all(b"GET /chunked HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
    let r = response(&mut c, &mut buf).await;
    assert!(
        r.ends_with("\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"),
        "{r}"
    );

    // A POST with a body by length, and two pipelined requests in one write.
    c.write_all(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world")
        .await
        .unwrap();
    let r = response(&mut c, &mut buf).await;
    assert!(
        r.contains("POST POST /echo HTTP/1.1\r\n") && r.ends_with("body=hello world"),
        "{r}"
    );
    c.write_all(b"GET /cl HTTP/1.1\r\nHost: h\r\n\r\nHEAD /echo HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let r = response(&mut c, &mut buf).await;
    assert!(r.ends_with("\r\n\r\nhello"), "{r}");
    // HEAD: the length of a body that is not sent.
    loop {
        if String::from_utf8_lossy(&buf).contains("\r\n\r\n") {
            break;
        }
        c.read_buf(&mut buf).await.unwrap();
    }
    let r = String::from_utf8_lossy(&buf.split()).to_string();
    assert!(
        r.starts_with("HTTP/1.1 200 OK\r\nContent-Length: ") && r.ends_with("\r\n\r\n"),
        "{r}"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection for all of them"
    );

    // The ingress's own answers: no rule (404), and a malformed head (400, then closed).
    c.write_all(b"GET / HTTP/1.1\r\nHost: nowhere\r\n\r\n").await.unwrap();
    let r = response(&mut c, &mut buf).await;
    assert!(
        r.starts_with("HTTP/1.1 404 Not Found\r\n") && r.contains("no ingress rule matches host \"nowhere\""),
        "{r}"
    );

    // A response delimited by close: passed on, and the client's connection closes after it.
    c.write_all(b"GET /close HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
    let r = response(&mut c, &mut buf).await;
    assert!(
        r.starts_with("HTTP/1.1 200 OK\r\n") && r.contains("Connection: close\r\n") && r.ends_with("\r\n\r\nbye"),
        "{r}"
    );
    assert_eq!(task.await.unwrap(), None, "closed, not handed over");

    let (mut c, task) = connect_h1(front(addr));
    c.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n")
        .await
        .unwrap();
    let r = response(&mut c, &mut buf).await;
    assert!(
        r.starts_with("HTTP/1.1 400 Bad Request\r\n") && r.contains("Connection: close"),
        "{r}"
    );
    assert_eq!(task.await.unwrap(), None);
}

#[tokio::test]
async fn what_the_http1_path_does_not_take_goes_to_pingora_unread() {
    let (addr, _) = endpoint().await;
    for request in [
        &b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET /echo HTTP/1.0\r\nHost: h\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
    ] {
        let (mut c, task) = connect_h1(front(addr));
        c.write_all(request).await.unwrap();
        let replay = task.await.unwrap().expect("handed over");
        assert_eq!(replay, request, "the request is handed over whole, unread");
    }
}

#[tokio::test]
async fn http2_requests_become_http1_to_the_endpoint() {
    let (addr, accepted) = endpoint().await;
    let f = front(addr);
    let (client, server) = tokio::io::duplex(1 << 20);
    let (_tx, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move { f.serve_h2(server, CLIENT.parse().unwrap(), &shutdown).await });
    let (h2, conn) = h2::client::handshake(client).await.unwrap();
    tokio::spawn(conn);

    async fn call(
        h2: &h2::client::SendRequest<Bytes>,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> (u16, http::HeaderMap, String) {
        let mut h2 = h2.clone().ready().await.unwrap();
        let req = http::Request::builder()
            .method(method)
            .uri(format!("http://h{path}"))
            .body(())
            .unwrap();
        let (resp, mut send) = h2.send_request(req, body.is_none()).unwrap();
        if let Some(b) = body {
            // Two DATA frames and no declared length: chunked to the endpoint.
            let (a, z) = b.split_at(b.len() / 2);
            send.send_data(Bytes::copy_from_slice(a), false).unwrap();
            send.send_data(Bytes::copy_from_slice(z), true).unwrap();
        }
        let resp = resp.await.unwrap();
        let (parts, mut body) = resp.into_parts();
        let mut text = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            text.extend_from_slice(&chunk);
        }
        (
            parts.status.as_u16(),
            parts.headers,
            String::from_utf8_lossy(&text).to_string(),
        )
    }

    let (status, headers, text) = call(&h2, "GET", "/echo?x=1", None).await;
    assert_eq!(status, 200);
    assert!(headers.contains_key("x-request-id"));
    assert!(
        text.contains("GET GET /echo?x=1 HTTP/1.1\r\nHost: h\r\n") && text.contains("X-Forwarded-Proto: http\r\n"),
        "{text}"
    );
    let (_, _, text) = call(&h2, "POST", "/echo", Some(b"hello world")).await;
    assert!(
        text.contains("Transfer-Encoding: chunked\r\n") && text.ends_with("body=hello world"),
        "{text}"
    );
    // A chunked response is decoded into DATA frames.
    let (status, headers, text) = call(&h2, "GET", "/chunked", None).await;
    assert_eq!((status, text.as_str()), (200, "hello world"));
    assert!(!headers.contains_key("transfer-encoding"));
    let (_, _, text) = call(&h2, "GET", "/cl", None).await;
    assert_eq!(text, "hello");
    // Concurrent streams.
    let all = futures::future::join_all((0..20).map(|_| call(&h2, "GET", "/cl", None))).await;
    assert!(all.iter().all(|(s, _, t)| *s == 200 && t == "hello"));
    assert!(
        accepted.load(Ordering::SeqCst) <= 20,
        "upstream connections are kept and reused"
    );
    let (_, _, text) = call(&h2, "GET", "/close", None).await;
    assert_eq!(text, "bye");
    let (status, _, text) = call(&h2, "GET", "/", None).await;
    assert!(status == 200 && text.contains("GET GET / HTTP/1.1"), "{text}");
}

/// `front` with short client limits: 1 s for a head, 1 s idle.
fn impatient(endpoint: SocketAddr) -> Arc<Front> {
    let mut f = Arc::into_inner(front(endpoint)).unwrap();
    f.limits = ClientLimits {
        header: Duration::from_secs(1),
        idle: Duration::from_secs(1),
        ..ClientLimits::default()
    };
    Arc::new(f)
}

/// How long until the server side closes `c` (reads until end of stream), at most `limit`.
async fn closed_within(c: &mut DuplexStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut sink = Vec::new();
    match tokio::time::timeout(limit, c.read_to_end(&mut sink)).await {
        Ok(_) => Some(started.elapsed()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off() {
    let (addr, accepted) = endpoint().await;
    // Slowloris: a head begun and then fed a byte every 200 ms never completes; it is cut off at
    // the header limit, not kept alive by the trickle.
    let (mut c, task) = connect_h1(impatient(addr));
    c.write_all(b"GET /cl HTTP/1.1\r\nHost: h\r\n").await.unwrap();
    let (mut r, mut w) = tokio::io::split(c);
    let trickle = tokio::spawn(async move {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if w.write_all(b"X").await.is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut sink))
        .await
        .expect("a slowloris head is cut off");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "cut off after {took:?}"
    );
    assert!(
        sink.is_empty(),
        "no answer to half a head: {:?}",
        String::from_utf8_lossy(&sink)
    );
    assert_eq!(task.await.unwrap(), None);
    trickle.abort();

    // A connection that sends nothing, and one idle after a response: closed at the idle limit.
    let (mut c, task) = connect_h1(impatient(addr));
    let took = closed_within(&mut c, Duration::from_secs(5))
        .await
        .expect("an idle connection is closed");
    assert!(took >= Duration::from_millis(800), "{took:?}");
    assert_eq!(task.await.unwrap(), None);
    let (mut c, task) = connect_h1(impatient(addr));
    let mut buf = BytesMut::new();
    c.write_all(b"GET /cl HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
    assert!(response(&mut c, &mut buf).await.ends_with("hello"));
    closed_within(&mut c, Duration::from_secs(5))
        .await
        .expect("idle after a response, closed");
    assert_eq!(task.await.unwrap(), None);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "only the whole request reached the endpoint"
    );
}

#[tokio::test]
async fn a_body_over_the_default_limit_gets_413() {
    let (addr, accepted) = endpoint().await;
    let (mut c, task) = connect_h1(front(addr));
    let mut buf = BytesMut::new();
    let over = routes::DEFAULT_BODY_LIMIT + 1;
    c.write_all(format!("POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: {over}\r\n\r\nabc").as_bytes())
        .await
        .unwrap();
    let r = response(&mut c, &mut buf).await;
    assert!(
        r.starts_with("HTTP/1.1 413 Payload Too Large\r\n")
            && r.contains("Connection: close")
            && r.contains("limit of 67108864 bytes"),
        "{r}"
    );
    assert_eq!(task.await.unwrap(), None, "closed: the body was not read");
    // At the limit it goes through (declared; the endpoint gets the head).
    let (mut c, _task) = connect_h1(front(addr));
    c.write_all(
        format!(
            "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
            routes::DEFAULT_BODY_LIMIT
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while accepted.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a body at the limit is forwarded");
}

#[tokio::test]
async fn content_length_is_digits_only_and_never_beside_transfer_encoding() {
    let (addr, accepted) = endpoint().await;
    for head in [
        "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello",
        "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\nhello",
        "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length:  5 ,6\r\n\r\nhello",
        "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
        // Framed two ways, in either order (these went to pingora before).
        "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        // A final coding other than chunked, and chunked in HTTP/1.0.
        "POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        "POST /echo HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // Handed to pingora otherwise, but not with a bad length.
        "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: +0\r\n\r\n",
    ] {
        let (mut c, task) = connect_h1(front(addr));
        let mut buf = BytesMut::new();
        c.write_all(head.as_bytes()).await.unwrap();
        let r = response(&mut c, &mut buf).await;
        assert!(
            r.starts_with("HTTP/1.1 400 Bad Request\r\n") && r.contains("Connection: close"),
            "{head:?}: {r}"
        );
        assert_eq!(task.await.unwrap(), None, "{head:?}: closed, not handed over");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "none reached the endpoint");
    // The same length twice is one length.
    let (mut c, _task) = connect_h1(front(addr));
    let mut buf = BytesMut::new();
    c.write_all(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let r = response(&mut c, &mut buf).await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("body=hello"), "{r}");
}
