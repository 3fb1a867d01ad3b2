//! What a request asks of a disk, checked and normalised before anything is touched: capacity
//! ranges, StorageClass parameters, volume capabilities, and the names that become file names
//! (volume ids, node ids). No I/O here.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};

use crate::csi::volume_capability::access_mode::Mode;
use crate::csi::volume_capability::{AccessType, MountVolume};
use crate::csi::{CapacityRange, VolumeCapability};
use crate::error::Error;

pub const MIB: i64 = 1 << 20;
pub const GIB: i64 = 1 << 30;
/// The size of a disk whose request names none (a cloud's smallest useful data disk is of this
/// order; kubelet always names one for a PVC).
pub const DEFAULT_CAPACITY: i64 = GIB;

/// The disk types accepted in the `type` parameter, alibaba-cloud-csi-driver's names. They only
/// label the disk here: every type is a sparse file.
pub const DISK_TYPES: &[&str] = &[
    "cloud",
    "cloud_efficiency",
    "cloud_ssd",
    "cloud_essd",
    "cloud_essd_entry",
    "cloud_auto",
    "cloud_regional_disk_auto",
    "elastic_ephemeral_disk_standard",
    "elastic_ephemeral_disk_premium",
];
/// The type of a disk whose parameters name none.
pub const DEFAULT_DISK_TYPE: &str = "cloud_essd";
/// Parameters with this prefix are Kubernetes' own (the external provisioner passes some on
/// with --extra-create-metadata); they are accepted and ignored.
const KUBERNETES_PREFIX: &str = "csi.storage.k8s.io/";

fn round_up_mib(bytes: i64) -> Option<i64> {
    bytes.checked_add(MIB - 1).map(|b| b / MIB * MIB)
}

fn check_range(range: &CapacityRange) -> Result<(), Error> {
    if range.required_bytes < 0 || range.limit_bytes < 0 {
        return Err(Error::OutOfRange(format!(
            "capacity_range must not be negative (required_bytes {}, limit_bytes {})",
            range.required_bytes, range.limit_bytes
        )));
    }
    if range.limit_bytes > 0 && range.limit_bytes < range.required_bytes {
        return Err(Error::OutOfRange(format!(
            "capacity_range.limit_bytes {} is below required_bytes {}",
            range.limit_bytes, range.required_bytes
        )));
    }
    Ok(())
}

/// The size of a new disk: `required_bytes` rounded up to a MiB, or 1 GiB when the request
/// names none (less if `limit_bytes` says so, rounded down to a MiB).
pub fn create_capacity(range: Option<&CapacityRange>) -> Result<i64, Error> {
    let Some(range) = range else {
        return Ok(DEFAULT_CAPACITY);
    };
    check_range(range)?;
    let limit = range.limit_bytes;
    if range.required_bytes == 0 {
        return match limit {
            0 => Ok(DEFAULT_CAPACITY),
            l if l >= MIB => Ok(DEFAULT_CAPACITY.min(l / MIB * MIB)),
            l => Err(Error::OutOfRange(format!(
                "capacity_range.limit_bytes {l} is below the smallest disk, 1 MiB"
            ))),
        };
    }
    let size = round_up_mib(range.required_bytes)
        .ok_or_else(|| Error::OutOfRange(format!("required_bytes {} is too large", range.required_bytes)))?;
    if limit > 0 && size > limit {
        return Err(Error::OutOfRange(format!(
            "disks come in whole MiB: {size} bytes for required_bytes {} exceeds limit_bytes {limit}",
            range.required_bytes
        )));
    }
    Ok(size)
}

/// Whether a disk of `size` bytes satisfies `range` (CreateVolume's idempotency check).
pub fn fits(size: i64, range: Option<&CapacityRange>) -> Result<bool, Error> {
    let wanted = create_capacity(range)?;
    let limit = range.map_or(0, |r| r.limit_bytes);
    Ok(size >= wanted && (limit == 0 || size <= limit))
}

/// The size to grow a disk to: ControllerExpandVolume's `required_bytes` rounded up to a MiB.
pub fn expand_capacity(range: Option<&CapacityRange>) -> Result<i64, Error> {
    let range = range.ok_or(Error::Missing("capacity_range"))?;
    check_range(range)?;
    if range.required_bytes == 0 {
        return Err(Error::Missing("capacity_range.required_bytes"));
    }
    let size = round_up_mib(range.required_bytes)
        .ok_or_else(|| Error::OutOfRange(format!("required_bytes {} is too large", range.required_bytes)))?;
    if range.limit_bytes > 0 && size > range.limit_bytes {
        return Err(Error::OutOfRange(format!(
            "disks come in whole MiB: {size} bytes exceeds limit_bytes {}",
            range.limit_bytes
        )));
    }
    Ok(size)
}

/// The file systems the driver makes and grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }

    pub fn parse(field: &'static str, s: &str) -> Result<FsType, Error> {
        match s {
            "ext4" => Ok(FsType::Ext4),
            "xfs" => Ok(FsType::Xfs),
            other => Err(Error::invalid(
                field,
                format!("file system {other:?}: want ext4 or xfs"),
            )),
        }
    }
}

/// A disk's StorageClass parameters, checked. They come back as the volume context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parameters {
    /// `type`: the cloud disk type it stands for (the first of a comma-separated list).
    pub disk_type: String,
    /// `fsType`: what NodeStageVolume formats a mount volume with (ext4 by default).
    pub fs_type: FsType,
    /// `mkfsOptions`: extra arguments to mkfs, split at white space.
    pub mkfs_options: Vec<String>,
    /// `performanceLevel`: PL0..PL3 of an ESSD, recorded only.
    pub performance_level: Option<String>,
}

impl Parameters {
    pub fn parse(params: &HashMap<String, String>) -> Result<Parameters, Error> {
        let mut p = Parameters {
            disk_type: DEFAULT_DISK_TYPE.to_string(),
            fs_type: FsType::Ext4,
            mkfs_options: Vec::new(),
            performance_level: None,
        };
        for (k, v) in params {
            match k.as_str() {
                "type" => {
                    let types: Vec<&str> = v.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
                    if let Some(bad) = types.iter().find(|t| !DISK_TYPES.contains(t)) {
                        return Err(Error::invalid(
                            "parameters.type",
                            format!("unknown disk type {bad:?}; known: {}", DISK_TYPES.join(", ")),
                        ));
                    }
                    if let Some(first) = types.first() {
                        p.disk_type = first.to_string();
                    }
                }
                "fsType" => {
                    if !v.is_empty() {
                        p.fs_type = FsType::parse("parameters.fsType", v)?;
                    }
                }
                "mkfsOptions" => p.mkfs_options = v.split_whitespace().map(str::to_string).collect(),
                "performanceLevel" => match v.as_str() {
                    "" => {}
                    "PL0" | "PL1" | "PL2" | "PL3" => p.performance_level = Some(v.clone()),
                    other => {
                        return Err(Error::invalid(
                            "parameters.performanceLevel",
                            format!("{other:?}: want PL0, PL1, PL2 or PL3"),
                        ));
                    }
                },
                k if k.starts_with(KUBERNETES_PREFIX) => {}
                other => {
                    return Err(Error::invalid(
                        "parameters",
                        format!("unknown parameter {other:?}; known: type, fsType, mkfsOptions, performanceLevel"),
                    ));
                }
            }
        }
        if p.performance_level.is_some() && !p.disk_type.starts_with("cloud_essd") {
            return Err(Error::invalid(
                "parameters.performanceLevel",
                format!("only ESSDs have one, not {}", p.disk_type),
            ));
        }
        Ok(p)
    }

    /// The parameters as the volume context (and the record keeps them so).
    pub fn to_context(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("type".to_string(), self.disk_type.clone());
        m.insert("fsType".to_string(), self.fs_type.as_str().to_string());
        if !self.mkfs_options.is_empty() {
            m.insert("mkfsOptions".to_string(), self.mkfs_options.join(" "));
        }
        if let Some(pl) = &self.performance_level {
            m.insert("performanceLevel".to_string(), pl.clone());
        }
        m
    }

    /// The parameters back from a record's context (written by [`Self::to_context`]).
    pub fn from_context(ctx: &BTreeMap<String, String>) -> Result<Parameters, Error> {
        Parameters::parse(&ctx.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

/// How a volume is used: a mounted file system or a raw block device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    Mount {
        fs_type: Option<FsType>,
        flags: Vec<String>,
    },
    Block,
}

/// A volume capability the driver serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capability {
    pub access: Access,
    pub mode: Mode,
}

impl Capability {
    pub fn read_only(&self) -> bool {
        self.mode == Mode::SingleNodeReaderOnly
    }

    pub fn single_writer(&self) -> bool {
        self.mode == Mode::SingleNodeSingleWriter
    }
}

/// Check a volume capability: mount (ext4, xfs or unnamed) or block, in a single-node mode.
/// A disk attaches to one node at a time, so multi-node modes are refused.
pub fn capability(field: &'static str, cap: &VolumeCapability) -> Result<Capability, Error> {
    let mode = cap
        .access_mode
        .as_ref()
        .map(|m| m.mode)
        .ok_or(Error::Missing("volume_capability.access_mode"))?;
    let mode = match Mode::try_from(mode) {
        Ok(
            m @ (Mode::SingleNodeWriter
            | Mode::SingleNodeSingleWriter
            | Mode::SingleNodeMultiWriter
            | Mode::SingleNodeReaderOnly),
        ) => m,
        Ok(m) => {
            return Err(Error::invalid(
                field,
                format!("access mode {}: a disk attaches to one node at a time", m.as_str_name()),
            ));
        }
        Err(_) => return Err(Error::invalid(field, format!("unknown access mode {mode}"))),
    };
    let access = match &cap.access_type {
        Some(AccessType::Block(_)) => Access::Block,
        Some(AccessType::Mount(MountVolume {
            fs_type, mount_flags, ..
        })) => Access::Mount {
            fs_type: if fs_type.is_empty() {
                None
            } else {
                Some(FsType::parse(field, fs_type)?)
            },
            flags: mount_flags.clone(),
        },
        None => return Err(Error::invalid(field, "access_type (mount or block) is required")),
    };
    Ok(Capability { access, mode })
}

/// Check every capability of a request (at least one).
pub fn capabilities(field: &'static str, caps: &[VolumeCapability]) -> Result<Vec<Capability>, Error> {
    if caps.is_empty() {
        return Err(Error::Missing(field));
    }
    caps.iter().map(|c| capability(field, c)).collect()
}

/// `value`, or INVALID_ARGUMENT naming `field` when it is empty (a required string of a request).
pub fn required<'a>(field: &'static str, value: &'a str) -> Result<&'a str, Error> {
    if value.is_empty() {
        Err(Error::Missing(field))
    } else {
        Ok(value)
    }
}

const ID_PREFIX: &str = "d-";
const ID_READABLE_MAX: usize = 40;
const ID_HASH_HEX: usize = 16;

/// The volume id of the disk named `name`: `d-` + the name in lower-case letters, digits and
/// dashes (at most 40 of them) + `-` + 16 hex digits of the name's SHA-256. Always the same for
/// a name, never the same for two names, and a safe file name whatever the name holds (CSI
/// names are any UTF-8 string of up to 128 bytes; kubelet's are `pvc-<uid>`).
pub fn volume_id(name: &str) -> String {
    id_for(ID_PREFIX, name)
}

/// [`volume_id`] with another driver's prefix (`oss-`, `nas-`).
pub fn id_for(prefix: &str, name: &str) -> String {
    let mut readable = String::new();
    for c in name.chars() {
        if readable.len() >= ID_READABLE_MAX {
            break;
        }
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            readable.push(c);
        } else if !readable.ends_with('-') && !readable.is_empty() {
            readable.push('-');
        }
    }
    let readable = readable.trim_end_matches('-');
    let readable = if readable.is_empty() { "vol" } else { readable };
    let hash = hex::encode(Sha256::digest(name.as_bytes()));
    format!("{prefix}{readable}-{}", &hash[..ID_HASH_HEX])
}

/// Whether `id` has the shape [`volume_id`] gives; anything else names no disk of this driver
/// (and is never used as a file name).
pub fn is_volume_id(id: &str) -> bool {
    is_id_for(ID_PREFIX, id)
}

/// [`is_volume_id`] with another driver's prefix.
pub fn is_id_for(prefix: &str, id: &str) -> bool {
    let Some(rest) = id.strip_prefix(prefix) else {
        return false;
    };
    let Some((readable, hash)) = rest.rsplit_once('-') else {
        return false;
    };
    hash.len() == ID_HASH_HEX
        && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && !readable.is_empty()
        && readable.len() <= ID_READABLE_MAX
        && readable
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether `id` can name a node: a Kubernetes node name (letters, digits, `.`, `-`, `_`; at
/// most 253), which is also a safe file name.
pub fn is_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 253
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::csi::volume_capability::{AccessMode, BlockVolume};

    fn range(required: i64, limit: i64) -> CapacityRange {
        CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        }
    }

    #[test]
    fn capacity_is_rounded_up_to_a_mib_and_defaults_to_a_gib() {
        assert_eq!(create_capacity(None).unwrap(), GIB);
        assert_eq!(create_capacity(Some(&range(0, 0))).unwrap(), GIB);
        assert_eq!(create_capacity(Some(&range(1, 0))).unwrap(), MIB);
        assert_eq!(create_capacity(Some(&range(MIB, 0))).unwrap(), MIB);
        assert_eq!(create_capacity(Some(&range(MIB + 1, 0))).unwrap(), 2 * MIB);
        assert_eq!(create_capacity(Some(&range(10 * GIB, 10 * GIB))).unwrap(), 10 * GIB);
        assert_eq!(
            create_capacity(Some(&range(0, 100 * MIB + 5))).unwrap(),
            100 * MIB,
            "only a limit"
        );
        assert_eq!(create_capacity(Some(&range(0, 5 * GIB))).unwrap(), GIB);
    }

    #[test]
    fn impossible_capacities_are_out_of_range() {
        let code = |r: CapacityRange| create_capacity(Some(&r)).unwrap_err().code();
        assert_eq!(code(range(2 * MIB, MIB)), tonic::Code::OutOfRange, "limit < required");
        assert_eq!(
            code(range(MIB + 1, MIB + 2)),
            tonic::Code::OutOfRange,
            "no whole MiB fits"
        );
        assert_eq!(code(range(-1, 0)), tonic::Code::OutOfRange);
        assert_eq!(code(range(0, 1000)), tonic::Code::OutOfRange, "below a MiB");
        assert_eq!(code(range(i64::MAX, 0)), tonic::Code::OutOfRange, "no overflow");
    }

    #[test]
    fn an_existing_disk_fits_a_range_it_satisfies() {
        assert!(fits(10 * GIB, Some(&range(10 * GIB, 0))).unwrap());
        assert!(!fits(10 * GIB, Some(&range(20 * GIB, 0))).unwrap());
        assert!(!fits(10 * GIB, Some(&range(GIB, 2 * GIB))).unwrap(), "above the limit");
        assert!(fits(GIB, None).unwrap());
    }

    #[test]
    fn expansion_needs_a_required_size() {
        assert_eq!(expand_capacity(Some(&range(3 * GIB + 1, 0))).unwrap(), 3 * GIB + MIB);
        assert_eq!(expand_capacity(None).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(
            expand_capacity(Some(&range(0, 0))).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            expand_capacity(Some(&range(2 * GIB, GIB))).unwrap_err().code(),
            tonic::Code::OutOfRange
        );
    }

    fn params(kv: &[(&str, &str)]) -> Result<Parameters, Error> {
        Parameters::parse(
            &kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
        )
    }

    #[test]
    fn parameters_have_defaults_and_come_back_as_the_context() {
        let p = params(&[]).unwrap();
        assert_eq!((p.disk_type.as_str(), p.fs_type), ("cloud_essd", FsType::Ext4));
        let p = params(&[
            ("type", "cloud_ssd,cloud_efficiency"),
            ("fsType", "xfs"),
            ("mkfsOptions", " -m 0  -K "),
            ("csi.storage.k8s.io/pvc/name", "data"),
        ])
        .unwrap();
        assert_eq!(p.disk_type, "cloud_ssd", "the first of a list");
        assert_eq!(p.fs_type, FsType::Xfs);
        assert_eq!(p.mkfs_options, ["-m", "0", "-K"]);
        let ctx = p.to_context();
        assert_eq!(ctx["mkfsOptions"], "-m 0 -K");
        assert_eq!(Parameters::from_context(&ctx).unwrap(), p);
        let p = params(&[("type", "cloud_essd"), ("performanceLevel", "PL2")]).unwrap();
        assert_eq!(p.to_context()["performanceLevel"], "PL2");
    }

    #[test]
    fn unknown_parameters_are_invalid() {
        for kv in [
            ("type", "cloud_floppy"),
            ("type", "cloud_ssd,nvme"),
            ("fsType", "btrfs"),
            ("performanceLevel", "PL9"),
            ("sizeGB", "20"),
        ] {
            let e = params(&[kv]).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{kv:?}: {e}");
        }
        assert!(params(&[("type", "cloud_ssd"), ("performanceLevel", "PL1")]).is_err());
    }

    fn cap(mode: Mode, access: AccessType) -> VolumeCapability {
        VolumeCapability {
            access_mode: Some(AccessMode { mode: mode as i32 }),
            access_type: Some(access),
        }
    }

    fn mount(fs: &str) -> AccessType {
        AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            mount_flags: vec!["noatime".into()],
            ..Default::default()
        })
    }

    #[test]
    fn capabilities_are_single_node_mount_or_block() {
        let c = capability("c", &cap(Mode::SingleNodeWriter, mount(""))).unwrap();
        assert_eq!(
            c.access,
            Access::Mount {
                fs_type: None,
                flags: vec!["noatime".into()]
            }
        );
        let c = capability("c", &cap(Mode::SingleNodeReaderOnly, AccessType::Block(BlockVolume {}))).unwrap();
        assert_eq!(c.access, Access::Block);
        assert!(c.read_only());
        assert!(
            capability("c", &cap(Mode::SingleNodeSingleWriter, mount("xfs")))
                .unwrap()
                .single_writer()
        );
        for bad in [
            cap(Mode::MultiNodeMultiWriter, mount("")),
            cap(Mode::MultiNodeReaderOnly, mount("")),
            cap(Mode::Unknown, mount("")),
            cap(Mode::SingleNodeWriter, mount("ntfs")),
            VolumeCapability {
                access_mode: Some(AccessMode { mode: 1 }),
                access_type: None,
            },
            VolumeCapability {
                access_mode: None,
                access_type: Some(mount("")),
            },
            VolumeCapability {
                access_mode: Some(AccessMode { mode: 99 }),
                access_type: Some(mount("")),
            },
        ] {
            let e = capability("c", &bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}: {e}");
        }
        assert_eq!(
            capabilities("caps", &[]).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn volume_ids_are_safe_file_names_derived_from_the_name() {
        let id = volume_id("pvc-0b5c3e8e-1f2a-4c6d-9e7f-123456789abc");
        assert!(id.starts_with("d-pvc-0b5c3e8e-1f2a-4c6d-9e7f-12345678"), "{id}");
        assert!(is_volume_id(&id), "{id}");
        assert_eq!(id, volume_id("pvc-0b5c3e8e-1f2a-4c6d-9e7f-123456789abc"), "stable");
        assert_ne!(volume_id("Data"), volume_id("data"), "names differing in case differ");
        for name in ["../../etc/passwd", "/", "", "数据", &"x".repeat(128), "a b\0c"] {
            let id = volume_id(name);
            assert!(is_volume_id(&id), "{name:?} -> {id}");
            assert!(
                !id.contains('/') && !id.contains('.') && id.len() <= 2 + 40 + 1 + 16,
                "{id}"
            );
        }
        assert_eq!(volume_id("../x"), format!("d-x-{}", &volume_id("../x")[4..]));
        for bad in [
            "",
            "fake-vol-id",
            "d-x",
            "d--0123456789abcdef",
            "d-x-0123456789ABCDEF",
            "d-../-0123456789abcdef",
        ] {
            assert!(!is_volume_id(bad), "{bad}");
        }
    }

    #[test]
    fn node_ids_are_kubernetes_node_names() {
        assert!(is_node_id("node-1.example.com"));
        assert!(!is_node_id(""));
        assert!(!is_node_id("../x"));
        assert!(!is_node_id("a/b"));
        assert!(!is_node_id(".hidden"));
    }
}
