//! A volume's whole files: pages assembled into one file per object (for
//! passthrough), read, verified, trusted and dropped.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::VolumeCache;
use crate::cache::page::{self, PageKey};
use crate::cache::scan::WHOLE_PREFIX;
use crate::cache::whole;

impl VolumeCache {
    /// `len` bytes at `offset_in_page` of the page `key` from its whole
    /// file, without reading the rest of the page, if that file is trusted
    /// (checked completely, or stamped: the kernel reads it unchecked by
    /// passthrough too). A whole file has one crc per page, so an untrusted
    /// one is read a page at a time (`get_from_whole`): 256 times the bytes
    /// of a 4 KiB random read.
    pub(super) fn range_of_trusted_whole(
        &self,
        key: &PageKey,
        offset_in_page: u64,
        len: usize,
    ) -> Option<Vec<u8>> {
        let stem = key.object_stem();
        if !self.store.verified_whole.lock().contains(&stem) {
            return None;
        }
        let meta = self.whole_meta(key)?;
        let page_start = key.index.checked_mul(meta.page_size)?;
        let page_end = page_start.saturating_add(meta.page_size).min(meta.size);
        let start = page_start.saturating_add(offset_in_page).min(page_end);
        let end = start.saturating_add(len as u64).min(page_end);
        let file = File::open(whole::data_path(&self.files_dir, &stem)).ok()?;
        let mut buf = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut buf, start).ok()?;
        self.store
            .index
            .lock()
            .touch(&format!("{WHOLE_PREFIX}{stem}"));
        Some(buf)
    }

    /// The meta of `key`'s whole file, parsed once (see
    /// `PageStore::whole_metas`).
    pub(super) fn whole_meta(&self, key: &PageKey) -> Option<Arc<whole::WholeMeta>> {
        let stem = key.object_stem();
        let kept = self.store.whole_metas.lock().get(&stem).cloned();
        if let Some(meta) = kept.filter(|m| m.object == key.object_id()) {
            return Some(meta);
        }
        let meta = Arc::new(whole::read_meta(&self.files_dir, key)?);
        self.store.whole_metas.lock().put(stem, Arc::clone(&meta));
        Some(meta)
    }

    pub(super) fn get_from_whole(&self, key: &PageKey) -> Option<Bytes> {
        let meta = self.whole_meta(key)?;
        let data = whole::read_page(&self.files_dir, key, &meta);
        if data.is_none() && !self.has_whole(key) {
            // Removed meanwhile (evicted by another process): not damage.
            self.store.whole_metas.lock().pop(&key.object_stem());
            return None;
        }
        if data.is_some() {
            self.store
                .index
                .lock()
                .touch(&format!("{WHOLE_PREFIX}{}", key.object_stem()));
        } else {
            // Damaged: drop it; the pages will be fetched again.
            self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
            self.drop_whole(&key.object_stem());
        }
        data
    }

    pub(super) fn drop_whole(&self, stem: &str) {
        self.store
            .index
            .lock()
            .pop(&format!("{WHOLE_PREFIX}{stem}"));
        self.store.verified_whole.lock().remove(stem);
        self.store.whole_metas.lock().pop(stem);
        let freed = whole::remove(&self.files_dir, stem);
        if freed > 0 {
            let _ = self.store.ledger.release(freed);
        }
    }

    /// Assemble the object of `key` (all `size` bytes) into a whole file if
    /// every page is cached, then drop its page files. Returns true if a
    /// whole file exists afterwards.
    pub fn assemble_whole(&self, key: &PageKey, size: u64) -> bool {
        if whole::read_meta(&self.files_dir, key).is_some() {
            return true;
        }
        let ps = self.page_size;
        let pages = size.div_ceil(ps);
        if !(0..pages).all(|i| self.contains(&key.with_index(i)))
            || self.store.make_room(size, &self.counters).is_none()
        {
            return false;
        }
        let assembled = whole::assemble(&self.files_dir, key, size, ps, |i| {
            let page_key = key.with_index(i);
            let file = fs::read(self.path_of(&page_key.file_stem())).ok()?;
            page::decode(&page_key, &file).ok().map(<[u8]>::to_vec)
        });
        let total = match assembled {
            Ok(total) => total,
            Err(e) => {
                let _ = self.store.ledger.release(size);
                tracing::debug!(error = %e, "could not assemble a whole file");
                return false;
            }
        };
        // The meta file is small; account it beyond the reservation.
        let _ = self.store.ledger.reserve(total - size, u64::MAX);
        let stem = key.object_stem();
        self.store.verified_whole.lock().insert(stem.clone());
        self.index_put(format!("{WHOLE_PREFIX}{stem}"), total);
        for i in 0..pages {
            let page_stem = key.with_index(i).file_stem();
            let entry = self.store.index.lock().pop(&page_stem);
            let path = self.path_of(&page_stem);
            self.store.open_pages.forget(self.tag, &page_stem);
            let size = entry
                .map(|e| e.size)
                .or_else(|| fs::metadata(&path).ok().map(|m| m.len()));
            if fs::remove_file(&path).is_ok() {
                let _ = self.store.ledger.release(size.unwrap_or(0));
            }
        }
        true
    }

    /// The whole file of `key`'s object, opened, if this process verified it
    /// (see [`VolumeCache::verify_whole`]); for FUSE passthrough.
    pub fn verified_whole_file(&self, key: &PageKey) -> Option<File> {
        let stem = key.object_stem();
        if !self.store.verified_whole.lock().contains(&stem) {
            return None;
        }
        let file = File::open(whole::data_path(&self.files_dir, &stem)).ok()?;
        self.store
            .index
            .lock()
            .touch(&format!("{WHOLE_PREFIX}{stem}"));
        Some(file)
    }

    /// Whether the whole file of `key` may be used for passthrough without
    /// reading it: this process checked it, or it is still exactly the
    /// file an earlier check (or its assembly from checked pages) stamped.
    /// Cheap: a meta read and a stat.
    pub fn trust_whole(&self, key: &PageKey) -> bool {
        let stem = key.object_stem();
        if self.store.verified_whole.lock().contains(&stem) {
            return true;
        }
        let trusted = whole::read_meta(&self.files_dir, key)
            .is_some_and(|meta| whole::still_verified(&self.files_dir, key, &meta));
        if trusted {
            self.store.verified_whole.lock().insert(stem);
        }
        trusted
    }

    /// Check a whole file completely (once per process, and not at all
    /// while its stamp still holds, see [`VolumeCache::trust_whole`]). A
    /// damaged one is removed. Returns true if it can be used for
    /// passthrough.
    pub fn verify_whole(&self, key: &PageKey) -> bool {
        if self.trust_whole(key) {
            return true;
        }
        let stem = key.object_stem();
        let Some(meta) = whole::read_meta(&self.files_dir, key) else {
            return false;
        };
        if whole::verify(&self.files_dir, key, &meta) {
            if let Err(e) = whole::record_verified(&self.files_dir, key, &meta) {
                tracing::debug!(error = %e, stem, "could not stamp a checked whole file");
            }
            self.store.verified_whole.lock().insert(stem);
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
}
