//! LoadBalancer Services, as an SLB would serve them: each Service of `type: LoadBalancer`
//! (with no `loadBalancerClass`, or ours) gets an address from a pool (standing for SLB/EIP
//! addresses; on one machine, addresses on a dummy interface), published in
//! `status.loadBalancer.ingress`, and every port of it is forwarded at layer 4, TCP and UDP, to
//! the Service's ready endpoints.
//!
//! - Addresses are stable: an address already in a Service's status stays its own (across
//!   restarts of the ingress too), then `spec.loadBalancerIP` is honoured when it is in the pool
//!   and free, then the lowest free address is taken. When the pool is empty the Service waits,
//!   as a cloud's would, and the reason is logged.
//! - [`plan`] is a pure function of the objects, so the whole of that is tested without a
//!   network; [`Forwarder`] makes it so on the host.
//! - TCP: round robin (or by client address with `sessionAffinity: ClientIP`); a connect that
//!   fails moves on to the next endpoint, up to three; then bytes are copied both ways until
//!   either side closes. An endpoint change applies to new connections; open ones carry on.
//! - UDP: a flow (client address) keeps its endpoint until it has been idle a minute; answers
//!   go back from the Service's address.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use nodeless_watch::{SlicesByService, port_endpoints};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// The `spec.loadBalancerClass` this ingress serves (besides Services that name none).
pub const CLASS: &str = "nodeless.io/slb";
/// Endpoints tried for one TCP connection.
const CONNECT_TRIES: usize = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A UDP flow with no datagram either way for this long is forgotten.
const UDP_IDLE: Duration = Duration::from_secs(60);
const ENODEV: i32 = 19;
const EOPNOTSUPP: i32 = 95;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// One forwarded port of a Service's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub port: u16,
    pub protocol: Protocol,
    /// The ready endpoints (address and target port), sorted.
    pub endpoints: Vec<SocketAddr>,
    /// `sessionAffinity: ClientIP`.
    pub affinity: bool,
}

/// A Service's address and what is forwarded from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// `namespace/name`.
    pub service: String,
    pub ip: Ipv4Addr,
    pub ports: Vec<Port>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub assignments: Vec<Assignment>,
    /// Why a Service or a port is not served, for the log.
    pub problems: Vec<String>,
}

/// The pool's addresses, in order (a /31 or /32 is used whole; otherwise the network and
/// broadcast addresses are left out).
pub fn addresses(pool: ipnet::Ipv4Net) -> Vec<Ipv4Addr> {
    pool.hosts().collect()
}

fn id(s: &Service) -> String {
    format!(
        "{}/{}",
        s.metadata.namespace.as_deref().unwrap_or_default(),
        s.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Whether this ingress serves the Service's load balancer.
pub fn ours(s: &Service) -> bool {
    let spec = s.spec.as_ref();
    spec.and_then(|p| p.type_.as_deref()) == Some("LoadBalancer")
        && spec
            .and_then(|p| p.load_balancer_class.as_deref())
            .is_none_or(|c| c == CLASS)
}

/// The pool addresses a Service's status holds.
pub fn status_ips(s: &Service, pool: ipnet::Ipv4Net) -> Vec<Ipv4Addr> {
    let list = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    list.into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse::<Ipv4Addr>().ok())
        .filter(|ip| pool.contains(ip))
        .collect()
}

/// Decide every LoadBalancer Service's address and forwarding.
pub fn plan(pool: ipnet::Ipv4Net, services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) -> Plan {
    let mut mine: Vec<&Service> = services.iter().map(|s| s.as_ref()).filter(|s| ours(s)).collect();
    mine.sort_by(|a, b| {
        (a.metadata.creation_timestamp.as_ref().map(|t| t.0), id(a))
            .cmp(&(b.metadata.creation_timestamp.as_ref().map(|t| t.0), id(b)))
    });
    let free_list = addresses(pool);
    let mut taken: HashMap<Ipv4Addr, String> = HashMap::new();
    let mut chosen: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
    let mut problems = Vec::new();
    // The address a Service already has, then the one it asks for, then the lowest free one:
    // each pass over all Services before the next, so no Service loses its address to another's
    // request.
    for s in &mine {
        if let Some(ip) = status_ips(s, pool)
            .into_iter()
            .find(|ip| !taken.contains_key(ip) && free_list.contains(ip))
        {
            taken.insert(ip, id(s));
            chosen.insert(id(s), ip);
        }
    }
    for s in &mine {
        if chosen.contains_key(&id(s)) {
            continue;
        }
        let Some(asked) = s
            .spec
            .as_ref()
            .and_then(|p| p.load_balancer_ip.as_deref())
            .filter(|v| !v.is_empty())
        else {
            continue;
        };
        match asked.parse::<Ipv4Addr>() {
            Ok(ip) if !free_list.contains(&ip) => problems.push(format!(
                "service {}: spec.loadBalancerIP {ip} is not in the pool {pool}",
                id(s)
            )),
            Ok(ip) => match taken.get(&ip) {
                Some(other) => problems.push(format!(
                    "service {}: spec.loadBalancerIP {ip} is held by {other}",
                    id(s)
                )),
                None => {
                    taken.insert(ip, id(s));
                    chosen.insert(id(s), ip);
                }
            },
            Err(_) => problems.push(format!(
                "service {}: spec.loadBalancerIP {asked:?} is not an IPv4 address",
                id(s)
            )),
        }
    }
    for s in &mine {
        let asked = s
            .spec
            .as_ref()
            .and_then(|p| p.load_balancer_ip.as_deref())
            .is_some_and(|v| !v.is_empty());
        if chosen.contains_key(&id(s)) || asked {
            continue;
        }
        match free_list.iter().find(|ip| !taken.contains_key(ip)) {
            Some(&ip) => {
                taken.insert(ip, id(s));
                chosen.insert(id(s), ip);
            }
            None => problems.push(format!("service {}: the address pool {pool} is used up", id(s))),
        }
    }

    let by_service = SlicesByService::new(slices);
    let mut assignments = Vec::new();
    for s in &mine {
        let Some(&ip) = chosen.get(&id(s)) else { continue };
        let slices = by_service.get(
            s.metadata.namespace.as_deref().unwrap_or_default(),
            s.metadata.name.as_deref().unwrap_or_default(),
        );
        let spec = s.spec.as_ref();
        let affinity = spec.and_then(|p| p.session_affinity.as_deref()) == Some("ClientIP");
        let mut ports = Vec::new();
        for p in spec.and_then(|p| p.ports.as_ref()).into_iter().flatten() {
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                other => {
                    problems.push(format!(
                        "service {}: port {} is {other}, which is not forwarded (TCP and UDP are)",
                        id(s),
                        p.port
                    ));
                    continue;
                }
            };
            let Ok(port) = u16::try_from(p.port) else { continue };
            ports.push(Port {
                port,
                protocol,
                endpoints: port_endpoints(slices, p).ready,
                affinity,
            });
        }
        assignments.push(Assignment {
            service: id(s),
            ip,
            ports,
        });
    }
    Plan { assignments, problems }
}

/// The status a Service should show for `a`, or `None` for none.
pub fn status_value(a: Option<&Assignment>) -> serde_json::Value {
    match a {
        Some(a) => {
            let ports: Vec<_> = a
                .ports
                .iter()
                .map(|p| serde_json::json!({"port": p.port, "protocol": p.protocol.as_str()}))
                .collect();
            serde_json::json!({"ingress": [{"ip": a.ip.to_string(), "ipMode": "VIP", "ports": ports}]})
        }
        None => serde_json::json!({"ingress": null}),
    }
}

/// Whether the Service's status already shows `want`.
pub fn status_matches(s: &Service, want: &serde_json::Value) -> bool {
    let have = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .map(|lb| serde_json::to_value(lb).unwrap_or_default())
        .unwrap_or_else(|| serde_json::json!({}));
    let norm = |v: &serde_json::Value| {
        let list = v.get("ingress").and_then(|i| i.as_array()).cloned().unwrap_or_default();
        list.iter()
            .map(|i| {
                (
                    i.get("ip").cloned(),
                    i.get("ports").cloned().unwrap_or_else(|| serde_json::json!([])),
                )
            })
            .collect::<Vec<_>>()
    };
    norm(&have) == norm(want)
}

/// One forwarded address:port, with the endpoints it currently sends to.
struct Listener {
    endpoints: Arc<ArcSwap<Port>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Makes a plan so on this host: the addresses on the interface, a listener for each port.
pub struct Forwarder {
    link: String,
    pool: ipnet::Ipv4Net,
    handle: rtnetlink::Handle,
    /// Whether the interface was made here (and so goes at shutdown).
    made_link: bool,
    listeners: HashMap<(SocketAddr, Protocol), Listener>,
}

fn nl(what: &str, e: rtnetlink::Error) -> anyhow::Error {
    anyhow::anyhow!("{what}: {e}")
}

impl Forwarder {
    /// Take (or make) the dummy interface `link` for the pool's addresses. Call in a runtime.
    pub async fn new(link: &str, pool: ipnet::Ipv4Net) -> anyhow::Result<Forwarder> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        let mut made_link = false;
        if Self::index_of(&handle, link).await?.is_none() {
            match handle
                .link()
                .add(rtnetlink::LinkDummy::new(link).up().build())
                .execute()
                .await
            {
                Ok(()) => {}
                // A kernel without the dummy driver: a veth pair, both ends on this host,
                // stands in (addresses on it are local all the same).
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -EOPNOTSUPP => {
                    let peer = format!("{}p", &link[..link.len().min(14)]);
                    tracing::info!(%link, %peer, "no dummy interfaces in this kernel: a veth pair stands in");
                    handle
                        .link()
                        .add(rtnetlink::LinkVeth::new(link, &peer).up().build())
                        .execute()
                        .await
                        .map_err(|e| nl(&format!("making the veth pair {link}/{peer}"), e))?;
                    if let Some(i) = Self::index_of(&handle, &peer).await? {
                        handle
                            .link()
                            .set(rtnetlink::LinkUnspec::new_with_index(i).up().build())
                            .execute()
                            .await
                            .map_err(|e| nl(&format!("bringing {peer} up"), e))?;
                    }
                }
                Err(e) => return Err(nl(&format!("making the dummy interface {link}"), e)),
            }
            made_link = true;
        }
        let index = Self::index_of(&handle, link)
            .await?
            .ok_or_else(|| anyhow::anyhow!("interface {link} vanished"))?;
        handle
            .link()
            .set(rtnetlink::LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| nl(&format!("bringing {link} up"), e))?;
        Ok(Forwarder {
            link: link.to_string(),
            pool,
            handle,
            made_link,
            listeners: HashMap::new(),
        })
    }

    async fn index_of(handle: &rtnetlink::Handle, link: &str) -> anyhow::Result<Option<u32>> {
        let mut links = handle.link().get().match_name(link.to_string()).execute();
        match links.try_next().await {
            Ok(Some(m)) => Ok(Some(m.header.index)),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -ENODEV => Ok(None),
            Err(e) => Err(nl(&format!("looking up {link}"), e)),
        }
    }

    /// The pool addresses on the interface now.
    async fn present(&self, index: u32) -> anyhow::Result<HashSet<Ipv4Addr>> {
        let mut found = HashSet::new();
        let mut s = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(m) = s.try_next().await.map_err(|e| nl("listing addresses", e))? {
            for a in &m.attributes {
                if let rtnetlink::packet_route::address::AddressAttribute::Address(IpAddr::V4(ip)) = a {
                    if self.pool.contains(ip) {
                        found.insert(*ip);
                    }
                }
            }
        }
        Ok(found)
    }

    async fn set_addresses(&self, want: &HashSet<Ipv4Addr>) -> anyhow::Result<()> {
        let index = Self::index_of(&self.handle, &self.link)
            .await?
            .ok_or_else(|| anyhow::anyhow!("interface {} is gone", self.link))?;
        let present = self.present(index).await?;
        for ip in want.difference(&present) {
            self.handle
                .address()
                .add(index, IpAddr::V4(*ip), 32)
                .replace()
                .execute()
                .await
                .map_err(|e| nl(&format!("adding {ip} to {}", self.link), e))?;
        }
        for ip in present.difference(want) {
            let mut s = self
                .handle
                .address()
                .get()
                .set_link_index_filter(index)
                .set_address_filter(IpAddr::V4(*ip))
                .execute();
            while let Some(m) = s.try_next().await.map_err(|e| nl("listing addresses", e))? {
                self.handle
                    .address()
                    .del(m)
                    .execute()
                    .await
                    .map_err(|e| nl(&format!("removing {ip} from {}", self.link), e))?;
            }
        }
        Ok(())
    }

    /// Make `plan` so: addresses first (a listener binds to one), then listeners; endpoints
    /// of a listener that stays are swapped in place.
    pub async fn apply(&mut self, assignments: &[Assignment]) {
        let want: HashSet<Ipv4Addr> = assignments.iter().map(|a| a.ip).collect();
        if let Err(e) = self.set_addresses(&want).await {
            tracing::warn!(error = %e, "load balancer addresses");
        }
        let mut keep = HashSet::new();
        for a in assignments {
            for p in &a.ports {
                let key = (SocketAddr::new(IpAddr::V4(a.ip), p.port), p.protocol);
                keep.insert(key);
                if let Some(l) = self.listeners.get(&key) {
                    if **l.endpoints.load() != *p {
                        l.endpoints.store(Arc::new(p.clone()));
                    }
                    continue;
                }
                let endpoints = Arc::new(ArcSwap::from_pointee(p.clone()));
                let task = match p.protocol {
                    Protocol::Tcp => match bind_tcp(key.0) {
                        Ok(l) => tokio::spawn(serve_tcp(l, endpoints.clone(), a.service.clone())),
                        Err(e) => {
                            tracing::warn!(service = %a.service, addr = %key.0, error = %e, "TCP listener");
                            continue;
                        }
                    },
                    Protocol::Udp => match UdpSocket::bind(key.0).await {
                        Ok(s) => tokio::spawn(serve_udp(Arc::new(s), endpoints.clone(), a.service.clone())),
                        Err(e) => {
                            tracing::warn!(service = %a.service, addr = %key.0, error = %e, "UDP listener");
                            continue;
                        }
                    },
                };
                tracing::info!(service = %a.service, addr = %key.0, protocol = p.protocol.as_str(), endpoints = p.endpoints.len(), "load balancer listening");
                self.listeners.insert(key, Listener { endpoints, task });
            }
        }
        self.listeners.retain(|k, _| keep.contains(k));
    }

    /// Stop listening and take the addresses away (and the interface, if it was made here).
    pub async fn shutdown(mut self) {
        self.listeners.clear();
        if let Err(e) = self.set_addresses(&HashSet::new()).await {
            tracing::warn!(error = %e, "removing load balancer addresses");
        }
        if self.made_link {
            if let Ok(Some(index)) = Self::index_of(&self.handle, &self.link).await {
                if let Err(e) = self.handle.link().del(index).execute().await {
                    tracing::warn!(link = %self.link, error = %e, "removing the interface");
                }
            }
        }
    }
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// The endpoint for a client: by its address with affinity, else round robin.
fn choose(port: &Port, client: IpAddr, rr: &AtomicUsize, attempt: usize) -> Option<SocketAddr> {
    let n = port.endpoints.len();
    if n == 0 {
        return None;
    }
    let base = if port.affinity {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        client.hash(&mut h);
        h.finish() as usize
    } else {
        rr.fetch_add(1, Ordering::Relaxed)
    };
    Some(port.endpoints[(base + attempt) % n])
}

async fn serve_tcp(listener: TcpListener, port: Arc<ArcSwap<Port>>, service: String) {
    let rr = Arc::new(AtomicUsize::new(0));
    loop {
        let (client, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%service, error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (port, rr, service) = (port.load_full(), rr.clone(), service.clone());
        tokio::spawn(async move {
            let mut client = client;
            let _ = client.set_nodelay(true);
            for attempt in 0..CONNECT_TRIES.min(port.endpoints.len()) {
                let Some(to) = choose(&port, from.ip(), &rr, attempt) else {
                    break;
                };
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await {
                    Ok(Ok(mut upstream)) => {
                        let _ = upstream.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        return;
                    }
                    Ok(Err(e)) => tracing::debug!(%service, endpoint = %to, error = %e, "connect"),
                    Err(_) => tracing::debug!(%service, endpoint = %to, "connect timed out"),
                }
            }
            tracing::debug!(%service, client = %from, "no endpoint took the connection");
        });
    }
}

/// UDP flows by client address: the socket connected to the flow's endpoint, and when it last
/// carried a datagram.
type Flows = Arc<Mutex<HashMap<SocketAddr, (Arc<UdpSocket>, Instant)>>>;

async fn serve_udp(socket: Arc<UdpSocket>, port: Arc<ArcSwap<Port>>, service: String) {
    let flows: Flows = Arc::default();
    let rr = AtomicUsize::new(0);
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%service, error = %e, "UDP receive");
                continue;
            }
        };
        let existing = flows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&from)
            .map(|(s, seen)| {
                *seen = Instant::now();
                s.clone()
            });
        let upstream = match existing {
            Some(s) => s,
            None => {
                let Some(to) = choose(&port.load(), from.ip(), &rr, 0) else {
                    continue;
                };
                let Ok(s) = open_flow(to).await else { continue };
                let s = Arc::new(s);
                flows
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(from, (s.clone(), Instant::now()));
                tokio::spawn(answers(socket.clone(), s.clone(), from, flows.clone()));
                s
            }
        };
        let _ = upstream.send(&buf[..n]).await;
    }
}

async fn open_flow(to: SocketAddr) -> std::io::Result<UdpSocket> {
    let local = if to.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    };
    let s = UdpSocket::bind(local).await?;
    s.connect(to).await?;
    Ok(s)
}

/// The endpoint's answers to one flow, sent back from the Service's address, until the flow
/// has been idle for [`UDP_IDLE`].
async fn answers(socket: Arc<UdpSocket>, upstream: Arc<UdpSocket>, client: SocketAddr, flows: Flows) {
    let mut buf = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(UDP_IDLE, upstream.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                if let Some((_, seen)) = flows.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&client) {
                    *seen = Instant::now();
                }
                let _ = socket.send_to(&buf[..n], client).await;
            }
            // An ICMP error (the endpoint went away): the next datagram picks again.
            Ok(Err(_)) => break,
            Err(_) => {
                let idle = flows
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&client)
                    .map(|(_, seen)| seen.elapsed() >= UDP_IDLE)
                    .unwrap_or(true);
                if idle {
                    break;
                }
            }
        }
    }
    flows.lock().unwrap_or_else(|p| p.into_inner()).remove(&client);
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodeless_types::keys;

    fn svc(
        name: &str,
        created: i64,
        lb_ip: Option<&str>,
        status_ip: Option<&str>,
        class: Option<&str>,
        ports: serde_json::Value,
    ) -> Arc<Service> {
        let ts = chrono_like(created);
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default", "creationTimestamp": ts},
                "spec": {"type": "LoadBalancer", "loadBalancerIP": lb_ip, "loadBalancerClass": class, "ports": ports},
                "status": {"loadBalancer": {"ingress": status_ip.map(|ip| vec![serde_json::json!({"ip": ip})]).unwrap_or_default()}},
            }))
            .unwrap(),
        )
    }

    fn chrono_like(secs: i64) -> String {
        format!("2026-01-01T00:00:{:02}Z", secs)
    }

    fn slice(svc: &str, port_name: &str, port: i32, ips: &[(&str, bool)]) -> Arc<EndpointSlice> {
        let eps: Vec<_> = ips
            .iter()
            .map(|(ip, ready)| serde_json::json!({"addresses": [ip], "conditions": {"ready": ready}}))
            .collect();
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("{svc}-x"), "namespace": "default", "labels": {keys::SERVICE_NAME: svc}},
                "addressType": "IPv4",
                "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
                "endpoints": eps,
            }))
            .unwrap(),
        )
    }

    #[test]
    fn addresses_are_stable_requested_then_lowest_free() {
        let pool: ipnet::Ipv4Net = "198.18.0.0/29".parse().unwrap();
        let tcp = serde_json::json!([{"name": "web", "port": 80, "protocol": "TCP"}]);
        let services = vec![
            svc("a", 1, None, None, None, tcp.clone()),
            // Holds .3 already: keeps it even though it is newer than b, which asks for .3.
            svc("c", 3, None, Some("198.18.0.3"), None, tcp.clone()),
            svc("b", 2, Some("198.18.0.3"), None, None, tcp.clone()),
            svc("d", 4, Some("10.0.0.1"), None, None, tcp.clone()),
            svc("e", 5, None, None, Some("other.example/lb"), tcp.clone()),
            svc(
                "f",
                6,
                None,
                None,
                Some(CLASS),
                serde_json::json!([{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "s", "port": 9, "protocol": "SCTP"}]),
            ),
        ];
        let slices = vec![slice(
            "a",
            "web",
            8080,
            &[("10.1.0.2", true), ("10.1.0.1", true), ("10.1.0.3", false)],
        )];
        let p = plan(pool, &services, &slices);
        let ips: Vec<(String, String)> = p
            .assignments
            .iter()
            .map(|a| (a.service.clone(), a.ip.to_string()))
            .collect();
        assert_eq!(
            ips,
            vec![
                ("default/a".into(), "198.18.0.1".into()),
                ("default/c".into(), "198.18.0.3".into()),
                ("default/f".into(), "198.18.0.2".into())
            ]
        );
        assert_eq!(
            p.assignments[0].ports,
            vec![Port {
                port: 80,
                protocol: Protocol::Tcp,
                endpoints: vec!["10.1.0.1:8080".parse().unwrap(), "10.1.0.2:8080".parse().unwrap()],
                affinity: false
            }]
        );
        assert_eq!(p.assignments[2].ports.len(), 1, "SCTP is left out");
        assert_eq!(p.assignments[2].ports[0].protocol, Protocol::Udp);
        let problems = p.problems.join("\n");
        for want in [
            "default/b: spec.loadBalancerIP 198.18.0.3 is held by default/c",
            "default/d: spec.loadBalancerIP 10.0.0.1 is not in the pool",
            "port 9 is SCTP",
        ] {
            assert!(problems.contains(want), "{want} missing in\n{problems}");
        }
        // The same objects give the same plan: nothing moves on a rebuild.
        assert_eq!(plan(pool, &services, &slices), p);
    }

    #[test]
    fn a_used_up_pool_leaves_the_newest_waiting() {
        let pool: ipnet::Ipv4Net = "198.18.0.4/31".parse().unwrap();
        let tcp = serde_json::json!([{"port": 80}]);
        let services: Vec<_> = (0..3)
            .map(|i| svc(&format!("s{i}"), i, None, None, None, tcp.clone()))
            .collect();
        let p = plan(pool, &services, &[]);
        assert_eq!(
            p.assignments.iter().map(|a| a.ip.to_string()).collect::<Vec<_>>(),
            vec!["198.18.0.4", "198.18.0.5"]
        );
        assert!(
            p.problems
                .iter()
                .any(|m| m.contains("default/s2: the address pool 198.18.0.4/31 is used up")),
            "{:?}",
            p.problems
        );
    }

    #[test]
    fn status_shows_the_address_and_ports() {
        let a = Assignment {
            service: "default/a".into(),
            ip: "198.18.0.1".parse().unwrap(),
            ports: vec![Port {
                port: 53,
                protocol: Protocol::Udp,
                endpoints: vec![],
                affinity: false,
            }],
        };
        let want = status_value(Some(&a));
        assert_eq!(
            want,
            serde_json::json!({"ingress": [{"ip": "198.18.0.1", "ipMode": "VIP", "ports": [{"port": 53, "protocol": "UDP"}]}]})
        );
        let s = svc("a", 1, None, None, None, serde_json::json!([]));
        assert!(!status_matches(&s, &want));
        let mut with: Service = (*s).clone();
        with.status = serde_json::from_value(serde_json::json!({"loadBalancer": want})).unwrap();
        assert!(status_matches(&with, &want));
        assert!(status_matches(&s, &status_value(None)));
    }

    #[test]
    fn affinity_keeps_a_client_on_one_endpoint() {
        let mut p = Port {
            port: 80,
            protocol: Protocol::Tcp,
            endpoints: (1..=4).map(|i| format!("10.0.0.{i}:80").parse().unwrap()).collect(),
            affinity: true,
        };
        let rr = AtomicUsize::new(0);
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let first = choose(&p, client, &rr, 0);
        assert!((0..10).all(|_| choose(&p, client, &rr, 0) == first));
        p.affinity = false;
        let spread: HashSet<_> = (0..4).map(|_| choose(&p, client, &rr, 0)).collect();
        assert_eq!(spread.len(), 4);
    }
}
