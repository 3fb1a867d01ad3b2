//! The plugin's verbs, as the CNI spec defines them: the runtime's environment and the network
//! configuration in, a result or an error with the spec's code out.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::bpf::Pins;
use crate::datapath::{self, GATEWAY, HOST_MAC, mac_string};
use crate::pool_proto::{self, Client, Reply, Request};
use crate::spec::{CniError, CniResult, Interface, IpConfig, Mode, NetConf, Route, SUPPORTED, code};

/// What the runtime told us through the environment.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub command: String,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
}

fn valid_container_id(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

impl Invocation {
    /// Read the CNI_* variables a verb needs; code 4 names every one missing or malformed.
    pub fn from_env(env: &HashMap<String, String>) -> Result<Invocation, CniError> {
        let get = |k: &str| env.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let command = get("CNI_COMMAND")
            .ok_or_else(|| CniError::new(code::INVALID_ENV, "missing environment variable CNI_COMMAND", ""))?
            .to_string();
        let needed: &[&str] = match command.as_str() {
            "ADD" | "CHECK" => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
            "DEL" => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            "GC" | "STATUS" => &["CNI_PATH"],
            "VERSION" => &[],
            other => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("unknown CNI_COMMAND {other:?}"),
                    "one of ADD, DEL, CHECK, GC, STATUS, VERSION",
                ));
            }
        };
        let missing: Vec<&str> = needed.iter().copied().filter(|k| get(k).is_none()).collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("missing environment variables {}", missing.join(", ")),
                format!("{command} needs {}", needed.join(", ")),
            ));
        }
        let inv = Invocation {
            command,
            container_id: get("CNI_CONTAINERID").unwrap_or_default().to_string(),
            netns: get("CNI_NETNS").map(PathBuf::from),
            ifname: get("CNI_IFNAME").unwrap_or_default().to_string(),
        };
        if needed.contains(&"CNI_CONTAINERID") && !valid_container_id(&inv.container_id) {
            return Err(CniError::new(
                code::INVALID_ENV,
                "invalid environment variable CNI_CONTAINERID",
                format!("{:?}: letters, digits, _ . - only", inv.container_id),
            ));
        }
        if needed.contains(&"CNI_IFNAME") && !valid_ifname(&inv.ifname) {
            return Err(CniError::new(
                code::INVALID_ENV,
                "invalid environment variable CNI_IFNAME",
                format!("{:?}: at most 15 bytes, no / : or spaces", inv.ifname),
            ));
        }
        Ok(inv)
    }
}

/// Run one verb. Ok(Some) is printed as the result; errors carry the version to answer in.
pub async fn run(env: &HashMap<String, String>, stdin: &[u8]) -> Result<Option<Value>, (CniError, String)> {
    let fallback = "1.1.0".to_string();
    let inv = Invocation::from_env(env).map_err(|e| (e, fallback.clone()))?;
    if inv.command == "VERSION" {
        // The asker's version, if it sent one, else ours.
        let asked = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
            .unwrap_or(fallback);
        return Ok(Some(json!({"cniVersion": asked, "supportedVersions": SUPPORTED})));
    }
    let conf = NetConf::parse(stdin).map_err(|e| (e, fallback.clone()))?;
    let version = conf.cni_version.clone();
    let result = match inv.command.as_str() {
        "ADD" => add(&inv, &conf).await.map(Some),
        "DEL" => del(&inv, &conf).await.map(|()| None),
        "CHECK" => check(&inv, &conf).await.map(|()| None),
        "GC" => gc(&conf).await.map(|()| None),
        "STATUS" => status(&conf).await.map(|()| None),
        _ => unreachable_command(&inv.command),
    };
    result.map_err(|e| (e, version))
}

/// The process's environment as [`run`] takes it (variables that are not UTF-8 left out).
pub fn environment() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// What the plugin process answers for an outcome of [`run`]: its exit code and its output.
pub fn render(outcome: Result<Option<Value>, (CniError, String)>) -> (i32, String) {
    match outcome {
        Ok(Some(v)) => (0, format!("{v}\n")),
        Ok(None) => (0, String::new()),
        Err((e, version)) => (1, format!("{}\n", e.to_json(&version))),
    }
}

/// Hand a verb to the pool service its configuration names, to be run there: a warm process
/// with its runtime and threads up does the netlink work, and this one only waits (no Tokio
/// runtime of its own, no threads). `None` when the pool cannot take it — VERSION, host mode,
/// input that does not parse, a pool that is not listening or does not know the request — and
/// the caller runs the verb itself, which gives the spec's answer (code 11 when the pool is
/// needed and unreachable).
pub fn forward(env: &HashMap<String, String>, stdin: &[u8]) -> Option<(i32, String)> {
    use std::io::{BufRead, BufReader, Write};
    if env.get("CNI_COMMAND").is_none_or(|c| c == "VERSION") {
        return None;
    }
    let text = std::str::from_utf8(stdin).ok()?;
    let conf = NetConf::parse(stdin).ok()?;
    if conf.mode == Mode::Host {
        return None;
    }
    let mut stream = std::os::unix::net::UnixStream::connect(&conf.pool).ok()?;
    let mut env: HashMap<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with("CNI_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // The pool's working directory is not ours.
    if let Some(ns) = env
        .get_mut("CNI_NETNS")
        .filter(|p| !p.is_empty() && !p.starts_with('/'))
    {
        let cwd = std::env::current_dir().ok()?;
        *ns = cwd.join(&*ns).display().to_string();
    }
    let command = env.get("CNI_COMMAND").cloned().unwrap_or_default();
    let mut line = serde_json::to_vec(&Request::Exec {
        env,
        stdin: text.to_string(),
    })
    .ok()?;
    line.push(b'\n');
    stream.write_all(&line).ok()?;
    let mut reply = String::new();
    let answer = match BufReader::new(&stream).read_line(&mut reply) {
        Ok(n) if n > 0 => serde_json::from_str::<Reply>(&reply).map_err(|e| e.to_string()),
        Ok(_) => Err("the pool closed the connection".to_string()),
        Err(e) => Err(e.to_string()),
    };
    match answer {
        Ok(Reply {
            plugin: Some(answer), ..
        }) => Some(answer),
        // A pool that does not run verbs (an older one) still serves the plugin's requests.
        Ok(_) => None,
        // The verb may have been under way: the runtime is told to try again.
        Err(e) => Some(render(Err((
            CniError::new(
                code::TRY_AGAIN,
                format!("the IP pool at {} went away during {command}", conf.pool.display()),
                e,
            ),
            conf.cni_version,
        )))),
    }
}

fn unreachable_command(c: &str) -> Result<Option<Value>, CniError> {
    Err(CniError::new(
        code::INVALID_ENV,
        format!("unknown CNI_COMMAND {c:?}"),
        "",
    ))
}

fn needs_1_1(conf: &NetConf, verb: &str) -> Result<(), CniError> {
    if conf.at_least("1.1.0") {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("{verb} needs cniVersion 1.1.0"),
            format!("the configuration says {}", conf.cni_version),
        ))
    }
}

async fn ask(conf: &NetConf, req: Request) -> Result<Reply, CniError> {
    let reply = pool_proto::call(&conf.pool, &req)
        .await
        .map_err(|e| unreachable_pool(conf, e))?;
    checked(reply)
}

/// A request on an open connection to the pool.
async fn ask_on(conf: &NetConf, client: &mut Client, req: Request) -> Result<Reply, CniError> {
    let reply = client.call(&req).await.map_err(|e| unreachable_pool(conf, e))?;
    checked(reply)
}

fn unreachable_pool(conf: &NetConf, e: std::io::Error) -> CniError {
    CniError::new(
        code::TRY_AGAIN,
        format!("the IP pool at {} is not reachable", conf.pool.display()),
        e.to_string(),
    )
}

fn checked(reply: Reply) -> Result<Reply, CniError> {
    match reply.error {
        Some(e) if e.contains("no free addresses") => {
            Err(CniError::new(code::TRY_AGAIN, "no free addresses in the pool", e))
        }
        Some(e) => Err(CniError::new(code::IO, "the IP pool failed", e)),
        None => Ok(reply),
    }
}

fn pool_key(conf: &NetConf, inv: &Invocation) -> (String, String, String) {
    (conf.name.clone(), inv.container_id.clone(), inv.ifname.clone())
}

async fn add(inv: &Invocation, conf: &NetConf) -> Result<Value, CniError> {
    let netns_path = inv.netns.clone().unwrap_or_default();
    let netns = datapath::open_netns(&netns_path)?;
    let prev = conf
        .prev_result
        .as_ref()
        .map(CniResult::from_value)
        .transpose()?
        .unwrap_or_default();
    let mut result = prev.clone();
    if conf.mode == Mode::Host {
        let host = datapath::host()?;
        let ip = match conf.host_ip {
            Some(ip) => ip,
            None => datapath::host_address(&host).await?.ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    "invalid network configuration field hostIP",
                    "the host has no global IPv4 address to report",
                )
            })?,
        };
        result.ips.push(IpConfig {
            address: ipnet::IpNet::V4(ipnet::Ipv4Net::new(ip, 32).unwrap_or_default()),
            gateway: None,
            interface: None,
        });
        result.dns = conf.dns.clone().unwrap_or(prev.dns);
        return Ok(result.to_json(&conf.cni_version));
    }
    let exists = |name: &str| {
        CniError::new(
            code::INTERFACE_EXISTS,
            format!("interface {name} already exists in the container"),
            netns_path.display().to_string(),
        )
    };
    let (network, container, ifname) = pool_key(conf, inv);
    let host = datapath::host()?;
    let host_name = datapath::host_ifname(&conf.name, &inv.container_id, &inv.ifname);
    // One connection for the allocation and the fast-path entry that follows it. In veth mode
    // the request goes before any interface work starts, so the pool's write (and the disk wait
    // after it) overlaps that work instead of queueing behind it; from here on, every way out
    // gives a new address back. The other modes look at the pod's interfaces first.
    let mut client = Client::connect(&conf.pool)
        .await
        .map_err(|e| unreachable_pool(conf, e))?;
    let request = Request::Alloc {
        network,
        container,
        ifname,
    };
    let sent_early = conf.mode == Mode::Veth;
    if sent_early {
        client.send(&request).await.map_err(|e| unreachable_pool(conf, e))?;
    }
    let alloc = async {
        if !sent_early {
            client.send(&request).await.map_err(|e| unreachable_pool(conf, e))?;
        }
        let reply = client
            .receive()
            .await
            .map_err(|e| unreachable_pool(conf, e))
            .and_then(checked)?;
        let existing = reply.existing;
        let alloc = reply
            .allocation
            .ok_or_else(|| CniError::new(code::IO, "the IP pool gave no address", ""))?;
        Ok::<_, CniError>((client, alloc, existing))
    };
    // The pod's netlink handle, once made (veth mode makes it while creating the pair).
    let mut pod: Option<rtnetlink::Handle> = None;
    let attached = match conf.mode {
        Mode::Veth => {
            // The pair is made while the pool picks (and persists) the address and while the
            // pod's netlink socket is opened.
            let create = async {
                datapath::enable_forwarding()?;
                datapath::veth_create(
                    &host,
                    datapath::inside_async(&netns),
                    &netns,
                    &host_name,
                    &inv.ifname,
                    conf.mtu,
                )
                .await
            };
            let (alloc, created) = tokio::join!(alloc, create);
            if let Err(e) = &created {
                if e.code == code::INTERFACE_EXISTS {
                    // Nothing was created, and the interface stays; an address given for this
                    // ADD goes back (one the container already had stays with it).
                    if matches!(alloc, Ok((_, _, false))) {
                        let (network, container, ifname) = pool_key(conf, inv);
                        let _ = ask(
                            conf,
                            Request::Release {
                                network,
                                container,
                                ifname,
                            },
                        )
                        .await;
                    }
                    return Err(exists(&inv.ifname));
                }
            }
            match (alloc, created) {
                (Ok((mut client, alloc, _)), Ok((pair, handle))) => {
                    let handle = pod.insert(handle);
                    let address = datapath::veth_address(&host, handle, &pair, alloc.ip);
                    // The fast path: the pool attaches the program to the host end and
                    // publishes the pod after replying (the host route carries the pod's
                    // traffic until then).
                    let publish = async {
                        if !conf.fast_path {
                            // The allocation on disk is all that is left to wait for.
                            return ask_on(conf, &mut client, Request::Persisted).await.map(drop);
                        }
                        let mut mac = [0u8; 6];
                        if pair.pod_mac.len() == 6 {
                            mac.copy_from_slice(&pair.pod_mac);
                        }
                        let publish = Request::Publish {
                            network: conf.name.clone(),
                            container: inv.container_id.clone(),
                            ifname: inv.ifname.clone(),
                            host_ifname: host_name.clone(),
                            ip: alloc.ip,
                            ifindex: pair.host_ifindex,
                            mac,
                            socket_acceleration: conf.socket_acceleration,
                            walls: crate::bpf::Walls::of(conf),
                            sandbox: crate::bpf::sandbox_of(&netns),
                        };
                        ask_on(conf, &mut client, publish).await.map(drop)
                    };
                    tokio::try_join!(address, publish).map(|(a, ())| a)
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        Mode::Ipvlan | Mode::Macvlan => {
            let handle = pod.insert(datapath::inside(&netns)?);
            if datapath::link(handle, &inv.ifname).await?.is_some() {
                return Err(exists(&inv.ifname));
            }
            match alloc.await {
                Ok((mut client, alloc, _)) => {
                    let child = datapath::child_add(
                        &host,
                        handle,
                        &netns,
                        conf.mode == Mode::Macvlan,
                        conf.parent.as_deref().unwrap_or_default(),
                        &inv.ifname,
                        alloc.ip,
                        alloc.subnet,
                        conf.mtu,
                    );
                    let persisted = ask_on(conf, &mut client, Request::Persisted);
                    tokio::try_join!(child, persisted).map(|(a, _)| a)
                }
                Err(e) => Err(e),
            }
        }
        Mode::Host => unreachable_mode(),
    };
    let attached = match attached {
        Ok(a) => a,
        Err(e) => {
            // Nothing half-done stays: the fast-path entry, the links, the address (each step
            // is a no-op for what was never made).
            let _ = ask(
                conf,
                Request::Withdraw {
                    network: conf.name.clone(),
                    host_ifname: host_name.clone(),
                    ip: None,
                },
            )
            .await;
            let _ = datapath::delete_link(&host, &host_name).await;
            let pod = match pod {
                Some(p) => Some(p),
                None => datapath::inside(&netns).ok(),
            };
            if let Some(pod) = pod {
                let _ = datapath::delete_link(&pod, &inv.ifname).await;
            }
            let (network, container, ifname) = pool_key(conf, inv);
            let _ = ask(
                conf,
                Request::Release {
                    network,
                    container,
                    ifname,
                },
            )
            .await;
            return Err(e);
        }
    };
    if let Some(h) = &attached.host_ifname {
        result.interfaces.push(Interface {
            name: h.clone(),
            mac: mac_string(&HOST_MAC),
            sandbox: String::new(),
        });
    }
    result.interfaces.push(Interface {
        name: inv.ifname.clone(),
        mac: mac_string(&attached.pod_mac),
        sandbox: netns_path.display().to_string(),
    });
    let index = result.interfaces.len() - 1;
    result.ips.push(IpConfig {
        address: ipnet::IpNet::V4(attached.address),
        gateway: Some(attached.gateway.into()),
        interface: Some(index),
    });
    result.routes.push(Route {
        dst: "0.0.0.0/0".parse().unwrap_or_default(),
        gw: Some(attached.gateway.into()),
    });
    if let Some(dns) = &conf.dns {
        result.dns = dns.clone();
    }
    Ok(result.to_json(&conf.cni_version))
}

fn unreachable_mode() -> Result<datapath::Attached, CniError> {
    Err(CniError::new(
        code::INVALID_CONFIG,
        "invalid network configuration field mode",
        "host mode creates no interface",
    ))
}

async fn del(inv: &Invocation, conf: &NetConf) -> Result<(), CniError> {
    if conf.mode == Mode::Host {
        return Ok(());
    }
    let host = datapath::host()?;
    let host_name = datapath::host_ifname(&conf.name, &inv.container_id, &inv.ifname);
    // The fast path first (after the pool has done any attach still pending), then the
    // interfaces: the host end takes the veth pair with it; an ipvlan or macvlan child is
    // deleted in the pod.
    ask(
        conf,
        Request::Withdraw {
            network: conf.name.clone(),
            host_ifname: host_name.clone(),
            ip: None,
        },
    )
    .await?;
    datapath::delete_link(&host, &host_name).await?;
    if conf.mode.has_parent() {
        if let Some(netns) = inv.netns.as_deref().and_then(|p| std::fs::File::open(p).ok()) {
            let pod = datapath::inside(&netns)?;
            datapath::delete_link(&pod, &inv.ifname).await?;
        }
    }
    let (network, container, ifname) = pool_key(conf, inv);
    ask(
        conf,
        Request::Release {
            network,
            container,
            ifname,
        },
    )
    .await?;
    Ok(())
}

fn check_failed(what: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError::new(code::CHECK_FAILED, what, details)
}

async fn check(inv: &Invocation, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "invalid network configuration field prevResult",
            "CHECK needs the result of ADD",
        )
    })?;
    let prev = CniResult::from_value(prev)?;
    if conf.mode == Mode::Host {
        return Ok(());
    }
    let netns_path = inv.netns.clone().unwrap_or_default();
    let netns = datapath::open_netns(&netns_path)?;
    // Our address in the result: the one on the interface we made in this sandbox.
    let ours = prev
        .interfaces
        .iter()
        .position(|i| i.name == inv.ifname && i.sandbox == netns_path.display().to_string())
        .ok_or_else(|| {
            check_failed(
                format!("prevResult has no interface {} in {}", inv.ifname, netns_path.display()),
                "",
            )
        })?;
    let ip = prev
        .ips
        .iter()
        .find(|c| c.interface == Some(ours))
        .ok_or_else(|| check_failed(format!("prevResult has no address on {}", inv.ifname), ""))?;
    let ipnet::IpNet::V4(want) = ip.address else {
        return Err(check_failed("an IPv6 address in prevResult", ip.address.to_string()));
    };
    let (network, container, ifname) = pool_key(conf, inv);
    let reply = ask(
        conf,
        Request::Get {
            network,
            container,
            ifname,
        },
    )
    .await?;
    match reply.allocation {
        Some(a) if a.ip == want.addr() => {}
        Some(a) => {
            return Err(check_failed(
                "the pool holds another address for this container",
                format!("{} (prevResult says {want})", a.ip),
            ));
        }
        None => {
            return Err(check_failed(
                "the pool holds no address for this container",
                want.to_string(),
            ));
        }
    }
    let pod = datapath::inside(&netns)?;
    let l = datapath::link(&pod, &inv.ifname)
        .await?
        .ok_or_else(|| check_failed(format!("interface {} is gone from the container", inv.ifname), ""))?;
    let have = datapath::addresses(&pod, l.header.index).await?;
    if !have.contains(&want) {
        return Err(check_failed(
            format!("{want} is not on {}", inv.ifname),
            format!("found {have:?}"),
        ));
    }
    let routes = datapath::routes(&pod).await?;
    let gateway = if conf.mode == Mode::Veth {
        GATEWAY
    } else {
        want.trunc().hosts().next().unwrap_or(want.addr())
    };
    if !routes
        .iter()
        .any(|(dst, gw, oif)| dst.prefix_len() == 0 && *gw == Some(gateway) && *oif == Some(l.header.index))
    {
        return Err(check_failed(
            format!("the default route via {gateway} is gone from the container"),
            format!("{routes:?}"),
        ));
    }
    if conf.mode == Mode::Veth {
        let host = datapath::host()?;
        let name = datapath::host_ifname(&conf.name, &inv.container_id, &inv.ifname);
        let h = datapath::link(&host, &name)
            .await?
            .ok_or_else(|| check_failed(format!("the host end {name} is gone"), ""))?;
        if conf.fast_path {
            ask(
                conf,
                Request::Sync {
                    network: conf.name.clone(),
                },
            )
            .await?;
            Pins::for_network(&conf.name)
                .check(&name, want.addr(), h.header.index)
                .map_err(|e| check_failed("the eBPF fast path is not as ADD left it", e))?;
        }
        let host_routes = datapath::routes(&host).await?;
        if !host_routes
            .iter()
            .any(|(dst, _, oif)| dst.prefix_len() == 32 && dst.addr() == want.addr() && *oif == Some(h.header.index))
        {
            return Err(check_failed(format!("the host's route to {} is gone", want.addr()), ""));
        }
    }
    Ok(())
}

async fn gc(conf: &NetConf) -> Result<(), CniError> {
    needs_1_1(conf, "GC")?;
    if conf.mode == Mode::Host {
        return Ok(());
    }
    let keep: Vec<(String, String)> = conf
        .valid_attachments
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|a| (a.container_id, a.ifname))
        .collect();
    let reply = ask(
        conf,
        Request::Gc {
            network: conf.name.clone(),
            keep,
        },
    )
    .await?;
    let host = datapath::host()?;
    let mut errors = Vec::new();
    for a in &reply.released {
        let name = datapath::host_ifname(&a.network, &a.container, &a.ifname);
        if let Err(e) = ask(
            conf,
            Request::Withdraw {
                network: conf.name.clone(),
                host_ifname: name.clone(),
                ip: Some(a.ip),
            },
        )
        .await
        {
            errors.push(e.to_string());
        }
        if let Err(e) = datapath::delete_link(&host, &name).await {
            errors.push(e.to_string());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(code::NETLINK, "GC left links behind", errors.join("; ")))
    }
}

async fn status(conf: &NetConf) -> Result<(), CniError> {
    needs_1_1(conf, "STATUS")?;
    if conf.mode == Mode::Host {
        return Ok(());
    }
    let reply = pool_proto::call(&conf.pool, &Request::Status).await.map_err(|e| {
        CniError::new(
            code::NOT_AVAILABLE,
            format!("the IP pool at {} is not reachable", conf.pool.display()),
            e.to_string(),
        )
    })?;
    if let Some(e) = reply.error {
        return Err(CniError::new(code::NOT_AVAILABLE, "the IP pool failed", e));
    }
    if reply.warm == 0 && reply.free == 0 {
        return Err(CniError::new(
            code::NOT_AVAILABLE,
            "no free addresses in the pool",
            format!("{} in use", reply.in_use),
        ));
    }
    Ok(())
}
