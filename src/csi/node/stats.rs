//! NodeGetVolumeStats: the volume's bytes and inodes as its mount reports
//! them (`df`: with a capacity, the quota, see `backend::quota`), and its
//! condition.

use std::path::PathBuf;

use tonic::Status;

use super::super::errors::missing;
use super::super::proto::*;
use super::{decode, NodeService};

impl NodeService {
    pub async fn get_volume_stats(
        &self,
        req: NodeGetVolumeStatsRequest,
    ) -> Result<NodeGetVolumeStatsResponse, Status> {
        if req.volume_id.is_empty() {
            return Err(missing("volume_id"));
        }
        if req.volume_path.is_empty() {
            return Err(missing("volume_path"));
        }
        // Any other path that is not where the volume is staged or
        // published (a relative one included) is NOT_FOUND, as the spec
        // asks of this call.
        let path = PathBuf::from(&req.volume_path);
        let rec = match self.session_at(&req.volume_id, &path)? {
            Some(r) => r,
            None => {
                decode(&req.volume_id)?;
                return Err(Status::not_found(format!(
                    "volume {} is not staged or published at {} on this node",
                    req.volume_id,
                    path.display()
                )));
            }
        };
        let broken = self.broken.lock().get(&rec.key()).cloned();
        let condition =
            |abnormal: bool, message: String| Some(VolumeCondition { abnormal, message });
        tokio::task::block_in_place(|| {
            match nix::sys::statfs::statfs(&path) {
            Ok(st) => Ok(NodeGetVolumeStatsResponse {
                usage: usage(&st),
                volume_condition: match broken {
                    Some(msg) => condition(true, msg),
                    None => condition(false, "FUSE session is serving".into()),
                },
            }),
            Err(nix::errno::Errno::ENOENT) => Err(Status::not_found(format!("{} does not exist", path.display()))),
            Err(e) => Ok(NodeGetVolumeStatsResponse {
                usage: Vec::new(),
                volume_condition: condition(
                    true,
                    broken.unwrap_or_else(|| {
                        format!(
                            "FUSE session for this volume is dead ({}: {}); the next NodePublishVolume \
                             or a plugin restart re-mounts it, running pods must be restarted",
                            e,
                            e.desc()
                        )
                    }),
                ),
            }),
        }
        })
    }
}

/// Byte and inode usage from statfs. (The field types differ between
/// architectures, hence the casts.)
#[allow(clippy::unnecessary_cast)]
fn usage(st: &nix::sys::statfs::Statfs) -> Vec<VolumeUsage> {
    let frsize = st.block_size() as i64;
    let blocks = st.blocks() as i64;
    let bfree = st.blocks_free() as i64;
    let bavail = st.blocks_available() as i64;
    let files = st.files() as i64;
    let ffree = st.files_free() as i64;
    vec![
        VolumeUsage {
            available: bavail * frsize,
            total: blocks * frsize,
            used: (blocks - bfree).max(0) * frsize,
            unit: volume_usage::Unit::Bytes as i32,
        },
        VolumeUsage {
            available: ffree,
            total: files,
            used: (files - ffree).max(0),
            unit: volume_usage::Unit::Inodes as i32,
        },
    ]
}
