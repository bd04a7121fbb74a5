//! Hit/miss/eviction counters, in memory per process and persisted per
//! process under `<cache-dir>/stats/`, so `cachalot cache stats` can sum
//! what every mount sharing the directory did (live or gone).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

#[derive(Default)]
pub struct Counters {
    pub hits: AtomicU64,
    /// Served from the filesystem's in-memory hot pages (counted here so
    /// `cachalot cache stats` sees every hit).
    pub memory_hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
    pub corrupt: AtomicU64,
    pub write_errors: AtomicU64,
    /// Pages not cached because the quota or the disk floor left no room.
    pub skipped: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Hits on page files plus hits in memory.
    pub hits: u64,
    #[serde(default)]
    pub memory_hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub corrupt_pages: u64,
    pub write_errors: u64,
    pub skipped_pages: u64,
}

impl CounterSnapshot {
    /// `self - o`, field by field (never below zero).
    pub fn minus(&self, o: &CounterSnapshot) -> CounterSnapshot {
        CounterSnapshot {
            hits: self.hits.saturating_sub(o.hits),
            memory_hits: self.memory_hits.saturating_sub(o.memory_hits),
            misses: self.misses.saturating_sub(o.misses),
            evictions: self.evictions.saturating_sub(o.evictions),
            corrupt_pages: self.corrupt_pages.saturating_sub(o.corrupt_pages),
            write_errors: self.write_errors.saturating_sub(o.write_errors),
            skipped_pages: self.skipped_pages.saturating_sub(o.skipped_pages),
        }
    }

    /// Add a volume's counts to a store's: the store counts write errors
    /// itself, so the volume's are not added twice.
    pub fn add_volume(&mut self, o: &CounterSnapshot) {
        self.add(&CounterSnapshot {
            write_errors: 0,
            ..*o
        });
    }

    pub fn add(&mut self, o: &CounterSnapshot) {
        self.hits += o.hits;
        self.memory_hits += o.memory_hits;
        self.misses += o.misses;
        self.evictions += o.evictions;
        self.corrupt_pages += o.corrupt_pages;
        self.write_errors += o.write_errors;
        self.skipped_pages += o.skipped_pages;
    }
}

impl Counters {
    /// Take over the counts of a volume that is gone.
    pub fn absorb_volume(&self, s: &CounterSnapshot) {
        let add = |c: &AtomicU64, v: u64| c.fetch_add(v, Ordering::Relaxed);
        add(&self.hits, s.hits.saturating_sub(s.memory_hits));
        add(&self.memory_hits, s.memory_hits);
        add(&self.misses, s.misses);
        add(&self.evictions, s.evictions);
        add(&self.corrupt, s.corrupt_pages);
        add(&self.skipped, s.skipped_pages);
    }

    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            hits: self.hits.load(Ordering::Relaxed) + self.memory_hits.load(Ordering::Relaxed),
            memory_hits: self.memory_hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            corrupt_pages: self.corrupt.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
            skipped_pages: self.skipped.load(Ordering::Relaxed),
        }
    }
}

fn stats_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("stats")
}

/// Write this process's counters (atomically: temp + rename).
pub fn persist(cache_dir: &Path, snapshot: &CounterSnapshot) -> io::Result<()> {
    let dir = stats_dir(cache_dir);
    fs::create_dir_all(&dir)?;
    let pid = std::process::id();
    let tmp = dir.join(format!(".{pid}.json.tmp"));
    fs::write(
        &tmp,
        serde_json::to_vec(snapshot).map_err(io::Error::other)?,
    )?;
    fs::rename(tmp, dir.join(format!("{pid}.json")))
}

/// Counters of every process that used the directory, by pid
/// (`"retired"` = folded totals of processes that exited).
pub fn collect(cache_dir: &Path) -> io::Result<BTreeMap<String, CounterSnapshot>> {
    let mut out = BTreeMap::new();
    let dir = stats_dir(cache_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        if stem.starts_with('.') {
            continue;
        }
        // A damaged stats file must not break `cache stats`: skip it.
        if let Ok(snap) = fs::read(entry.path())
            .map_err(|_| ())
            .and_then(|b| serde_json::from_slice::<CounterSnapshot>(&b).map_err(|_| ()))
        {
            out.insert(stem.to_string(), snap);
        }
    }
    Ok(out)
}

/// Fold this process's counters into the retired totals at clean shutdown.
pub fn retire(cache_dir: &Path, snapshot: &CounterSnapshot) -> io::Result<()> {
    let dir = stats_dir(cache_dir);
    fs::create_dir_all(&dir)?;
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))?;
    lock.lock()?;
    let retired_path = dir.join("retired.json");
    let mut total: CounterSnapshot = fs::read(&retired_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    total.add(snapshot);
    let tmp = dir.join(".retired.json.tmp");
    fs::write(&tmp, serde_json::to_vec(&total).map_err(io::Error::other)?)?;
    fs::rename(tmp, retired_path)?;
    let _ = fs::remove_file(dir.join(format!("{}.json", std::process::id())));
    lock.unlock()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persisted_counters_are_collected_and_retired() {
        let dir = tempfile::tempdir().unwrap();
        let snap = CounterSnapshot {
            hits: 3,
            misses: 1,
            ..Default::default()
        };
        persist(dir.path(), &snap).unwrap();
        let pid = std::process::id().to_string();
        assert_eq!(collect(dir.path()).unwrap().get(&pid), Some(&snap));
        retire(dir.path(), &snap).unwrap();
        retire(dir.path(), &snap).unwrap();
        let all = collect(dir.path()).unwrap();
        assert!(!all.contains_key(&pid));
        assert_eq!(all["retired"].hits, 6);
    }
}
