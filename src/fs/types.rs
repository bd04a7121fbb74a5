//! Plain types shared by the filesystem core and its FUSE adapter.

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

/// An error for the application: just an errno. The context was logged where
/// the error was created, because the kernel cannot carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsError(pub i32);

impl FsError {
    pub fn errno(self) -> i32 {
        self.0
    }
}

impl From<BackendError> for FsError {
    fn from(e: BackendError) -> FsError {
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
                    errno = e.errno(),
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
        FsError(e.errno())
    }
}

pub type FsResult<T> = Result<T, FsError>;
