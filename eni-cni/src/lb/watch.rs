//! Keeps a balancer's maps in step with the Services and EndpointSlices of a control API,
//! through `kube` reflectors: after a change (and a short settle, so a burst is one sync) the
//! table is rebuilt whole and the difference written. While control is away the maps keep
//! what they hold.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};

use super::Balancer;

/// How long after a change more changes are gathered into the same sync.
const SETTLE: Duration = Duration::from_millis(20);

pub async fn run(client: kube::Client, mut lb: Balancer) {
    let (services, svc_writer) = reflector::store::<Service>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let svc_stream = reflector(
        svc_writer,
        watcher(Api::<Service>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff();
    let slice_stream = reflector(
        slice_writer,
        watcher(Api::<EndpointSlice>::all(client), watcher::Config::default()),
    )
    .default_backoff();
    let mut events = futures::stream::select(
        svc_stream.map(|e| e.map(|_| ()).map_err(|e| e.to_string())),
        slice_stream.map(|e| e.map(|_| ()).map_err(|e| e.to_string())),
    )
    .boxed();
    while let Some(e) = events.next().await {
        if let Err(e) = e {
            tracing::debug!(error = %e, "watch (the maps keep what they hold)");
            continue;
        }
        let deadline = tokio::time::Instant::now() + SETTLE;
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, events.next()).await {}
        if !listed(&services) || !listed(&slices) {
            // A partial list would withdraw services that still exist.
            continue;
        }
        let table = super::table::build(&services.state(), &slices.state());
        match lb.sync(&table) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(changed = n, services = table.len(), "service load balancer synced"),
            Err(e) => tracing::warn!(error = %e, "syncing the service load balancer"),
        }
    }
}

fn listed<K>(store: &reflector::Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    futures::FutureExt::now_or_never(store.wait_until_ready()).is_some_and(|r| r.is_ok())
}
