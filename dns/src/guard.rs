//! Who the DNS answers, and how fast. Cluster DNS is for the node's own processes and its pods;
//! answering the world makes it an open resolver, and an open resolver is a reflector: a spoofed
//! 60-byte question for a large answer sends the answer to the victim. So:
//!
//! - **Clients.** Only sources in [`Guard::allowed`]'s networks (loopback and the pod networks
//!   by default; `nodeless up` adds `--dns-allow`) are answered. Others get REFUSED — as BIND's
//!   `allow-query` and CoreDNS's `acl` do, so a misconfigured client learns why instead of
//!   timing out — a reply no larger than the question, so it amplifies nothing, and counted
//!   against the rate limit like any other reply.
//! - **Response-rate limiting** over UDP (TCP proves the source address), per client network
//!   (/24 for IPv4, /56 for IPv6, BIND RRL's defaults): a token bucket of `per_second` replies
//!   with bursts of `burst`. Past it, as BIND RRL's `slip 2`, every second reply is a bare
//!   truncated one (TC=1: a real client asks again over TCP and is answered) and the rest are
//!   dropped. Loopback is exempt by default (the node itself, and benchmarks from 127.0.0.1).
//!
//! Both are decided on a packet's source before it is decoded, with one clock read and at most
//! one lock per receive batch (none when every asker in it is exempt).

use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use rustc_hash::FxHashMap;

/// Response-rate limiting settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    /// Replies a second per client network; 0 turns limiting off.
    pub per_second: u32,
    /// Replies a client network may get at once after being quiet.
    pub burst: u32,
    /// Past the limit, every `slip`-th reply is a truncated one and the others are dropped
    /// (0: all dropped; 1: all truncated).
    pub slip: u32,
    /// Sources never limited.
    pub exempt: Vec<IpNet>,
}

impl Default for RateLimit {
    /// 1,000 replies a second, bursts of 2,000, per /24: a pod network's /24 of busy pods
    /// resolving with ndots:5 stays under it, while a reflection attack through one address is
    /// held to a trickle. Loopback exempt.
    fn default() -> RateLimit {
        RateLimit {
            per_second: 1000,
            burst: 2000,
            slip: 2,
            exempt: loopback(),
        }
    }
}

/// 127.0.0.0/8 and ::1.
pub fn loopback() -> Vec<IpNet> {
    vec![
        IpNet::V4(ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::new(127, 0, 0, 0), 8)),
        IpNet::V6(ipnet::Ipv6Net::new_assert(std::net::Ipv6Addr::LOCALHOST, 128)),
    ]
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuardError {
    #[error("the DNS rate limit's burst ({burst}) is below one second's worth ({per_second})")]
    Burst { per_second: u32, burst: u32 },
}

impl RateLimit {
    pub fn validate(&self) -> Result<(), GuardError> {
        if self.per_second > 0 && self.burst < self.per_second {
            return Err(GuardError::Burst {
                per_second: self.per_second,
                burst: self.burst,
            });
        }
        Ok(())
    }
}

/// What to do with a question from one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Answer it (REFUSED when the source is not allowed).
    Answer,
    /// Over the rate: a truncated reply only.
    Truncate,
    /// Over the rate: nothing.
    Drop,
}

/// Client networks tracked at most; past it (a spoofed flood from everywhere) the new ones share
/// one bucket.
const TRACKED: usize = 64 * 1024;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    limited: u32,
}

#[derive(Default)]
struct Buckets {
    by_network: FxHashMap<u128, Bucket>,
    overflow: Option<Bucket>,
}

/// The client filter and rate limiter, shared by every receive loop.
pub struct Guard {
    allow: Vec<IpNet>,
    limit: RateLimit,
    buckets: Mutex<Buckets>,
    limited: AtomicU64,
    /// Milliseconds since `epoch` when limiting was last logged.
    logged: AtomicU64,
    epoch: Instant,
}

/// One receive batch's view of the guard: the lock and the clock, taken once if at all.
pub struct Batch<'g> {
    guard: &'g Guard,
    held: Option<(std::sync::MutexGuard<'g, Buckets>, Instant)>,
}

impl Guard {
    /// Answer `allow` (an empty list: everyone), limited by `limit`.
    pub fn new(allow: Vec<IpNet>, limit: RateLimit) -> Guard {
        Guard {
            allow,
            limit,
            buckets: Mutex::default(),
            limited: AtomicU64::new(0),
            logged: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
        }
    }

    /// Whether `ip` may be answered (REFUSED otherwise).
    pub fn allowed(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }

    /// Replies held back by the rate limit since the start.
    pub fn limited(&self) -> u64 {
        self.limited.load(Ordering::Relaxed)
    }

    pub fn batch(&self) -> Batch<'_> {
        Batch {
            guard: self,
            held: None,
        }
    }
}

/// The client network `ip` is counted in: /24 or /56.
fn network(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => (1u128 << 64) | u128::from(u32::from(v4) & 0xffff_ff00),
        IpAddr::V6(v6) => u128::from(v6) & !((1u128 << 72) - 1),
    }
}

impl Batch<'_> {
    /// Whether to answer a question from `ip`, taking a token for it.
    pub fn verdict(&mut self, ip: IpAddr) -> Verdict {
        let g = self.guard;
        let limit = &g.limit;
        if limit.per_second == 0 {
            return Verdict::Answer;
        }
        let ip = ip.to_canonical();
        if limit.exempt.iter().any(|n| n.contains(&ip)) {
            return Verdict::Answer;
        }
        let (buckets, now) = self
            .held
            .get_or_insert_with(|| (g.buckets.lock().unwrap_or_else(|e| e.into_inner()), Instant::now()));
        let now = *now;
        let (rate, burst) = (f64::from(limit.per_second), f64::from(limit.burst));
        let fresh = Bucket {
            tokens: burst,
            at: now,
            limited: 0,
        };
        let key = network(ip);
        if !buckets.by_network.contains_key(&key) && buckets.by_network.len() >= TRACKED {
            // Forget the networks whose buckets have filled up again (quiet ones).
            let full_after = Duration::from_secs_f64(burst / rate);
            buckets
                .by_network
                .retain(|_, b| now.saturating_duration_since(b.at) < full_after);
        }
        let bucket = if buckets.by_network.len() < TRACKED || buckets.by_network.contains_key(&key) {
            buckets.by_network.entry(key).or_insert(fresh)
        } else {
            buckets.overflow.get_or_insert(fresh)
        };
        bucket.tokens = (bucket.tokens + now.saturating_duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            bucket.limited = 0;
            return Verdict::Answer;
        }
        bucket.limited = bucket.limited.wrapping_add(1);
        let verdict = if limit.slip > 0 && bucket.limited % limit.slip == 0 {
            Verdict::Truncate
        } else {
            Verdict::Drop
        };
        let n = g.limited.fetch_add(1, Ordering::Relaxed) + 1;
        let ms = now.saturating_duration_since(g.epoch).as_millis() as u64;
        let last = g.logged.load(Ordering::Relaxed);
        if (last == u64::MAX || ms >= last + 1000)
            && g.logged
                .compare_exchange(last, ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(client = %ip, per_second = limit.per_second, limited_so_far = n, "DNS response-rate limit: replies to this network truncated or dropped");
        }
        verdict
    }
}

/// A reply to the query in `packet` with no records: its header with QR set (opcode and RD
/// kept), `rcode`, TC if `truncated`, and its question when it has exactly one that is not
/// compressed. False (nothing to send) for a packet too short to be a query, or a response.
pub fn bare_reply(packet: &[u8], rcode: u8, truncated: bool, out: &mut Vec<u8>) -> bool {
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return false;
    }
    let question_end = (packet[4..6] == [0, 1]).then(|| question_end(packet)).flatten();
    out.clear();
    out.extend_from_slice(&packet[..12]);
    out[2] = 0x80 | (packet[2] & 0x79) | if truncated { 0x02 } else { 0 };
    out[3] = rcode & 0x0f;
    out[4..12].copy_from_slice(&[0, u8::from(question_end.is_some()), 0, 0, 0, 0, 0, 0]);
    if let Some(end) = question_end {
        out.extend_from_slice(&packet[12..end]);
    }
    true
}

/// Where the first question ends (name, type, class), if its name is written out in full.
fn question_end(packet: &[u8]) -> Option<usize> {
    let mut at = 12;
    loop {
        let len = usize::from(*packet.get(at)?);
        if len == 0 {
            return (at + 5 <= packet.len()).then_some(at + 5);
        }
        if len & 0xc0 != 0 {
            return None;
        }
        at += 1 + len;
    }
}

/// RCODE REFUSED.
pub const REFUSED: u8 = 5;

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_allowed_networks_are_answered() {
        let g = Guard::new(
            vec![
                "127.0.0.0/8".parse().unwrap(),
                "::1/128".parse().unwrap(),
                "10.88.0.0/16".parse().unwrap(),
            ],
            RateLimit::default(),
        );
        for yes in ["127.0.0.1", "127.10.0.1", "::1", "10.88.3.4", "::ffff:10.88.0.9"] {
            assert!(g.allowed(ip(yes)), "{yes}");
        }
        for no in ["10.89.0.1", "192.0.2.1", "fd00::1", "::ffff:192.0.2.1"] {
            assert!(!g.allowed(ip(no)), "{no}");
        }
        assert!(
            Guard::new(Vec::new(), RateLimit::default()).allowed(ip("192.0.2.1")),
            "an empty list allows everyone"
        );
    }

    #[test]
    fn a_network_over_its_rate_gets_every_second_reply_truncated_and_the_rest_dropped() {
        let g = Guard::new(
            Vec::new(),
            RateLimit {
                per_second: 10,
                burst: 20,
                slip: 2,
                exempt: loopback(),
            },
        );
        let mut b = g.batch();
        let verdicts: Vec<Verdict> = (0..26)
            .map(|i| b.verdict(ip(&format!("192.0.2.{}", i % 200))))
            .collect();
        assert!(
            verdicts[..20].iter().all(|v| *v == Verdict::Answer),
            "the burst: {verdicts:?}"
        );
        assert_eq!(
            &verdicts[20..],
            &[
                Verdict::Drop,
                Verdict::Truncate,
                Verdict::Drop,
                Verdict::Truncate,
                Verdict::Drop,
                Verdict::Truncate
            ]
        );
        assert_eq!(g.limited(), 6);
        // Another /24, loopback and IPv6 /56s are counted on their own.
        assert_eq!(b.verdict(ip("192.0.3.1")), Verdict::Answer);
        for _ in 0..100 {
            assert_eq!(b.verdict(ip("127.0.0.1")), Verdict::Answer);
        }
        assert_eq!(network(ip("2001:db8:0:1::1")), network(ip("2001:db8:0:ff::2")));
        assert_ne!(network(ip("2001:db8:0:100::1")), network(ip("2001:db8:0:1::1")));
        assert_eq!(network(ip("::ffff:192.0.2.9")), network(ip("192.0.2.200")));
        drop(b);
        // Tokens come back with time.
        std::thread::sleep(Duration::from_millis(250));
        let mut b = g.batch();
        assert_eq!(b.verdict(ip("192.0.2.1")), Verdict::Answer);
        // Off.
        let off = Guard::new(
            Vec::new(),
            RateLimit {
                per_second: 0,
                ..RateLimit::default()
            },
        );
        let mut b = off.batch();
        assert!((0..10_000).all(|_| b.verdict(ip("192.0.2.1")) == Verdict::Answer));
    }

    #[test]
    fn bare_replies_keep_the_id_and_question_and_set_the_code() {
        let mut q = vec![0xab, 0xcd, 0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, 1];
        q.extend_from_slice(&[1, b'a', 0, 0, 1, 0, 1]);
        q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        let mut out = Vec::new();
        assert!(bare_reply(&q, REFUSED, false, &mut out));
        assert_eq!(
            out,
            [0xab, 0xcd, 0x81, 5, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1]
        );
        assert!(bare_reply(&q, 0, true, &mut out));
        assert_eq!(&out[2..4], &[0x83, 0]);
        // No reply to a response; a header alone for a question that cannot be read.
        let mut r = q.clone();
        r[2] |= 0x80;
        assert!(!bare_reply(&r, REFUSED, false, &mut out));
        assert!(bare_reply(&q[..14], REFUSED, false, &mut out));
        assert_eq!(out.len(), 12);
        assert_eq!(&out[4..6], &[0, 0]);
    }

    /// A query for `dns-version.cluster.local` TXT with this ID.
    fn query(id: u16) -> Vec<u8> {
        let mut p = id.to_be_bytes().to_vec();
        p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for l in ["dns-version", "cluster", "local"] {
            p.push(l.len() as u8);
            p.extend_from_slice(l.as_bytes());
        }
        p.extend_from_slice(&[0, 0, 16, 0, 1]);
        p
    }

    /// The server, answering 127.0.0.1 only, limited to 20 replies a second with no exemption.
    async fn server() -> (crate::RunningDns, std::net::SocketAddr) {
        let mut cfg = crate::DnsConfig::new(vec!["127.0.0.1:0".parse().unwrap()], Vec::new());
        cfg.allow = vec!["127.0.0.1/32".parse().unwrap()];
        cfg.rate_limit = RateLimit {
            per_second: 20,
            burst: 20,
            slip: 2,
            exempt: Vec::new(),
        };
        let dns = crate::start(cfg, None).await.unwrap();
        let addr = dns.addrs[0];
        (dns, addr)
    }

    #[tokio::test]
    async fn askers_outside_the_allowed_networks_get_refused_over_udp_and_tcp() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (dns, addr) = server().await;
        let ask = |from: &'static str| async move {
            let s = tokio::net::UdpSocket::bind(from).await.unwrap();
            s.send_to(&query(7), addr).await.unwrap();
            let mut buf = [0u8; 512];
            let n = tokio::time::timeout(Duration::from_secs(2), s.recv(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
            buf[..n].to_vec()
        };
        let allowed = ask("127.0.0.1:0").await;
        assert_eq!(
            (allowed[3] & 0x0f, allowed[7]),
            (0, 1),
            "NOERROR with the dns-version record"
        );
        let refused = ask("127.0.0.2:0").await;
        assert_eq!(&refused[..2], &[0, 7]);
        assert_eq!(refused[3] & 0x0f, REFUSED, "REFUSED from outside the allowed networks");
        assert_eq!(&refused[6..12], &[0, 0, 0, 0, 0, 0], "no records");
        // TCP: the same.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut c = sock.connect(addr).await.unwrap();
        let q = query(9);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        c.write_all(&framed).await.unwrap();
        let mut len = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut len))
            .await
            .expect("a TCP answer")
            .unwrap();
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        c.read_exact(&mut reply).await.unwrap();
        assert_eq!((&reply[..2], reply[3] & 0x0f), (&[0u8, 9][..], REFUSED));
        dns.stop();
    }

    #[tokio::test]
    async fn a_flood_above_the_rate_is_truncated_or_dropped() {
        let (dns, addr) = server().await;
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for id in 0..200u16 {
            s.send_to(&query(id), addr).await.unwrap();
        }
        let (mut full, mut truncated) = (0, 0);
        let mut buf = [0u8; 512];
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), s.recv(&mut buf)).await {
            if buf[2] & 0x02 != 0 {
                assert_eq!(&buf[6..8], &[0, 0], "a truncated reply carries no answer");
                truncated += 1;
            } else {
                assert!(n > 12);
                full += 1;
            }
        }
        // 200 in well under a second: the burst of 20 (and the tokens a few milliseconds
        // bring), then every second reply truncated and the rest dropped.
        assert!((20..=40).contains(&full), "{full} full answers");
        assert!(
            truncated >= 60 && full + truncated < 140,
            "{truncated} truncated, {full} full"
        );
        assert!(dns.shared.guard.limited() >= 150);
        // Tokens come back with time.
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.send_to(&query(999), addr).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(2), s.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 12 && buf[2] & 0x02 == 0, "answered again after a pause");
        dns.stop();
    }

    #[test]
    fn a_burst_below_the_rate_is_refused() {
        assert!(RateLimit::default().validate().is_ok());
        assert!(
            RateLimit {
                per_second: 100,
                burst: 10,
                ..RateLimit::default()
            }
            .validate()
            .is_err()
        );
    }
}
