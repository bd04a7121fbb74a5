//! Read-ahead: a sequential reader's window grows with each sequential
//! read and closes on a random one; the pages of the window are fetched in
//! the background, within a bound over all handles.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{FileHandle, View};
use crate::fs::CachalotFs;

/// Read-ahead window bounds, in pages: the window doubles with each
/// sequential read up to the maximum, and closes on a random read.
const READAHEAD_MAX_PAGES: u64 = 16;

/// Pages fetched ahead at once, over all handles: bounds the memory held by
/// read-ahead (each in-flight page is one page of memory).
pub const READAHEAD_GLOBAL_PAGES: usize = 64;

impl FileHandle {
    /// Update the sequential-read detector; returns the read-ahead window.
    pub(super) fn observe(&self, offset: u64, len: u64) -> u64 {
        let sequential = self.next_offset.swap(offset + len, Ordering::AcqRel) == offset;
        if sequential {
            let w = self.window.load(Ordering::Acquire);
            let grown = (w * 2).clamp(1, READAHEAD_MAX_PAGES);
            self.window.store(grown, Ordering::Release);
            grown
        } else {
            self.window.store(0, Ordering::Release);
            self.ahead_until.store(0, Ordering::Release);
            0
        }
    }
}

impl CachalotFs {
    /// Load the next `window` pages after `from` into memory in the
    /// background, from the page store or else the backend, unless in
    /// memory or in flight already, past end of file, or over the global
    /// bound: a sequential reader then finds its pages in memory, warm or
    /// cold (and is answered without a hand-off, see `read_from_memory`).
    pub(super) fn read_ahead(
        self: &Arc<Self>,
        handle: &Arc<FileHandle>,
        view: &View,
        from: u64,
        window: u64,
    ) {
        let page_size = self.cache.page_size();
        let size = handle.size.load(Ordering::Acquire);
        let first = from.div_ceil(page_size);
        let start = first.max(handle.ahead_until.load(Ordering::Acquire));
        let mut considered = start;
        for index in start..first + window {
            if index * page_size >= size {
                break;
            }
            let key = self.page_key(view, index);
            if self.hot.contains(&key) || self.inflight.0.lock().contains_key(&key) {
                considered = index + 1;
                continue;
            }
            let Ok(permit) = Arc::clone(&self.readahead_permits).try_acquire_owned() else {
                break;
            };
            considered = index + 1;
            let (fs, handle, view) = (Arc::clone(self), Arc::clone(handle), view.clone());
            tokio::spawn(async move {
                let _ = fs.load_page_once(&handle, &view, index, key, true).await;
                drop(permit);
            });
        }
        handle.ahead_until.fetch_max(considered, Ordering::AcqRel);
    }
}
