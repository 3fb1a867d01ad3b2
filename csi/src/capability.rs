//! Kubernetes' side of CSI, as kubelet, the attach/detach controller and the external
//! provisioner, attacher and resizer spell it: a PV's access modes, volume mode, fsType and
//! mount options as a CSI `VolumeCapability`, and the names they derive (`pvc-<uid>`,
//! `csi-<sha256>` VolumeAttachments, `kubernetes.io/csi/<driver>^<handle>` in a node's
//! `volumesInUse`). Shared by control and the node so both spell them alike. No I/O.

use sha2::{Digest, Sha256};

use crate::csi::volume_capability::access_mode::Mode;
use crate::csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use crate::csi::{CapacityRange, VolumeCapability};

/// The CSI access mode of a Kubernetes access mode. ReadWriteOncePod is one writer on one node
/// (SINGLE_NODE_SINGLE_WRITER, which drivers advertising SINGLE_NODE_MULTI_WRITER take, as the
/// disk driver does); ReadWriteOnce is SINGLE_NODE_WRITER.
pub fn access_mode(mode: &str) -> Mode {
    match mode {
        "ReadWriteOncePod" => Mode::SingleNodeSingleWriter,
        "ReadOnlyMany" => Mode::MultiNodeReaderOnly,
        "ReadWriteMany" => Mode::MultiNodeMultiWriter,
        _ => Mode::SingleNodeWriter,
    }
}

/// The capability kubelet asks for a PV with: the first of its access modes (as kubelet takes
/// it; ReadWriteOnce when it names none), a raw block device for `volumeMode: Block`, else a
/// mount with the PV's `csi.fsType` and `mountOptions`.
pub fn volume_capability(
    access_modes: &[String],
    volume_mode: &str,
    fs_type: &str,
    mount_flags: &[String],
) -> VolumeCapability {
    let mode = access_modes.first().map_or(Mode::SingleNodeWriter, |m| access_mode(m));
    let access_type = if volume_mode == "Block" {
        AccessType::Block(BlockVolume {})
    } else {
        AccessType::Mount(MountVolume {
            fs_type: fs_type.to_string(),
            mount_flags: mount_flags.to_vec(),
            ..Default::default()
        })
    };
    VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(access_type),
    }
}

/// A capacity range of at least `bytes`, with no limit (what a PVC's request asks).
pub fn at_least(bytes: i64) -> CapacityRange {
    CapacityRange {
        required_bytes: bytes,
        limit_bytes: 0,
    }
}

/// The name of the PV provisioned for a claim: `pvc-<claim uid>` (the external provisioner's
/// default, and the CreateVolume name).
pub fn provisioned_name(claim_uid: &str) -> String {
    format!("pvc-{claim_uid}")
}

/// The name of the VolumeAttachment of a volume to a node: `csi-` and the hex SHA-256 of the
/// volume handle (the PV's `spec.csi.volumeHandle`), the driver and the node name, as the
/// attach/detach controller and kubelet name it.
pub fn attachment_name(volume_handle: &str, driver: &str, node: &str) -> String {
    format!(
        "csi-{}",
        hex::encode(Sha256::digest(format!("{volume_handle}{driver}{node}")))
    )
}

/// A CSI volume's name in a node's `status.volumesInUse` and `volumesAttached`:
/// `kubernetes.io/csi/<driver>^<volume handle>`.
pub fn unique_name(driver: &str, volume_handle: &str) -> String {
    format!("kubernetes.io/csi/{driver}^{volume_handle}")
}

/// `bytes` as a Kubernetes quantity, canonical as the API server writes it: the largest binary
/// suffix that divides it (`10Gi`, `1536Mi`), else plain bytes.
pub fn quantity(bytes: i64) -> String {
    const SUFFIXES: [(&str, u32); 6] = [("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)];
    if bytes != 0 {
        for (suffix, shift) in SUFFIXES {
            let unit = 1i64 << shift;
            if bytes % unit == 0 {
                return format!("{}{suffix}", bytes / unit);
            }
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pv_becomes_the_capability_kubelet_asks_for() {
        let c = volume_capability(&["ReadWriteOnce".into()], "Filesystem", "ext4", &["noatime".into()]);
        assert_eq!(c.access_mode.unwrap().mode, Mode::SingleNodeWriter as i32);
        assert_eq!(
            c.access_type,
            Some(AccessType::Mount(MountVolume {
                fs_type: "ext4".into(),
                mount_flags: vec!["noatime".into()],
                ..Default::default()
            }))
        );
        let c = volume_capability(&["ReadWriteOncePod".into()], "Block", "ext4", &[]);
        assert_eq!(c.access_mode.unwrap().mode, Mode::SingleNodeSingleWriter as i32);
        assert_eq!(c.access_type, Some(AccessType::Block(BlockVolume {})));
        let c = volume_capability(&[], "", "", &[]);
        assert_eq!(c.access_mode.unwrap().mode, Mode::SingleNodeWriter as i32);
        assert_eq!(access_mode("ReadWriteMany"), Mode::MultiNodeMultiWriter);
        assert_eq!(access_mode("ReadOnlyMany"), Mode::MultiNodeReaderOnly);
    }

    #[test]
    fn names_are_spelled_as_kubernetes_spells_them() {
        assert_eq!(provisioned_name("0b5c-11"), "pvc-0b5c-11");
        assert_eq!(
            unique_name("disk.csi.nodeless.io", "d-x-1"),
            "kubernetes.io/csi/disk.csi.nodeless.io^d-x-1"
        );
        // sha256("vol-1" + "disk.csi.nodeless.io" + "node-a")
        let name = attachment_name("vol-1", "disk.csi.nodeless.io", "node-a");
        assert_eq!(name.len(), 4 + 64);
        assert_eq!(
            name,
            format!(
                "csi-{}",
                hex::encode(Sha256::digest(b"vol-1disk.csi.nodeless.ionode-a"))
            )
        );
        assert_eq!(at_least(5).required_bytes, 5);
    }

    #[test]
    fn quantities_are_canonical() {
        assert_eq!(quantity(10 << 30), "10Gi");
        assert_eq!(quantity(1536 << 20), "1536Mi");
        assert_eq!(quantity(1 << 20), "1Mi");
        assert_eq!(quantity(1000), "1000");
        assert_eq!(quantity(0), "0");
        assert_eq!(quantity(3 << 40), "3Ti");
    }
}
