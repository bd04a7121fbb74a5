//! CreateVolume from a snapshot or from another volume (a clone): the new
//! volume's directory is filled with a copy of the snapshot's or the
//! volume's files, in the same source (a copy through the backend API,
//! `copy.rs`). A long copy answers ABORTED with its progress and goes on in
//! the background; the provisioner's retry finds it, and succeeds once it
//! is done.

use std::sync::Arc;
use std::time::Duration;

use tonic::Status;

use super::controller::ControllerService;
use super::copy::copy_tree;
use super::errors::backend_status;
use super::params::VolumeParams;
use super::proto::volume_content_source::Type as Content;
use super::proto::VolumeContentSource;
use super::snapshots::{decode_id, is_marker, read_marker};
use crate::backend::{Backend, BackendPath, ErrorKind, Identity};

const ROOT: Identity = Identity::new(0, 0);
/// How long CreateVolume waits for the copy before answering ABORTED.
const PATIENCE: Duration = Duration::from_secs(10);

impl ControllerService {
    pub(super) async fn fill_from(
        &self,
        content: &VolumeContentSource,
        params: &VolumeParams,
        sub: &BackendPath,
        volume_id: &str,
        backend: Arc<dyn Backend>,
    ) -> Result<(), Status> {
        let (source, what) = match &content.r#type {
            Some(Content::Snapshot(s)) => {
                let snap = decode_id(&s.snapshot_id)?;
                if snap.location == params.location
                    && read_marker(backend.as_ref(), &snap.sub).await?.is_none()
                {
                    return Err(Status::unavailable(format!(
                        "snapshot {} is not ready (or does not exist) yet",
                        s.snapshot_id
                    )));
                }
                (snap, format!("snapshot {}", s.snapshot_id))
            }
            Some(Content::Volume(v)) => {
                let vol = super::volume_id::decode_or_status(&v.volume_id)?;
                (vol, format!("volume {}", v.volume_id))
            }
            None => {
                return Err(Status::invalid_argument(
                    "volume_content_source names neither a snapshot nor a volume",
                ))
            }
        };
        let inside = sub.as_str() == source.sub.as_str()
            || sub
                .as_str()
                .starts_with(&format!("{}/", source.sub.as_str()));
        if source.sub.is_root() || inside {
            return Err(Status::invalid_argument(format!(
                "{what} contains the new volume's directory ({sub}): a copy into itself never ends; \
                 clone volumes that are directories beside it"
            )));
        }
        if source.location != params.location {
            return Err(Status::invalid_argument(format!(
                "{what} is in {}, the new volume in {}: restores and clones stay in one source \
                 (use a StorageClass with the same source)",
                source.location, params.location
            )));
        }
        match backend.stat(ROOT, &source.sub).await {
            Ok(_) => {}
            Err(e) if e.kind == ErrorKind::NotFound => {
                return Err(Status::not_found(format!("{what} does not exist")))
            }
            Err(e) => return Err(backend_status("checking the volume's content source", &e)),
        }
        let key = format!("fill:{volume_id}");
        let (from, to) = (source.sub.clone(), sub.clone());
        let job = self.jobs.start_or_join(&key, move |job| async move {
            copy_tree(
                backend.as_ref(),
                ROOT,
                &from,
                &to,
                &is_marker,
                &job.progress,
            )
            .await
            .map_err(|e| e.to_string())
        });
        match job.wait(PATIENCE).await {
            None => Err(Status::aborted(format!(
                "copying {what} into the new volume: {}; retry to wait for it",
                job.progress.describe()
            ))),
            Some(Err(why)) => {
                self.jobs.forget(&key);
                Err(Status::internal(format!(
                    "copying {what} into the new volume: {why}"
                )))
            }
            Some(Ok(())) => {
                self.jobs.forget(&key);
                tracing::info!(%volume_id, from = %what, progress = %job.progress.describe(), "volume filled");
                Ok(())
            }
        }
    }
}
