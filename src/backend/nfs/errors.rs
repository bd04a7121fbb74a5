//! NFS status codes and RPC failures mapped onto our errno-like kinds, in one
//! place. A permission error stays a permission error; only transport
//! failures (after retries) and server faults become EIO, always logged.

use nfs3_client::RpcError;
use nfs3_types::nfs3::nfsstat3;
use nfs3_types::rpc::auth_stat;

use super::client::CallError;
use crate::backend::{BackendError, BackendPath, ErrorKind, Identity};

pub fn kind_of(stat: nfsstat3) -> ErrorKind {
    use nfsstat3::*;
    match stat {
        NFS3_OK => ErrorKind::Other,
        NFS3ERR_PERM => ErrorKind::NotPermitted,
        NFS3ERR_NOENT | NFS3ERR_NXIO | NFS3ERR_NODEV => ErrorKind::NotFound,
        NFS3ERR_ACCES => ErrorKind::PermissionDenied,
        NFS3ERR_EXIST => ErrorKind::AlreadyExists,
        NFS3ERR_XDEV => ErrorKind::CrossDevice,
        NFS3ERR_NOTDIR => ErrorKind::NotADirectory,
        NFS3ERR_ISDIR => ErrorKind::IsADirectory,
        NFS3ERR_INVAL => ErrorKind::InvalidArgument,
        NFS3ERR_FBIG => ErrorKind::FileTooBig,
        NFS3ERR_NOSPC => ErrorKind::NoSpace,
        NFS3ERR_ROFS => ErrorKind::ReadOnly,
        NFS3ERR_MLINK => ErrorKind::TooManyLinks,
        NFS3ERR_NAMETOOLONG => ErrorKind::NameTooLong,
        NFS3ERR_NOTEMPTY => ErrorKind::NotEmpty,
        NFS3ERR_DQUOT => ErrorKind::QuotaExceeded,
        NFS3ERR_STALE | NFS3ERR_BADHANDLE => ErrorKind::Stale,
        NFS3ERR_NOTSUPP => ErrorKind::Unsupported,
        NFS3ERR_JUKEBOX => ErrorKind::Unavailable,
        NFS3ERR_IO | NFS3ERR_REMOTE | NFS3ERR_NOT_SYNC | NFS3ERR_BAD_COOKIE | NFS3ERR_TOOSMALL
        | NFS3ERR_SERVERFAULT | NFS3ERR_BADTYPE => ErrorKind::Other,
    }
}

/// What an operation was doing, for error context.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub backend: &'a str,
    pub op: &'static str,
    pub path: &'a BackendPath,
    pub id: Identity,
}

impl Ctx<'_> {
    pub fn err(&self, kind: ErrorKind, cause: impl Into<String>) -> BackendError {
        BackendError::new(kind, self.op, self.path.as_str())
            .with_backend(self.backend)
            .with_identity(self.id)
            .with_cause(cause)
    }

    pub fn status(&self, stat: nfsstat3) -> BackendError {
        let kind = kind_of(stat);
        let err = self.err(kind, stat.to_string());
        if kind == ErrorKind::Other {
            tracing::error!(error = %err, "NFS server fault");
        }
        err
    }

    pub fn call(&self, e: CallError) -> BackendError {
        let (kind, cause) = match &e {
            CallError::Transport { .. } => (ErrorKind::Unavailable, e.to_string()),
            CallError::Rejected(RpcError::Auth(stat)) => (
                ErrorKind::PermissionDenied,
                format!("{e}: {}", auth_hint(*stat)),
            ),
            CallError::Rejected(RpcError::ProgUnavail | RpcError::ProgMismatch { .. }) => (
                ErrorKind::Unavailable,
                format!("{e} (does the server speak NFSv3 over TCP?)"),
            ),
            CallError::Rejected(RpcError::ProcUnavail) => (ErrorKind::Unsupported, e.to_string()),
            CallError::Rejected(_) => (ErrorKind::Other, e.to_string()),
        };
        let err = self.err(kind, cause);
        if matches!(kind, ErrorKind::Unavailable | ErrorKind::Other) {
            tracing::error!(error = %err, "NFS request failed");
        }
        err
    }
}

fn auth_hint(stat: auth_stat) -> &'static str {
    match stat {
        auth_stat::AUTH_TOOWEAK => "the export requires another security flavor than AUTH_SYS (sec=sys)",
        auth_stat::AUTH_BADCRED | auth_stat::AUTH_REJECTEDCRED => {
            "the server refused the AUTH_SYS credential (too many groups, or a port the export does not allow)"
        }
        _ => "the server refused our credential",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_keep_their_errno() {
        let cases = [
            (nfsstat3::NFS3ERR_ACCES, libc::EACCES),
            (nfsstat3::NFS3ERR_PERM, libc::EPERM),
            (nfsstat3::NFS3ERR_NOSPC, libc::ENOSPC),
            (nfsstat3::NFS3ERR_DQUOT, libc::EDQUOT),
            (nfsstat3::NFS3ERR_ROFS, libc::EROFS),
            (nfsstat3::NFS3ERR_NOENT, libc::ENOENT),
            (nfsstat3::NFS3ERR_EXIST, libc::EEXIST),
            (nfsstat3::NFS3ERR_NOTEMPTY, libc::ENOTEMPTY),
            (nfsstat3::NFS3ERR_NAMETOOLONG, libc::ENAMETOOLONG),
            (nfsstat3::NFS3ERR_FBIG, libc::EFBIG),
            (nfsstat3::NFS3ERR_ISDIR, libc::EISDIR),
            (nfsstat3::NFS3ERR_NOTDIR, libc::ENOTDIR),
            (nfsstat3::NFS3ERR_STALE, libc::ESTALE),
            (nfsstat3::NFS3ERR_SERVERFAULT, libc::EIO),
        ];
        for (stat, errno) in cases {
            assert_eq!(kind_of(stat).errno(), errno, "{stat}");
        }
    }
}
