//! `application/vnd.kubernetes.protobuf` bodies: read into, and written from, the JSON objects
//! the rest of the API works on.
//!
//! The Kubernetes wire form is the magic `k8s\0` followed by a `runtime.Unknown` envelope that
//! names the object's apiVersion and kind and carries its message bytes. The messages are read
//! and written through the API's own descriptors (`control/proto/kubernetes.binpb`, made by
//! `scripts/gen-kube-descriptors`), so every built-in kind is covered by one walk over the fields;
//! only the few types whose JSON form is not their message shape (times, quantities,
//! int-or-string, embedded raw objects, string lists) are special.
//!
//! The protobuf field names of the Kubernetes API are its JSON names. Go writes every non-pointer
//! field, empty or not, so a decoded object carries zero values a JSON client would have left
//! out; empty strings and the zero time are dropped as the JSON encoder's `omitempty` does.

use std::sync::LazyLock;

use base64::Engine;
use prost::encoding::{WireType, encode_key, encode_varint};
use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};
use serde_json::{Map, Value};

/// The media type of protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// What every protobuf body of the Kubernetes API starts with.
const MAGIC: &[u8; 4] = b"k8s\0";

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(&include_bytes!("../../proto/kubernetes.binpb")[..])
        .expect("the Kubernetes descriptors built into control decode")
});

const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";
const TIME: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.Duration";
const FIELDS_V1: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1";
const QUANTITY: &str = "k8s.io.apimachinery.pkg.api.resource.Quantity";
const INT_OR_STRING: &str = "k8s.io.apimachinery.pkg.util.intstr.IntOrString";
const RAW_EXTENSION: &str = "k8s.io.apimachinery.pkg.runtime.RawExtension";
/// The envelope's message (read and written by hand; its descriptor checks the tests).
#[cfg(test)]
const UNKNOWN: &str = "k8s.io.apimachinery.pkg.runtime.Unknown";

/// Seconds from the Unix epoch to Go's zero time (0001-01-01T00:00:00Z): an unset `metav1.Time`.
const GO_ZERO_TIME: i64 = -62_135_596_800;

/// Pointer string fields for which an empty value means something (it cannot be told from an
/// unset non-pointer string on the wire).
const EMPTY_MEANS_SOMETHING: &[&str] = &["storageClassName"];

/// Go structs embedded with `json:",inline"`: a nested message on the wire, their fields merged
/// into the parent's in JSON. (field name, message name), from the API's Go types.
const INLINE: &[(&str, &str)] = &[
    ("localObjectReference", "LocalObjectReference"),
    ("volumeSource", "VolumeSource"),
    ("persistentVolumeSource", "PersistentVolumeSource"),
    ("handler", "ProbeHandler"),
    ("ephemeralContainerCommon", "EphemeralContainerCommon"),
    ("ingressRuleValue", "IngressRuleValue"),
    ("ruleWithOperations", "RuleWithOperations"),
    ("rule", "Rule"),
];

/// What reading and writing a message needs beyond its fields, worked out once per message of
/// the pool (walking every field of every message written, as each write did before, cost more
/// than the write itself).
struct Shape {
    /// Its inline fields ([`INLINE`]) and their messages.
    inline: Vec<(prost_reflect::FieldDescriptor, MessageDescriptor)>,
    /// [`list_alias`]'s answer.
    list_alias: Option<prost_reflect::FieldDescriptor>,
}

static SHAPES: LazyLock<std::collections::HashMap<String, Shape>> = LazyLock::new(|| {
    POOL.all_messages()
        .map(|m| {
            let shape = Shape {
                inline: m
                    .fields()
                    .filter_map(|f| inline_message(&f).map(|im| (f, im)))
                    .collect(),
                list_alias: list_alias(&m),
            };
            (m.full_name().to_string(), shape)
        })
        .collect()
});

fn shape(desc: &MessageDescriptor) -> Option<&'static Shape> {
    SHAPES.get(desc.full_name())
}

fn inline_message(field: &prost_reflect::FieldDescriptor) -> Option<MessageDescriptor> {
    let Kind::Message(m) = field.kind() else { return None };
    let inline = INLINE.iter().any(|(f, t)| *f == field.name() && *t == m.name())
        && (m.name() != "Rule" || m.package_name().contains("admissionregistration"));
    (inline && !field.is_list()).then_some(m)
}

/// Why a body could not be read or written as protobuf.
#[derive(Debug, PartialEq, Eq)]
pub struct ProtoError(pub String);

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(msg: impl Into<String>) -> ProtoError {
    ProtoError(msg.into())
}

/// The message describing `kind` of `api_version`, if the API has one (custom resources do not).
pub fn message_for(api_version: &str, kind: &str) -> Option<MessageDescriptor> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = match group {
        "" => "core",
        "internal.apiserver.k8s.io" => "apiserverinternal",
        "meta.k8s.io" => return POOL.get_message_by_name(&format!("{META}.{kind}")),
        g => g.split('.').next().unwrap_or(g),
    };
    POOL.get_message_by_name(&format!("k8s.io.api.{package}.{version}.{kind}"))
        // Options and statuses (DeleteOptions, Status…) are sent under any group's version.
        .or_else(|| POOL.get_message_by_name(&format!("{META}.{kind}")))
}

/// Whether a body is in the protobuf envelope.
pub fn is_enveloped(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Read an enveloped protobuf body into the object's JSON form, apiVersion and kind included.
pub fn decode(bytes: &[u8]) -> Result<Value, ProtoError> {
    let mut body = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| err("the body does not start with the protobuf envelope's \"k8s\\x00\""))?;
    // runtime.Unknown{typeMeta = 1 {apiVersion = 1, kind = 2}, raw = 2, contentEncoding = 3}
    let (mut type_meta, mut raw, mut encoding): (&[u8], &[u8], &[u8]) = (&[], &[], &[]);
    let bad = |e: ProtoError| err(format!("the protobuf envelope does not decode: {e}"));
    while !body.is_empty() {
        match read_key(&mut body).map_err(bad)? {
            (1, WireType::LengthDelimited) => type_meta = read_len(&mut body).map_err(bad)?,
            (2, WireType::LengthDelimited) => raw = read_len(&mut body).map_err(bad)?,
            (3, WireType::LengthDelimited) => encoding = read_len(&mut body).map_err(bad)?,
            (_, wire) => skip(&mut body, wire).map_err(bad)?,
        }
    }
    let (mut api_version, mut kind) = (String::new(), String::new());
    while !type_meta.is_empty() {
        match read_key(&mut type_meta).map_err(bad)? {
            (1, WireType::LengthDelimited) => {
                api_version = String::from_utf8_lossy(read_len(&mut type_meta).map_err(bad)?).into_owned()
            }
            (2, WireType::LengthDelimited) => {
                kind = String::from_utf8_lossy(read_len(&mut type_meta).map_err(bad)?).into_owned()
            }
            (_, wire) => skip(&mut type_meta, wire).map_err(bad)?,
        }
    }
    if kind.is_empty() {
        return Err(err("the protobuf envelope names no type"));
    }
    if !encoding.is_empty() {
        return Err(err(format!(
            "content encoding {:?} is not supported",
            String::from_utf8_lossy(encoding)
        )));
    }
    let desc = message_for(&api_version, &kind).ok_or_else(|| {
        err(format!(
            "no protobuf message is known for kind {kind:?} of {api_version:?}"
        ))
    })?;
    let mut obj = match read_message(raw, &desc).map_err(|e| err(format!("{kind} does not decode: {e}")))? {
        Value::Object(o) => o,
        _ => Map::new(),
    };
    // apiVersion and kind first, as JSON clients write them.
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(api_version));
    out.insert("kind".into(), Value::String(kind));
    obj.remove("apiVersion");
    obj.remove("kind");
    out.extend(obj);
    Ok(Value::Object(out))
}

/// Write an object (with apiVersion and kind) in the protobuf envelope; `None` when the API has
/// no message for its kind (custom resources, tables), which are then served as JSON.
pub fn encode(obj: &Value) -> Option<Result<Vec<u8>, ProtoError>> {
    let api_version = obj.get("apiVersion")?.as_str()?;
    let kind = obj.get("kind")?.as_str()?;
    let desc = message_for(api_version, kind)?;
    Some(encode_as(obj, desc, api_version, kind))
}

fn encode_as(obj: &Value, desc: MessageDescriptor, api_version: &str, kind: &str) -> Result<Vec<u8>, ProtoError> {
    let mut raw = Vec::with_capacity(1024);
    write_message(&mut raw, obj, &desc, &Trail::Root)?;
    Ok(envelope(api_version, kind, &raw))
}

/// One event of a protobuf watch stream: a `WatchEvent` (its object embedded in the envelope),
/// framed by its length as four big-endian bytes. `None` when the object's kind has no message.
pub fn watch_frame(event_type: &str, obj: &Value) -> Option<Vec<u8>> {
    let embedded = match encode(obj)? {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "a watch event does not encode as protobuf");
            return None;
        }
    };
    // WatchEvent{type = 1, object = 2: RawExtension{raw = 1}}
    let mut raw_ext = Vec::with_capacity(embedded.len() + 6);
    write_len(&mut raw_ext, 1, &embedded);
    let mut event = Vec::with_capacity(raw_ext.len() + event_type.len() + 8);
    write_len(&mut event, 1, event_type.as_bytes());
    write_len(&mut event, 2, &raw_ext);
    let len = u32::try_from(event.len()).ok()?;
    let mut out = Vec::with_capacity(4 + event.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&event);
    Some(out)
}

// ---- the wire to JSON ----
//
// Read straight into the JSON value, field by field as the descriptors say.

/// The only field of messages that stand for a plain list of strings in JSON (`ExtraValue`,
/// `Verbs`…: Go's named slice types). A message whose one field is a list of messages is an
/// ordinary struct (`DownwardAPIProjection {items}`), an object in JSON.
fn list_alias(desc: &MessageDescriptor) -> Option<prost_reflect::FieldDescriptor> {
    let mut fields = desc.fields();
    let only = fields.next()?;
    (fields.next().is_none()
        && only.name() == "items"
        && only.is_list()
        && matches!(only.kind(), Kind::String)
        && !desc.name().ends_with("List"))
    .then_some(only)
}

fn truncated() -> ProtoError {
    err("the message ends in the middle of a field")
}

fn read_varint(buf: &mut &[u8]) -> Result<u64, ProtoError> {
    prost::encoding::decode_varint(buf).map_err(|e| err(format!("a malformed varint: {e}")))
}

fn read_len<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], ProtoError> {
    let len = usize::try_from(read_varint(buf)?).map_err(|_| truncated())?;
    if buf.len() < len {
        return Err(truncated());
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(head)
}

fn read_fixed<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N], ProtoError> {
    if buf.len() < N {
        return Err(truncated());
    }
    let (head, rest) = buf.split_at(N);
    *buf = rest;
    Ok(head.try_into().expect("N bytes"))
}

fn read_key(buf: &mut &[u8]) -> Result<(u32, WireType), ProtoError> {
    let key = read_varint(buf)?;
    let wire = WireType::try_from(key & 7).map_err(|_| err(format!("wire type {} is not known", key & 7)))?;
    let number = u32::try_from(key >> 3).map_err(|_| err("a field number out of range"))?;
    Ok((number, wire))
}

fn skip(buf: &mut &[u8], wire: WireType) -> Result<(), ProtoError> {
    match wire {
        WireType::Varint => read_varint(buf).map(drop),
        WireType::SixtyFourBit => read_fixed::<8>(buf).map(drop),
        WireType::ThirtyTwoBit => read_fixed::<4>(buf).map(drop),
        WireType::LengthDelimited => read_len(buf).map(drop),
        WireType::StartGroup | WireType::EndGroup => Err(err("groups are not used by the Kubernetes API")),
    }
}

/// The message `desc` in `buf` as JSON, in the Kubernetes JSON form.
fn read_message(mut buf: &[u8], desc: &MessageDescriptor) -> Result<Value, ProtoError> {
    let name = desc.full_name();
    if matches!(
        name,
        TIME | MICRO_TIME | DURATION | QUANTITY | INT_OR_STRING | RAW_EXTENSION | FIELDS_V1
    ) {
        // Small fixed shapes: read their fields by number.
        let (mut n1, mut n2, mut s1, mut s3): (u64, u64, &[u8], &[u8]) = (0, 0, &[], &[]);
        while !buf.is_empty() {
            match read_key(&mut buf)? {
                (1, WireType::Varint) => n1 = read_varint(&mut buf)?,
                (1, WireType::LengthDelimited) => s1 = read_len(&mut buf)?,
                (2, WireType::Varint) => n2 = read_varint(&mut buf)?,
                (3, WireType::LengthDelimited) => s3 = read_len(&mut buf)?,
                (_, wire) => skip(&mut buf, wire)?,
            }
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        return Ok(match name {
            TIME | MICRO_TIME => time_json(n1 as i64, n2 as i64 as i32, name == MICRO_TIME),
            DURATION => Value::String(crate::duration::format(n1 as i64)),
            QUANTITY => Value::String(text(s1)),
            INT_OR_STRING if n1 == 1 => Value::String(text(s3)),
            INT_OR_STRING => Value::from(n2 as i64 as i32),
            _ => raw_to_json(s1),
        });
    }
    let alias = shape(desc).and_then(|s| s.list_alias.clone());
    let mut out = Map::new();
    let mut items: Vec<Value> = Vec::new();
    while !buf.is_empty() {
        let (number, wire) = read_key(&mut buf)?;
        let Some(field) = desc.get_field(number) else {
            skip(&mut buf, wire)?;
            continue;
        };
        let kind = field.kind();
        if field.is_map() {
            let entry = kind
                .as_message()
                .ok_or_else(|| err(format!("{}: not a map", field.name())))?;
            let (key_field, value_field) = (entry.map_entry_key_field(), entry.map_entry_value_field());
            let mut entry_buf = read_len(&mut buf)?;
            let (mut key, mut value) = (String::new(), Value::Null);
            while !entry_buf.is_empty() {
                let (n, w) = read_key(&mut entry_buf)?;
                if n == key_field.number() {
                    key = match read_single(&mut entry_buf, w, &key_field.kind())? {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                } else if n == value_field.number() {
                    value = read_single(&mut entry_buf, w, &value_field.kind())?;
                } else {
                    skip(&mut entry_buf, w)?;
                }
            }
            if value.is_null() {
                // An entry with no value written: the value's zero (a key with empty text).
                value = match value_field.kind() {
                    Kind::String | Kind::Bytes => Value::String(String::new()),
                    Kind::Message(_) => Value::Object(Map::new()),
                    Kind::Bool => Value::Bool(false),
                    _ => Value::from(0),
                };
            }
            let map = out
                .entry(field.name().to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(m) = map.as_object_mut() {
                m.insert(key, value);
            }
            continue;
        }
        if field.is_list() {
            let mut values = Vec::new();
            if wire == WireType::LengthDelimited && !matches!(kind, Kind::String | Kind::Bytes | Kind::Message(_)) {
                // Packed scalars.
                let mut packed = read_len(&mut buf)?;
                let wire = match kind {
                    Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => WireType::SixtyFourBit,
                    Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => WireType::ThirtyTwoBit,
                    _ => WireType::Varint,
                };
                while !packed.is_empty() {
                    values.push(read_single(&mut packed, wire, &kind)?);
                }
            } else {
                values.push(read_single(&mut buf, wire, &kind)?);
            }
            if alias.as_ref().is_some_and(|a| a.number() == number) {
                items.extend(values);
            } else if let Some(list) = out
                .entry(field.name().to_string())
                .or_insert_with(|| Value::Array(Vec::new()))
                .as_array_mut()
            {
                list.extend(values);
            }
            continue;
        }
        let value = read_single(&mut buf, wire, &kind)?;
        if shape(desc).is_some_and(|s| s.inline.iter().any(|(f, _)| f.number() == field.number())) {
            if let Value::Object(inner) = value {
                out.extend(inner);
            }
            continue;
        }
        match &value {
            Value::Null => {}
            Value::String(s) if s.is_empty() && !EMPTY_MEANS_SOMETHING.contains(&field.name()) => {}
            _ => {
                out.insert(field.name().to_string(), value);
            }
        }
    }
    if alias.is_some() {
        return Ok(Value::Array(items));
    }
    Ok(Value::Object(out))
}

fn read_single(buf: &mut &[u8], wire: WireType, kind: &Kind) -> Result<Value, ProtoError> {
    let want = match kind {
        Kind::Message(_) | Kind::String | Kind::Bytes => WireType::LengthDelimited,
        Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => WireType::SixtyFourBit,
        Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => WireType::ThirtyTwoBit,
        _ => WireType::Varint,
    };
    if wire != want {
        return Err(err(format!("a field sent as {wire:?} where {want:?} was expected")));
    }
    Ok(match kind {
        Kind::Message(m) => read_message(read_len(buf)?, m)?,
        Kind::String => Value::String(
            std::str::from_utf8(read_len(buf)?)
                .map_err(|_| err("a string that is not UTF-8"))?
                .to_string(),
        ),
        Kind::Bytes => Value::String(base64::engine::general_purpose::STANDARD.encode(read_len(buf)?)),
        Kind::Bool => Value::Bool(read_varint(buf)? != 0),
        Kind::Int32 | Kind::Enum(_) => Value::from(read_varint(buf)? as i64 as i32),
        Kind::Int64 => Value::from(read_varint(buf)? as i64),
        Kind::Uint32 => Value::from(read_varint(buf)? as u32),
        Kind::Uint64 => Value::from(read_varint(buf)?),
        Kind::Sint32 | Kind::Sint64 => {
            let n = read_varint(buf)?;
            Value::from((n >> 1) as i64 ^ -((n & 1) as i64))
        }
        Kind::Fixed32 => Value::from(u32::from_le_bytes(read_fixed::<4>(buf)?)),
        Kind::Sfixed32 => Value::from(i32::from_le_bytes(read_fixed::<4>(buf)?)),
        Kind::Float => Value::from(f32::from_le_bytes(read_fixed::<4>(buf)?) as f64),
        Kind::Fixed64 => Value::from(u64::from_le_bytes(read_fixed::<8>(buf)?)),
        Kind::Sfixed64 => Value::from(i64::from_le_bytes(read_fixed::<8>(buf)?)),
        Kind::Double => Value::from(f64::from_le_bytes(read_fixed::<8>(buf)?)),
    })
}

fn time_json(seconds: i64, nanos: i32, micro: bool) -> Value {
    if seconds == GO_ZERO_TIME && nanos == 0 {
        return Value::Null;
    }
    let Some(t) = chrono::DateTime::from_timestamp(seconds, nanos.max(0) as u32) else {
        return Value::Null;
    };
    let precision = if micro {
        chrono::SecondsFormat::Micros
    } else {
        chrono::SecondsFormat::Secs
    };
    Value::String(t.to_rfc3339_opts(precision, true))
}

/// An embedded object: protobuf (enveloped) or JSON bytes.
fn raw_to_json(raw: &[u8]) -> Value {
    if raw.is_empty() {
        return Value::Null;
    }
    if is_enveloped(raw) {
        return decode(raw).unwrap_or(Value::Null);
    }
    serde_json::from_slice(raw).unwrap_or(Value::Null)
}

// ---- JSON to the wire ----
//
// Written straight from the JSON value, field by field as the descriptors say, without building
// a message first: answers are the hot direction (every create, update and get).

fn write_len(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    encode_key(number, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn write_varint(out: &mut Vec<u8>, number: u32, n: u64) {
    encode_key(number, WireType::Varint, out);
    encode_varint(n, out);
}

/// Where in the object a value sits, for error messages (`spec.containers[0].image`): made as
/// the writer descends, and turned into text only when something is wrong (formatting it for
/// every field cost more than writing the field).
#[derive(Clone, Copy)]
enum Trail<'a> {
    Root,
    Field(&'a Trail<'a>, &'a str),
    Index(&'a Trail<'a>, usize),
}

impl std::fmt::Display for Trail<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trail::Root => Ok(()),
            Trail::Field(Trail::Root, name) => f.write_str(name),
            Trail::Field(up, name) => write!(f, "{up}.{name}"),
            Trail::Index(up, i) => write!(f, "{up}[{i}]"),
        }
    }
}

/// A nested message, written in place: its length is known once it is written, so one byte is
/// kept for it (enough below 128 bytes) and the body moved along in the rare case it needs more.
fn write_nested(
    out: &mut Vec<u8>,
    number: u32,
    v: &Value,
    desc: &MessageDescriptor,
    path: &Trail<'_>,
) -> Result<(), ProtoError> {
    encode_key(number, WireType::LengthDelimited, out);
    let at = out.len();
    out.push(0);
    write_message(out, v, desc, path)?;
    let len = out.len() - at - 1;
    if len < 0x80 {
        // A one-byte varint is the length itself.
        out[at] = len as u8;
    } else {
        let mut prefix = Vec::with_capacity(10);
        encode_varint(len as u64, &mut prefix);
        out.splice(at..at + 1, prefix);
    }
    Ok(())
}

/// The fields of `desc` from the JSON value `v` (a message's body, without its own tag).
fn write_message(out: &mut Vec<u8>, v: &Value, desc: &MessageDescriptor, path: &Trail<'_>) -> Result<(), ProtoError> {
    let here = || match path {
        Trail::Root => ".".to_string(),
        p => p.to_string(),
    };
    let wrong = |want: &str| err(format!("{}: expected {want}, got {v}", here()));
    match desc.full_name() {
        TIME | MICRO_TIME => {
            let s = v.as_str().ok_or_else(|| wrong("a time string"))?;
            let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|_| wrong("an RFC 3339 time"))?;
            write_varint(out, 1, t.timestamp() as u64);
            let nanos = t.timestamp_subsec_nanos();
            if nanos != 0 {
                write_varint(out, 2, u64::from(nanos));
            }
            return Ok(());
        }
        DURATION => {
            let ns = v
                .as_str()
                .and_then(crate::duration::parse_nanos)
                .ok_or_else(|| wrong("a duration"))?;
            write_varint(out, 1, ns as u64);
            return Ok(());
        }
        QUANTITY => {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(wrong("a quantity")),
            };
            write_len(out, 1, s.as_bytes());
            return Ok(());
        }
        INT_OR_STRING => {
            match v {
                Value::String(s) => {
                    write_varint(out, 1, 1);
                    write_len(out, 3, s.as_bytes());
                }
                Value::Number(n) => {
                    let n = n
                        .as_i64()
                        .and_then(|n| i32::try_from(n).ok())
                        .ok_or_else(|| wrong("an int32"))?;
                    write_varint(out, 1, 0);
                    write_varint(out, 2, n as i64 as u64);
                }
                _ => return Err(wrong("an integer or a string")),
            }
            return Ok(());
        }
        RAW_EXTENSION | FIELDS_V1 => {
            write_len(out, 1, &serde_json::to_vec(v).unwrap_or_default());
            return Ok(());
        }
        _ => {}
    }
    let shape = shape(desc);
    if let Some(items) = shape.and_then(|s| s.list_alias.as_ref()) {
        let arr = v.as_array().ok_or_else(|| wrong("a list"))?;
        let kind = items.kind();
        for (i, x) in arr.iter().enumerate() {
            write_single(out, items.number(), &kind, x, &Trail::Index(path, i))?;
        }
        return Ok(());
    }
    let obj = v.as_object().ok_or_else(|| wrong("an object"))?;
    for (field, m) in shape.iter().flat_map(|s| s.inline.iter()) {
        if obj.keys().any(|k| m.get_field_by_name(k).is_some()) {
            write_nested(out, field.number(), v, m, path)?;
        }
    }
    for (name, value) in obj {
        if value.is_null() {
            continue;
        }
        // Fields the message does not have (a newer field, apiVersion and kind) are left out.
        let Some(field) = desc.get_field_by_name(name) else {
            continue;
        };
        let here = Trail::Field(path, name);
        if field.is_map() {
            let entry = field.kind();
            let entry = entry.as_message().ok_or_else(|| err(format!("{here}: not a map")))?;
            let value_field = entry.map_entry_value_field();
            let value_kind = value_field.kind();
            let m = value
                .as_object()
                .ok_or_else(|| err(format!("{here}: expected an object")))?;
            let mut buf = Vec::new();
            for (k, x) in m {
                if x.is_null() {
                    continue;
                }
                buf.clear();
                write_len(&mut buf, 1, k.as_bytes());
                write_single(&mut buf, value_field.number(), &value_kind, x, &Trail::Field(&here, k))?;
                write_len(out, field.number(), &buf);
            }
        } else if field.is_list() {
            let arr = value
                .as_array()
                .ok_or_else(|| err(format!("{here}: expected a list, got {value}")))?;
            let kind = field.kind();
            for (i, x) in arr.iter().enumerate() {
                write_single(out, field.number(), &kind, x, &Trail::Index(&here, i))?;
            }
        } else {
            write_single(out, field.number(), &field.kind(), value, &here)?;
        }
    }
    Ok(())
}

fn write_single(out: &mut Vec<u8>, number: u32, kind: &Kind, v: &Value, path: &Trail<'_>) -> Result<(), ProtoError> {
    let wrong = |want: &str| err(format!("{path}: expected {want}, got {v}"));
    let int = || v.as_i64().ok_or_else(|| wrong("an integer"));
    match kind {
        Kind::Message(m) => write_nested(out, number, v, m, path)?,
        Kind::String => write_len(out, number, v.as_str().ok_or_else(|| wrong("a string"))?.as_bytes()),
        Kind::Bool => write_varint(out, number, u64::from(v.as_bool().ok_or_else(|| wrong("a boolean"))?)),
        Kind::Int32 | Kind::Enum(_) => {
            let n = i32::try_from(int()?).map_err(|_| wrong("an int32"))?;
            write_varint(out, number, n as i64 as u64);
        }
        Kind::Int64 => write_varint(out, number, int()? as u64),
        Kind::Uint32 => write_varint(
            out,
            number,
            v.as_u64()
                .filter(|n| u32::try_from(*n).is_ok())
                .ok_or_else(|| wrong("a uint32"))?,
        ),
        Kind::Uint64 => write_varint(out, number, v.as_u64().ok_or_else(|| wrong("a uint64"))?),
        Kind::Sint32 | Kind::Sint64 => {
            let n = int()?;
            write_varint(out, number, ((n << 1) ^ (n >> 63)) as u64);
        }
        Kind::Fixed32 | Kind::Sfixed32 | Kind::Float => {
            encode_key(number, WireType::ThirtyTwoBit, out);
            let bits = match kind {
                Kind::Float => (v.as_f64().ok_or_else(|| wrong("a number"))? as f32).to_bits(),
                _ => int()? as u32,
            };
            out.extend_from_slice(&bits.to_le_bytes());
        }
        Kind::Fixed64 | Kind::Sfixed64 | Kind::Double => {
            encode_key(number, WireType::SixtyFourBit, out);
            let bits = match kind {
                Kind::Double => v.as_f64().ok_or_else(|| wrong("a number"))?.to_bits(),
                _ => int()? as u64,
            };
            out.extend_from_slice(&bits.to_le_bytes());
        }
        Kind::Bytes => {
            let s = v.as_str().ok_or_else(|| wrong("base64 text"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| wrong("base64 text"))?;
            write_len(out, number, &bytes);
        }
    }
    Ok(())
}

/// The envelope: the magic, then `runtime.Unknown{typeMeta{apiVersion, kind}, raw}`.
fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let mut type_meta = Vec::with_capacity(api_version.len() + kind.len() + 4);
    write_len(&mut type_meta, 1, api_version.as_bytes());
    write_len(&mut type_meta, 2, kind.as_bytes());
    let mut out = Vec::with_capacity(MAGIC.len() + type_meta.len() + raw.len() + 12);
    out.extend_from_slice(MAGIC);
    write_len(&mut out, 1, &type_meta);
    write_len(&mut out, 2, raw);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::DynamicMessage;
    use serde_json::json;

    fn round_trip(obj: Value) -> Value {
        let bytes = encode(&obj).expect("a built-in kind").expect("encodes");
        assert!(is_enveloped(&bytes));
        // What we write is well-formed for prost-reflect's decoder too, envelope and object.
        let unknown = POOL.get_message_by_name(UNKNOWN).unwrap();
        let envelope = DynamicMessage::decode(unknown, &bytes[4..]).expect("the envelope decodes");
        let raw = envelope.get_field_by_name("raw").unwrap();
        let desc = message_for(obj["apiVersion"].as_str().unwrap(), obj["kind"].as_str().unwrap()).unwrap();
        DynamicMessage::decode(desc, raw.as_bytes().unwrap().clone()).expect("the object decodes");
        decode(&bytes).expect("decodes")
    }

    #[test]
    fn a_projected_downward_api_is_an_object_not_a_list() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}],
            "volumes": [{"name": "v", "projected": {"sources": [{"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}]}});
        let wire = encode(&pod)
            .unwrap()
            .expect("a pod with a projected downwardAPI is written");
        let back = decode(&wire).unwrap();
        assert_eq!(back["spec"]["volumes"], pod["spec"]["volumes"]);
    }

    #[test]
    fn a_deployment_comes_back_as_it_was_written() {
        let d = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"},
                         "creationTimestamp": "2026-12-06T20:00:01Z", "generation": 3},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{
                        "name": "web", "image": "nginx:1.27",
                        "ports": [{"containerPort": 80, "protocol": "TCP"}],
                        "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
                        "env": [{"name": "EMPTY", "value": ""}],
                        "args": ["-c", ""]
                    }]}
                }
            }
        });
        let back = round_trip(d.clone());
        // The one difference is the empty env value, which Go's omitempty drops as well.
        let mut want = d;
        want["spec"]["template"]["spec"]["containers"][0]["env"][0]
            .as_object_mut()
            .unwrap()
            .remove("value");
        assert_eq!(back, want);
    }

    #[test]
    fn inline_go_structs_merge_into_their_parent_as_in_json() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {
            "volumes": [{"name": "conf", "configMap": {"name": "web-config"}}],
            "containers": [{
                "name": "c",
                "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1}
            }]
        }});
        assert_eq!(round_trip(pod.clone()), pod);
        let ing = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "i"},
            "spec": {"rules": [{"host": "a.example", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}});
        assert_eq!(round_trip(ing.clone()), ing);
    }

    #[test]
    fn secrets_configmaps_and_raw_objects_keep_their_json_forms() {
        let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                       "data": {"k": "aGk="}, "type": "Opaque"});
        assert_eq!(round_trip(s.clone()), s);
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                        "data": {"a": "b", "empty": ""}});
        assert_eq!(round_trip(cm.clone()), cm);
        let rev = json!({"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": {"name": "r"},
                         "data": {"spec": {"x": [1, 2]}}, "revision": 2});
        assert_eq!(round_trip(rev.clone()), rev);
        let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
                        "eventTime": "2026-12-06T20:00:01.123456Z", "reason": "Pulled"});
        assert_eq!(round_trip(ev.clone()), ev);
    }

    #[test]
    fn options_and_lists_of_any_group_find_their_message() {
        assert!(message_for("v1", "DeleteOptions").is_some());
        assert!(message_for("meta.k8s.io/v1", "Status").is_some());
        assert!(message_for("networking.k8s.io/v1", "IngressList").is_some());
        assert!(message_for("rbac.authorization.k8s.io/v1", "ClusterRole").is_some());
        assert!(message_for("example.com/v1", "Widget").is_none());
        assert!(encode(&json!({"apiVersion": "example.com/v1", "kind": "Widget"})).is_none());
        let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "7"},
                          "items": [{"metadata": {"name": "a"}, "spec": {"containers": [{"name": "c"}]}}]});
        assert_eq!(round_trip(list.clone()), list);
    }

    #[test]
    fn watch_events_are_length_framed_with_the_object_enveloped() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "resourceVersion": "9"}});
        let frame = watch_frame("ADDED", &cm).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        let desc = POOL.get_message_by_name(&format!("{META}.WatchEvent")).unwrap();
        // Read back by prost-reflect's own decoder, independent of ours.
        let event = DynamicMessage::decode(desc.clone(), &frame[4..]).unwrap();
        assert_eq!(event.get_field_by_name("type").unwrap().as_str(), Some("ADDED"));
        let object = event.get_field_by_name("object").unwrap();
        let raw = object.as_message().unwrap().get_field_by_name("raw").unwrap();
        assert_eq!(decode(raw.as_bytes().unwrap()).unwrap(), cm);
    }

    #[test]
    fn bad_bodies_are_refused_with_the_reason() {
        assert!(decode(b"{}").unwrap_err().0.contains("envelope"));
        assert!(decode(b"k8s\0\xff\xff").is_err());
        let bad = json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": 3}]}});
        let e = encode(&bad).unwrap().unwrap_err();
        assert!(e.0.contains("spec.containers[0].name"), "{e}");
    }
}
