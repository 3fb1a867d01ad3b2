//! The contract between control's Knative Serving controllers and ingress-l7, which is both the
//! Knative ingress and the activator (there is no queue-proxy: the ingress sees every request).
//!
//! - A Route becomes a KIngress (`networking.internal.knative.dev/v1alpha1` Ingress, as Knative
//!   defines it for its ingress implementations): rules with hosts, a visibility
//!   (`ExternalIP` | `ClusterLocal`), and paths whose `splits` name each revision's Service,
//!   `percent` and `appendHeaders`, optionally matched on `headers` (`Knative-Serving-Tag`).
//! - A Revision becomes a Deployment (replicas set by the autoscaler) and a Service named as the
//!   revision, port 80 (`http`, or `h2c` with appProtocol `kubernetes.io/h2c`) to the user's
//!   container port, labelled [`REVISION`] and annotated with the per-revision settings below,
//!   which the ingress reads from the Service.
//! - The ingress reports what it saw per revision every second, and at once when a request
//!   waits for a revision with no ready pod, with a POST of [`Stats`] to control's
//!   [`STATS_PATH`]; control's autoscaler decides the scale from them.

use serde::{Deserialize, Serialize};

pub const SERVING_GROUP: &str = "serving.knative.dev";
pub const NETWORKING_GROUP: &str = "networking.internal.knative.dev";
pub const AUTOSCALING_GROUP: &str = "autoscaling.internal.knative.dev";

/// Labels Knative puts on what it makes.
pub const SERVICE: &str = "serving.knative.dev/service";
pub const CONFIGURATION: &str = "serving.knative.dev/configuration";
pub const CONFIGURATION_GENERATION: &str = "serving.knative.dev/configurationGeneration";
pub const REVISION: &str = "serving.knative.dev/revision";
pub const REVISION_UID: &str = "serving.knative.dev/revisionUID";
pub const ROUTE: &str = "serving.knative.dev/route";
pub const ROUTE_NAMESPACE: &str = "serving.knative.dev/routeNamespace";
/// Label on a Service, Route or KIngress: `cluster-local` keeps it off the public listeners.
pub const VISIBILITY: &str = "networking.knative.dev/visibility";
pub const CLUSTER_LOCAL: &str = "cluster-local";

/// The KIngress class annotation and this platform's class.
pub const INGRESS_CLASS: &str = "networking.knative.dev/ingress.class";
pub const NODELESS_INGRESS_CLASS: &str = "nodeless.ingress.networking.knative.dev";

/// The request header that picks a tagged revision on the main host.
pub const TAG_HEADER: &str = "Knative-Serving-Tag";
/// Headers the ingress adds for the pod (in splits' `appendHeaders`).
pub const REVISION_HEADER: &str = "Knative-Serving-Revision";
pub const NAMESPACE_HEADER: &str = "Knative-Serving-Namespace";

/// Annotations on a revision's Service, read by the ingress:
/// `containerConcurrency` (0: unlimited), a hard per-pod limit; requests over it wait.
pub const CONTAINER_CONCURRENCY: &str = "nodeless.io/container-concurrency";
/// `timeoutSeconds`: the longest a request may take, waiting for a pod included.
pub const TIMEOUT_SECONDS: &str = "nodeless.io/timeout-seconds";
/// `responseStartTimeoutSeconds`: the longest until the response starts.
pub const RESPONSE_START_TIMEOUT_SECONDS: &str = "nodeless.io/response-start-timeout-seconds";
/// `idleTimeoutSeconds`: the longest without a byte either way.
pub const IDLE_TIMEOUT_SECONDS: &str = "nodeless.io/idle-timeout-seconds";

/// Where the ingress posts [`Stats`] on the API server (the admin or ingress credentials).
pub const STATS_PATH: &str = "/apis/autoscaling.internal.knative.dev/v1alpha1/nodeless-stats";

/// One report of the ingress: what each revision saw over the last `window_ms`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Which ingress reports (several may run); its latest report replaces its previous one.
    pub reporter: String,
    pub window_ms: u64,
    pub revisions: Vec<RevisionStat>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStat {
    pub namespace: String,
    pub revision: String,
    /// Requests in flight to the revision's pods, averaged over the window.
    pub average_concurrency: f64,
    /// Requests that arrived in the window.
    pub requests: u64,
    /// Requests waiting for a pod (or for a pod under its concurrency) now.
    pub queued: u64,
    /// True when the report is sent at once because a request waits on a revision with no
    /// ready pod: scale from zero now.
    pub poke: bool,
}
