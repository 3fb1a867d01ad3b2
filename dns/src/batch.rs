//! Many datagrams per system call: recvmmsg(2) and sendmmsg(2) on a Tokio UDP socket. Under
//! load most of a DNS server's time goes to the kernel's per-call costs; a receive loop that
//! takes every queued query at once and sends the answers it has at once pays them once per
//! batch.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::Range;
use std::os::fd::AsRawFd;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams per call.
pub const BATCH: usize = 32;
/// Room for one datagram; a longer query is cut, flagged and dropped.
const SLOT: usize = 4096;

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// Received datagrams.
pub struct Inbox {
    bufs: Vec<u8>,
    got: Vec<(usize, SocketAddr, usize)>,
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox {
            bufs: vec![0; BATCH * SLOT],
            got: Vec::with_capacity(BATCH),
        }
    }
}

impl Inbox {
    /// Wait for datagrams and take all that are queued, up to [`BATCH`]; how many.
    pub async fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        loop {
            socket.readable().await?;
            match socket.try_io(Interest::READABLE, || self.recv_now(socket)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }

    fn recv_now(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let Inbox { bufs, got } = self;
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = bufs.chunks_mut(SLOT).map(|c| [IoSliceMut::new(c)]).collect();
        let results = recvmmsg(
            socket.as_raw_fd(),
            &mut headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(io::Error::from)?;
        got.clear();
        for (slot, r) in results.enumerate() {
            if r.flags.contains(MsgFlags::MSG_TRUNC) {
                continue;
            }
            if let Some(from) = r.address.as_ref().and_then(to_std) {
                got.push((slot, from, r.bytes));
            }
        }
        Ok(got.len())
    }

    /// The `i`th datagram taken and who sent it.
    pub fn packet(&self, i: usize) -> (&[u8], SocketAddr) {
        let (slot, from, len) = self.got[i];
        (&self.bufs[slot * SLOT..slot * SLOT + len], from)
    }
}

/// Datagrams to send.
#[derive(Default)]
pub struct Outbox {
    bytes: Vec<u8>,
    items: Vec<(Range<usize>, SocketAddr)>,
}

impl Outbox {
    pub fn push(&mut self, datagram: &[u8], to: SocketAddr) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(datagram);
        self.items.push((start..self.bytes.len(), to));
    }

    /// Send everything pushed, [`BATCH`] datagrams a call; a datagram the kernel refuses is
    /// dropped (as it would be on the wire), the rest still go.
    pub async fn flush(&mut self, socket: &UdpSocket) {
        let mut next = 0;
        while next < self.items.len() {
            let items = &self.items[next..self.items.len().min(next + BATCH)];
            match socket.try_io(Interest::WRITABLE, || send_now(socket, &self.bytes, items)) {
                Ok(sent) => next += sent.max(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if socket.writable().await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, to = %items[0].1, "dns udp send");
                    next += 1;
                }
            }
        }
        self.bytes.clear();
        self.items.clear();
    }
}

fn send_now(socket: &UdpSocket, bytes: &[u8], items: &[(Range<usize>, SocketAddr)]) -> io::Result<usize> {
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(items.len(), None);
    let slices: Vec<[IoSlice<'_>; 1]> = items.iter().map(|(r, _)| [IoSlice::new(&bytes[r.clone()])]).collect();
    let addrs: Vec<Option<SockaddrStorage>> = items.iter().map(|(_, a)| Some(SockaddrStorage::from(*a))).collect();
    let results = sendmmsg(
        socket.as_raw_fd(),
        &mut headers,
        slices.iter(),
        addrs,
        [],
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    Ok(results.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_go_both_ways() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = server.local_addr().unwrap();
        for i in 0..40u8 {
            client.send_to(&[i; 3], to).await.unwrap();
        }
        let mut inbox = Inbox::default();
        let mut outbox = Outbox::default();
        let mut seen = Vec::new();
        while seen.len() < 40 {
            let n = inbox.recv(&server).await.unwrap();
            assert!(n <= BATCH);
            for i in 0..n {
                let (p, from) = inbox.packet(i);
                assert_eq!(from, client.local_addr().unwrap());
                seen.push(p[0]);
                outbox.push(&[p[0], p[0]], from);
            }
        }
        assert_eq!(seen, (0..40).collect::<Vec<u8>>());
        outbox.flush(&server).await;
        let mut buf = [0u8; 16];
        for i in 0..40u8 {
            let (n, from) = client.recv_from(&mut buf).await.unwrap();
            assert_eq!((&buf[..n], from), (&[i, i][..], to));
        }
    }
}
