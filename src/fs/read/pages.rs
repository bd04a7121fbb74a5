//! The memory and page-store tiers of a read: recently served pages in
//! memory (`HotPages`), the part of a stored page a small random read
//! needs, a whole page loaded from the page store, and a page fetched from
//! the backend once for all its concurrent readers (see `inflight`) and
//! stored in the background.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::backend::blocking;
use crate::cache::PageKey;

use super::inflight::{Claim, Loader};
use super::{FileHandle, ReadError, View};
use crate::fs::CachalotFs;

/// Memory for recently served pages, shared by all handles: the kernel
/// splits a page into several concurrent requests, and several pods often
/// read the same file, so each page file is read and verified once.
const HOT_PAGES_BYTES: u64 = 64 << 20;

pub struct HotPages(parking_lot::Mutex<lru::LruCache<PageKey, Bytes>>);

impl HotPages {
    pub fn new(page_size: u64) -> HotPages {
        let pages = (HOT_PAGES_BYTES / page_size).max(4) as usize;
        let cap = std::num::NonZeroUsize::new(pages).unwrap_or(std::num::NonZeroUsize::MIN);
        HotPages(parking_lot::Mutex::new(lru::LruCache::new(cap)))
    }

    fn get(&self, key: &PageKey) -> Option<Bytes> {
        self.0.lock().get(key).cloned()
    }

    /// Without making it recently used.
    pub(super) fn contains(&self, key: &PageKey) -> bool {
        self.0.lock().contains(key)
    }

    pub(super) fn put(&self, key: PageKey, page: Bytes) {
        self.0.lock().put(key, page);
    }

    #[cfg(test)]
    pub(in crate::fs) fn clear(&self) {
        self.0.lock().clear();
    }

    #[cfg(test)]
    pub(in crate::fs) fn len(&self) -> usize {
        self.0.lock().len()
    }
}

/// A request's bytes, gathered page by page: the page's own memory when
/// the request lies within one page (no copy), else one buffer.
#[derive(Default)]
struct Gather {
    first: Bytes,
    joined: Option<BytesMut>,
}

impl Gather {
    fn push(&mut self, part: Bytes) {
        match &mut self.joined {
            Some(joined) => joined.extend_from_slice(&part),
            None if self.first.is_empty() => self.first = part,
            None => {
                let mut joined = BytesMut::with_capacity(self.first.len() + part.len());
                joined.extend_from_slice(&self.first);
                joined.extend_from_slice(&part);
                self.joined = Some(joined);
            }
        }
    }

    fn finish(self) -> Bytes {
        self.joined.map_or(self.first, BytesMut::freeze)
    }
}

impl CachalotFs {
    /// Pages being fetched from the backend right now (read-ahead and
    /// demand reads).
    pub fn fetches_in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// `window` is the read-ahead window of this request: 0 for a random
    /// read.
    pub(super) async fn read_pages(
        &self,
        handle: &FileHandle,
        view: &View,
        offset: u64,
        size: usize,
        window: u64,
    ) -> Result<Bytes, ReadError> {
        let page_size = self.cache.page_size();
        let mut out = Gather::default();
        let mut pos = offset;
        let end = offset + size as u64;
        while pos < end {
            let index = pos / page_size;
            let within = pos - index * page_size;
            let want = (page_size - within).min(end - pos) as usize;
            let key = self.page_key(view, index);
            let page = match self.hot.get(&key) {
                Some(page) => {
                    self.cache.count_memory_hit();
                    page
                }
                // (A page being fetched right now: join that fetch below.)
                None if Self::wants_range(window, want, page_size)
                    && !self.inflight.contains(&key) =>
                {
                    match self.stored_range(&key, within, want).await {
                        Some(part) => {
                            let short = part.len() < want;
                            pos += part.len() as u64;
                            out.push(Bytes::from(part));
                            if short {
                                break; // the page ends there: end of file
                            }
                            continue;
                        }
                        // Not stored (get_range counted the miss): fetch
                        // the whole page from the backend, once, unless a
                        // fetch that just finished left it in memory.
                        None => match self.hot.get(&key) {
                            Some(page) => page,
                            None => self.load_page_once(handle, view, index, key, false).await?,
                        },
                    }
                }
                None => self.load_page_once(handle, view, index, key, true).await?,
            };
            let within = within as usize;
            if within >= page.len() {
                break; // end of file
            }
            let take = (page.len() - within).min(want);
            out.push(page.slice(within..within + take));
            pos += take as u64;
            if (page.len() as u64) < page_size {
                break; // short page: end of file
            }
        }
        Ok(out.finish())
    }

    /// The request's bytes if every page it touches is in memory (up to
    /// the end of the file); `None` as soon as one is not.
    pub(super) fn pages_in_memory(&self, view: &View, offset: u64, size: usize) -> Option<Bytes> {
        let page_size = self.cache.page_size();
        let mut out = Gather::default();
        let mut pos = offset;
        let end = offset + size as u64;
        let mut hits = 0;
        while pos < end {
            let index = pos / page_size;
            let within = (pos - index * page_size) as usize;
            let page = self.hot.get(&self.page_key(view, index))?;
            hits += 1;
            if within >= page.len() {
                break; // end of file
            }
            let take = (page.len() - within).min((end - pos) as usize);
            out.push(page.slice(within..within + take));
            pos += take as u64;
            if (page.len() as u64) < page_size {
                break; // short page: end of file
            }
        }
        for _ in 0..hits {
            self.cache.count_memory_hit();
        }
        Some(out.finish())
    }

    /// Whether to read only the needed part of a stored page rather than
    /// load it whole into HotPages: for random reads of a small part of a
    /// page, where reading and verifying the whole page (1 MiB by default)
    /// would cost far more than the request. Sequential readers load whole
    /// pages: their next requests use the rest of the page from memory.
    fn wants_range(window: u64, want: usize, page_size: u64) -> bool {
        window == 0 && (want as u64) < page_size / 2
    }

    /// `len` bytes at `within` of the page `key` from the page store, if
    /// stored (never partial data in HotPages).
    async fn stored_range(&self, key: &PageKey, within: u64, len: usize) -> Option<Vec<u8>> {
        let cache = Arc::clone(&self.cache);
        let key = key.clone();
        blocking::run(move || cache.get_range(&key, within, len))
            .await
            .unwrap_or(None)
    }

    pub(in crate::fs) fn page_key(&self, view: &View, index: u64) -> PageKey {
        PageKey {
            source: self.backend.cache_identity().to_string(),
            path: view.path.as_str().to_string(),
            version: view.version.0.clone(),
            index,
        }
    }

    /// Load a page from the page store (unless `lookup` is false: the
    /// caller just found it missing), or else from the backend, once for all
    /// concurrent readers of it.
    pub(super) async fn load_page_once(
        &self,
        handle: &FileHandle,
        view: &View,
        index: u64,
        key: PageKey,
        mut lookup: bool,
    ) -> Result<Bytes, ReadError> {
        loop {
            match self.inflight.claim(&key) {
                Claim::Load(loader) => {
                    return self.load_page(handle, view, index, loader, lookup).await
                }
                Claim::Wait(waiter) => match waiter.result().await {
                    Some(result) => return result,
                    // Its loader gave up: load it here (it may be stored
                    // by now).
                    None => lookup = true,
                },
            }
        }
    }

    async fn load_page(
        &self,
        handle: &FileHandle,
        view: &View,
        index: u64,
        loader: Loader,
        lookup: bool,
    ) -> Result<Bytes, ReadError> {
        if lookup {
            if let Some(data) = self.stored_page(loader.key()).await {
                self.hot.put(loader.key().clone(), data.clone());
                loader.deliver(Ok(data.clone()));
                return Ok(data);
            }
        }
        let fetched = self.fetch_page(handle, view, index).await;
        if let Ok(data) = &fetched {
            self.hot.put(loader.key().clone(), data.clone());
        }
        loader.deliver(fetched.clone());
        if let Ok(data) = &fetched {
            self.store_fetched(loader, data.clone());
        }
        fetched
    }

    /// The whole page `key` from the page store, if stored.
    pub(super) async fn stored_page(&self, key: &PageKey) -> Option<Bytes> {
        let cache = Arc::clone(&self.cache);
        let key = key.clone();
        blocking::run(move || cache.get_bytes(&key))
            .await
            .unwrap_or(None)
    }
}
