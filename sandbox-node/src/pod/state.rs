//! What a pod worker remembers about each container, in its own memory and in a file under the
//! node's run directory, which outlives the node process (so a restarted node adopts running
//! containers instead of starting them again).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::shim_proto::ExitRecord;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// Restart count of this attempt (0 for the first).
    pub number: u32,
    pub id: String,
    pub started_at: String,
    pub image: String,
    pub image_id: String,
    #[serde(default)]
    pub exit: Option<ExitRecord>,
}

#[derive(Debug, Default)]
pub struct Ctr {
    pub name: String,
    pub init: bool,
    /// Added to the running pod (`kubectl debug`): started once, never restarted, not counted
    /// in the pod's phase or readiness.
    pub ephemeral: bool,
    pub current: Option<Attempt>,
    pub previous: Option<Attempt>,
    /// Why the container is not running (ErrImagePull, CrashLoopBackOff, …) and the message.
    pub waiting: Option<(String, String)>,
    pub next_start: Option<Instant>,
    pub backoff: Duration,
    pub ready: bool,
    /// The startup probe passed (or there is none) for the current attempt.
    pub started: bool,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Ctr {
    pub fn running(&self) -> bool {
        self.current.as_ref().is_some_and(|a| a.exit.is_none())
    }
    pub fn exited(&self) -> Option<&ExitRecord> {
        self.current.as_ref().and_then(|a| a.exit.as_ref())
    }
    pub fn restart_count(&self) -> u32 {
        self.current.as_ref().map_or(0, |a| a.number)
    }
    pub fn stop_tasks(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Saved {
    pub pod_ip: String,
    /// The host uid (and gid) that is root in the pod's user namespace, if it has one: the
    /// pod's range, kept across node restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_base: Option<u32>,
    /// The CNI container id, when it is not the pod's UID (a warm sandbox's key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_id: Option<String>,
    pub containers: BTreeMap<String, SavedCtr>,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedCtr {
    pub current: Option<Attempt>,
    pub previous: Option<Attempt>,
}

/// The pod's state file, in its run directory (memory): every save writes a new file and
/// renames it over the old one, which on the data disk cost an inode allocation each time.
pub fn state_path(pod_run_dir: &Path) -> PathBuf {
    pod_run_dir.join("state.json")
}

/// The pod's saved state: from its run directory, or from its data directory for a pod that
/// the node saved before the state moved (adopted after an upgrade).
pub fn load(pod_run_dir: &Path, pod_dir: &Path) -> Option<Saved> {
    let read = |dir: &Path| std::fs::read(state_path(dir)).ok();
    serde_json::from_slice(&read(pod_run_dir).or_else(|| read(pod_dir))?).ok()
}

pub fn save(pod_run_dir: &Path, saved: &Saved) -> std::io::Result<()> {
    std::fs::create_dir_all(pod_run_dir)?;
    let tmp = pod_run_dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(saved)?)?;
    std::fs::rename(tmp, state_path(pod_run_dir))
}
