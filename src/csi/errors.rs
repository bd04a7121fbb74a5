//! gRPC status codes per the CSI spec, in one place. Messages carry the
//! context and the fix; they never carry secret values.

use tonic::Status;

use super::params::InvalidArgument;
use crate::backend::{BackendError, ErrorKind};

impl From<InvalidArgument> for Status {
    fn from(e: InvalidArgument) -> Status {
        Status::invalid_argument(e.0)
    }
}

/// A required request field is missing.
pub fn missing(field: &str) -> Status {
    Status::invalid_argument(format!("{field} is required"))
}

/// Map a backend error met while doing `what` (e.g. "creating the volume
/// directory") to the spec's code, with what to do about it.
pub fn backend_status(what: &str, e: &BackendError) -> Status {
    let msg = format!("{what}: {e}");
    // S3 says "credentials are wrong" for SignatureDoesNotMatch & co; the
    // fix is in the Secret, not in permissions.
    if msg.contains("S3 credentials are wrong") {
        return Status::failed_precondition(format!(
            "{msg}. Fix: put the right accessKeyId/secretAccessKey into the Secret named by \
             csi.storage.k8s.io/provisioner-secret-name (CreateVolume/DeleteVolume) or \
             node-stage-secret-name (NodeStageVolume)"
        ));
    }
    match e.kind {
        ErrorKind::PermissionDenied | ErrorKind::NotPermitted => {
            Status::failed_precondition(format!(
            "{msg}. Fix: give the plugin write access to the source directory, or set the \
             StorageClass uid/gid to an owner that has it (NFS: a root_squash export maps root to nobody; set uid/gid to the owner of the share)"
        ))
        }
        ErrorKind::ReadOnly => Status::failed_precondition(format!(
            "{msg}. Fix: the source is read-only; export it read-write or use a writable source"
        )),
        ErrorKind::NoSpace | ErrorKind::QuotaExceeded => Status::resource_exhausted(msg),
        ErrorKind::Unavailable | ErrorKind::Stale => Status::unavailable(format!(
            "{msg}. The backend is unreachable; the call is safe to retry"
        )),
        ErrorKind::NotFound | ErrorKind::InvalidArgument => Status::failed_precondition(format!(
            "{msg}. Fix: check the StorageClass source/server/share parameters"
        )),
        ErrorKind::NotADirectory => Status::failed_precondition(format!(
            "{msg}. Fix: a file is in the way of the volume directory; remove or rename it"
        )),
        _ => Status::internal(msg),
    }
}

/// An I/O failure on the node (mount, bind, state files).
pub fn io_status(what: &str, e: &std::io::Error) -> Status {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => Status::failed_precondition(format!(
            "{what}: {e}. Fix: the node plugin must run privileged (root, CAP_SYS_ADMIN) with \
             the kubelet directory mounted with Bidirectional propagation"
        )),
        Some(libc::ENOENT) => Status::not_found(format!("{what}: {e}")),
        _ => Status::internal(format!("{what}: {e}")),
    }
}
