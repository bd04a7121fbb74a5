//! Controller service: provisioning is creating (and deleting, retaining or
//! archiving) a directory below the StorageClass's source.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use tonic::Status;

use super::backend::{self as backends, OpenContext};
use super::caps;
use super::errors::{backend_status, missing};
use super::locks::KeyedLocks;
use super::params::{NodeParams, OnDelete, S3Credentials, VolumeParams};
use super::proto::controller_service_capability::{rpc, Rpc, Type as CapType};
use super::proto::*;
use super::state::{ControllerRecord, StateDir};
use super::volume_id::{VolumeId, VolumeIdError};
use crate::backend::{AttrChanges, Backend, BackendPath, ErrorKind, FileKind, Identity, Source};

const ROOT: Identity = Identity::new(0, 0);
/// Mode of intermediate directories created for nested subDirs.
const PARENT_DIR_MODE: u32 = 0o755;

pub struct ControllerService {
    pub(super) state: StateDir,
    /// S3 backends stage uploads below it.
    cache_dir: PathBuf,
    pub(super) locks: KeyedLocks,
    /// Snapshot, restore and clone copies in progress.
    pub(super) jobs: super::copy::CopyJobs,
}

fn digest(params: &std::collections::HashMap<String, String>) -> String {
    let sorted: BTreeMap<String, &String> = params
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let text = serde_json::to_string(&sorted).unwrap_or_default();
    blake3::hash(text.as_bytes()).to_hex()[..32].to_string()
}

/// Requested capacity: required_bytes, else limit_bytes (0: none). It
/// becomes the volume's quota, enforced by the mount (`backend::quota`).
fn capacity(range: Option<&CapacityRange>) -> Result<i64, Status> {
    let Some(r) = range else { return Ok(0) };
    if r.required_bytes < 0 || r.limit_bytes < 0 {
        return Err(Status::invalid_argument(
            "capacity_range must not be negative",
        ));
    }
    if r.limit_bytes > 0 && r.required_bytes > r.limit_bytes {
        return Err(Status::out_of_range(format!(
            "capacity_range: required_bytes {} exceeds limit_bytes {}",
            r.required_bytes, r.limit_bytes
        )));
    }
    Ok(if r.required_bytes > 0 {
        r.required_bytes
    } else {
        r.limit_bytes
    })
}

impl ControllerService {
    pub fn new(state: StateDir, cache_dir: PathBuf) -> ControllerService {
        ControllerService {
            state,
            cache_dir,
            locks: KeyedLocks::default(),
            jobs: Default::default(),
        }
    }

    /// Open `location/sub` with the request's secrets (S3 only; other
    /// backends ignore them).
    pub(super) async fn open(
        &self,
        location: &Source,
        sub: &BackendPath,
        secrets: &HashMap<String, String>,
    ) -> Result<std::sync::Arc<dyn Backend>, Status> {
        let creds = if location.is_s3() {
            S3Credentials::from_secrets(secrets)?
        } else {
            None
        };
        let cx = OpenContext {
            credentials: creds.as_ref(),
            cache_dir: &self.cache_dir,
        };
        backends::open(location, sub, &cx).await
    }

    pub fn get_capabilities(&self) -> ControllerGetCapabilitiesResponse {
        let caps = [
            rpc::Type::CreateDeleteVolume,
            rpc::Type::SingleNodeMultiWriter,
            // capacity.rs
            rpc::Type::GetCapacity,
            // get_volume.rs
            rpc::Type::GetVolume,
            rpc::Type::VolumeCondition,
            // list_volumes.rs
            rpc::Type::ListVolumes,
            rpc::Type::ExpandVolume,
            // snapshots.rs, content.rs
            rpc::Type::CreateDeleteSnapshot,
            rpc::Type::ListSnapshots,
            rpc::Type::CloneVolume,
        ];
        ControllerGetCapabilitiesResponse {
            capabilities: caps
                .iter()
                .map(|t| ControllerServiceCapability {
                    r#type: Some(CapType::Rpc(Rpc { r#type: *t as i32 })),
                })
                .collect(),
        }
    }

    pub async fn create_volume(
        &self,
        req: CreateVolumeRequest,
    ) -> Result<CreateVolumeResponse, Status> {
        if req.name.is_empty() {
            return Err(missing("name"));
        }
        caps::check_all(&req.volume_capabilities)?;
        let capacity_bytes = capacity(req.capacity_range.as_ref())?;
        let params = VolumeParams::parse(&req.parameters)?;
        if !params.location.is_s3() && !req.secrets.is_empty() {
            let keys: Vec<&String> = req.secrets.keys().collect();
            tracing::warn!(?keys, "secrets given for a backend that uses none; ignored");
        }
        let sub = params.sub_path(&req.name)?;
        let id = VolumeId {
            location: params.location.clone(),
            sub: sub.clone(),
            on_delete: params.on_delete,
        };
        let volume_id = id.encode();
        let params_digest = digest(&req.parameters);
        let backend = self
            .open(&params.location, &BackendPath::root(), &req.secrets)
            .await?;

        let _guard = self.locks.lock(&req.name).await;
        let recorded = match self.state.load_controller(&req.name) {
            Ok(Some(rec)) if rec.volume_id != volume_id || rec.params_digest != params_digest => {
                return Err(Status::already_exists(format!(
                    "volume {} already exists with other parameters (volume id {})",
                    req.name, rec.volume_id
                )));
            }
            Ok(Some(rec)) if rec.capacity_bytes != capacity_bytes => {
                return Err(Status::already_exists(format!(
                    "volume {} already exists with capacity {} bytes; requested {}",
                    req.name, rec.capacity_bytes, capacity_bytes
                )));
            }
            Ok(rec) => rec.is_some(),
            Err(e) => {
                return Err(Status::internal(format!(
                    "reading the record of volume {}: {e}",
                    req.name
                )))
            }
        };
        make_volume_dir(&*backend, &params, &sub).await?;
        if let (Some(content), false) = (&req.volume_content_source, recorded) {
            self.fill_from(content, &params, &sub, &volume_id, backend)
                .await?;
        }
        self.state
            .save_controller(&ControllerRecord {
                name: req.name.clone(),
                volume_id: volume_id.clone(),
                capacity_bytes,
                params_digest,
            })
            .map_err(|e| Status::internal(format!("recording volume {}: {e}", req.name)))?;
        tracing::info!(name = %req.name, %volume_id, capacity_bytes, "volume created");
        let mut params = params;
        // The PVC size is the volume's quota (0: none asked, none kept).
        params.cache.capacity = u64::try_from(capacity_bytes).ok().filter(|c| *c > 0);
        Ok(CreateVolumeResponse {
            volume: Some(Volume {
                capacity_bytes,
                volume_id,
                volume_context: params.volume_context(),
                content_source: req.volume_content_source.clone(),
                accessible_topology: Vec::new(),
            }),
        })
    }

    /// The new capacity becomes the volume's quota where it is mounted:
    /// NodeExpandVolume applies it live (node expansion is required; the
    /// volume stays in use).
    pub async fn expand_volume(
        &self,
        req: ControllerExpandVolumeRequest,
    ) -> Result<ControllerExpandVolumeResponse, Status> {
        if req.volume_id.is_empty() {
            return Err(missing("volume_id"));
        }
        super::volume_id::decode_or_status(&req.volume_id)?;
        let capacity_bytes = capacity(req.capacity_range.as_ref())?;
        if capacity_bytes == 0 {
            return Err(missing("capacity_range"));
        }
        tracing::info!(volume_id = %req.volume_id, capacity_bytes, "volume expansion accepted");
        Ok(ControllerExpandVolumeResponse {
            capacity_bytes,
            node_expansion_required: true,
        })
    }

    pub async fn delete_volume(
        &self,
        req: DeleteVolumeRequest,
    ) -> Result<DeleteVolumeResponse, Status> {
        if req.volume_id.is_empty() {
            return Err(missing("volume_id"));
        }
        let id = match VolumeId::decode(&req.volume_id) {
            Ok(id) => id,
            Err(VolumeIdError::Foreign) => {
                tracing::info!(volume_id = %req.volume_id, "delete of a volume id we never issued: nothing to do");
                return Ok(DeleteVolumeResponse {});
            }
            Err(e) => return Err(Status::invalid_argument(e.to_string())),
        };
        let _guard = self.locks.lock(&req.volume_id).await;
        let parent = self
            .open(&id.location, &BackendPath::root(), &req.secrets)
            .await?;
        if id.sub.is_root() {
            tracing::warn!(volume_id = %req.volume_id, "volume is a whole source; never deleting a source root");
        } else {
            match parent.stat(ROOT, &id.sub).await {
                Err(e) if e.kind == ErrorKind::NotFound => {
                    tracing::info!(volume_id = %req.volume_id, "volume directory already gone");
                }
                Err(e) => return Err(backend_status("checking the volume directory", &e)),
                Ok(meta) => match id.on_delete {
                    OnDelete::Retain => {
                        tracing::info!(volume_id = %req.volume_id, "onDelete=retain: directory kept");
                    }
                    OnDelete::Delete => {
                        let as_id = acting_identity(&id.location, &meta);
                        let vol = self.open(&id.location, &id.sub, &req.secrets).await?;
                        if let Err(e) = vol.cleanup_stale_temps().await {
                            tracing::warn!(error = %e, "could not clean stale temp files before delete");
                        }
                        root_then(as_id, |who| remove_contents(&*vol, who))
                            .await
                            .map_err(|e| backend_status("deleting the volume's files", &e))?;
                        match root_then(as_id, |who| parent.rmdir(who, &id.sub)).await {
                            Ok(()) => {}
                            Err(e) if e.kind == ErrorKind::NotFound => {}
                            Err(e) if e.kind == ErrorKind::NotEmpty => {
                                return Err(Status::failed_precondition(format!(
                                    "volume directory {} is not empty after deleting its files: \
                                     a writer is still active (temporary files). Fix: stop the pods using it; \
                                     the call is retried",
                                    id.sub
                                )))
                            }
                            Err(e) => return Err(backend_status("removing the volume directory", &e)),
                        }
                        tracing::info!(volume_id = %req.volume_id, "volume deleted");
                    }
                    OnDelete::Archive => {
                        let as_id = acting_identity(&id.location, &meta);
                        let to = archive(&*parent, &id.sub, as_id).await?;
                        tracing::info!(volume_id = %req.volume_id, archived_as = %to, "volume archived");
                    }
                },
            }
        }
        self.state
            .remove_controller_by_id(&req.volume_id)
            .map_err(|e| Status::internal(format!("forgetting volume {}: {e}", req.volume_id)))?;
        Ok(DeleteVolumeResponse {})
    }

    pub async fn validate_volume_capabilities(
        &self,
        req: ValidateVolumeCapabilitiesRequest,
    ) -> Result<ValidateVolumeCapabilitiesResponse, Status> {
        if req.volume_id.is_empty() {
            return Err(missing("volume_id"));
        }
        if req.volume_capabilities.is_empty() {
            return Err(missing("volume_capabilities"));
        }
        let id = super::volume_id::decode_or_status(&req.volume_id)?;
        let parent = self
            .open(&id.location, &BackendPath::root(), &req.secrets)
            .await?;
        match parent.stat(ROOT, &id.sub).await {
            Ok(m) if m.kind == FileKind::Directory => {}
            Ok(_) => {
                return Err(Status::not_found(format!(
                    "volume {} is not a directory",
                    id.sub
                )))
            }
            Err(e) if e.kind == ErrorKind::NotFound => {
                return Err(Status::not_found(format!(
                    "volume directory {} does not exist",
                    id.sub
                )))
            }
            Err(e) => return Err(backend_status("checking the volume directory", &e)),
        }
        let unconfirmed = |message: String| ValidateVolumeCapabilitiesResponse {
            confirmed: None,
            message,
        };
        if let Err(e) = caps::check_all(&req.volume_capabilities) {
            return Ok(unconfirmed(e.0));
        }
        if let Err(e) = NodeParams::parse(&req.volume_context) {
            return Ok(unconfirmed(e.0));
        }
        if !req.parameters.is_empty() {
            if let Err(e) = VolumeParams::parse(&req.parameters) {
                return Ok(unconfirmed(e.0));
            }
        }
        Ok(ValidateVolumeCapabilitiesResponse {
            confirmed: Some(validate_volume_capabilities_response::Confirmed {
                volume_context: req.volume_context,
                volume_capabilities: req.volume_capabilities,
                parameters: req.parameters,
                mutable_parameters: Default::default(),
            }),
            message: String::new(),
        })
    }
}

/// `mkdir -p` of the volume directory: parents as root 0755, the volume
/// itself with mountPermissions, owned by uid/gid. An existing directory
/// is reused as is (idempotent retries, retained volumes).
async fn make_volume_dir(
    backend: &dyn Backend,
    params: &VolumeParams,
    sub: &BackendPath,
) -> Result<(), Status> {
    match backend.stat(ROOT, &BackendPath::root()).await {
        Ok(m) if m.kind == FileKind::Directory => {}
        Ok(_) => {
            return Err(Status::failed_precondition(format!(
                "source {} is not a directory. Fix: point parameter source at a directory",
                params.location
            )))
        }
        Err(e) if e.kind == ErrorKind::NotFound => {
            return Err(Status::failed_precondition(format!(
                "source {} does not exist. Fix: create it (or mount the storage there) or correct the StorageClass",
                params.location
            )))
        }
        Err(e) => return Err(backend_status("checking the source", &e)),
    }
    let parts: Vec<&str> = sub.as_str().split('/').collect();
    let mut path = BackendPath::root();
    for (i, part) in parts.iter().enumerate() {
        path = path
            .join(part)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let leaf = i + 1 == parts.len();
        match backend.stat(ROOT, &path).await {
            Ok(m) if m.kind == FileKind::Directory => continue,
            Ok(_) => {
                return Err(Status::failed_precondition(format!(
                    "{path} in {} exists and is not a directory. Fix: remove it or change subDir",
                    params.location
                )))
            }
            Err(e) if e.kind == ErrorKind::NotFound => {}
            Err(e) => return Err(backend_status("checking the volume directory", &e)),
        }
        let (id, mode) = if leaf {
            (params.owner.unwrap_or(ROOT), params.mount_permissions)
        } else if matches!(params.location, Source::Nfs { .. }) {
            // A root_squash export maps root to nobody: create parents as
            // the volume's owner too, which owns (or may write) the share.
            (params.owner.unwrap_or(ROOT), PARENT_DIR_MODE)
        } else {
            (ROOT, PARENT_DIR_MODE)
        };
        let nfs = matches!(params.location, Source::Nfs { .. });
        match mkdir_as(backend, id, &path, mode, nfs).await {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(backend_status("creating the volume directory", &e)),
        }
    }
    Ok(())
}

/// mkdir owned by `id`. On NFS the request is sent as `id` (a root_squash
/// export lets only the share's owner create); if that identity may not
/// write the parent (a root-owned export), root creates it and hands it
/// over with a chown.
async fn mkdir_as(
    backend: &dyn Backend,
    id: Identity,
    path: &BackendPath,
    mode: u32,
    nfs: bool,
) -> crate::backend::BackendResult<()> {
    let denied = |k: ErrorKind| matches!(k, ErrorKind::PermissionDenied | ErrorKind::NotPermitted);
    match backend.mkdir(id, path, mode).await {
        Ok(_) => Ok(()),
        Err(e) if nfs && id != ROOT && denied(e.kind) => {
            backend.mkdir(ROOT, path, mode).await.map_err(|root_err| {
                if denied(root_err.kind) {
                    e
                } else {
                    root_err
                }
            })?;
            let owner = AttrChanges {
                uid: Some(id.uid),
                gid: Some(id.gid),
                ..AttrChanges::default()
            };
            backend.set_attr(ROOT, path, &owner).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Run `op` as root; on NFS, if root is denied (root_squash), again as
/// `owner` (the volume directory's owner).
async fn root_then<T, F, Fut>(owner: Identity, op: F) -> crate::backend::BackendResult<T>
where
    F: Fn(Identity) -> Fut,
    Fut: std::future::Future<Output = crate::backend::BackendResult<T>>,
{
    match op(ROOT).await {
        Err(e)
            if owner != ROOT
                && matches!(
                    e.kind,
                    ErrorKind::PermissionDenied | ErrorKind::NotPermitted
                ) =>
        {
            op(owner).await
        }
        other => other,
    }
}

/// The fallback identity for deleting or archiving a volume: on NFS the
/// owner of its directory (a root_squash export does not let root remove
/// it), elsewhere root.
fn acting_identity(location: &Source, dir: &crate::backend::Metadata) -> Identity {
    match location {
        Source::Nfs { .. } => Identity::new(dir.uid, dir.gid),
        _ => ROOT,
    }
}

/// Remove everything below the backend's root (post-order, iteratively).
pub(super) async fn remove_contents(
    backend: &dyn Backend,
    id: Identity,
) -> crate::backend::BackendResult<()> {
    // The usage reports of the volume's mounts (backend::quota), which
    // listings never show, go too.
    let reports = BackendPath::root().join(crate::backend::quota::REPORTS_DIR)?;
    let mut stack = vec![(BackendPath::root(), false), (reports, false)];
    while let Some((dir, listed)) = stack.pop() {
        if listed {
            if !dir.is_root() {
                match backend.rmdir(id, &dir).await {
                    Err(e) if e.kind != ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            continue;
        }
        stack.push((dir.clone(), true));
        let entries = match backend.list(id, &dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = dir.join(&entry.name)?;
            if entry.meta.kind == FileKind::Directory {
                stack.push((path, false));
            } else {
                match backend.unlink(id, &path).await {
                    Err(e) if e.kind != ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// Rename `sub` to `archived-<name>` in the same parent directory; if that
/// name is taken (an earlier volume of the same name), add a timestamp.
async fn archive(
    backend: &dyn Backend,
    sub: &BackendPath,
    id: Identity,
) -> Result<BackendPath, Status> {
    let parent = sub.parent();
    let base = format!("archived-{}", sub.name());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    for name in [base.clone(), format!("{base}-{stamp}")] {
        let to = parent
            .join(&name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        match root_then(id, |who| backend.rename(who, sub, &to, true)).await {
            Ok(()) => return Ok(to),
            Err(e) if e.kind == ErrorKind::AlreadyExists || e.kind == ErrorKind::NotEmpty => {
                continue
            }
            Err(e) => return Err(backend_status("archiving the volume directory", &e)),
        }
    }
    Err(Status::aborted(format!(
        "archive names for {sub} are taken; retry later"
    )))
}
