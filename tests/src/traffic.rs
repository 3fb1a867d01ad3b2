//! Traffic between two network namespaces for the benchmarks: TCP throughput with iperf3 and a
//! 1-byte TCP request/response rate (ping-pong over one connection), client and server each
//! pinned to a core (on two cores, then both on one). The request/response ends run as the
//! benchmark binary itself (`--rr-server`, `--rr-client`), started inside the namespaces.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The port the request/response server listens on.
const RR_PORT: u16 = 5301;
/// The port iperf3 listens on.
const IPERF_PORT: u16 = 5201;

/// Serve 1-byte request/response on `port` until the client goes (run inside a namespace).
pub fn rr_server(port: u16) -> Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port))?;
    println!("ready");
    std::io::stdout().flush()?;
    let (mut s, _) = l.accept()?;
    s.set_nodelay(true)?;
    let mut b = [0u8; 1];
    while s.read_exact(&mut b).is_ok() {
        s.write_all(&b)?;
    }
    Ok(())
}

/// Ping-pong one byte with `addr` for `seconds`; print the exchanges per second.
pub fn rr_client(addr: &str, seconds: u64) -> Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut b = [7u8; 1];
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut n = 0u64;
    let start = Instant::now();
    while Instant::now() < deadline {
        s.write_all(&b)?;
        s.read_exact(&mut b)?;
        n += 1;
    }
    println!("{:.0}", n as f64 / start.elapsed().as_secs_f64());
    Ok(())
}

/// When the benchmark binary was started as one end of a request/response exchange
/// (`--rr-server PORT` or `--rr-client ADDR`), play that end and give its result.
pub fn play_end(server: Option<u16>, client: Option<&str>, seconds: u64) -> Option<Result<()>> {
    match (server, client) {
        (Some(port), _) => Some(rr_server(port)),
        (None, Some(addr)) => Some(rr_client(addr, seconds)),
        (None, None) => None,
    }
}

/// The median of each field over the rounds.
pub fn medians(rounds: &[[f64; 3]]) -> [f64; 3] {
    let median = |i: usize| {
        let mut v: Vec<f64> = rounds.iter().map(|r| r[i]).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    [median(0), median(1), median(2)]
}

/// Runs a program in one end's network namespace.
pub type Inside<'a> = &'a dyn Fn(&str) -> Command;

fn request_response(
    me: &Path,
    client: Inside<'_>,
    server: Inside<'_>,
    server_ip: Ipv4Addr,
    seconds: u64,
    cores: (&str, &str),
) -> Result<f64> {
    let me = me.to_str().unwrap_or_default();
    let mut srv = server("taskset")
        .args(["-c", cores.1, me, "--rr-server", &RR_PORT.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut ready = [0u8; 6];
    srv.stdout
        .as_mut()
        .context("rr server stdout")?
        .read_exact(&mut ready)?;
    let out = client("taskset")
        .args([
            "-c",
            cores.0,
            me,
            "--rr-client",
            &format!("{server_ip}:{RR_PORT}"),
            "--seconds",
            &seconds.to_string(),
        ])
        .output()?;
    let _ = srv.kill();
    let _ = srv.wait();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("rr client: {}", String::from_utf8_lossy(&out.stderr)))
}

/// TCP throughput (Gbit/s) from `client` to `server`, and request/response rates (per second)
/// with client and server on two cores and on one. Each process keeps to its core (the same
/// for every network measured): the scheduler moving them about was most of the spread between
/// rounds.
pub fn measure(
    me: &Path,
    client: Inside<'_>,
    server: Inside<'_>,
    server_ip: Ipv4Addr,
    seconds: u64,
) -> Result<[f64; 3]> {
    let port = IPERF_PORT.to_string();
    let mut srv = server("taskset")
        .args(["-c", "1", "iperf3", "-s", "-1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 (apt-get install iperf3)")?;
    std::thread::sleep(Duration::from_millis(300));
    let out = client("taskset")
        .args([
            "-c",
            "0",
            "iperf3",
            "-c",
            &server_ip.to_string(),
            "-p",
            &port,
            "-t",
            &seconds.to_string(),
            "-J",
        ])
        .output()?;
    let _ = srv.kill();
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 output")?;
    let gbps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 gave no rate")?
        / 1e9;
    let two = request_response(me, client, server, server_ip, seconds, ("0", "1"))?;
    let one = request_response(me, client, server, server_ip, seconds, ("0", "0"))?;
    Ok([gbps, two, one])
}
