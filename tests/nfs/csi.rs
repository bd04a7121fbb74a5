//! CSI with NFS sources: the provisioner + kubelet call sequence against a
//! real plugin and nfs-ganesha, checked on the exported directories.

use crate::support_csi;
use crate::support_nfs;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use cachalot::csi::proto::*;
use support_csi::*;
use support_nfs::{ganesha, SQUASHED_OWNER};

async fn create(
    c: &mut Clients,
    name: &str,
    p: HashMap<String, String>,
) -> Result<Volume, tonic::Status> {
    c.controller
        .create_volume(create_req(name, p))
        .await
        .map(|r| r.into_inner().volume.unwrap())
}

async fn delete(c: &mut Clients, vol: &Volume) {
    c.controller
        .delete_volume(DeleteVolumeRequest {
            volume_id: vol.volume_id.clone(),
            secrets: Default::default(),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nfs_volume_full_lifecycle_with_uid_gid() {
    let server = ganesha();
    let (disk, url) = server.area("csi-life");
    let env = Env::new();
    let mut c = env.clients().await;
    let p = params(&[
        ("source", &url),
        ("onDelete", "delete"),
        ("uid", "1234"),
        ("gid", "2345"),
    ]);
    let vol = create(&mut c, "pvc-nfs-1", p).await.unwrap();
    let dir = disk.join("pvc-nfs-1");
    let meta = std::fs::metadata(&dir).expect("CreateVolume made the directory");
    assert!(meta.is_dir());
    assert_eq!((meta.uid(), meta.gid()), (1234, 2345));

    let staging = env.staging("nfspv");
    c.stage(&vol, &staging).await;
    assert!(is_mounted(&staging));
    // uid/gid reach the mount child.
    let children = env.mount_children();
    assert_eq!(children.len(), 1);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", children[0])).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let joined = args.join(" ");
    assert!(joined.contains("--uid 1234 --gid 2345"), "{joined}");

    let target = env.target("pod-nfs");
    c.publish(&vol, &staging, &target, false).await;
    std::fs::write(target.join("a.txt"), b"through CSI and NFS").unwrap();
    std::fs::create_dir(target.join("d")).unwrap();
    std::fs::write(target.join("d/b.txt"), vec![1u8; 200_000]).unwrap();
    assert_eq!(
        std::fs::read(dir.join("a.txt")).unwrap(),
        b"through CSI and NFS"
    );
    assert_eq!(std::fs::read(dir.join("d/b.txt")).unwrap().len(), 200_000);
    let m = std::fs::metadata(dir.join("a.txt")).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (1234, 2345),
        "written as the volume's owner"
    );
    // Written on the server, read through the volume.
    std::fs::write(dir.join("server.txt"), b"from the server").unwrap();
    assert_eq!(
        std::fs::read(target.join("server.txt")).unwrap(),
        b"from the server"
    );

    c.unpublish(&vol, &target).await;
    c.unstage(&vol, &staging).await;
    assert!(!is_mounted(&staging));
    eventually("mount child exits", Duration::from_secs(10), || {
        env.mount_children().is_empty()
    });
    delete(&mut c, &vol).await;
    assert!(!dir.exists(), "DeleteVolume removed the directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nfs_root_squash_needs_uid_gid() {
    let server = ganesha();
    let env = Env::new();
    let mut c = env.clients().await;
    let url = "nfs://127.0.0.1/squashed";

    // As root (squashed to nobody) the controller cannot create it.
    let e = create(&mut c, "pvc-sq-root", params(&[("source", url)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("root_squash"), "{}", e.message());
    assert!(!server.squashed_dir().join("pvc-sq-root").exists());

    // As the share's owner it can, and the volume is created as that owner.
    let owner = SQUASHED_OWNER.to_string();
    let p = params(&[
        ("source", url),
        ("onDelete", "delete"),
        ("uid", &owner),
        ("gid", &owner),
    ]);
    let vol = create(&mut c, "pvc-sq", p).await.unwrap();
    let dir = server.squashed_dir().join("pvc-sq");
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(meta.uid(), SQUASHED_OWNER);

    // Staged without uid/gid, the child's preflight (as root) fails: its
    // message comes back as FAILED_PRECONDITION.
    let staging = env.staging("sq");
    let mut stage = stage_req(&vol, &staging);
    stage.volume_context.remove("uid");
    stage.volume_context.remove("gid");
    let e = c.node.node_stage_volume(stage).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("root_squash"), "{}", e.message());
    assert!(!is_mounted(&staging));

    // With the owner it stages and writes.
    c.stage(&vol, &staging).await;
    std::fs::write(staging.join("f"), b"squashed but fine").unwrap();
    assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"squashed but fine");
    c.unstage(&vol, &staging).await;
    eventually("mount child exits", Duration::from_secs(10), || {
        env.mount_children().is_empty()
    });
    // Deleted as the directory's owner (root may not).
    delete(&mut c, &vol).await;
    assert!(!dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nfs_wrong_share_lists_the_exports() {
    let _server = ganesha();
    let env = Env::new();
    let mut c = env.clients().await;
    let p = params(&[("server", "127.0.0.1"), ("share", "/not-there")]);
    let e = create(&mut c, "pvc-wrong", p).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let msg = e.message();
    assert!(msg.contains("/not-there"), "{msg}");
    assert!(
        msg.contains("/export") && msg.contains("/squashed"),
        "{msg}"
    );
}

/// Snapshot, restore and clone on NFS: the copies keep content, modes and
/// owners (the export lets root chown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nfs_snapshot_restore_and_clone() {
    use cachalot::csi::proto::volume_content_source::{SnapshotSource, Type, VolumeSource};
    use std::os::unix::fs::PermissionsExt;
    let server = ganesha();
    let (disk, url) = server.area("csi-snap");
    let env = Env::new();
    let mut c = env.clients().await;
    let p = params(&[("source", &url)]);
    let vol = create(&mut c, "pvc-nfs-snap", p.clone()).await.unwrap();
    let dir = disk.join("pvc-nfs-snap");
    std::fs::create_dir(dir.join("d")).unwrap();
    std::fs::write(dir.join("d/f"), b"before").unwrap();
    std::fs::set_permissions(dir.join("d/f"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(dir.join("d/f"), Some(1234), Some(2345)).unwrap();
    let snap = take_snapshot(&mut c, "nfs-snap", &vol.volume_id, Default::default()).await;
    std::fs::write(dir.join("d/f"), b"after").unwrap();

    let from = |source: Type| {
        let mut req = create_req("", p.clone());
        req.volume_content_source = Some(VolumeContentSource {
            r#type: Some(source),
        });
        req
    };
    let mut restore = from(Type::Snapshot(SnapshotSource {
        snapshot_id: snap.snapshot_id.clone(),
    }));
    restore.name = "pvc-nfs-restored".into();
    create_volume_retrying(&mut c, restore).await;
    let f = disk.join("pvc-nfs-restored/d/f");
    assert_eq!(std::fs::read(&f).unwrap(), b"before");
    let meta = std::fs::metadata(&f).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!((meta.uid(), meta.gid()), (1234, 2345));

    let mut clone = from(Type::Volume(VolumeSource {
        volume_id: vol.volume_id.clone(),
    }));
    clone.name = "pvc-nfs-clone".into();
    create_volume_retrying(&mut c, clone).await;
    assert_eq!(
        std::fs::read(disk.join("pvc-nfs-clone/d/f")).unwrap(),
        b"after"
    );
    c.controller
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!disk.join("cachalot-snapshots/nfs-snap").exists());
}
