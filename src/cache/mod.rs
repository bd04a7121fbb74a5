//! The page store: fixed-size pages of backend objects kept as files on local
//! disk, checksummed, LRU-evicted inside a byte quota, shared by every mount
//! that points at the same cache directory and kept across restarts.
//!
//! The cache never fails an application read: any error of its own (disk
//! full, corrupt page, permission problem) makes it step aside, and the
//! caller reads from the backend.

mod counters;
mod ledger;
mod page;
mod whole;

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lru::LruCache;
use parking_lot::Mutex;
use serde::Serialize;

pub use counters::{collect as collect_counters, CounterSnapshot};
pub use page::{PageFormatError, PageKey};

use counters::Counters;
use ledger::Ledger;

/// Index entries of whole files are their object stem with this prefix.
const WHOLE_PREFIX: &str = "w:";

/// Page-file temporaries older than this belong to a crashed writer.
const STALE_TEMP_AGE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct PageStoreConfig {
    pub dir: PathBuf,
    /// Upper bound for the bytes of all page files (all processes together).
    pub quota_bytes: u64,
    pub page_size: u64,
    /// Start evicting above this fraction of the quota...
    pub high_watermark: f64,
    /// ...down to this fraction.
    pub low_watermark: f64,
    /// Never fill the cache disk beyond leaving this fraction free.
    pub min_free_fraction: f64,
}

impl PageStoreConfig {
    pub fn new(dir: PathBuf, quota_bytes: u64, page_size: u64) -> PageStoreConfig {
        PageStoreConfig {
            dir,
            quota_bytes,
            page_size,
            high_watermark: 0.95,
            low_watermark: 0.70,
            min_free_fraction: 0.05,
        }
    }

    fn high(&self) -> u64 {
        (self.quota_bytes as f64 * self.high_watermark).round() as u64
    }

    fn low(&self) -> u64 {
        (self.quota_bytes as f64 * self.low_watermark).round() as u64
    }
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct CacheStats {
    /// Page-file hits plus memory hits.
    pub hits: u64,
    pub memory_hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub corrupt_pages: u64,
    pub write_errors: u64,
    pub skipped_pages: u64,
    /// Pages this process knows of (all of them once the index is loaded).
    pub pages: u64,
    /// Bytes used by all processes sharing the directory.
    pub bytes: u64,
    pub quota_bytes: u64,
    pub index_ready: bool,
}

pub struct PageStore {
    cfg: PageStoreConfig,
    pages_dir: PathBuf,
    files_dir: PathBuf,
    /// Whole files this process checked completely: only those are handed
    /// to the kernel for passthrough.
    verified_whole: Mutex<HashSet<String>>,
    /// stem → size of the page file on disk, in LRU order.
    index: Mutex<LruCache<String, u64>>,
    ledger: Ledger,
    counters: Counters,
    temp_seq: AtomicU64,
    index_ready: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
#[error("cache directory {dir}: {source}")]
pub struct CacheOpenError {
    dir: String,
    source: io::Error,
}

impl PageStore {
    /// Open (or create) the store. The index of existing pages is rebuilt in
    /// a background thread: the mount is usable at once, and reads that come
    /// before the index is loaded still find their page files on disk.
    pub fn open(cfg: PageStoreConfig) -> Result<Arc<PageStore>, CacheOpenError> {
        let err = |source| CacheOpenError {
            dir: cfg.dir.display().to_string(),
            source,
        };
        let pages_dir = cfg.dir.join("pages");
        fs::create_dir_all(&pages_dir).map_err(err)?;
        let files_dir = cfg.dir.join("files");
        fs::create_dir_all(&files_dir).map_err(err)?;
        let ledger = Ledger::open(&cfg.dir).map_err(err)?;
        let _ = fs::write(cfg.dir.join("quota"), cfg.quota_bytes.to_string());
        let store = Arc::new(PageStore {
            pages_dir,
            files_dir,
            verified_whole: Mutex::new(HashSet::new()),
            index: Mutex::new(LruCache::unbounded()),
            ledger,
            counters: Counters::default(),
            temp_seq: AtomicU64::new(crate::backend::first_seq()),
            index_ready: AtomicBool::new(false),
            cfg,
        });
        let background = Arc::clone(&store);
        let spawned = std::thread::Builder::new()
            .name("cache-index".into())
            .spawn(move || background.rebuild_index());
        if spawned.is_err() {
            store.rebuild_index();
        }
        Ok(store)
    }

    pub fn page_size(&self) -> u64 {
        self.cfg.page_size
    }

    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }

    pub fn index_ready(&self) -> bool {
        self.index_ready.load(Ordering::Acquire)
    }

    /// Block until the background index rebuild finished (tests, tools).
    pub fn wait_index_ready(&self, timeout: Duration) -> bool {
        let start = std::time::Instant::now();
        while !self.index_ready() {
            if start.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    fn rebuild_index(&self) {
        let (found, total) = scan_dir(&self.cfg.dir);
        if let Ok(guard) = self.ledger.lock() {
            // The files on disk are the truth; this also repairs drift left
            // by a process that crashed between reserving and writing.
            let _ = guard.set(total);
        }
        {
            let mut index = self.index.lock();
            let mut merged = LruCache::unbounded();
            for (_, stem, size) in found {
                merged.put(stem, size);
            }
            // Pages touched since start are more recent than anything found.
            for (stem, size) in index.iter().rev() {
                merged.put(stem.clone(), *size);
            }
            *index = merged;
        }
        self.index_ready.store(true, Ordering::Release);
        self.evict_if_above_high();
        tracing::debug!(
            pages = self.index.lock().len(),
            bytes = total,
            "cache index loaded"
        );
    }

    fn path_of(&self, stem: &str) -> PathBuf {
        self.pages_dir.join(&stem[..2]).join(format!("{stem}.page"))
    }

    /// True if the page file exists (no verification): used to skip
    /// read-ahead of pages already cached.
    pub fn contains(&self, key: &PageKey) -> bool {
        self.path_of(&key.file_stem()).exists()
    }

    /// The page's data if it is cached and intact. Corrupt pages are removed
    /// (and counted) so the caller re-fetches and rewrites them.
    pub fn get(&self, key: &PageKey) -> Option<Vec<u8>> {
        let stem = key.file_stem();
        let path = self.path_of(&stem);
        let file = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => return self.not_stored(key, &stem, &path, &e, |data| data),
        };
        match page::decode(key, &file) {
            Ok(data) => {
                let data = data.to_vec();
                self.hit(stem, file.len() as u64);
                Some(data)
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
    /// [`PageStore::get`]: a damaged page is dropped whole, even if the
    /// requested blocks were intact, so the caller refetches and rewrites it.
    pub fn get_range(&self, key: &PageKey, offset_in_page: u64, len: usize) -> Option<Vec<u8>> {
        let stem = key.file_stem();
        let path = self.path_of(&stem);
        let opened = fs::File::open(&path).and_then(|f| Ok((f.metadata()?.len(), f)));
        let (file_len, file) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                return self.not_stored(key, &stem, &path, &e, |data| {
                    let start = usize::try_from(offset_in_page)
                        .unwrap_or(usize::MAX)
                        .min(data.len());
                    let end = start.saturating_add(len).min(data.len());
                    data[start..end].to_vec()
                })
            }
        };
        match page::read_range(&file, file_len, key, offset_in_page, len) {
            Ok(data) => {
                self.hit(stem, file_len);
                Some(data)
            }
            Err(page::RangeError::Format(why)) => {
                self.drop_corrupt(stem, &path, file_len, &why);
                None
            }
            Err(page::RangeError::Io(e)) => {
                // The file may be fine: leave it, read from the backend.
                tracing::debug!(path = %path.display(), error = %e, "page read failed; reading from backend");
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// A page file was served: count it and keep it in the index.
    fn hit(&self, stem: String, file_len: u64) {
        let mut index = self.index.lock();
        if index.get(&stem).is_none() {
            // Written by another process, or not indexed yet.
            index.put(stem, file_len);
        }
        drop(index);
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// No page file for `key` (or it cannot be opened): serve the page from
    /// a whole file if there is one (through `pick`), else count a miss.
    fn not_stored(
        &self,
        key: &PageKey,
        stem: &str,
        path: &Path,
        e: &io::Error,
        pick: impl FnOnce(Vec<u8>) -> Vec<u8>,
    ) -> Option<Vec<u8>> {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::debug!(path = %path.display(), error = %e, "page read failed; reading from backend");
        }
        self.index.lock().pop(stem);
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
            tracing::warn!(path = %path.display(), %why, "dropping a corrupt cache page (further ones are only counted)");
        }
        self.index.lock().pop(&stem);
        if fs::remove_file(path).is_ok() {
            let _ = self.ledger.release(file_len);
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
    }

    fn get_from_whole(&self, key: &PageKey) -> Option<Vec<u8>> {
        let meta = whole::read_meta(&self.files_dir, key)?;
        let data = whole::read_page(&self.files_dir, key, &meta);
        if data.is_some() {
            self.index
                .lock()
                .get(&format!("{WHOLE_PREFIX}{}", key.object_stem()));
        } else {
            // Damaged: drop it; the pages will be fetched again.
            self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
            self.drop_whole(&key.object_stem());
        }
        data
    }

    fn drop_whole(&self, stem: &str) {
        self.index.lock().pop(&format!("{WHOLE_PREFIX}{stem}"));
        self.verified_whole.lock().remove(stem);
        let freed = whole::remove(&self.files_dir, stem);
        if freed > 0 {
            let _ = self.ledger.release(freed);
        }
    }

    /// Assemble the object of `key` (all `size` bytes) into a whole file if
    /// every page is cached, then drop its page files. Returns true if a
    /// whole file exists afterwards.
    pub fn assemble_whole(&self, key: &PageKey, size: u64) -> bool {
        if whole::read_meta(&self.files_dir, key).is_some() {
            return true;
        }
        let ps = self.cfg.page_size;
        let pages = size.div_ceil(ps);
        if !(0..pages).all(|i| self.contains(&key.with_index(i))) || !self.make_room(size) {
            return false;
        }
        let assembled = whole::assemble(&self.files_dir, key, size, ps, |i| {
            let page_key = key.with_index(i);
            let path = self.path_of(&page_key.file_stem());
            let file = fs::read(path).ok()?;
            page::decode(&page_key, &file).ok().map(<[u8]>::to_vec)
        });
        let total = match assembled {
            Ok(total) => total,
            Err(e) => {
                let _ = self.ledger.release(size);
                tracing::debug!(error = %e, "could not assemble a whole file");
                return false;
            }
        };
        // The meta file is small; account it beyond the reservation.
        let _ = self.ledger.reserve(total - size, u64::MAX);
        let stem = key.object_stem();
        self.verified_whole.lock().insert(stem.clone());
        self.index
            .lock()
            .put(format!("{WHOLE_PREFIX}{stem}"), total);
        for i in 0..pages {
            let page_stem = key.with_index(i).file_stem();
            let entry = self.index.lock().pop(&page_stem);
            let path = self.path_of(&page_stem);
            let size = entry.or_else(|| fs::metadata(&path).ok().map(|m| m.len()));
            if fs::remove_file(&path).is_ok() {
                let _ = self.ledger.release(size.unwrap_or(0));
            }
        }
        true
    }

    /// The whole file of `key`'s object, opened, if this process verified it
    /// (see [`PageStore::verify_whole`]); for FUSE passthrough.
    pub fn verified_whole_file(&self, key: &PageKey) -> Option<fs::File> {
        let stem = key.object_stem();
        if !self.verified_whole.lock().contains(&stem) {
            return None;
        }
        let file = fs::File::open(whole::data_path(&self.files_dir, &stem)).ok()?;
        self.index.lock().get(&format!("{WHOLE_PREFIX}{stem}"));
        Some(file)
    }

    /// Check a whole file completely (once per process). A damaged one is
    /// removed. Returns true if it can be used for passthrough.
    pub fn verify_whole(&self, key: &PageKey) -> bool {
        let stem = key.object_stem();
        if self.verified_whole.lock().contains(&stem) {
            return true;
        }
        let Some(meta) = whole::read_meta(&self.files_dir, key) else {
            return false;
        };
        if whole::verify(&self.files_dir, key, &meta) {
            self.verified_whole.lock().insert(stem);
            true
        } else {
            self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(stem, "dropping a damaged whole file");
            self.drop_whole(&stem);
            false
        }
    }

    pub fn has_whole(&self, key: &PageKey) -> bool {
        whole::read_meta(&self.files_dir, key).is_some()
    }

    /// Store a page. Atomic (temp file + rename): a crash never leaves a
    /// torn page under its final name. Space is reserved in the shared
    /// ledger first; when there is no room even after evicting, the page is
    /// simply not cached. Failures are logged once and counted.
    pub fn put(&self, key: &PageKey, data: &[u8]) {
        let encoded = page::encode(key, data);
        let size = encoded.len() as u64;
        if size > self.cfg.quota_bytes {
            return;
        }
        if !self.make_room(size) {
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let stem = key.file_stem();
        match self.write_page_file(&stem, &encoded) {
            Ok(replaced) => {
                if let Some(old) = replaced {
                    let _ = self.ledger.release(old);
                }
                self.index.lock().put(stem, size);
                self.evict_if_above_high();
            }
            Err(e) => {
                let _ = self.ledger.release(size);
                self.note_write_error(&e);
            }
        }
    }

    fn note_write_error(&self, e: &io::Error) {
        let n = self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        if n == 0 {
            tracing::warn!(dir = %self.cfg.dir.display(), error = %e,
                "cannot write to the cache; reads go to the backend (further errors are only counted)");
        }
    }

    /// Reserve `size` bytes within the quota and above the disk floor,
    /// evicting down to the low watermark if needed.
    fn make_room(&self, size: u64) -> bool {
        for attempt in 0..2 {
            let disk_ok = self.disk_has_room(size);
            if disk_ok {
                match self.ledger.reserve(size, self.cfg.quota_bytes) {
                    Ok(true) => return true,
                    Ok(false) => {}
                    Err(e) => {
                        self.note_write_error(&e);
                        return false;
                    }
                }
            }
            if attempt == 0 {
                let target = self
                    .cfg
                    .low()
                    .min(self.cfg.quota_bytes.saturating_sub(size));
                self.evict_down_to(target, !disk_ok);
            }
        }
        false
    }

    fn disk_has_room(&self, size: u64) -> bool {
        match nix::sys::statvfs::statvfs(&self.cfg.dir) {
            Ok(v) => {
                let frag = v.fragment_size();
                let total = v.blocks() * frag;
                let avail = v.blocks_available() * frag;
                let floor = (total as f64 * self.cfg.min_free_fraction) as u64;
                avail.saturating_sub(size) >= floor
            }
            Err(_) => true,
        }
    }

    /// Write the page file; returns the size of a file it replaced.
    fn write_page_file(&self, stem: &str, encoded: &[u8]) -> io::Result<Option<u64>> {
        let final_path = self.path_of(stem);
        let dir = final_path.parent().unwrap_or(&self.pages_dir);
        fs::create_dir_all(dir)?;
        let seq = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!(".{stem}.{}.{seq}.tmp", std::process::id()));
        let result = (|| {
            let mut f = fs::File::create(&temp)?;
            f.write_all(encoded)?;
            let replaced = fs::metadata(&final_path).ok().map(|m| m.len());
            fs::rename(&temp, &final_path)?;
            Ok(replaced)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    fn evict_if_above_high(&self) {
        if self.ledger.total().is_ok_and(|t| t > self.cfg.high()) {
            self.evict_down_to(self.cfg.low(), false);
        }
    }

    /// Evict least recently used pages until the shared total is at most
    /// `target` (or, for the disk floor, until the disk has room again).
    fn evict_down_to(&self, target: u64, for_disk: bool) {
        loop {
            let total = match self.ledger.total() {
                Ok(t) => t,
                Err(_) => return,
            };
            let done = if for_disk {
                self.disk_has_room(self.cfg.page_size)
            } else {
                total <= target
            };
            if done {
                return;
            }
            let Some((stem, size)) = self.index.lock().pop_lru() else {
                return;
            };
            if let Some(object) = stem.strip_prefix(WHOLE_PREFIX) {
                self.verified_whole.lock().remove(object);
                let freed = whole::remove(&self.files_dir, object);
                if freed > 0 {
                    let _ = self.ledger.release(freed);
                    self.counters.evictions.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            // Only the process whose unlink succeeds releases the bytes.
            if fs::remove_file(self.path_of(&stem)).is_ok() {
                let _ = self.ledger.release(size);
                self.counters.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn stats(&self) -> CacheStats {
        let c = self.counters.snapshot();
        CacheStats {
            hits: c.hits,
            memory_hits: c.memory_hits,
            misses: c.misses,
            evictions: c.evictions,
            corrupt_pages: c.corrupt_pages,
            write_errors: c.write_errors,
            skipped_pages: c.skipped_pages,
            pages: self.index.lock().len() as u64,
            bytes: self.ledger.total().unwrap_or(0),
            quota_bytes: self.cfg.quota_bytes,
            index_ready: self.index_ready(),
        }
    }

    /// A page was served from memory above the store (still a cache hit).
    pub fn count_memory_hit(&self) {
        self.counters.memory_hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Persist this process's counters for `cachalot cache stats`.
    pub fn persist_counters(&self) {
        if let Err(e) = counters::persist(&self.cfg.dir, &self.counters.snapshot()) {
            tracing::debug!(error = %e, "could not persist cache counters");
        }
    }

    /// At clean shutdown: fold this process's counters into the totals.
    pub fn retire_counters(&self) {
        if let Err(e) = counters::retire(&self.cfg.dir, &self.counters.snapshot()) {
            tracing::debug!(error = %e, "could not retire cache counters");
        }
    }
}

/// Every page file and whole file of a cache directory (index names), oldest
/// access first, and their total size. Removes temporaries left by crashed
/// writers.
fn scan_dir(dir: &Path) -> (Vec<(SystemTime, String, u64)>, u64) {
    let mut found = Vec::new();
    let mut total = 0;
    let mut add = |used: SystemTime, name: String, size: u64| {
        total += size;
        found.push((used, name, size));
    };
    for (path, meta) in files_in(&dir.join("pages")) {
        let name = file_name(&path);
        // Only names we write (64 hex digits): a stray file must never
        // reach path_of or the ledger.
        if let Some(stem) = name.strip_suffix(".page").filter(|s| is_stem(s)) {
            add(access_time(&meta), stem.to_string(), meta.len());
        }
    }
    for (path, meta) in files_in(&dir.join("files")) {
        let name = file_name(&path);
        if let Some(stem) = name.strip_suffix(".data").filter(|s| is_stem(s)) {
            let meta_len = fs::metadata(path.with_extension("meta")).map(|m| m.len());
            match meta_len {
                Ok(meta_len) => add(
                    access_time(&meta),
                    format!("{WHOLE_PREFIX}{stem}"),
                    meta.len() + meta_len,
                ),
                // Data without meta: an interrupted assembly.
                Err(_) => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
    }
    found.sort();
    (found, total)
}

fn is_stem(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn access_time(meta: &fs::Metadata) -> SystemTime {
    meta.accessed()
        .or_else(|_| meta.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Regular files one level below `dir`'s subdirectories (the `xx/` fan-out),
/// removing stale temporaries on the way.
fn files_in(dir: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    let Ok(subdirs) = fs::read_dir(dir) else {
        return out;
    };
    for sub in subdirs.flatten() {
        let Ok(files) = fs::read_dir(sub.path()) else {
            continue;
        };
        for file in files.flatten() {
            let Ok(meta) = file.metadata() else { continue };
            let path = file.path();
            if file_name(&path).ends_with(".tmp") {
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .unwrap_or_default();
                if age > STALE_TEMP_AGE {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            out.push((path, meta));
        }
    }
    out
}

/// Summary of a cache directory for `cachalot cache stats`, computed from
/// the files (works whether or not mounts are running).
#[derive(Debug, Serialize)]
pub struct DirectorySummary {
    pub dir: String,
    /// Page files plus whole files.
    pub pages: u64,
    pub bytes: u64,
    pub quota_bytes: Option<u64>,
    pub counters: CounterSnapshot,
    pub processes_reporting: usize,
}

/// Why `dir` is not a cache directory `cache stats`/`cache clear` may
/// act on: missing, not a directory, or holding other things (never
/// written into: a mistyped path must not gain a `usage` file). An empty
/// directory is an empty cache.
pub fn not_a_cache(dir: &Path) -> Option<String> {
    let why = if !dir.exists() {
        "it does not exist"
    } else if !dir.is_dir() {
        "it is not a directory"
    } else {
        let empty = fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none());
        let ours = ["pages", "files", "quota", "usage", "stats"]
            .iter()
            .any(|marker| dir.join(marker).exists());
        if empty || ours {
            return None;
        }
        "it holds other files and no pages/, files/ or quota"
    };
    Some(format!("{} is not a cache directory: {why}", dir.display()))
}

pub fn summarize(dir: &Path) -> io::Result<DirectorySummary> {
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is not a cache directory", dir.display()),
        ));
    }
    let (found, bytes) = scan_dir(dir);
    let quota_bytes = fs::read_to_string(dir.join("quota"))
        .ok()
        .and_then(|q| q.trim().parse().ok());
    let all = counters::collect(dir)?;
    let mut total = CounterSnapshot::default();
    for snap in all.values() {
        total.add(snap);
    }
    Ok(DirectorySummary {
        dir: dir.display().to_string(),
        pages: found.len() as u64,
        bytes,
        quota_bytes,
        counters: total,
        processes_reporting: all.len(),
    })
}

/// Remove every page and whole file (running mounts simply refetch).
pub fn clear(dir: &Path) -> io::Result<u64> {
    if let Some(why) = not_a_cache(dir) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
    }
    let ledger = Ledger::open(dir)?;
    let guard = ledger.lock()?;
    let mut removed = 0;
    for (path, _) in files_in(&dir.join("pages"))
        .into_iter()
        .chain(files_in(&dir.join("files")))
    {
        let name = file_name(&path);
        if (name.ends_with(".page") || name.ends_with(".data")) && fs::remove_file(&path).is_ok() {
            removed += 1;
        }
        if name.ends_with(".meta") {
            let _ = fs::remove_file(&path);
        }
    }
    let (_, left) = scan_dir(dir);
    guard.set(left)?;
    Ok(removed)
}

#[cfg(test)]
mod tests;
