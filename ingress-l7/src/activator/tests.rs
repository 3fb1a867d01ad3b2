//! The activator's gate without a network: a waiting request let through when the table gains
//! an endpoint, the timeout and the full queue, containerConcurrency, and the stats.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{Activator, Config, Refused, Revision};
use crate::activator::RevisionRoute;
use crate::balance::Upstream;
use crate::metrics::Metrics;

fn upstream(endpoints: &[&str]) -> Arc<Upstream> {
    let eps: Vec<SocketAddr> = endpoints.iter().map(|e| e.parse().unwrap()).collect();
    Arc::new(Upstream::new("default/r:80".into(), eps, false))
}

fn route(rev: &Arc<Revision>, endpoints: &[&str], config: Config) -> RevisionRoute {
    RevisionRoute {
        revision: rev.clone(),
        upstream: Some(upstream(endpoints)),
        config,
    }
}

fn activator(queue: usize) -> Arc<Activator> {
    Arc::new(Activator::new(Arc::new(Metrics::new(0)), queue))
}

#[tokio::test]
async fn a_waiting_request_goes_as_soon_as_the_table_has_a_pod() {
    let a = activator(10);
    let rev = a.revision("default", "r");
    a.apply(&[route(&rev, &[], Config::default())]);
    let waiter = {
        let rev = rev.clone();
        tokio::spawn(async move {
            rev.enter(Instant::now())
                .await
                .map(|p| (p.upstream.addr(p.endpoint), Instant::now()))
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rev.waiting(), 1);
    let stats = a.stats(false);
    assert!(stats[0].poke, "a request waiting on a revision with no pod pokes");
    assert_eq!(stats[0].queued, 1);
    let gained = Instant::now();
    a.apply(&[route(&rev, &["10.0.0.1:8080"], Config::default())]);
    let (addr, at) = waiter.await.unwrap().unwrap();
    assert_eq!(addr.to_string(), "10.0.0.1:8080");
    assert!(
        at.duration_since(gained) < Duration::from_millis(50),
        "{:?}",
        at.duration_since(gained)
    );
    assert_eq!(rev.waiting(), 0);
    assert_eq!(rev.under_way(), 0, "the permit was given back when dropped");
}

#[tokio::test]
async fn no_pod_within_the_timeout_is_a_504_naming_the_revision() {
    let a = activator(10);
    let rev = a.revision("default", "r");
    let config = Config {
        timeout: Duration::from_millis(200),
        ..Config::default()
    };
    a.apply(&[route(&rev, &[], config)]);
    let t0 = Instant::now();
    let refused = rev.enter(t0).await.unwrap_err();
    assert!(t0.elapsed() >= Duration::from_millis(200) && t0.elapsed() < Duration::from_secs(1));
    let (status, body) = refused.answer();
    assert_eq!(status, 504);
    assert!(body.contains("default/r") && body.contains("no ready pod"), "{body}");
    assert_eq!(rev.waiting(), 0);
}

#[tokio::test]
async fn a_full_queue_is_a_503() {
    let a = activator(2);
    let rev = a.revision("default", "r");
    a.apply(&[route(&rev, &[], Config::default())]);
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let rev = rev.clone();
            tokio::spawn(async move { rev.enter(Instant::now()).await.map(|_| ()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = rev.enter(Instant::now()).await.unwrap_err();
    assert!(matches!(refused, Refused::QueueFull { capacity: 2, .. }));
    let (status, body) = refused.answer();
    assert_eq!(status, 503);
    assert!(body.contains("queue") && body.contains("full"), "{body}");
    a.apply(&[route(&rev, &["10.0.0.1:8080"], Config::default())]);
    for w in waiters {
        w.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn container_concurrency_one_serialises_per_pod() {
    let a = activator(100);
    let rev = a.revision("default", "r");
    let config = Config {
        concurrency: 1,
        ..Config::default()
    };
    a.apply(&[route(&rev, &["10.0.0.1:8080"], config.clone())]);
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (rev, now, most) = (rev.clone(), now.clone(), most.clone());
            tokio::spawn(async move {
                let _p = rev.enter(Instant::now()).await.unwrap();
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                now.fetch_sub(1, Ordering::SeqCst);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), 1);

    // Two pods: two at once, never two on one.
    a.apply(&[route(&rev, &["10.0.0.1:8080", "10.0.0.2:8080"], config)]);
    let p1 = rev.enter(Instant::now()).await.unwrap();
    let p2 = rev.enter(Instant::now()).await.unwrap();
    assert_ne!(p1.endpoint, p2.endpoint);
    let third = {
        let rev = rev.clone();
        tokio::spawn(async move { rev.enter(Instant::now()).await.map(|p| p.endpoint) })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(rev.waiting(), 1, "a third waits");
    let freed = p2.endpoint;
    drop(p2);
    assert_eq!(third.await.unwrap().unwrap(), freed);
    drop(p1);
}

#[tokio::test]
async fn stats_average_the_requests_under_way_and_report_once_more_after() {
    let a = activator(10);
    let rev = a.revision("default", "r");
    a.apply(&[route(&rev, &["10.0.0.1:8080"], Config::default())]);
    a.stats(true);
    let p1 = rev.enter(Instant::now()).await.unwrap();
    let p2 = rev.enter(Instant::now()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(p2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = a.stats(true);
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].requests, s[0].queued, s[0].poke), (2, 0, false));
    // Two for half the window, one for the other half.
    assert!(
        (1.3..1.7).contains(&s[0].average_concurrency),
        "{}",
        s[0].average_concurrency
    );
    drop(p1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let s = a.stats(true);
    assert_eq!(s.len(), 1, "the window the last request ended in");
    let s = a.stats(true);
    assert_eq!(s.len(), 1, "once more, at zero");
    assert_eq!((s[0].requests, s[0].average_concurrency), (0, 0.0));
    assert!(a.stats(true).is_empty(), "then quiet");
}
