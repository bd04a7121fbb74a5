//! The node service's publish logic against a fake mount table and a fake
//! session host: what it binds, detaches and unmounts, and what it records.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use tonic::{Code, Status};

use super::host::{SessionHost, Start};
use super::mounts::{Health, MountTable};
use super::node::NodeService;
use super::params::{CacheKnobs, OnDelete};
use super::proto::volume_capability::access_mode::Mode;
use super::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use super::proto::{NodePublishVolumeRequest, NodeUnpublishVolumeRequest, VolumeCapability};
use super::state::{StagedRecord, StateDir};
use super::volume_id::VolumeId;
use crate::backend::BackendPath;
use crate::backend::Source;
use crate::mount::spec::MountSpec;

/// Mount points and their health, and every change asked for.
#[derive(Default)]
struct FakeMounts {
    table: Mutex<HashMap<PathBuf, Health>>,
    calls: Mutex<Vec<String>>,
}

impl MountTable for Arc<FakeMounts> {
    fn health(&self, path: &Path) -> Health {
        self.table
            .lock()
            .get(path)
            .cloned()
            .unwrap_or(Health::NotMounted)
    }
    fn is_mount_point(&self, path: &Path) -> io::Result<bool> {
        Ok(self.table.lock().contains_key(path))
    }
    fn bind(&self, src: &Path, dst: &Path, read_only: bool, _flags: &[String]) -> io::Result<()> {
        self.calls.lock().push(format!(
            "bind {} {} ro={read_only}",
            src.display(),
            dst.display()
        ));
        self.table.lock().insert(dst.to_path_buf(), Health::Healthy);
        Ok(())
    }
    fn detach(&self, path: &Path) -> io::Result<()> {
        self.calls.lock().push(format!("detach {}", path.display()));
        self.table.lock().remove(path);
        Ok(())
    }
    fn unmount(&self, path: &Path) -> io::Result<bool> {
        self.calls
            .lock()
            .push(format!("unmount {}", path.display()));
        Ok(self.table.lock().remove(path).is_some())
    }
}

/// Sessions are not this test's subject: starting one is refused.
struct NoSessions;

impl SessionHost for NoSessions {
    fn start(&self, _start: Start<'_>) -> Result<u32, Status> {
        Err(Status::internal("no sessions in this test"))
    }
    fn stop(&self, _staging: &Path, _recorded_pid: u32) {}
    fn adopt(&self, _rec: &StagedRecord) {}
}

struct Fixture {
    _dir: tempfile::TempDir,
    node: NodeService,
    mounts: Arc<FakeMounts>,
    state: StateDir,
    volume_id: String,
    staging: PathBuf,
    target: PathBuf,
}

/// A volume staged (and healthy) at `staging`, nothing published yet.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("staging");
    let target = dir.path().join("pods/p1/volume");
    let volume_id = VolumeId {
        location: Source::Local {
            root: dir.path().join("backing"),
        },
        sub: BackendPath::root(),
        on_delete: OnDelete::Retain,
    }
    .encode();
    let state = StateDir::open(&dir.path().join("state")).unwrap();
    let spec = MountSpec::new(
        &crate::backend::Source::parse("file:///backing").unwrap(),
        staging.clone(),
        dir.path().join("cache"),
        &CacheKnobs::default(),
        false,
        None,
        None,
    );
    state
        .save_staged(&StagedRecord {
            volume_id: volume_id.clone(),
            staging_path: staging.clone(),
            spec,
            pid: 1,
            targets: BTreeMap::new(),
            ephemeral: false,
            service_account: None,
        })
        .unwrap();
    let mounts = Arc::new(FakeMounts::default());
    mounts.table.lock().insert(staging.clone(), Health::Healthy);
    let node = NodeService::new(
        "node-1".into(),
        dir.path().join("cache"),
        StateDir::open(&dir.path().join("state")).unwrap(),
        Box::new(NoSessions),
    )
    .with_mounts(Box::new(Arc::clone(&mounts)));
    Fixture {
        _dir: dir,
        node,
        mounts,
        state,
        volume_id,
        staging,
        target,
    }
}

fn publish_req(f: &Fixture, readonly: bool) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: f.volume_id.clone(),
        staging_target_path: f.staging.display().to_string(),
        target_path: f.target.display().to_string(),
        volume_capability: Some(VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: Mode::MultiNodeMultiWriter as i32,
            }),
        }),
        readonly,
        ..Default::default()
    }
}

fn targets(f: &Fixture) -> BTreeMap<PathBuf, bool> {
    f.state
        .load_staged(&f.volume_id)
        .unwrap()
        .expect("the stage record")
        .targets
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_binds_the_staging_mount_once_and_records_the_target() {
    let f = fixture();
    f.node.publish_volume(publish_req(&f, true)).await.unwrap();
    let bind = format!(
        "bind {} {} ro=true",
        f.staging.display(),
        f.target.display()
    );
    assert_eq!(*f.mounts.calls.lock(), vec![bind.clone()]);
    assert_eq!(targets(&f).get(&f.target), Some(&true));
    // kubelet retries: the same request changes nothing.
    f.node.publish_volume(publish_req(&f, true)).await.unwrap();
    assert_eq!(*f.mounts.calls.lock(), vec![bind]);
    // The same target read-write is another volume's business.
    let e = f
        .node
        .publish_volume(publish_req(&f, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_target_is_detached_before_binding_again() {
    let f = fixture();
    f.mounts
        .table
        .lock()
        .insert(f.target.clone(), Health::Dead("ENOTCONN".into()));
    f.node.publish_volume(publish_req(&f, false)).await.unwrap();
    let calls = f.mounts.calls.lock().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[0].starts_with("detach "), "{calls:?}");
    assert!(calls[1].starts_with("bind "), "{calls:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unpublish_unmounts_and_forgets_the_target() {
    let f = fixture();
    f.node.publish_volume(publish_req(&f, false)).await.unwrap();
    f.node
        .unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: f.volume_id.clone(),
            target_path: f.target.display().to_string(),
        })
        .await
        .unwrap();
    assert_eq!(
        f.mounts.calls.lock().last().cloned(),
        Some(format!("unmount {}", f.target.display()))
    );
    assert!(targets(&f).is_empty());
    assert!(!f.target.exists(), "the target directory is removed");
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_of_a_volume_not_staged_here_is_refused() {
    let f = fixture();
    let mut req = publish_req(&f, false);
    req.staging_target_path = "/elsewhere/staging".into();
    let e = f.node.publish_volume(req).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(f.mounts.calls.lock().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inline_volume_with_pod_authentication_is_refused_before_mounting() {
    let f = fixture();
    let mut req = publish_req(&f, false);
    req.volume_context = [
        ("csi.storage.k8s.io/ephemeral", "true"),
        ("bucket", "data"),
        ("authenticationSource", "pod"),
        ("roleArn", "arn:aws:iam::123456789012:role/r"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let e = f.node.publish_volume(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("persistent volumes"), "{e}");
    assert!(f.mounts.calls.lock().is_empty());
}
