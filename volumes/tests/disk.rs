//! The disk driver on this machine (root: loop devices, mkfs, mounts), driven over its Unix
//! socket with the generated CSI clients as the node and control drive it: a volume's whole
//! life with a file system (formatted once, data kept across unstage, grown online), a raw
//! block volume's, a driver restart under a published volume, and the errors csi-sanity and
//! kubelet rely on.
//!
//! Each test has a [`Scene`]: its own temporary directory (state, socket, staging and target
//! paths) and driver. Dropping the scene, pass or fail, unmounts everything under the
//! directory, detaches every loop device backed by its images and removes the directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use nodeless_volumes::csi::controller_client::ControllerClient;
use nodeless_volumes::csi::identity_client::IdentityClient;
use nodeless_volumes::csi::node_client::NodeClient;
use nodeless_volumes::csi::volume_capability::access_mode::Mode;
use nodeless_volumes::csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use nodeless_volumes::csi::{self, CapacityRange, VolumeCapability};
use nodeless_volumes::{DISK_DRIVER, DiskConfig, DiskDriver};
use tonic::Code;
use tonic::transport::Channel;

const MIB: i64 = 1 << 20;

fn root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: needs root (loop devices, mkfs, mounts)");
    false
}

/// A name no other test or run uses.
fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

/// `losetup -j <image>`: the loop devices backed by an image.
fn loops_of(image: &Path) -> String {
    let out = Command::new("losetup").arg("-j").arg(image).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One test's world: a temporary directory with the driver's state and socket, and the
/// staging and target paths under it; the driver serving on the socket.
struct Scene {
    dir: tempfile::TempDir,
    node: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Scene {
    async fn new(tag: &str) -> Scene {
        let dir = tempfile::Builder::new()
            .prefix(&format!("nodeless-disk-{tag}-"))
            .tempdir()
            .unwrap();
        let mut scene = Scene {
            dir,
            node: unique("node"),
            stop: None,
            server: None,
        };
        scene.start();
        scene
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.dir.path().join("csi.sock").display())
    }

    fn path(&self, p: &str) -> String {
        self.dir.path().join(p).display().to_string()
    }

    fn image(&self, id: &str) -> PathBuf {
        self.state().join("disks").join(format!("{id}.img"))
    }

    /// Start the driver (again) on the scene's state and socket.
    fn start(&mut self) {
        let driver = DiskDriver::new(DiskConfig::new(self.state(), &self.node)).unwrap();
        let listener = nodeless_volumes::listen(&self.endpoint()).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        self.stop = Some(stop);
        self.server = Some(tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            nodeless_volumes::serve_on(listener, driver, shutdown).await.unwrap();
        }));
    }

    /// Stop the driver, as a killed one stops: whatever it staged and published stays.
    async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }

    async fn clients(&self) -> Clients {
        let ch = nodeless_volumes::connect(&self.endpoint()).await.unwrap();
        Clients {
            identity: IdentityClient::new(ch.clone()),
            controller: ControllerClient::new(ch.clone()),
            node: NodeClient::new(ch),
        }
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let root = std::fs::canonicalize(self.dir.path()).unwrap_or_else(|_| self.dir.path().to_path_buf());
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mounts = nodeless_volumes::host::mountinfo::parse(&mountinfo);
        for m in mounts.iter().rev().filter(|m| m.mount_point.starts_with(&root)) {
            if let Err(e) = rustix::mount::unmount(&m.mount_point, rustix::mount::UnmountFlags::DETACH) {
                eprintln!("cleanup: umount {}: {e}", m.mount_point.display());
            }
        }
        let images = std::fs::read_dir(self.state().join("disks"))
            .into_iter()
            .flatten()
            .flatten();
        for image in images
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "img"))
        {
            for line in loops_of(&image).lines() {
                if let Some((dev, _)) = line.split_once(':') {
                    let out = Command::new("losetup").args(["-d", dev]).output();
                    if !out.is_ok_and(|o| o.status.success()) {
                        eprintln!("cleanup: losetup -d {dev} failed");
                    }
                }
            }
        }
    }
}

struct Clients {
    identity: IdentityClient<Channel>,
    controller: ControllerClient<Channel>,
    node: NodeClient<Channel>,
}

fn cap(mode: Mode, block: bool) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(if block {
            AccessType::Block(BlockVolume {})
        } else {
            AccessType::Mount(MountVolume {
                fs_type: "ext4".into(),
                mount_flags: vec!["noatime".into()],
                ..Default::default()
            })
        }),
    }
}

fn rw(block: bool) -> VolumeCapability {
    cap(Mode::SingleNodeWriter, block)
}

impl Clients {
    async fn create(&mut self, name: &str, bytes: i64, block: bool) -> csi::Volume {
        let req = csi::CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(CapacityRange {
                required_bytes: bytes,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![rw(block)],
            parameters: [("type".to_string(), "cloud_ssd".to_string())].into(),
            ..Default::default()
        };
        self.controller
            .create_volume(req)
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
    }

    async fn attach(&mut self, id: &str, node: &str) -> Result<(), Code> {
        let req = csi::ControllerPublishVolumeRequest {
            volume_id: id.into(),
            node_id: node.into(),
            volume_capability: Some(rw(false)),
            ..Default::default()
        };
        self.controller
            .controller_publish_volume(req)
            .await
            .map(drop)
            .map_err(|s| s.code())
    }

    async fn detach(&mut self, id: &str, node: &str) {
        let req = csi::ControllerUnpublishVolumeRequest {
            volume_id: id.into(),
            node_id: node.into(),
            ..Default::default()
        };
        self.controller.controller_unpublish_volume(req).await.unwrap();
    }

    async fn delete(&mut self, id: &str) -> Result<(), Code> {
        let req = csi::DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        };
        self.controller.delete_volume(req).await.map(drop).map_err(|s| s.code())
    }

    async fn stage(&mut self, id: &str, staging: &str, block: bool) {
        let req = csi::NodeStageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.into(),
            volume_capability: Some(rw(block)),
            ..Default::default()
        };
        self.node.node_stage_volume(req).await.unwrap();
    }

    async fn unstage(&mut self, id: &str, staging: &str) {
        let req = csi::NodeUnstageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.into(),
        };
        self.node.node_unstage_volume(req).await.unwrap();
    }

    async fn publish(&mut self, id: &str, staging: &str, target: &str, block: bool) {
        let req = csi::NodePublishVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.into(),
            target_path: target.into(),
            volume_capability: Some(rw(block)),
            ..Default::default()
        };
        self.node.node_publish_volume(req).await.unwrap();
    }

    async fn unpublish(&mut self, id: &str, target: &str) {
        let req = csi::NodeUnpublishVolumeRequest {
            volume_id: id.into(),
            target_path: target.into(),
        };
        self.node.node_unpublish_volume(req).await.unwrap();
    }

    async fn stats(&mut self, id: &str, path: &str) -> Result<Vec<csi::VolumeUsage>, Code> {
        let req = csi::NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: path.into(),
            ..Default::default()
        };
        let r = self.node.node_get_volume_stats(req).await.map_err(|s| s.code())?;
        Ok(r.into_inner().usage)
    }
}

fn fs_bytes(path: &str) -> u64 {
    let s = rustix::fs::statvfs(path).unwrap();
    s.f_blocks * s.f_frsize
}

#[tokio::test]
async fn a_volume_is_formatted_once_keeps_its_data_and_grows_online() {
    if !root() {
        return;
    }
    let scene = Scene::new("life").await;
    let mut c = scene.clients().await;
    let info = c
        .identity
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, DISK_DRIVER);
    let vol = c.create(&unique("pvc"), 64 * MIB, false).await;
    let id = vol.volume_id.clone();
    assert_eq!(vol.capacity_bytes, 64 * MIB);
    assert_eq!(vol.volume_context["type"], "cloud_ssd");
    assert_eq!(vol.volume_context["fsType"], "ext4");
    c.attach(&id, &scene.node).await.unwrap();
    let (staging, target) = (scene.path("staging"), scene.path("pods/a/volumes/data"));

    c.stage(&id, &staging, false).await;
    c.stage(&id, &staging, false).await;
    let dev = loops_of(&scene.image(&id));
    assert!(dev.starts_with("/dev/loop"), "attached: {dev:?}");
    c.publish(&id, &staging, &target, false).await;
    c.publish(&id, &staging, &target, false).await;
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(Path::new(&target).join("data.bin"), &bytes).unwrap();
    c.unpublish(&id, &target).await;
    c.unpublish(&id, &target).await;
    assert!(!Path::new(&target).exists(), "the target goes with the mount");
    c.unstage(&id, &staging).await;
    c.unstage(&id, &staging).await;
    assert_eq!(loops_of(&scene.image(&id)), "", "detached");

    // Staged again: the same file system, the same bytes.
    c.stage(&id, &staging, false).await;
    c.publish(&id, &staging, &target, false).await;
    assert_eq!(
        std::fs::read(Path::new(&target).join("data.bin")).unwrap(),
        bytes,
        "not re-formatted"
    );

    let before = fs_bytes(&target);
    let grow = csi::ControllerExpandVolumeRequest {
        volume_id: id.clone(),
        capacity_range: Some(CapacityRange {
            required_bytes: 160 * MIB,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    let grown = c.controller.controller_expand_volume(grow).await.unwrap().into_inner();
    assert_eq!((grown.capacity_bytes, grown.node_expansion_required), (160 * MIB, true));
    let expand = csi::NodeExpandVolumeRequest {
        volume_id: id.clone(),
        volume_path: target.clone(),
        staging_target_path: staging.clone(),
        capacity_range: Some(CapacityRange {
            required_bytes: 160 * MIB,
            limit_bytes: 0,
        }),
        volume_capability: Some(rw(false)),
        ..Default::default()
    };
    match c.node.node_expand_volume(expand.clone()).await {
        Ok(r) => assert_eq!(r.into_inner().capacity_bytes, 160 * MIB),
        // A driver without CAP_SYS_RESOURCE (a container's root, this project's CI) cannot
        // grow a mounted ext4; the file system grows when the volume is staged next.
        Err(s) => {
            assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
            assert!(s.message().contains("CAP_SYS_RESOURCE"), "{s:?}");
            assert_eq!(fs_bytes(&target), before, "not grown yet");
            c.unpublish(&id, &target).await;
            c.unstage(&id, &staging).await;
            c.stage(&id, &staging, false).await;
            c.publish(&id, &staging, &target, false).await;
            let r = c.node.node_expand_volume(expand).await.unwrap().into_inner();
            assert_eq!(r.capacity_bytes, 160 * MIB, "and now there is nothing left to grow");
        }
    }
    let after = fs_bytes(&target);
    assert!(after > before * 2, "the file system grew: {before} -> {after}");
    assert_eq!(std::fs::read(Path::new(&target).join("data.bin")).unwrap(), bytes);

    let usage = c.stats(&id, &target).await.unwrap();
    let by_unit = |u: csi::volume_usage::Unit| *usage.iter().find(|x| x.unit == u as i32).unwrap();
    let b = by_unit(csi::volume_usage::Unit::Bytes);
    assert_eq!(b.total as u64, after);
    assert!(b.used >= bytes.len() as i64 && b.available > 0, "{b:?}");
    assert!(by_unit(csi::volume_usage::Unit::Inodes).used > 0);

    c.unpublish(&id, &target).await;
    c.unstage(&id, &staging).await;
    assert_eq!(loops_of(&scene.image(&id)), "");
    assert_eq!(c.delete(&id).await, Err(Code::FailedPrecondition), "still attached");
    c.detach(&id, &scene.node).await;
    c.delete(&id).await.unwrap();
    assert!(!scene.image(&id).exists());
}

#[tokio::test]
async fn an_xfs_volume_grows_while_mounted() {
    if !root() {
        return;
    }
    let scene = Scene::new("xfs").await;
    let mut c = scene.clients().await;
    let xfs = VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    };
    let req = csi::CreateVolumeRequest {
        name: unique("pvc-xfs"),
        // mkfs.xfs makes nothing smaller than 300 MB.
        capacity_range: Some(CapacityRange {
            required_bytes: 320 * MIB,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![xfs.clone()],
        parameters: [("fsType".to_string(), "xfs".to_string())].into(),
        ..Default::default()
    };
    let vol = c
        .controller
        .create_volume(req)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let id = vol.volume_id;
    assert_eq!(vol.volume_context["fsType"], "xfs");
    c.attach(&id, &scene.node).await.unwrap();
    let (staging, target) = (scene.path("staging"), scene.path("pods/x/volumes/data"));
    let stage = csi::NodeStageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.clone(),
        volume_capability: Some(xfs.clone()),
        ..Default::default()
    };
    c.node.node_stage_volume(stage).await.unwrap();
    let publish = csi::NodePublishVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.clone(),
        target_path: target.clone(),
        volume_capability: Some(xfs.clone()),
        ..Default::default()
    };
    c.node.node_publish_volume(publish).await.unwrap();
    let blkid = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE"])
        .arg(loops_of(&scene.image(&id)).split(':').next().unwrap())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&blkid.stdout).trim(), "xfs");
    std::fs::write(Path::new(&target).join("f"), b"xfs").unwrap();
    let before = fs_bytes(&target);
    let range = Some(CapacityRange {
        required_bytes: 640 * MIB,
        limit_bytes: 0,
    });
    let grow = csi::ControllerExpandVolumeRequest {
        volume_id: id.clone(),
        capacity_range: range,
        ..Default::default()
    };
    c.controller.controller_expand_volume(grow).await.unwrap();
    let expand = csi::NodeExpandVolumeRequest {
        volume_id: id.clone(),
        volume_path: target.clone(),
        capacity_range: range,
        ..Default::default()
    };
    let r = c.node.node_expand_volume(expand).await.unwrap().into_inner();
    assert_eq!(r.capacity_bytes, 640 * MIB);
    let after = fs_bytes(&target);
    assert!(after > before * 3 / 2, "grew while mounted: {before} -> {after}");
    assert_eq!(std::fs::read(Path::new(&target).join("f")).unwrap(), b"xfs");
    c.unpublish(&id, &target).await;
    c.unstage(&id, &staging).await;
    assert_eq!(loops_of(&scene.image(&id)), "");
    c.detach(&id, &scene.node).await;
    c.delete(&id).await.unwrap();
}

#[tokio::test]
async fn a_block_volume_is_its_device_node() {
    if !root() {
        return;
    }
    let scene = Scene::new("block").await;
    let mut c = scene.clients().await;
    let id = c.create(&unique("pvc-block"), 8 * MIB, true).await.volume_id;
    c.attach(&id, &scene.node).await.unwrap();
    let (staging, target) = (scene.path("staging-block"), scene.path("pods/b/volumeDevices/dev"));
    c.stage(&id, &staging, true).await;
    c.publish(&id, &staging, &target, true).await;
    c.publish(&id, &staging, &target, true).await;
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i % 253) as u8).collect();
    {
        use std::io::Write;
        let mut dev = std::fs::OpenOptions::new().write(true).open(&target).unwrap();
        dev.write_all(&bytes).unwrap();
        dev.sync_all().unwrap();
    }
    let usage = c.stats(&id, &target).await.unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].total, 8 * MIB);
    c.unpublish(&id, &target).await;
    assert!(!Path::new(&target).exists());
    c.unstage(&id, &staging).await;
    assert_eq!(loops_of(&scene.image(&id)), "");
    // The bytes are on the disk, where no file system was made.
    let on_disk = std::fs::read(scene.image(&id)).unwrap();
    assert_eq!(&on_disk[..bytes.len()], &bytes[..]);
    c.detach(&id, &scene.node).await;
    c.delete(&id).await.unwrap();
}

#[tokio::test]
async fn a_restarted_driver_finds_its_volumes_staged_and_published() {
    if !root() {
        return;
    }
    let mut scene = Scene::new("restart").await;
    let mut c = scene.clients().await;
    let id = c.create(&unique("pvc-restart"), 32 * MIB, false).await.volume_id;
    c.attach(&id, &scene.node).await.unwrap();
    let (staging, target) = (scene.path("staging"), scene.path("pods/c/volumes/data"));
    c.stage(&id, &staging, false).await;
    c.publish(&id, &staging, &target, false).await;
    std::fs::write(Path::new(&target).join("kept"), b"still here").unwrap();
    let dev = loops_of(&scene.image(&id));

    scene.stop().await;
    // The pod's view does not depend on the driver.
    assert_eq!(std::fs::read(Path::new(&target).join("kept")).unwrap(), b"still here");
    scene.start();
    let mut c = scene.clients().await;
    c.stage(&id, &staging, false).await;
    c.publish(&id, &staging, &target, false).await;
    assert_eq!(
        loops_of(&scene.image(&id)),
        dev,
        "the same loop device, not a second one"
    );
    assert_eq!(c.stats(&id, &target).await.unwrap().len(), 2);
    c.unpublish(&id, &target).await;
    c.unstage(&id, &staging).await;
    assert_eq!(loops_of(&scene.image(&id)), "");
    c.detach(&id, &scene.node).await;
    c.delete(&id).await.unwrap();
}

#[tokio::test]
async fn bad_requests_get_the_codes_csi_names() {
    if !root() {
        return;
    }
    let scene = Scene::new("errors").await;
    let mut c = scene.clients().await;
    let id = c.create(&unique("pvc-errors"), 16 * MIB, false).await.volume_id;

    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    let stage = csi::NodeStageVolumeRequest {
        staging_target_path: scene.path("staging"),
        volume_capability: Some(rw(false)),
        ..Default::default()
    };
    assert_eq!(
        code(c.node.node_stage_volume(stage).await.map(drop)),
        Code::InvalidArgument
    );
    assert_eq!(c.delete("").await, Err(Code::InvalidArgument));
    assert_eq!(c.attach("", &scene.node).await, Err(Code::InvalidArgument));
    assert_eq!(
        c.attach("d-no-such-volume-0123456789abcdef", &scene.node).await,
        Err(Code::NotFound)
    );
    assert_eq!(c.attach(&id, "no-such-node").await, Err(Code::NotFound));
    assert_eq!(
        c.stats("d-no-such-volume-0123456789abcdef", "/").await,
        Err(Code::NotFound)
    );
    let stage = csi::NodeStageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: scene.path("staging"),
        volume_capability: Some(rw(false)),
        ..Default::default()
    };
    assert_eq!(
        code(c.node.node_stage_volume(stage).await.map(drop)),
        Code::FailedPrecondition,
        "not attached to this node"
    );
    let create = csi::CreateVolumeRequest {
        name: unique("pvc-rwx"),
        volume_capabilities: vec![cap(Mode::MultiNodeMultiWriter, false)],
        ..Default::default()
    };
    assert_eq!(
        code(c.controller.create_volume(create).await.map(drop)),
        Code::InvalidArgument
    );

    // A disk attaches to one node at a time.
    let other = unique("node-b");
    DiskDriver::new(DiskConfig::new(scene.state(), &other)).unwrap();
    c.attach(&id, &scene.node).await.unwrap();
    assert_eq!(c.attach(&id, &other).await, Err(Code::FailedPrecondition));
    c.detach(&id, &scene.node).await;
    c.attach(&id, &other).await.unwrap();
    c.detach(&id, &other).await;
    c.delete(&id).await.unwrap();
    c.delete(&id).await.unwrap();
}
