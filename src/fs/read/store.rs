//! Fetched pages on their way to the page store: written in the background
//! (a reader does not wait for the cache write), at most
//! [`STORE_BACKLOG_BYTES`] of them at once.
//!
//! Without the bound, a backend faster than the cache disk (S3 or NFS on a
//! fast network, a node's slow root disk) piled up pages waiting to be
//! written, each holding its memory, until the process ran out of it.
//! With it, read-ahead waits for room (background work, held to the pace
//! of the cache disk), and a page a reader fetched itself is not stored
//! when there is none (counted as skipped): the cache never makes a read
//! slower than the backend alone.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;

use super::inflight::Loader;
use crate::fs::CachalotFs;

/// Bytes of fetched pages waiting for the page store, at most.
const STORE_BACKLOG_BYTES: u64 = 32 << 20;

/// Pages waiting for the page store, at most, for pages of `page_size`
/// (at least 2).
pub fn store_backlog_pages(page_size: u64) -> usize {
    (STORE_BACKLOG_BYTES / page_size.max(1)).max(2) as usize
}

impl CachalotFs {
    /// Store a page a reader fetched, if the backlog has room; else it is
    /// not stored (counted).
    pub(super) fn store_fetched(&self, loader: Loader, page: Bytes) {
        match Arc::clone(&self.store_backlog).try_acquire_owned() {
            Ok(permit) => self.store_in_background(permit, loader, page),
            Err(_) => self.not_stored(loader),
        }
    }

    /// Store a page read-ahead fetched, waiting for room in the backlog.
    pub(super) async fn store_fetched_ahead(&self, loader: Loader, page: Bytes) {
        match Arc::clone(&self.store_backlog).acquire_owned().await {
            Ok(permit) => self.store_in_background(permit, loader, page),
            // (The semaphore is never closed.)
            Err(_) => self.not_stored(loader),
        }
    }

    /// The page stays registered as loading until it is on disk, so readers
    /// that miss it in memory meanwhile reuse this fetch instead of
    /// starting another.
    fn store_in_background(&self, permit: OwnedSemaphorePermit, loader: Loader, page: Bytes) {
        let cache = Arc::clone(&self.cache);
        tokio::task::spawn_blocking(move || {
            cache.put(loader.key(), &page);
            loader.finish();
            drop(permit);
        });
    }

    fn not_stored(&self, loader: Loader) {
        self.cache.count_skipped();
        loader.finish();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::fs::tests::{fixture_with_pages, me, RO};
    use crate::fs::ROOT_INO;

    const PS: u64 = 64 << 10;

    #[test]
    fn the_backlog_holds_32_mib_of_pages_and_at_least_two() {
        assert_eq!(store_backlog_pages(1 << 20), 32);
        assert_eq!(store_backlog_pages(64 << 20), 2);
        assert_eq!(store_backlog_pages(4 << 10), 8192);
    }

    async fn wait_for(what: impl Fn() -> bool) -> bool {
        for _ in 0..500 {
            if what() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// A cache disk that fell behind (every backlog permit taken): the
    /// reader still gets its data at once; the page it fetched itself is
    /// not stored (counted), the pages read-ahead fetched wait for room
    /// and are stored once there is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_backlog_skips_a_readers_page_and_holds_read_ahead_back() {
        let f = fixture_with_pages(false, PS).await;
        let data: Vec<u8> = (0..4 * PS as usize).map(|i| (i % 253) as u8).collect();
        std::fs::write(f.backing.join("big"), &data).unwrap();
        let all = store_backlog_pages(PS) as u32;
        let held = Arc::clone(&f.fs.store_backlog)
            .acquire_many_owned(all)
            .await
            .unwrap();
        let ino = f.fs.lookup(me(), ROOT_INO, "big").await.unwrap().ino;
        let o = f.fs.open(me(), ino, RO).await.unwrap();
        for page in 0..4usize {
            let at = page * PS as usize;
            let got = f.fs.read(o.fh, at as u64, PS as u32).await.unwrap();
            assert_eq!(got, &data[at..at + PS as usize], "page {page}");
        }
        f.fs.release(o.fh).await.unwrap();
        let stats = || f.fs.cache.stats();
        assert!(stats().counters.skipped_pages >= 1, "{:?}", stats());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(stats().pages, 0, "stored with no room: {:?}", stats());
        drop(held);
        assert!(
            wait_for(|| stats().pages + stats().counters.skipped_pages == 4).await,
            "{:?}",
            stats()
        );
        assert!(
            stats().pages >= 1,
            "read-ahead's pages were dropped: {:?}",
            stats()
        );
    }
}
