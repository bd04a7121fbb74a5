//! Snapshots: a read-only copy of a volume's directory at
//! `<source>/cachalot-snapshots/<name>` in the volume's own location,
//! made through the backend API (`copy.rs`) on every backend. A snapshot
//! holds every file as it was when it was copied: files closed before the
//! snapshot started are whole and consistent; a file being written while
//! it is copied is taken as last published (never half-written). The
//! snapshot is complete once its marker `cachalot-snapshot.json` exists;
//! until then CreateSnapshot answers `ready_to_use: false` and a retry joins
//! the running copy (or starts it again after a controller restart).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::Status;

use super::controller::ControllerService;
use super::copy::copy_tree;
use super::errors::{backend_status, missing};
use super::proto::*;
use super::state::SnapshotRecord;
use super::volume_id::{VolumeId, VolumeIdError};
use crate::backend::{Backend, BackendPath, ErrorKind, Identity, WriteStart};

/// Not a dot-name with `.cachalot-`: those are temp objects, hidden from
/// listings and removed by the cleanup of crashed writers.
pub const SNAPSHOTS_DIR: &str = "cachalot-snapshots";
const MARKER: &str = "cachalot-snapshot.json";
const ROOT: Identity = Identity::new(0, 0);
/// How long a request waits for a copy before answering "not yet".
const PATIENCE: Duration = Duration::from_secs(5);

/// What the marker of a complete snapshot records.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Marker {
    source_volume_id: String,
    size_bytes: i64,
    creation_unix: i64,
}

/// `s1#…`: the volume-ID encoding of the snapshot's directory.
pub fn encode_id(volume: &VolumeId) -> String {
    format!("s1#{}", volume.encode().trim_start_matches("v1#"))
}

/// The snapshot's directory as a volume ID (its location and path).
pub fn decode_id(snapshot_id: &str) -> Result<VolumeId, Status> {
    let not_ours = || Status::not_found(format!("snapshot {snapshot_id} does not exist"));
    let rest = snapshot_id.strip_prefix("s1#").ok_or_else(not_ours)?;
    let id = VolumeId::decode(&format!("v1#{rest}")).map_err(|e| match e {
        VolumeIdError::Foreign => not_ours(),
        e => Status::invalid_argument(format!("snapshot ID: {e}")),
    })?;
    match id.sub.as_str().split_once('/') {
        Some((SNAPSHOTS_DIR, name)) if !name.contains('/') => Ok(id),
        _ => Err(Status::invalid_argument(format!(
            "snapshot ID {snapshot_id} does not name a snapshot"
        ))),
    }
}

/// Top-level names of a snapshot that are not the volume's files.
pub fn is_marker(name: &str) -> bool {
    name == MARKER
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn answer(snapshot_id: &str, m: &Marker, ready: bool) -> CreateSnapshotResponse {
    CreateSnapshotResponse {
        snapshot: Some(snapshot_of(snapshot_id, m, ready)),
    }
}

fn snapshot_of(snapshot_id: &str, m: &Marker, ready: bool) -> Snapshot {
    Snapshot {
        size_bytes: m.size_bytes,
        snapshot_id: snapshot_id.to_string(),
        source_volume_id: m.source_volume_id.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: m.creation_unix,
            nanos: 0,
        }),
        ready_to_use: ready,
        group_snapshot_id: String::new(),
    }
}

pub(super) async fn read_marker(
    backend: &dyn Backend,
    dir: &BackendPath,
) -> Result<Option<Marker>, Status> {
    let path = dir
        .join(MARKER)
        .map_err(|e| Status::internal(e.to_string()))?;
    let reader = match backend.open_read(ROOT, &path).await {
        Ok(r) => r,
        Err(e) if e.kind == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(backend_status("reading the snapshot's marker", &e)),
    };
    let data = reader
        .read_at(0, 64 << 10)
        .await
        .map_err(|e| backend_status("reading the snapshot's marker", &e))?;
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|e| Status::internal(format!("the snapshot's marker {path} is damaged: {e}")))
}

async fn write_marker(backend: &dyn Backend, dir: &BackendPath, m: &Marker) -> Result<(), String> {
    let path = dir.join(MARKER).map_err(|e| e.to_string())?;
    let data = serde_json::to_vec(m).map_err(|e| e.to_string())?;
    let w = backend
        .begin_write(ROOT, &path, WriteStart::Empty, 0o444)
        .await
        .map_err(|e| e.to_string())?;
    if let Err(e) = w.write_at(0, &data).await {
        w.abort(&path).await;
        return Err(e.to_string());
    }
    w.publish(&path)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl ControllerService {
    pub async fn create_snapshot(
        &self,
        req: CreateSnapshotRequest,
    ) -> Result<CreateSnapshotResponse, Status> {
        if req.name.is_empty() {
            return Err(missing("name"));
        }
        if req.source_volume_id.is_empty() {
            return Err(missing("source_volume_id"));
        }
        let source = super::volume_id::decode_or_status(&req.source_volume_id)?;
        if source.sub.is_root() {
            return Err(Status::invalid_argument(
                "a static volume spanning its whole source cannot be snapshotted into it",
            ));
        }
        let dir = BackendPath::root()
            .join(SNAPSHOTS_DIR)
            .and_then(|d| d.join(&req.name))
            .map_err(|e| Status::invalid_argument(format!("snapshot name {}: {e}", req.name)))?;
        let snap = VolumeId {
            location: source.location.clone(),
            sub: dir.clone(),
            on_delete: super::params::OnDelete::Delete,
        };
        let snapshot_id = encode_id(&snap);
        let backend = self
            .open(&source.location, &BackendPath::root(), &req.secrets)
            .await?;
        let _guard = self.locks.lock(&snapshot_id).await;
        if let Some(m) = read_marker(backend.as_ref(), &dir).await? {
            if m.source_volume_id != req.source_volume_id {
                return Err(Status::already_exists(format!(
                    "snapshot {} exists for another volume ({})",
                    req.name, m.source_volume_id
                )));
            }
            return Ok(answer(&snapshot_id, &m, true));
        }
        match backend.stat(ROOT, &source.sub).await {
            Ok(_) => {}
            Err(e) if e.kind == ErrorKind::NotFound => {
                return Err(Status::not_found(format!(
                    "volume {} does not exist",
                    req.source_volume_id
                )))
            }
            Err(e) => return Err(backend_status("checking the source volume", &e)),
        }
        let created = now_unix();
        let (from, to, source_id) = (
            source.sub.clone(),
            dir.clone(),
            req.source_volume_id.clone(),
        );
        let job = self
            .jobs
            .start_or_join(&snapshot_id, move |job| async move {
                let parent = BackendPath::root()
                    .join(SNAPSHOTS_DIR)
                    .map_err(|e| e.to_string())?;
                match backend.mkdir(ROOT, &parent, 0o755).await {
                    Err(e) if e.kind != ErrorKind::AlreadyExists => return Err(e.to_string()),
                    _ => {}
                }
                copy_tree(
                    backend.as_ref(),
                    ROOT,
                    &from,
                    &to,
                    &|_| false,
                    &job.progress,
                )
                .await
                .map_err(|e| e.to_string())?;
                let size = job
                    .progress
                    .bytes
                    .load(std::sync::atomic::Ordering::Relaxed);
                let marker = Marker {
                    source_volume_id: source_id,
                    size_bytes: size as i64,
                    creation_unix: created,
                };
                write_marker(backend.as_ref(), &to, &marker).await
            });
        let pending = Marker {
            source_volume_id: req.source_volume_id.clone(),
            size_bytes: 0,
            creation_unix: created,
        };
        match job.wait(PATIENCE).await {
            None => {
                tracing::info!(name = %req.name, progress = %job.progress.describe(), "snapshot being copied");
                Ok(answer(&snapshot_id, &pending, false))
            }
            Some(Err(why)) => {
                self.jobs.forget(&snapshot_id);
                Err(Status::internal(format!(
                    "copying volume {} into snapshot {}: {why}",
                    req.source_volume_id, req.name
                )))
            }
            Some(Ok(())) => {
                self.jobs.forget(&snapshot_id);
                let backend = self
                    .open(&source.location, &BackendPath::root(), &req.secrets)
                    .await?;
                let m = read_marker(backend.as_ref(), &dir)
                    .await?
                    .ok_or_else(|| Status::internal("the finished snapshot has no marker"))?;
                self.state
                    .save_snapshot(&SnapshotRecord {
                        snapshot_id: snapshot_id.clone(),
                        source_volume_id: m.source_volume_id.clone(),
                        size_bytes: m.size_bytes,
                        creation_unix: m.creation_unix,
                    })
                    .map_err(|e| Status::internal(format!("recording the snapshot: {e}")))?;
                tracing::info!(name = %req.name, %snapshot_id, size_bytes = m.size_bytes, "snapshot taken");
                Ok(answer(&snapshot_id, &m, true))
            }
        }
    }

    pub async fn delete_snapshot(
        &self,
        req: DeleteSnapshotRequest,
    ) -> Result<DeleteSnapshotResponse, Status> {
        if req.snapshot_id.is_empty() {
            return Err(missing("snapshot_id"));
        }
        let snap = match decode_id(&req.snapshot_id) {
            Ok(s) => s,
            // Not ours: nothing to delete.
            Err(e) if e.code() == tonic::Code::NotFound => return Ok(DeleteSnapshotResponse {}),
            Err(e) => return Err(e),
        };
        let _guard = self.locks.lock(&req.snapshot_id).await;
        let root = self
            .open(&snap.location, &BackendPath::root(), &req.secrets)
            .await?;
        // A retry finds the directory gone: nothing to open below it
        // (opening a missing directory fails on every backend).
        let present = match root.stat(ROOT, &snap.sub).await {
            Ok(_) => true,
            Err(e) if e.kind == ErrorKind::NotFound => false,
            Err(e) => return Err(backend_status("looking at the snapshot's directory", &e)),
        };
        if present {
            let inside = self.open(&snap.location, &snap.sub, &req.secrets).await?;
            match super::controller::remove_contents(inside.as_ref(), ROOT).await {
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return Err(backend_status("removing the snapshot's files", &e)),
                Ok(()) => {}
            }
            match root.rmdir(ROOT, &snap.sub).await {
                Err(e) if e.kind != ErrorKind::NotFound => {
                    return Err(backend_status("removing the snapshot's directory", &e))
                }
                _ => {}
            }
        }
        self.state
            .remove_snapshot(&req.snapshot_id)
            .map_err(|e| Status::internal(format!("forgetting the snapshot: {e}")))?;
        tracing::info!(snapshot_id = %req.snapshot_id, "snapshot deleted");
        Ok(DeleteSnapshotResponse {})
    }

    /// From this controller's records (there is no central store to list
    /// every location's snapshots), filtered, in pages. A snapshot asked
    /// for by ID that is in no record (taken before the controller's state
    /// was lost, or imported by its handle) is looked up in its source.
    pub async fn list_snapshots(
        &self,
        req: ListSnapshotsRequest,
    ) -> Result<ListSnapshotsResponse, Status> {
        if !req.snapshot_id.is_empty()
            && !self
                .state
                .all_snapshots()
                .iter()
                .any(|r| r.snapshot_id == req.snapshot_id)
        {
            return self.find_snapshot(&req.snapshot_id, &req.secrets).await;
        }
        let start: usize = match req.starting_token.as_str() {
            "" => 0,
            t => t
                .parse()
                .map_err(|_| Status::aborted(format!("starting_token {t} is not one of ours")))?,
        };
        let all: Vec<SnapshotRecord> = self
            .state
            .all_snapshots()
            .into_iter()
            .filter(|r| req.snapshot_id.is_empty() || r.snapshot_id == req.snapshot_id)
            .filter(|r| {
                req.source_volume_id.is_empty() || r.source_volume_id == req.source_volume_id
            })
            .collect();
        if start > all.len() {
            return Err(Status::aborted(format!(
                "starting_token {start} is past the end"
            )));
        }
        let take = match req.max_entries {
            n if n > 0 => n as usize,
            _ => usize::MAX,
        };
        let page: Vec<_> = all.iter().skip(start).take(take).collect();
        let next = start + page.len();
        Ok(ListSnapshotsResponse {
            entries: page
                .into_iter()
                .map(|r| list_snapshots_response::Entry {
                    snapshot: Some(snapshot_of(
                        &r.snapshot_id,
                        &Marker {
                            source_volume_id: r.source_volume_id.clone(),
                            size_bytes: r.size_bytes,
                            creation_unix: r.creation_unix,
                        },
                        true,
                    )),
                })
                .collect(),
            next_token: if next < all.len() {
                next.to_string()
            } else {
                String::new()
            },
        })
    }

    /// The snapshot `snapshot_id` from its marker in the source (an empty
    /// list when it is not there or not complete).
    async fn find_snapshot(
        &self,
        snapshot_id: &str,
        secrets: &std::collections::HashMap<String, String>,
    ) -> Result<ListSnapshotsResponse, Status> {
        let snap = match decode_id(snapshot_id) {
            Ok(s) => s,
            Err(e) if e.code() == tonic::Code::NotFound => return Ok(Default::default()),
            Err(e) => return Err(e),
        };
        let backend = self
            .open(&snap.location, &BackendPath::root(), secrets)
            .await?;
        let entries = match read_marker(backend.as_ref(), &snap.sub).await? {
            Some(m) => vec![list_snapshots_response::Entry {
                snapshot: Some(snapshot_of(snapshot_id, &m, true)),
            }],
            None => Vec::new(),
        };
        Ok(ListSnapshotsResponse {
            entries,
            next_token: String::new(),
        })
    }
}
