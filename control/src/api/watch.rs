//! Watch: a chunked stream of `{"type", "object"}` lines, from any recent resourceVersion.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::ApiState;
use super::error::ApiError;
use super::http::{Body, Want};
use super::query::{ListOpts, Query};
use super::registry::Served;
use super::tables;
use crate::store::{EventType, StoreError};

/// How often a bookmark is sent to a watcher that asked for them.
const BOOKMARK_EVERY: Duration = Duration::from_secs(10);

struct Encoder {
    served: Arc<Served>,
    want: Want,
    query: Query,
}

impl Encoder {
    fn line(&self, kind: &str, obj: &Value) -> Bytes {
        let object = if self.want == Want::Table && kind != "ERROR" && kind != "BOOKMARK" {
            let rv = obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""));
            tables::table(
                &self.served,
                std::slice::from_ref(obj),
                &self.query,
                json!({"resourceVersion": rv}),
            )
        } else {
            obj.clone()
        };
        if self.want == Want::Protobuf {
            if let Some(frame) = super::proto::watch_frame(kind, &object) {
                return Bytes::from(frame);
            }
        }
        let mut out = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        out.push(b'\n');
        Bytes::from(out)
    }

    fn gone(&self, requested: u64, oldest: u64) -> Bytes {
        self.line("ERROR", &ApiError::Gone { requested, oldest }.status())
    }

    fn media_type(&self) -> &'static str {
        if self.want == Want::Protobuf {
            "application/vnd.kubernetes.protobuf;stream=watch"
        } else {
            "application/json"
        }
    }

    fn bookmark(&self, rev: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": self.served.def.kind, "apiVersion": self.served.def.api_version(), "metadata": meta});
        self.line("BOOKMARK", &obj)
    }
}

pub(super) fn watch(
    state: Arc<ApiState>,
    served: Arc<Served>,
    ns: Option<String>,
    q: &Query,
    want: Want,
) -> Result<Response<Body>, ApiError> {
    let opts = ListOpts::parse(q)?;
    let rv_param = q.get("resourceVersion").map(String::as_str).unwrap_or_default();
    let from: Option<u64> = match rv_param {
        "" | "0" => None,
        rv => Some(
            rv.parse()
                .map_err(|_| ApiError::bad_request(format!("resourceVersion: invalid value \"{rv}\"")))?,
        ),
    };
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let send_initial = match q.get("sendInitialEvents").map(String::as_str) {
        Some("true") => true,
        Some(_) => false,
        None => from.is_none(),
    };
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800 + rand::random::<u64>() % 1800));
    let prefix = served.ns_prefix(ns.as_deref());
    let enc = Encoder {
        served: served.clone(),
        // Custom resources have no message: their watches are JSON, as on Kubernetes.
        want: if want == Want::Protobuf && served.custom {
            Want::Json
        } else {
            want
        },
        query: q.clone(),
    };
    let media_type = enc.media_type();
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(256);

    // Initial events come from a snapshot; the watch then starts exactly at the snapshot's revision.
    let (initial, start) = if send_initial {
        let (items, rev, _) = match from {
            None => state.store.list(&prefix, None, 0, &|o| opts.matches(o)),
            Some(_) => state.store.list(&prefix, None, 0, &|o| opts.matches(o)),
        };
        (items, rev)
    } else {
        (Vec::new(), from.unwrap_or_else(|| state.store.revision()))
    };
    let watch = state.store.watch(&prefix, start);
    let watching = state
        .metrics
        .watching(&served.def.group, &served.def.version, &served.def.kind);

    tokio::spawn(async move {
        let _watching = watching;
        let send = |b: Bytes| {
            let tx = tx.clone();
            async move { tx.send(Ok(Frame::data(b))).await.is_ok() }
        };
        let mut watch = match watch {
            Ok(w) => w,
            Err(StoreError::Gone { requested, oldest }) => {
                let _ = send(enc.gone(requested, oldest)).await;
                return;
            }
            Err(_) => return,
        };
        for item in &initial {
            if !send(enc.line("ADDED", &item.obj)).await {
                return;
            }
        }
        if send_initial && bookmarks && q_wants_initial_end(&enc.query) {
            if !send(enc.bookmark(start, true)).await {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        let mut last_rev = start;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tick.tick(), if bookmarks => {
                    if !send(enc.bookmark(last_rev.max(start), false)).await { return; }
                }
                ev = watch.next() => {
                    let Some(ev) = ev else { return };
                    last_rev = ev.rev;
                    let now_matches = ev.kind != EventType::Deleted && opts.matches(&ev.obj);
                    let was = ev.prev.as_deref().map(|p| opts.matches(p));
                    let kind = match (ev.kind, was, now_matches) {
                        (EventType::Deleted, _, _) => if opts.matches(&ev.obj) { "DELETED" } else { continue },
                        (EventType::Added, _, true) => "ADDED",
                        (EventType::Modified, Some(false), true) => "ADDED",
                        (EventType::Modified, _, true) => "MODIFIED",
                        (EventType::Modified, Some(true), false) => "DELETED",
                        _ => continue,
                    };
                    if !send(enc.line(kind, &ev.obj)).await { return; }
                }
            }
        }
    });

    let body = StreamBody::new(ReceiverStream::new(rx)).boxed_unsync();
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    Ok(resp)
}

fn q_wants_initial_end(q: &Query) -> bool {
    q.get("sendInitialEvents").is_some_and(|v| v == "true")
}
