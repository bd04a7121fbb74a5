//! The filesystem core. It knows nothing of FUSE: the adapter in `fuse/`
//! translates kernel requests into calls here, and tests can drive it
//! directly. Reads go through the page store; writes go to a temporary
//! object in the backend that is published atomically on close/fsync.
//!
//! This module holds the filesystem's state (`CachalotFs`), its
//! construction, the journal wiring (handles and write sessions logged as
//! they come and go), the kernel cache invalidations and the helpers every
//! request uses (caller identity, paths, handles). The requests are in its
//! parts:
//! - `attr`: lookup, getattr, setattr, readlink, statfs, the capacity;
//! - `namespace`: mkdir, rmdir, unlink, rename, symlink, link, mknod;
//! - `files`: open, create, write, flush, fsync, release;
//! - `read`: the read path (memory, page store, backend; read-ahead);
//! - `copy`: fallocate and copy_file_range;
//! - `dir`: directory handles and listings;
//! - `residency`, `stats`: the cached-bytes attribute and the counters;
//! - `passthrough`: FUSE passthrough from whole files in the cache;
//!
//! and what those share: `write` (write sessions), `unlinked` (open files
//! that lose their name), `inode` (the inode table), `journal` and
//! `snapshot` (state for a successor), `process` (callers), `types`.

mod attr;
mod copy;
mod dir;
mod files;
mod inode;
pub mod journal;
mod namespace;
mod passthrough;
mod process;
mod read;
#[cfg(test)]
mod rename_race_tests;
#[cfg(test)]
mod replaced_tests;
mod residency;
pub mod snapshot;
#[cfg(test)]
mod snapshot_tests;
mod stats;
#[cfg(test)]
mod tests;
mod types;
mod unlinked;
mod write;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;

use crate::backend::{
    is_temp_name, AttrChanges, Backend, BackendPath, ErrorKind, FileKind, Identity, Metadata,
    SpecialFile, VersionToken, WriteStart,
};
use crate::cache::VolumeCache;

use inode::InodeTable;
use read::{FileHandle, HotPages, InFlight};
use unlinked::Keep;
pub use write::WriteData;
use write::{Finished, WriteSession};

pub use dir::{DirHandle, OpenedDir};
pub use residency::CACHED_XATTR;
pub use stats::{Counters, FsSample};
pub use types::{Attr, Caller, FsConfig, FsError, FsResult, KernelCache, ListedEntry, ROOT_INO};

/// Extended attribute on the mount root that returns the counters as JSON.
pub const STATS_XATTR: &str = "user.cachalot.stats";
/// Set on the root by root: the volume's new capacity in bytes.
pub const CAPACITY_XATTR: &str = "user.cachalot.capacity";

enum Handle {
    File(Arc<FileHandle>),
    Dir(Arc<DirHandle>),
}

/// Result of an open: the handle and whether the kernel may keep its page
/// cache from the previous open (content unchanged).
pub struct Opened {
    pub fh: u64,
    pub keep_cache: bool,
    pub passthrough: Passthrough,
    /// The close of a descriptor must reach us (it publishes what was
    /// written); for a read-only one the kernel need not send it, which
    /// saves a round trip per close.
    pub wants_close: bool,
}

/// Counts an open in progress on an inode until it finished (or failed).
/// A writable open counts as a writer from its start: an O_TRUNC open
/// starts a write session before it has a handle, and the release of the
/// file's previous writer must not publish that still-empty session.
struct OpeningGuard<'a> {
    fs: &'a CachalotFs,
    ino: u64,
    writer: bool,
    opened: bool,
}

impl Drop for OpeningGuard<'_> {
    fn drop(&mut self) {
        let mut table = self.fs.inodes.lock();
        if let Ok(inode) = table.get_mut(self.ino) {
            inode.opening = inode.opening.saturating_sub(1);
            if self.writer && !self.opened {
                inode.writers = inode.writers.saturating_sub(1);
            }
        }
        table.maybe_drop(self.ino);
    }
}

/// The open flags the core cares about.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenMode {
    pub writable: bool,
    /// O_TRUNC.
    pub truncate: bool,
    /// O_APPEND: every write goes to the end of the file.
    pub append: bool,
}

/// How the kernel should read an opened file.
pub enum Passthrough {
    /// Through cachalot (page store).
    No,
    /// Directly from this whole file in the cache.
    New(std::fs::File),
    /// Directly, with the backing file registered for this inode by an
    /// earlier passthrough open. That open's reply may still be on its way
    /// (replies of concurrent opens overtake each other): this one carries
    /// the whole file too, to register it first if so.
    Reuse(std::fs::File),
}

pub struct CachalotFs {
    backend: Arc<dyn Backend>,
    cache: Arc<VolumeCache>,
    cfg: FsConfig,
    inodes: Mutex<InodeTable>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// Serialise the creation of write sessions per inode, so two writers
    /// of one file share a single temporary object while other files (whose
    /// copy-on-write may take long) proceed.
    session_gates: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    inflight: Arc<InFlight>,
    hot: HotPages,
    readahead_permits: Arc<tokio::sync::Semaphore>,
    /// Room for fetched pages waiting for the page store (see `read::store`).
    store_backlog: Arc<tokio::sync::Semaphore>,
    /// The kernel granted FUSE passthrough (set by the adapter at init).
    passthrough_active: AtomicBool,
    /// Whole files being assembled or checked right now (object stems).
    assembling: Arc<Mutex<std::collections::HashSet<String>>>,
    /// The kernel's caches (set by the adapter once mounted).
    kernel: Mutex<Option<Arc<dyn KernelCache>>>,
    /// Where handles and write sessions are logged (see `journal`).
    journal: Mutex<Option<Arc<dyn journal::JournalSink>>>,
    /// Sequence for hidden names of unlinked open files.
    hidden_seq: AtomicU64,
    /// Serialises moves and removals of hidden objects (a release removing
    /// one while an rmdir moves it away).
    hidden_ops: tokio::sync::Mutex<()>,
    /// Woken when an unlink or rename-over ends: opens of the file it
    /// removed wait for it (see `unlinked`).
    namespace_settled: tokio::sync::Notify,
    /// Callers' processes (who closes a file) and supplementary groups
    /// (see `identity`).
    threads: process::Threads,
    pub counters: Counters,
}

impl CachalotFs {
    /// Check the backend root and build the filesystem.
    pub async fn new(
        backend: Arc<dyn Backend>,
        cache: Arc<VolumeCache>,
        cfg: FsConfig,
    ) -> Result<CachalotFs, crate::backend::BackendError> {
        let root_id = cfg.fixed_identity.unwrap_or(Identity::new(0, 0));
        let root = backend.stat(root_id, &BackendPath::root()).await?;
        let page_size = cache.page_size();
        Ok(CachalotFs {
            backend,
            cache,
            cfg,
            inodes: Mutex::new(InodeTable::new(root)),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            session_gates: Mutex::new(HashMap::new()),
            inflight: Arc::new(InFlight::default()),
            hot: HotPages::new(page_size),
            passthrough_active: AtomicBool::new(false),
            assembling: Arc::new(Mutex::new(std::collections::HashSet::new())),
            readahead_permits: Arc::new(tokio::sync::Semaphore::new(read::readahead_global_pages(
                page_size,
            ))),
            store_backlog: Arc::new(tokio::sync::Semaphore::new(read::store_backlog_pages(
                page_size,
            ))),
            kernel: Mutex::new(None),
            journal: Mutex::new(None),
            hidden_seq: AtomicU64::new(crate::backend::first_seq()),
            hidden_ops: tokio::sync::Mutex::new(()),
            namespace_settled: tokio::sync::Notify::new(),
            threads: process::Threads::default(),
            counters: Counters::default(),
        })
    }

    /// Requests may be answered on the FUSE worker that read them, backend
    /// calls included (see `backend::blocking`).
    pub fn answers_inline(&self) -> bool {
        self.backend.capabilities().inline_io
    }

    /// Whether WRITE requests are answered on the FUSE worker that read
    /// them (see `Capabilities::inline_writes`).
    pub fn answers_writes_inline(&self) -> bool {
        self.backend.capabilities().inline_writes
    }

    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    /// Log what the kernel may depend on from now on (before the session
    /// answers its first request).
    pub fn set_journal(&self, sink: Arc<dyn journal::JournalSink>) {
        self.inodes.lock().set_journal(Arc::clone(&sink));
        *self.journal.lock() = Some(sink);
    }

    fn log(&self, event: journal::Event) {
        if let Some(j) = self.journal.lock().as_ref() {
            j.record(&event);
        }
    }

    /// Register an open handle (logged first: the reply names it).
    fn add_handle(&self, fh: u64, handle: Handle) {
        let event = match &handle {
            Handle::File(f) => journal::Event::Open {
                fh,
                ino: f.ino,
                dir: false,
                writable: f.writable,
                append: f.append,
                opener: f.opener,
                identity: f.identity,
            },
            Handle::Dir(d) => journal::Event::Open {
                fh,
                ino: d.ino,
                dir: true,
                writable: false,
                append: false,
                opener: 0,
                identity: crate::backend::Identity::new(0, 0),
            },
        };
        self.log(event);
        self.handles.lock().insert(fh, handle);
    }

    fn remove_handle(&self, fh: u64) -> Option<Handle> {
        let handle = self.handles.lock().remove(&fh);
        if handle.is_some() {
            self.log(journal::Event::Release { fh });
        }
        handle
    }

    /// Log a write session begun for `ino` (its temporary object).
    fn log_write_begin(&self, ino: u64, session: &WriteSession) {
        if self.journal.lock().is_some() {
            self.log(journal::Event::WriteBegin {
                ino,
                write: Box::new(session.describe()),
            });
        }
    }

    /// Called by the mount once the kernel session exists.
    pub fn set_kernel_cache(&self, kernel: Arc<dyn KernelCache>) {
        *self.kernel.lock() = Some(kernel);
    }

    /// Make the kernel drop its cached pages and attributes of `ino`: they
    /// no longer match what we serve. Runs on a blocking thread: the kernel
    /// may wait for page locks held by a request we are still answering.
    fn invalidate_kernel(&self, ino: u64) {
        if let Some(kernel) = self.kernel.lock().clone() {
            tokio::task::spawn_blocking(move || kernel.invalidate_inode(ino));
        }
    }

    /// Make the kernel look `ino`'s last name up again at its next path
    /// walk (it was replaced behind the mount). Sent from a blocking thread
    /// and never waited for: the kernel takes the directory's lock, which
    /// a request we are answering may hold, or a `getdents` waiting for a
    /// page lock of a READ we are answering (see `replaced_behind`).
    pub(super) fn invalidate_kernel_entry(&self, table: &InodeTable, ino: u64) {
        let Ok(inode) = table.get(ino) else { return };
        let (parent, name) = (inode.parent, inode.name.clone());
        if let Some(kernel) = self.kernel.lock().clone() {
            tokio::task::spawn_blocking(move || kernel.invalidate_entry(parent, &name));
        }
    }

    /// Make the kernel look up again the names `set_meta` split off an
    /// inode (they lead to another object now).
    fn relookup_split_names(&self, table: &mut InodeTable) {
        let split = table.take_split();
        if split.is_empty() {
            return;
        }
        if let Some(kernel) = self.kernel.lock().clone() {
            tokio::task::spawn_blocking(move || {
                for (parent, name) in split {
                    kernel.invalidate_entry(parent, &name);
                }
            });
        }
    }

    /// FORGET from the kernel.
    /// The kernel dropped references to `ino`; true if a hidden object is
    /// left to remove (`remove_forgotten`).
    pub fn forget(&self, ino: u64, nlookup: u64) -> bool {
        self.inodes.lock().forget(ino, nlookup)
    }

    fn identity(&self, caller: Caller) -> Identity {
        if let Some(fixed) = self.cfg.fixed_identity {
            return fixed;
        }
        let identity = Identity::new(caller.uid, self.cfg.mount_group.unwrap_or(caller.gid));
        // A /proc read per caller thread, only where the backend uses them.
        match self.backend.capabilities().caller_groups {
            true => identity.with_groups(self.threads.groups_of(caller.pid, caller.uid)),
            false => identity,
        }
    }

    fn check_writable(&self) -> FsResult<()> {
        if self.cfg.read_only {
            Err(FsError::new(libc::EROFS))
        } else {
            Ok(())
        }
    }

    fn path_of(&self, ino: u64) -> FsResult<BackendPath> {
        self.inodes.lock().path_of(ino)
    }

    fn child_path(&self, parent: u64, name: &str) -> FsResult<BackendPath> {
        if is_temp_name(name) {
            // Our temporary objects are invisible and cannot be addressed.
            return Err(FsError::new(libc::ENOENT));
        }
        let dir = self.path_of(parent)?;
        Ok(dir.join(name)?)
    }

    fn file_handle(&self, fh: u64) -> FsResult<Arc<FileHandle>> {
        match self.handles.lock().get(&fh) {
            Some(Handle::File(h)) => Ok(Arc::clone(h)),
            _ => Err(FsError::new(libc::EBADF)),
        }
    }

    fn dir_handle(&self, fh: u64) -> FsResult<Arc<DirHandle>> {
        match self.handles.lock().get(&fh) {
            Some(Handle::Dir(h)) => Ok(Arc::clone(h)),
            _ => Err(FsError::new(libc::EBADF)),
        }
    }
}
