//! ControllerGetVolume: whether a volume's directory (S3: prefix) still
//! exists, and its condition as the controller sees it.
//!
//! The volume ID carries the location and the sub-path, so no state is
//! read. The answer is NOT_FOUND only when the directory is gone from a
//! source that is still there; a source the controller cannot reach, or a
//! directory that is no longer a directory, is an abnormal condition (the
//! volume may well come back), never an error. The request carries no
//! secrets: S3 volumes are checked with the plugin's own credentials (its
//! `AWS_*` environment), and when it has none, or they may not read the
//! bucket, the condition is reported as not checked (`abnormal: false`).
//!
//! `capacity_bytes` is the size the volume was created with when this
//! controller created it (its CreateVolume records), else 0 (unknown: the
//! volume ID does not carry it); `published_node_ids` is empty: there is no ControllerPublish, so the
//! controller does not know which nodes use a volume.

use std::collections::HashMap;

use tonic::{Code, Status};

use super::controller::ControllerService;
use super::errors::missing;
use super::proto::controller_get_volume_response::VolumeStatus;
use super::proto::{
    ControllerGetVolumeRequest, ControllerGetVolumeResponse, Volume, VolumeCondition,
};
use super::volume_id::VolumeId;
use crate::backend::Source;
use crate::backend::{BackendError, BackendPath, ErrorKind, FileKind, Identity};

const ROOT: Identity = Identity::new(0, 0);

/// What the controller found out about a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Health {
    Normal(String),
    Abnormal(String),
    /// Could not be checked for a reason that says nothing about the volume
    /// (S3 without usable controller credentials).
    Unchecked(String),
    /// The directory is gone from a source that is still there.
    Gone(String),
}

fn is_s3(location: &Source) -> bool {
    matches!(location, Source::S3 { .. })
}

/// S3 refusing the controller's own credentials: says nothing about the
/// volume, which is used with the node-stage secret.
fn s3_credentials_refused(location: &Source, e: &BackendError) -> bool {
    is_s3(location)
        && (matches!(
            e.kind,
            ErrorKind::PermissionDenied | ErrorKind::NotPermitted
        ) || e.to_string().contains("S3 credentials are wrong"))
}

fn unchecked_s3(why: &str) -> Health {
    Health::Unchecked(format!(
        "condition not checked: ControllerGetVolume carries no secrets and {why}. Fix (to \
         have S3 volumes checked): give the controller credentials that may list the bucket \
         (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in its environment)"
    ))
}

/// The condition of a backend error met while checking `what`.
fn failed(location: &Source, what: &str, e: &BackendError) -> Health {
    if s3_credentials_refused(location, e) {
        return unchecked_s3(&format!(
            "the controller's own credentials were refused ({e})"
        ));
    }
    Health::Abnormal(match e.kind {
        ErrorKind::Unavailable | ErrorKind::Stale => format!(
            "the controller cannot reach {location}: {e}. Fix: check that the storage is up and \
             reachable from the controller; the volume's data is untouched"
        ),
        ErrorKind::PermissionDenied | ErrorKind::NotPermitted => format!(
            "the controller may not read {what}: {e}. Fix: give the plugin read access to the \
             source (NFS: a root_squash export maps root to nobody; the directories above the \
             volume must be searchable by others)"
        ),
        ErrorKind::NotADirectory => format!(
            "{what} is no longer a directory: {e}. Fix: a file is in the way of the volume \
             directory; move it away and restore the directory, or delete the volume"
        ),
        _ => format!("checking {what} failed: {e}"),
    })
}

/// Look at the volume's directory in its source.
async fn check(service: &ControllerService, id: &VolumeId) -> Health {
    let location = &id.location;
    let backend = match service
        .open(location, &BackendPath::root(), &HashMap::new())
        .await
    {
        Ok(b) => b,
        // S3 without ambient credentials (the volume's are in a Secret).
        Err(s) if is_s3(location) && s.code() == Code::FailedPrecondition => {
            return unchecked_s3("the controller has no S3 credentials of its own");
        }
        Err(s) if s.code() == Code::Unavailable => {
            return Health::Abnormal(format!(
                "the controller cannot reach {location}: {}. Fix: check that the storage is up \
                 and reachable from the controller; the volume's data is untouched",
                s.message()
            ))
        }
        Err(s) => {
            return Health::Abnormal(format!(
                "the controller cannot open {location}: {}",
                s.message()
            ))
        }
    };
    let dir = if id.sub.is_root() {
        format!("source {location}")
    } else {
        format!("volume directory {} in {location}", id.sub)
    };
    match backend.stat(ROOT, &id.sub).await {
        Ok(m) if m.kind == FileKind::Directory => {
            Health::Normal(format!("{dir} exists and is reachable"))
        }
        Ok(m) => Health::Abnormal(format!(
            "{dir} is no longer a directory (a {:?} is in its place). Fix: move it away and \
             restore the directory, or delete the volume",
            m.kind
        )),
        Err(e) if e.kind == ErrorKind::NotFound => {
            source_gone_or_volume_gone(&*backend, id, &dir).await
        }
        Err(e) => failed(location, &dir, &e),
    }
}

/// The volume's directory is missing: NOT_FOUND if its source is there,
/// abnormal if the source itself is missing (not mounted on the
/// controller, say): the volume may come back.
async fn source_gone_or_volume_gone(
    backend: &dyn crate::backend::Backend,
    id: &VolumeId,
    dir: &str,
) -> Health {
    let location = &id.location;
    if id.sub.is_root() {
        return Health::Abnormal(format!(
            "{dir} does not exist. Fix: create it (or mount the storage there on the \
             controller) or correct the PersistentVolume"
        ));
    }
    match backend.stat(ROOT, &BackendPath::root()).await {
        Ok(m) if m.kind == FileKind::Directory => Health::Gone(format!("{dir} does not exist")),
        Ok(_) => Health::Abnormal(format!(
            "source {location} is not a directory. Fix: point the StorageClass source at a \
             directory"
        )),
        Err(e) if e.kind == ErrorKind::NotFound => Health::Abnormal(format!(
            "source {location} of {dir} does not exist. Fix: create it (or mount the storage \
             there on the controller) or correct the StorageClass"
        )),
        Err(e) => failed(location, &format!("source {location}"), &e),
    }
}

/// The condition of a volume this controller created, as ListVolumes
/// reports it: one gone from its source is listed as abnormal (deleted
/// behind the driver's back), not left out.
pub(super) async fn listed_condition(
    service: &ControllerService,
    volume_id: &str,
) -> VolumeCondition {
    let (abnormal, message) = match super::volume_id::decode_or_status(volume_id) {
        Err(s) => (true, format!("the controller's record of this volume is unusable: {}", s.message())),
        Ok(id) => match check(service, &id).await {
            Health::Normal(m) | Health::Unchecked(m) => (false, m),
            Health::Abnormal(m) => (true, m),
            Health::Gone(m) => (
                true,
                format!("{m}: deleted outside Kubernetes? Fix: restore it from a backup or snapshot, or delete the PersistentVolume"),
            ),
        },
    };
    VolumeCondition { abnormal, message }
}

impl ControllerService {
    /// The size a volume was created with, if this controller created it
    /// (its records); 0 (unknown) otherwise.
    fn created_capacity(&self, volume_id: &str) -> i64 {
        self.state
            .all_controller()
            .into_iter()
            .find(|r| r.volume_id == volume_id)
            .map_or(0, |r| r.capacity_bytes)
    }

    pub async fn controller_get_volume(
        &self,
        req: ControllerGetVolumeRequest,
    ) -> Result<ControllerGetVolumeResponse, Status> {
        if req.volume_id.is_empty() {
            return Err(missing("volume_id"));
        }
        let id = super::volume_id::decode_or_status(&req.volume_id)?;
        let (abnormal, message) = match check(self, &id).await {
            Health::Gone(why) => return Err(Status::not_found(why)),
            Health::Normal(m) | Health::Unchecked(m) => (false, m),
            Health::Abnormal(m) => {
                tracing::warn!(volume_id = %req.volume_id, condition = %m, "volume abnormal");
                (true, m)
            }
        };
        Ok(ControllerGetVolumeResponse {
            volume: Some(Volume {
                capacity_bytes: self.created_capacity(&req.volume_id),
                volume_id: req.volume_id,
                volume_context: HashMap::new(),
                content_source: None,
                accessible_topology: Vec::new(),
            }),
            status: Some(VolumeStatus {
                published_node_ids: Vec::new(),
                volume_condition: Some(VolumeCondition { abnormal, message }),
            }),
        })
    }
}
