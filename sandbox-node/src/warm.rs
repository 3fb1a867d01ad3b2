//! Warm sandboxes: pod namespaces made before any pod asks for them, with their user namespace
//! (and its host id range) and their network attached (CNI ADD done, the address given), so the
//! next pod takes one instead of waiting for both. On the node that is about 3–10 ms of
//! namespaces and 8–15 ms of CNI ADD per pod (debug build, 2 cores) off the path from a pod's
//! creation to its first container; ECI keeps pre-created instances for the same reason.
//!
//! A pod that takes one gets the namespaces renamed to its own key in the supervisor, its
//! hostname set, and keeps the warm sandbox's CNI container id (the address is leased under that
//! id; CNI DEL at teardown uses it). The pool refills in the background after a short pause, so
//! the refill's CNI ADD does not compete with the claiming pod's container start.
//!
//! Entries are recorded under `<run dir>/warm/<key>/` (the namespaces' record and `warm.json`):
//! a node that starts again gives back the ones an earlier run left (the supervisor outlives the
//! node) before making new ones.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};

use crate::network::Network;
use crate::sandbox::{Keeper, PodNamespaces};
use crate::userns::IdRanges;

/// How long the pool waits after a claim before refilling.
pub const REFILL_DELAY: Duration = Duration::from_millis(200);

/// One sandbox made ahead of its pod.
#[derive(Debug)]
pub struct Warm {
    /// Its CNI container id and its key in the supervisor until claimed.
    pub key: String,
    pub ns: PodNamespaces,
    /// The host id base of its user namespace, held in the node's `IdRanges`.
    pub user_base: Option<u32>,
    pub ip: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_base: Option<u32>,
}

pub struct WarmPool {
    size: usize,
    dir: PathBuf,
    ready: Mutex<Vec<Warm>>,
    claimed: tokio::sync::Notify,
    /// Set when the supervisor cannot hand namespaces over (one older than the node).
    off: AtomicBool,
}

/// What a pool entry is made with: the node's supervisor, network and id ranges.
pub struct Makers<'a> {
    pub keeper: &'a Keeper,
    pub network: &'a dyn Network,
    pub ranges: &'a IdRanges,
    pub user_namespaces: bool,
}

impl WarmPool {
    /// A pool of `size` sandboxes recorded under `dir` (0: no pool).
    pub fn new(dir: PathBuf, size: usize) -> Self {
        Self {
            size,
            dir,
            ready: Mutex::new(Vec::new()),
            claimed: tokio::sync::Notify::new(),
            off: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Warm>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether another entry should be made now.
    pub fn wanted(&self) -> bool {
        !self.off.load(Ordering::Acquire) && self.len() < self.size
    }

    /// A ready sandbox whose user namespace matches the pod's (one with, or one without).
    pub fn take(&self, user_namespace: bool) -> Option<Warm> {
        if self.off.load(Ordering::Acquire) {
            return None;
        }
        let mut ready = self.lock();
        let i = ready.iter().position(|w| w.user_base.is_some() == user_namespace)?;
        let w = ready.remove(i);
        drop(ready);
        self.claimed.notify_one();
        Some(w)
    }

    /// Stop using the pool (the reason is logged once by the caller).
    pub fn turn_off(&self) {
        self.off.store(true, Ordering::Release);
        self.claimed.notify_one();
    }

    /// Until a sandbox is taken (or the pool is turned off).
    pub async fn taken(&self) {
        self.claimed.notified().await;
    }

    pub fn is_off(&self) -> bool {
        self.off.load(Ordering::Acquire)
    }

    /// Make one sandbox and add it to the pool. What a failure left is given back first.
    pub async fn make_one(&self, m: &Makers<'_>) -> Result<(), String> {
        let key = format!("warm-{:016x}", rand::random::<u64>());
        let ns = PodNamespaces::at(self.dir.join(&key));
        let user_base = if m.user_namespaces {
            Some(m.ranges.allocate().map_err(|e| e.to_string())?)
        } else {
            None
        };
        let made = async {
            ns.create(m.keeper, &key, user_base).await.map_err(|e| e.to_string())?;
            let pod = Pod {
                metadata: kube::api::ObjectMeta {
                    name: Some(key.clone()),
                    namespace: Some(String::new()),
                    ..Default::default()
                },
                ..Default::default()
            };
            let ip = m
                .network
                .attach(&key, &pod, &ns.net())
                .await
                .map_err(|e| format!("network: {e}"))?;
            let record = serde_json::to_vec(&Record {
                ip: ip.clone(),
                user_base,
            })
            .map_err(|e| e.to_string())?;
            std::fs::write(ns.dir.join("warm.json"), record).map_err(|e| format!("recording {key}: {e}"))?;
            Ok::<_, String>(ip)
        }
        .await;
        match made {
            Ok(ip) => {
                self.lock().push(Warm { key, ns, user_base, ip });
                Ok(())
            }
            Err(e) => {
                let w = Warm {
                    key,
                    ns,
                    user_base,
                    ip: String::new(),
                };
                let undo = discard(&w, m).await;
                if undo.is_empty() {
                    Err(e)
                } else {
                    Err(format!("{e} (and giving it back: {})", undo.join("; ")))
                }
            }
        }
    }

    /// Give back every sandbox recorded under the pool's directory that this pool does not hold
    /// (an earlier run's, at start), and, with `all`, the pool's own too (at shutdown).
    pub async fn give_back(&self, m: &Makers<'_>, all: bool) -> Vec<String> {
        let mut errors = Vec::new();
        let mine: Vec<Warm> = if all {
            std::mem::take(&mut *self.lock())
        } else {
            Vec::new()
        };
        let held: Vec<String> = self.lock().iter().map(|w| w.key.clone()).collect();
        let mut stale = mine;
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let key = e.file_name().to_string_lossy().into_owned();
            if held.contains(&key) || stale.iter().any(|w| w.key == key) {
                continue;
            }
            let record: Option<Record> = std::fs::read(e.path().join("warm.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            stale.push(Warm {
                ns: PodNamespaces::at(e.path()),
                user_base: record.as_ref().and_then(|r| r.user_base),
                ip: record.map(|r| r.ip).unwrap_or_default(),
                key,
            });
        }
        for w in &stale {
            errors.extend(discard(w, m).await);
        }
        errors
    }

    /// The pool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Give a sandbox back: CNI DEL (its network namespace is where the plugin finds the
/// interfaces), the namespaces, and its id range. Every step runs; every failure is returned.
pub async fn discard(w: &Warm, m: &Makers<'_>) -> Vec<String> {
    let mut errors = Vec::new();
    if let Err(e) = m.network.detach(&w.key, &w.ns.net()).await {
        errors.push(format!("network: {e}"));
    }
    if let Err(es) = w.ns.remove(m.keeper).await {
        errors.extend(es.into_iter().map(|e| e.to_string()));
    }
    if let Some(base) = w.user_base
        && errors.is_empty()
    {
        m.ranges.release(base);
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warm(key: &str, user_base: Option<u32>) -> Warm {
        Warm {
            key: key.into(),
            ns: PodNamespaces::at(format!("/nonexistent/{key}")),
            user_base,
            ip: "10.0.0.9".into(),
        }
    }

    #[test]
    fn a_pod_takes_only_a_sandbox_whose_user_namespace_matches_its_own() {
        let pool = WarmPool::new("/nonexistent".into(), 2);
        pool.lock().push(warm("warm-a", Some(65536)));
        assert!(
            pool.take(false).is_none(),
            "a pod without a user namespace got one with"
        );
        assert!(!pool.wanted() || pool.len() < 2);
        let w = pool.take(true).expect("the one with a user namespace");
        assert_eq!(w.key, "warm-a");
        assert!(pool.is_empty());
        assert!(pool.wanted());
    }

    #[test]
    fn a_pool_turned_off_gives_nothing_and_wants_nothing() {
        let pool = WarmPool::new("/nonexistent".into(), 1);
        pool.lock().push(warm("warm-b", None));
        pool.turn_off();
        assert!(pool.take(false).is_none());
        assert!(!pool.wanted());
        let empty = WarmPool::new("/nonexistent".into(), 0);
        assert!(!empty.wanted(), "a pool of size 0 makes nothing");
    }
}
