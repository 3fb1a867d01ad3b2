//! What control replicas on one etcd share: the cluster's keys, and which replica runs the
//! controllers.
//!
//! **Keys.** The CA, the service-account signing key, control's kubelet client certificate and
//! the admin and viewer tokens are kept in the store under a key no API resource maps to
//! ([`SECRETS_KEY`]). The first replica makes them and stores them; every other replica writes
//! the stored ones into its own data directory before it loads them, so each replica signs its
//! own serving certificate with the cluster's CA. (They sit in etcd unencrypted, as Secrets do
//! in a kube-apiserver without an encryption provider: etcd's own access is the wall.)
//!
//! **Leader election.** The controllers run in one replica at a time: the holder of the Lease
//! `kube-system/nodeless-controllers` (coordination.k8s.io/v1). The holder renews it every
//! [`RETRY`]; another replica takes it over when it has seen the record unchanged for the
//! lease's duration by its own clock (as client-go's leader election does, so clocks need not
//! agree); a holder that cannot renew within [`RENEW_DEADLINE`] stops its controllers at once.
//! Writes are compare-and-swap on the Lease's resourceVersion, which etcd enforces.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::ControlError;
use crate::api::local::LocalClient;
use crate::auth::Tokens;
use crate::store::{Store, StoreError, Write};

/// The store key of the cluster's shared keys.
pub const SECRETS_KEY: &str = "/nodeless.io/cluster-keys";
/// Files under the data directory that every replica shares.
const SHARED_FILES: [&str; 6] = [
    "pki/ca.crt",
    "pki/ca.key",
    "pki/sa.key",
    "pki/kubelet-client.crt",
    "pki/kubelet-client.key",
    "tokens.json",
];

/// Make this replica's data directory hold the cluster's shared keys: the stored ones if there
/// are any, else this replica's (made now if need be), which it then stores for the others.
pub async fn share_keys(store: &Store, data_dir: &Path, hosts: &[String]) -> Result<(), ControlError> {
    let io = |what: String| move |source| ControlError::Io { what, source };
    loop {
        if let Some(stored) = store.get(SECRETS_KEY) {
            let files = stored
                .obj
                .get("files")
                .and_then(Value::as_object)
                .ok_or_else(|| ControlError::Bootstrap(format!("the store's {SECRETS_KEY} has no files")))?;
            let mut changed = false;
            for name in SHARED_FILES {
                let Some(text) = files.get(name).and_then(Value::as_str) else {
                    return Err(ControlError::Bootstrap(format!(
                        "the store's {SECRETS_KEY} lacks {name}"
                    )));
                };
                let path = data_dir.join(name);
                if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
                    crate::private::dir(path.parent().unwrap_or(data_dir))
                        .map_err(io(format!("creating {}", path.display())))?;
                    crate::private::write(&path, text.as_bytes()).map_err(io(format!("writing {}", path.display())))?;
                    changed = true;
                }
            }
            if changed {
                // Signed by another CA: sign again with the cluster's.
                let _ = std::fs::remove_file(data_dir.join("pki/server.crt"));
                tracing::info!("took the cluster's CA, signing keys and tokens from the store");
            }
            return Ok(());
        }
        // The first replica: make the keys here, then offer them.
        crate::tls::Pki::load_or_create(&data_dir.join("pki"), hosts)?;
        crate::tls::service_account_key(&data_dir.join("pki"))?;
        Tokens::load_or_create(&data_dir.join("tokens.json")).map_err(io("token file".into()))?;
        let mut files = serde_json::Map::new();
        for name in SHARED_FILES {
            let path = data_dir.join(name);
            let text = std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
            files.insert(name.into(), Value::String(text));
        }
        match store
            .write(Write::Create {
                key: SECRETS_KEY.into(),
                obj: json!({"metadata": {"name": "cluster-keys"}, "files": files}),
            })
            .await
        {
            Ok(_) => return Ok(()),
            // Another replica was first: take its keys.
            Err(StoreError::AlreadyExists) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The Lease the controllers' leader holds.
pub const LEASE_NAMESPACE: &str = "kube-system";
pub const LEASE_NAME: &str = "nodeless-controllers";
/// How long a Lease unchanged means its holder is gone.
pub const LEASE_DURATION: Duration = Duration::from_secs(10);
/// A holder that has not renewed for this long stops its controllers.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(7);
/// How often the holder renews and the others look.
pub const RETRY: Duration = Duration::from_secs(2);

/// Run `start`'s tasks while this replica (`identity`) holds the controllers' Lease; stop them
/// when it loses it. Runs for as long as the process does.
pub async fn lead<F>(client: LocalClient, identity: String, start: F)
where
    F: Fn() -> Vec<tokio::task::JoinHandle<()>>,
{
    let leases = client.served("coordination.k8s.io", "leases");
    let mut running: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let mut last_renewed: Option<Instant> = None;
    // The record as last seen, and when this replica first saw it so.
    let mut observed: Option<(u64, Instant)> = None;
    loop {
        let now = Instant::now();
        let current = client.get(&leases, Some(LEASE_NAMESPACE), LEASE_NAME);
        if let Some(c) = &current {
            if observed.is_none_or(|(rev, _)| rev != c.rev) {
                observed = Some((c.rev, now));
            }
        }
        let holder = current.as_ref().and_then(|c| {
            c.obj
                .pointer("/spec/holderIdentity")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        let stamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let attempt = match &current {
            None => {
                let obj = json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": LEASE_NAME, "namespace": LEASE_NAMESPACE},
                    "spec": {
                        "holderIdentity": identity,
                        "leaseDurationSeconds": LEASE_DURATION.as_secs(),
                        "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0,
                    },
                });
                Some(client.create(&leases, Some(LEASE_NAMESPACE), obj).await.map(|_| ()))
            }
            Some(c) => {
                let mine = holder.as_deref() == Some(identity.as_str());
                let expired = observed.is_some_and(|(_, since)| now.duration_since(since) >= LEASE_DURATION);
                if mine || expired || holder.as_deref().is_none_or(str::is_empty) {
                    let mut obj = (*c.obj).clone();
                    obj["spec"]["holderIdentity"] = json!(identity);
                    obj["spec"]["renewTime"] = json!(stamp);
                    obj["spec"]["leaseDurationSeconds"] = json!(LEASE_DURATION.as_secs());
                    if !mine {
                        obj["spec"]["acquireTime"] = json!(stamp);
                        let transitions = obj
                            .pointer("/spec/leaseTransitions")
                            .and_then(Value::as_u64)
                            .unwrap_or(0);
                        obj["spec"]["leaseTransitions"] = json!(transitions + 1);
                    }
                    Some(client.update(&leases, c, obj).await.map(|_| ()))
                } else {
                    None
                }
            }
        };
        let contending = attempt.is_some();
        match attempt {
            Some(Ok(())) => {
                last_renewed = Some(Instant::now());
                if running.is_empty() {
                    tracing::info!(%identity, "this replica holds the controllers' Lease: starting the controllers");
                    running = start();
                }
            }
            Some(Err(e)) => tracing::debug!(error = %e, "the controllers' Lease"),
            None => {}
        }
        let holding = last_renewed.is_some_and(|t| t.elapsed() < RENEW_DEADLINE) && contending;
        if !holding && !running.is_empty() {
            tracing::warn!(%identity, "lost the controllers' Lease: stopping the controllers");
            for t in running.drain(..) {
                t.abort();
            }
            last_renewed = None;
        }
        tokio::time::sleep(RETRY).await;
    }
}
