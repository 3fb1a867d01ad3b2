//! The node's image store: content addressed, every layer unpacked once under its diff ID and
//! shared read-only by every container that uses it (overlayfs lower directories).
//!
//! ```text
//! <root>/index.json            image records, keyed by config digest (the image ID)
//! <root>/layers/<hex>/         one unpacked layer, named by its diff ID
//! <root>/tmp/                  imports in progress (same filesystem, so a rename publishes)
//! <root>/lock                  flock taken by every writer of index.json
//! ```

#[doc(hidden)]
pub mod fuzz;
mod import;
pub mod layout;
mod pull;
pub use pull::{Credential, Mirror, PullConfig, credentials_of};
pub mod reference;
pub mod samples;
mod unpack;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("the image archive is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported image format: {0}")]
    Unsupported(String),
    #[error("image {0:?} is not in the node's store")]
    NotFound(String),
    #[error("{0}")]
    Pull(String),
}

impl ImageError {
    fn io(what: &str) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
        move |source| ImageError::Io {
            what: what.to_string(),
            source,
        }
    }
}

/// What a container inherits from its image.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub user: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// The config digest, `sha256:…`.
    pub id: String,
    /// Normalized references (`docker.io/library/busybox:latest`).
    pub references: Vec<String>,
    /// Diff IDs, bottom layer first.
    pub layers: Vec<String>,
    pub config: ImageConfig,
    /// Bytes of the unpacked layers' blobs as imported.
    pub size: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct Index {
    images: BTreeMap<String, ImageRecord>,
}

pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, ImageError> {
        let root = root.into();
        for d in ["layers", "tmp"] {
            std::fs::create_dir_all(root.join(d)).map_err(ImageError::io("creating the image store"))?;
        }
        Ok(Self { root })
    }

    /// Pull an image into the store: from its registry's mirrors, then the registry (see
    /// `pull`), with the pull secrets' credentials.
    pub async fn pull(
        &self,
        image: &str,
        cfg: &PullConfig,
        credentials: &[Credential],
    ) -> Result<ImageRecord, ImageError> {
        pull::pull(self, image, cfg, credentials).await
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding one unpacked layer.
    pub fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.root.join("layers").join(diff_id.trim_start_matches("sha256:"))
    }

    fn read_index(&self) -> Result<Index, ImageError> {
        match std::fs::read(self.root.join("index.json")) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| ImageError::Corrupt(format!("index.json: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(ImageError::Io {
                what: "reading index.json".into(),
                source: e,
            }),
        }
    }

    fn write_index(&self, index: &Index) -> Result<(), ImageError> {
        let tmp = self.root.join("index.json.tmp");
        let bytes = serde_json::to_vec_pretty(index).map_err(|e| ImageError::Corrupt(e.to_string()))?;
        {
            use std::io::Write;
            let mut f = File::create(&tmp).map_err(ImageError::io("writing index.json"))?;
            f.write_all(&bytes).map_err(ImageError::io("writing index.json"))?;
            f.sync_all().map_err(ImageError::io("writing index.json"))?;
        }
        std::fs::rename(&tmp, self.root.join("index.json")).map_err(ImageError::io("writing index.json"))
    }

    /// Hold the store's writer lock while `f` reads, changes and writes the index.
    fn with_index<T>(&self, f: impl FnOnce(&mut Index) -> Result<T, ImageError>) -> Result<T, ImageError> {
        let lock = File::create(self.root.join("lock")).map_err(ImageError::io("opening the store lock"))?;
        let _guard =
            nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| ImageError::Io {
                what: "locking the image store".into(),
                source: e.into(),
            })?;
        let mut index = self.read_index()?;
        let out = f(&mut index)?;
        self.write_index(&index)?;
        Ok(out)
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        Ok(self.read_index()?.images.into_values().collect())
    }

    /// Find an image by reference (as a pod names it), by ID, or by a unique ID prefix.
    pub fn resolve(&self, reference: &str) -> Result<Option<ImageRecord>, ImageError> {
        let index = self.read_index()?;
        let wanted = reference::normalize(reference);
        if let Some(r) = index.images.values().find(|r| r.references.contains(&wanted)) {
            return Ok(Some(r.clone()));
        }
        let id = reference.strip_prefix("sha256:").unwrap_or(reference);
        if id.len() >= 6 && id.chars().all(|c| c.is_ascii_hexdigit()) {
            let found: Vec<&ImageRecord> = index
                .images
                .values()
                .filter(|r| r.id.trim_start_matches("sha256:").starts_with(id))
                .collect();
            if found.len() == 1 {
                return Ok(Some(found[0].clone()));
            }
        }
        Ok(None)
    }

    /// Import an OCI image layout directory, an OCI archive or a `docker save` tar.
    /// `name` adds a reference (needed when the archive carries only a tag or none).
    /// Nothing is published unless every blob and layer checks out.
    pub fn import(&self, src: &Path, name: Option<&str>) -> Result<Vec<ImageRecord>, ImageError> {
        let staged = import::stage(self, src)?;
        if staged.is_empty() {
            return Err(ImageError::Corrupt("the archive holds no image".into()));
        }
        self.with_index(|index| {
            let mut out = Vec::new();
            for mut rec in staged {
                if let Some(n) = name {
                    rec.references.push(reference::normalize(n));
                }
                rec.references.sort();
                rec.references.dedup();
                // A reference names one image: moving it takes it from any other.
                for other in index.images.values_mut() {
                    other.references.retain(|r| !rec.references.contains(r));
                }
                let entry = index.images.entry(rec.id.clone()).or_insert_with(|| rec.clone());
                for r in &rec.references {
                    if !entry.references.contains(r) {
                        entry.references.push(r.clone());
                    }
                }
                out.push(entry.clone());
            }
            Ok(out)
        })
    }

    /// Remove a reference (or an image by ID with all its references); layers no image uses and
    /// no mounted container stacks are deleted.
    pub fn remove(&self, reference: &str) -> Result<ImageRecord, ImageError> {
        let record = self
            .resolve(reference)?
            .ok_or_else(|| ImageError::NotFound(reference.to_string()))?;
        let wanted = reference::normalize(reference);
        let removed = self.with_index(|index| {
            let rec = index
                .images
                .get_mut(&record.id)
                .ok_or_else(|| ImageError::NotFound(reference.to_string()))?;
            let by_ref = rec.references.contains(&wanted);
            rec.references.retain(|r| *r != wanted);
            if !by_ref || rec.references.is_empty() {
                return Ok(index.images.remove(&record.id));
            }
            Ok(None)
        })?;
        if removed.is_some() {
            self.collect_layers()?;
        }
        Ok(record)
    }

    /// Delete unpacked layers no image refers to and no overlay mount uses.
    fn collect_layers(&self) -> Result<(), ImageError> {
        let index = self.read_index()?;
        let used: std::collections::HashSet<String> = index
            .images
            .values()
            .flat_map(|r| r.layers.iter().map(|l| l.trim_start_matches("sha256:").to_string()))
            .collect();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = std::fs::read_dir(self.root.join("layers")).map_err(ImageError::io("listing layers"))?;
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if used.contains(&name) || mounts.contains(&entry.path().to_string_lossy().to_string()) {
                continue;
            }
            let _ = std::fs::remove_dir_all(entry.path());
        }
        Ok(())
    }
}
