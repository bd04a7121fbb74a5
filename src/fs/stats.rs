//! What a volume did: plain counters kept by the core, read together with
//! the cache's as one sample by the stats attribute and the metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use super::types::FsError;
use super::CachalotFs;

/// Errors answered to applications are counted for errno values below this.
const COUNTED_ERRNOS: usize = 134;

/// What this volume did, kept as plain counters; the stats attribute and
/// the metrics both read them (through [`CachalotFs::sample`]).
pub struct Counters {
    pub backend_reads: AtomicU64,
    pub backend_read_bytes: AtomicU64,
    pub publishes: AtomicU64,
    pub publish_failures: AtomicU64,
    /// Bytes applications read and wrote through the mount.
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    /// Errors answered to applications, by errno.
    errors: [AtomicU64; COUNTED_ERRNOS],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            backend_reads: AtomicU64::new(0),
            backend_read_bytes: AtomicU64::new(0),
            publishes: AtomicU64::new(0),
            publish_failures: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            write_bytes: AtomicU64::new(0),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// One reading of a volume's counters and its cache's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FsSample {
    pub backend: String,
    pub backend_reads: u64,
    pub backend_read_bytes: u64,
    pub publishes: u64,
    pub publish_failures: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// Read-ahead and demand fetches from the backend in flight.
    pub prefetch_in_flight: u64,
    /// `(errno, count)` of errors answered to applications.
    pub errors: Vec<(i32, u64)>,
    pub cache: crate::cache::CacheStats,
}

impl CachalotFs {
    /// Count an error answered to an application (and pass it on): the
    /// boundary every error crosses on its way to the kernel, where it is
    /// also logged with its backend context, once.
    pub fn count_error(&self, e: FsError) -> FsError {
        e.log();
        if let Some(c) = usize::try_from(e.errno())
            .ok()
            .and_then(|i| self.counters.errors.get(i))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        e
    }

    /// This volume's counters and its cache's, read once.
    pub fn sample(&self) -> FsSample {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        FsSample {
            backend: self.backend.describe().to_string(),
            backend_reads: load(&c.backend_reads),
            backend_read_bytes: load(&c.backend_read_bytes),
            publishes: load(&c.publishes),
            publish_failures: load(&c.publish_failures),
            read_bytes: load(&c.read_bytes),
            write_bytes: load(&c.write_bytes),
            prefetch_in_flight: self.fetches_in_flight() as u64,
            errors: (0..COUNTED_ERRNOS)
                .map(|i| (i as i32, load(&c.errors[i])))
                .filter(|(_, n)| *n > 0)
                .collect(),
            cache: self.cache.stats(),
        }
    }

    /// Counters as JSON, served as an extended attribute of the mount root
    /// (the same sample the metrics endpoint serves).
    pub fn stats_json(&self) -> String {
        let s = self.sample();
        let c = s.cache;
        serde_json::json!({
            "backend": s.backend,
            "backend_reads": s.backend_reads,
            "backend_read_bytes": s.backend_read_bytes,
            "publishes": s.publishes,
            "publish_failures": s.publish_failures,
            "read_bytes": s.read_bytes,
            "write_bytes": s.write_bytes,
            "prefetch_in_flight": s.prefetch_in_flight,
            "cache_hits": c.counters.hits,
            "cache_memory_hits": c.counters.memory_hits,
            "cache_misses": c.counters.misses,
            "cache_pages": c.pages,
            "cache_bytes": c.bytes,
            "cache_volume_bytes": c.volume_bytes,
            "cache_quota_bytes": c.quota_bytes,
            "evictions": c.counters.evictions,
            "corrupt_pages": c.counters.corrupt_pages,
            "cache_write_errors": c.counters.write_errors,
            "cache_skipped_pages": c.counters.skipped_pages,
            "cache_index_ready": c.index_ready,
        })
        .to_string()
    }
}
