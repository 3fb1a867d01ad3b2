//! Table responses (`Accept: application/json;as=Table`) through the printers crate, for get,
//! list and watch.

use serde_json::Value;

use super::query::Query;
use super::registry::Served;

pub fn include(q: &Query) -> crate::printers::IncludeObject {
    match q.get("includeObject").map(String::as_str) {
        Some("None") => crate::printers::IncludeObject::None,
        Some("Object") => crate::printers::IncludeObject::Object,
        _ => crate::printers::IncludeObject::Metadata,
    }
}

pub fn table(served: &Served, items: &[Value], q: &Query, list_meta: Value) -> Value {
    let now = chrono::Utc::now();
    match (&served.columns, served.custom) {
        (Some(cols), true) => crate::printers::custom_table(items, cols, include(q), now, list_meta),
        _ => crate::printers::table(&served.def.group, &served.def.kind, items, include(q), now, list_meta),
    }
}
