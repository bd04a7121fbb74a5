//! GetCapacity: the free space of a StorageClass's source, as the volumes
//! of that StorageClass would see it.
//!
//! The request carries the StorageClass parameters (parsed exactly as
//! CreateVolume parses them) but no secrets. File and NFS sources answer
//! the `statfs` of the source (bytes available to the volume's identity:
//! available blocks × block size). An S3 bucket has no capacity limit and
//! its backend's `statfs` is a made-up constant, so S3 answers
//! [`UNLIMITED`] without a request to the bucket.

use std::collections::HashMap;

use tonic::Status;

use super::caps;
use super::controller::ControllerService;
use super::errors::backend_status;
use super::params::VolumeParams;
use super::proto::{GetCapacityRequest, GetCapacityResponse};
use crate::backend::{BackendError, BackendPath, ErrorKind, FsStats, Identity, Source};

/// `available_capacity` of a storage without a capacity limit (S3).
///
/// The spec has no "unlimited" value (the field is required and must not
/// be negative), and Kubernetes treats a missing or zero capacity as "no
/// space here", which would keep pods with S3 volumes from being scheduled
/// when the CSIDriver opts into storage capacity tracking. The largest
/// value lets every request fit.
pub const UNLIMITED: i64 = i64::MAX;

const ROOT: Identity = Identity::new(0, 0);

fn answer(available_capacity: i64) -> GetCapacityResponse {
    GetCapacityResponse {
        available_capacity,
        maximum_volume_size: None,
        minimum_volume_size: None,
    }
}

/// Bytes available to unprivileged writers (the backend's identity):
/// available blocks × block size, saturating at `i64::MAX`.
pub fn available_bytes(stats: &FsStats) -> i64 {
    let bytes = u128::from(stats.blocks_available) * u128::from(stats.block_size);
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// The status of a failed `statfs` of `location`'s root.
fn statfs_status(location: &Source, e: &BackendError) -> Status {
    match e.kind {
        ErrorKind::NotFound => Status::failed_precondition(format!(
            "source {location} does not exist ({e}). Fix: create it (or mount the storage \
             there) or correct the StorageClass"
        )),
        _ => backend_status(&format!("reading the free space of {location}"), e),
    }
}

impl ControllerService {
    pub async fn get_capacity(
        &self,
        req: GetCapacityRequest,
    ) -> Result<GetCapacityResponse, Status> {
        // Capabilities are optional here; given ones must be servable,
        // with the message CreateVolume gives.
        for cap in &req.volume_capabilities {
            caps::check(cap)?;
        }
        // Parameters are optional too. Without them there is no source:
        // nothing can be provisioned, so nothing is available.
        if req.parameters.is_empty() {
            return Ok(answer(0));
        }
        let params = VolumeParams::parse(&req.parameters)?;
        if let Source::S3 { .. } = params.location {
            return Ok(answer(UNLIMITED));
        }
        let backend = self
            .open(&params.location, &BackendPath::root(), &HashMap::new())
            .await?;
        let stats = backend
            .statfs(params.owner.unwrap_or(ROOT))
            .await
            .map_err(|e| statfs_status(&params.location, &e))?;
        Ok(answer(available_bytes(&stats)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_bytes_are_available_blocks_times_block_size() {
        let stats = FsStats {
            block_size: 4096,
            blocks: 100,
            blocks_free: 50,
            blocks_available: 40,
            ..FsStats::default()
        };
        assert_eq!(available_bytes(&stats), 40 * 4096);
    }

    #[test]
    fn available_bytes_saturate_instead_of_going_negative() {
        let stats = FsStats {
            block_size: u32::MAX,
            blocks_available: u64::MAX,
            ..FsStats::default()
        };
        assert_eq!(available_bytes(&stats), i64::MAX);
    }
}
