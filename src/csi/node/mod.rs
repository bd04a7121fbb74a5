//! Node service: stage = one FUSE mount (a supervised child process) per
//! volume at the staging path; publish = bind mount staging → target.
//!
//! Blocking work (starting a child, mount syscalls) runs in
//! `block_in_place`, so the service needs a multi-threaded tokio runtime.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;

use parking_lot::Mutex;
use tonic::Status;

use super::caps::{self, Checked};
use super::errors::{io_status, missing};
use super::host::{SessionHost, Start};
use super::locks::KeyedLocks;
use super::mounts::{Health, HostMounts, MountTable};
use super::params::{NodeParams, S3Credentials};
use super::proto::node_service_capability::{rpc, Rpc, Type as CapType};
use super::proto::*;
use super::state::{stage_key, StagedRecord, StateDir};
use super::supervisor::MountSpec;
use super::volume_id::VolumeId;
use crate::backend::Source;
use crate::mounter::protocol::VolumeNames;

mod ephemeral;
mod expand;
mod pod_auth;
mod stats;

pub struct NodeService {
    node_id: String,
    cache_dir: PathBuf,
    state: StateDir,
    sup: Box<dyn SessionHost>,
    mounts: Box<dyn MountTable>,
    locks: KeyedLocks,
    /// Volumes whose mount could not be re-established, with the reason;
    /// reported as an abnormal condition until a stage/publish heals them.
    broken: Mutex<HashMap<String, String>>,
}

use super::volume_id::decode_or_status as decode;

fn credentials(
    id: &VolumeId,
    secrets: &HashMap<String, String>,
) -> Result<Option<S3Credentials>, Status> {
    if id.location.is_s3() {
        Ok(S3Credentials::from_secrets(secrets)?)
    } else {
        Ok(None)
    }
}

/// Check the volume's directory before starting a child, so that the usual
/// failures get their proper code and a fix instead of a log tail. The
/// message is `cachalot doctor`'s `source` check.
fn preflight(source: &Source) -> Result<(), Status> {
    use crate::doctor::SourceDirError as E;
    match source {
        Source::Local { root } => match crate::doctor::source_dir(root) {
            Ok(_) => Ok(()),
            Err(e @ (E::NotADirectory(_) | E::Denied { .. })) => {
                Err(Status::failed_precondition(e.to_string()))
            }
            Err(e @ E::Missing(_)) => Err(Status::not_found(e.to_string())),
            Err(e @ E::Unreachable { .. }) => Err(Status::unavailable(e.to_string())),
        },
        // The mount child connects and runs the backend's own preflight
        // (doctor's `export` and `identity` checks); its error (export
        // list, root_squash fix) is returned to the caller.
        Source::Nfs { .. } | Source::S3 { .. } => Ok(()),
    }
}

fn path_arg(text: &str, field: &str) -> Result<PathBuf, Status> {
    if text.is_empty() {
        return Err(missing(field));
    }
    let p = PathBuf::from(text);
    if !p.is_absolute() {
        return Err(Status::invalid_argument(format!(
            "{field} must be an absolute path"
        )));
    }
    Ok(p)
}

fn capability(cap: Option<&VolumeCapability>) -> Result<Checked, Status> {
    Ok(caps::check(
        cap.ok_or_else(|| missing("volume_capability"))?,
    )?)
}

impl NodeService {
    pub fn new(
        node_id: String,
        cache_dir: PathBuf,
        state: StateDir,
        host: Box<dyn SessionHost>,
    ) -> NodeService {
        NodeService {
            node_id,
            cache_dir,
            state,
            sup: host,
            mounts: Box::new(HostMounts),
            locks: KeyedLocks::default(),
            broken: Mutex::new(HashMap::new()),
        }
    }

    /// The same service on another mount table (unit tests).
    pub fn with_mounts(mut self, mounts: Box<dyn MountTable>) -> NodeService {
        self.mounts = mounts;
        self
    }

    pub fn get_info(&self) -> NodeGetInfoResponse {
        NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }
    }

    pub fn get_capabilities(&self) -> NodeGetCapabilitiesResponse {
        let caps = [
            rpc::Type::StageUnstageVolume,
            rpc::Type::GetVolumeStats,
            rpc::Type::VolumeCondition,
            rpc::Type::SingleNodeMultiWriter,
            rpc::Type::VolumeMountGroup,
            rpc::Type::ExpandVolume,
        ];
        NodeGetCapabilitiesResponse {
            capabilities: caps
                .iter()
                .map(|t| NodeServiceCapability {
                    r#type: Some(CapType::Rpc(Rpc { r#type: *t as i32 })),
                })
                .collect(),
        }
    }

    pub async fn stage_volume(
        &self,
        req: NodeStageVolumeRequest,
    ) -> Result<NodeStageVolumeResponse, Status> {
        if req.volume_id.is_empty() {
            return Err(missing("volume_id"));
        }
        let staging = path_arg(&req.staging_target_path, "staging_target_path")?;
        let cap = capability(req.volume_capability.as_ref())?;
        let id = decode(&req.volume_id)?;
        let params = NodeParams::parse(&req.volume_context)?;
        params.auth.check_location(&id.location)?;
        if params.auth.pod().is_some() {
            // Sessions start at publish, with the pods' tokens (pod_auth.rs).
            std::fs::create_dir_all(&staging).map_err(|e| {
                io_status(&format!("creating staging path {}", staging.display()), &e)
            })?;
            return Ok(NodeStageVolumeResponse {});
        }
        let creds = credentials(&id, &req.secrets)?;
        let source = id.location.join(&id.sub);
        let spec = MountSpec::new(
            &source,
            staging.clone(),
            self.cache_dir.clone(),
            &params.cache,
            cap.is_reader(),
            params.owner,
            cap.mount_group,
        );
        let _guard = self.locks.lock(&req.volume_id).await;
        tokio::task::block_in_place(|| {
            self.stage_blocking(
                &req.volume_id,
                None,
                &source,
                spec,
                creds.as_ref(),
                &req.volume_context,
            )
        })?;
        Ok(NodeStageVolumeResponse {})
    }

    /// Stage `source` as `spec` says (with the volume lock held), after
    /// the checks that fail early with the fix spelled out.
    fn stage_blocking(
        &self,
        volume_id: &str,
        service_account: Option<&str>,
        source: &Source,
        mut spec: MountSpec,
        creds: Option<&S3Credentials>,
        context: &HashMap<String, String>,
    ) -> Result<(), Status> {
        preflight(source)?;
        let names = VolumeNames::from_context(context);
        let key = stage_key(volume_id, service_account);
        let previous = self
            .state
            .load_staged(&key)
            .map_err(|e| Status::internal(format!("reading the stage record: {e}")))?;
        let mut targets = Default::default();
        if let Some(rec) = previous {
            // An expansion (expand.rs) recorded a capacity larger than the
            // one the volume was created with, which the context still has.
            spec.capacity = spec.capacity.max(rec.spec.capacity);
            let healthy = self.mounts.health(&rec.staging_path) == Health::Healthy;
            if rec.staging_path != spec.staging && healthy {
                return Err(Status::already_exists(format!(
                    "volume {volume_id} is already staged at {} on this node",
                    rec.staging_path.display()
                )));
            }
            if rec.spec != spec && healthy {
                return Err(Status::already_exists(format!(
                    "volume {volume_id} is already staged with other options (read-only, mount group or \
                     cache settings); unstage it first"
                )));
            }
            if healthy {
                self.sup.adopt(&rec);
                return Ok(());
            }
            tracing::warn!(volume_id, staging = %rec.staging_path.display(), "staged mount is dead; re-mounting");
            self.retire(&rec);
            targets = rec.targets;
        }
        let rec = self.mount(volume_id, service_account, spec, creds, names, targets)?;
        self.broken.lock().remove(&key);
        tracing::info!(volume_id, staging = %rec.staging_path.display(), pid = rec.pid, "volume staged");
        Ok(())
    }

    /// Start a child for `spec` (after clearing whatever is mounted at the
    /// staging path) and record it.
    fn mount(
        &self,
        volume_id: &str,
        service_account: Option<&str>,
        spec: MountSpec,
        creds: Option<&S3Credentials>,
        names: VolumeNames,
        targets: std::collections::BTreeMap<PathBuf, bool>,
    ) -> Result<StagedRecord, Status> {
        std::fs::create_dir_all(&spec.staging)
            .or_else(|e| {
                if self.mounts.is_mount_point(&spec.staging).unwrap_or(false) {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| {
                io_status(
                    &format!("creating staging path {}", spec.staging.display()),
                    &e,
                )
            })?;
        let pid = self.sup.start(Start {
            volume_id,
            spec: &spec,
            creds,
            names,
            log_file: &self.state.log_path(&stage_key(volume_id, service_account)),
        })?;
        let rec = StagedRecord {
            volume_id: volume_id.to_string(),
            staging_path: spec.staging.clone(),
            spec,
            pid,
            targets,
            ephemeral: false,
            service_account: service_account.map(str::to_string),
        };
        self.state
            .save_staged(&rec)
            .map_err(|e| Status::internal(format!("recording the staged volume: {e}")))?;
        Ok(rec)
    }

    /// Stop a record's child and detach its (dead) mount.
    fn retire(&self, rec: &StagedRecord) {
        if let Err(e) = self.mounts.detach(&rec.staging_path) {
            tracing::warn!(error = %e, staging = %rec.staging_path.display(), "detaching a dead mount failed");
        }
        self.sup.stop(&rec.staging_path, rec.pid);
    }

    /// Re-establish a dead staged mount and re-bind its published targets,
    /// so that new (and, with HostToContainer propagation, running) pods
    /// work again. Records a failure as the volume's abnormal condition.
    fn heal(
        &self,
        rec: StagedRecord,
        creds: Option<&S3Credentials>,
    ) -> Result<StagedRecord, Status> {
        let key = rec.key();
        let secrets_needed =
            rec.spec.web_identity.is_none() && rec.spec.source.starts_with("s3://");
        if secrets_needed && creds.is_none() {
            let msg =
                "the FUSE session died and cannot be re-established without the volume's secrets \
                       (they are not stored on the node); restart the pods using it"
                    .to_string();
            self.broken.lock().insert(key, msg.clone());
            return Err(Status::unavailable(msg));
        }
        self.retire(&rec);
        let volume_id = rec.volume_id.clone();
        let targets = rec.targets.clone();
        let remounted = self.mount(
            &volume_id,
            rec.service_account.as_deref(),
            rec.spec,
            creds,
            VolumeNames::default(),
            targets,
        );
        let mut rec = match remounted {
            Ok(r) => r,
            Err(e) => {
                self.broken
                    .lock()
                    .insert(key, format!("re-mount failed: {}", e.message()));
                return Err(e);
            }
        };
        let mut gone = Vec::new();
        for (target, ro) in &rec.targets {
            match self.mounts.is_mount_point(target) {
                Ok(true) => {
                    let rebound = self
                        .mounts
                        .detach(target)
                        .and_then(|_| self.mounts.bind(&rec.staging_path, target, *ro, &[]));
                    if let Err(e) = rebound {
                        tracing::warn!(error = %e, target = %target.display(), "re-binding a published target failed");
                    }
                }
                _ => gone.push(target.clone()),
            }
        }
        for t in gone {
            rec.targets.remove(&t);
        }
        let _ = self.state.save_staged(&rec);
        self.broken.lock().remove(&key);
        tracing::info!(volume_id, pid = rec.pid, "staged mount re-established");
        Ok(rec)
    }

    /// After a plugin restart: adopt live children, re-mount dead sessions.
    pub fn recover(&self) {
        for entry in self.state.all_staged() {
            let rec = match entry {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "unreadable stage record; ignoring it");
                    continue;
                }
            };
            match self.mounts.health(&rec.staging_path) {
                Health::Healthy => {
                    self.sup.adopt(&rec);
                    tracing::info!(volume_id = %rec.volume_id, pid = rec.pid, "staged mount still serving; adopted");
                }
                state => {
                    tracing::warn!(volume_id = %rec.volume_id, ?state, "staged mount not serving; re-establishing");
                    if let Err(e) = self.heal(rec, None) {
                        tracing::error!(error = %e.message(), "could not re-establish a staged volume");
                    }
                }
            }
        }
    }

    pub async fn unstage_volume(
        &self,
        req: NodeUnstageVolumeRequest,
    ) -> Result<NodeUnstageVolumeResponse, Status> {
        if req.volume_id.is_empty() {
            return Err(missing("volume_id"));
        }
        let staging = path_arg(&req.staging_target_path, "staging_target_path")?;
        let _guard = self.locks.lock(&req.volume_id).await;
        tokio::task::block_in_place(|| {
            for rec in self.state.pod_sessions(&req.volume_id) {
                if !rec.targets.is_empty() {
                    tracing::warn!(volume_id = %req.volume_id, service_account = ?rec.service_account, "unstaging a session that still has published targets");
                }
                self.end_pod_session(&rec)?;
            }
            self.unstage_blocking(&req.volume_id, &staging)
        })?;
        Ok(NodeUnstageVolumeResponse {})
    }

    fn unstage_blocking(&self, volume_id: &str, staging: &std::path::Path) -> Result<(), Status> {
        let rec = self.state.load_staged(volume_id).ok().flatten();
        // The session's host unmounts first: it stops what keeps files open
        // in the mount (a warm-up) and unmounts cleanly, where unmounting
        // from here would find the mount busy and detach it lazily. What it
        // could not remove (a dead host) is unmounted here.
        match &rec {
            Some(r) if r.staging_path == staging => self.sup.stop(staging, r.pid),
            _ => self.sup.stop(staging, 0),
        }
        self.mounts
            .unmount(staging)
            .map_err(|e| io_status(&format!("unmounting {}", staging.display()), &e))?;
        if rec.is_some_and(|r| r.staging_path == staging) {
            self.state
                .remove_staged(volume_id)
                .map_err(|e| Status::internal(format!("removing the stage record: {e}")))?;
        }
        self.broken.lock().remove(volume_id);
        tracing::info!(volume_id, staging = %staging.display(), "volume unstaged");
        Ok(())
    }

    pub async fn publish_volume(
        &self,
        req: NodePublishVolumeRequest,
    ) -> Result<NodePublishVolumeResponse, Status> {
        if req.volume_id.is_empty() {
            return Err(missing("volume_id"));
        }
        let target = path_arg(&req.target_path, "target_path")?;
        if ephemeral::is_inline(&req.volume_context) {
            return self.publish_inline(req, target).await;
        }
        let staging = path_arg(&req.staging_target_path, "staging_target_path")?;
        let cap = capability(req.volume_capability.as_ref())?;
        let id = decode(&req.volume_id)?;
        let params = NodeParams::parse(&req.volume_context)?;
        params.auth.check_location(&id.location)?;
        if let Some(pod) = params.auth.pod() {
            let _guard = self.locks.lock(&req.volume_id).await;
            tokio::task::block_in_place(|| {
                self.publish_for_pod(&req, &staging, &target, &cap, &id, &params, pod)
            })?;
            return Ok(NodePublishVolumeResponse {});
        }
        let creds = credentials(&id, &req.secrets)?;
        let read_only = req.readonly || cap.wants_ro();
        let _guard = self.locks.lock(&req.volume_id).await;
        tokio::task::block_in_place(|| {
            let rec = match self.state.load_staged(&req.volume_id) {
                Ok(Some(r)) if r.staging_path == staging => r,
                Ok(_) => {
                    return Err(Status::failed_precondition(format!(
                        "volume {} is not staged at {} on this node; call NodeStageVolume first",
                        req.volume_id,
                        staging.display()
                    )))
                }
                Err(e) => return Err(Status::internal(format!("reading the stage record: {e}"))),
            };
            self.bind_target(rec, &target, read_only, &cap, creds.as_ref())?;
            Ok(NodePublishVolumeResponse {})
        })
    }

    /// Bind the staged volume `rec` on `target` (idempotently) and record it.
    fn bind_target(
        &self,
        mut rec: StagedRecord,
        target: &std::path::Path,
        read_only: bool,
        cap: &Checked,
        creds: Option<&S3Credentials>,
    ) -> Result<(), Status> {
        let staging = rec.staging_path.clone();
        if cap.mount_group.is_some() && cap.mount_group != rec.spec.mount_group {
            return Err(Status::failed_precondition(format!(
                "volume {} is staged on this node with mount group {:?}, this pod asks for {:?}: \
                 pods sharing a volume on one node must use the same fsGroup",
                rec.volume_id, rec.spec.mount_group, cap.mount_group
            )));
        }
        if self.mounts.health(&staging) != Health::Healthy {
            rec = self.heal(rec, creds)?;
        }
        match self.mounts.health(target) {
            Health::Healthy => {
                return match rec.targets.get(target) {
                    Some(ro) if *ro == read_only => Ok(()),
                    Some(_) => Err(Status::already_exists(format!(
                        "{} is already published with a different read-only setting",
                        target.display()
                    ))),
                    None => Err(Status::already_exists(format!(
                        "something else is mounted at {}",
                        target.display()
                    ))),
                };
            }
            Health::Dead(_) => self
                .mounts
                .detach(target)
                .map_err(|e| io_status("clearing a dead target", &e))?,
            Health::NotMounted => {}
        }
        std::fs::create_dir_all(target)
            .map_err(|e| io_status(&format!("creating target {}", target.display()), &e))?;
        self.mounts
            .bind(&staging, target, read_only, &cap.mount_flags)
            .map_err(|e| {
                io_status(
                    &format!(
                        "bind-mounting {} on {}",
                        staging.display(),
                        target.display()
                    ),
                    &e,
                )
            })?;
        rec.targets.insert(target.to_path_buf(), read_only);
        self.state
            .save_staged(&rec)
            .map_err(|e| Status::internal(format!("recording the published target: {e}")))?;
        tracing::info!(volume_id = %rec.volume_id, target = %target.display(), read_only, "volume published");
        Ok(())
    }

    pub async fn unpublish_volume(
        &self,
        req: NodeUnpublishVolumeRequest,
    ) -> Result<NodeUnpublishVolumeResponse, Status> {
        if req.volume_id.is_empty() {
            return Err(missing("volume_id"));
        }
        let target = path_arg(&req.target_path, "target_path")?;
        let _guard = self.locks.lock(&req.volume_id).await;
        tokio::task::block_in_place(|| {
            self.mounts
                .unmount(&target)
                .map_err(|e| io_status(&format!("unmounting {}", target.display()), &e))?;
            match std::fs::remove_dir(&target) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, target = %target.display(), "target not removed")
                }
            }
            if let Some(mut rec) = self.session_at(&req.volume_id, &target)? {
                rec.targets.remove(&target);
                let _ = self.state.save_staged(&rec);
                if rec.ephemeral && rec.targets.is_empty() {
                    // Nobody stages an inline volume but its NodePublish.
                    self.unstage_blocking(&req.volume_id, &rec.staging_path)?;
                    // The kubelet removes the volume's directory next.
                    let _ = std::fs::remove_dir(&rec.staging_path);
                }
                if rec.service_account.is_some() && rec.targets.is_empty() {
                    // The service account's last pod on this node is gone.
                    self.end_pod_session(&rec)?;
                }
            }
            tracing::info!(volume_id = %req.volume_id, target = %target.display(), "volume unpublished");
            Ok(NodeUnpublishVolumeResponse {})
        })
    }
}
