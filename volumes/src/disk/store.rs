//! The disks' state under the driver's state directory, which stands for the cloud's disk API:
//!
//! ```text
//! <state>/disks/<volume-id>.img    the disk's bytes: a sparse file of its capacity
//! <state>/disks/<volume-id>.json   its record: name, capacity, parameters, the node it is attached to
//! <state>/nodes/<node-id>          one empty file per node whose driver ever started here
//! ```
//!
//! A record is written whole to a temporary file and renamed over the old one, so a driver
//! killed mid-write leaves the old record or the new one. The record is what makes a volume
//! exist: an image without one is the remains of a create that did not finish, replaced by
//! the next create of that name. Only the controller writes records; a node's driver (another
//! process, sharing the directory) reads them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::params::{is_node_id, is_volume_id};
use crate::error::Error;

/// What the controller knows of a disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeRecord {
    /// The CreateVolume name the id was derived from.
    pub name: String,
    pub capacity_bytes: i64,
    /// The normalised parameters, as handed out as the volume context.
    pub parameters: BTreeMap<String, String>,
    /// The node the disk is attached to (ControllerPublishVolume), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_node: Option<String>,
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct Store {
    disks: PathBuf,
    nodes: PathBuf,
}

fn not_found_is_none<T>(r: std::io::Result<T>) -> std::io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Store {
    /// Open (and make) the state directory; relative paths are made absolute, since image paths
    /// go to losetup and stay in the kernel's loop device table.
    pub fn open(state_dir: &Path) -> Result<Store, Error> {
        let root = std::path::absolute(state_dir).map_err(|e| Error::io("absolute", state_dir, e))?;
        let store = Store {
            disks: root.join("disks"),
            nodes: root.join("nodes"),
        };
        for d in [&store.disks, &store.nodes] {
            std::fs::create_dir_all(d).map_err(|e| Error::io("mkdir", d, e))?;
        }
        Ok(store)
    }

    /// The state directory itself (its file system is the capacity GetCapacity reports).
    pub fn root(&self) -> &Path {
        self.disks.parent().unwrap_or(&self.disks)
    }

    /// The image of a volume. `id` must have passed [`is_volume_id`].
    pub fn image(&self, id: &str) -> PathBuf {
        debug_assert!(is_volume_id(id));
        self.disks.join(format!("{id}.img"))
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.disks.join(format!("{id}.json"))
    }

    /// The record of volume `id`; none for an id this driver never made.
    pub fn load(&self, id: &str) -> Result<Option<VolumeRecord>, Error> {
        if !is_volume_id(id) {
            return Ok(None);
        }
        let path = self.record_path(id);
        let Some(bytes) = not_found_is_none(std::fs::read(&path)).map_err(|e| Error::io("read", &path, e))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::Record { path, source })
    }

    /// Write the record of volume `id` (atomically: a temporary file, fsync, rename).
    pub fn save(&self, id: &str, record: &VolumeRecord) -> Result<(), Error> {
        let path = self.record_path(id);
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| Error::Record {
            path: path.clone(),
            source,
        })?;
        crate::records::write_atomic(&path, &bytes, 0o644)
    }

    /// Make the image of volume `id`: a sparse file of `size` bytes, replacing any left by a
    /// create that did not finish.
    pub fn create_image(&self, id: &str, size: i64) -> Result<(), Error> {
        let path = self.image(id);
        let tmp = self.disks.join(format!(".{id}.img.tmp"));
        let f = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        f.set_len(size as u64).map_err(|e| Error::io("truncate", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("rename", &path, e))
    }

    /// Grow the image of volume `id` to `size` bytes (the new part is a hole).
    pub fn grow_image(&self, id: &str, size: i64) -> Result<(), Error> {
        let path = self.image(id);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        let len = f.metadata().map_err(|e| Error::io("stat", &path, e))?.len();
        if len < size as u64 {
            f.set_len(size as u64).map_err(|e| Error::io("truncate", &path, e))?;
        }
        Ok(())
    }

    /// Remove volume `id`: its image first, then its record, so a delete cut short leaves a
    /// record that the retried delete finishes.
    pub fn remove(&self, id: &str) -> Result<(), Error> {
        if !is_volume_id(id) {
            return Ok(());
        }
        for path in [self.image(id), self.record_path(id)] {
            not_found_is_none(std::fs::remove_file(&path)).map_err(|e| Error::io("remove", &path, e))?;
        }
        Ok(())
    }

    /// Every volume, ordered by id.
    pub fn list(&self) -> Result<Vec<(String, VolumeRecord)>, Error> {
        let entries = std::fs::read_dir(&self.disks).map_err(|e| Error::io("readdir", &self.disks, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("readdir", &self.disks, e))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            // Deleted between the listing and the read: not there.
            if let Some(record) = self.load(id)? {
                out.push((id.to_string(), record));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Record that a driver runs on node `id`: ControllerPublishVolume attaches disks only to
    /// nodes known so.
    pub fn register_node(&self, id: &str) -> Result<(), Error> {
        if !is_node_id(id) {
            return Err(Error::invalid("node id", format!("{id:?} is not a node name")));
        }
        let path = self.nodes.join(id);
        File::create(&path).map(drop).map_err(|e| Error::io("create", &path, e))
    }

    /// Whether a driver ever ran on node `id` with this state directory.
    pub fn node_known(&self, id: &str) -> bool {
        is_node_id(id) && self.nodes.join(id).is_file()
    }
}

#[cfg(test)]
mod tests {
    use super::{Store, VolumeRecord};
    use crate::disk::params::volume_id;

    #[test]
    fn records_round_trip_and_list_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("csi/disk")).unwrap();
        let (a, b) = (volume_id("b-volume"), volume_id("a-volume"));
        assert_eq!(store.load(&a).unwrap(), None);
        let rec = VolumeRecord {
            name: "b-volume".into(),
            capacity_bytes: 1 << 20,
            parameters: [("type".to_string(), "cloud_ssd".to_string())].into(),
            published_node: Some("n1".into()),
        };
        store.create_image(&a, 1 << 20).unwrap();
        store.save(&a, &rec).unwrap();
        store
            .save(
                &b,
                &VolumeRecord {
                    name: "a-volume".into(),
                    published_node: None,
                    ..rec.clone()
                },
            )
            .unwrap();
        assert_eq!(store.load(&a).unwrap().as_ref(), Some(&rec));
        let ids: Vec<String> = store.list().unwrap().into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, [b.clone(), a.clone()]);
        assert_eq!(std::fs::metadata(store.image(&a)).unwrap().len(), 1 << 20);
        store.grow_image(&a, 3 << 20).unwrap();
        store.grow_image(&a, 2 << 20).unwrap();
        assert_eq!(
            std::fs::metadata(store.image(&a)).unwrap().len(),
            3 << 20,
            "never shrinks"
        );
        store.remove(&a).unwrap();
        store.remove(&a).unwrap();
        assert_eq!(store.load(&a).unwrap(), None);
        assert!(!store.image(&a).exists());
        assert_eq!(store.load("../../etc/passwd").unwrap(), None, "not an id");
    }

    #[test]
    fn nodes_are_known_once_registered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(!store.node_known("n1"));
        store.register_node("n1").unwrap();
        assert!(store.node_known("n1"));
        assert!(store.register_node("../n").is_err());
        assert!(!store.node_known("../nodes/n1"));
    }
}
