//! `cachalot cache stats` and `cachalot cache clear`: a cache directory
//! summarised (or emptied) from its files, whether or not mounts run.

use std::fs;
use std::io;
use std::path::Path;

use serde::Serialize;

use super::counters::{self, CounterSnapshot};
use super::index::VolumeTag;
use super::ledger::Ledger;
use super::scan::{self, VOLUME_NAME_FILE};

/// Summary of a cache directory, computed from the files.
#[derive(Debug, Serialize)]
pub struct DirectorySummary {
    pub dir: String,
    /// Page files plus whole files.
    pub pages: u64,
    pub bytes: u64,
    /// The directory's quota, shared by every volume and process.
    pub quota_bytes: Option<u64>,
    pub counters: CounterSnapshot,
    pub processes_reporting: usize,
    /// Usage by volume, biggest first.
    pub volumes: Vec<VolumeSummary>,
    /// Pages of the layout before volume directories (removed by the next
    /// mount of the directory).
    pub legacy_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct VolumeSummary {
    /// The volume's directory name in the cache.
    pub tag: String,
    /// Its backend identity and page size, as recorded by its first mount.
    pub name: String,
    pub pages: u64,
    pub bytes: u64,
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
    if let Some(why) = not_a_cache(dir) {
        return Err(io::Error::new(io::ErrorKind::NotFound, why));
    }
    let scan = scan::scan_dir(dir, false);
    let mut by_volume: std::collections::BTreeMap<VolumeTag, VolumeSummary> = Default::default();
    for f in &scan.found {
        let v = by_volume
            .entry(f.entry.volume)
            .or_insert_with(|| VolumeSummary {
                tag: f.entry.volume.to_string(),
                name: volume_name(dir, f.entry.volume),
                pages: 0,
                bytes: 0,
            });
        v.pages += 1;
        v.bytes += f.entry.size;
    }
    let mut volumes: Vec<VolumeSummary> = by_volume.into_values().collect();
    volumes.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.tag.cmp(&b.tag)));
    let all = counters::collect(dir)?;
    let mut total = CounterSnapshot::default();
    for snap in all.values() {
        total.add(snap);
    }
    Ok(DirectorySummary {
        dir: dir.display().to_string(),
        pages: scan.found.len() as u64,
        bytes: scan.total,
        quota_bytes: super::recorded_quota(dir),
        counters: total,
        processes_reporting: all.len(),
        volumes,
        legacy_bytes: scan.legacy_bytes,
    })
}

fn volume_name(dir: &Path, tag: VolumeTag) -> String {
    fs::read_to_string(
        dir.join("pages")
            .join(tag.to_string())
            .join(VOLUME_NAME_FILE),
    )
    .map(|s| s.lines().collect::<Vec<_>>().join(", "))
    .unwrap_or_else(|_| "(unnamed)".to_string())
}

/// Remove every page and whole file (running mounts simply refetch).
pub fn clear(dir: &Path) -> io::Result<u64> {
    if let Some(why) = not_a_cache(dir) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
    }
    let ledger = Ledger::open(dir)?;
    let guard = ledger.lock()?;
    let mut removed = 0;
    for path in scan::cached_files(dir) {
        let name = scan::file_name(&path);
        if fs::remove_file(&path).is_ok() && !name.ends_with(".meta") {
            removed += 1;
        }
    }
    guard.set(scan::scan_dir(dir, false).total)?;
    Ok(removed)
}
