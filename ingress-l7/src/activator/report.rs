//! The activator's reports to the autoscaler: every second while any revision has traffic or a
//! queue (and once more after, so the autoscaler sees it go to zero), and at once when a request
//! waits for a revision with no ready pod (a poke), a POST of [`Stats`] to control's
//! [`STATS_PATH`] through the ingress's own client. A failed POST is logged at debug level and
//! the next report goes as usual: control answers 404 until it serves the path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nodeless_types::knative::{STATS_PATH, Stats};

use super::Activator;

/// How often the regular report goes.
pub const EVERY: Duration = Duration::from_secs(1);
/// The longest a POST may take; the next report does not wait for a stuck one longer.
const POST_TIMEOUT: Duration = Duration::from_secs(2);

/// Report for `reporter` (this ingress's name) until the process ends.
pub async fn run(client: kube::Client, activator: Arc<Activator>, reporter: String) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut window = Instant::now();
    loop {
        let reset = tokio::select! {
            _ = tick.tick() => true,
            () = activator.poked() => false,
        };
        let revisions = activator.stats(reset);
        let window_ms = window.elapsed().as_millis() as u64;
        if reset {
            window = Instant::now();
        }
        if revisions.is_empty() {
            continue;
        }
        let stats = Stats {
            reporter: reporter.clone(),
            window_ms,
            revisions,
        };
        if let Err(e) = post(&client, &stats).await {
            tracing::debug!(error = %e, "posting the revisions' stats (the next report goes as usual)");
        }
    }
}

/// Errors of one report's POST.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("encoding the report: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("no answer in {POST_TIMEOUT:?}")]
    TimedOut,
}

async fn post(client: &kube::Client, stats: &Stats) -> Result<(), PostError> {
    let body = serde_json::to_vec(stats)?;
    let req = http::Request::post(STATS_PATH)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)?;
    match tokio::time::timeout(POST_TIMEOUT, client.request_text(req)).await {
        Ok(r) => r.map(|_| ()).map_err(PostError::from),
        Err(_) => Err(PostError::TimedOut),
    }
}
