//! What is on disk in a cache directory: page files and whole files by
//! volume, stale temporaries, and pages of the layout before volume
//! directories.
//!
//! Layout: `pages/<volume>/<xx>/<stem>.page`, `files/<volume>/<xx>/<stem>.data`
//! (+ `.meta`), `pages/<volume>/volume` naming the volume, where `<volume>`
//! is a [`VolumeTag`] (16 hex digits) and `<xx>` the stem's first two.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::index::{millis, Entry, Found, VolumeTag};

/// Index entries of whole files are their object stem with this prefix.
pub const WHOLE_PREFIX: &str = "w:";

/// Page-file temporaries older than this belong to a crashed writer.
const STALE_TEMP_AGE: Duration = Duration::from_secs(600);

/// The file in a volume's page directory that names the volume.
pub const VOLUME_NAME_FILE: &str = "volume";

pub struct Scan {
    pub found: Vec<Found>,
    /// Bytes of everything found (the ledger's truth).
    pub total: u64,
    /// Bytes of page files in the layout before volume directories
    /// (only when not tidying; tidying removes them).
    pub legacy_bytes: u64,
}

/// Every page file and whole file of a cache directory, oldest use first.
/// `tidy` removes stale temporaries, half-assembled whole files and pages
/// of the previous layout (unreachable: their names lack the volume).
pub fn scan_dir(dir: &Path, tidy: bool) -> Scan {
    let mut scan = Scan {
        found: Vec::new(),
        total: 0,
        legacy_bytes: 0,
    };
    for (volume, path, meta) in files_in(&dir.join("pages"), tidy, &mut scan) {
        let name = file_name(&path);
        // Only names we write (64 hex digits): a stray file must never
        // reach a path we build or the ledger.
        if let Some(stem) = name.strip_suffix(".page").filter(|s| is_stem(s)) {
            scan.add(stem.to_string(), volume, &meta, meta.len());
        }
    }
    for (volume, path, meta) in files_in(&dir.join("files"), tidy, &mut scan) {
        let name = file_name(&path);
        if let Some(stem) = name.strip_suffix(".data").filter(|s| is_stem(s)) {
            match fs::metadata(path.with_extension("meta")) {
                Ok(m) => scan.add(
                    format!("{WHOLE_PREFIX}{stem}"),
                    volume,
                    &meta,
                    meta.len() + m.len(),
                ),
                // Data without meta: an interrupted assembly.
                Err(_) if tidy => {
                    let _ = fs::remove_file(&path);
                }
                Err(_) => {}
            }
        }
    }
    scan.found.sort_by_key(|f| f.entry.used);
    scan
}

impl Scan {
    fn add(&mut self, name: String, volume: VolumeTag, meta: &fs::Metadata, size: u64) {
        self.total += size;
        self.found.push(Found {
            name,
            entry: Entry {
                size,
                volume,
                used: millis(access_time(meta)),
            },
        });
    }
}

pub fn is_stem(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn access_time(meta: &fs::Metadata) -> SystemTime {
    meta.accessed()
        .or_else(|_| meta.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Regular files of `top/<volume>/<xx>/`, with their volume, removing stale
/// temporaries on the way (when tidying). Files of the previous layout
/// (`top/<xx>/`) are removed when tidying, else counted as legacy.
fn files_in(top: &Path, tidy: bool, scan: &mut Scan) -> Vec<(VolumeTag, PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    for (name, dir) in subdirs(top) {
        if let Some(volume) = VolumeTag::parse(&name) {
            for (_, fan) in subdirs(&dir) {
                for (path, meta) in plain_files(&fan, tidy) {
                    out.push((volume, path, meta));
                }
            }
        } else if name.len() == 2 {
            for (path, meta) in plain_files(&dir, tidy) {
                // Only files we wrote: a stray file is never touched.
                let name = file_name(&path);
                let ours = [".page", ".data", ".meta"]
                    .iter()
                    .any(|ext| name.strip_suffix(ext).is_some_and(is_stem));
                if !ours {
                    continue;
                }
                if tidy {
                    let _ = fs::remove_file(&path);
                } else {
                    scan.legacy_bytes += meta.len();
                    scan.total += meta.len();
                }
            }
            if tidy {
                let _ = fs::remove_dir(&dir);
            }
        }
    }
    out
}

fn subdirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect()
}

fn plain_files(dir: &Path, tidy: bool) -> Vec<(PathBuf, fs::Metadata)> {
    let Ok(files) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for file in files.flatten() {
        let Ok(meta) = file.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let path = file.path();
        if file_name(&path).ends_with(".tmp") {
            let age = meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .unwrap_or_default();
            if tidy && age > STALE_TEMP_AGE {
                let _ = fs::remove_file(&path);
            }
            continue;
        }
        out.push((path, meta));
    }
    out
}

/// Page files and whole files (data and meta) of every volume, for `clear`.
pub fn cached_files(dir: &Path) -> Vec<PathBuf> {
    let mut scratch = Scan {
        found: Vec::new(),
        total: 0,
        legacy_bytes: 0,
    };
    let mut out: Vec<PathBuf> = Vec::new();
    for top in ["pages", "files"] {
        for (_, path, _) in files_in(&dir.join(top), true, &mut scratch) {
            let name = file_name(&path);
            if [".page", ".data", ".meta"]
                .iter()
                .any(|s| name.ends_with(s))
            {
                out.push(path);
            }
        }
    }
    out
}
