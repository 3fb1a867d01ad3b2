//! The in-process client the controllers use: the same write path as HTTP requests (admission,
//! defaults, metadata rules), without the HTTP.

use std::sync::Arc;

use serde_json::Value;

use super::ApiState;
use super::commit::{UpdateCtx, commit_update};
use super::error::{ApiError, not_found, store_err};
use super::handlers::create_object;
use super::registry::Served;
use crate::store::{Stored, Write};

#[derive(Clone)]
pub struct LocalClient {
    pub state: Arc<ApiState>,
}

impl LocalClient {
    /// A built-in resource, in the version it is stored in (`v1`, or `autoscaling`'s `v2`, never
    /// a view such as `autoscaling/v1`).
    pub fn served(&self, group: &str, plural: &str) -> Arc<Served> {
        self.state
            .registry
            .lookup(group, "v1", plural)
            .filter(|s| s.view_of.is_none())
            .or_else(|| self.state.registry.by_plural(group, plural))
            .expect("built-in resources are always served")
    }

    /// Create the CRD `want`, or bring its spec up to date (a CRD control installs at start).
    pub async fn ensure_crd(&self, want: Value) -> Result<(), String> {
        let defs = self.served("apiextensions.k8s.io", "customresourcedefinitions");
        let name = want
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match self.get(&defs, None, &name) {
            None => {
                self.create(&defs, None, want).await.map_err(|e| e.to_string())?;
            }
            Some(cur) if cur.obj.get("spec") != want.get("spec") => {
                let mut new = (*cur.obj).clone();
                new["spec"] = want["spec"].clone();
                self.update(&defs, &cur, new).await.map_err(|e| e.to_string())?;
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// A resource of any group and version (custom resources), if served.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<Served>> {
        self.state.registry.lookup(group, version, plural)
    }

    pub fn get(&self, served: &Served, ns: Option<&str>, name: &str) -> Option<Stored> {
        self.state.store.get(&served.key(ns, name))
    }

    pub fn list(&self, served: &Served, ns: Option<&str>, filter: &dyn Fn(&Value) -> bool) -> Vec<Stored> {
        self.state.store.list(&served.ns_prefix(ns), None, 0, filter).0
    }

    pub async fn create(&self, served: &Served, ns: Option<&str>, obj: Value) -> Result<Value, ApiError> {
        create_object(&self.state, served, ns, obj, false).await
    }

    /// Replace the object (spec and metadata; status is kept for kinds with a status subresource).
    pub async fn update(&self, served: &Served, current: &Stored, new: Value) -> Result<Value, ApiError> {
        self.commit(served, current, new, None).await
    }

    /// Replace only the status.
    pub async fn update_status(&self, served: &Served, current: &Stored, new: Value) -> Result<Value, ApiError> {
        self.commit(served, current, new, Some("status")).await
    }

    async fn commit(
        &self,
        served: &Served,
        current: &Stored,
        new: Value,
        sub: Option<&str>,
    ) -> Result<Value, ApiError> {
        let ns = current.obj.pointer("/metadata/namespace").and_then(Value::as_str);
        let key = served.key(ns, super::objects::name_of(&current.obj));
        commit_update(&self.state, served, &key, current, new, &UpdateCtx { sub, dry: false }).await
    }

    /// Delete with the given propagation policy (Background when None).
    pub async fn delete(
        &self,
        served: &Served,
        ns: Option<&str>,
        name: &str,
        propagation: Option<&str>,
    ) -> Result<(), ApiError> {
        let q = match propagation {
            Some(p) => [("propagationPolicy".to_string(), p.to_string())].into_iter().collect(),
            None => Default::default(),
        };
        match super::delete::delete(&self.state, served, ns, name, &q, b"", super::http::Want::Json).await {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Remove an object now, whatever its grace period (pod GC of pods on lost nodes).
    pub async fn force_delete(&self, served: &Served, current: &Stored) -> Result<(), ApiError> {
        let ns = current.obj.pointer("/metadata/namespace").and_then(Value::as_str);
        let name = super::objects::name_of(&current.obj);
        let key = served.key(ns, name);
        match self
            .state
            .store
            .write(Write::Delete {
                key,
                expect_rev: Some(current.rev),
            })
            .await
        {
            Ok(stored) => {
                super::hooks::after_delete(&self.state, served, &stored.obj);
                Ok(())
            }
            Err(crate::store::StoreError::NotFound) => Ok(()),
            Err(e) => Err(store_err(served, name, e)),
        }
    }

    /// Bind a pod to a node (what the scheduler writes).
    pub async fn bind(&self, ns: &str, name: &str, node: &str) -> Result<(), ApiError> {
        let pods = self.served("", "pods");
        let body = serde_json::json!({"target": {"kind": "Node", "name": node}});
        super::pods::bind(&self.state, &pods, ns, name, body).await.map(|_| ())
    }

    pub fn not_found(&self, served: &Served, name: &str) -> ApiError {
        not_found(served, name)
    }
}
