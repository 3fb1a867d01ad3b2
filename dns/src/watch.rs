//! Services and EndpointSlices through `kube` reflectors; the cluster zone is rebuilt whole
//! after changes (at most every 50 ms) and swapped in. A lost connection to control leaves
//! the last zone in place while the watchers reconnect.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hickory_server::proto::rr::Name;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};

use crate::handler::Shared;

pub async fn run(client: kube::Client, shared: Arc<Shared>, origin: Name, ttl: u32) {
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
    let mut serial: u32 = 1;
    while let Some(e) = events.next().await {
        if let Err(e) = e {
            tracing::debug!(error = %e, "watch (the last cluster zone stays in place)");
            continue;
        }
        settle(&mut events).await;
        if !listed(&services) || !listed(&slices) {
            // Until both first lists are in, a partial zone would answer NXDOMAIN wrongly.
            continue;
        }
        serial = serial.wrapping_add(1);
        let zone = crate::cluster::build(&origin, ttl, serial, &services.state(), &slices.state());
        tracing::debug!(names = zone.zone.len(), serial, "cluster zone rebuilt");
        shared.set_cluster(zone);
    }
}

/// Whether a store has its first full list.
fn listed<K>(store: &reflector::Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    futures::FutureExt::now_or_never(store.wait_until_ready()).is_some_and(|r| r.is_ok())
}

/// Install the PrivateZone CRD (server-side apply; a cluster that refuses leaves it to its
/// admin), then keep the views in step with the PrivateZone objects.
pub async fn private_zones(client: kube::Client, shared: Arc<Shared>, forward: crate::forward::ForwardConfig) {
    use kube::CustomResourceExt;
    use nodeless_types::privatezone::PrivateZone;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    let crd = PrivateZone::crd();
    let name = crd.metadata.name.clone().unwrap_or_default();
    if let Err(e) = crds
        .patch(
            &name,
            &kube::api::PatchParams::apply("nodeless-dns").force(),
            &kube::api::Patch::Apply(&crd),
        )
        .await
    {
        tracing::warn!(error = %e, "installing the PrivateZone CRD");
    }
    let (zones, writer) = reflector::store::<PrivateZone>();
    let mut events = reflector(
        writer,
        watcher(Api::<PrivateZone>::all(client), watcher::Config::default()),
    )
    .default_backoff()
    .boxed();
    while let Some(e) = events.next().await {
        if let Err(e) = e {
            tracing::debug!(error = %e, "privatezone watch (the last views stay in place)");
            continue;
        }
        settle(&mut events).await;
        if !listed(&zones) {
            continue;
        }
        let (views, problems) = crate::privatezone::Views::build(&zones.state(), &forward);
        for p in problems {
            tracing::warn!("{p}");
        }
        shared.set_views(views);
    }
}

/// Take whatever else arrives within 50 ms into the same rebuild.
async fn settle<S: futures::Stream + Unpin>(events: &mut S) {
    let pause = tokio::time::sleep(Duration::from_millis(50));
    tokio::pin!(pause);
    loop {
        tokio::select! {
            _ = &mut pause => break,
            more = events.next() => if more.is_none() { break },
        }
    }
}
