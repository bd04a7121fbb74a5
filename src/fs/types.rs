//! Plain types shared by the filesystem core and its FUSE adapter.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::backend::{BackendError, ErrorKind, FileKind, Identity, Metadata};

pub const ROOT_INO: u64 = 1;

/// Who made a request, as the kernel told us.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

#[derive(Debug, Clone)]
pub struct FsConfig {
    /// How long entries and attributes are trusted before asking the backend.
    pub metadata_ttl: Duration,
    pub read_only: bool,
    /// Identity for every backend operation; `None` = the caller's.
    pub fixed_identity: Option<Identity>,
    /// Let the kernel read fully cached files directly (FUSE passthrough).
    /// Only honoured on read-only mounts: the kernel refuses any
    /// non-passthrough open of an inode that has passthrough opens, so a
    /// writer would fail while a reader holds the file.
    pub passthrough: bool,
    /// CSI `volume_mount_group`: every inode is reported with this group and
    /// new objects are created with it, so pods whose supplementary groups
    /// include it (Kubernetes fsGroup) get the group's permission bits.
    pub mount_group: Option<u32>,
}

/// Attributes of one inode as the kernel should see them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileKind,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Device number (`dev_t`) of a device node.
    #[serde(default)]
    pub rdev: u64,
}

/// One directory entry of a directory listing.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ListedEntry {
    pub name: String,
    pub attr: Attr,
    /// What the attributes came from: re-creates the inode should it have
    /// been forgotten between the listing and the reply.
    pub meta: Option<Metadata>,
}

/// The kernel's caches of this mount, as far as the core needs them: the
/// adapter forwards to FUSE notifications.
pub trait KernelCache: Send + Sync {
    /// Drop the kernel's cached pages and attributes of an inode.
    fn invalidate_inode(&self, ino: u64);
    /// Drop the kernel's cached entry `parent/name` (not the inode).
    fn invalidate_entry(&self, parent: u64, name: &str);
}

/// An error for the application: its errno and, when a backend refused,
/// the backend's error with its context (backend, operation, path,
/// identity). The kernel can carry only the errno, so the context is
/// logged once, where the error reaches the kernel (`CachalotFs::
/// count_error`); an error the core handles itself is not logged.
#[derive(Debug, Clone)]
pub struct FsError {
    errno: i32,
    cause: Option<Arc<BackendError>>,
}

impl FsError {
    /// An error of the core itself (no backend involved).
    pub const fn new(errno: i32) -> FsError {
        FsError { errno, cause: None }
    }

    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// The backend's refusal this error reports, if any.
    pub fn cause(&self) -> Option<&BackendError> {
        self.cause.as_deref()
    }

    /// Log the backend's refusal behind this error (nothing for the
    /// core's own errors, which need no explanation beyond the errno): as
    /// debug for answers that are part of normal use (a missing name), an
    /// error for failures the application sees as EIO-class, else a
    /// warning (permissions, space, quota).
    pub fn log(&self) {
        let Some(e) = self.cause() else {
            return;
        };
        // Structured fields, so a JSON log line can be filtered by backend,
        // operation, path or identity; the message stays readable as text.
        let identity = e
            .identity
            .as_deref()
            .map(|id| format!("{}:{}", id.uid, id.gid))
            .unwrap_or_default();
        macro_rules! log_at {
            ($level:ident, $msg:literal) => {
                tracing::$level!(
                    backend = %e.backend,
                    operation = e.operation,
                    path = %format_args!("/{}", e.path),
                    identity = %identity,
                    errno = self.errno,
                    cause = %e.cause,
                    error = %e,
                    $msg
                )
            };
        }
        match e.kind {
            ErrorKind::NotFound
            | ErrorKind::AlreadyExists
            | ErrorKind::NotEmpty
            | ErrorKind::NotADirectory
            | ErrorKind::IsADirectory
            | ErrorKind::InvalidArgument
            | ErrorKind::NameTooLong => log_at!(debug, "backend refused"),
            ErrorKind::Other | ErrorKind::Unavailable | ErrorKind::Stale => {
                log_at!(error, "backend failure, returning EIO-class error")
            }
            _ => log_at!(warn, "backend refused"),
        }
    }
}

/// Errors are the same for the application when their errno is.
impl PartialEq for FsError {
    fn eq(&self, other: &FsError) -> bool {
        self.errno == other.errno
    }
}

impl Eq for FsError {}

impl From<BackendError> for FsError {
    fn from(e: BackendError) -> FsError {
        FsError {
            errno: e.errno(),
            cause: Some(Arc::new(e)),
        }
    }
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.cause() {
            Some(e) => write!(f, "{e}"),
            None => write!(f, "{}", std::io::Error::from_raw_os_error(self.errno)),
        }
    }
}

impl std::error::Error for FsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

pub type FsResult<T> = Result<T, FsError>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Log lines written while `f` runs.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("log buffer").extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = captured.0.lock().expect("log buffer").clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// A backend error becomes an errno for the application without a log
    /// line (the core may handle it); it is logged, with its context, once
    /// `log` is called where it reaches the kernel.
    #[test]
    fn backend_errors_are_logged_where_they_are_reported_not_where_converted() {
        let refused = || {
            BackendError::new(ErrorKind::PermissionDenied, "create", "dir/f")
                .with_backend("file:///data")
        };
        let converted = logged(|| {
            let e = FsError::from(refused());
            assert_eq!(e.errno(), libc::EACCES);
        });
        assert_eq!(converted, "", "converting logged");
        let reported = logged(|| FsError::from(refused()).log());
        assert_eq!(reported.lines().count(), 1, "{reported}");
        for field in [
            "backend refused",
            "file:///data",
            "create",
            "/dir/f",
            "errno=13",
        ] {
            assert!(reported.contains(field), "{field}: {reported}");
        }
        assert_eq!(logged(|| FsError::new(libc::ENOENT).log()), "");
    }
}
