//! PrivateZone (`network.nodeless.io/v1`, cluster-scoped): a DNS zone answered only to clients
//! whose source address lies in one of the networks it is bound to, as Alibaba Cloud
//! PrivateZone binds zones to VPCs. Two zones of the same name bound to different networks give
//! each network its own answers; a zone below another (a sub-zone) overrides it for its names;
//! with `forwardTo` the zone's names go to those resolvers instead (a forwarding rule).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "network.nodeless.io",
    version = "v1",
    kind = "PrivateZone",
    plural = "privatezones",
    shortname = "pz"
)]
#[kube(printcolumn = r#"{"name": "Zone", "type": "string", "jsonPath": ".spec.zone"}"#)]
#[kube(printcolumn = r#"{"name": "Networks", "type": "string", "jsonPath": ".spec.networks"}"#)]
#[serde(rename_all = "camelCase")]
pub struct PrivateZoneSpec {
    /// The zone's name, such as `corp.example`.
    pub zone: String,
    /// CIDRs of the networks whose clients see this zone (pod networks, VPC ranges).
    pub networks: Vec<String>,
    /// TTL of the records, in seconds (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<ZoneRecord>,
    /// Resolvers (`ip` or `ip:port`) that answer for the zone instead of its records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_to: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct ZoneRecord {
    /// The owner relative to the zone (`www`, `_sip._tcp`), or `@` for the zone itself.
    pub name: String,
    #[serde(rename = "type")]
    pub type_: RecordKind,
    /// At least one value.
    #[schemars(length(min = 1))]
    pub values: Vec<RecordValue>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum RecordKind {
    #[default]
    A,
    AAAA,
    CNAME,
    MX,
    TXT,
    PTR,
    SRV,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct RecordValue {
    /// In zone-file form: `10.0.0.1`, `fd00::1`, `target.example.`, `10 mail.example.`
    /// (MX), `0 5 5060 sip.example.` (SRV), any text (TXT).
    pub value: String,
    /// 0-100, on A, AAAA and CNAME values: each answer carries one value, picked in proportion
    /// to the weights; 0 is never served. Without weights every value is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub weight: Option<u8>,
}
