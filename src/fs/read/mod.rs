//! The read path: a file being written is read from its temporary object;
//! otherwise page by page from the page store, falling back to the backend
//! (and filling the store) on a miss.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::backend::{BackendPath, ErrorKind, Identity, ObjectReader, VersionToken};
use crate::cache::PageKey;

use super::types::{FsError, FsResult};
use super::CachalotFs;

type PageCell = Arc<tokio::sync::OnceCell<Result<Arc<Vec<u8>>, ReadError>>>;

/// Read-ahead window bounds, in pages: the window doubles with each
/// sequential read up to the maximum, and closes on a random read.
const READAHEAD_MAX_PAGES: u64 = 16;

/// Pages fetched ahead at once, over all handles: bounds the memory held by
/// read-ahead (each in-flight page is one page of memory).
pub const READAHEAD_GLOBAL_PAGES: usize = 64;

/// Memory for recently served pages, shared by all handles: the kernel
/// splits a page into several concurrent requests, and several pods often
/// read the same file, so each page file is read and verified once.
const HOT_PAGES_BYTES: u64 = 64 << 20;

pub struct HotPages(parking_lot::Mutex<lru::LruCache<PageKey, Arc<Vec<u8>>>>);

impl HotPages {
    pub fn new(page_size: u64) -> HotPages {
        let pages = (HOT_PAGES_BYTES / page_size).max(4) as usize;
        let cap = std::num::NonZeroUsize::new(pages).unwrap_or(std::num::NonZeroUsize::MIN);
        HotPages(parking_lot::Mutex::new(lru::LruCache::new(cap)))
    }

    fn get(&self, key: &PageKey) -> Option<Arc<Vec<u8>>> {
        self.0.lock().get(key).cloned()
    }

    fn put(&self, key: PageKey, page: Arc<Vec<u8>>) {
        self.0.lock().put(key, page);
    }

    #[cfg(test)]
    pub(super) fn clear(&self) {
        self.0.lock().clear();
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.lock().len()
    }
}

/// Pages being fetched from the backend right now: concurrent misses on one
/// page (kernel readahead, parallel readers) wait for a single fetch.
#[derive(Default)]
pub struct InFlight(parking_lot::Mutex<HashMap<PageKey, PageCell>>);

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
    /// current sequential run: each page is checked (hash + stat) once, not
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

    /// Update the sequential-read detector; returns the read-ahead window.
    fn observe(&self, offset: u64, len: u64) -> u64 {
        let sequential = self.next_offset.swap(offset + len, Ordering::AcqRel) == offset;
        if sequential {
            let w = self.window.load(Ordering::Acquire);
            let grown = (w * 2).clamp(1, READAHEAD_MAX_PAGES);
            self.window.store(grown, Ordering::Release);
            grown
        } else {
            self.window.store(0, Ordering::Release);
            self.ahead_until.store(0, Ordering::Release);
            0
        }
    }
}

impl CachalotFs {
    /// Pages being fetched from the backend right now (read-ahead and
    /// demand reads).
    pub fn fetches_in_flight(&self) -> usize {
        self.inflight.0.lock().len()
    }

    pub async fn read(self: &Arc<Self>, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let data = self.read_from_handle(fh, offset, size).await?;
        self.counters
            .read_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }

    async fn read_from_handle(
        self: &Arc<Self>,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> FsResult<Vec<u8>> {
        let handle = self.file_handle(fh)?;
        let (session, current) = {
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
            (inode.write.clone(), current)
        };
        if let Some(session) = session {
            if let Some(data) = session.read(offset, size as usize).await? {
                return Ok(data);
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
        Err(FsError(libc::ESTALE))
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

    /// The file was replaced behind the mount (another mount or node
    /// published a new version) and the handle's version is neither cached
    /// nor readable from the backend any more: as on NFS, the descriptor
    /// gets ESTALE (reopening reads the new version). The inode leaves the
    /// namespace so that the reopen gets a new inode.
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
        FsError(libc::ESTALE)
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
        if let Ok(inode) = self.inodes.lock().get_mut(handle.ino) {
            if inode.meta.as_ref().is_some_and(|(m, _)| m.version == *old) {
                inode.expire_meta();
            }
        }
        self.invalidate_kernel(handle.ino);
    }

    /// Fetch the next `window` pages after `from` in the background, unless
    /// cached, already in flight, past end of file, or over the global bound.
    fn read_ahead(self: &Arc<Self>, handle: &Arc<FileHandle>, view: &View, from: u64, window: u64) {
        let page_size = self.cache.page_size();
        let size = handle.size.load(Ordering::Acquire);
        let first = from.div_ceil(page_size);
        let start = first.max(handle.ahead_until.load(Ordering::Acquire));
        let mut considered = start;
        for index in start..first + window {
            if index * page_size >= size {
                break;
            }
            let key = self.page_key(view, index);
            if self.inflight.0.lock().contains_key(&key) || self.cache.contains(&key) {
                considered = index + 1;
                continue;
            }
            let Ok(permit) = Arc::clone(&self.readahead_permits).try_acquire_owned() else {
                break;
            };
            considered = index + 1;
            let (fs, handle, view) = (Arc::clone(self), Arc::clone(handle), view.clone());
            tokio::spawn(async move {
                let _ = fs.load_page_once(&handle, &view, index, key, true).await;
                drop(permit);
            });
        }
        handle.ahead_until.fetch_max(considered, Ordering::AcqRel);
    }

    /// `window` is the read-ahead window of this request: 0 for a random
    /// read.
    async fn read_pages(
        &self,
        handle: &FileHandle,
        view: &View,
        offset: u64,
        size: usize,
        window: u64,
    ) -> Result<Vec<u8>, ReadError> {
        let page_size = self.cache.page_size();
        let mut out = Vec::with_capacity(size);
        let mut pos = offset;
        let end = offset + size as u64;
        while pos < end {
            let index = pos / page_size;
            let within = pos - index * page_size;
            let want = (page_size - within).min(end - pos) as usize;
            let key = self.page_key(view, index);
            let page = match self.hot.get(&key) {
                Some(page) => {
                    self.cache.count_memory_hit();
                    page
                }
                // (A page being fetched right now: join that fetch below.)
                None if Self::wants_range(window, want, page_size)
                    && !self.inflight.0.lock().contains_key(&key) =>
                {
                    match self.stored_range(&key, within, want).await {
                        Some(part) => {
                            let short = part.len() < want;
                            pos += part.len() as u64;
                            out.extend_from_slice(&part);
                            if short {
                                break; // the page ends there: end of file
                            }
                            continue;
                        }
                        // Not stored (get_range counted the miss): fetch
                        // the whole page from the backend, once, unless a
                        // fetch that just finished left it in memory.
                        None => match self.hot.get(&key) {
                            Some(page) => page,
                            None => self.load_page_once(handle, view, index, key, false).await?,
                        },
                    }
                }
                None => self.load_page_once(handle, view, index, key, true).await?,
            };
            let within = within as usize;
            if within >= page.len() {
                break; // end of file
            }
            let take = (page.len() - within).min(want);
            out.extend_from_slice(&page[within..within + take]);
            pos += take as u64;
            if (page.len() as u64) < page_size {
                break; // short page: end of file
            }
        }
        Ok(out)
    }

    /// Whether to read only the needed part of a stored page rather than
    /// load it whole into HotPages: for random reads of a small part of a
    /// page, where reading and verifying the whole page (1 MiB by default)
    /// would cost far more than the request. Sequential readers load whole
    /// pages: their next requests use the rest of the page from memory.
    fn wants_range(window: u64, want: usize, page_size: u64) -> bool {
        window == 0 && (want as u64) < page_size / 2
    }

    /// `len` bytes at `within` of the page `key` from the page store, if
    /// stored (never partial data in HotPages).
    async fn stored_range(&self, key: &PageKey, within: u64, len: usize) -> Option<Vec<u8>> {
        let cache = Arc::clone(&self.cache);
        let key = key.clone();
        tokio::task::spawn_blocking(move || cache.get_range(&key, within, len))
            .await
            .unwrap_or(None)
    }

    pub(super) fn page_key(&self, view: &View, index: u64) -> PageKey {
        PageKey {
            source: self.backend.cache_identity().to_string(),
            path: view.path.as_str().to_string(),
            version: view.version.0.clone(),
            index,
        }
    }

    /// Load a page from the page store (unless `lookup` is false: the
    /// caller just found it missing), or else from the backend, once for all
    /// concurrent readers of it.
    async fn load_page_once(
        &self,
        handle: &FileHandle,
        view: &View,
        index: u64,
        key: PageKey,
        lookup: bool,
    ) -> Result<Arc<Vec<u8>>, ReadError> {
        let cell = Arc::clone(self.inflight.0.lock().entry(key.clone()).or_default());
        cell.get_or_init(|| async {
            let cache = Arc::clone(&self.cache);
            let stored = key.clone();
            let cached = if lookup {
                tokio::task::spawn_blocking(move || cache.get(&stored))
                    .await
                    .unwrap_or(None)
            } else {
                None
            };
            if let Some(data) = cached {
                let data = Arc::new(data);
                self.hot.put(key.clone(), Arc::clone(&data));
                self.inflight.0.lock().remove(&key);
                return Ok(data);
            }
            match self.fetch_page(handle, view, index).await {
                Ok(data) => {
                    self.hot.put(key.clone(), Arc::clone(&data));
                    // Store in the background (the application does not wait
                    // for the cache write), and keep the in-flight entry until
                    // the page is on disk so readers arriving meanwhile reuse
                    // this fetch instead of starting another.
                    let cache = Arc::clone(&self.cache);
                    let inflight = Arc::clone(&self.inflight);
                    let page = Arc::clone(&data);
                    tokio::task::spawn_blocking(move || {
                        cache.put(&key, &page);
                        inflight.0.lock().remove(&key);
                    });
                    Ok(data)
                }
                Err(e) => {
                    self.inflight.0.lock().remove(&key);
                    Err(e)
                }
            }
        })
        .await
        .clone()
    }

    /// Read one page of the view's version from the backend.
    async fn fetch_page(
        &self,
        handle: &FileHandle,
        view: &View,
        index: u64,
    ) -> Result<Arc<Vec<u8>>, ReadError> {
        let reader = self.reader(handle, view).await?;
        if *reader.version() != view.version {
            return Err(ReadError::Changed {
                version: reader.version().clone(),
                size: reader.size(),
            });
        }
        let page_size = self.cache.page_size();
        let data = match reader.read_at(index * page_size, page_size as usize).await {
            Ok(data) => data,
            // The object the reader has open changed in place (another
            // writer, behind the mount): what it reads now is not the
            // view's version. Which version is there decides (see `read`).
            Err(e) if e.kind == ErrorKind::Stale => {
                return Err(self.changed_in_place(handle, view).await);
            }
            Err(e) => return Err(FsError::from(e).into()),
        };
        self.counters.backend_reads.fetch_add(1, Ordering::Relaxed);
        self.counters
            .backend_read_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(Arc::new(data))
    }

    /// The reader of `view` found its object changed in place: forget that
    /// reader, and report the version the backend has now (`Changed`), or
    /// ESTALE if there is nothing to follow.
    async fn changed_in_place(&self, handle: &FileHandle, view: &View) -> ReadError {
        handle.reader.lock().take();
        if let Ok(inode) = self.inodes.lock().get_mut(handle.ino) {
            inode.reader = None;
        }
        match self.backend.stat(handle.identity, &view.path).await {
            Ok(meta) if meta.version != view.version => ReadError::Changed {
                version: meta.version,
                size: meta.size,
            },
            _ => {
                tracing::warn!(path = %view.path, ino = handle.ino,
                    "file changed in place behind the mount while open; this descriptor's version is gone (ESTALE)");
                ReadError::Fs(FsError(libc::ESTALE))
            }
        }
    }

    /// The reader another descriptor of the inode opened, if of `version`.
    fn shared_reader(&self, ino: u64, version: &VersionToken) -> Option<Arc<dyn ObjectReader>> {
        let table = self.inodes.lock();
        let shared = table.get(ino).ok()?.reader.as_ref()?;
        (shared.version() == version && !version.0.is_empty()).then(|| Arc::clone(shared))
    }

    /// The handle's backend reader, opened at the view's path if it has none.
    async fn reader(
        &self,
        handle: &FileHandle,
        view: &View,
    ) -> Result<Arc<dyn ObjectReader>, ReadError> {
        if let Some(r) = handle.reader.lock().as_ref() {
            return Ok(Arc::clone(r));
        }
        if let Some(r) = self.shared_reader(handle.ino, &view.version) {
            *handle.reader.lock() = Some(Arc::clone(&r));
            return Ok(r);
        }
        let opened = self.backend.open_read(handle.identity, &view.path).await;
        let elsewhere = match &opened {
            Ok(r) => !view.version.0.is_empty() && *r.version() != view.version,
            Err(e) => e.kind == ErrorKind::NotFound,
        };
        if elsewhere {
            // The file may have been unlinked or replaced while open: its
            // object moves to a hidden name (and another file may take the
            // old one). Wait for any such move to finish and follow the
            // inode's name: this request starts over there.
            drop(self.hidden_ops.lock().await);
            let now = self.inodes.lock().path_of(handle.ino).ok();
            match now {
                Some(path) if path != view.path => {
                    handle.set_path(path);
                    return Err(ReadError::Moved);
                }
                // Removed while open and not kept (a backend without cheap
                // renames): its data is gone, as for an NFS file deleted by
                // another client.
                None if opened.is_err() => return Err(FsError(libc::ESTALE).into()),
                _ => {}
            }
        }
        let reader: Arc<dyn ObjectReader> = opened.map_err(FsError::from)?.into();
        if *reader.version() == view.version {
            if let Ok(inode) = self.inodes.lock().get_mut(handle.ino) {
                inode.reader = Some(Arc::clone(&reader));
            }
        }
        let mut slot = handle.reader.lock();
        // Keep a reader another request opened meanwhile if it matches.
        match slot.as_ref() {
            Some(r) if r.version() == &view.version => Ok(Arc::clone(r)),
            _ => {
                *slot = Some(Arc::clone(&reader));
                Ok(reader)
            }
        }
    }
}
