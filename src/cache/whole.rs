//! Whole files: a fully cached object assembled into one plain file, so the
//! kernel can read it directly (FUSE passthrough) and every mount of the node
//! shares its pages in the kernel page cache.
//!
//! `<dir>/files/<xx>/<stem>.data` holds the object's bytes at their own
//! offsets; `<stem>.meta` (JSON) holds the key, the size and a crc32c per
//! page. Page reads served from a whole file are verified per page like page
//! files; a whole file is handed to the kernel only after this process
//! verified all of it once.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::page::PageKey;
use crate::buffers::PageBuffer;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WholeMeta {
    /// `source\0path\0version` of the object.
    pub object: String,
    pub size: u64,
    pub page_size: u64,
    pub page_crcs: Vec<u32>,
    /// The data file as it was when its pages were last checked against
    /// `page_crcs` (after it was made durable). A later process trusts the
    /// file while it is still exactly that file (see [`DataStamp`]).
    /// Absent in metas written before stamps existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_as: Option<DataStamp>,
}

/// What identifies one state of a data file: anything that rewrites,
/// truncates, replaces or renames it changes its inode, size or
/// change time. (Silent corruption on the disk itself is not seen: the
/// same holds for every file the kernel reads directly.)
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct DataStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl DataStamp {
    pub fn of(meta: &fs::Metadata) -> DataStamp {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        DataStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The stamp of the data file of `stem` now, if it exists.
pub fn current_stamp(files_dir: &Path, stem: &str) -> Option<DataStamp> {
    fs::symlink_metadata(data_path(files_dir, stem))
        .ok()
        .map(|m| DataStamp::of(&m))
}

/// Whether the data file is still the one whose pages were checked.
pub fn still_verified(files_dir: &Path, key: &PageKey, meta: &WholeMeta) -> bool {
    meta.verified_as.is_some() && meta.verified_as == current_stamp(files_dir, &key.object_stem())
}

/// After a full check: make the data durable (a stamp must never outlive
/// data a crash could still lose), then record its stamp in the meta
/// (atomically replaced). Best effort: without it the next process checks
/// the file again.
pub fn record_verified(files_dir: &Path, key: &PageKey, meta: &WholeMeta) -> io::Result<()> {
    let stem = key.object_stem();
    let data = data_path(files_dir, &stem);
    File::open(&data)?.sync_all()?;
    let stamped = WholeMeta {
        verified_as: current_stamp(files_dir, &stem),
        ..meta.clone()
    };
    write_meta(files_dir, &stem, &stamped)
}

/// Replace the meta of `stem` atomically (temp file + rename).
fn write_meta(files_dir: &Path, stem: &str, meta: &WholeMeta) -> io::Result<()> {
    let path = meta_path(files_dir, stem);
    let dir = path.parent().unwrap_or(files_dir);
    let tmp = dir.join(format!(".{stem}.{}.meta.tmp", std::process::id()));
    let written = serde_json::to_vec(meta)
        .map_err(io::Error::other)
        .and_then(|bytes| fs::write(&tmp, bytes))
        .and_then(|()| fs::rename(&tmp, &path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

pub fn data_path(files_dir: &Path, stem: &str) -> PathBuf {
    files_dir.join(&stem[..2]).join(format!("{stem}.data"))
}

pub fn meta_path(files_dir: &Path, stem: &str) -> PathBuf {
    files_dir.join(&stem[..2]).join(format!("{stem}.meta"))
}

/// The meta of the whole file for `key`'s object, if there is one and it is
/// for exactly this object.
pub fn read_meta(files_dir: &Path, key: &PageKey) -> Option<WholeMeta> {
    let stem = key.object_stem();
    let bytes = fs::read(meta_path(files_dir, &stem)).ok()?;
    let meta: WholeMeta = serde_json::from_slice(&bytes).ok()?;
    let pages = meta.size.div_ceil(meta.page_size.max(1));
    let sane = meta.object == key.object_id()
        && meta.page_size > 0
        && meta.page_crcs.len() as u64 == pages;
    sane.then_some(meta)
}

/// One page of a whole file, verified against its recorded crc.
pub fn read_page(files_dir: &Path, key: &PageKey, meta: &WholeMeta) -> Option<Bytes> {
    let crc = *meta.page_crcs.get(key.index as usize)?;
    let offset = key.index * meta.page_size;
    let len = meta.page_size.min(meta.size.saturating_sub(offset)) as usize;
    let file = File::open(data_path(files_dir, &key.object_stem())).ok()?;
    let mut buf = PageBuffer::new(len);
    file.read_exact_at(buf.as_mut_slice(), offset).ok()?;
    (crc32c::crc32c(buf.as_slice()) == crc).then(|| buf.freeze())
}

/// Check every page of a whole file; true if all match.
pub fn verify(files_dir: &Path, key: &PageKey, meta: &WholeMeta) -> bool {
    let Ok(file) = File::open(data_path(files_dir, &key.object_stem())) else {
        return false;
    };
    if file.metadata().map(|m| m.len()).ok() != Some(meta.size) {
        return false;
    }
    let mut buf = vec![0u8; meta.page_size as usize];
    for (index, crc) in meta.page_crcs.iter().enumerate() {
        let offset = index as u64 * meta.page_size;
        let len = meta.page_size.min(meta.size - offset) as usize;
        if file.read_exact_at(&mut buf[..len], offset).is_err()
            || crc32c::crc32c(&buf[..len]) != *crc
        {
            return false;
        }
    }
    true
}

/// Write the whole file from verified pages (`page(i)` returns page i).
/// Atomic: data and meta are written to temporaries and renamed, meta last,
/// so a whole file is only ever found complete. The data is durable before
/// its meta names it, and the meta records the data file's stamp: it was
/// written from checked pages, so later processes trust it unchanged.
pub fn assemble(
    files_dir: &Path,
    key: &PageKey,
    size: u64,
    page_size: u64,
    mut page: impl FnMut(u64) -> Option<Vec<u8>>,
) -> io::Result<u64> {
    let stem = key.object_stem();
    let data = data_path(files_dir, &stem);
    let dir = data.parent().unwrap_or(files_dir);
    fs::create_dir_all(dir)?;
    let tmp_data = dir.join(format!(".{stem}.{}.data.tmp", std::process::id()));
    let tmp_meta = dir.join(format!(".{stem}.{}.meta.tmp", std::process::id()));
    let result = (|| {
        let mut out = File::create(&tmp_data)?;
        let mut crcs = Vec::new();
        for index in 0..size.div_ceil(page_size) {
            let bytes = page(index).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("page {index} is not cached"),
                )
            })?;
            let expected = page_size.min(size - index * page_size) as usize;
            if bytes.len() != expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "page has the wrong length",
                ));
            }
            crcs.push(crc32c::crc32c(&bytes));
            out.write_all(&bytes)?;
        }
        out.sync_all()?;
        // The stamp after the rename: renaming changes the change time.
        fs::rename(&tmp_data, &data)?;
        let meta = WholeMeta {
            object: key.object_id(),
            size,
            page_size,
            page_crcs: crcs,
            verified_as: current_stamp(files_dir, &stem),
        };
        fs::write(
            &tmp_meta,
            serde_json::to_vec(&meta).map_err(io::Error::other)?,
        )?;
        fs::rename(&tmp_meta, meta_path(files_dir, &stem))?;
        Ok(size + fs::metadata(meta_path(files_dir, &stem))?.len())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp_data);
        let _ = fs::remove_file(&tmp_meta);
        // Data renamed in but no meta: nothing would ever find it.
        if !meta_path(files_dir, &stem).exists() {
            let _ = fs::remove_file(&data);
        }
    }
    result
}

/// Remove a whole file; returns the bytes freed.
pub fn remove(files_dir: &Path, stem: &str) -> u64 {
    let mut freed = 0;
    for path in [meta_path(files_dir, stem), data_path(files_dir, stem)] {
        if let Ok(m) = fs::metadata(&path) {
            if fs::remove_file(&path).is_ok() {
                freed += m.len();
            }
        }
    }
    freed
}

#[cfg(test)]
mod tests {
    use super::WholeMeta;

    #[test]
    fn metas_written_before_stamps_are_still_read_and_checked_again() {
        let json = r#"{"object":"s\u0000p\u0000v","size":3,"page_size":4,"page_crcs":[1]}"#;
        let meta: WholeMeta = serde_json::from_str(json).expect("an old meta");
        assert_eq!(meta.verified_as, None);
        // Without a stamp the file is never trusted unread.
        let dir = tempfile::tempdir().unwrap();
        let key = crate::cache::PageKey {
            source: "s".into(),
            path: "p".into(),
            version: "v".into(),
            index: 0,
        };
        assert!(!super::still_verified(dir.path(), &key, &meta));
    }
}
