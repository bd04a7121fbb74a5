//! The read path: a file being written is read from its temporary object;
//! otherwise page by page from the page store, falling back to the backend
//! (and filling the store) on a miss.
//!
//! This module holds a read request (served from one view of the file,
//! started over when the file's version changes or its object moves) and
//! the open file handle it reads through; its parts are the tiers a page
//! comes from and the read-ahead:
//! - `pages`: memory (`HotPages`), the page store, one fetch per page;
//! - `fetch`: the backend, through the handle's reader of its version;
//! - `ahead`: the sequential-read detector and background read-ahead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::{BackendPath, Identity, ObjectReader, VersionToken};

use super::types::{FsError, FsResult};
use super::CachalotFs;

mod ahead;
mod fetch;
mod inflight;
mod pages;
mod store;

pub use ahead::readahead_global_pages;
pub use inflight::InFlight;
pub use pages::HotPages;
pub use store::store_backlog_pages;

pub struct FileHandle {
    pub ino: u64,
    pub writable: bool,
    /// O_APPEND: writes go to the end of the file, wherever the kernel
    /// thinks it is.
    pub append: bool,
    /// Process that opened the handle: only its own close publishes.
    pub opener: u32,
    /// Served by FUSE passthrough: the kernel reads the whole file directly.
    pub passthrough: std::sync::atomic::AtomicBool,
    /// The opener closed its descriptor (FLUSH): the RELEASE that follows
    /// is asynchronous, so an unlink right after the close must not count
    /// this handle as open.
    pub closed_by_opener: std::sync::atomic::AtomicBool,
    pub(super) identity: Identity,
    /// What the handle reads now: the inode's backend path as of the last
    /// read (it follows renames) and the version of the content. The
    /// version token pins the content; the path only namespaces cache keys.
    pub(super) view: parking_lot::Mutex<View>,
    /// The inode version (from its metadata) the handle last followed: a
    /// newer one (a publish through this mount, a refresh after the TTL)
    /// moves the handle to it at its next read.
    pub(super) followed: parking_lot::Mutex<Option<VersionToken>>,
    /// The inode table's move counter when the view's path was last
    /// rebuilt.
    seen_moves: AtomicU64,
    /// Opened lazily, on the first miss: a fully cached file never touches
    /// the backend's data path. Always of the view's version.
    reader: parking_lot::Mutex<Option<Arc<dyn ObjectReader>>>,
    /// Where a sequential reader will read next, and the current read-ahead
    /// window in pages.
    next_offset: AtomicU64,
    window: AtomicU64,
    /// Pages below this were already considered for read-ahead in the
    /// current sequential run: each page is looked up once, not
    /// on every read request.
    ahead_until: AtomicU64,
    /// Object size of the view's version: read-ahead stops at end of file.
    pub(super) size: AtomicU64,
}

/// One consistent view of a file's content: every byte of one read request
/// comes from a single view.
#[derive(Clone)]
pub(super) struct View {
    pub path: BackendPath,
    pub version: VersionToken,
}

/// Why a page could not be served from the requested version.
#[derive(Clone, Debug)]
pub(super) enum ReadError {
    /// The backend holds another version than the view's (changed behind
    /// our back): the request starts over on the new version.
    Changed {
        version: VersionToken,
        size: u64,
    },
    /// The file's object moved to another name (its file was unlinked or
    /// replaced while open): the request starts over at the new name.
    Moved,
    Fs(FsError),
}

impl From<FsError> for ReadError {
    fn from(e: FsError) -> ReadError {
        ReadError::Fs(e)
    }
}

/// The write in progress on a file's inode, and the inode's version when
/// a handle has yet to follow it.
type ReadState = (
    Option<Arc<super::write::WriteSession>>,
    Option<(VersionToken, u64)>,
);

/// Restarts of one read request on a newer version before giving up.
const VERSION_RETRIES: usize = 3;

impl FileHandle {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ino: u64,
        writable: bool,
        append: bool,
        path: BackendPath,
        version: VersionToken,
        identity: Identity,
        size: u64,
        opener: u32,
    ) -> FileHandle {
        let followed = (!version.0.is_empty()).then(|| version.clone());
        FileHandle {
            ino,
            writable,
            append,
            opener,
            passthrough: std::sync::atomic::AtomicBool::new(false),
            closed_by_opener: std::sync::atomic::AtomicBool::new(false),
            identity,
            view: parking_lot::Mutex::new(View { path, version }),
            followed: parking_lot::Mutex::new(followed),
            seen_moves: AtomicU64::new(u64::MAX),
            reader: parking_lot::Mutex::new(None),
            next_offset: AtomicU64::new(0),
            window: AtomicU64::new(0),
            ahead_until: AtomicU64::new(0),
            size: AtomicU64::new(size),
        }
    }

    pub fn identity(&self) -> Identity {
        self.identity
    }

    pub(super) fn view(&self) -> View {
        self.view.lock().clone()
    }

    fn set_path(&self, path: BackendPath) {
        self.view.lock().path = path;
    }

    /// Whether the inode's version is one the handle has not followed yet.
    fn is_new_to(&self, version: &VersionToken) -> bool {
        !version.0.is_empty() && self.followed.lock().as_ref() != Some(version)
    }

    /// Move to the inode's current version.
    fn follow(&self, version: VersionToken, size: u64) {
        self.switch_to(&version, size);
        *self.followed.lock() = Some(version);
    }

    /// Read `version` from now on (a reader of another version is dropped).
    fn switch_to(&self, version: &VersionToken, size: u64) {
        let mut view = self.view.lock();
        if view.version == *version {
            return;
        }
        view.version = version.clone();
        self.size.store(size, Ordering::Release);
        self.ahead_until.store(0, Ordering::Release);
        let mut reader = self.reader.lock();
        if reader.as_ref().is_some_and(|r| r.version() != version) {
            *reader = None;
        }
    }
}

impl CachalotFs {
    pub async fn read(self: &Arc<Self>, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let data = self.read_from_handle(fh, offset, size).await?;
        self.counters
            .read_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }

    /// A read answered at once on the caller's thread (no hand-off to the
    /// runtime), when every page it needs is in memory and the file needs
    /// nothing from the backend (no write in progress, no newer version to
    /// follow): a sequential reader behind its read-ahead, or several
    /// readers of one file. `None`: nothing was done, take `read`.
    pub fn read_from_memory(self: &Arc<Self>, fh: u64, offset: u64, size: u32) -> Option<Bytes> {
        let handle = self.file_handle(fh).ok()?;
        match self.read_state(&handle).ok()? {
            (None, None) => {}
            _ => return None,
        }
        let view = handle.view();
        let data = self.pages_in_memory(&view, offset, size as usize)?;
        let window = handle.observe(offset, u64::from(size));
        if window > 0 {
            self.read_ahead(&handle, &view, offset + u64::from(size), window);
        }
        self.counters
            .read_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Some(data)
    }

    /// What a read of the handle must deal with first: the write in
    /// progress on its inode, and the inode's version if the handle has
    /// not followed it yet. Keeps the handle's path up to date.
    fn read_state(&self, handle: &FileHandle) -> FsResult<ReadState> {
        let table = self.inodes.lock();
        let inode = table.get(handle.ino)?;
        let moves = table.moves();
        if handle.seen_moves.swap(moves, Ordering::AcqRel) != moves {
            // An unlinked file without a hidden object keeps its last path.
            if let Ok(path) = table.path_of(handle.ino) {
                handle.set_path(path);
            }
        }
        let current = inode
            .meta
            .as_ref()
            .filter(|(m, _)| handle.is_new_to(&m.version))
            .map(|(m, _)| (m.version.clone(), m.size));
        Ok((inode.write.clone(), current))
    }

    async fn read_from_handle(
        self: &Arc<Self>,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> FsResult<Bytes> {
        let handle = self.file_handle(fh)?;
        let (session, current) = self.read_state(&handle)?;
        if let Some(session) = session {
            if let Some(data) = session.read(offset, size as usize).await? {
                return Ok(Bytes::from(data));
            }
        }
        if let Some((version, size)) = current {
            handle.follow(version, size);
        }
        let window = handle.observe(offset, size as u64);
        for _ in 0..VERSION_RETRIES {
            let view = handle.view();
            match self
                .read_pages(&handle, &view, offset, size as usize, window)
                .await
            {
                Ok(data) => {
                    if window > 0 {
                        self.read_ahead(&handle, &view, offset + size as u64, window);
                    }
                    return Ok(data);
                }
                Err(ReadError::Changed { version, size }) => {
                    // A handle rebuilt after a crash does not know the
                    // version it opened: it reads the one it finds.
                    let unknown = view.version.0.is_empty();
                    if !unknown && !self.inode_follows(&handle, &version) {
                        // Publishes through this mount in quick succession:
                        // the backend showed one the inode has moved past.
                        if let Some((newer, size)) = self.inode_moved_on(&handle, &view) {
                            handle.follow(newer, size);
                            continue;
                        }
                        return Err(self.replaced_behind(&handle, &view));
                    }
                    self.version_changed(&handle, &view.version, &version, size)
                }
                Err(ReadError::Moved) => {}
                Err(ReadError::Fs(e)) => return Err(e),
            }
        }
        tracing::warn!(
            ino = handle.ino,
            "the object keeps changing while being read"
        );
        Err(FsError::new(libc::ESTALE))
    }

    /// Whether `version`, found in the backend at the handle's path, is one
    /// the inode moves to: what this mount published (its metadata), or a
    /// publish through this mount finishing right now.
    fn inode_follows(&self, handle: &FileHandle, version: &VersionToken) -> bool {
        let table = self.inodes.lock();
        let Ok(inode) = table.get(handle.ino) else {
            return false;
        };
        inode.write.is_some()
            || inode
                .meta
                .as_ref()
                .is_some_and(|(m, _)| m.version == *version)
    }

    /// The inode's version, if this mount recorded one since the view's
    /// (a publish through it): the handle follows that one.
    fn inode_moved_on(&self, handle: &FileHandle, view: &View) -> Option<(VersionToken, u64)> {
        let table = self.inodes.lock();
        let (meta, _) = table.get(handle.ino).ok()?.meta.as_ref()?;
        (!meta.version.0.is_empty() && meta.version != view.version)
            .then(|| (meta.version.clone(), meta.size))
    }

    /// The file was replaced behind the mount (another mount or node
    /// published a new version) and the handle's version is neither cached
    /// nor readable from the backend any more: as on NFS, the descriptor
    /// gets ESTALE (reopening reads the new version). The inode leaves the
    /// namespace and is marked gone, so that the application's reopen,
    /// which may still meet this inode in the kernel's entry cache, gets
    /// ESTALE from OPEN and the kernel looks the name up again (once, at
    /// once) and finds the new inode.
    ///
    /// The kernel's entry is invalidated too, but never waited for here:
    /// the kernel takes the directory's lock for it, and a `getdents` may
    /// hold that lock while waiting for a page lock of this file, which the
    /// kernel holds until this READ is answered (a deadlock that hung a
    /// stress of renames, reads and listings).
    fn replaced_behind(&self, handle: &FileHandle, view: &View) -> FsError {
        tracing::warn!(
            path = %view.path,
            ino = handle.ino,
            "file replaced behind the mount while open; this descriptor's version is gone (ESTALE, reopen to read the new one)"
        );
        let mut table = self.inodes.lock();
        if table.get(handle.ino).is_ok_and(|i| i.attached && !i.hidden) {
            self.invalidate_kernel_entry(&table, handle.ino);
            table.supersede(handle.ino);
        }
        if let Ok(inode) = table.get_mut(handle.ino) {
            inode.version_gone = inode.superseded;
        }
        FsError::new(libc::ESTALE)
    }

    /// The backend has another version than the handle read so far: move
    /// the handle, mark the inode's metadata stale (a getattr refetches it)
    /// and drop the kernel's pages of the old version, so no later request
    /// mixes the two.
    fn version_changed(
        &self,
        handle: &FileHandle,
        old: &VersionToken,
        new: &VersionToken,
        size: u64,
    ) {
        tracing::debug!(
            ino = handle.ino,
            "the file has a new version (published through this mount); reading it"
        );
        handle.switch_to(new, size);
        {
            let mut table = self.inodes.lock();
            let outdated = table
                .get(handle.ino)
                .is_ok_and(|i| i.meta.as_ref().is_some_and(|(m, _)| m.version == *old));
            if outdated {
                table.expire(handle.ino);
            }
        }
        self.invalidate_kernel(handle.ino);
    }
}
