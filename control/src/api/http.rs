//! Request bodies and responses: content types, size limits, JSON/YAML, warnings.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use serde_json::Value;

use super::error::ApiError;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The largest request body accepted (the apiserver's limit is 3 MiB as well).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

pub fn json_response(code: u16, value: &Value, warnings: &[String]) -> Response<Body> {
    body_response(
        code,
        serde_json::to_vec(value).unwrap_or_default(),
        "application/json",
        warnings,
    )
}

fn body_response(code: u16, bytes: Vec<u8>, media: &'static str, warnings: &[String]) -> Response<Body> {
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// An object in the form the client asked for: protobuf when it prefers it and the kind has a
/// message, JSON otherwise.
pub fn respond(want: Want, code: u16, value: &Value, warnings: &[String]) -> Response<Body> {
    if want == Want::Protobuf {
        match super::proto::encode(value) {
            Some(Ok(bytes)) => return body_response(code, bytes, super::proto::MEDIA_TYPE, warnings),
            Some(Err(e)) => tracing::warn!(error = %e, "writing a response as protobuf; sent as JSON"),
            None => {}
        }
    }
    json_response(code, value, warnings)
}

/// A refusal as a `Status`, in protobuf when the client prefers it.
pub fn error_response(e: &ApiError, want: Want) -> Response<Body> {
    let mut resp = respond(want, e.code(), &e.status(), &[]);
    if e.code() == 413 {
        // The rest of the body was never read: the connection cannot carry another request.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if e.code() == 401 {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"nodeless\""),
        );
    }
    resp
}

pub fn text_response(code: u16, text: &str) -> Response<Body> {
    let mut resp = Response::new(full(text.to_string()));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Media types a body may arrive in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyType {
    Json,
    Yaml,
    JsonPatch,
    MergePatch,
    StrategicMergePatch,
    ApplyPatch,
    /// `application/vnd.kubernetes.protobuf`: the built-in kinds in their protobuf envelope.
    Protobuf,
}

pub fn body_type(headers: &HeaderMap) -> Result<BodyType, ApiError> {
    let raw = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = raw.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    Ok(match media.as_str() {
        "application/json" | "" => BodyType::Json,
        "application/yaml" | "application/x-yaml" | "text/yaml" => BodyType::Yaml,
        "application/json-patch+json" => BodyType::JsonPatch,
        "application/merge-patch+json" => BodyType::MergePatch,
        "application/strategic-merge-patch+json" => BodyType::StrategicMergePatch,
        "application/apply-patch+yaml" | "application/apply-patch+json" => BodyType::ApplyPatch,
        super::proto::MEDIA_TYPE => BodyType::Protobuf,
        _ => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got \"{raw}\")"
            )));
        }
    })
}

/// Read the whole body, refusing more than [`MAX_BODY`] bytes.
pub async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::TooLarge { limit: MAX_BODY }),
        Err(e) => Err(ApiError::bad_request(format!("reading the request body failed: {e}"))),
    }
}

/// Parse a body as JSON, YAML (a superset, but JSON errors read better as JSON) or protobuf.
pub fn parse_value(bytes: &[u8], ty: BodyType) -> Result<Value, ApiError> {
    if ty == BodyType::Protobuf {
        return super::proto::decode(bytes)
            .map_err(|e| ApiError::bad_request(format!("error decoding protobuf body: {e}")));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let as_yaml = matches!(ty, BodyType::Yaml | BodyType::ApplyPatch)
        && !bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{' || *b == b'[');
    if as_yaml {
        serde_yaml::from_slice::<Value>(bytes).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
    } else {
        serde_json::from_slice::<Value>(bytes)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON body: {e}")))
    }
}

/// What the client asked to get back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Json,
    Table,
    /// Protobuf where the kind has a message, JSON otherwise (custom resources, as Kubernetes).
    Protobuf,
}

/// The form of a write's answer or a refusal: protobuf or JSON (tables are for reads, and an
/// Accept nothing satisfies still gets JSON).
pub fn answer_form(headers: &HeaderMap) -> Want {
    match wants(headers) {
        Ok(Want::Protobuf) => Want::Protobuf,
        _ => Want::Json,
    }
}

pub fn wants(headers: &HeaderMap) -> Result<Want, ApiError> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(Want::Json);
    };
    let mut json_ok = false;
    for part in accept.split(',') {
        let p = part.trim();
        let media = p.split(';').next().unwrap_or_default().trim();
        if p.contains("as=Table") && p.contains("g=meta.k8s.io") && (media == "application/json" || media == "*/*") {
            return Ok(Want::Table);
        }
        if p.contains("as=") {
            continue;
        }
        if media == super::proto::MEDIA_TYPE && !json_ok {
            return Ok(Want::Protobuf);
        }
        if matches!(media, "application/json" | "*/*" | "application/*" | "application/yaml") {
            json_ok = true;
        }
    }
    if json_ok {
        Ok(Want::Json)
    } else {
        Err(ApiError::NotAcceptable(format!(
            "only the following media types are accepted: application/json (asked for {accept})"
        )))
    }
}
