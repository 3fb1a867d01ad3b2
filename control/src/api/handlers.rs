//! The verbs on resources: get, list, create, update, patch, delete, and the status and scale
//! subresources. Every write goes through [`commit_update`] or [`create_object`], so admission,
//! defaults and metadata rules apply the same way whichever verb carried the change.

use std::sync::Arc;

use ::http::{Method, Request, Response};
use hyper::body::Incoming;
use nodeless_types::catalogue::Storage;
use serde_json::{Value, json};

use super::commit::{UpdateCtx, admit, commit_update};
use super::error::{ApiError, Cause, Subject, not_found, store_err, subject};
use super::http::{
    Body, BodyType, Want, answer_form, body_type, json_response, parse_value, read_body, respond, wants,
};
use super::objects::{self, FieldValidation};
use super::query::{ListOpts, Query, dry_run, flag, parse_query};
use super::registry::Served;
use super::select::LabelSelector;
use super::{ApiState, Target, delete, patching, pods, reviews, tables, watch};
use crate::store::Write;

pub(super) async fn dispatch(
    state: &Arc<ApiState>,
    t: Target,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let served = state
        .registry
        .lookup(&t.group, &t.version, &t.plural)
        .ok_or(ApiError::NoRoute)?;
    match served.view_of.clone() {
        // A view (autoscaling/v1 HPA): bodies converted in, answers converted out.
        Some(stored) => {
            let streaming = t.watch_path
                || parse_query(req.uri().query())
                    .get("watch")
                    .is_some_and(|w| w == "true" || w == "1");
            let resp = dispatch_to(state, t, req, stored, true).await?;
            Ok(super::hpa_v1::answer(resp, streaming).await)
        }
        None => dispatch_to(state, t, req, served, false).await,
    }
}

/// Serve `t` from `served`'s objects; `view`: the request is in autoscaling/v1 (its bodies are
/// converted here, its answers by the caller, and it is answered in JSON).
async fn dispatch_to(
    state: &Arc<ApiState>,
    t: Target,
    req: Request<Incoming>,
    served: Arc<Served>,
    view: bool,
) -> Result<Response<Body>, ApiError> {
    let wants = |h: &::http::HeaderMap| -> Result<Want, ApiError> {
        match wants(h)? {
            Want::Protobuf if view => Ok(Want::Json),
            w => Ok(w),
        }
    };
    let incoming = |body: Value| if view { super::hpa_v1::to_v2(body) } else { Ok(body) };
    if !served.def.namespaced() && t.namespace.is_some() {
        return Err(ApiError::NoRoute);
    }
    if let Some(sub) = &t.sub {
        if !served.def.has_subresource(sub) {
            return Err(ApiError::NoRoute);
        }
    }
    let q = parse_query(req.uri().query());
    let method = req.method().clone();
    let answer = if view { Want::Json } else { answer_form(req.headers()) };
    if served.def.storage == Storage::Computed {
        if method != Method::GET || t.sub.is_some() {
            return Err(ApiError::MethodNotAllowed(format!(
                "{} can only be read",
                served.def.qualified_resource()
            )));
        }
        let want = wants(req.headers())?;
        return super::resource_metrics::answer(state, &served, t.namespace.as_deref(), t.name.as_deref(), &q, want);
    }
    if served.def.storage == Storage::Review {
        if t.name.is_some() || method != Method::POST {
            return Err(ApiError::MethodNotAllowed(format!(
                "{} can only be created (POST to the collection)",
                served.def.qualified_resource()
            )));
        }
        let ty = body_type(req.headers())?;
        let body = parse_value(&read_body(req.into_body()).await?, ty)?;
        return reviews::review(state, &served, t.namespace.as_deref(), body, answer);
    }
    match (&t.name, t.sub.as_deref(), method) {
        (None, None, Method::GET) => {
            let want = wants(req.headers())?;
            if t.watch_path || flag(&q, "watch") {
                watch::watch(state.clone(), served, t.namespace.clone(), &q, want)
            } else {
                list(state, &served, t.namespace.as_deref(), &q, want)
            }
        }
        (None, None, Method::POST) => {
            let ty = body_type(req.headers())?;
            let body = incoming(parse_value(&read_body(req.into_body()).await?, ty)?)?;
            create(state, &served, t.namespace.as_deref(), &q, body, answer).await
        }
        (None, None, Method::DELETE) => delete::delete_collection(state, &served, t.namespace.as_deref(), &q).await,
        (Some(name), None, Method::GET) => {
            let want = wants(req.headers())?;
            if t.watch_path || flag(&q, "watch") {
                let mut q = q.clone();
                q.insert("fieldSelector".into(), format!("metadata.name={name}"));
                return watch::watch(state.clone(), served, t.namespace.clone(), &q, want);
            }
            get(state, &served, t.namespace.as_deref(), name, want, &q)
        }
        (Some(name), sub @ (None | Some("status" | "ephemeralcontainers" | "approval")), Method::PUT) => {
            let ty = body_type(req.headers())?;
            let body = incoming(parse_value(&read_body(req.into_body()).await?, ty)?)?;
            update(state, &served, t.namespace.as_deref(), name, sub, &q, body, answer).await
        }
        (Some(name), sub @ (None | Some("status" | "ephemeralcontainers" | "approval")), Method::PATCH) => {
            let ty = body_type(req.headers())?;
            let raw = read_body(req.into_body()).await?;
            let at = At {
                ns: t.namespace.as_deref(),
                name,
                sub,
                view,
            };
            patch(state, &served, at, &q, ty, &raw, answer).await
        }
        (Some(name), Some("status" | "ephemeralcontainers" | "approval"), Method::GET) => {
            get(state, &served, t.namespace.as_deref(), name, answer, &q)
        }
        (Some(name), None, Method::DELETE) => {
            let raw = read_body(req.into_body()).await?;
            delete::delete(state, &served, t.namespace.as_deref(), name, &q, &raw, answer).await
        }
        (Some(name), Some("scale"), m) => scale(state, &served, t.namespace.as_deref(), name, m, &q, req).await,
        (Some(name), Some("finalize"), Method::PUT) => {
            let ty = body_type(req.headers())?;
            let body = parse_value(&read_body(req.into_body()).await?, ty)?;
            delete::finalize_namespace(state, &served, name, body).await
        }
        (Some(name), Some("binding"), Method::POST) => {
            let ty = body_type(req.headers())?;
            let body = parse_value(&read_body(req.into_body()).await?, ty)?;
            pods::bind(state, &served, t.namespace.as_deref().unwrap_or("default"), name, body).await
        }
        (Some(name), Some("eviction"), Method::POST) => {
            let ty = body_type(req.headers())?;
            let body = parse_value(&read_body(req.into_body()).await?, ty)?;
            let ns = t.namespace.as_deref().unwrap_or("default");
            super::eviction::evict(state, &served, ns, name, body, answer).await
        }
        (Some(name), Some("token"), Method::POST) => {
            let ty = body_type(req.headers())?;
            let body = parse_value(&read_body(req.into_body()).await?, ty)?;
            let ns = t.namespace.as_deref().unwrap_or("default");
            reviews::token_request(state, &served, ns, name, body, answer)
        }
        (Some(name), Some(sub @ ("log" | "exec" | "attach" | "portforward")), _) => {
            pods::proxy_to_node(state, t.namespace.as_deref().unwrap_or("default"), name, sub, req).await
        }
        (_, _, m) => Err(ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource ({m})"
        ))),
    }
}

fn get(
    state: &ApiState,
    served: &Served,
    ns: Option<&str>,
    name: &str,
    want: Want,
    q: &Query,
) -> Result<Response<Body>, ApiError> {
    let stored = state
        .store
        .get(&served.key(ns, name))
        .ok_or_else(|| not_found(served, name))?;
    if want == Want::Table {
        let table = tables::table(
            served,
            std::slice::from_ref(&*stored.obj),
            q,
            json!({"resourceVersion": stored.rev.to_string()}),
        );
        return Ok(json_response(200, &table, &[]));
    }
    Ok(respond(want, 200, &stored.obj, &[]))
}

fn encode_continue(rev: u64, key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!({"rv": rev, "start": key}).to_string())
}

fn decode_continue(token: &str) -> Result<String, ApiError> {
    use base64::Engine;
    let bad = || ApiError::bad_request("continue key is not valid: the token could not be decoded");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    v.get("start").and_then(Value::as_str).map(String::from).ok_or_else(bad)
}

fn list(
    state: &ApiState,
    served: &Served,
    ns: Option<&str>,
    q: &Query,
    want: Want,
) -> Result<Response<Body>, ApiError> {
    let opts = ListOpts::parse(q)?;
    let limit: usize = match q.get("limit") {
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::bad_request(format!("limit: invalid value \"{l}\"")))?,
        None => 0,
    };
    let after = q
        .get("continue")
        .filter(|c| !c.is_empty())
        .map(|c| decode_continue(c))
        .transpose()?;
    let prefix = served.ns_prefix(ns);
    let (items, rev, next) = state.store.list(&prefix, after.as_deref(), limit, &|o| opts.matches(o));
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if let Some(last) = next {
        meta["continue"] = json!(encode_continue(rev, &last));
    }
    let items: Vec<Value> = items.into_iter().map(|s| Arc::unwrap_or_clone(s.obj)).collect();
    if want == Want::Table {
        return Ok(json_response(200, &tables::table(served, &items, q, meta), &[]));
    }
    let list = json!({
        "kind": served.def.list_kind,
        "apiVersion": served.def.api_version(),
        "metadata": meta,
        "items": items,
    });
    Ok(respond(want, 200, &list, &[]))
}

/// Check `apiVersion`/`kind` in a body against the resource and fill them in when absent.
fn check_type(served: &Served, obj: &mut Value) -> Result<(), ApiError> {
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request("the request body must be a JSON or YAML object"));
    };
    let want_av = served.def.api_version();
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(av) if av != want_av => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )));
        }
        _ => {}
    }
    match map.get("kind").and_then(Value::as_str) {
        Some(k) if k != served.def.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                served.def.kind
            )));
        }
        _ => {}
    }
    map.insert("apiVersion".into(), json!(want_av));
    map.insert("kind".into(), json!(served.def.kind));
    Ok(())
}

/// Decode a body into the canonical object for this resource.
pub fn decode_body(served: &Served, mut obj: Value, q: &Query) -> Result<(Value, Vec<String>), ApiError> {
    check_type(served, &mut obj)?;
    let validation = FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?;
    if served.custom {
        return super::crd_schema::check(served, obj, validation);
    }
    objects::canonicalize(
        &served.def.group,
        &served.def.kind,
        &served.def.version,
        obj,
        validation,
    )
}

fn required_name(served: &Served) -> ApiError {
    ApiError::Invalid {
        message: format!(
            "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
            served.def.qualified_kind()
        ),
        causes: vec![Cause {
            reason: "FieldValueRequired".into(),
            message: "Required value: name or generateName is required".into(),
            field: "metadata.name".into(),
        }],
        subject: Subject {
            group: served.def.group.clone(),
            kind: served.def.kind.clone(),
            name: String::new(),
        },
    }
}

/// The namespace must exist and not be terminating for anything to be created in it.
fn check_namespace(state: &ApiState, ns: &str) -> Result<(), ApiError> {
    let ns_res = state.registry.lookup("", "v1", "namespaces").ok_or(ApiError::NoRoute)?;
    let Some(stored) = state.store.get(&ns_res.key(None, ns)) else {
        return Err(not_found(&ns_res, ns));
    };
    if stored.obj.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(ApiError::Forbidden(format!(
            "unable to create new content in namespace {ns} because it is being terminated"
        )));
    }
    Ok(())
}

pub(super) async fn create(
    state: &ApiState,
    served: &Served,
    ns: Option<&str>,
    q: &Query,
    body: Value,
    answer: Want,
) -> Result<Response<Body>, ApiError> {
    if served.def.namespaced() && ns.is_none() {
        return Err(ApiError::MethodNotAllowed(format!(
            "{} is namespaced: create it under /namespaces/<namespace>/{}",
            served.def.kind, served.def.plural
        )));
    }
    if let (Some(ns), Some(body_ns)) = (ns, body.pointer("/metadata/namespace").and_then(Value::as_str)) {
        if !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    let (obj, warnings) = decode_body(served, body, q)?;
    let stored = create_object(state, served, ns, obj, dry_run(q)).await?;
    Ok(respond(answer, 201, &stored, &warnings))
}

/// Create a decoded object: metadata, defaults, admission, kind hooks, store.
pub async fn create_object(
    state: &ApiState,
    served: &Served,
    ns: Option<&str>,
    mut obj: Value,
    dry: bool,
) -> Result<Value, ApiError> {
    let ns = if served.def.namespaced() { ns } else { None };
    if let Some(ns) = ns {
        check_namespace(state, ns)?;
    }
    objects::prepare_create_meta(&mut obj, ns);
    let name = objects::name_of(&obj).to_string();
    if name.is_empty() {
        return Err(required_name(served));
    }
    if served.def.has_subresource("status") {
        if let Some(status) = objects::initial_status(&served.def.group, &served.def.kind) {
            obj["status"] = status;
        }
    }
    objects::apply_defaults(&served.def.group, &served.def.kind, &mut obj);
    crate::admission::storage::on_create(&state.store, &served.def.group, &served.def.kind, &mut obj);
    if served.def.group.is_empty() && served.def.kind == "Pod" {
        runtime_class(state, &name, &mut obj)?;
        limit_ranges(state, ns, &name, &mut obj)?;
        service_account_token(state, ns, &name, &mut obj)?;
        let qos = obj.get("spec").map(objects::qos_class).unwrap_or("BestEffort");
        obj["status"]["qosClass"] = json!(qos);
    }
    admit(state, served, &obj, None)?;
    let allocated = super::hooks::before_create(state, served, &mut obj)?;
    // Held until the object is stored, so two creates cannot both take a quota's last unit.
    let _quota = match resource_quota(state, served, ns, &name, &obj).await {
        Ok(guard) => guard,
        Err(e) => {
            super::hooks::undo_create(state, allocated.as_deref());
            return Err(e);
        }
    };
    if dry {
        super::hooks::undo_create(state, allocated.as_deref());
        return Ok(obj);
    }
    let key = served.key(ns, &name);
    match state.store.write(Write::Create { key, obj }).await {
        Ok(stored) => {
            super::hooks::after_write(state, served).await;
            Ok(Arc::unwrap_or_clone(stored.obj))
        }
        Err(e) => {
            super::hooks::undo_create(state, allocated.as_deref());
            Err(store_err(served, &name, e))
        }
    }
}

/// The namespace's ResourceQuotas on a new object (see `admission::quota`): a 403 when it
/// would go past one; otherwise the lock that keeps the check true until the object is stored.
async fn resource_quota(
    state: &ApiState,
    served: &Served,
    ns: Option<&str>,
    name: &str,
    obj: &Value,
) -> Result<Option<tokio::sync::MutexGuard<'static, ()>>, ApiError> {
    use crate::admission::quota;
    static QUOTA: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let Some(ns) = ns else { return Ok(None) };
    let list = |prefix: &str| -> Vec<Value> {
        let (items, _, _) = state.store.list(prefix, None, 0, &|_| true);
        items.into_iter().map(|s| Arc::unwrap_or_clone(s.obj)).collect()
    };
    if state
        .store
        .list(&format!("/core/resourcequotas/{ns}/"), None, 1, &|_| true)
        .0
        .is_empty()
    {
        return Ok(None);
    }
    let guard = QUOTA.lock().await;
    let quotas = list(&format!("/core/resourcequotas/{ns}/"));
    let (group, plural) = (served.def.group.clone(), served.def.plural.clone());
    let mut objects = std::collections::BTreeMap::new();
    for (g, p) in quota::counted(&quotas)
        .into_iter()
        .chain([(group.clone(), plural.clone())])
    {
        let g_dir = if g.is_empty() { "core".to_string() } else { g.clone() };
        let items = list(&format!("/{g_dir}/{p}/{ns}/"));
        objects.insert((g, p), items);
    }
    quota::admit(&group, &plural, obj, &quotas, &objects).map_err(|why| {
        ApiError::Forbidden(format!(
            "{} \"{name}\" is forbidden: {why}",
            served.def.qualified_resource()
        ))
    })?;
    Ok(Some(guard))
}

/// The token volume of a new pod, as its ServiceAccount says (see `admission::service_account`).
/// A pod naming a ServiceAccount its namespace lacks is refused, as Kubernetes' admission
/// refuses it (its token could never be issued, so it could never start); the `default` one
/// may be missing for the moments after its namespace is made, before the namespace
/// controller creates it.
fn service_account_token(state: &ApiState, ns: Option<&str>, name: &str, pod: &mut Value) -> Result<(), ApiError> {
    let ns = ns.unwrap_or_default();
    let account = pod
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    let sa = state.store.get(&format!("/core/serviceaccounts/{ns}/{account}"));
    if sa.is_none() && account != "default" {
        return Err(ApiError::Forbidden(format!(
            "pods \"{name}\" is forbidden: error looking up service account {ns}/{account}: serviceaccount \"{account}\" not found"
        )));
    }
    let automount = sa.and_then(|sa| sa.obj.get("automountServiceAccountToken").and_then(Value::as_bool));
    crate::admission::service_account::mount_token(pod, automount);
    Ok(())
}

/// The pod's RuntimeClass, if it names one (see `admission::runtime_class`): 403 with the
/// reason when the class is missing or conflicts with the pod.
fn runtime_class(state: &ApiState, name: &str, pod: &mut Value) -> Result<(), ApiError> {
    let Some(class) = pod
        .pointer("/spec/runtimeClassName")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
    else {
        return Ok(());
    };
    let rc = state.store.get(&format!("/node.k8s.io/runtimeclasses/{class}"));
    crate::admission::runtime_class::apply(pod, &class, rc.as_ref().map(|s| &*s.obj))
        .map_err(|why| ApiError::Forbidden(format!("pods \"{name}\" is forbidden: {why}")))
}

/// The namespace's LimitRanges on a new pod: defaults in, bounds checked (403 with the reason).
fn limit_ranges(state: &ApiState, ns: Option<&str>, name: &str, pod: &mut Value) -> Result<(), ApiError> {
    use crate::admission::limits;
    limits::requests_from_limits(pod);
    let Some(ns) = ns else { return Ok(()) };
    let (ranges, _, _) = state
        .store
        .list(&format!("/core/limitranges/{ns}/"), None, 0, &|_| true);
    let ranges: Vec<&Value> = ranges.iter().map(|s| &*s.obj).collect();
    match limits::apply(pod, &ranges) {
        Ok(Some(note)) => {
            pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"] = json!(note);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(why) => Err(ApiError::Forbidden(format!("pods \"{name}\" is forbidden: {why}"))),
    }
}

#[allow(clippy::too_many_arguments)]
async fn update(
    state: &ApiState,
    served: &Served,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    q: &Query,
    body: Value,
    answer: Want,
) -> Result<Response<Body>, ApiError> {
    let (obj, warnings) = decode_body(served, body, q)?;
    let key = served.key(ns, name);
    let current = state.store.get(&key).ok_or_else(|| not_found(served, name))?;
    let out = commit_update(state, served, &key, &current, obj, &UpdateCtx { sub, dry: dry_run(q) }).await?;
    Ok(respond(answer, 200, &out, &warnings))
}

/// How many times a patch is re-applied when the object changed underneath it.
const PATCH_RETRIES: usize = 8;

/// The object a patch is for, and whether the request is in autoscaling/v1 (see `hpa_v1`).
struct At<'a> {
    ns: Option<&'a str>,
    name: &'a str,
    sub: Option<&'a str>,
    view: bool,
}

async fn patch(
    state: &ApiState,
    served: &Served,
    at: At<'_>,
    q: &Query,
    ty: BodyType,
    raw: &[u8],
    answer: Want,
) -> Result<Response<Body>, ApiError> {
    let patch = parse_value(
        raw,
        if ty == BodyType::ApplyPatch {
            BodyType::ApplyPatch
        } else {
            BodyType::Json
        },
    )?;
    let At { ns, name, sub, view } = at;
    let key = served.key(ns, name);
    let manager = q.get("fieldManager").cloned();
    let force = flag(q, "force");
    if ty == BodyType::ApplyPatch && manager.as_deref().is_none_or(str::is_empty) {
        return Err(ApiError::bad_request("fieldManager must be set for apply requests"));
    }
    if ty == BodyType::ApplyPatch && view {
        return Err(ApiError::UnsupportedMediaType(format!(
            "server-side apply is not served for {} in {}: apply the autoscaling/v2 object",
            served.def.plural,
            super::hpa_v1::V1
        )));
    }
    for _ in 0..PATCH_RETRIES {
        let current = match state.store.get(&key) {
            Some(c) => c,
            None if ty == BodyType::ApplyPatch && sub.is_none() => {
                // Server-side apply creates what does not exist yet.
                let applied = patching::apply_create(served, &patch, manager.as_deref().unwrap_or_default())?;
                let (obj, warnings) = decode_body(served, applied, q)?;
                if objects::name_of(&obj) != name {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({}) does not match the name on the URL ({name})",
                        objects::name_of(&obj)
                    )));
                }
                let created = create_object(state, served, ns, obj, dry_run(q)).await;
                match created {
                    Ok(v) => return Ok(respond(answer, 201, &v, &warnings)),
                    Err(ApiError::AlreadyExists { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            None => return Err(not_found(served, name)),
        };
        let patched = if view {
            let shown = super::hpa_v1::to_v1((*current.obj).clone());
            super::hpa_v1::to_v2(patching::apply_patch(
                served,
                ty,
                &shown,
                &patch,
                manager.as_deref(),
                force,
            )?)?
        } else {
            patching::apply_patch(served, ty, &current.obj, &patch, manager.as_deref(), force)?
        };
        let (obj, warnings) = decode_body(served, patched, q)?;
        let ctx = UpdateCtx { sub, dry: dry_run(q) };
        match commit_update(state, served, &key, &current, obj, &ctx).await {
            Err(ApiError::Conflict { .. }) if !patch_pins_version(&patch) => continue,
            Err(e) => return Err(e),
            Ok(v) => return Ok(respond(answer, 200, &v, &warnings)),
        }
    }
    Err(ApiError::Conflict {
        resource: served.def.qualified_resource(),
        name: name.to_string(),
        subject: subject(served, name),
    })
}

/// A patch that names a resourceVersion wants optimistic concurrency, not a retry.
fn patch_pins_version(patch: &Value) -> bool {
    patch.pointer("/metadata/resourceVersion").is_some()
}

/// The `autoscaling/v1` Scale view of an object.
fn scale_view(served: &Served, obj: &Value) -> Value {
    let (spec_path, status_path, selector_path) = scale_paths(served);
    let get = |p: &str| obj.pointer(p).cloned();
    let selector = match selector_path {
        Some(p) => get(&p).and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
        // A ReplicationController's selector is a plain map of labels.
        None if served.def.kind == "ReplicationController" => obj
            .pointer("/spec/selector")
            .map(|s| LabelSelector::from_object(&json!({"matchLabels": s})).to_query())
            .unwrap_or_default(),
        None => obj
            .pointer("/spec/selector")
            .map(|s| LabelSelector::from_object(s).to_query())
            .unwrap_or_default(),
    };
    let meta = obj.get("metadata").cloned().unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"), "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": get(&spec_path).unwrap_or(json!(0))},
        "status": {"replicas": get(&status_path).unwrap_or(json!(0)), "selector": selector},
    })
}

fn json_path_to_pointer(p: &str) -> String {
    p.trim_start_matches('.').split('.').map(|s| format!("/{s}")).collect()
}

fn scale_paths(served: &Served) -> (String, String, Option<String>) {
    match &served.scale_paths {
        Some((spec, status, sel)) => (
            json_path_to_pointer(spec),
            json_path_to_pointer(status),
            sel.as_deref().map(json_path_to_pointer),
        ),
        None => ("/spec/replicas".into(), "/status/replicas".into(), None),
    }
}

async fn scale(
    state: &ApiState,
    served: &Served,
    ns: Option<&str>,
    name: &str,
    method: Method,
    q: &Query,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let key = served.key(ns, name);
    if method == Method::GET {
        let cur = state.store.get(&key).ok_or_else(|| not_found(served, name))?;
        return Ok(json_response(200, &scale_view(served, &cur.obj), &[]));
    }
    let ty = body_type(req.headers())?;
    let raw = read_body(req.into_body()).await?;
    let body = parse_value(&raw, if ty == BodyType::Yaml { ty } else { BodyType::Json })?;
    for _ in 0..PATCH_RETRIES {
        let cur = state.store.get(&key).ok_or_else(|| not_found(served, name))?;
        let view = scale_view(served, &cur.obj);
        let new_view = match method {
            Method::PUT => body.clone(),
            Method::PATCH => patching::apply_plain_patch(ty, &view, &body)?,
            m => return Err(ApiError::MethodNotAllowed(format!("{m} is not allowed on scale"))),
        };
        let replicas = new_view
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .ok_or_else(|| ApiError::Invalid {
                message: format!("Scale.autoscaling \"{name}\" is invalid: spec.replicas: Required value"),
                causes: vec![Cause {
                    reason: "FieldValueRequired".into(),
                    message: "Required value".into(),
                    field: "spec.replicas".into(),
                }],
                subject: Subject {
                    group: "autoscaling".into(),
                    kind: "Scale".into(),
                    name: name.to_string(),
                },
            })?;
        if replicas < 0 {
            return Err(ApiError::Invalid {
                message: format!(
                    "Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"
                ),
                causes: vec![Cause {
                    reason: "FieldValueInvalid".into(),
                    message: format!("Invalid value: {replicas}: must be greater than or equal to 0"),
                    field: "spec.replicas".into(),
                }],
                subject: Subject {
                    group: "autoscaling".into(),
                    kind: "Scale".into(),
                    name: name.to_string(),
                },
            });
        }
        let mut new = (*cur.obj).clone();
        let (spec_path, _, _) = scale_paths(served);
        set_pointer(&mut new, &spec_path, json!(replicas));
        if let Some(rv) = new_view.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
            objects::meta_mut(&mut new).insert("resourceVersion".into(), json!(rv));
        } else if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        match commit_update(
            state,
            served,
            &key,
            &cur,
            new,
            &UpdateCtx {
                sub: None,
                dry: dry_run(q),
            },
        )
        .await
        {
            Ok(v) => return Ok(json_response(200, &scale_view(served, &v), &[])),
            Err(ApiError::Conflict { .. }) if new_view.pointer("/metadata/resourceVersion").is_none() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Conflict {
        resource: served.def.qualified_resource(),
        name: name.to_string(),
        subject: subject(served, name),
    })
}

/// Set a value at a JSON pointer, making objects along the way.
pub fn set_pointer(obj: &mut Value, pointer: &str, value: Value) {
    let mut cur = obj;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        if i == parts.len() - 1 {
            cur[*p] = value;
            return;
        }
        cur = cur
            .as_object_mut()
            .expect("made an object above")
            .entry(p.to_string())
            .or_insert_with(|| json!({}));
    }
}
