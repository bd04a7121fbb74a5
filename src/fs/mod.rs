//! The filesystem core. It knows nothing of FUSE: the adapter in `fuse/`
//! translates kernel requests into calls here, and tests can drive it
//! directly. Reads go through the page store; writes go to a temporary
//! object in the backend that is published atomically on close/fsync.

mod copy;
mod dir;
mod files;
mod inode;
pub mod journal;
mod namespace;
mod process;
mod read;
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
    is_temp_name, AttrChanges, Backend, BackendPath, ErrorKind, FileKind, FsStats, Identity,
    Metadata, SpecialFile, VersionToken, WriteStart,
};
use crate::cache::VolumeCache;

use inode::{InodeTable, Refreshed};
use read::{FileHandle, HotPages, InFlight};
use unlinked::Keep;
use write::{Finished, WriteSession};

pub use dir::DirHandle;
pub use residency::CACHED_XATTR;
pub use stats::{Counters, FsSample};
pub use types::{Attr, Caller, FsConfig, FsError, FsResult, KernelCache, ListedEntry, ROOT_INO};

/// Tries to assemble a whole file after a read handle closed.
const ASSEMBLY_ATTEMPTS: u32 = 10;

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
    /// Directly, with the backing file already registered for this inode.
    Reuse,
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
    /// The kernel granted FUSE passthrough (set by the adapter at init).
    passthrough_active: AtomicBool,
    /// Whole files being assembled right now (object stems).
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
    /// Supplementary groups of callers (see `identity`).
    groups: process::GroupCache,
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
            readahead_permits: Arc::new(tokio::sync::Semaphore::new(read::READAHEAD_GLOBAL_PAGES)),
            kernel: Mutex::new(None),
            journal: Mutex::new(None),
            hidden_seq: AtomicU64::new(crate::backend::first_seq()),
            hidden_ops: tokio::sync::Mutex::new(()),
            namespace_settled: tokio::sync::Notify::new(),
            groups: process::GroupCache::default(),
            counters: Counters::default(),
        })
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
    /// walk (it was replaced behind the mount). Runs on a blocking thread:
    /// the kernel takes the directory's lock, which a request we are
    /// answering may hold.
    pub(super) fn invalidate_kernel_entry(&self, table: &InodeTable, ino: u64) {
        let Ok(inode) = table.get(ino) else {
            return;
        };
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
    pub fn forget(&self, ino: u64, nlookup: u64) {
        self.inodes.lock().forget(ino, nlookup);
    }

    fn identity(&self, caller: Caller) -> Identity {
        if let Some(fixed) = self.cfg.fixed_identity {
            return fixed;
        }
        let identity = Identity::new(caller.uid, self.cfg.mount_group.unwrap_or(caller.gid));
        // A /proc read per caller thread, only where the backend uses them.
        match self.backend.capabilities().caller_groups {
            true => identity.with_groups(self.groups.groups_of(caller.pid, caller.uid)),
            false => identity,
        }
    }

    fn check_writable(&self) -> FsResult<()> {
        if self.cfg.read_only {
            Err(FsError(libc::EROFS))
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
            return Err(FsError(libc::ENOENT));
        }
        let dir = self.path_of(parent)?;
        Ok(dir.join(name)?)
    }

    fn fresh(&self, fetched: Instant) -> bool {
        fetched.elapsed() < self.cfg.metadata_ttl
    }

    fn attr_of(&self, ino: u64, meta: &Metadata) -> Attr {
        Attr {
            ino,
            kind: meta.kind,
            size: meta.size,
            mode: meta.mode,
            uid: meta.uid,
            gid: self.cfg.mount_group.unwrap_or(meta.gid),
            nlink: meta.nlink,
            atime: meta.atime,
            mtime: meta.mtime,
            ctime: meta.ctime,
            rdev: meta.rdev,
        }
    }

    /// Attributes from local state if still trustworthy: a file being written
    /// reports its temporary object, otherwise cached metadata within TTL.
    fn local_attr(&self, ino: u64) -> FsResult<Option<Attr>> {
        let table = self.inodes.lock();
        self.local_attr_in(&table, ino)
    }

    fn local_attr_in(&self, table: &InodeTable, ino: u64) -> FsResult<Option<Attr>> {
        let inode = table.get(ino)?;
        let attr = match (&inode.write, &inode.meta) {
            // The write's own size and times; the object's link count.
            (Some(session), Some((meta, _))) => {
                let mut attr = self.attr_of(ino, &session.attributes());
                attr.nlink = meta.nlink;
                attr
            }
            (Some(session), None) => self.attr_of(ino, &session.attributes()),
            (None, Some((meta, at))) if self.fresh(*at) => self.attr_of(ino, meta),
            // Gone from the backend namespace: what we last knew is all
            // there is (fstat of an open, removed directory).
            (None, Some((meta, _))) if !inode.attached => self.attr_of(ino, meta),
            (None, None) if !inode.attached => return Err(FsError(libc::ESTALE)),
            _ => return Ok(None),
        };
        Ok(Some(Self::unlinked_view(inode, attr)))
    }

    /// An unlinked inode (still open somewhere) has no links left.
    fn unlinked_view(inode: &inode::Inode, mut attr: Attr) -> Attr {
        if inode.unlinked {
            attr.nlink = 0;
        }
        attr
    }

    // ---- metadata -------------------------------------------------------

    pub async fn lookup(&self, caller: Caller, parent: u64, name: &str) -> FsResult<Attr> {
        let path = self.child_path(parent, name)?;
        {
            // Resolve and count the kernel's reference under one lock: a
            // FORGET in between must not drop the inode we reply with.
            let mut table = self.inodes.lock();
            if let Some(ino) = table.child(parent, name) {
                if let Ok(Some(attr)) = self.local_attr_in(&table, ino) {
                    table.remember(ino);
                    return Ok(attr);
                }
            }
        }
        let asked = Instant::now();
        match self.backend.stat(self.identity(caller), &path).await {
            Ok(meta) => {
                let mut table = self.inodes.lock();
                let ino = table.upsert_entry(parent, name, meta.clone(), asked);
                // A file being written reports its temporary object.
                let attr = match self.local_attr_in(&table, ino) {
                    Ok(Some(attr)) => attr,
                    _ => self.attr_of(ino, &meta),
                };
                Ok(attr)
            }
            Err(e) => {
                if e.kind == ErrorKind::NotFound {
                    self.inodes.lock().detach(parent, name);
                }
                Err(e.into())
            }
        }
    }

    pub async fn getattr(&self, caller: Caller, ino: u64) -> FsResult<Attr> {
        // One look at the table: an inode detached in between (replaced,
        // superseded) is answered from what was last known, not ENOENT.
        let path = {
            let table = self.inodes.lock();
            if let Some(attr) = self.local_attr_in(&table, ino)? {
                return Ok(attr);
            }
            table.path_of(ino)?
        };
        let asked = Instant::now();
        let meta = self.backend.stat(self.identity(caller), &path).await?;
        let mut table = self.inodes.lock();
        let refreshed = table.refresh(ino, meta.clone(), asked)?;
        self.relookup_split_names(&mut table);
        if refreshed == Refreshed::Superseded {
            // The kernel's entry still points here: make its next path walk
            // look the name up (and meet the new version's inode).
            self.invalidate_kernel_entry(&table, ino);
        }
        let inode = table.get(ino)?;
        // What is recorded now: the new metadata, or what the open
        // descriptors read (superseded), or a newer publish (outdated).
        let attr = match &inode.meta {
            Some((recorded, _)) => self.attr_of(ino, recorded),
            None => self.attr_of(ino, &meta),
        };
        Ok(Self::unlinked_view(inode, attr))
    }

    /// Change attributes. A size change is a write: it goes through a write
    /// session and is published at once unless the file is open for writing
    /// (then at close), so a truncate is as atomic as any write.
    pub async fn setattr(
        &self,
        caller: Caller,
        ino: u64,
        size: Option<u64>,
        changes: AttrChanges,
    ) -> FsResult<Attr> {
        self.check_writable()?;
        if let Some(size) = size {
            self.truncate(caller, ino, size).await?;
        }
        if !changes.is_empty() {
            let session = self.inodes.lock().get(ino)?.write.clone();
            let on_backend = match &session {
                Some(s) => {
                    s.set_attr(&changes).await?;
                    !s.is_new()
                }
                None => true,
            };
            if on_backend {
                let path = self.path_of(ino)?;
                let meta = self
                    .backend
                    .set_attr(self.identity(caller), &path, &changes)
                    .await?;
                self.inodes.lock().set_meta(ino, meta, Instant::now());
            }
        }
        self.getattr(caller, ino).await
    }

    async fn truncate(&self, caller: Caller, ino: u64, size: u64) -> FsResult<()> {
        let (kind, writers) = {
            let table = self.inodes.lock();
            let inode = table.get(ino)?;
            (inode.kind, inode.writers)
        };
        if kind == FileKind::Directory {
            return Err(FsError(libc::EISDIR));
        }
        let start = if size == 0 {
            WriteStart::Empty
        } else {
            WriteStart::CopyExisting
        };
        loop {
            let session = self.write_session(caller, ino, start).await?;
            match session.truncate(size).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    // truncate(2) on a path: nobody will close it, so the
                    // failed session (and its temporary object) goes now.
                    if writers == 0 {
                        let _ = self.publish(ino).await;
                    }
                    return Err(e);
                }
            }
        }
        if writers == 0 {
            // truncate(2) on a path: nobody will close it, publish now.
            self.publish(ino).await?;
        }
        Ok(())
    }

    pub async fn readlink(&self, caller: Caller, ino: u64) -> FsResult<String> {
        let path = self.path_of(ino)?;
        Ok(self.backend.readlink(self.identity(caller), &path).await?)
    }

    pub async fn statfs(&self, caller: Caller) -> FsResult<FsStats> {
        Ok(self.backend.statfs(self.identity(caller)).await?)
    }

    /// A new byte quota for the volume, live (CSI NodeExpandVolume sets
    /// the root's `user.cachalot.capacity`); root only.
    pub async fn set_capacity(&self, caller: Caller, bytes: u64) -> FsResult<()> {
        if caller.uid != 0 {
            return Err(FsError(libc::EPERM));
        }
        self.backend.set_capacity(bytes).await?;
        tracing::info!(capacity = bytes, "the volume's capacity changed");
        Ok(())
    }

    // ---- passthrough -----------------------------------------------------

    /// Called by the adapter once the kernel granted FUSE passthrough.
    pub fn activate_passthrough(&self) {
        self.passthrough_active.store(true, Ordering::Release);
    }

    pub fn passthrough_active(&self) -> bool {
        self.passthrough_active.load(Ordering::Acquire)
    }

    /// The open could not be served by passthrough: undo its passthrough
    /// state; `disable` stops offering passthrough on this mount (the kernel
    /// refused a backing file).
    pub fn passthrough_refused(&self, fh: u64, disable: bool) {
        if disable {
            self.passthrough_active.store(false, Ordering::Release);
        }
        if let Ok(handle) = self.file_handle(fh) {
            if handle.passthrough.swap(false, Ordering::AcqRel) {
                if let Ok(inode) = self.inodes.lock().get_mut(handle.ino) {
                    inode.passthrough_opens = inode.passthrough_opens.saturating_sub(1);
                }
            }
        }
    }

    /// A verified whole file for the inode's current version; starts the
    /// one-time verification in the background if it exists unverified.
    async fn whole_file_for(&self, path: &BackendPath, ino: u64) -> Option<std::fs::File> {
        let version = self
            .inodes
            .lock()
            .get(ino)
            .ok()?
            .meta
            .as_ref()
            .map(|(m, _)| m.version.0.clone())?;
        let key = crate::cache::PageKey {
            source: self.backend.cache_identity().to_string(),
            path: path.as_str().to_string(),
            version,
            index: 0,
        };
        let cache = Arc::clone(&self.cache);
        tokio::task::spawn_blocking(move || {
            let file = cache.verified_whole_file(&key);
            if file.is_none() && cache.has_whole(&key) {
                cache.verify_whole(&key);
            }
            file
        })
        .await
        .ok()
        .flatten()
    }

    /// After a read handle closes: if every page of the file is cached,
    /// assemble the whole file so later opens can use passthrough.
    fn assemble_in_background(&self, handle: &FileHandle) {
        let size = handle.size.load(Ordering::Acquire);
        if size == 0 {
            return;
        }
        let key = self.page_key(&handle.view(), 0);
        let stem = key.object_stem();
        if !self.assembling.lock().insert(stem.clone()) {
            return;
        }
        let (cache, assembling) = (Arc::clone(&self.cache), Arc::clone(&self.assembling));
        tokio::task::spawn_blocking(move || {
            // The last pages may still be on their way to disk (page writes
            // run in the background): retry briefly before giving up.
            for _ in 0..ASSEMBLY_ATTEMPTS {
                if cache.assemble_whole(&key, size) {
                    tracing::debug!(path = key.path, "assembled a whole file for passthrough");
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            assembling.lock().remove(&stem);
        });
    }

    fn file_handle(&self, fh: u64) -> FsResult<Arc<FileHandle>> {
        match self.handles.lock().get(&fh) {
            Some(Handle::File(h)) => Ok(Arc::clone(h)),
            _ => Err(FsError(libc::EBADF)),
        }
    }

    fn dir_handle(&self, fh: u64) -> FsResult<Arc<DirHandle>> {
        match self.handles.lock().get(&fh) {
            Some(Handle::Dir(h)) => Ok(Arc::clone(h)),
            _ => Err(FsError(libc::EBADF)),
        }
    }
}
