//! The test image's HTTP echo server: answers every request with the pod's name, the request's
//! path and its headers. `/status/<code>` answers with that status (for probes that must fail),
//! `/sleep/<ms>` after that long (at most a minute: for concurrency limits and timeouts).
//! The same port over UDP answers each datagram with the pod's name and the datagram, and
//! `WS_PORT` (8081) is a websocket echo, and `GRPC_PORT` (8082) serves gRPC's standard health
//! service (`grpc.health.v1.Health`, tonic) over HTTP/2 without TLS: `Check` and the streaming
//! `Watch`, with the service `echo` SERVING and any other name NOT_FOUND.
//! It exits on SIGTERM, as a well-behaved server does (as PID 1 it would otherwise ignore it).
//! The image holds this one binary and the C library.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

fn handle(stream: TcpStream, pod: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut headers = Vec::new();
        let mut content_length = 0usize;
        let mut close = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end().to_string();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
            headers.push(h);
        }
        let mut body_in = vec![0u8; content_length];
        std::io::Read::read_exact(&mut reader, &mut body_in)?;
        let code: u16 = path
            .strip_prefix("/status/")
            .and_then(|c| c.parse().ok())
            .unwrap_or(200);
        if let Some(ms) = path.strip_prefix("/sleep/").and_then(|m| m.parse::<u64>().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms.min(60_000)));
        }
        let mut body = format!("pod: {pod}\npath: {path}\n");
        for h in &headers {
            body.push_str(&format!("header: {h}\n"));
        }
        // One write for the whole response: written piece by piece (as `write!` on the socket
        // does), the pieces after the first wait, by Nagle's rule, for the client's delayed ACK
        // (40 ms here).
        let response = format!(
            "HTTP/1.1 {code} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        out.write_all(response.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}

/// `echo-server get http://<host>:<port><path>`: one GET through the C library's resolver (so
/// resolv.conf's search path and ndots apply); prints the body, exits 1 on any failure.
fn get(url: &str) -> ! {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let fail = |what: String| -> ! {
        eprintln!("echo-server get: {what}");
        std::process::exit(1)
    };
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| fail(format!("{url}: only http:// URLs")));
    let (hostport, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let addrs: Vec<_> = hostport
        .to_socket_addrs()
        .unwrap_or_else(|e| fail(format!("resolving {hostport}: {e}")))
        .collect();
    let mut last_error = String::from("no address");
    let mut stream = addrs
        .iter()
        .find_map(|a| {
            std::net::TcpStream::connect_timeout(a, std::time::Duration::from_secs(5))
                .map_err(|e| last_error = e.to_string())
                .ok()
        })
        .unwrap_or_else(|| fail(format!("connecting to {addrs:?}: {last_error}")));
    let host = hostport.split(':').next().unwrap_or(hostport);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| fail(e.to_string()));
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .unwrap_or_else(|e| fail(e.to_string()));
    print!("{}", response.split_once("\r\n\r\n").map_or("", |(_, body)| body));
    std::process::exit(0)
}

/// `echo-server udp <ip>:<port> <message>`: one datagram sent with sendto (not connected);
/// prints the address the answer came from, then the answer.
fn udp(to: &str, message: &str) -> ! {
    let fail = |what: String| -> ! {
        eprintln!("echo-server udp: {what}");
        std::process::exit(1)
    };
    let to: std::net::SocketAddr = to.parse().unwrap_or_else(|e| fail(format!("{to}: {e}")));
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap_or_else(|e| fail(e.to_string()));
    sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap_or_else(|e| fail(e.to_string()));
    sock.send_to(message.as_bytes(), to)
        .unwrap_or_else(|e| fail(format!("sending to {to}: {e}")));
    let mut buf = [0u8; 2048];
    let (n, from) = sock
        .recv_from(&mut buf)
        .unwrap_or_else(|e| fail(format!("waiting for {to}: {e}")));
    println!("from: {from}");
    print!("{}", String::from_utf8_lossy(&buf[..n]));
    std::process::exit(0)
}

fn serve_udp(port: &str, pod: String) {
    let Ok(sock) = std::net::UdpSocket::bind(format!("0.0.0.0:{port}")) else {
        eprintln!("echo-server: UDP port {port} is taken; serving TCP only");
        return;
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let reply = format!("pod: {pod}\n{}\n", String::from_utf8_lossy(&buf[..n]));
            let _ = sock.send_to(reply.as_bytes(), from);
        }
    });
}

/// A websocket echo on `WS_PORT` (default 8081): each text or binary message comes back as text,
/// `<pod>: <message>`.
fn serve_websocket(pod: String) {
    let port = std::env::var("WS_PORT").unwrap_or_else(|_| "8081".into());
    let Ok(listener) = TcpListener::bind(format!("0.0.0.0:{port}")) else {
        eprintln!("echo-server: websocket port {port} is taken; no websocket echo");
        return;
    };
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let pod = pod.clone();
            std::thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(stream) else {
                    return;
                };
                while let Ok(msg) = ws.read() {
                    let text = match msg {
                        tungstenite::Message::Text(t) => t.to_string(),
                        tungstenite::Message::Binary(b) => String::from_utf8_lossy(&b).to_string(),
                        tungstenite::Message::Close(_) => break,
                        _ => continue,
                    };
                    if ws.send(tungstenite::Message::text(format!("{pod}: {text}"))).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// gRPC's health service on `GRPC_PORT` (default 8082), on a thread of its own.
fn serve_grpc() {
    let port = std::env::var("GRPC_PORT").unwrap_or_else(|_| "8082".into());
    let Ok(listener) = std::net::TcpListener::bind(format!("0.0.0.0:{port}")) else {
        eprintln!("echo-server: gRPC port {port} is taken; no gRPC");
        return;
    };
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        rt.block_on(async move {
            let (reporter, service) = tonic_health::server::health_reporter();
            reporter
                .set_service_status("echo", tonic_health::ServingStatus::Serving)
                .await;
            let Ok(listener) = listener
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(listener))
            else {
                return;
            };
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
            {
                eprintln!("echo-server: gRPC: {e}");
            }
        });
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("get") => get(args.get(2).map_or("", String::as_str)),
        Some("udp") => udp(
            args.get(2).map_or("", String::as_str),
            args.get(3).map_or("", String::as_str),
        ),
        _ => {}
    }
    if let Ok(mut signals) = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM]) {
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                println!("echo-server: SIGTERM, exiting");
                std::process::exit(0);
            }
        });
    }
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let pod = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default()
        .trim()
        .to_string();
    let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("echo-server: binding port {port}: {e}");
            std::process::exit(1);
        }
    };
    serve_udp(&port, pod.clone());
    serve_websocket(pod.clone());
    serve_grpc();
    println!("echo-server: pod {pod} listening on :{port}");
    for stream in listener.incoming().flatten() {
        let pod = pod.clone();
        std::thread::spawn(move || {
            let _ = handle(stream, &pod);
        });
    }
}
