//! NodeExpandVolume. A volume's capacity is the quota its mount enforces
//! (`backend::quota`); expanding sets the mount root's
//! `user.cachalot.capacity`, which the serving process applies at once and
//! keeps for a successor, and records it so a later stage uses it too. The
//! volume stays mounted and in use throughout.

use std::path::{Path, PathBuf};

use tonic::Status;

use super::super::errors::missing;
use super::super::proto::{CapacityRange, NodeExpandVolumeRequest, NodeExpandVolumeResponse};
use super::{decode, NodeService};
use crate::fs::CAPACITY_XATTR;

impl NodeService {
    pub async fn expand_volume(
        &self,
        req: NodeExpandVolumeRequest,
    ) -> Result<NodeExpandVolumeResponse, Status> {
        if req.volume_id.is_empty() {
            return Err(missing("volume_id"));
        }
        if req.volume_path.is_empty() {
            return Err(missing("volume_path"));
        }
        decode(&req.volume_id)?;
        let capacity = requested(req.capacity_range.as_ref())?;
        let _guard = self.locks.lock(&req.volume_id).await;
        let path = PathBuf::from(&req.volume_path);
        if self.session_at(&req.volume_id, &path)?.is_none() {
            return Err(Status::not_found(format!(
                "volume {} is not staged or published at {} on this node",
                req.volume_id,
                path.display()
            )));
        }
        // Every session of the volume on this node: its own, or those of
        // its service accounts (authenticationSource: pod).
        let own = self.state.load_staged(&req.volume_id).ok().flatten();
        for mut rec in own
            .into_iter()
            .chain(self.state.pod_sessions(&req.volume_id))
        {
            if rec.spec.capacity.is_none() {
                // Mounted without a quota (a static volume without a
                // capacity attribute): there is nothing to raise.
                tracing::info!(volume_id = %req.volume_id, capacity, "volume has no quota; nothing to expand");
                continue;
            }
            let root = rec.staging_path.clone();
            tokio::task::block_in_place(|| set_capacity(&root, capacity)).map_err(|e| {
                Status::internal(format!(
                    "setting the capacity of volume {} on its mount {}: {e}",
                    req.volume_id,
                    root.display()
                ))
            })?;
            rec.spec.capacity = Some(capacity);
            self.state
                .save_staged(&rec)
                .map_err(|e| Status::internal(format!("recording the new capacity: {e}")))?;
        }
        tracing::info!(volume_id = %req.volume_id, capacity, "volume expanded");
        Ok(NodeExpandVolumeResponse {
            capacity_bytes: capacity as i64,
        })
    }
}

/// The capacity asked for: required_bytes, else limit_bytes.
fn requested(range: Option<&CapacityRange>) -> Result<u64, Status> {
    let r = range.ok_or_else(|| missing("capacity_range"))?;
    let bytes = if r.required_bytes > 0 {
        r.required_bytes
    } else {
        r.limit_bytes
    };
    u64::try_from(bytes)
        .ok()
        .filter(|b| *b > 0)
        .ok_or_else(|| Status::invalid_argument("capacity_range asks for no bytes"))
}

fn set_capacity(mount_root: &Path, bytes: u64) -> std::io::Result<()> {
    let path = std::ffi::CString::new(mount_root.as_os_str().as_encoded_bytes())?;
    let name = std::ffi::CString::new(CAPACITY_XATTR)?;
    let value = bytes.to_string();
    // SAFETY: NUL-terminated strings and a buffer of the given length.
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    match r {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}
