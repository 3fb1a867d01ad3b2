//! What the drivers of shared file systems (OSS, NAS) have in common: their identity (a
//! controller service, ready while the state directory is there), mount-only capabilities in
//! any access mode, and required request fields.

use std::path::Path;

use crate::csi::volume_capability::AccessType;
use crate::csi::*;
use crate::error::Error;

/// `value`, or INVALID_ARGUMENT naming `field` when it is empty.
pub fn required<'a>(field: &'static str, value: &'a str) -> Result<&'a str, tonic::Status> {
    if value.is_empty() {
        Err(Error::Missing(field).into())
    } else {
        Ok(value)
    }
}

/// Check capabilities: mounts in any access mode (block is refused: `what` is mounted as
/// files). The first one's mount flags, and whether all of them are read-only.
pub fn mount_capabilities(
    field: &'static str,
    caps: &[VolumeCapability],
    what: &str,
) -> Result<(Vec<String>, bool), tonic::Status> {
    if caps.is_empty() {
        return Err(Error::Missing(field).into());
    }
    let mut read_only = true;
    let mut flags = None;
    for c in caps {
        match &c.access_type {
            Some(AccessType::Mount(m)) => {
                flags.get_or_insert_with(|| m.mount_flags.clone());
            }
            Some(AccessType::Block(_)) => {
                return Err(Error::invalid(field, format!("{what} is mounted as files, not as a block device")).into());
            }
            None => return Err(Error::invalid(field, "access_type (mount) is required").into()),
        }
        let mode = c.access_mode.as_ref().map(|m| m.mode).unwrap_or(0);
        use volume_capability::access_mode::Mode;
        match Mode::try_from(mode) {
            Ok(Mode::Unknown) | Err(_) => {
                return Err(Error::invalid(field, format!("unknown access mode {mode}")).into());
            }
            Ok(Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly) => {}
            Ok(_) => read_only = false,
        }
    }
    Ok((flags.unwrap_or_default(), read_only))
}

pub fn plugin_info(name: &str) -> GetPluginInfoResponse {
    GetPluginInfoResponse {
        name: name.to_string(),
        vendor_version: env!("CARGO_PKG_VERSION").to_string(),
        manifest: Default::default(),
    }
}

/// A controller service, nothing more.
pub fn plugin_capabilities() -> GetPluginCapabilitiesResponse {
    GetPluginCapabilitiesResponse {
        capabilities: vec![PluginCapability {
            r#type: Some(plugin_capability::Type::Service(plugin_capability::Service {
                r#type: plugin_capability::service::Type::ControllerService as i32,
            })),
        }],
    }
}

/// Ready while the state directory is there.
pub fn probe(state_dir: &Path) -> Result<ProbeResponse, tonic::Status> {
    if !state_dir.is_dir() {
        return Err(tonic::Status::failed_precondition(format!(
            "state directory {} is gone",
            state_dir.display()
        )));
    }
    Ok(ProbeResponse { ready: Some(true) })
}

/// ValidateVolumeCapabilities' answer for a volume that exists (any mount capability fits).
pub fn confirmed(req: ValidateVolumeCapabilitiesRequest) -> ValidateVolumeCapabilitiesResponse {
    ValidateVolumeCapabilitiesResponse {
        confirmed: Some(validate_volume_capabilities_response::Confirmed {
            volume_context: req.volume_context,
            volume_capabilities: req.volume_capabilities,
            parameters: req.parameters,
            mutable_parameters: Default::default(),
        }),
        message: String::new(),
    }
}

/// CREATE_DELETE_VOLUME, the one controller capability of these drivers.
pub fn controller_capabilities() -> ControllerGetCapabilitiesResponse {
    use controller_service_capability::rpc::Type;
    ControllerGetCapabilitiesResponse {
        capabilities: vec![ControllerServiceCapability {
            r#type: Some(controller_service_capability::Type::Rpc(
                controller_service_capability::Rpc {
                    r#type: Type::CreateDeleteVolume as i32,
                },
            )),
        }],
    }
}

/// GET_VOLUME_STATS and GET_VOLUME_HEALTH; no staging (a mount per pod).
pub fn node_capabilities() -> NodeGetCapabilitiesResponse {
    use node_service_capability::rpc::Type;
    let cap = |t: Type| NodeServiceCapability {
        r#type: Some(node_service_capability::Type::Rpc(node_service_capability::Rpc {
            r#type: t as i32,
        })),
    };
    NodeGetCapabilitiesResponse {
        capabilities: vec![cap(Type::GetVolumeStats), cap(Type::GetVolumeHealth)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_mounts_in_any_mode() {
        use volume_capability::access_mode::Mode;
        let cap = |mode: Mode, block: bool| VolumeCapability {
            access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
            access_type: Some(if block {
                AccessType::Block(Default::default())
            } else {
                AccessType::Mount(volume_capability::MountVolume {
                    mount_flags: vec!["vers=3".into()],
                    ..Default::default()
                })
            }),
        };
        let (flags, ro) = mount_capabilities("c", &[cap(Mode::MultiNodeMultiWriter, false)], "x").unwrap();
        assert_eq!((flags, ro), (vec!["vers=3".to_string()], false));
        assert!(
            mount_capabilities("c", &[cap(Mode::MultiNodeReaderOnly, false)], "x")
                .unwrap()
                .1
        );
        assert!(mount_capabilities("c", &[cap(Mode::SingleNodeWriter, true)], "x").is_err());
        assert!(mount_capabilities("c", &[], "x").is_err());
    }
}
