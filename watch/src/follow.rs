//! The loop each component follows the cluster with. A `kube` reflector per kind keeps a store
//! of every object of that kind; all their events arrive in one stream. After an event, whatever
//! else arrives within the settle time joins it, and then, once every kind has had its first full
//! list, the caller rebuilds its table whole from the stores and swaps it in. So a burst (a
//! rollout, a Service with its slices) is one rebuild, and no rebuild reads half a list: before
//! the first lists are in, a table would withdraw services that exist, or answer NXDOMAIN for
//! them.
//!
//! A watch error is logged at debug level and nothing is rebuilt; the watchers reconnect with
//! kube's default backoff, resume from where they were or list again, and meanwhile the last
//! table stays in place, so a component keeps serving while control is away.

use std::time::Duration;

use futures::stream::{BoxStream, SelectAll};
use futures::{FutureExt, Stream, StreamExt};
use kube::Api;
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};

/// How long after a change more changes are gathered into the same rebuild, unless the component
/// sets its own ([`Follow::settle`]).
pub const SETTLE: Duration = Duration::from_millis(20);

/// The pause before a one-off call to the API that failed (creating an object at start) is made
/// again. Watches do not use it: they reconnect with kube's `default_backoff` (from 800 ms,
/// doubling up to 30 s, with jitter), which spares an API server that is struggling.
pub const RETRY: Duration = Duration::from_secs(1);

/// The kinds a component follows. Make one, ask for a store of each kind with [`Follow::all`],
/// then rebuild from the stores each time [`Follow::changed`] returns:
///
/// ```ignore
/// let mut follow = Follow::new(client, "watch (the table keeps what it holds)");
/// let services = follow.all::<Service>();
/// let slices = follow.all::<EndpointSlice>();
/// while follow.changed().await {
///     table.store(Arc::new(build(&services.state(), &slices.state())));
/// }
/// ```
pub struct Follow {
    client: kube::Client,
    lost: &'static str,
    settle: Duration,
    events: SelectAll<BoxStream<'static, Result<(), watcher::Error>>>,
    listed: Vec<Box<dyn Fn() -> bool + Send + Sync>>,
}

impl Follow {
    /// `lost` is logged (at debug level, with the error) when a watch fails; it should say what
    /// stays in place meanwhile.
    pub fn new(client: kube::Client, lost: &'static str) -> Follow {
        Follow {
            client,
            lost,
            settle: SETTLE,
            events: SelectAll::new(),
            listed: Vec::new(),
        }
    }

    /// Gather changes for `settle` after the first of a burst, instead of [`SETTLE`].
    pub fn settle(mut self, settle: Duration) -> Follow {
        self.settle = settle;
        self
    }

    /// List and watch every object of kind `K` in the cluster (all namespaces). The store is what
    /// a rebuild reads; it holds its first full list before [`Follow::changed`] first returns.
    pub fn all<K>(&mut self) -> Store<K>
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let (store, writer) = reflector::store::<K>();
        let events = reflector(
            writer,
            watcher(Api::<K>::all(self.client.clone()), watcher::Config::default()),
        )
        .default_backoff()
        .map(|e| e.map(|_| ()))
        .boxed();
        self.events.push(events);
        let reader = store.clone();
        self.listed.push(Box::new(move || listed(&reader)));
        store
    }

    /// Wait for the next settled burst of changes after which every store has its first list:
    /// the time to rebuild. `false` only if every watch has ended, which they do not.
    pub async fn changed(&mut self) -> bool {
        let listed = &self.listed;
        next_change(&mut self.events, self.settle, || listed.iter().all(|l| l()), self.lost).await
    }
}

/// Whether a store has had its first full list.
fn listed<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store.wait_until_ready().now_or_never().is_some_and(|r| r.is_ok())
}

/// [`Follow::changed`] over any stream of events, so that its timing is tested without a cluster.
async fn next_change<S, E>(events: &mut S, settle: Duration, listed: impl Fn() -> bool, lost: &str) -> bool
where
    S: Stream<Item = Result<(), E>> + Unpin,
    E: std::fmt::Display,
{
    while let Some(e) = events.next().await {
        if let Err(e) = e {
            tracing::debug!(error = %e, "{lost}");
            continue;
        }
        gather(events, settle).await;
        if listed() {
            return true;
        }
    }
    false
}

/// Take in whatever else arrives within `settle`, errors included (the rebuild that follows
/// reads the stores, not the events). Ends early if the stream does.
async fn gather<S: Stream + Unpin>(events: &mut S, settle: Duration) {
    let deadline = tokio::time::Instant::now() + settle;
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, events.next()).await {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    type Events = tokio::sync::mpsc::UnboundedSender<Result<(), String>>;

    /// The loop over a channel, counting rebuilds and noting when each ran (ms since the start).
    fn start(
        settle: Duration,
        listed: Arc<AtomicBool>,
    ) -> (Events, Arc<Mutex<Vec<u128>>>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let rebuilds = Arc::new(Mutex::new(Vec::new()));
        let seen = rebuilds.clone();
        let t0 = tokio::time::Instant::now();
        let task = tokio::spawn(async move {
            let mut events = tokio_stream(rx);
            while next_change(&mut events, settle, || listed.load(Ordering::SeqCst), "lost").await {
                seen.lock().unwrap().push(t0.elapsed().as_millis());
            }
        });
        (tx, rebuilds, task)
    }

    fn tokio_stream(
        mut rx: tokio::sync::mpsc::UnboundedReceiver<Result<(), String>>,
    ) -> impl Stream<Item = Result<(), String>> + Unpin {
        Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    async fn after(ms: u64) {
        tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_millis(ms)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_rebuild_after_the_settle_time() {
        let (tx, rebuilds, task) = start(Duration::from_millis(50), Arc::new(AtomicBool::new(true)));
        tx.send(Ok(())).unwrap();
        after(10).await;
        tx.send(Ok(())).unwrap();
        tx.send(Err("gone".into())).unwrap();
        after(20).await;
        tx.send(Ok(())).unwrap();
        after(100).await;
        // A change after the settle time is a rebuild of its own.
        tx.send(Ok(())).unwrap();
        after(100).await;
        drop(tx);
        task.await.unwrap();
        assert_eq!(*rebuilds.lock().unwrap(), vec![50, 180]);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_rebuilt_before_every_first_list_nor_on_an_error() {
        let listed = Arc::new(AtomicBool::new(false));
        let (tx, rebuilds, task) = start(SETTLE, listed.clone());
        tx.send(Ok(())).unwrap();
        after(50).await;
        tx.send(Err("connection refused".into())).unwrap();
        after(50).await;
        assert!(rebuilds.lock().unwrap().is_empty());
        listed.store(true, Ordering::SeqCst);
        tx.send(Err("connection refused".into())).unwrap();
        after(50).await;
        assert!(rebuilds.lock().unwrap().is_empty(), "an error alone rebuilds nothing");
        tx.send(Ok(())).unwrap();
        drop(tx);
        task.await.unwrap();
        assert_eq!(rebuilds.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_the_stream_cuts_the_settle_short() {
        let mut events = futures::stream::iter([Ok::<(), String>(()), Ok(())]);
        let t0 = tokio::time::Instant::now();
        assert!(next_change(&mut events, Duration::from_secs(3600), || true, "lost").await);
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert!(!next_change(&mut events, Duration::from_secs(3600), || true, "lost").await);
    }
}
