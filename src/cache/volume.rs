//! One volume's handle on the node's page store: where its pages live
//! (`pages/<volume>/`, `files/<volume>/`), its page size and its own
//! counters; space and eviction are the store's.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::buffers::PageBuffer;

use super::counters::Counters;
use super::index::{now_millis, Entry, VolumeTag};
use super::open_pages::OpenPage;
use super::page::{self, PageFormatError, PageKey};
use super::page_file;
use super::scan::VOLUME_NAME_FILE;
use super::{CacheOpenError, CacheStats, CounterSnapshot, PageStore, PageStoreConfig};

mod whole_files;

/// A page's access time on disk is refreshed on a hit when older than
/// this: other processes order their evictions by it, and a write per
/// read would cost more than a coarse order.
const TOUCH_GRANULARITY: Duration = Duration::from_secs(30);

pub struct VolumeCache {
    store: Arc<PageStore>,
    tag: VolumeTag,
    page_size: u64,
    pages_dir: PathBuf,
    files_dir: PathBuf,
    counters: Arc<Counters>,
    /// Large pages go to the disk with O_DIRECT (see `page_file`).
    direct_writes: bool,
}

impl VolumeCache {
    /// Open the cache directory of `cfg` (shared with every other volume
    /// using it) for the volume whose backend identity is `identity`.
    pub fn open(cfg: PageStoreConfig, identity: &str) -> Result<Arc<VolumeCache>, CacheOpenError> {
        let (page_size, direct_writes) = (cfg.page_size, cfg.direct_writes);
        let store = PageStore::open(cfg)?;
        Ok(VolumeCache::with_writes(
            store,
            identity,
            page_size,
            direct_writes,
        ))
    }

    pub fn new(store: Arc<PageStore>, identity: &str, page_size: u64) -> Arc<VolumeCache> {
        VolumeCache::with_writes(store, identity, page_size, true)
    }

    fn with_writes(
        store: Arc<PageStore>,
        identity: &str,
        page_size: u64,
        direct_writes: bool,
    ) -> Arc<VolumeCache> {
        let tag = VolumeTag::of(identity, page_size);
        let pages_dir = store.cfg.dir.join("pages").join(tag.to_string());
        let files_dir = store.files_dir(tag);
        // The name lets `cache stats` say whose pages these are; without
        // it (unwritable cache) the volume still works.
        let _ = fs::create_dir_all(&pages_dir).and_then(|()| {
            let name = pages_dir.join(VOLUME_NAME_FILE);
            if name.exists() {
                return Ok(());
            }
            fs::write(name, format!("{identity}\npage size {page_size}\n"))
        });
        let counters = Arc::new(Counters::default());
        store.volumes.lock().push(Arc::downgrade(&counters));
        Arc::new(VolumeCache {
            store,
            tag,
            page_size,
            pages_dir,
            files_dir,
            counters,
            direct_writes,
        })
    }

    pub fn store(&self) -> &Arc<PageStore> {
        &self.store
    }

    pub fn tag(&self) -> VolumeTag {
        self.tag
    }

    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    pub fn dir(&self) -> &Path {
        self.store.dir()
    }

    pub fn index_ready(&self) -> bool {
        self.store.index_ready()
    }

    pub fn wait_index_ready(&self, timeout: Duration) -> bool {
        self.store.wait_index_ready(timeout)
    }

    pub(super) fn path_of(&self, stem: &str) -> PathBuf {
        super::page_path(&self.pages_dir, stem)
    }

    /// True if the page file exists (no verification): used to skip
    /// read-ahead of pages already cached.
    pub fn contains(&self, key: &PageKey) -> bool {
        self.path_of(&key.file_stem()).exists()
    }

    /// The page's data if it is cached and intact. Corrupt pages are removed
    /// (and counted) so the caller re-fetches and rewrites them.
    pub fn get(&self, key: &PageKey) -> Option<Vec<u8>> {
        self.get_bytes(key).map(Vec::from)
    }

    /// `get`, in the memory the file was read into (no copy of the data).
    pub fn get_bytes(&self, key: &PageKey) -> Option<Bytes> {
        let stem = key.file_stem();
        let path = self.path_of(&stem);
        let read = File::open(&path).and_then(|f| {
            let meta = f.metadata()?;
            Ok((f, meta))
        });
        let (f, meta) = match read {
            Ok(read) => read,
            Err(e) => return self.not_stored(key, &stem, &path, &e, |data| data),
        };
        // A damaged directory entry may be any size: never read more than
        // a page file can hold.
        if meta.len() > page::max_file_len(self.page_size) {
            self.drop_corrupt(stem, &path, meta.len(), &PageFormatError::TooLong);
            return None;
        }
        let file = match PageBuffer::read_at(&f, 0, meta.len() as usize) {
            Ok(file) => file,
            Err(e) => return self.not_stored(key, &stem, &path, &e, |data| data),
        };
        match page::decode(key, file.as_slice()) {
            Ok(data) => {
                // Where the data lies in the file (decode returns a part of it).
                let at = data.as_ptr() as usize - file.as_slice().as_ptr() as usize;
                let range = at..at + data.len();
                self.hit(stem, &f, &meta);
                Some(file.freeze().slice(range))
            }
            Err(why) => {
                self.drop_corrupt(stem, &path, file.len() as u64, &why);
                None
            }
        }
    }

    /// `len` bytes of the page's data from `offset_in_page` (fewer at the
    /// end of the data), if the page is cached and intact. Reads and
    /// verifies only the header and the checksum blocks the range touches,
    /// so a small read of a big page costs about its own size. Hits,
    /// misses and damaged pages are counted and handled as by
    /// [`VolumeCache::get`]: a damaged page is dropped whole, even if the
    /// requested blocks were intact, so the caller refetches and rewrites it.
    pub fn get_range(&self, key: &PageKey, offset_in_page: u64, len: usize) -> Option<Vec<u8>> {
        let stem = key.file_stem();
        if let Some(open) = self.store.open_pages.get(self.tag, &stem) {
            match open.file.metadata() {
                // Removed by another process sharing the directory: close it.
                Ok(meta) if meta.nlink() == 0 => self.store.open_pages.forget(self.tag, &stem),
                Ok(meta) => {
                    let read = open.header.read(&open.file, offset_in_page, len);
                    return self.range_read(stem, &open.file, &meta, read);
                }
                Err(_) => self.store.open_pages.forget(self.tag, &stem),
            }
        }
        let path = self.path_of(&stem);
        let opened = File::open(&path).and_then(|f| Ok((f.metadata()?, f)));
        let (meta, file) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                if let Some(part) = self.range_of_trusted_whole(key, offset_in_page, len) {
                    self.store.index.lock().pop(&stem);
                    self.counters.hits.fetch_add(1, Ordering::Relaxed);
                    return Some(part);
                }
                return self.not_stored(key, &stem, &path, &e, |data| {
                    let start = usize::try_from(offset_in_page)
                        .unwrap_or(usize::MAX)
                        .min(data.len());
                    let end = start.saturating_add(len).min(data.len());
                    data[start..end].to_vec()
                });
            }
        };
        let read = match page::read_header(&file, meta.len(), key) {
            Ok(Some(header)) => {
                let read = header.read(&file, offset_in_page, len);
                if let (true, Ok(file)) = (read.is_ok(), file.try_clone()) {
                    let open = OpenPage { file, header };
                    self.store.open_pages.put(self.tag, stem.clone(), open);
                }
                read
            }
            // v1: no block checksums, read whole.
            Ok(None) => page::read_range(&file, meta.len(), key, offset_in_page, len),
            Err(e) => Err(e),
        };
        self.range_read(stem, &file, &meta, read)
    }

    /// Count and handle the outcome of reading a range of the page file
    /// `file` (see `get_range`).
    fn range_read(
        &self,
        stem: String,
        file: &File,
        meta: &fs::Metadata,
        read: Result<Vec<u8>, page::RangeError>,
    ) -> Option<Vec<u8>> {
        match read {
            Ok(data) => {
                self.hit(stem, file, meta);
                Some(data)
            }
            Err(page::RangeError::Format(why)) => {
                let path = self.path_of(&stem);
                self.drop_corrupt(stem, &path, meta.len(), &why);
                None
            }
            Err(page::RangeError::Io(e)) => {
                // The file may be fine: leave it, read from the backend.
                self.store.open_pages.forget(self.tag, &stem);
                tracing::debug!(stem, error = %e, "page read failed; reading from backend");
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// A page file was served: count it, keep it in the index as just
    /// used, and refresh its access time on disk for other processes.
    fn hit(&self, stem: String, file: &File, meta: &fs::Metadata) {
        let known = self.store.index.lock().touch(&stem);
        if !known {
            // Written by another process, or not indexed yet.
            self.index_put(stem, meta.len());
        }
        let stale = meta
            .accessed()
            .ok()
            .and_then(|a| a.elapsed().ok())
            .is_none_or(|age| age > TOUCH_GRANULARITY);
        if stale {
            let _ = file.set_times(fs::FileTimes::new().set_accessed(SystemTime::now()));
        }
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
    }

    fn index_put(&self, name: String, size: u64) {
        self.store.index.lock().put(
            name,
            Entry {
                size,
                volume: self.tag,
                used: now_millis(),
            },
        );
    }

    /// No page file for `key` (or it cannot be opened): serve the page from
    /// a whole file if there is one (through `pick`), else count a miss.
    fn not_stored<T>(
        &self,
        key: &PageKey,
        stem: &str,
        path: &Path,
        e: &io::Error,
        pick: impl FnOnce(Bytes) -> T,
    ) -> Option<T> {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::debug!(path = %path.display(), error = %e, "page read failed; reading from backend");
        }
        self.store.index.lock().pop(stem);
        if let Some(data) = self.get_from_whole(key) {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Some(pick(data));
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Remove a damaged page file (counted; the first one is logged), so
    /// the caller's refetch rewrites it.
    fn drop_corrupt(&self, stem: String, path: &Path, file_len: u64, why: &PageFormatError) {
        let n = self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
        if n == 0 {
            tracing::warn!(path = %path.display(), %why, "dropping a corrupt cache page (further ones of this volume are only counted)");
        }
        self.store.index.lock().pop(&stem);
        self.store.open_pages.forget(self.tag, &stem);
        if fs::remove_file(path).is_ok() {
            let _ = self.store.ledger.release(file_len);
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Store a page. Atomic (temp file + rename): a crash never leaves a
    /// torn page under its final name. Space is reserved in the shared
    /// ledger first; when there is no room even after evicting, the page is
    /// simply not cached. Failures are logged once and counted.
    pub fn put(&self, key: &PageKey, data: &[u8]) {
        let direct = self.direct_writes
            && page_file::wants_direct(data)
            && self.store.direct_io_works.load(Ordering::Relaxed);
        let header = match direct {
            true => page::encode_aligned_header(key, data),
            false => page::encode_header(key, data),
        };
        let size = (header.len() + data.len()) as u64;
        if size > self.store.cfg.quota_bytes {
            return;
        }
        let Some(total) = self.store.make_room(size, &self.counters) else {
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let stem = key.file_stem();
        match self.write_page_file(&stem, &header, data, direct) {
            Ok(replaced) => {
                let total = match replaced {
                    Some(old) => {
                        let _ = self.store.ledger.release(old);
                        total.saturating_sub(old)
                    }
                    None => total,
                };
                self.index_put(stem, size);
                self.store.evict_if_total_above_high(total);
            }
            Err(e) => {
                let _ = self.store.ledger.release(size);
                self.store.note_write_error(&e, &self.counters);
            }
        }
    }

    /// Write the page file (`header`, then `data`, `direct`ly: see
    /// [`page_file`]); returns the size of a file it replaced.
    ///
    /// The common case costs four system calls: create, write, rename
    /// (refusing to replace), close (four more with O_DIRECT: a write for
    /// the header, three `fcntl`s); the fan-out directory is made only when
    /// the create finds it missing.
    fn write_page_file(
        &self,
        stem: &str,
        header: &[u8],
        data: &[u8],
        direct: bool,
    ) -> io::Result<Option<u64>> {
        let final_path = self.path_of(stem);
        let dir = final_path.parent().unwrap_or(&self.pages_dir);
        let seq = self.store.temp_seq.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!(".{stem}.{}.{seq}.tmp", process_id()));
        let result = (|| {
            let direct = direct.then_some(&self.store.direct_io_works);
            page_file::write_new(dir, &temp, header, data, direct)?;
            // A page is rarely stored twice; when it is, the size of the
            // file it replaces goes back to the ledger. (EINVAL: a cache
            // filesystem without RENAME_NOREPLACE.)
            match page_file::rename_noreplace(&temp, &final_path) {
                Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::EINVAL)) => {}
                done => return done.map(|()| None),
            }
            let replaced = fs::metadata(&final_path).ok().map(|m| m.len());
            fs::rename(&temp, &final_path)?;
            // The replaced file's blocks are freed once closed.
            self.store.open_pages.forget(self.tag, stem);
            Ok(replaced)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    /// A page not stored: the cache disk fell behind the backend.
    pub fn count_skipped(&self) {
        self.counters.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// A page was served from memory above the store (still a cache hit).
    pub fn count_memory_hit(&self) {
        self.counters.memory_hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> CacheStats {
        let c = self.counters.snapshot();
        let usage = self.store.index.lock().usage(self.tag);
        CacheStats {
            counters: CounterSnapshot {
                evictions: self.store.counters.evictions.load(Ordering::Relaxed),
                ..c
            },
            pages: usage.entries,
            volume_bytes: usage.bytes,
            bytes: self.store.ledger.total().unwrap_or(0),
            quota_bytes: self.store.cfg.quota_bytes,
            index_ready: self.store.index_ready(),
        }
    }

    pub fn persist_counters(&self) {
        self.store.persist_counters();
    }

    pub fn retire_counters(&self) {
        self.store.retire_counters();
    }
}

impl Drop for VolumeCache {
    fn drop(&mut self) {
        // The process's totals keep this volume's counts.
        let mut volumes = self.store.volumes.lock();
        volumes.retain(|v| !std::ptr::eq(v.as_ptr(), Arc::as_ptr(&self.counters)));
        self.store.counters.absorb_volume(&self.counters.snapshot());
    }
}

/// This process's id, asked of the kernel once (every stored page names
/// its temporary file with it; glibc does not cache it).
fn process_id() -> u32 {
    static ID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *ID.get_or_init(std::process::id)
}
