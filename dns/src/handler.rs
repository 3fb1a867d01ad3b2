//! The request handler: the cluster zone answers authoritatively for every name under it (so
//! search-path expansions such as `example.com.default.svc.cluster.local` never leave the
//! server), pod names are read from the name, the cluster's reverse records answer PTR queries,
//! and every other name goes through the forwarding cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};

use crate::cluster::{ClusterZone, pod_address};
use crate::forward::{Forwarded, Forwarder};
use crate::privatezone::{ViewAnswer, Views};
use crate::table::Answer;

/// What the server knows, swapped whole when the objects change.
pub struct Shared {
    pub cluster: ArcSwap<ClusterZone>,
    pub views: ArcSwap<Views>,
    pub pod_zone: LowerName,
    pub ttl: u32,
    pub forwarder: Forwarder,
    /// Bumped whenever the zones change, so encoded answers kept elsewhere can be dropped.
    pub generation: AtomicU64,
    /// Who is answered, and how fast.
    pub guard: crate::guard::Guard,
}

impl Shared {
    pub fn cluster(&self) -> Arc<ClusterZone> {
        self.cluster.load_full()
    }

    pub fn set_cluster(&self, zone: ClusterZone) {
        self.cluster.store(Arc::new(zone));
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn views(&self) -> Arc<Views> {
        self.views.load_full()
    }

    pub fn set_views(&self, views: Views) {
        self.views.store(Arc::new(views));
        self.generation.fetch_add(1, Ordering::Release);
    }
}

#[derive(Clone)]
pub struct Handler {
    pub shared: Arc<Shared>,
}

/// An answer ready to send.
#[derive(Default)]
struct Reply {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    keep: Keep,
}

/// For how long the bytes of an answer may be sent again to the same request (from an asker
/// no PrivateZone is bound to).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Keep {
    /// The answer depends on the asker, the dice or a failing upstream.
    #[default]
    Never,
    /// The answer depends on the question and the zones alone.
    UntilZonesChange,
    /// A fresh forwarded answer: this long, its TTLs counted down meanwhile.
    For(std::time::Duration),
}

/// The records under the asker's spelling of the name (one allocation each, not two).
fn renamed(records: &[Record], name: &Name) -> Vec<Record> {
    records
        .iter()
        .map(|r| Record::from_rdata(name.clone(), r.ttl, r.data.clone()))
        .collect()
}

impl Handler {
    fn negative(&self, zone: &ClusterZone, code: ResponseCode) -> Reply {
        Reply {
            code,
            authoritative: true,
            authorities: vec![zone.zone.soa().clone()],
            keep: Keep::UntilZonesChange,
            ..Reply::default()
        }
    }

    /// A name under `pod.<zone>`: `<a-b-c-d>.<namespace>.pod.<zone>`.
    fn pod_name(&self, zone: &ClusterZone, qname: &Name, name: &LowerName, qtype: RecordType) -> Reply {
        let depth = name.num_labels().saturating_sub(self.shared.pod_zone.num_labels());
        if depth < 2 {
            return self.negative(zone, ResponseCode::NoError);
        }
        let label = name
            .iter()
            .next()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .unwrap_or_default();
        match (depth, pod_address(&label)) {
            (2, Some(ip)) => {
                let wanted = matches!(
                    (ip, qtype),
                    (std::net::IpAddr::V4(_), RecordType::A | RecordType::ANY)
                        | (std::net::IpAddr::V6(_), RecordType::AAAA | RecordType::ANY)
                );
                if wanted {
                    Reply {
                        authoritative: true,
                        answers: vec![Record::from_rdata(qname.clone(), self.shared.ttl, RData::from(ip))],
                        keep: Keep::UntilZonesChange,
                        ..Reply::default()
                    }
                } else {
                    self.negative(zone, ResponseCode::NoError)
                }
            }
            _ => self.negative(zone, ResponseCode::NXDomain),
        }
    }

    async fn cluster_answer(&self, zone: &ClusterZone, qname: &Name, name: &LowerName, qtype: RecordType) -> Reply {
        if self.shared.pod_zone.zone_of(name) {
            return self.pod_name(zone, qname, name, qtype);
        }
        match zone.zone.lookup(name, qtype) {
            Answer::NxDomain => self.negative(zone, ResponseCode::NXDomain),
            Answer::NoData => self.negative(zone, ResponseCode::NoError),
            Answer::Records(records) => {
                let mut reply = Reply {
                    authoritative: true,
                    answers: renamed(records, qname),
                    keep: Keep::UntilZonesChange,
                    ..Reply::default()
                };
                // An ExternalName: follow the CNAME so the client gets the addresses at once.
                if qtype != RecordType::CNAME {
                    if let Some(RData::CNAME(target)) = records.first().map(|r| &r.data) {
                        let target = LowerName::from(&target.0);
                        if zone.zone.contains(&target) {
                            if let Answer::Records(more) = zone.zone.lookup(&target, qtype) {
                                reply.answers.extend(more.iter().cloned());
                            }
                        } else {
                            reply.keep = Keep::Never;
                            if let Ok(f) = self.shared.forwarder.resolve(&target, qtype, DNSClass::IN).await {
                                reply.answers.extend(f.answers);
                            }
                        }
                    }
                }
                // SRV targets' addresses in the additional section.
                for r in records {
                    if let RData::SRV(srv) = &r.data {
                        let t = LowerName::from(&srv.target);
                        for kind in [RecordType::A, RecordType::AAAA] {
                            reply.additionals.extend(zone.zone.records(&t, kind).iter().cloned());
                        }
                    }
                }
                reply
            }
        }
    }

    async fn answer(
        &self,
        client: std::net::IpAddr,
        qname: &Name,
        name: &LowerName,
        qtype: RecordType,
        class: DNSClass,
    ) -> Reply {
        // A PrivateZone bound to the asker's network comes first.
        let views = self.shared.views.load();
        if class == DNSClass::IN && !views.is_empty() {
            if let Some(view) = views.find(client, name) {
                let reply = match view.answer(name, qtype) {
                    ViewAnswer::Records(r) => Reply {
                        authoritative: true,
                        answers: renamed_first(r, qname, name),
                        ..Reply::default()
                    },
                    ViewAnswer::NoData(soa) => Reply {
                        authoritative: true,
                        authorities: vec![soa],
                        ..Reply::default()
                    },
                    ViewAnswer::NxDomain(soa) => Reply {
                        code: ResponseCode::NXDomain,
                        authoritative: true,
                        authorities: vec![soa],
                        ..Reply::default()
                    },
                    ViewAnswer::Forward(f) => forwarded(f.resolve(name, qtype, class).await, qname, name),
                };
                return reply;
            }
        }
        let zone = self.shared.cluster.load();
        if class == DNSClass::IN && zone.zone.contains(name) {
            return self.cluster_answer(&zone, qname, name, qtype).await;
        }
        if class == DNSClass::IN && qtype == RecordType::PTR {
            if let Some(ptr) = zone.ptr.get(name) {
                return Reply {
                    authoritative: true,
                    answers: renamed(ptr, qname),
                    keep: Keep::UntilZonesChange,
                    ..Reply::default()
                };
            }
        }
        if !self.shared.forwarder.has_upstreams() {
            return Reply {
                code: ResponseCode::Refused,
                ..Reply::default()
            };
        }
        forwarded(self.shared.forwarder.resolve(name, qtype, class).await, qname, name)
    }
}

fn forwarded(result: Result<Forwarded, String>, qname: &Name, name: &LowerName) -> Reply {
    match result {
        Ok(f) => Reply {
            code: f.response_code,
            authoritative: false,
            answers: renamed_first(f.answers, qname, name),
            authorities: f.authorities,
            additionals: f.additionals,
            keep: f.fresh_for.map_or(Keep::Never, Keep::For),
        },
        Err(e) => {
            tracing::debug!(%name, error = %e, "no upstream answered");
            Reply {
                code: ResponseCode::ServFail,
                ..Reply::default()
            }
        }
    }
}

/// Records owned by the asked name carry the asker's spelling of it.
fn renamed_first(records: Vec<Record>, qname: &Name, name: &LowerName) -> Vec<Record> {
    records
        .into_iter()
        .map(|mut r| {
            if LowerName::from(&r.name) == *name {
                r.name = qname.clone();
            }
            r
        })
        .collect()
}

fn failed(request: &Request, code: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = code;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

async fn send<'q, 'a, R, A, N, S, D>(
    handle: &mut R,
    request: &Request,
    response: MessageResponse<'q, 'a, A, N, S, D>,
) -> ResponseInfo
where
    R: ResponseHandler,
    A: Iterator<Item = &'a Record> + Send + 'a,
    N: Iterator<Item = &'a Record> + Send + 'a,
    S: Iterator<Item = &'a Record> + Send + 'a,
    D: Iterator<Item = &'a Record> + Send + 'a,
{
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "sending a DNS response");
            failed(request, ResponseCode::ServFail)
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    /// TCP's way in (UDP's is [`crate::udp`], which checks the asker before decoding).
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut handle: R) -> ResponseInfo {
        if !self.shared.guard.allowed(request.src().ip()) {
            crate::metrics::metrics().guarded(crate::metrics::Guarded::Refused);
            let builder = MessageResponseBuilder::new(&request.queries, None);
            return send(
                &mut handle,
                request,
                builder.error_msg(&request.metadata, ResponseCode::Refused),
            )
            .await;
        }
        self.respond(request, &mut handle).await.0
    }
}

impl Handler {
    /// Answer one request, and say for how long the answer sent may be sent again for the
    /// same request bytes.
    pub async fn respond<R: ResponseHandler>(&self, request: &Request, handle: &mut R) -> (ResponseInfo, Keep) {
        let start = std::time::Instant::now();
        let (info, keep, qtype) = self.respond_to(request, handle).await;
        let proto = match request.protocol() {
            hickory_server::net::xfer::Protocol::Tcp => crate::metrics::Proto::Tcp,
            _ => crate::metrics::Proto::Udp,
        };
        crate::metrics::metrics().answered(proto, qtype, info.response_code.into(), start.elapsed());
        (info, keep)
    }

    /// [`Self::respond`]'s work, and the query's type for the metrics (`NULL` when it had none).
    async fn respond_to<R: ResponseHandler>(
        &self,
        request: &Request,
        handle: &mut R,
    ) -> (ResponseInfo, Keep, RecordType) {
        let qtype = request
            .queries
            .queries()
            .first()
            .map_or(RecordType::NULL, |q| q.query_type());
        // The reply's EDNS payload is the UDP size the server truncates to (TC set).
        let edns = request.edns.as_ref().map(|e| {
            let mut r = Edns::new();
            r.set_max_payload(e.max_payload().clamp(512, 4096));
            r
        });
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return (
                send(
                    handle,
                    request,
                    builder.error_msg(&request.metadata, ResponseCode::BADVERS),
                )
                .await,
                Keep::Never,
                qtype,
            );
        }
        if request.metadata.op_code != OpCode::Query {
            return (
                send(
                    handle,
                    request,
                    builder.error_msg(&request.metadata, ResponseCode::NotImp),
                )
                .await,
                Keep::Never,
                qtype,
            );
        }
        let Ok(info) = request.request_info() else {
            return (
                send(
                    handle,
                    request,
                    builder.error_msg(&request.metadata, ResponseCode::FormErr),
                )
                .await,
                Keep::Never,
                qtype,
            );
        };
        let (qname, name, asked, class) = (
            info.query.original().name().clone(),
            info.query.name().clone(),
            info.query.query_type(),
            info.query.query_class(),
        );
        let reply = self
            .answer(request.src().ip().to_canonical(), &qname, &name, asked, class)
            .await;
        let mut md = Metadata::response_from_request(&request.metadata);
        md.response_code = reply.code;
        md.authoritative = reply.authoritative;
        md.recursion_available = self.shared.forwarder.has_upstreams();
        let response = builder.build(
            md,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            reply.additionals.iter(),
        );
        (send(handle, request, response).await, reply.keep, asked)
    }
}
