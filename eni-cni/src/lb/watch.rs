//! Keeps a balancer's maps in step with the Services and EndpointSlices of a control API,
//! through `kube` reflectors (`nodeless_watch::Follow`): after a change (and a 20 ms settle, so
//! a burst is one sync) the table is rebuilt whole and the difference written. While control is
//! away the maps keep what they hold.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use nodeless_watch::Follow;

use super::Balancer;

pub async fn run(client: kube::Client, mut lb: Balancer) {
    let mut follow = Follow::new(client, "watch (the maps keep what they hold)");
    let services = follow.all::<Service>();
    let slices = follow.all::<EndpointSlice>();
    // `changed` waits for both first lists: a partial list would withdraw services that still
    // exist.
    while follow.changed().await {
        let table = super::table::build(&services.state(), &slices.state());
        match lb.sync(&table) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(changed = n, services = table.len(), "service load balancer synced"),
            Err(e) => tracing::warn!(error = %e, "syncing the service load balancer"),
        }
    }
}
