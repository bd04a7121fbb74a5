//! The storage backend abstraction: one async trait for every backend
//! (`local` now; `nfs` and `s3` later). All paths are relative to the volume
//! root and already validated ([`BackendPath`]), so no backend ever sees `..`.

pub mod blocking;
mod error;
pub mod local;
pub mod nfs;
mod open;
pub mod owner;
mod path;
pub mod quota;
pub mod s3;
pub mod source;
pub mod timed;

use std::time::SystemTime;

use async_trait::async_trait;

pub use error::{BackendError, BackendResult, ErrorKind};
pub use open::{open, open_s3, s3_config, OpenError, OpenOptions};
pub use path::{first_seq, hidden_name_for, is_temp_name, BackendPath};
pub use source::{has_userinfo, redacted_url, Source};

/// The identity a backend operation is performed as (AUTH_SYS-like).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups of the caller (sent in AUTH_SYS by NFS; the
    /// kernel already checked them for local files).
    #[serde(default, skip_serializing_if = "Groups::is_empty")]
    pub groups: Groups,
}

impl Identity {
    pub const fn new(uid: u32, gid: u32) -> Identity {
        Identity {
            uid,
            gid,
            groups: Groups::NONE,
        }
    }

    pub fn with_groups(self, groups: Groups) -> Identity {
        Identity { groups, ..self }
    }
}

/// Up to 16 supplementary group ids (the AUTH_SYS limit), kept inline so
/// an identity stays a plain value.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct Groups {
    len: u8,
    ids: [u32; Groups::MAX],
}

impl Groups {
    pub const MAX: usize = 16;
    pub const NONE: Groups = Groups {
        len: 0,
        ids: [0; Groups::MAX],
    };

    /// The first `MAX` of `ids` (AUTH_SYS carries no more).
    pub fn from_ids(ids: impl IntoIterator<Item = u32>) -> Groups {
        let mut groups = Groups::NONE;
        for id in ids.into_iter().take(Groups::MAX) {
            groups.ids[usize::from(groups.len)] = id;
            groups.len += 1;
        }
        groups
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u32] {
        &self.ids[..usize::from(self.len).min(Groups::MAX)]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
    /// Anything else: listed, never opened.
    Special,
}

/// A special file to create (`Backend::mknod`); devices carry their number
/// as `dev_t` (`libc::makedev`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialFile {
    Fifo,
    CharDevice(u64),
    BlockDevice(u64),
    Socket,
}

impl SpecialFile {
    pub fn kind(self) -> FileKind {
        match self {
            SpecialFile::Fifo => FileKind::Fifo,
            SpecialFile::CharDevice(_) => FileKind::CharDevice,
            SpecialFile::BlockDevice(_) => FileKind::BlockDevice,
            SpecialFile::Socket => FileKind::Socket,
        }
    }
}

/// A write session another process suspended, as this one found it.
pub enum Resumed {
    Pending(Box<dyn PendingWrite>),
    /// The temporary object is gone and the target is that very object:
    /// the other process published it and died before it could say so.
    Published,
}

/// A write session's description for another process (backend-specific
/// JSON, opaque to the core), from `PendingWrite::suspend`.
pub type SuspendedWrite = serde_json::Value;

/// Opaque token that changes whenever an object's content may have changed.
/// Cache pages are keyed by it, so a changed object never serves stale pages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct VersionToken(pub String);

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Metadata {
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits only (0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub version: VersionToken,
    /// The backend's number for the object, shared by its hard links and
    /// stable while it exists (local: the backing file's inode number,
    /// mixed with its device; NFS: fileid; S3: a hash of the key). The
    /// kernel sees it as `st_ino`. `None` where not known yet (a new file
    /// before its first publish).
    #[serde(default)]
    pub object_id: Option<u64>,
    /// Device number of a device node (`dev_t`), else 0.
    #[serde(default)]
    pub rdev: u64,
}

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: String,
    pub meta: Metadata,
}

/// Attribute changes other than size (size changes go through the write path
/// so that a truncate is as atomic as any other write).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct AttrChanges {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
    /// The time was asked as "now" (UTIME_NOW): a backend that can set it
    /// to its own clock does, which (unlike an explicit time) needs only
    /// write permission, not ownership.
    #[serde(default)]
    pub atime_now: bool,
    #[serde(default)]
    pub mtime_now: bool,
}

impl AttrChanges {
    pub fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.atime.is_none()
            && self.mtime.is_none()
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct FsStats {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_max: u32,
}

/// What a new temporary object starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStart {
    /// Empty (new file, or `O_TRUNC`).
    Empty,
    /// A copy of the current object, so that a partial overwrite publishes a
    /// complete file (copy-on-write).
    CopyExisting,
}

/// Optional operations; the filesystem answers EOPNOTSUPP/EPERM cleanly when
/// a backend lacks one.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    pub hard_links: bool,
    pub symlinks: bool,
    /// FIFOs, device nodes and sockets can be stored.
    pub special_files: bool,
    /// A rename is a metadata operation, not a copy: an open file that is
    /// unlinked or replaced can be kept readable under a hidden name until
    /// its last handle closes (as NFS clients do).
    pub cheap_rename: bool,
    /// The backend checks permissions itself with the identity it is sent
    /// (NFS AUTH_SYS), so callers' supplementary groups must go with it.
    /// Elsewhere the kernel checked them and they are not looked up.
    pub caller_groups: bool,
    /// Operations are system calls on a local filesystem, quick enough to
    /// run on the FUSE worker that asks (see `blocking`).
    pub inline_io: bool,
    /// A WRITE only reaches local staging before its answer (the upload
    /// runs behind it; waiting for an upload slot is backpressure anyway):
    /// the FUSE worker that asks runs it, borrowing the request's data.
    pub inline_writes: bool,
    /// A request costs far more than the bytes it carries (an HTTP object
    /// store): sequential read-ahead asks for several pages at once.
    pub large_reads: bool,
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The storage as messages name it (e.g. `file:///srv/data`); cache
    /// keys use `cache_identity`.
    fn describe(&self) -> &str;

    /// Names this source in the page store's keys (and S3's staging
    /// directory). Unlike `describe`, which is for messages and may be
    /// reworded, its form is frozen: a change would orphan every cached
    /// page on every node. Each backend builds it with a function of its
    /// own (`cache_identity` in its module), today giving the text earlier
    /// versions keyed by.
    fn cache_identity(&self) -> &str;

    fn capabilities(&self) -> Capabilities;

    /// Metadata of the object itself (symlinks are not followed).
    async fn stat(&self, id: Identity, path: &BackendPath) -> BackendResult<Metadata>;

    /// All entries of a directory, without `.`/`..` and without our own
    /// temporary objects.
    async fn list(&self, id: Identity, path: &BackendPath) -> BackendResult<Vec<DirEntry>>;

    /// Open an object for ranged reads, pinned to one version where the
    /// backend can do so.
    async fn open_read(
        &self,
        id: Identity,
        path: &BackendPath,
    ) -> BackendResult<Box<dyn ObjectReader>>;

    /// Start a temporary object that will atomically replace (or create)
    /// `path` when published. `create_mode` applies when `path` does not
    /// exist; otherwise the existing object's mode and owner are kept.
    async fn begin_write(
        &self,
        id: Identity,
        path: &BackendPath,
        start: WriteStart,
        create_mode: u32,
    ) -> BackendResult<Box<dyn PendingWrite>>;

    async fn mkdir(&self, id: Identity, path: &BackendPath, mode: u32) -> BackendResult<Metadata>;
    async fn rmdir(&self, id: Identity, path: &BackendPath) -> BackendResult<()>;
    async fn unlink(&self, id: Identity, path: &BackendPath) -> BackendResult<()>;
    async fn rename(
        &self,
        id: Identity,
        from: &BackendPath,
        to: &BackendPath,
        no_replace: bool,
    ) -> BackendResult<()>;
    async fn symlink(
        &self,
        id: Identity,
        path: &BackendPath,
        target: &str,
    ) -> BackendResult<Metadata>;
    async fn readlink(&self, id: Identity, path: &BackendPath) -> BackendResult<String>;
    async fn link(
        &self,
        id: Identity,
        existing: &BackendPath,
        new: &BackendPath,
    ) -> BackendResult<Metadata>;
    /// Create a FIFO, device node or socket (where `special_files`).
    async fn mknod(
        &self,
        id: Identity,
        path: &BackendPath,
        node: SpecialFile,
        mode: u32,
    ) -> BackendResult<Metadata>;
    async fn set_attr(
        &self,
        id: Identity,
        path: &BackendPath,
        changes: &AttrChanges,
    ) -> BackendResult<Metadata>;
    async fn statfs(&self, id: Identity) -> BackendResult<FsStats>;
    /// Make the published object's data durable: fsync(2) of a descriptor
    /// with nothing pending (a write closed earlier was published without
    /// a flush to disk where the backend allows that).
    async fn sync(&self, id: Identity, path: &BackendPath) -> BackendResult<()>;

    /// Remove temporary objects left behind by a crashed writer. Returns how
    /// many were removed.
    async fn cleanup_stale_temps(&self) -> BackendResult<usize>;

    /// Continue a write session another process suspended, its
    /// temporary object belonging to `target`. The object is renamed to a
    /// name of this process, so cleanups never take it for a dead
    /// writer's leftover.
    async fn resume_write(
        &self,
        id: Identity,
        target: &BackendPath,
        state: SuspendedWrite,
    ) -> BackendResult<Resumed>;

    /// Mount-time check that `id` can do what the write path needs (create,
    /// write, rename, remove a temporary object). The error explains the
    /// likely fix. Backends where nothing can go wrong keep the default.
    async fn preflight(&self, _id: Identity) -> BackendResult<()> {
        Ok(())
    }

    /// Copy the file `from` to `to` within the backend, without the data
    /// passing through this process (S3: CopyObject). `Ok(false)`: this
    /// backend cannot; the caller copies the data itself.
    async fn copy_file(
        &self,
        _id: Identity,
        _from: &BackendPath,
        _to: &BackendPath,
    ) -> BackendResult<bool> {
        Ok(false)
    }

    /// Change the volume's byte quota while mounted (an expansion): only a
    /// backend wrapped by [`quota::Quota`] has one.
    async fn set_capacity(&self, _bytes: u64) -> BackendResult<()> {
        Err(
            BackendError::new(ErrorKind::Unsupported, "set capacity", "")
                .with_cause("this mount has no capacity (mounted without --capacity)"),
        )
    }
}

#[async_trait]
pub trait ObjectReader: Send + Sync {
    fn version(&self) -> &VersionToken;
    fn size(&self) -> u64;
    /// Read up to `len` bytes at `offset`; shorter only at end of object.
    /// `Bytes`, so that a backend receiving buffers (an HTTP body) hands
    /// them on without a copy.
    async fn read_at(&self, offset: u64, len: usize) -> BackendResult<bytes::Bytes>;

    /// The bytes of `read_at(offset, len)` as they arrive, in order, in
    /// buffers of any size: a caller can use the first pages of a large
    /// read while the rest is still on the wire (a GET's body). A stream
    /// that ends short of `len` before the end of the object failed (the
    /// backend reports that as an error item, e.g. ESTALE). Default: one
    /// `read_at`.
    async fn read_stream(&self, offset: u64, len: usize) -> BackendResult<ByteStream> {
        let data = self.read_at(offset, len).await?;
        Ok(Box::pin(futures::stream::once(async move { Ok(data) })))
    }
}

/// Buffers of one read, in order (see [`ObjectReader::read_stream`]).
pub type ByteStream = futures::stream::BoxStream<'static, BackendResult<bytes::Bytes>>;

/// A temporary object being written. Paths are passed in by the caller on
/// every path-based call because the target may be renamed (or its directory
/// moved) while the write is in progress.
#[async_trait]
pub trait PendingWrite: Send + Sync {
    fn size(&self) -> u64;
    async fn write_at(&self, offset: u64, data: &[u8]) -> BackendResult<()>;
    /// `write_at` with data the caller gives away: a backend that holds
    /// the data while it is on its way (NFS WRITEs in flight) keeps it
    /// without a copy. Default: `write_at`.
    async fn write_bytes(&self, offset: u64, data: bytes::Bytes) -> BackendResult<()> {
        self.write_at(offset, &data).await
    }
    async fn read_at(&self, offset: u64, len: usize) -> BackendResult<Vec<u8>>;
    async fn truncate(&self, size: u64) -> BackendResult<()>;
    async fn set_attr(&self, changes: &AttrChanges) -> BackendResult<()>;
    /// Move the temporary object along with a rename of its target.
    async fn retarget(
        &self,
        old_target: &BackendPath,
        new_target: &BackendPath,
    ) -> BackendResult<()>;
    /// Make what was written so far durable where it is (fsync(2) on a
    /// descriptor being written), and have `publish` keep the result
    /// durable: data and the new name survive a crash once it returns.
    async fn sync(&self) -> BackendResult<()>;
    /// Atomically publish under `target`: readers see the old object or the
    /// whole new one, never a part. Durable on NFS (COMMIT) and S3 (the
    /// upload completes); on a local directory only after `sync` (close(2)
    /// does not fsync there, as on a local filesystem). Consumes the
    /// temporary object on success; on failure the caller must `abort`.
    async fn publish(&self, target: &BackendPath) -> BackendResult<Metadata>;
    /// Publish by copying the data into the existing object at `target`
    /// instead of replacing it: for a file with several hard links, which
    /// a rename would cut apart (the other names would keep the old data).
    /// Durable, but not atomic: a reader may see the copy in progress.
    /// Consumes the temporary object on success; on failure the caller
    /// must `abort`. Backends without hard links publish as usual.
    async fn publish_in_place(&self, target: &BackendPath) -> BackendResult<Metadata> {
        self.publish(target).await
    }
    /// fallocate(2) on the temporary object (`mode` as for the syscall:
    /// 0, KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE[|KEEP_SIZE]). Where
    /// space cannot be reserved, mode 0 extends the size (zeros, no
    /// reservation) and other modes are `Unsupported`.
    async fn allocate(&self, offset: u64, len: u64, mode: i32) -> BackendResult<()> {
        if mode != 0 {
            return Err(BackendError::new(ErrorKind::Unsupported, "fallocate", ""));
        }
        let end = offset.saturating_add(len);
        if end > self.size() {
            self.truncate(end).await?;
        }
        Ok(())
    }
    /// The number the object will have once published (see
    /// `Metadata::object_id`), where the temporary object already is it
    /// (a rename keeps it).
    fn object_id(&self) -> Option<u64> {
        None
    }
    /// Remove the temporary object; the final name is untouched.
    async fn abort(&self, target: &BackendPath);
    /// Make the temporary object complete where it is (flush what is
    /// buffered, finish nothing) and describe it, so that another process
    /// can continue the session with `Backend::resume_write` (live takeover,
    /// crash recovery). This session must not be used afterwards.
    async fn suspend(&self) -> BackendResult<SuspendedWrite>;

    /// The temporary object as `suspend` describes it, without flushing
    /// anything and with the size left out (the successor measures it):
    /// logged when the session begins, for a successor after a crash.
    fn describe(&self) -> SuspendedWrite;
}
