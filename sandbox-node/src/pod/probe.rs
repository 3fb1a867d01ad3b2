//! Probes (startup, liveness, readiness) and lifecycle hooks: exec in the container, HTTP GET
//! and TCP connect from inside the pod's network namespace, so they work with or without a
//! routable pod IP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ExecAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::runtime::Runtime;

#[derive(Clone)]
pub struct Target {
    pub runtime: Arc<dyn Runtime>,
    pub container_ref: crate::runtime::ContainerRef,
    pub net: crate::pod_net::PodNet,
    pub pod_ip: String,
    pub container: Container,
}

#[derive(Clone, Debug)]
pub enum Action {
    Exec(Vec<String>),
    Http {
        host: String,
        port: u16,
        path: String,
        https: bool,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: String,
        port: u16,
    },
    Sleep(u64),
}

fn port(c: &Container, p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} is out of range")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .ok_or_else(|| format!("the container has no port named {name:?}")),
    }
}

fn from_parts(
    c: &Container,
    exec: Option<&ExecAction>,
    http: Option<&HTTPGetAction>,
    tcp: Option<&TCPSocketAction>,
) -> Result<Action, String> {
    if let Some(e) = exec {
        return Ok(Action::Exec(e.command.clone().unwrap_or_default()));
    }
    if let Some(h) = http {
        return Ok(Action::Http {
            host: h.host.clone().unwrap_or_default(),
            port: port(c, &h.port)?,
            path: h.path.clone().unwrap_or_else(|| "/".into()),
            https: h.scheme.as_deref() == Some("HTTPS"),
            headers: h
                .http_headers
                .iter()
                .flatten()
                .map(|x| (x.name.clone(), x.value.clone()))
                .collect(),
        });
    }
    if let Some(t) = tcp {
        return Ok(Action::Tcp {
            host: t.host.clone().unwrap_or_default(),
            port: port(c, &t.port)?,
        });
    }
    Err("the handler names no action".into())
}

pub fn probe_action(c: &Container, p: &Probe) -> Result<Action, String> {
    from_parts(c, p.exec.as_ref(), p.http_get.as_ref(), p.tcp_socket.as_ref())
}

pub fn hook_action(c: &Container, h: &LifecycleHandler) -> Result<Action, String> {
    if let Some(s) = &h.sleep {
        return Ok(Action::Sleep(s.seconds.max(0) as u64));
    }
    from_parts(c, h.exec.as_ref(), h.http_get.as_ref(), h.tcp_socket.as_ref())
}

async fn connect(
    t: &Target,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<Box<dyn crate::pod_net::PodStream>, String> {
    let host = if !host.is_empty() {
        host.to_string()
    } else if !t.pod_ip.is_empty() {
        t.pod_ip.clone()
    } else {
        "127.0.0.1".to_string()
    };
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|_| format!("{host}:{port} is not an address"))?;
    t.net.connect(addr, timeout).await
}

async fn http_get(
    t: &Target,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    use http_body_util::BodyExt;
    let stream = connect(t, host, port, timeout).await?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, http_body_util::Empty<bytes::Bytes>>(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let mut req = http::Request::get(path)
        .header(
            "Host",
            format!("{}:{port}", if host.is_empty() { &t.pod_ip } else { host }),
        )
        .header("User-Agent", "kube-probe/1.33");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(http_body_util::Empty::new()).map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string());
    let out = match resp {
        Ok(r) => {
            let code = r.status().as_u16();
            let _ = r.into_body().collect().await;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        }
        Err(e) => Err(e),
    };
    driver.abort();
    out
}

/// Run one action against the container, bounded by `timeout`.
pub async fn run(t: &Target, action: &Action, timeout: Duration) -> Result<(), String> {
    let work = async {
        match action {
            Action::Exec(cmd) => {
                let out = t
                    .runtime
                    .exec(&t.container_ref, cmd, false)
                    .map_err(|e| e.to_string())?
                    .stdin(std::process::Stdio::null())
                    .output()
                    .await
                    .map_err(|e| e.to_string())?;
                if out.status.success() {
                    Ok(())
                } else {
                    let mut msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    if msg.is_empty() {
                        msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
                    }
                    Err(format!(
                        "command {cmd:?} exited with {}: {msg}",
                        out.status.code().unwrap_or(-1)
                    ))
                }
            }
            Action::Http {
                host,
                port,
                path,
                https,
                headers,
            } => {
                if *https {
                    // Kubelet does not verify probe certificates; a TCP connect stands in for now.
                    connect(t, host, *port, timeout).await.map(drop)
                } else {
                    http_get(t, host, *port, path, headers, timeout).await
                }
            }
            Action::Tcp { host, port } => connect(t, host, *port, timeout).await.map(drop),
            Action::Sleep(s) => {
                tokio::time::sleep(Duration::from_secs(*s)).await;
                Ok(())
            }
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

/// Run a probe on its period and report each change of its verdict (after the thresholds).
pub async fn probe_loop(kind: Kind, t: Target, probe: Probe, report: impl Fn(bool, String) + Send + 'static) {
    let action = match probe_action(&t.container, &probe) {
        Ok(a) => a,
        Err(e) => {
            report(false, e);
            return;
        }
    };
    let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let need_ok = probe.success_threshold.unwrap_or(1).max(1);
    let need_fail = probe.failure_threshold.unwrap_or(3).max(1);
    tokio::time::sleep(Duration::from_secs(
        probe.initial_delay_seconds.unwrap_or(0).max(0) as u64
    ))
    .await;
    let (mut oks, mut fails) = (0, 0);
    let mut verdict: Option<bool> = None;
    let mut settle = SETTLE_FIRST;
    loop {
        match run(&t, &action, timeout).await {
            Ok(()) => {
                oks += 1;
                fails = 0;
                if oks >= need_ok && verdict != Some(true) {
                    verdict = Some(true);
                    report(true, String::new());
                }
            }
            Err(msg) => {
                fails += 1;
                oks = 0;
                if fails >= need_fail && verdict != Some(false) {
                    verdict = Some(false);
                    report(false, msg);
                } else if kind == Kind::Liveness && fails >= need_fail {
                    report(false, msg);
                }
            }
        }
        tokio::time::sleep(next_wait(kind, verdict, &mut settle, period)).await;
    }
}

/// The first wait of a readiness probe that has not yet passed once; it doubles up to the
/// probe's period (startup and liveness probes keep their period: their failures count). A server that listens 30 ms after it starts is Ready then, not a period
/// later: what a scale-from-zero request waits for. Knative's queue-proxy probes as eagerly
/// until the first success.
const SETTLE_FIRST: Duration = Duration::from_millis(10);

/// How long until the next probe: the period, or until a readiness probe first passes, a wait
/// that starts at [`SETTLE_FIRST`] and doubles up to the period.
fn next_wait(kind: Kind, verdict: Option<bool>, settle: &mut Duration, period: Duration) -> Duration {
    if verdict == Some(true) {
        *settle = period;
    }
    if kind != Kind::Readiness || *settle >= period {
        return period;
    }
    let wait = *settle;
    *settle = (*settle * 2).min(period);
    wait
}

#[cfg(test)]
mod settle_tests {
    use super::*;

    #[test]
    fn readiness_probes_eagerly_until_it_first_passes() {
        let period = Duration::from_secs(1);
        let mut settle = SETTLE_FIRST;
        let waits: Vec<u64> = (0..9)
            .map(|_| next_wait(Kind::Readiness, None, &mut settle, period).as_millis() as u64)
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        let mut settle = SETTLE_FIRST;
        assert_eq!(next_wait(Kind::Readiness, Some(true), &mut settle, period), period);
        assert_eq!(
            next_wait(Kind::Readiness, Some(false), &mut settle, period),
            period,
            "only before the first pass"
        );
        for kind in [Kind::Startup, Kind::Liveness] {
            let mut settle = SETTLE_FIRST;
            assert_eq!(next_wait(kind, None, &mut settle, period), period);
        }
    }
}
