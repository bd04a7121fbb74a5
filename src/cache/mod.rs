//! The page store: fixed-size pages of backend objects kept as files on local
//! disk, checksummed, LRU-evicted inside a byte quota, shared by every mount
//! that points at the same cache directory and kept across restarts.
//!
//! The cache never fails an application read: any error of its own (disk
//! full, corrupt page, permission problem) makes it step aside, and the
//! caller reads from the backend.

mod page;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use lru::LruCache;
use parking_lot::Mutex;
use serde::Serialize;

pub use page::{PageFormatError, PageKey};

#[derive(Debug, Clone)]
pub struct PageStoreConfig {
    pub dir: PathBuf,
    /// Upper bound for the bytes of all page files.
    pub quota_bytes: u64,
    pub page_size: u64,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub corrupt_pages: u64,
    pub write_errors: u64,
    pub pages: u64,
    pub bytes: u64,
    pub quota_bytes: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    corrupt: AtomicU64,
    write_errors: AtomicU64,
}

struct Index {
    /// stem → size of the page file on disk, in LRU order.
    lru: LruCache<String, u64>,
    used: u64,
}

pub struct PageStore {
    cfg: PageStoreConfig,
    pages_dir: PathBuf,
    index: Mutex<Index>,
    counters: Counters,
    temp_seq: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
#[error("cache directory {dir}: {source}")]
pub struct CacheOpenError {
    dir: String,
    source: io::Error,
}

impl PageStore {
    /// Open (or create) the store and rebuild its index from the files on
    /// disk, oldest access first, so LRU order survives restarts.
    pub fn open(cfg: PageStoreConfig) -> Result<PageStore, CacheOpenError> {
        let pages_dir = cfg.dir.join("pages");
        fs::create_dir_all(&pages_dir).map_err(|source| CacheOpenError {
            dir: cfg.dir.display().to_string(),
            source,
        })?;
        let store = PageStore {
            pages_dir,
            index: Mutex::new(Index {
                lru: LruCache::unbounded(),
                used: 0,
            }),
            counters: Counters::default(),
            temp_seq: AtomicU64::new(0),
            cfg,
        };
        store.rebuild_index();
        store.evict_to_quota();
        Ok(store)
    }

    pub fn page_size(&self) -> u64 {
        self.cfg.page_size
    }

    fn rebuild_index(&self) {
        let mut found: Vec<(SystemTime, String, u64)> = Vec::new();
        let Ok(subdirs) = fs::read_dir(&self.pages_dir) else {
            return;
        };
        for sub in subdirs.flatten() {
            let Ok(files) = fs::read_dir(sub.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                let Ok(meta) = file.metadata() else { continue };
                if let Some(stem) = name.strip_suffix(".page") {
                    let used = meta.accessed().or_else(|_| meta.modified());
                    found.push((
                        used.unwrap_or(SystemTime::UNIX_EPOCH),
                        stem.to_string(),
                        meta.len(),
                    ));
                } else if name.ends_with(".tmp") {
                    // A page write interrupted by a crash: never served.
                    let _ = fs::remove_file(file.path());
                }
            }
        }
        found.sort();
        let mut index = self.index.lock();
        for (_, stem, size) in found {
            index.used += size;
            index.lru.put(stem, size);
        }
    }

    fn path_of(&self, stem: &str) -> PathBuf {
        self.pages_dir.join(&stem[..2]).join(format!("{stem}.page"))
    }

    /// The page's data if it is cached and intact. Corrupt pages are removed
    /// (and counted) so the caller re-fetches and rewrites them.
    pub fn get(&self, key: &PageKey) -> Option<Vec<u8>> {
        let stem = key.file_stem();
        let path = self.path_of(&stem);
        let file = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::debug!(path = %path.display(), error = %e, "page read failed; reading from backend");
                }
                self.forget(&stem);
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        match page::decode(key, &file) {
            Ok(data) => {
                let data = data.to_vec();
                let mut index = self.index.lock();
                if index.lru.get(&stem).is_none() {
                    // Written by another process sharing this directory.
                    index.used += file.len() as u64;
                    index.lru.put(stem, file.len() as u64);
                }
                drop(index);
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                Some(data)
            }
            Err(why) => {
                let n = self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                if n == 0 {
                    tracing::warn!(path = %path.display(), %why, "dropping a corrupt cache page (further ones are only counted)");
                }
                let _ = fs::remove_file(&path);
                self.forget(&stem);
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn forget(&self, stem: &str) {
        let mut index = self.index.lock();
        if let Some(size) = index.lru.pop(stem) {
            index.used -= size;
        }
    }

    /// Store a page. Atomic (temp file + rename): a crash never leaves a
    /// torn page under its final name. Failures are logged and swallowed.
    pub fn put(&self, key: &PageKey, data: &[u8]) {
        let encoded = page::encode(key, data);
        let size = encoded.len() as u64;
        if size > self.cfg.quota_bytes {
            return;
        }
        let stem = key.file_stem();
        match self.write_page_file(&stem, &encoded) {
            Ok(()) => {
                {
                    let mut index = self.index.lock();
                    if let Some(old) = index.lru.put(stem, size) {
                        index.used -= old;
                    }
                    index.used += size;
                }
                self.evict_to_quota();
            }
            Err(e) => {
                let n = self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                if n == 0 {
                    tracing::warn!(dir = %self.cfg.dir.display(), error = %e,
                        "cannot write to the cache; reads go to the backend (further errors are only counted)");
                }
            }
        }
    }

    fn write_page_file(&self, stem: &str, encoded: &[u8]) -> io::Result<()> {
        let final_path = self.path_of(stem);
        let dir = final_path.parent().unwrap_or(&self.pages_dir);
        fs::create_dir_all(dir)?;
        let seq = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!(".{stem}.{}.{seq}.tmp", std::process::id()));
        let result = (|| {
            let mut f = fs::File::create(&temp)?;
            f.write_all(encoded)?;
            fs::rename(&temp, &final_path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    fn evict_to_quota(&self) {
        let mut victims = Vec::new();
        {
            let mut index = self.index.lock();
            while index.used > self.cfg.quota_bytes {
                let Some((stem, size)) = index.lru.pop_lru() else {
                    break;
                };
                index.used -= size;
                victims.push(stem);
            }
        }
        for stem in victims {
            let _ = fs::remove_file(self.path_of(&stem));
            self.counters.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> CacheStats {
        let index = self.index.lock();
        CacheStats {
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            evictions: self.counters.evictions.load(Ordering::Relaxed),
            corrupt_pages: self.counters.corrupt.load(Ordering::Relaxed),
            write_errors: self.counters.write_errors.load(Ordering::Relaxed),
            pages: index.lru.len() as u64,
            bytes: index.used,
            quota_bytes: self.cfg.quota_bytes,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str, index: u64) -> PageKey {
        PageKey {
            source: "file:///srv".into(),
            path: path.into(),
            version: "v1".into(),
            index,
        }
    }

    fn store(dir: &Path, quota: u64) -> PageStore {
        PageStore::open(PageStoreConfig {
            dir: dir.to_path_buf(),
            quota_bytes: quota,
            page_size: 4096,
        })
        .unwrap()
    }

    #[test]
    fn put_then_get_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1 << 20);
        s.put(&key("a", 0), b"page zero");
        assert_eq!(s.get(&key("a", 0)).unwrap(), b"page zero");
        assert!(s.get(&key("a", 1)).is_none());
        drop(s);
        let s = store(dir.path(), 1 << 20);
        assert_eq!(s.stats().pages, 1);
        assert_eq!(s.get(&key("a", 0)).unwrap(), b"page zero");
        assert_eq!(s.stats().hits, 1);
    }

    #[test]
    fn corrupt_page_is_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1 << 20);
        s.put(&key("a", 0), &[1u8; 4096]);
        let path = s.path_of(&key("a", 0).file_stem());
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert!(s.get(&key("a", 0)).is_none());
        assert!(!path.exists());
        assert_eq!(s.stats().corrupt_pages, 1);
        assert_eq!(s.stats().pages, 0);
    }

    #[test]
    fn quota_evicts_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let page = vec![0u8; 1000];
        let one = page::encode(&key("a", 0), &page).len() as u64;
        let s = store(dir.path(), one * 3);
        s.put(&key("a", 0), &page);
        s.put(&key("a", 1), &page);
        s.put(&key("a", 2), &page);
        assert!(s.get(&key("a", 0)).is_some()); // a/0 is now most recent
        s.put(&key("a", 3), &page);
        let st = s.stats();
        assert!(st.bytes <= one * 3, "{st:?}");
        assert_eq!(st.evictions, 1);
        assert!(s.get(&key("a", 1)).is_none(), "LRU page should be gone");
        assert!(s.get(&key("a", 0)).is_some());
        assert!(s.get(&key("a", 3)).is_some());
    }

    #[test]
    fn unwritable_cache_steps_aside() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1 << 20);
        // Replace the pages directory by a file: every write now fails.
        fs::remove_dir_all(dir.path().join("pages")).unwrap();
        fs::write(dir.path().join("pages"), b"not a dir").unwrap();
        s.put(&key("a", 0), b"data");
        assert!(s.get(&key("a", 0)).is_none());
        assert_eq!(s.stats().write_errors, 1);
    }
}
