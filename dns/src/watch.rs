//! Services and EndpointSlices, and PrivateZones, followed through `kube` reflectors
//! (`nodeless_watch::Follow`): the cluster zone, and the PrivateZone views, are rebuilt whole
//! after changes (at most every 50 ms) and swapped in. A lost connection to control leaves the
//! last zone and views in place while the watchers reconnect.

use std::sync::Arc;
use std::time::Duration;

use hickory_server::proto::rr::Name;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use nodeless_watch::Follow;

use crate::handler::Shared;

/// How long after a change more changes are gathered into the same rebuild.
const SETTLE: Duration = Duration::from_millis(50);

pub async fn run(client: kube::Client, shared: Arc<Shared>, origin: Name, ttl: u32) {
    let mut follow = Follow::new(client, "watch (the last cluster zone stays in place)").settle(SETTLE);
    let services = follow.all::<Service>();
    let slices = follow.all::<EndpointSlice>();
    let mut serial: u32 = 1;
    // Until both first lists are in, a partial zone would answer NXDOMAIN wrongly: `changed`
    // waits for them.
    while follow.changed().await {
        serial = serial.wrapping_add(1);
        let zone = crate::cluster::build(&origin, ttl, serial, &services.state(), &slices.state());
        tracing::debug!(names = zone.zone.len(), serial, "cluster zone rebuilt");
        shared.set_cluster(zone);
    }
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
    let mut follow = Follow::new(client, "privatezone watch (the last views stay in place)").settle(SETTLE);
    let zones = follow.all::<PrivateZone>();
    while follow.changed().await {
        let (views, problems) = crate::privatezone::Views::build(&zones.state(), &forward);
        for p in problems {
            tracing::warn!("{p}");
        }
        shared.set_views(views);
    }
}
