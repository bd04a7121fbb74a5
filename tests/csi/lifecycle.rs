//! The external-provisioner + kubelet call sequence against a real plugin
//! process, with real FUSE and bind mounts, for `file://` sources.

use crate::support_csi;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use cachalot::csi::proto::volume_capability::access_mode::Mode;
use cachalot::csi::proto::volume_capability::AccessType;
use cachalot::csi::proto::*;
use support_csi::*;

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_two_targets_one_read_only_then_delete() {
    let env = Env::new();
    let mut c = env.clients().await;
    let url = env.source_url();
    let p = params(&[
        ("source", &url),
        ("subDir", "${pvc.metadata.namespace}/${pvc.metadata.name}"),
        ("onDelete", "delete"),
        ("mountPermissions", "0770"),
        ("csi.storage.k8s.io/pvc/name", "data"),
        ("csi.storage.k8s.io/pvc/namespace", "team-a"),
        ("csi.storage.k8s.io/pv/name", "pvc-0001"),
    ]);
    let vol = c.create("pvc-0001", p.clone()).await;
    assert_eq!(vol.capacity_bytes, 1 << 30);
    let backing = env.source().join("team-a/data");
    let meta = std::fs::metadata(&backing).expect("CreateVolume made the directory");
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o770);

    // Same request again: same volume.
    let again = c.create("pvc-0001", p).await;
    assert_eq!(again.volume_id, vol.volume_id);

    let staging = env.staging("pv1");
    std::fs::create_dir_all(&staging).unwrap();
    c.stage(&vol, &staging).await;
    assert!(is_mounted(&staging), "staging is a mount");
    let fs_type = cachalot::csi::mounts::mount_table()
        .unwrap()
        .into_iter()
        .find(|m| m.mount_point == staging)
        .unwrap()
        .fs_type;
    assert_eq!(fs_type, "fuse.cachalot");
    assert_eq!(env.mount_children().len(), 1, "one child per staged volume");
    // NodeStage twice: OK, still one child.
    c.stage(&vol, &staging).await;
    assert_eq!(env.mount_children().len(), 1);

    let rw = env.target("pod-rw");
    let ro = env.target("pod-ro");
    c.publish(&vol, &staging, &rw, false).await;
    c.publish(&vol, &staging, &ro, true).await;
    // Publish twice: OK.
    c.publish(&vol, &staging, &ro, true).await;
    assert!(is_mounted(&rw) && is_mounted(&ro));

    // I/O through the targets lands in the backing directory.
    {
        let mut f = std::fs::File::create(rw.join("hello.txt")).unwrap();
        f.write_all(b"hello from a pod").unwrap();
        f.sync_all().unwrap();
    }
    std::fs::create_dir(rw.join("sub")).unwrap();
    std::fs::write(rw.join("sub/n.bin"), vec![7u8; 300_000]).unwrap();
    assert_eq!(
        std::fs::read(backing.join("hello.txt")).unwrap(),
        b"hello from a pod"
    );
    assert_eq!(
        std::fs::read(backing.join("sub/n.bin")).unwrap().len(),
        300_000
    );
    assert_eq!(
        std::fs::read(ro.join("hello.txt")).unwrap(),
        b"hello from a pod"
    );
    // The read-only target refuses every change with EROFS.
    assert_eq!(
        errno_of(std::fs::write(ro.join("x"), b"no")),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno_of(
            std::fs::OpenOptions::new()
                .append(true)
                .open(ro.join("hello.txt"))
        ),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno_of(std::fs::create_dir(ro.join("d"))),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno_of(std::fs::remove_file(ro.join("hello.txt"))),
        Some(libc::EROFS)
    );
    assert!(backing.join("hello.txt").exists());

    let stats = c
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: rw.display().to_string(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let bytes = stats
        .usage
        .iter()
        .find(|u| u.unit == volume_usage::Unit::Bytes as i32)
        .expect("byte usage");
    let inodes = stats
        .usage
        .iter()
        .find(|u| u.unit == volume_usage::Unit::Inodes as i32)
        .expect("inode usage");
    assert!(
        bytes.total > 0 && bytes.available > 0 && bytes.used >= 0,
        "{bytes:?}"
    );
    assert!(bytes.available <= bytes.total);
    assert!(inodes.total > 0, "{inodes:?}");
    let cond = stats.volume_condition.unwrap();
    assert!(!cond.abnormal, "{cond:?}");
    // The mount shares its usage with the volume's other nodes through a
    // report in the volume, which the volume never shows (and DeleteVolume
    // removes with the files, below).
    let reports = backing.join(".usage.cachalot-shared");
    eventually("a usage report", Duration::from_secs(20), || {
        std::fs::read_dir(&reports).is_ok_and(|mut d| d.next().is_some())
    });
    let shown: Vec<_> = std::fs::read_dir(&rw)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !shown.iter().any(|n| n.to_string_lossy().contains("usage")),
        "{shown:?}"
    );

    for t in [&rw, &ro] {
        c.unpublish(&vol, t).await;
        assert!(!is_mounted(t));
        assert!(!t.exists(), "NodeUnpublish removes the target directory");
        // Again: not mounted any more → OK.
        c.unpublish(&vol, t).await;
    }
    c.unstage(&vol, &staging).await;
    assert!(!is_mounted(&staging));
    eventually("mount child exits", Duration::from_secs(10), || {
        env.mount_children().is_empty()
    });
    c.unstage(&vol, &staging).await;
    // Unstage removed nothing in the backend.
    assert!(backing.join("hello.txt").exists());

    c.controller
        .delete_volume(DeleteVolumeRequest {
            volume_id: vol.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!backing.exists(), "onDelete=delete removes the directory");
    assert!(env.source().join("team-a").exists(), "parents are kept");
    c.controller
        .delete_volume(DeleteVolumeRequest {
            volume_id: vol.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn create_write_delete(env: &Env, c: &mut Clients, name: &str, on_delete: &str) -> Volume {
    let url = env.source_url();
    let vol = c
        .create(name, params(&[("source", &url), ("onDelete", on_delete)]))
        .await;
    let staging = env.staging(name);
    let target = env.target(&format!("pod-{name}"));
    c.stage(&vol, &staging).await;
    c.publish(&vol, &staging, &target, false).await;
    std::fs::write(target.join("keep.txt"), b"precious").unwrap();
    c.unpublish(&vol, &target).await;
    c.unstage(&vol, &staging).await;
    c.controller
        .delete_volume(DeleteVolumeRequest {
            volume_id: vol.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    vol
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_delete_retain_keeps_and_archive_renames() {
    let env = Env::new();
    let mut c = env.clients().await;
    create_write_delete(&env, &mut c, "pvc-keep", "retain").await;
    assert_eq!(
        std::fs::read(env.source().join("pvc-keep/keep.txt")).unwrap(),
        b"precious"
    );

    create_write_delete(&env, &mut c, "pvc-arch", "archive").await;
    assert!(!env.source().join("pvc-arch").exists());
    assert_eq!(
        std::fs::read(env.source().join("archived-pvc-arch/keep.txt")).unwrap(),
        b"precious"
    );
    // A second archive of the same name does not clobber the first.
    create_write_delete(&env, &mut c, "pvc-arch", "archive").await;
    let archived: Vec<String> = std::fs::read_dir(env.source())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("archived-pvc-arch"))
        .collect();
    assert_eq!(archived.len(), 2, "{archived:?}");
    assert!(env.mount_children().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_and_volume_mount_group() {
    let env = Env::new();
    let mut c = env.clients().await;
    let url = env.source_url();
    let vol = c
        .create(
            "pvc-grp",
            params(&[("source", &url), ("uid", "1234"), ("gid", "5678")]),
        )
        .await;
    let backing = env.source().join("pvc-grp");
    let m = std::fs::metadata(&backing).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    assert_eq!(
        m.permissions().mode() & 0o7777,
        0o775,
        "default mountPermissions"
    );
    std::fs::write(backing.join("pre.txt"), b"x").unwrap(); // root:root

    let mut cap = rwx();
    if let Some(AccessType::Mount(m)) = cap.access_type.as_mut() {
        m.volume_mount_group = "4242".into();
    }
    let staging = env.staging("grp");
    let target = env.target("pod-grp");
    let mut stage = stage_req(&vol, &staging);
    stage.volume_capability = Some(cap.clone());
    c.node.node_stage_volume(stage).await.unwrap();
    let mut publish = publish_req(&vol, &staging, &target, false);
    publish.volume_capability = Some(cap.clone());
    c.node.node_publish_volume(publish.clone()).await.unwrap();

    assert_eq!(
        std::fs::metadata(target.join("pre.txt")).unwrap().gid(),
        4242
    );
    assert_eq!(std::fs::metadata(&target).unwrap().gid(), 4242);

    // Another pod with another fsGroup on the same node: refused, with why.
    let mut other = publish.clone();
    other.target_path = env.target("pod-other").display().to_string();
    if let Some(AccessType::Mount(m)) = other
        .volume_capability
        .as_mut()
        .and_then(|c| c.access_type.as_mut())
    {
        m.volume_mount_group = "999".into();
    }
    let err = c.node.node_publish_volume(other).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("fsGroup"), "{err:?}");

    c.unpublish(&vol, &target).await;
    c.unstage(&vol, &staging).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_access_mode_is_published_read_only() {
    let env = Env::new();
    let mut c = env.clients().await;
    let url = env.source_url();
    let vol = c.create("pvc-rox", params(&[("source", &url)])).await;
    std::fs::write(env.source().join("pvc-rox/data.txt"), b"shared").unwrap();
    let cap = mount_cap(Mode::MultiNodeReaderOnly);
    let staging = env.staging("rox");
    let target = env.target("pod-rox");
    let mut stage = stage_req(&vol, &staging);
    stage.volume_capability = Some(cap.clone());
    c.node.node_stage_volume(stage).await.unwrap();
    let mut publish = publish_req(&vol, &staging, &target, false);
    publish.volume_capability = Some(cap);
    c.node.node_publish_volume(publish).await.unwrap();
    assert_eq!(std::fs::read(target.join("data.txt")).unwrap(), b"shared");
    assert_eq!(
        errno_of(std::fs::write(target.join("new"), b"x")),
        Some(libc::EROFS)
    );
    // The staging mount itself is read-only too.
    assert_eq!(
        errno_of(std::fs::write(staging.join("new"), b"x")),
        Some(libc::EROFS)
    );
    c.unpublish(&vol, &target).await;
    c.unstage(&vol, &staging).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_and_removes_the_socket_but_keeps_mounts() {
    let mut env = Env::new();
    let mut c = env.clients().await;
    let url = env.source_url();
    let vol = c.create("pvc-term", params(&[("source", &url)])).await;
    let staging = env.staging("term");
    c.stage(&vol, &staging).await;
    drop(c);
    let status = env.stop_plugin();
    assert!(status.success(), "{status}");
    assert!(
        !env.socket().exists(),
        "socket removed on graceful shutdown"
    );
    assert!(is_mounted(&staging), "staged mounts outlive the plugin");
    std::fs::write(staging.join("still.txt"), b"up").unwrap();
    assert!(env.source().join("pvc-term/still.txt").exists());
    // A stale socket file does not stop the next start.
    std::os::unix::net::UnixListener::bind(env.socket()).unwrap();
    env.start_plugin();
    let mut c = env.clients().await;
    c.unstage(&vol, &staging).await;
    assert!(!is_mounted(&staging));
}

/// Snapshots and clones on a file:// source, through the provisioner's and
/// snapshotter's calls: snapshot → change the volume → restore shows the
/// old content, a clone the current one; ListSnapshots filters and pages;
/// DeleteSnapshot removes the copy and is idempotent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_restore_old_content_and_clones_copy_the_current() {
    use cachalot::csi::proto::volume_content_source::{SnapshotSource, Type, VolumeSource};
    let env = Env::new();
    let mut c = env.clients().await;
    let p = params(&[("source", &env.source_url())]);
    let vol = c.create("pvc-a", p.clone()).await;
    let a = env.source().join("pvc-a");
    std::fs::create_dir_all(a.join("sub")).unwrap();
    std::fs::write(a.join("f"), b"version 1").unwrap();
    std::fs::write(a.join("sub/g"), vec![3u8; 3 << 20]).unwrap();
    std::os::unix::fs::symlink("f", a.join("link")).unwrap();

    let snapshot = |name: &str, source: &str| CreateSnapshotRequest {
        source_volume_id: source.to_string(),
        name: name.to_string(),
        ..Default::default()
    };
    let snap = take_snapshot(&mut c, "snap-1", &vol.volume_id, Default::default()).await;
    assert_eq!(snap.source_volume_id, vol.volume_id);
    assert_eq!(snap.size_bytes, (3 << 20) + 9);
    // The same name again is the same snapshot; for another volume, a conflict.
    let again = c
        .controller
        .create_snapshot(snapshot("snap-1", &vol.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(again.snapshot_id, snap.snapshot_id);
    let other = c.create("pvc-other", p.clone()).await;
    let conflict = c
        .controller
        .create_snapshot(snapshot("snap-1", &other.volume_id))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), tonic::Code::AlreadyExists);

    // Change the volume after the snapshot.
    std::fs::write(a.join("f"), b"version 2").unwrap();
    std::fs::remove_file(a.join("sub/g")).unwrap();

    let create_from = |name: &str, source: Type| {
        let mut req = create_req(name, p.clone());
        req.volume_content_source = Some(VolumeContentSource {
            r#type: Some(source),
        });
        req
    };
    let from = Type::Snapshot(SnapshotSource {
        snapshot_id: snap.snapshot_id.clone(),
    });
    let restored = create_volume_retrying(&mut c, create_from("pvc-restored", from)).await;
    assert!(restored.content_source.is_some());
    let r = env.source().join("pvc-restored");
    assert_eq!(std::fs::read(r.join("f")).unwrap(), b"version 1");
    assert_eq!(std::fs::read(r.join("sub/g")).unwrap(), vec![3u8; 3 << 20]);
    assert_eq!(
        std::fs::read_link(r.join("link")).unwrap(),
        std::path::Path::new("f")
    );
    assert!(!r.join("cachalot-snapshot.json").exists());

    let clone = Type::Volume(VolumeSource {
        volume_id: vol.volume_id.clone(),
    });
    create_volume_retrying(&mut c, create_from("pvc-clone", clone)).await;
    // A static volume spanning the whole source would contain its clone.
    let whole = Type::Volume(VolumeSource {
        volume_id: format!("v1#file#{}##retain", env.source().display()),
    });
    let err = c
        .controller
        .create_volume(create_from("pvc-into-itself", whole))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let k = env.source().join("pvc-clone");
    assert_eq!(std::fs::read(k.join("f")).unwrap(), b"version 2");
    assert!(!k.join("sub/g").exists());

    // Listing: by volume, by ID, in pages.
    let s2 = c
        .controller
        .create_snapshot(snapshot("snap-2", &vol.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(s2.ready_to_use, "a small snapshot is ready at once");
    let lister = c.controller.clone();
    let list = |req: ListSnapshotsRequest| {
        let mut c = lister.clone();
        async move { c.list_snapshots(req).await.unwrap().into_inner() }
    };
    let by_volume = list(ListSnapshotsRequest {
        source_volume_id: vol.volume_id.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!(by_volume.entries.len(), 2);
    let first_page = list(ListSnapshotsRequest {
        max_entries: 1,
        ..Default::default()
    })
    .await;
    assert_eq!(first_page.entries.len(), 1);
    assert!(!first_page.next_token.is_empty());
    let second_page = list(ListSnapshotsRequest {
        max_entries: 1,
        starting_token: first_page.next_token.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!(second_page.entries.len(), 1);
    assert!(second_page.next_token.is_empty());
    let by_id = list(ListSnapshotsRequest {
        snapshot_id: snap.snapshot_id.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!(by_id.entries.len(), 1);

    // The controller's records lost (its state dir is an emptyDir): a
    // snapshot asked for by ID is found in its source.
    for record in std::fs::read_dir(env.path("state/snapshots")).unwrap() {
        std::fs::remove_file(record.unwrap().path()).unwrap();
    }
    let found = list(ListSnapshotsRequest {
        snapshot_id: s2.snapshot_id.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!(found.entries.len(), 1);
    assert!(found.entries[0].snapshot.as_ref().unwrap().ready_to_use);

    // Deleting removes the copy; twice is fine.
    for _ in 0..2 {
        c.controller
            .delete_snapshot(DeleteSnapshotRequest {
                snapshot_id: snap.snapshot_id.clone(),
                ..Default::default()
            })
            .await
            .expect("DeleteSnapshot");
    }
    assert!(!env.source().join("cachalot-snapshots/snap-1").exists());
    assert!(list(ListSnapshotsRequest {
        snapshot_id: snap.snapshot_id.clone(),
        ..Default::default()
    })
    .await
    .entries
    .is_empty());
}

/// An XFS filesystem in a loop image (reflinks on), mounted for one test
/// and unmounted (the loop device released) however the test ends.
struct XfsImage {
    dir: std::path::PathBuf,
}

impl XfsImage {
    fn mount(env: &Env, bytes: u64) -> XfsImage {
        let (image, dir) = (env.path("xfs.img"), env.path("xfs"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(bytes))
            .unwrap();
        let run = |cmd: &mut std::process::Command| {
            let out = cmd.output().expect("mkfs.xfs and mount (Debian xfsprogs)");
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(std::process::Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&image));
        run(std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&dir));
        XfsImage { dir }
    }

    fn free_bytes(&self) -> u64 {
        nix::unistd::sync();
        let st = nix::sys::statvfs::statvfs(&self.dir).unwrap();
        st.blocks_available() * st.fragment_size()
    }
}

impl Drop for XfsImage {
    fn drop(&mut self) {
        for _ in 0..20 {
            if nix::mount::umount(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// On a filesystem with reflinks (XFS), a snapshot and a restore share the
/// volume's extents instead of copying its data: 96 MiB snapshotted and
/// restored cost next to no space, and the restore reads the old content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_on_xfs_share_the_volume_extents() {
    use cachalot::csi::proto::volume_content_source::{SnapshotSource, Type};
    let env = Env::new();
    let xfs = XfsImage::mount(&env, 512 << 20);
    let p = params(&[("source", &format!("file://{}", xfs.dir.display()))]);
    let mut c = env.clients().await;
    let vol = c.create("pvc-xfs", p.clone()).await;
    let data: Vec<u8> = (0..96u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(xfs.dir.join("pvc-xfs/model.bin"), &data).unwrap();
    let before = xfs.free_bytes();
    let snap = take_snapshot(&mut c, "snap-xfs", &vol.volume_id, Default::default()).await;
    std::fs::write(xfs.dir.join("pvc-xfs/model.bin"), b"changed").unwrap();
    let mut req = create_req("pvc-xfs-restored", p);
    req.volume_content_source = Some(VolumeContentSource {
        r#type: Some(Type::Snapshot(SnapshotSource {
            snapshot_id: snap.snapshot_id,
        })),
    });
    create_volume_retrying(&mut c, req).await;
    let restored = std::fs::read(xfs.dir.join("pvc-xfs-restored/model.bin")).unwrap();
    assert!(restored == data, "the restore reads the snapshot's content");
    // The volume's own file was rewritten (its old extents now belong to
    // the snapshot alone): what was taken is one 96 MiB file, shared by
    // the snapshot and the restore.
    let used = before.saturating_sub(xfs.free_bytes());
    assert!(
        used < 16 << 20,
        "snapshot + restore of 96 MiB took {} MiB: copied, not shared",
        used >> 20
    );
}
