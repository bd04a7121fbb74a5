//! Read-ahead: a sequential reader's window grows with each sequential
//! read and closes on a random one; the pages of the window are fetched in
//! the background, within a bound over all handles.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::future::join_all;
use tokio::sync::OwnedSemaphorePermit;

use super::inflight::Loader;
use super::{FileHandle, ReadError, View};
use crate::fs::CachalotFs;

/// Read-ahead window bounds, in pages: the window doubles with each
/// sequential read up to the maximum, and closes on a random read.
const READAHEAD_MAX_PAGES: u64 = 16;

/// Bytes fetched ahead at once, over all handles: bounds the memory held by
/// read-ahead (each in-flight page is one page of memory), whatever the
/// page size. 32 MiB: with 64, four sequential readers put the daemon's peak
/// RSS at 118-144 MiB (memory tier included) against 107-116, for the same
/// throughput (cold and page-store warm, 1 MiB pages, local backend).
const READAHEAD_GLOBAL_BYTES: u64 = 32 << 20;

/// Pages fetched ahead at once over all handles, for pages of `page_size`:
/// [`READAHEAD_GLOBAL_BYTES`], but at least 2 pages (a reader of big pages
/// still gets its next page ahead).
pub fn readahead_global_pages(page_size: u64) -> usize {
    (READAHEAD_GLOBAL_BYTES / page_size.max(1)).max(2) as usize
}

/// Bytes one read-ahead request covers on a backend with `large_reads`
/// (S3): a GET costs the server about as much as megabytes of data, so
/// 1 MiB GETs kept it at a fraction of a single whole-object GET's rate
/// (0.43×; 8 MiB pages reached 0.55× in the same bench).
const BATCH_BYTES: u64 = 8 << 20;

/// Read-ahead requests a sequential reader keeps in flight there.
const READAHEAD_BATCHES: u64 = 4;

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
    ///
    /// On a backend with `large_reads`, pages go in runs of up to
    /// [`BATCH_BYTES`], one request each, and the window is several runs
    /// wide; a run is started only once it fits the window whole (or ends
    /// the file), so a reader advancing page by page still makes big
    /// requests. Each page of a run reaches its readers as it arrives: a
    /// reader waits for its page, not for the whole run.
    pub(super) fn read_ahead(
        self: &Arc<Self>,
        handle: &Arc<FileHandle>,
        view: &View,
        from: u64,
        window: u64,
    ) {
        let page_size = self.cache.page_size();
        let size = handle.size.load(Ordering::Acquire);
        let batch = self.read_ahead_batch();
        let window = if batch > 1 && window > 0 {
            window.max(batch * READAHEAD_BATCHES)
        } else {
            window
        };
        // Never more than the global bound holds (pages of up to 64 MiB).
        let window = window.min(readahead_global_pages(page_size) as u64);
        let first = from.div_ceil(page_size);
        let last_page = size.div_ceil(page_size); // one past the last
        let end = (first + window).min(last_page);
        let start = first.max(handle.ahead_until.load(Ordering::Acquire));
        if start >= end || (end - start < batch && end < last_page) {
            return;
        }
        let mut run: Vec<(Loader, OwnedSemaphorePermit)> = Vec::new();
        let mut considered = start;
        for index in start..end {
            let key = self.page_key(view, index);
            let loader = if self.hot.contains(&key) {
                None
            } else {
                self.inflight.try_load(&key)
            };
            let Some(loader) = loader else {
                considered = index + 1;
                self.start_run(handle, view, &mut run, index);
                continue;
            };
            let Ok(permit) = Arc::clone(&self.readahead_permits).try_acquire_owned() else {
                break;
            };
            considered = index + 1;
            run.push((loader, permit));
            if run.len() as u64 == batch {
                self.start_run(handle, view, &mut run, index + 1);
            }
        }
        self.start_run(handle, view, &mut run, considered);
        handle.ahead_until.fetch_max(considered, Ordering::AcqRel);
    }

    /// Pages per backend request of read-ahead.
    fn read_ahead_batch(&self) -> u64 {
        if self.backend.capabilities().large_reads {
            (BATCH_BYTES / self.cache.page_size()).max(1)
        } else {
            1
        }
    }

    /// Load the pages of `run` (consecutive, ending before `next`) in the
    /// background, and empty it.
    fn start_run(
        self: &Arc<Self>,
        handle: &Arc<FileHandle>,
        view: &View,
        run: &mut Vec<(Loader, OwnedSemaphorePermit)>,
        next: u64,
    ) {
        if run.is_empty() {
            return;
        }
        let first = next - run.len() as u64;
        let run = std::mem::take(run);
        let (fs, handle, view) = (Arc::clone(self), Arc::clone(handle), view.clone());
        tokio::spawn(async move {
            let (loaders, _permits): (Vec<_>, Vec<_>) = run.into_iter().unzip();
            fs.load_run(&handle, &view, first, loaders).await;
        });
    }

    /// A page of a read-ahead run has arrived: into memory and to its
    /// readers at once (they need not wait for the rest of the run). The
    /// run stores it after (see `store_fetched_ahead`).
    fn fetched(&self, loader: &Loader, page: &bytes::Bytes) {
        self.hot.put(loader.key().clone(), page.clone());
        loader.deliver(Ok(page.clone()));
    }

    /// Load consecutive pages from `first` on: the stored ones from the
    /// page store, the others from the backend, one request per stretch.
    async fn load_run(&self, handle: &FileHandle, view: &View, first: u64, loaders: Vec<Loader>) {
        let stored = join_all(loaders.iter().map(|l| self.stored_page(l.key()))).await;
        let mut missing: Vec<(u64, Loader)> = Vec::new();
        for ((index, loader), page) in (first..).zip(loaders).zip(stored) {
            match page {
                Some(page) => {
                    self.hot.put(loader.key().clone(), page.clone());
                    loader.deliver(Ok(page));
                }
                None => missing.push((index, loader)),
            }
        }
        for stretch in consecutive(missing) {
            let from = stretch[0].0;
            let count = stretch.len() as u64;
            let mut waiting = stretch.into_iter().map(|(_, loader)| loader);
            let mut to_store = Vec::new();
            let fetched = self
                .fetch_streamed(handle, view, from, count, |page| {
                    if let Some(loader) = waiting.next() {
                        self.fetched(&loader, &page);
                        to_store.push((loader, page));
                    }
                })
                .await;
            match fetched {
                // Pages past the end of the version (none in a run within
                // the handle's size) are empty, as `fetch_pages` gives them.
                Ok(()) => {
                    for loader in waiting {
                        let empty = bytes::Bytes::new();
                        self.fetched(&loader, &empty);
                        to_store.push((loader, empty));
                    }
                }
                Err(e) => {
                    // Logged where a reader gets it (the FUSE boundary); a
                    // page nobody asks for again needs no log line.
                    if let ReadError::Fs(e) = &e {
                        tracing::debug!(error = %e, from, count, "read-ahead failed");
                    }
                    for loader in waiting {
                        loader.deliver(Err(e.clone()));
                    }
                }
            }
            // The run keeps its read-ahead permits until its pages have
            // room in the store's backlog.
            for (loader, page) in to_store {
                self.store_fetched_ahead(loader, page).await;
            }
        }
    }
}

/// Split `(index, item)` pairs, in ascending index order, into runs of
/// consecutive indexes.
fn consecutive<T>(items: Vec<(u64, T)>) -> Vec<Vec<(u64, T)>> {
    let mut runs: Vec<Vec<(u64, T)>> = Vec::new();
    for (index, item) in items {
        match runs.last_mut() {
            Some(run) if run.last().is_some_and(|(last, _)| last + 1 == index) => {
                run.push((index, item))
            }
            _ => runs.push(vec![(index, item)]),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    #[test]
    fn read_ahead_memory_is_bounded_in_bytes_for_every_page_size() {
        use super::readahead_global_pages;
        assert_eq!(readahead_global_pages(1 << 20), 32);
        assert_eq!(readahead_global_pages(64 << 20), 2, "64 MiB pages");
        assert!(readahead_global_pages(4 << 10) as u64 * (4 << 10) <= 32 << 20);
    }

    #[test]
    fn consecutive_splits_at_gaps() {
        let runs = super::consecutive(vec![(3, 'a'), (4, 'b'), (6, 'c'), (7, 'd'), (9, 'e')]);
        let shape: Vec<Vec<u64>> = runs
            .iter()
            .map(|r| r.iter().map(|(i, _)| *i).collect())
            .collect();
        assert_eq!(shape, vec![vec![3, 4], vec![6, 7], vec![9]]);
    }
}
