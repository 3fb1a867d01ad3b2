//! The disk driver's logic over a fake host (`host/fake.rs`): what it asks of the machine for
//! each call, and that it asks nothing twice. The same calls against the real machine are in
//! `tests/disk.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::{Code, Request};

use super::params::GIB;
use super::{DiskConfig, DiskDriver};
use crate::csi::controller_server::Controller;
use crate::csi::node_server::Node;
use crate::csi::volume_capability::access_mode::Mode;
use crate::csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use crate::csi::*;
use crate::host::fake::FakeHost;

struct World {
    dir: tempfile::TempDir,
    host: Arc<FakeHost>,
    driver: DiskDriver,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let host = Arc::new(FakeHost::default());
        let driver = DiskDriver::with_host(DiskConfig::new(dir.path().join("state"), "node-a"), host.clone()).unwrap();
        World { dir, host, driver }
    }

    /// The driver of another node, or this node's after a restart, on the same state.
    fn driver_for(&self, node: &str) -> DiskDriver {
        DiskDriver::with_host(DiskConfig::new(self.dir.path().join("state"), node), self.host.clone()).unwrap()
    }

    fn path(&self, p: &str) -> String {
        // Canonical, as mountinfo has it.
        let root = std::fs::canonicalize(self.dir.path()).unwrap();
        root.join(p).display().to_string()
    }

    async fn create(&self, name: &str, bytes: i64) -> Result<Volume, Code> {
        let req = CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(CapacityRange {
                required_bytes: bytes,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![mount(Mode::SingleNodeWriter)],
            ..Default::default()
        };
        let r = self
            .driver
            .create_volume(Request::new(req))
            .await
            .map_err(|s| s.code())?;
        Ok(r.into_inner().volume.unwrap())
    }

    async fn attach(&self, id: &str, node: &str) -> Result<(), Code> {
        let req = ControllerPublishVolumeRequest {
            volume_id: id.into(),
            node_id: node.into(),
            volume_capability: Some(mount(Mode::SingleNodeWriter)),
            ..Default::default()
        };
        self.driver
            .controller_publish_volume(Request::new(req))
            .await
            .map(drop)
            .map_err(|s| s.code())
    }

    async fn stage(&self, driver: &DiskDriver, id: &str, cap: VolumeCapability) -> Result<(), Code> {
        let req = NodeStageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: self.path("staging"),
            volume_capability: Some(cap),
            ..Default::default()
        };
        driver
            .node_stage_volume(Request::new(req))
            .await
            .map(drop)
            .map_err(|s| s.code())
    }

    async fn unstage(&self, id: &str) -> Result<(), Code> {
        let req = NodeUnstageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: self.path("staging"),
        };
        self.driver
            .node_unstage_volume(Request::new(req))
            .await
            .map(drop)
            .map_err(|s| s.code())
    }

    async fn publish(&self, id: &str, target: &str, cap: VolumeCapability) -> Result<(), Code> {
        let req = NodePublishVolumeRequest {
            volume_id: id.into(),
            staging_target_path: self.path("staging"),
            target_path: self.path(target),
            volume_capability: Some(cap),
            ..Default::default()
        };
        self.driver
            .node_publish_volume(Request::new(req))
            .await
            .map(drop)
            .map_err(|s| s.code())
    }

    async fn unpublish(&self, id: &str, target: &str) -> Result<(), Code> {
        let req = NodeUnpublishVolumeRequest {
            volume_id: id.into(),
            target_path: self.path(target),
        };
        self.driver
            .node_unpublish_volume(Request::new(req))
            .await
            .map(drop)
            .map_err(|s| s.code())
    }
}

fn mount(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    }
}

fn block(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    }
}

#[tokio::test]
async fn create_is_idempotent_by_name_and_refuses_another_size() {
    let w = World::new();
    let v = w.create("pvc-1", 10 * GIB).await.unwrap();
    assert_eq!(v.capacity_bytes, 10 * GIB);
    assert_eq!(v.volume_context["fsType"], "ext4");
    assert_eq!(v.volume_context["type"], "cloud_essd");
    assert_eq!(w.create("pvc-1", 10 * GIB).await.unwrap(), v);
    assert_eq!(w.create("pvc-1", 20 * GIB).await, Err(Code::AlreadyExists));
    let image = PathBuf::from(w.dir.path())
        .join("state/disks")
        .join(format!("{}.img", v.volume_id));
    let meta = std::fs::metadata(&image).unwrap();
    assert_eq!(meta.len(), 10 << 30);
    assert!(std::os::unix::fs::MetadataExt::blocks(&meta) < 64, "sparse");
    assert!(
        w.host.log().is_empty(),
        "the controller touches no device: {:?}",
        w.host.log()
    );
}

#[tokio::test]
async fn a_disk_attaches_to_one_known_node_and_is_not_deleted_while_attached() {
    let w = World::new();
    let id = w.create("pvc-2", GIB).await.unwrap().volume_id;
    assert_eq!(
        w.attach(&id, "node-b").await,
        Err(Code::NotFound),
        "no driver ran on node-b"
    );
    assert_eq!(
        w.attach("d-nothing-0123456789abcdef", "node-a").await,
        Err(Code::NotFound)
    );
    assert_eq!(w.attach("", "node-a").await, Err(Code::InvalidArgument));
    w.attach(&id, "node-a").await.unwrap();
    w.attach(&id, "node-a").await.unwrap();
    w.driver_for("node-b");
    assert_eq!(w.attach(&id, "node-b").await, Err(Code::FailedPrecondition));
    let delete = |id: &str| {
        let d = w.driver.clone();
        let req = DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        };
        async move { d.delete_volume(Request::new(req)).await.map(drop).map_err(|s| s.code()) }
    };
    assert_eq!(delete(&id).await, Err(Code::FailedPrecondition));
    let unpublish = ControllerUnpublishVolumeRequest {
        volume_id: id.clone(),
        node_id: "node-a".into(),
        ..Default::default()
    };
    w.driver
        .controller_unpublish_volume(Request::new(unpublish.clone()))
        .await
        .unwrap();
    w.driver
        .controller_unpublish_volume(Request::new(unpublish))
        .await
        .unwrap();
    w.attach(&id, "node-b").await.unwrap();
    let unpublish = ControllerUnpublishVolumeRequest {
        volume_id: id.clone(),
        ..Default::default()
    };
    w.driver
        .controller_unpublish_volume(Request::new(unpublish))
        .await
        .unwrap();
    delete(&id).await.unwrap();
    delete(&id).await.unwrap();
    assert_eq!(w.attach(&id, "node-a").await, Err(Code::NotFound));
}

#[tokio::test]
async fn list_pages_by_id_and_aborts_on_a_foreign_token() {
    let w = World::new();
    for i in 0..5 {
        w.create(&format!("vol-{i}"), GIB).await.unwrap();
    }
    let list = |max: i32, token: &str| {
        let d = w.driver.clone();
        let req = ListVolumesRequest {
            max_entries: max,
            starting_token: token.into(),
        };
        async move {
            d.list_volumes(Request::new(req))
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.code())
        }
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(2, &token).await.unwrap();
        assert!(page.entries.len() <= 2);
        seen.extend(page.entries.into_iter().map(|e| e.volume.unwrap().volume_id));
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(seen.len(), 5);
    assert!(seen.windows(2).all(|p| p[0] < p[1]), "{seen:?}");
    assert_eq!(list(0, "").await.unwrap().entries.len(), 5);
    assert_eq!(list(0, "invalid-token").await.unwrap_err(), Code::Aborted);
    assert_eq!(list(-1, "").await.unwrap_err(), Code::InvalidArgument);
}

#[tokio::test]
async fn staging_formats_a_new_disk_once_and_never_again() {
    let w = World::new();
    let id = w.create("pvc-3", GIB).await.unwrap().volume_id;
    let cap = mount(Mode::SingleNodeWriter);
    assert_eq!(
        w.stage(&w.driver, &id, cap.clone()).await,
        Err(Code::FailedPrecondition),
        "not attached"
    );
    w.attach(&id, "node-a").await.unwrap();
    w.stage(&w.driver, &id, cap.clone()).await.unwrap();
    let staging = w.path("staging");
    assert_eq!(
        w.host.log(),
        [
            format!(
                "attach {}",
                w.dir.path().join("state/disks").join(format!("{id}.img")).display()
            ),
            "mkfs.ext4 /dev/loop0".to_string(),
            format!("mount /dev/loop0 {staging}"),
        ]
    );
    w.host.clear_log();
    w.stage(&w.driver, &id, cap.clone()).await.unwrap();
    assert!(w.host.log().is_empty(), "staged already: {:?}", w.host.log());
    // A restarted driver finds it staged too.
    let restarted = w.driver_for("node-a");
    w.stage(&restarted, &id, cap.clone()).await.unwrap();
    assert!(w.host.log().is_empty(), "{:?}", w.host.log());
    w.unstage(&id).await.unwrap();
    assert_eq!(
        w.host.log(),
        [format!("umount {staging}"), "detach /dev/loop0".to_string()]
    );
    w.unstage(&id).await.unwrap();
    w.host.clear_log();
    w.stage(&w.driver, &id, cap).await.unwrap();
    assert!(
        !w.host.log().iter().any(|l| l.starts_with("mkfs")),
        "formatted again: {:?}",
        w.host.log()
    );
}

#[tokio::test]
async fn a_disk_holding_another_file_system_is_not_formatted() {
    let w = World::new();
    let id = w.create("pvc-4", GIB).await.unwrap().volume_id;
    w.attach(&id, "node-a").await.unwrap();
    let image = w.dir.path().join("state/disks").join(format!("{id}.img"));
    use crate::host::Host;
    let dev = w.host.loop_attach(&image).unwrap();
    w.host.set_fs(&dev, "xfs");
    w.host.clear_log();
    assert_eq!(
        w.stage(&w.driver, &id, mount(Mode::SingleNodeWriter)).await,
        Err(Code::FailedPrecondition)
    );
    assert!(w.host.log().is_empty(), "{:?}", w.host.log());
}

#[tokio::test]
async fn publish_binds_the_staged_file_system_and_unstage_waits_for_unpublish() {
    let w = World::new();
    let id = w.create("pvc-5", GIB).await.unwrap().volume_id;
    let cap = mount(Mode::SingleNodeSingleWriter);
    assert_eq!(
        w.publish(&id, "pod/a", cap.clone()).await,
        Err(Code::FailedPrecondition),
        "not staged"
    );
    w.attach(&id, "node-a").await.unwrap();
    w.stage(&w.driver, &id, cap.clone()).await.unwrap();
    w.host.clear_log();
    w.publish(&id, "pod/a", cap.clone()).await.unwrap();
    w.publish(&id, "pod/a", cap.clone()).await.unwrap();
    assert_eq!(
        w.host.log(),
        [format!("bind {} {}", w.path("staging"), w.path("pod/a"))]
    );
    assert!(Path::new(&w.path("pod/a")).is_dir());
    assert_eq!(
        w.publish(&id, "pod/b", cap.clone()).await,
        Err(Code::FailedPrecondition),
        "one writer"
    );
    let mut ro = cap.clone();
    ro.access_mode = Some(AccessMode {
        mode: Mode::SingleNodeMultiWriter as i32,
    });
    let req = NodePublishVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: w.path("staging"),
        target_path: w.path("pod/a"),
        volume_capability: Some(ro),
        readonly: true,
        ..Default::default()
    };
    let e = w.driver.node_publish_volume(Request::new(req)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "published read-write there: {e:?}");
    assert_eq!(w.unstage(&id).await, Err(Code::FailedPrecondition), "still published");
    w.unpublish(&id, "pod/a").await.unwrap();
    w.unpublish(&id, "pod/a").await.unwrap();
    assert!(!Path::new(&w.path("pod/a")).exists(), "target removed");
    w.unstage(&id).await.unwrap();
    assert!(w.host.attached().is_empty());
    assert!(w.host.mount_points().is_empty());
}

#[tokio::test]
async fn a_block_volume_binds_its_device_node() {
    let w = World::new();
    let id = w.create("pvc-6", GIB).await.unwrap().volume_id;
    w.attach(&id, "node-a").await.unwrap();
    let cap = block(Mode::SingleNodeWriter);
    w.stage(&w.driver, &id, cap.clone()).await.unwrap();
    w.publish(&id, "pod/dev", cap.clone()).await.unwrap();
    w.publish(&id, "pod/dev", cap).await.unwrap();
    assert_eq!(
        w.host.log(),
        [
            format!(
                "attach {}",
                w.dir.path().join("state/disks").join(format!("{id}.img")).display()
            ),
            format!("bind /dev/loop0 {}", w.path("pod/dev")),
        ],
        "no file system, no staging mount"
    );
    assert!(Path::new(&w.path("pod/dev")).is_file());
    let stats = NodeGetVolumeStatsRequest {
        volume_id: id.clone(),
        volume_path: w.path("pod/dev"),
        ..Default::default()
    };
    let usage = w
        .driver
        .node_get_volume_stats(Request::new(stats))
        .await
        .unwrap()
        .into_inner()
        .usage;
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].total, GIB);
    w.unpublish(&id, "pod/dev").await.unwrap();
    w.unstage(&id).await.unwrap();
    assert!(w.host.attached().is_empty());
    assert!(!Path::new(&w.path("pod/dev")).exists());
}

#[tokio::test]
async fn stats_and_expansion_find_only_mounts_of_the_volume() {
    let w = World::new();
    let id = w.create("pvc-7", GIB).await.unwrap().volume_id;
    w.attach(&id, "node-a").await.unwrap();
    let cap = mount(Mode::SingleNodeWriter);
    w.stage(&w.driver, &id, cap.clone()).await.unwrap();
    w.publish(&id, "pod/a", cap).await.unwrap();
    let stats = |id: &str, path: String| {
        let d = w.driver.clone();
        let req = NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: path,
            ..Default::default()
        };
        async move {
            d.node_get_volume_stats(Request::new(req))
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.code())
        }
    };
    let usage = stats(&id, w.path("pod/a")).await.unwrap().usage;
    assert_eq!(usage.len(), 2, "bytes and inodes");
    assert_eq!(stats(&id, "some/path".into()).await.unwrap_err(), Code::NotFound);
    assert_eq!(
        stats(&id, w.dir.path().display().to_string()).await.unwrap_err(),
        Code::NotFound
    );
    assert_eq!(stats("fake-vol-id", w.path("pod/a")).await.unwrap_err(), Code::NotFound);
    assert_eq!(stats("", w.path("pod/a")).await.unwrap_err(), Code::InvalidArgument);
    let grow = ControllerExpandVolumeRequest {
        volume_id: id.clone(),
        capacity_range: Some(CapacityRange {
            required_bytes: 2 * GIB,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    let r = w
        .driver
        .controller_expand_volume(Request::new(grow))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.capacity_bytes, r.node_expansion_required), (2 * GIB, true));
    w.host.clear_log();
    let expand = NodeExpandVolumeRequest {
        volume_id: id.clone(),
        volume_path: w.path("pod/a"),
        capacity_range: Some(CapacityRange {
            required_bytes: 2 * GIB,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    let r = w
        .driver
        .node_expand_volume(Request::new(expand))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.capacity_bytes, 2 * GIB);
    assert_eq!(w.host.log(), ["refresh /dev/loop0", "grow ext4 /dev/loop0"]);
    let health = NodeGetVolumeHealthRequest {
        volume_id: id.clone(),
        volume_publish_path: w.path("pod/b"),
        ..Default::default()
    };
    let h = w
        .driver
        .node_get_volume_health(Request::new(health))
        .await
        .unwrap()
        .into_inner();
    let statuses = h.volume_health.unwrap().health_statuses;
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].reason, "NotPublished");
}

#[tokio::test]
async fn requests_missing_what_they_need_are_invalid() {
    let w = World::new();
    let d = &w.driver;
    fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
        r.err().map_or(Code::Ok, |s| s.code())
    }
    assert_eq!(
        code(d.create_volume(Request::new(Default::default())).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(d.delete_volume(Request::new(Default::default())).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(d.node_stage_volume(Request::new(Default::default())).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(d.node_publish_volume(Request::new(Default::default())).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(d.node_unstage_volume(Request::new(Default::default())).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(d.node_unpublish_volume(Request::new(Default::default())).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(d.node_expand_volume(Request::new(Default::default())).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(d.controller_expand_volume(Request::new(Default::default())).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(d.controller_publish_volume(Request::new(Default::default())).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(d.controller_unpublish_volume(Request::new(Default::default())).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(d.validate_volume_capabilities(Request::new(Default::default())).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(d.node_get_volume_health(Request::new(Default::default())).await),
        Code::InvalidArgument
    );
    let req = CreateVolumeRequest {
        name: "x".into(),
        volume_capabilities: vec![mount(Mode::MultiNodeMultiWriter)],
        ..Default::default()
    };
    assert_eq!(
        d.create_volume(Request::new(req)).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let req = CreateVolumeRequest {
        name: "x".into(),
        volume_capabilities: vec![mount(Mode::SingleNodeWriter)],
        parameters: HashMap::from([("type".to_string(), "floppy".to_string())]),
        ..Default::default()
    };
    assert_eq!(
        d.create_volume(Request::new(req)).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn a_disk_grown_while_unstaged_has_its_file_system_grown_at_the_next_stage() {
    let w = World::new();
    let id = w.create("pvc-8", GIB).await.unwrap().volume_id;
    w.attach(&id, "node-a").await.unwrap();
    let cap = mount(Mode::SingleNodeWriter);
    w.stage(&w.driver, &id, cap.clone()).await.unwrap();
    w.unstage(&id).await.unwrap();
    let grow = ControllerExpandVolumeRequest {
        volume_id: id.clone(),
        capacity_range: Some(CapacityRange {
            required_bytes: 2 * GIB,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    w.driver.controller_expand_volume(Request::new(grow)).await.unwrap();
    w.host.clear_log();
    w.stage(&w.driver, &id, cap.clone()).await.unwrap();
    let log = w.host.log();
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(log[1], "grow ext4 /dev/loop1 offline", "before the mount: {log:?}");
    assert!(log[2].starts_with("mount /dev/loop1 "), "{log:?}");
    w.unstage(&id).await.unwrap();
    w.host.clear_log();
    w.stage(&w.driver, &id, cap).await.unwrap();
    assert!(
        !w.host.log().iter().any(|l| l.starts_with("grow")),
        "{:?}",
        w.host.log()
    );
}
