//! The filesystem core. It knows nothing of FUSE: the adapter in `fuse/`
//! translates kernel requests into calls here, and tests can drive it
//! directly. Reads go through the page store; writes go to a temporary
//! object in the backend that is published atomically on close/fsync.

mod copy;
mod dir;
mod inode;
pub mod journal;
mod process;
mod read;
pub mod snapshot;
#[cfg(test)]
mod snapshot_tests;
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
use crate::cache::PageStore;

use inode::{InodeTable, Refreshed};
use read::{FileHandle, HotPages, InFlight};
use unlinked::Keep;
use write::{Finished, WriteSession};

pub use dir::DirHandle;
pub use types::{Attr, Caller, FsConfig, FsError, FsResult, KernelCache, ListedEntry, ROOT_INO};

/// Tries to assemble a whole file after a read handle closed.
const ASSEMBLY_ATTEMPTS: u32 = 10;

/// Extended attribute on the mount root that returns the counters as JSON.
pub const STATS_XATTR: &str = "user.cachalot.stats";

#[derive(Default)]
pub struct Counters {
    pub backend_reads: AtomicU64,
    pub backend_read_bytes: AtomicU64,
    pub publishes: AtomicU64,
    pub publish_failures: AtomicU64,
}

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
    cache: Arc<PageStore>,
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
        cache: Arc<PageStore>,
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
        let gid = self.cfg.mount_group.unwrap_or(caller.gid);
        let groups = self.groups.groups_of(caller.pid, caller.uid);
        Identity::new(caller.uid, gid).with_groups(groups)
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

    /// Counters as JSON, served as an extended attribute of the mount root.
    pub fn stats_json(&self) -> String {
        let c = self.cache.stats();
        serde_json::json!({
            "backend": self.backend.describe(),
            "backend_reads": self.counters.backend_reads.load(Ordering::Relaxed),
            "backend_read_bytes": self.counters.backend_read_bytes.load(Ordering::Relaxed),
            "publishes": self.counters.publishes.load(Ordering::Relaxed),
            "publish_failures": self.counters.publish_failures.load(Ordering::Relaxed),
            "cache_hits": c.hits,
            "cache_memory_hits": c.memory_hits,
            "cache_misses": c.misses,
            "cache_pages": c.pages,
            "cache_bytes": c.bytes,
            "cache_quota_bytes": c.quota_bytes,
            "evictions": c.evictions,
            "corrupt_pages": c.corrupt_pages,
            "cache_write_errors": c.write_errors,
            "cache_skipped_pages": c.skipped_pages,
            "cache_index_ready": c.index_ready,
        })
        .to_string()
    }

    // ---- namespace changes ---------------------------------------------

    pub async fn mkdir(
        &self,
        caller: Caller,
        parent: u64,
        name: &str,
        mode: u32,
    ) -> FsResult<Attr> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        let meta = self
            .backend
            .mkdir(self.identity(caller), &path, mode)
            .await?;
        let ino = self
            .inodes
            .lock()
            .upsert_entry(parent, name, meta.clone(), Instant::now());
        Ok(self.attr_of(ino, &meta))
    }

    pub async fn rmdir(&self, caller: Caller, parent: u64, name: &str) -> FsResult<()> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        let id = self.identity(caller);
        let dir = self.inodes.lock().child(parent, name);
        if let Some(dir) = dir {
            self.evacuate_hidden(id, dir).await?;
        }
        self.backend.rmdir(id, &path).await?;
        self.inodes.lock().detach(parent, name);
        Ok(())
    }

    pub async fn unlink(&self, caller: Caller, parent: u64, name: &str) -> FsResult<()> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        let id = self.identity(caller);
        let removal = self.begin_removal(parent, name).await;
        if let Some(removal) = removal.as_ref().filter(|r| r.keeps_open_file()) {
            let hidden = self
                .keep_under_hidden_name(id, &path, removal, Keep::Move)
                .await?;
            self.record_hidden(id, removal, &hidden, |_| {}).await;
            return Ok(());
        }
        let session = {
            let table = self.inodes.lock();
            table
                .child(parent, name)
                .and_then(|ino| table.get(ino).ok())
                .and_then(|i| i.write.clone())
        };
        match &session {
            // Only a temporary object exists: nothing to remove in the
            // backend, except an object it replaced by a rename.
            Some(s) if s.is_new() => {
                if s.take_replaced() {
                    self.remove_replaced(id, &path).await?;
                }
            }
            _ => self.backend.unlink(id, &path).await?,
        }
        let (ino, named, first) = {
            let mut table = self.inodes.lock();
            let first = table
                .child(parent, name)
                .and_then(|ino| table.get(ino).ok())
                .is_some_and(|i| i.is_named(parent, name));
            let ino = table.detach(parent, name);
            let named = ino
                .and_then(|i| table.get(i).ok())
                .is_some_and(|i| i.attached);
            (ino, named, first)
        };
        match (ino, named) {
            // With another name left, the file's write goes on under it.
            (Some(ino), true) if first => self.follow_first_name(ino, &path).await?,
            (Some(_), true) => {}
            _ => {
                if let Some(s) = session {
                    s.orphan();
                }
            }
        }
        Ok(())
    }

    /// Delete the backend object a new file replaced by rename before it was
    /// published: its name has moved on, so nothing will replace it now.
    async fn remove_replaced(&self, id: Identity, path: &BackendPath) -> FsResult<()> {
        match self.backend.unlink(id, path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn rename(
        &self,
        caller: Caller,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        no_replace: bool,
    ) -> FsResult<()> {
        self.check_writable()?;
        let from = self.child_path(parent, name)?;
        let to = self.child_path(new_parent, new_name)?;
        let id = self.identity(caller);
        let (source, target, from_first, to_first) = {
            let table = self.inodes.lock();
            let (source, target) = (table.child(parent, name), table.child(new_parent, new_name));
            let first = |ino: Option<u64>, p: u64, n: &str| {
                ino.and_then(|i| table.get(i).ok())
                    .is_none_or(|i| i.is_named(p, n))
            };
            (
                source,
                target,
                first(source, parent, name),
                first(target, new_parent, new_name),
            )
        };
        if source.is_some() && source == target {
            return Ok(()); // same inode: POSIX says do nothing
        }
        if let (Some(target), false) = (target, no_replace) {
            // A directory being replaced must look empty to the backend.
            let is_dir = self
                .inodes
                .lock()
                .get(target)
                .is_ok_and(|i| i.kind == FileKind::Directory);
            if is_dir {
                self.evacuate_hidden(id, target).await?;
            }
        }
        let removal = match no_replace {
            true => None,
            false => self.begin_removal(new_parent, new_name).await,
        };
        // An open file being replaced keeps its object for its handles.
        let kept = match removal.as_ref().filter(|r| r.keeps_open_file()) {
            Some(r) if self.backend.capabilities().hard_links => {
                let hidden = self.keep_under_hidden_name(id, &to, r, Keep::Link).await?;
                Some((r, hidden))
            }
            Some(r) => {
                // Without hard links the name is briefly missing.
                let hidden = self.keep_under_hidden_name(id, &to, r, Keep::Move).await?;
                self.record_hidden(id, r, &hidden, |_| {}).await;
                None
            }
            None => None,
        };
        let (session, replaced) = {
            let table = self.inodes.lock();
            let session = table
                .child(parent, name)
                .and_then(|ino| table.get(ino).ok())
                .and_then(|i| i.write.clone());
            // A kept file's write session goes on under its hidden name,
            // a file with other names under those.
            let replaced = table
                .child(new_parent, new_name)
                .filter(|_| kept.is_none())
                .and_then(|ino| table.get(ino).ok())
                .filter(|i| i.links.is_empty())
                .and_then(|i| i.write.clone());
            (session, replaced)
        };
        let moved = self
            .rename_objects(
                id,
                (&from, from_first),
                &to,
                session.as_ref(),
                new_parent,
                new_name,
                no_replace,
            )
            .await;
        if let Err(e) = moved {
            if let Some((r, hidden)) = &kept {
                self.undo_keep(id, &to, r, hidden).await;
            }
            return Err(e);
        }
        if let Some(r) = replaced {
            r.orphan();
        }
        let rename_entry = |t: &mut InodeTable| t.rename(parent, name, new_parent, new_name);
        match &kept {
            Some((r, hidden)) => self.record_hidden(id, r, hidden, rename_entry).await,
            None => rename_entry(&mut self.inodes.lock()),
        }
        if let (Some(target), true, None) = (target, to_first, &kept) {
            self.follow_first_name(target, &to).await?;
        }
        Ok(())
    }

    /// A file with several names lost its first one (`old`), and another
    /// took its place: a write in progress keeps its temporary object next
    /// to the first name (where it is published, and where an rmdir of the
    /// old directory would otherwise find it), so it moves over.
    async fn follow_first_name(&self, ino: u64, old: &BackendPath) -> FsResult<()> {
        let (session, now) = {
            let table = self.inodes.lock();
            let inode = table.get(ino)?;
            match (&inode.write, inode.attached) {
                (Some(s), true) => (Arc::clone(s), table.path_of(ino)?),
                _ => return Ok(()),
            }
        };
        if now.parent() != old.parent() {
            session.retarget(old, &now).await?;
        }
        Ok(())
    }

    /// The backend side of a rename: a file being written for the first
    /// time exists only as its temporary object, which is retargeted (and
    /// replaces the target when it publishes); anything else is renamed.
    #[allow(clippy::too_many_arguments)]
    async fn rename_objects(
        &self,
        id: Identity,
        (from, from_first): (&BackendPath, bool),
        to: &BackendPath,
        session: Option<&Arc<WriteSession>>,
        new_parent: u64,
        new_name: &str,
        no_replace: bool,
    ) -> FsResult<()> {
        match session {
            Some(s) if s.is_new() => {
                if no_replace && self.exists(id, new_parent, new_name, to).await? {
                    return Err(FsError(libc::EEXIST));
                }
                let existing = match self.backend.stat(id, to).await {
                    Ok(meta) => Some(meta),
                    Err(e) if e.kind == ErrorKind::NotFound => None,
                    Err(e) => return Err(e.into()),
                };
                if existing
                    .as_ref()
                    .is_some_and(|m| m.kind == FileKind::Directory)
                {
                    return Err(FsError(libc::EISDIR));
                }
                s.retarget(from, to).await?;
                // Moving on from a name it had replaced: that object is gone
                // for good now.
                if s.take_replaced() {
                    self.remove_replaced(id, from).await?;
                }
                match existing {
                    // A file with other names loses this one now (its link
                    // count shows it at once); it lives on under the others.
                    Some(m) if m.nlink > 1 => self.remove_replaced(id, to).await?,
                    Some(_) => s.set_replaced(),
                    None => {}
                }
            }
            _ => {
                self.backend.rename(id, from, to, no_replace).await?;
                // Its temporary object is next to the file's first name
                // (see `follow_first_name`) and moves along with it.
                if let Some(s) = session.filter(|_| from_first) {
                    s.retarget(from, to).await?;
                }
            }
        }
        Ok(())
    }

    async fn exists(
        &self,
        id: Identity,
        parent: u64,
        name: &str,
        path: &BackendPath,
    ) -> FsResult<bool> {
        // Bind first: a guard in an `if let` scrutinee would live through the
        // body and deadlock local_attr's own lock.
        let known = self.inodes.lock().child(parent, name);
        if let Some(ino) = known {
            if self.local_attr(ino)?.is_some() {
                return Ok(true);
            }
        }
        match self.backend.stat(id, path).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn symlink(
        &self,
        caller: Caller,
        parent: u64,
        name: &str,
        target: &str,
    ) -> FsResult<Attr> {
        self.check_writable()?;
        if !self.backend.capabilities().symlinks {
            return Err(FsError(libc::EPERM));
        }
        let path = self.child_path(parent, name)?;
        let meta = self
            .backend
            .symlink(self.identity(caller), &path, target)
            .await?;
        let ino = self
            .inodes
            .lock()
            .upsert_entry(parent, name, meta.clone(), Instant::now());
        Ok(self.attr_of(ino, &meta))
    }

    pub async fn link(
        &self,
        caller: Caller,
        ino: u64,
        new_parent: u64,
        new_name: &str,
    ) -> FsResult<Attr> {
        self.check_writable()?;
        if !self.backend.capabilities().hard_links {
            return Err(FsError(libc::EPERM));
        }
        let existing = self.path_of(ino)?;
        let path = self.child_path(new_parent, new_name)?;
        // A file not published yet exists only as its temporary object:
        // publish it (as fsync would) so there is an object to link.
        let unpublished = self.inodes.lock().get(ino)?.write.clone();
        if unpublished.is_some_and(|w| w.is_new()) {
            self.publish(ino).await?;
        }
        let meta = self
            .backend
            .link(self.identity(caller), &existing, &path)
            .await?;
        // One inode, one more name: the kernel updates the link count and
        // ctime every name shows from this reply (a write in progress
        // reports its own size).
        let mut table = self.inodes.lock();
        table.add_link(ino, new_parent, new_name, meta.clone(), Instant::now());
        self.relookup_split_names(&mut table);
        match self.local_attr_in(&table, ino) {
            Ok(Some(attr)) => Ok(attr),
            _ => Ok(self.attr_of(ino, &meta)),
        }
    }

    /// mknod: regular files (published empty at once), and FIFOs, device
    /// nodes (`rdev` as `dev_t`) and sockets where the backend can store
    /// them (EPERM elsewhere, as on filesystems without them). Creating a
    /// device node takes CAP_MKNOD as always: the backend refuses it to
    /// anyone but root.
    pub async fn mknod(
        &self,
        caller: Caller,
        parent: u64,
        name: &str,
        mode: u32,
        rdev: u64,
    ) -> FsResult<Attr> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        let id = self.identity(caller);
        let special = match mode & libc::S_IFMT {
            libc::S_IFIFO => Some(SpecialFile::Fifo),
            libc::S_IFSOCK => Some(SpecialFile::Socket),
            libc::S_IFCHR => Some(SpecialFile::CharDevice(rdev)),
            libc::S_IFBLK => Some(SpecialFile::BlockDevice(rdev)),
            _ => None,
        };
        let meta = match mode & libc::S_IFMT {
            _ if special.is_some() && !self.backend.capabilities().special_files => {
                return Err(FsError(libc::EPERM));
            }
            _ if special.is_some() => {
                let node = special.ok_or(FsError(libc::EINVAL))?;
                self.backend.mknod(id, &path, node, mode & 0o7777).await?
            }
            libc::S_IFREG | 0 => {
                if self.exists(id, parent, name, &path).await? {
                    return Err(FsError(libc::EEXIST));
                }
                let pending = self
                    .backend
                    .begin_write(id, &path, WriteStart::Empty, mode & 0o7777)
                    .await?;
                match pending.publish(&path).await {
                    Ok(meta) => meta,
                    Err(e) => {
                        pending.abort(&path).await;
                        return Err(e.into());
                    }
                }
            }
            _ => return Err(FsError(libc::EINVAL)),
        };
        let ino = self
            .inodes
            .lock()
            .upsert_entry(parent, name, meta.clone(), Instant::now());
        Ok(self.attr_of(ino, &meta))
    }

    // ---- files ---------------------------------------------------------

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// Open an existing file. `truncate` is O_TRUNC (atomic with the open,
    /// FUSE_ATOMIC_O_TRUNC): the file is emptied in a write session and
    /// published at close, so readers never see it empty in between.
    pub async fn open(&self, caller: Caller, ino: u64, mode: OpenMode) -> FsResult<Opened> {
        let OpenMode {
            writable,
            truncate,
            append,
        } = mode;
        if writable || truncate {
            self.check_writable()?;
        }
        // An inode that lost its name (replaced by a rename, unlinked) and
        // whose data is gone: ESTALE makes the kernel look the path up again
        // and open what is there now, instead of failing with ENOENT.
        let path = loop {
            // An unlink or rename over this file is deciding whether open
            // handles keep its object: wait for it, so this open is either
            // counted (and kept) or finds the name gone.
            let settled = self.namespace_settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            {
                let mut table = self.inodes.lock();
                let path = match table.path_of(ino) {
                    Ok(path) => path,
                    // Replaced behind the mount after the kernel looked it
                    // up: open the version that lookup saw.
                    Err(_) if table.get(ino)?.superseded => table.last_path(ino)?,
                    Err(_) => return Err(FsError(libc::ESTALE)),
                };
                let inode = table.get_mut(ino)?;
                if inode.replacing == 0 {
                    inode.opening += 1;
                    if writable {
                        inode.writers += 1;
                    }
                    break path;
                }
            }
            settled.await;
        };
        let mut opening = OpeningGuard {
            fs: self,
            ino,
            writer: writable,
            opened: false,
        };
        let attr = self.getattr(caller, ino).await?;
        if attr.kind == FileKind::Directory {
            return Err(FsError(libc::EISDIR));
        }
        if truncate {
            loop {
                let session = self.write_session(caller, ino, WriteStart::Empty).await?;
                if session.truncate(0).await? {
                    break;
                }
            }
            // O_RDONLY|O_TRUNC truncates too (as Linux does); no writer will
            // close this handle, so publish now unless a writer is open.
            let writers = self.inodes.lock().get(ino)?.writers;
            if !writable && writers == 0 {
                self.publish(ino).await?;
            }
        }
        let wants_passthrough = self.passthrough_active() && !writable && !truncate;
        let whole = match (wants_passthrough, &attr) {
            (true, a) if a.size > 0 => self.whole_file_for(&path, ino).await,
            _ => None,
        };
        let (version, keep_cache, passthrough) = {
            let mut table = self.inodes.lock();
            let inode = table.get_mut(ino)?;
            // If the revalidation above found the file replaced behind the
            // mount (and superseded this inode for its open descriptors),
            // this open still reads the version its lookup saw: as if it had
            // happened just before the replacement.
            // Passthrough only if every other open of the inode is
            // passthrough too; otherwise the kernel would refuse the open.
            let passthrough = if !wants_passthrough || inode.write.is_some() {
                Passthrough::No
            } else if inode.passthrough_opens > 0 {
                Passthrough::Reuse
            } else {
                match whole {
                    Some(file) if inode.open_handles == 0 => Passthrough::New(file),
                    _ => Passthrough::No,
                }
            };
            let version = inode.meta.as_ref().map(|(m, _)| m.version.clone());
            inode.open_handles += 1;
            // Its writer count, taken at the start, now belongs to the handle.
            opening.opened = true;
            if !matches!(passthrough, Passthrough::No) {
                inode.passthrough_opens += 1;
            }
            let keep =
                inode.write.is_none() && version.is_some() && inode.last_open_version == version;
            inode.last_open_version = version.clone();
            (
                version.unwrap_or(VersionToken(String::new())),
                keep,
                passthrough,
            )
        };
        let fh = self.new_fh();
        let handle = FileHandle::new(
            ino,
            writable,
            append,
            path,
            version,
            self.identity(caller),
            attr.size,
            process::process_of(caller.pid),
        );
        if !matches!(passthrough, Passthrough::No) {
            handle.passthrough.store(true, Ordering::Release);
        }
        self.add_handle(fh, Handle::File(Arc::new(handle)));
        Ok(Opened {
            fh,
            keep_cache,
            passthrough,
        })
    }

    /// Create and open a new file. Nothing appears under the final name
    /// until the first close/fsync publishes it.
    pub async fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &str,
        mode: u32,
        exclusive: bool,
        open_mode: OpenMode,
    ) -> FsResult<(Attr, Opened)> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        let id = self.identity(caller);
        // One create at a time per directory: two racing creators of a name
        // must not both start a temporary object for it.
        let gate = self.session_gate(parent);
        let held = gate.lock().await;
        if self.exists(id, parent, name, &path).await? {
            drop(held);
            if exclusive {
                return Err(FsError(libc::EEXIST));
            }
            let attr = self.lookup(caller, parent, name).await?;
            let opened = self.open(caller, attr.ino, open_mode).await?;
            return Ok((attr, opened));
        }
        let pending = self
            .backend
            .begin_write(id, &path, WriteStart::Empty, mode & 0o7777)
            .await?;
        let now = SystemTime::now();
        let base = Metadata {
            kind: FileKind::File,
            size: 0,
            mode: mode & 0o7777,
            uid: id.uid,
            gid: id.gid,
            nlink: 1,
            atime: now,
            mtime: now,
            ctime: now,
            version: VersionToken(String::new()),
            object_id: pending.object_id(),
            rdev: 0,
        };
        let session = Arc::new(WriteSession::new(
            pending,
            id,
            true,
            base.clone(),
            path.clone(),
        ));
        let ino = {
            let mut table = self.inodes.lock();
            let ino = table.upsert_entry(parent, name, base.clone(), Instant::now());
            self.log_write_begin(ino, &session);
            let inode = table.get_mut(ino)?;
            inode.write = Some(session);
            // Nothing on the backend yet: its attributes are the session's.
            inode.meta = None;
            // The creating handle always publishes, even if opened O_RDONLY.
            inode.writers += 1;
            inode.open_handles += 1;
            ino
        };
        let fh = self.new_fh();
        let handle = FileHandle::new(
            ino,
            true,
            open_mode.append,
            path,
            VersionToken(String::new()),
            id,
            0,
            process::process_of(caller.pid),
        );
        self.add_handle(fh, Handle::File(Arc::new(handle)));
        Ok((
            self.attr_of(ino, &base),
            Opened {
                fh,
                keep_cache: false,
                passthrough: Passthrough::No,
            },
        ))
    }

    fn session_gate(&self, ino: u64) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.session_gates.lock();
        // Drop gates nobody holds, so the map stays as small as the set of
        // files being opened for writing right now.
        gates.retain(|_, g| Arc::strong_count(g) > 1);
        Arc::clone(gates.entry(ino).or_default())
    }

    /// The inode's write session, started if needed. `start` decides what a
    /// new temporary object contains.
    async fn write_session(
        &self,
        caller: Caller,
        ino: u64,
        start: WriteStart,
    ) -> FsResult<Arc<WriteSession>> {
        if let Some(s) = self.inodes.lock().get(ino)?.write.clone() {
            return Ok(s);
        }
        let gate = self.session_gate(ino);
        let _gate = gate.lock().await;
        if let Some(s) = self.inodes.lock().get(ino)?.write.clone() {
            return Ok(s);
        }
        let path = self.path_of(ino)?;
        let id = self.identity(caller);
        let cached = self.inodes.lock().get(ino)?.meta.clone();
        let mut base_meta = match cached {
            Some((m, _)) => m,
            None => self.backend.stat(id, &path).await?,
        };
        let pending = self
            .backend
            .begin_write(id, &path, start, base_meta.mode)
            .await?;
        // A change of content by anyone but root drops setuid (and setgid
        // with group execute), as the kernel does for any write.
        let privileges = match base_meta.mode & libc::S_IXGRP {
            0 => libc::S_ISUID,
            _ => libc::S_ISUID | libc::S_ISGID,
        };
        if id.uid != 0 && base_meta.mode & privileges != 0 {
            base_meta.mode &= !privileges;
            let dropped = AttrChanges {
                mode: Some(base_meta.mode),
                ..AttrChanges::default()
            };
            if let Err(e) = pending.set_attr(&dropped).await {
                pending.abort(&path).await;
                return Err(e.into());
            }
        }
        let session = Arc::new(WriteSession::new(pending, id, false, base_meta, path));
        let mut table = self.inodes.lock();
        table.get_mut(ino)?.write = Some(Arc::clone(&session));
        self.log_write_begin(ino, &session);
        drop(table);
        Ok(session)
    }

    pub async fn write(&self, caller: Caller, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.check_writable()?;
        let handle = self.file_handle(fh)?;
        if !handle.writable {
            return Err(FsError(libc::EBADF));
        }
        // O_APPEND: the end of the file is ours to know. The kernel's offset
        // comes from its cached size, which may lag behind (another
        // descriptor's append, a short read); writing there would overwrite
        // acknowledged data.
        let at = if handle.append { None } else { Some(offset) };
        loop {
            let session = self
                .write_session(caller, handle.ino, WriteStart::CopyExisting)
                .await?;
            if let Some(written_at) = session.write(at, data).await? {
                if written_at != offset {
                    // The kernel copied the data into its cache at its
                    // offset: drop that view.
                    tracing::debug!(
                        ino = handle.ino,
                        kernel_offset = offset,
                        written_at,
                        "append placed at the real end of file"
                    );
                    self.invalidate_kernel(handle.ino);
                }
                return Ok(data.len() as u32);
            }
        }
    }

    /// Publish the inode's write session, if any. On failure the temporary
    /// object is gone, the final name untouched, and the errno returned.
    async fn publish(&self, ino: u64) -> FsResult<()> {
        let (session, path, linked) = {
            let table = self.inodes.lock();
            let inode = table.get(ino)?;
            let Some(session) = inode.write.clone() else {
                return Ok(());
            };
            if session.is_orphaned() && inode.open_handles > inode.closing {
                // Unlinked while open and never published: the data lives
                // in the session for the handles still open; it is
                // discarded with the last of them.
                return Ok(());
            }
            let path = table
                .last_path(ino)
                .unwrap_or_else(|_| session.last_target());
            // Replacing a file that has other names would cut it off them.
            let linked = inode.attached
                && (!inode.links.is_empty()
                    || inode.meta.as_ref().is_some_and(|(m, _)| m.nlink > 1));
            (session, path, linked)
        };
        let result = session.finish(&path, linked).await;
        let published = match &result {
            Ok(Finished::Published(meta)) => Some(meta.clone()),
            _ => None,
        };
        {
            let mut table = self.inodes.lock();
            if let Ok(inode) = table.get_mut(ino) {
                if inode
                    .write
                    .as_ref()
                    .is_some_and(|w| Arc::ptr_eq(w, &session))
                {
                    inode.write = None;
                    self.log(journal::Event::WriteEnd { ino });
                }
            }
            if let Some(meta) = published {
                // A hard-linked file written through here is a new object
                // under the name it was published to (see `set_meta`).
                table.set_meta(ino, meta, Instant::now());
                self.relookup_split_names(&mut table);
            }
        }
        match result {
            Ok(Finished::Published(_)) => {
                self.counters.publishes.fetch_add(1, Ordering::Relaxed);
                let deferred = session.take_deferred_times();
                if !deferred.is_empty() {
                    let meta = self
                        .backend
                        .set_attr(session.identity, &path, &deferred)
                        .await?;
                    self.inodes.lock().set_meta(ino, meta, Instant::now());
                }
                Ok(())
            }
            Ok(Finished::Nothing) => Ok(()),
            Err(e) => {
                // The kernel may hold pages of the data that was never
                // published.
                self.invalidate_kernel(ino);
                self.counters
                    .publish_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %path, errno = e.errno(),
                    "publish failed; the temporary file was removed and the final name is untouched");
                Err(e)
            }
        }
    }

    /// close(2) of one descriptor: publish what this handle wrote.
    ///
    /// A flush from another process than the opener is a forked child
    /// closing its inherited copy (typically at exec): publishing then would
    /// expose a half-written file, so it is left to the writer's own close or
    /// the last release.
    pub async fn flush(&self, caller: Caller, fh: u64) -> FsResult<()> {
        let handle = self.file_handle(fh)?;
        let by_opener = process::process_of(caller.pid) == handle.opener;
        if by_opener && !handle.closed_by_opener.swap(true, Ordering::AcqRel) {
            if let Ok(inode) = self.inodes.lock().get_mut(handle.ino) {
                inode.closing += 1;
            }
        }
        if !handle.writable {
            return Ok(());
        }
        if !by_opener {
            tracing::debug!(
                ino = handle.ino,
                pid = caller.pid,
                opener = handle.opener,
                "flush from another process; publish deferred to the writer's close"
            );
            return Ok(());
        }
        self.publish(handle.ino).await
    }

    /// fsync(2): publish now, whoever asks.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let handle = self.file_handle(fh)?;
        if handle.writable {
            self.publish(handle.ino).await?;
        }
        Ok(())
    }

    /// Last close of a handle. The last writer publishes anything still
    /// pending (e.g. writes through mmap) or discards an orphaned write.
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let handle = match self.remove_handle(fh) {
            Some(Handle::File(h)) => h,
            Some(Handle::Dir(_)) | None => return Ok(()),
        };
        let (last_writer, session) = {
            let mut table = self.inodes.lock();
            let Ok(inode) = table.get_mut(handle.ino) else {
                return Ok(());
            };
            inode.open_handles = inode.open_handles.saturating_sub(1);
            if inode.open_handles == 0 {
                inode.reader = None;
            }
            if handle.closed_by_opener.load(Ordering::Acquire) {
                inode.closing = inode.closing.saturating_sub(1);
            }
            if handle.writable {
                inode.writers = inode.writers.saturating_sub(1);
            }
            if handle.passthrough.load(Ordering::Acquire) {
                inode.passthrough_opens = inode.passthrough_opens.saturating_sub(1);
            }
            // A writable open in progress counts as a writer: the session
            // may be its O_TRUNC one, still empty.
            (
                inode.writers == 0 || (inode.open_handles == 0 && inode.opening == 0),
                inode.write.clone(),
            )
        };
        let mut result = Ok(());
        if last_writer && session.is_some() {
            result = self.publish(handle.ino).await;
        }
        if self.passthrough_active()
            && !handle.writable
            && !handle.passthrough.load(Ordering::Acquire)
        {
            self.assemble_in_background(&handle);
        }
        self.remove_hidden(handle.identity(), handle.ino).await;
        self.inodes.lock().maybe_drop(handle.ino);
        result
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
            source: self.backend.describe().to_string(),
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
