//! Backend errors: an errno-like kind plus the context a platform team needs
//! to fix the cause (which backend, which path, which operation, which identity).

use std::fmt;
use std::io;

use super::Identity;

/// What went wrong, independent of the backend. Each kind maps to exactly one
/// errno at the FUSE boundary, so a permission error stays a permission error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    /// EACCES: the identity lacks permission.
    PermissionDenied,
    /// EPERM: the operation is not permitted at all (e.g. chown by non-owner).
    NotPermitted,
    NoSpace,
    QuotaExceeded,
    ReadOnly,
    AlreadyExists,
    NotEmpty,
    NotADirectory,
    IsADirectory,
    NameTooLong,
    FileTooBig,
    InvalidArgument,
    CrossDevice,
    TooManyLinks,
    Stale,
    Unavailable,
    Unsupported,
    /// No better errno exists; surfaces as EIO with a log line.
    Other,
}

impl ErrorKind {
    pub fn errno(self) -> i32 {
        match self {
            ErrorKind::NotFound => libc::ENOENT,
            ErrorKind::PermissionDenied => libc::EACCES,
            ErrorKind::NotPermitted => libc::EPERM,
            ErrorKind::NoSpace => libc::ENOSPC,
            ErrorKind::QuotaExceeded => libc::EDQUOT,
            ErrorKind::ReadOnly => libc::EROFS,
            ErrorKind::AlreadyExists => libc::EEXIST,
            ErrorKind::NotEmpty => libc::ENOTEMPTY,
            ErrorKind::NotADirectory => libc::ENOTDIR,
            ErrorKind::IsADirectory => libc::EISDIR,
            ErrorKind::NameTooLong => libc::ENAMETOOLONG,
            ErrorKind::FileTooBig => libc::EFBIG,
            ErrorKind::InvalidArgument => libc::EINVAL,
            ErrorKind::CrossDevice => libc::EXDEV,
            ErrorKind::TooManyLinks => libc::EMLINK,
            ErrorKind::Stale => libc::ESTALE,
            ErrorKind::Unavailable => libc::EIO,
            ErrorKind::Unsupported => libc::EOPNOTSUPP,
            ErrorKind::Other => libc::EIO,
        }
    }

    /// The kind of a local I/O error: its errno, or what std says of it.
    pub fn from_io(err: &io::Error) -> ErrorKind {
        match err.raw_os_error() {
            Some(errno) => ErrorKind::from_errno(errno),
            None => match err.kind() {
                io::ErrorKind::NotFound => ErrorKind::NotFound,
                io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
                io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
                io::ErrorKind::InvalidInput => ErrorKind::InvalidArgument,
                io::ErrorKind::NotADirectory => ErrorKind::NotADirectory,
                _ => ErrorKind::Other,
            },
        }
    }

    /// Classify a raw OS errno. Unknown values become `Other` (EIO).
    pub fn from_errno(errno: i32) -> ErrorKind {
        match errno {
            libc::ENOENT => ErrorKind::NotFound,
            libc::EACCES => ErrorKind::PermissionDenied,
            libc::EPERM => ErrorKind::NotPermitted,
            libc::ENOSPC => ErrorKind::NoSpace,
            libc::EDQUOT => ErrorKind::QuotaExceeded,
            libc::EROFS => ErrorKind::ReadOnly,
            libc::EEXIST => ErrorKind::AlreadyExists,
            libc::ENOTEMPTY => ErrorKind::NotEmpty,
            libc::ENOTDIR => ErrorKind::NotADirectory,
            libc::EISDIR => ErrorKind::IsADirectory,
            libc::ENAMETOOLONG => ErrorKind::NameTooLong,
            libc::EFBIG => ErrorKind::FileTooBig,
            libc::EINVAL => ErrorKind::InvalidArgument,
            libc::EXDEV => ErrorKind::CrossDevice,
            libc::EMLINK => ErrorKind::TooManyLinks,
            libc::ESTALE => ErrorKind::Stale,
            libc::EOPNOTSUPP | libc::ENOSYS => ErrorKind::Unsupported,
            libc::ENOTCONN | libc::ETIMEDOUT | libc::ECONNREFUSED | libc::ECONNRESET => {
                ErrorKind::Unavailable
            }
            _ => ErrorKind::Other,
        }
    }
}

/// A failed backend operation with its full context.
#[derive(Debug)]
pub struct BackendError {
    pub kind: ErrorKind,
    /// e.g. `file:///srv/data`
    pub backend: String,
    /// e.g. `create temp file`
    pub operation: &'static str,
    /// Path relative to the volume root (empty = root).
    pub path: String,
    /// Boxed: an identity with its groups would make every `Result` of
    /// the backend large.
    pub identity: Option<Box<Identity>>,
    pub cause: String,
}

impl BackendError {
    pub fn new(kind: ErrorKind, operation: &'static str, path: impl Into<String>) -> Self {
        BackendError {
            kind,
            backend: String::new(),
            operation,
            path: path.into(),
            identity: None,
            cause: String::new(),
        }
    }

    pub fn from_io(err: &io::Error, operation: &'static str, path: impl Into<String>) -> Self {
        BackendError {
            cause: err.to_string(),
            ..BackendError::new(ErrorKind::from_io(err), operation, path)
        }
    }

    pub fn with_backend(mut self, backend: &str) -> Self {
        self.backend = backend.to_string();
        self
    }

    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identity = Some(Box::new(identity));
        self
    }

    pub fn with_cause(mut self, cause: impl Into<String>) -> Self {
        self.cause = cause.into();
        self
    }

    pub fn errno(&self) -> i32 {
        self.kind.errno()
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of '/{}' on {}",
            self.operation, self.path, self.backend
        )?;
        if let Some(id) = &self.identity {
            write!(f, " as uid {} gid {}", id.uid, id.gid)?;
            let groups = id.groups.as_slice();
            if !groups.is_empty() {
                let list: Vec<String> = groups.iter().map(u32::to_string).collect();
                write!(f, " groups {}", list.join(","))?;
            }
        }
        write!(f, " failed: {:?}", self.kind)?;
        if !self.cause.is_empty() {
            write!(f, " ({})", self.cause)?;
        }
        Ok(())
    }
}

impl std::error::Error for BackendError {}

pub type BackendResult<T> = Result<T, BackendError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_errors_keep_their_errno() {
        assert_eq!(ErrorKind::from_errno(libc::EACCES).errno(), libc::EACCES);
        assert_eq!(ErrorKind::from_errno(libc::EPERM).errno(), libc::EPERM);
        assert_eq!(ErrorKind::from_errno(libc::EDQUOT).errno(), libc::EDQUOT);
        assert_eq!(ErrorKind::from_errno(libc::EROFS).errno(), libc::EROFS);
    }

    #[test]
    fn unknown_errno_is_eio() {
        assert_eq!(ErrorKind::from_errno(libc::EBADMSG).errno(), libc::EIO);
    }

    #[test]
    fn display_names_path_operation_and_identity() {
        let err = BackendError::new(ErrorKind::PermissionDenied, "create temp file", "a/b")
            .with_backend("file:///srv")
            .with_identity(Identity::new(7, 8))
            .with_cause("Permission denied (os error 13)");
        let text = err.to_string();
        assert!(text.contains("create temp file"), "{text}");
        assert!(text.contains("/a/b"), "{text}");
        assert!(text.contains("uid 7 gid 8"), "{text}");
        assert!(text.contains("file:///srv"), "{text}");
    }
}
