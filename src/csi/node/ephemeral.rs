//! Inline (ephemeral) volumes: a pod names the source in its spec
//! (`csi: {driver: cachalot.csi.dev, volumeAttributes: {...}}`) and the
//! kubelet calls NodePublishVolume alone, with no stage. The attributes
//! are a StorageClass's parameters (`source` or `server`/`share` or
//! `bucket`/`prefix`, `subDir` as a plain path, `uid`/`gid`, cache knobs,
//! `warm`); S3 keys come from the pod's `nodePublishSecretRef`. The volume
//! is staged here at a private path next to the target, and unstaged when
//! its target is unpublished. The data is the source's: nothing is created
//! or deleted in it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tonic::Status;

use super::super::params::{S3Credentials, VolumeParams};
use super::super::proto::{NodePublishVolumeRequest, NodePublishVolumeResponse};
use super::{capability, NodeService};
use crate::mount::spec::MountSpec;

/// Set by the kubelet (with podInfoOnMount) on inline volumes.
const EPHEMERAL_KEY: &str = "csi.storage.k8s.io/ephemeral";
/// Keys the kubelet adds to the attributes (pod information).
const KUBELET_PREFIX: &str = "csi.storage.k8s.io/";
/// The private staging directory, next to the target in the kubelet's
/// volume directory (both the node plugin and the mounter see it).
const STAGING_NAME: &str = "cachalot-inline";

pub(super) fn is_inline(ctx: &HashMap<String, String>) -> bool {
    ctx.get(EPHEMERAL_KEY).is_some_and(|v| v == "true")
}

/// Where an inline volume published at `target` is staged.
pub(super) fn staging_for(target: &Path) -> Result<PathBuf, Status> {
    target
        .parent()
        .map(|dir| dir.join(STAGING_NAME))
        .ok_or_else(|| Status::invalid_argument("target_path has no parent directory"))
}

impl NodeService {
    pub(super) async fn publish_inline(
        &self,
        req: NodePublishVolumeRequest,
        target: PathBuf,
    ) -> Result<NodePublishVolumeResponse, Status> {
        let cap = capability(req.volume_capability.as_ref())?;
        let attributes: HashMap<String, String> = req
            .volume_context
            .iter()
            .filter(|(k, _)| !k.starts_with(KUBELET_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let params = VolumeParams::parse(&attributes)?;
        if params.auth.pod().is_some() {
            // A pod's token comes with each publish and its session is per
            // service account; an inline volume is the pod's alone and
            // signs with its nodePublishSecretRef keys or the driver's.
            return Err(Status::invalid_argument(
                "authenticationSource: pod is for persistent volumes (PVCs, PVs); an inline \
                 volume signs with its nodePublishSecretRef keys or the driver's identity",
            ));
        }
        let sub = params.inline_sub_path()?;
        let creds = match params.location.is_s3() {
            true => S3Credentials::from_secrets(&req.secrets)?,
            false => None,
        };
        let source = params.location.join(&sub);
        let staging = staging_for(&target)?;
        let read_only = req.readonly || cap.wants_ro();
        let spec = MountSpec::new(
            &source,
            staging,
            self.cache_dir.clone(),
            &params.cache,
            read_only,
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
            )?;
            let mut rec = self
                .state
                .load_staged(&req.volume_id)
                .map_err(|e| Status::internal(format!("reading the stage record: {e}")))?
                .ok_or_else(|| Status::internal("the inline volume's stage record is missing"))?;
            if !rec.ephemeral {
                rec.ephemeral = true;
                self.state
                    .save_staged(&rec)
                    .map_err(|e| Status::internal(format!("recording the inline volume: {e}")))?;
            }
            self.bind_target(rec, &target, read_only, &cap, creds.as_ref())
        })?;
        Ok(NodePublishVolumeResponse {})
    }
}
