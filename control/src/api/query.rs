//! A request's query parameters, and the list options (label and field selectors) that list and
//! watch both parse from them.

use std::collections::HashMap;

use serde_json::Value;

use super::error::ApiError;
use super::select::{FieldSelector, LabelSelector};

pub type Query = HashMap<String, String>;

pub fn parse_query(q: Option<&str>) -> Query {
    url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

pub fn flag(q: &Query, k: &str) -> bool {
    q.get(k).is_some_and(|v| v == "true" || v == "1")
}

pub fn dry_run(q: &Query) -> bool {
    q.get("dryRun").is_some_and(|v| v == "All")
}

/// Parsed list options shared by list and watch.
pub struct ListOpts {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl ListOpts {
    pub fn parse(q: &Query) -> Result<Self, ApiError> {
        Ok(Self {
            labels: LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or_default())?,
            fields: FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or_default())?,
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}
