//! One async lock per volume id, so two calls for one volume never interleave while calls for
//! different volumes run side by side (CSI asks drivers for exactly this).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Locks by key, made on first use and dropped when no call holds them.
#[derive(Default)]
pub struct Locks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl Locks {
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, m| Arc::strong_count(m) > 1);
            map.entry(key.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }
}
