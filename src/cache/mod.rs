//! The page store: fixed-size pages of backend objects kept as files on local
//! disk, checksummed, LRU-evicted inside a byte quota and kept across
//! restarts.
//!
//! One cache directory is one cache for the whole node: every volume and
//! every process using the directory shares its quota (recorded in the
//! directory) and one least-recently-used order, and eviction is fair
//! between volumes (see [`index::Index::take_victims`]). Within a process
//! the directory is opened once ([`PageStore`]) and each volume gets a
//! handle ([`VolumeCache`]) that counts its own hits and misses.
//!
//! The cache never fails an application read: any error of its own (disk
//! full, corrupt page, permission problem) makes it step aside, and the
//! caller reads from the backend.

mod counters;
mod index;
mod ledger;
mod open_pages;
mod page;
mod page_file;
mod scan;
mod summary;
mod volume;
mod whole;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

pub use counters::{collect as collect_counters, CounterSnapshot};
pub use index::VolumeTag;
pub use page::{PageFormatError, PageKey};
pub use summary::{clear, not_a_cache, summarize, DirectorySummary, VolumeSummary};
pub use volume::VolumeCache;

use counters::Counters;
use index::{Entry, Index};
use ledger::Ledger;
use scan::WHOLE_PREFIX;

/// A process whose index cannot find anything to evict rescans the
/// directory for pages of other processes at most this often (unless it
/// knows of less than half the directory's bytes).
const RESCAN_INTERVAL: Duration = Duration::from_secs(2);

/// How long a writer that needs room waits for another evictor (of this or
/// another process) before giving up on caching its page; a rescan of a big
/// directory under the lock can take this long.
const EVICTOR_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct PageStoreConfig {
    pub dir: PathBuf,
    /// Upper bound for the bytes of all page files (all processes together).
    /// The directory records it; see [`PageStore::open`].
    pub quota_bytes: u64,
    /// Page size of the volume opened with this configuration.
    pub page_size: u64,
    /// Write that volume's large pages with O_DIRECT (see `page_file`).
    pub direct_writes: bool,
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
            direct_writes: true,
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

/// One volume's view of the cache (the stats attribute, metrics).
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct CacheStats {
    /// This volume's counts, but evictions are of the whole cache
    /// directory by this process (evicting serves every volume).
    #[serde(flatten)]
    pub counters: CounterSnapshot,
    /// This volume's page files and whole files this process knows of.
    pub pages: u64,
    /// This volume's bytes in the cache.
    pub volume_bytes: u64,
    /// Bytes used by all volumes and processes sharing the directory.
    pub bytes: u64,
    pub quota_bytes: u64,
    pub index_ready: bool,
}

/// Whole-file metas kept parsed (see `PageStore::whole_metas`).
const WHOLE_METAS_KEPT: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(256) {
    Some(n) => n,
    None => std::num::NonZeroUsize::MIN,
};

pub struct PageStore {
    cfg: PageStoreConfig,
    /// Held shared while the store is open: a process that can take it
    /// exclusively is alone and may record a new quota.
    _users: fs::File,
    /// Whole files this process checked completely: only those are handed
    /// to the kernel for passthrough.
    verified_whole: Mutex<HashSet<String>>,
    /// Parsed metas of whole files recently read through cachalot, by
    /// stem: a page read from a whole file would otherwise read and parse
    /// its JSON (a crc per page) every time. An object's meta never changes
    /// (its stem names one version), so an entry is only ever removed.
    whole_metas: Mutex<lru::LruCache<String, Arc<whole::WholeMeta>>>,
    open_pages: open_pages::OpenPages,
    index: Mutex<Index>,
    ledger: Ledger,
    /// Evictions and write errors of the store, plus the counts of volumes
    /// that are gone (so the process's totals never go down).
    counters: Counters,
    volumes: Mutex<Vec<Weak<Counters>>>,
    /// What `retire_counters` already folded into the directory's totals.
    retired: Mutex<CounterSnapshot>,
    temp_seq: AtomicU64,
    /// The cache filesystem took O_DIRECT (or was not asked yet): off at
    /// its first refusal (see `page_file`).
    direct_io_works: AtomicBool,
    index_ready: AtomicBool,
    last_rescan: Mutex<Option<Instant>>,
}

#[derive(Debug, thiserror::Error)]
#[error("cache directory {dir}: {source}")]
pub struct CacheOpenError {
    dir: String,
    source: io::Error,
}

/// The stores open in this process, by directory: volumes of one directory
/// share one index and one LRU order.
static OPEN_STORES: Mutex<Option<HashMap<PathBuf, Weak<PageStore>>>> = Mutex::new(None);

impl PageStore {
    /// Open the cache directory (or the store this process already has for
    /// it). The quota is the directory's: the first process records it; a
    /// later one asking for another gets a warning and the recorded one,
    /// unless no other process uses the directory any more. The index of
    /// existing pages is rebuilt in a background thread: the mount is
    /// usable at once, and reads that come before the index is loaded
    /// still find their page files on disk.
    pub fn open(cfg: PageStoreConfig) -> Result<Arc<PageStore>, CacheOpenError> {
        let dir = cfg.dir.display().to_string();
        let err = |source| CacheOpenError {
            dir: dir.clone(),
            source,
        };
        fs::create_dir_all(&cfg.dir).map_err(err)?;
        let key = fs::canonicalize(&cfg.dir).map_err(err)?;
        let mut open = OPEN_STORES.lock();
        let open = open.get_or_insert_with(HashMap::new);
        open.retain(|_, store| store.strong_count() > 0);
        if let Some(store) = open.get(&key).and_then(Weak::upgrade) {
            store.warn_if_other_quota(cfg.quota_bytes, "another volume of this process");
            return Ok(store);
        }
        let store = PageStore::open_dir(cfg).map_err(err)?;
        open.insert(key, Arc::downgrade(&store));
        Ok(store)
    }

    fn open_dir(mut cfg: PageStoreConfig) -> io::Result<Arc<PageStore>> {
        fs::create_dir_all(cfg.dir.join("pages"))?;
        fs::create_dir_all(cfg.dir.join("files"))?;
        let ledger = Ledger::open(&cfg.dir)?;
        let users = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(cfg.dir.join("lock"))?;
        let asked = cfg.quota_bytes;
        let recorded = recorded_quota(&cfg.dir);
        let alone = users.try_lock().is_ok();
        match recorded {
            Some(q) if !alone => cfg.quota_bytes = q,
            _ => fs::write(cfg.dir.join("quota"), asked.to_string())?,
        }
        // Shared from now on (converts the exclusive lock if we had it).
        users.lock_shared()?;
        let store = Arc::new(PageStore {
            _users: users,
            verified_whole: Mutex::new(HashSet::new()),
            whole_metas: Mutex::new(lru::LruCache::new(WHOLE_METAS_KEPT)),
            open_pages: open_pages::OpenPages::new(),
            index: Mutex::new(Index::default()),
            ledger,
            counters: Counters::default(),
            volumes: Mutex::new(Vec::new()),
            retired: Mutex::new(CounterSnapshot::default()),
            temp_seq: AtomicU64::new(crate::backend::first_seq()),
            direct_io_works: AtomicBool::new(true),
            index_ready: AtomicBool::new(false),
            last_rescan: Mutex::new(None),
            cfg,
        });
        store.warn_if_other_quota(asked, "the processes using it");
        let background = Arc::clone(&store);
        let spawned = std::thread::Builder::new()
            .name("cache-index".into())
            .spawn(move || background.rebuild_index());
        if spawned.is_err() {
            store.rebuild_index();
        }
        Ok(store)
    }

    fn warn_if_other_quota(&self, asked: u64, by: &str) {
        if asked != self.cfg.quota_bytes {
            tracing::warn!(
                dir = %self.cfg.dir.display(),
                asked_bytes = asked,
                quota_bytes = self.cfg.quota_bytes,
                "the cache directory's quota was set by {by}; using it, not the one asked for \
                 (stop every mount of this cache directory to change it)"
            );
        }
    }

    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }

    pub fn quota_bytes(&self) -> u64 {
        self.cfg.quota_bytes
    }

    pub fn index_ready(&self) -> bool {
        self.index_ready.load(Ordering::Acquire)
    }

    /// Block until the background index rebuild finished (tests, tools).
    pub fn wait_index_ready(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        while !self.index_ready() {
            if start.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    fn rebuild_index(&self) {
        let scan = scan::scan_dir(&self.cfg.dir, true);
        if let Ok(guard) = self.ledger.lock() {
            // The files on disk are the truth; this also repairs drift left
            // by a process that crashed between reserving and writing.
            let _ = guard.set(scan.total);
        }
        self.index.lock().merge(scan.found);
        *self.last_rescan.lock() = Some(Instant::now());
        self.index_ready.store(true, Ordering::Release);
        self.evict_if_above_high();
        tracing::debug!(
            pages = self.index.lock().len(),
            bytes = scan.total,
            "cache index loaded"
        );
    }

    /// Learn the pages other processes wrote since the last scan, unless
    /// that was less than [`RESCAN_INTERVAL`] ago and this process knows of
    /// at least half the bytes in the directory. True if it rescanned.
    fn rescan_if_due(&self, total: u64) -> bool {
        {
            let mut last = self.last_rescan.lock();
            let knows_most = self.index.lock().bytes() >= total / 2;
            if knows_most && last.is_some_and(|t| t.elapsed() < RESCAN_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let scan = scan::scan_dir(&self.cfg.dir, false);
        self.index.lock().merge(scan.found);
        true
    }

    fn page_path(&self, volume: VolumeTag, stem: &str) -> PathBuf {
        page_path(&self.cfg.dir.join("pages").join(volume.to_string()), stem)
    }

    fn files_dir(&self, volume: VolumeTag) -> PathBuf {
        self.cfg.dir.join("files").join(volume.to_string())
    }

    /// Reserve `size` bytes within the quota and above the disk floor,
    /// evicting down to the low watermark if needed: the shared total with
    /// them, or `None` if there is no room even after evicting.
    fn make_room(&self, size: u64, counters: &Counters) -> Option<u64> {
        for attempt in 0..3 {
            let disk_ok = self.disk_has_room(size);
            if disk_ok {
                match self.ledger.reserve(size, self.cfg.quota_bytes) {
                    Ok(Some(total)) => return Some(total),
                    Ok(None) => {}
                    Err(e) => {
                        self.note_write_error(&e, counters);
                        return None;
                    }
                }
            }
            if attempt < 2 {
                let target = self
                    .cfg
                    .low()
                    .min(self.cfg.quota_bytes.saturating_sub(size));
                self.evict_down_to(target, !disk_ok);
            }
        }
        None
    }

    fn note_write_error(&self, e: &io::Error, counters: &Counters) {
        let n = self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        counters.write_errors.fetch_add(1, Ordering::Relaxed);
        if n == 0 {
            tracing::warn!(dir = %self.cfg.dir.display(), error = %e,
                "cannot write to the cache; reads go to the backend (further errors are only counted)");
        }
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

    fn evict_if_above_high(&self) {
        if let Ok(total) = self.ledger.total() {
            self.evict_if_total_above_high(total);
        }
    }

    /// `evict_if_above_high` with a total just read (a reservation's): one
    /// ledger round (lock, read, unlock) less per stored page.
    fn evict_if_total_above_high(&self, total: u64) {
        if total > self.cfg.high() {
            self.evict_down_to(self.cfg.low(), false);
        }
    }

    /// Evict until the shared total is at most `target` (or, for the disk
    /// floor, until the disk has room again): least recently used first,
    /// sparing volumes within their fair share of the quota, and learning
    /// other processes' pages when this process's own are not enough.
    fn evict_down_to(&self, target: u64, for_disk: bool) {
        // One evictor at a time (see the ledger); the total is read after
        // the wait. If another evictor is still busy after it, the page that
        // needed room just goes uncached.
        let Some(_one_evictor) = self.ledger.evicting(EVICTOR_WAIT) else {
            return;
        };
        let (mut fair, mut rescanned) = (true, false);
        for round in 0..8 {
            let Ok(total) = self.ledger.total() else {
                return;
            };
            let need = if for_disk {
                if self.disk_has_room(self.cfg.page_size) {
                    return;
                }
                self.cfg.page_size.saturating_mul(16)
            } else {
                total.saturating_sub(target)
            };
            if need == 0 {
                return;
            }
            if round == 0 && self.index.lock().bytes() < total / 2 {
                // Most of the directory is other processes' pages.
                rescanned = self.rescan_if_due(total);
            }
            let victims = {
                let mut index = self.index.lock();
                // Each volume may keep an equal part of what stays.
                let stays = total.saturating_sub(need);
                let share = fair.then(|| stays / index.volumes().max(1) as u64);
                index.take_victims(need, share)
            };
            if victims.is_empty() {
                // With a complete index some volume is over its share, so
                // this process lacks the others' pages: learn them (and
                // give up until that is due; the page is not cached). If
                // it just did, a race spared them: go by age alone.
                if fair && !rescanned && self.rescan_if_due(total) {
                    rescanned = true;
                    continue;
                }
                if !fair || !rescanned {
                    return;
                }
                fair = false;
                continue;
            }
            for (name, entry) in victims {
                self.remove_entry(&name, entry);
            }
        }
    }

    /// Remove an evicted entry's files; only the process whose unlink
    /// succeeds releases the bytes.
    fn remove_entry(&self, name: &str, entry: Entry) {
        let freed = match name.strip_prefix(WHOLE_PREFIX) {
            Some(object) => {
                self.verified_whole.lock().remove(object);
                self.whole_metas.lock().pop(object);
                whole::remove(&self.files_dir(entry.volume), object)
            }
            None => {
                self.open_pages.forget(entry.volume, name);
                match fs::remove_file(self.page_path(entry.volume, name)) {
                    Ok(()) => entry.size,
                    Err(_) => 0,
                }
            }
        };
        if freed > 0 {
            let _ = self.ledger.release(freed);
            self.counters.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// This process's counters: the store's, the gone volumes' and the live
    /// volumes'.
    fn snapshot(&self) -> CounterSnapshot {
        let mut total = self.counters.snapshot();
        let mut volumes = self.volumes.lock();
        volumes.retain(|v| v.strong_count() > 0);
        for v in volumes.iter().filter_map(Weak::upgrade) {
            total.add_volume(&v.snapshot());
        }
        total
    }

    /// Persist this process's counters for `cachalot cache stats`.
    pub fn persist_counters(&self) {
        let retired = *self.retired.lock();
        let snap = self.snapshot().minus(&retired);
        if let Err(e) = counters::persist(&self.cfg.dir, &snap) {
            tracing::debug!(error = %e, "could not persist cache counters");
        }
    }

    /// At clean shutdown of a mount: fold what this process counted since
    /// the last time into the directory's totals (in a process serving
    /// several volumes, the others keep counting).
    pub fn retire_counters(&self) {
        let mut retired = self.retired.lock();
        let now = self.snapshot();
        match counters::retire(&self.cfg.dir, &now.minus(&retired)) {
            Ok(()) => *retired = now,
            Err(e) => tracing::debug!(error = %e, "could not retire cache counters"),
        }
    }
}

fn page_path(volume_pages: &Path, stem: &str) -> PathBuf {
    volume_pages.join(&stem[..2]).join(format!("{stem}.page"))
}

fn recorded_quota(dir: &Path) -> Option<u64> {
    fs::read_to_string(dir.join("quota"))
        .ok()
        .and_then(|q| q.trim().parse().ok())
}

#[cfg(test)]
mod tests;
