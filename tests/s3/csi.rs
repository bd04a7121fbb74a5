//! CSI with S3 sources: the provisioner + kubelet call sequence against a
//! real plugin and SeaweedFS (strict SigV4), secrets as CSI secrets.

use crate::support_csi;
use crate::support_s3;

use std::collections::HashMap;
use std::path::Path;

use cachalot::csi::proto::*;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use support_csi::*;
use support_s3::{S3Server, BUCKET, KEY_ID, SECRET};

pub(crate) fn secrets(key: &str, secret: &str) -> HashMap<String, String> {
    params(&[("accessKeyId", key), ("secretAccessKey", secret)])
}

fn s3_params(server: &S3Server, prefix: &str) -> HashMap<String, String> {
    params(&[
        ("bucket", BUCKET),
        ("prefix", prefix),
        ("endpoint", &server.endpoint()),
        ("region", "us-east-1"),
        ("onDelete", "delete"),
    ])
}

async fn keys_under(server: &S3Server, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let store = server.store();
    let p = ObjPath::from(prefix);
    store
        .list(Some(&p))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

/// Every file the plugin and its children wrote (logs, records).
fn all_text_below(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !is_mounted(&p) {
                stack.push(p);
            } else if p.is_file() {
                out.push_str(&String::from_utf8_lossy(
                    &std::fs::read(&p).unwrap_or_default(),
                ));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_volume_full_lifecycle() {
    let server = S3Server::seaweed();
    let env = Env::new();
    let mut c = env.clients().await;
    let mut req = create_req("pvc-s3-1", s3_params(&server, "vols"));
    req.secrets = secrets(KEY_ID, SECRET);
    let vol = c
        .controller
        .create_volume(req)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    // CreateVolume made the prefix (a directory marker).
    let keys = keys_under(&server, "vols/pvc-s3-1").await;
    assert!(!keys.is_empty(), "no marker under vols/pvc-s3-1");

    let staging = env.staging("s3pv");
    let mut stage = stage_req(&vol, &staging);
    stage.secrets = secrets(KEY_ID, SECRET);
    c.node.node_stage_volume(stage).await.unwrap();
    assert!(is_mounted(&staging));
    // Secrets travel in the child's environment, never on its command line.
    for pid in env.mount_children() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let text = String::from_utf8_lossy(&cmdline);
        assert!(!text.contains(SECRET), "secret on the command line: {text}");
        assert!(text.contains("--path-style"), "{text}");
        assert!(text.contains(&server.endpoint()), "{text}");
    }

    let target = env.target("pod-s3");
    c.publish(&vol, &staging, &target, false).await;
    std::fs::write(target.join("hello.txt"), b"hello from a pod\n").unwrap();
    std::fs::create_dir(target.join("sub")).unwrap();
    std::fs::write(target.join("sub/b.bin"), vec![7u8; 100_000]).unwrap();
    assert_eq!(
        std::fs::read(target.join("hello.txt")).unwrap(),
        b"hello from a pod\n"
    );
    // A second client sees the data in the bucket under prefix/volume.
    let got = server
        .store()
        .get(&ObjPath::from("vols/pvc-s3-1/hello.txt"))
        .await
        .expect("object in the bucket")
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], b"hello from a pod\n");
    let big = server
        .store()
        .head(&ObjPath::from("vols/pvc-s3-1/sub/b.bin"))
        .await
        .unwrap();
    assert_eq!(big.size, 100_000);

    c.unpublish(&vol, &target).await;
    c.unstage(&vol, &staging).await;
    assert!(!is_mounted(&staging));
    eventually(
        "mount child exits",
        std::time::Duration::from_secs(10),
        || env.mount_children().is_empty(),
    );

    c.controller
        .delete_volume(DeleteVolumeRequest {
            volume_id: vol.volume_id.clone(),
            secrets: secrets(KEY_ID, SECRET),
        })
        .await
        .unwrap();
    let left = keys_under(&server, "vols/pvc-s3-1").await;
    assert!(left.is_empty(), "objects left after delete: {left:?}");
    assert!(!all_text_below(env.root.path()).contains(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_secret_is_failed_precondition_and_never_logged() {
    const WRONG: &str = "wrong-Secret-Value-4711-zz";
    let server = S3Server::seaweed();
    let env = Env::with_log("debug");
    let mut c = env.clients().await;

    let mut req = create_req("pvc-s3-bad", s3_params(&server, "bad"));
    req.secrets = secrets(KEY_ID, WRONG);
    let e = c.controller.create_volume(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("credentials"), "{}", e.message());
    assert!(!e.message().contains(WRONG));

    // Created with the right secret, staged with a wrong one.
    let mut req = create_req("pvc-s3-ok", s3_params(&server, "bad"));
    req.secrets = secrets(KEY_ID, SECRET);
    let vol = c
        .controller
        .create_volume(req)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let staging = env.staging("s3bad");
    let mut stage = stage_req(&vol, &staging);
    stage.secrets = secrets(KEY_ID, WRONG);
    let e = c.node.node_stage_volume(stage).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("credentials"), "{}", e.message());
    assert!(!e.message().contains(WRONG));
    assert!(!is_mounted(&staging));

    // Missing bucket: FAILED_PRECONDITION naming the bucket.
    let mut p = s3_params(&server, "x");
    p.insert("bucket".into(), "no-such-bucket".into());
    let mut req = create_req("pvc-s3-nobucket", p);
    req.secrets = secrets(KEY_ID, SECRET);
    let e = c.controller.create_volume(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("no-such-bucket"), "{}", e.message());

    let logs = all_text_below(env.root.path());
    assert!(!logs.is_empty());
    assert!(!logs.contains(WRONG), "wrong secret in a log");
    assert!(!logs.contains(SECRET), "secret in a log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_unreachable_endpoint_is_unavailable() {
    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = Env::new();
    let mut c = env.clients().await;
    let p = params(&[
        ("bucket", BUCKET),
        ("endpoint", &format!("http://127.0.0.1:{port}")),
    ]);
    let mut req = create_req("pvc-s3-down", p);
    req.secrets = secrets(KEY_ID, SECRET);
    let started = std::time::Instant::now();
    let e = c.controller.create_volume(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

/// A snapshot and a restore on S3: the snapshot copies the volume's objects
/// (with the snapshotter's secrets), the restore copies them back into a
/// new volume's prefix, old content included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_snapshot_and_restore() {
    use cachalot::csi::proto::volume_content_source::{SnapshotSource, Type};
    let server = S3Server::seaweed();
    let store = server.store();
    let env = Env::new();
    let mut c = env.clients().await;
    let p = s3_params(&server, "snapvols");
    let mut req = create_req("pvc-s3-snap", p.clone());
    req.secrets = secrets(KEY_ID, SECRET);
    let vol = c
        .controller
        .create_volume(req)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let put = |key: &str, data: &'static [u8]| {
        let store = store.clone();
        let key = ObjPath::from(key);
        async move { store.put(&key, data.into()).await.unwrap() }
    };
    put("snapvols/pvc-s3-snap/a.txt", b"old").await;
    put("snapvols/pvc-s3-snap/dir/b.txt", b"kept").await;
    let snap = take_snapshot(&mut c, "s3-snap", &vol.volume_id, secrets(KEY_ID, SECRET)).await;
    put("snapvols/pvc-s3-snap/a.txt", b"new").await;
    let mut req = create_req("pvc-s3-restored", p.clone());
    req.secrets = secrets(KEY_ID, SECRET);
    req.volume_content_source = Some(VolumeContentSource {
        r#type: Some(Type::Snapshot(SnapshotSource {
            snapshot_id: snap.snapshot_id.clone(),
        })),
    });
    create_volume_retrying(&mut c, req).await;
    let get = |key: &str| {
        let store = store.clone();
        let key = ObjPath::from(key);
        async move {
            store
                .get(&key)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .to_vec()
        }
    };
    assert_eq!(get("snapvols/pvc-s3-restored/a.txt").await, b"old");
    assert_eq!(get("snapvols/pvc-s3-restored/dir/b.txt").await, b"kept");
    c.controller
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id.clone(),
            secrets: secrets(KEY_ID, SECRET),
        })
        .await
        .expect("DeleteSnapshot");
    assert!(keys_under(&server, "snapvols/cachalot-snapshots/s3-snap")
        .await
        .is_empty());
}
