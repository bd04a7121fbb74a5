//! The read path: a file being written is read from its temporary object;
//! otherwise page by page from the page store, falling back to the backend
//! (and filling the store) on a miss.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::backend::{BackendPath, Identity, ObjectReader, VersionToken};
use crate::cache::PageKey;

use super::types::{FsError, FsResult};
use super::CachalotFs;

type PageCell = Arc<tokio::sync::OnceCell<Result<Arc<Vec<u8>>, FsError>>>;

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
}

/// Pages being fetched from the backend right now: concurrent misses on one
/// page (kernel readahead, parallel readers) wait for a single fetch.
#[derive(Default)]
pub struct InFlight(parking_lot::Mutex<HashMap<PageKey, PageCell>>);

pub struct FileHandle {
    pub ino: u64,
    pub writable: bool,
    /// Process that opened the handle: only its own close publishes.
    pub opener: u32,
    /// Served by FUSE passthrough: the kernel reads the whole file directly.
    pub passthrough: std::sync::atomic::AtomicBool,
    /// Path at open time: part of the cache key (the version token pins the
    /// content, the path only namespaces it).
    path: BackendPath,
    identity: Identity,
    /// Version the cache keys use; replaced by the reader's own version if
    /// the object changed since its attributes were fetched.
    version: parking_lot::Mutex<VersionToken>,
    /// Opened lazily, on the first miss: a fully cached file never touches
    /// the backend's data path.
    reader: tokio::sync::Mutex<Option<Arc<dyn ObjectReader>>>,
    /// Where a sequential reader will read next, and the current read-ahead
    /// window in pages.
    next_offset: AtomicU64,
    window: AtomicU64,
    /// Pages below this were already considered for read-ahead in the
    /// current sequential run: each page is checked (hash + stat) once, not
    /// on every read request.
    ahead_until: AtomicU64,
    /// Object size as known at open (or from the reader): read-ahead stops
    /// at end of file.
    pub(super) size: AtomicU64,
}

impl FileHandle {
    pub fn new(
        ino: u64,
        writable: bool,
        path: BackendPath,
        version: VersionToken,
        identity: Identity,
        size: u64,
        opener: u32,
    ) -> FileHandle {
        FileHandle {
            ino,
            writable,
            opener,
            passthrough: std::sync::atomic::AtomicBool::new(false),
            path,
            identity,
            version: parking_lot::Mutex::new(version),
            reader: tokio::sync::Mutex::new(None),
            next_offset: AtomicU64::new(0),
            window: AtomicU64::new(0),
            ahead_until: AtomicU64::new(0),
            size: AtomicU64::new(size),
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
    pub async fn read(self: &Arc<Self>, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let handle = self.file_handle(fh)?;
        let session = self.inodes.lock().get(handle.ino)?.write.clone();
        if let Some(session) = session {
            if let Some(data) = session.read(offset, size as usize).await? {
                return Ok(data);
            }
        }
        let window = handle.observe(offset, size as u64);
        let data = self.read_pages(&handle, offset, size as usize).await?;
        if window > 0 {
            self.read_ahead(&handle, offset + size as u64, window);
        }
        Ok(data)
    }

    /// Fetch the next `window` pages after `from` in the background, unless
    /// cached, already in flight, past end of file, or over the global bound.
    fn read_ahead(self: &Arc<Self>, handle: &Arc<FileHandle>, from: u64, window: u64) {
        let page_size = self.cache.page_size();
        let size = handle.size.load(Ordering::Acquire);
        let first = from.div_ceil(page_size);
        let start = first.max(handle.ahead_until.load(Ordering::Acquire));
        let mut considered = start;
        for index in start..first + window {
            if index * page_size >= size {
                break;
            }
            let key = self.page_key(handle, index);
            if self.inflight.0.lock().contains_key(&key) || self.cache.contains(&key) {
                considered = index + 1;
                continue;
            }
            let Ok(permit) = Arc::clone(&self.readahead_permits).try_acquire_owned() else {
                break;
            };
            considered = index + 1;
            let (fs, handle) = (Arc::clone(self), Arc::clone(handle));
            tokio::spawn(async move {
                let _ = fs.load_page_once(&handle, index, key).await;
                drop(permit);
            });
        }
        handle.ahead_until.fetch_max(considered, Ordering::AcqRel);
    }

    async fn read_pages(&self, handle: &FileHandle, offset: u64, size: usize) -> FsResult<Vec<u8>> {
        let page_size = self.cache.page_size();
        let mut out = Vec::with_capacity(size);
        let mut pos = offset;
        let end = offset + size as u64;
        while pos < end {
            let index = pos / page_size;
            let page = self.page(handle, index).await?;
            let within = (pos - index * page_size) as usize;
            if within >= page.len() {
                break; // end of file
            }
            let take = (page.len() - within).min((end - pos) as usize);
            out.extend_from_slice(&page[within..within + take]);
            pos += take as u64;
            if (page.len() as u64) < page_size {
                break; // short page: end of file
            }
        }
        Ok(out)
    }

    async fn page(&self, handle: &FileHandle, index: u64) -> FsResult<Arc<Vec<u8>>> {
        let key = self.page_key(handle, index);
        if let Some(page) = self.hot.get(&key) {
            self.cache.count_memory_hit();
            return Ok(page);
        }
        self.load_page_once(handle, index, key).await
    }

    pub(super) fn page_key(&self, handle: &FileHandle, index: u64) -> PageKey {
        PageKey {
            source: self.backend.describe().to_string(),
            path: handle.path.as_str().to_string(),
            version: handle.version.lock().0.clone(),
            index,
        }
    }

    /// Load a page from the page store, or else from the backend, once for
    /// all concurrent readers of it.
    async fn load_page_once(
        &self,
        handle: &FileHandle,
        index: u64,
        key: PageKey,
    ) -> FsResult<Arc<Vec<u8>>> {
        let cell = Arc::clone(self.inflight.0.lock().entry(key.clone()).or_default());
        cell.get_or_init(|| async {
            let cache = Arc::clone(&self.cache);
            let lookup = key.clone();
            let cached = tokio::task::spawn_blocking(move || cache.get(&lookup))
                .await
                .unwrap_or(None);
            if let Some(data) = cached {
                let data = Arc::new(data);
                self.hot.put(key.clone(), Arc::clone(&data));
                self.inflight.0.lock().remove(&key);
                return Ok(data);
            }
            match self.fetch_page(handle, index).await {
                Ok((stored_key, data)) => {
                    self.hot.put(stored_key.clone(), Arc::clone(&data));
                    // Store in the background (the application does not wait
                    // for the cache write), and keep the in-flight entry until
                    // the page is on disk so readers arriving meanwhile reuse
                    // this fetch instead of starting another.
                    let cache = Arc::clone(&self.cache);
                    let inflight = Arc::clone(&self.inflight);
                    let page = Arc::clone(&data);
                    tokio::task::spawn_blocking(move || {
                        cache.put(&stored_key, &page);
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

    /// Read one page from the backend; returns it with the key it belongs to
    /// (the version may have been refreshed by opening the reader).
    async fn fetch_page(
        &self,
        handle: &FileHandle,
        index: u64,
    ) -> FsResult<(PageKey, Arc<Vec<u8>>)> {
        let reader = self.reader(handle).await?;
        let page_size = self.cache.page_size();
        let data = reader
            .read_at(index * page_size, page_size as usize)
            .await
            .map_err(FsError::from)?;
        self.counters.backend_reads.fetch_add(1, Ordering::Relaxed);
        self.counters
            .backend_read_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok((self.page_key(handle, index), Arc::new(data)))
    }

    async fn reader(&self, handle: &FileHandle) -> FsResult<Arc<dyn ObjectReader>> {
        let mut slot = handle.reader.lock().await;
        if let Some(r) = slot.as_ref() {
            return Ok(Arc::clone(r));
        }
        let reader: Arc<dyn ObjectReader> = self
            .backend
            .open_read(handle.identity, &handle.path)
            .await?
            .into();
        {
            let mut version = handle.version.lock();
            handle.size.store(reader.size(), Ordering::Release);
            if *version != *reader.version() {
                tracing::debug!(path = %handle.path, "object changed since its attributes were read; using the new version");
                *version = reader.version().clone();
            }
        }
        *slot = Some(Arc::clone(&reader));
        Ok(reader)
    }
}
