//! The backend tier of a read: pages of the view's version from the
//! backend (one page for a reader, a streamed run of pages for
//! read-ahead), through the handle's reader of that version (opened at the
//! first miss, shared between the inode's descriptors), following the
//! file's object when it moved and noticing when it changed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use crate::backend::{ErrorKind, ObjectReader, VersionToken};
use crate::buffers::PageBuffer;

use super::{FileHandle, ReadError, View};
use crate::fs::types::FsError;
use crate::fs::CachalotFs;

impl CachalotFs {
    /// Read one page of the view's version from the backend.
    pub(super) async fn fetch_page(
        &self,
        handle: &FileHandle,
        view: &View,
        index: u64,
    ) -> Result<Bytes, ReadError> {
        let mut pages = self.fetch_pages(handle, view, index, 1).await?;
        Ok(pages.pop().unwrap_or_default())
    }

    /// Read `count` pages of the view's version from `first` on, in one
    /// backend request; past the end of the file the pages are empty.
    pub(super) async fn fetch_pages(
        &self,
        handle: &FileHandle,
        view: &View,
        first: u64,
        count: u64,
    ) -> Result<Vec<Bytes>, ReadError> {
        let reader = self.reader_of_view(handle, view).await?;
        let page_size = self.cache.page_size();
        let (offset, len) = (first * page_size, (count * page_size) as usize);
        let data = match reader.read_at(offset, len).await {
            Ok(data) => data,
            Err(e) => return Err(self.fetch_error(handle, view, e).await),
        };
        let len = data.len() as u64;
        // Pages, not requests, as the cache counts its hits.
        self.count_fetched(len.div_ceil(page_size).clamp(1, count), len);
        Ok((0..count)
            .map(|i| {
                let (start, end) = ((i * page_size).min(len), ((i + 1) * page_size).min(len));
                data.slice(start as usize..end as usize)
            })
            .collect())
    }

    /// Read `count` pages of the view's version from `first` on in one
    /// backend request, handing each page to `on_page` as soon as its bytes
    /// have arrived (in order; a short last page at the end of the file,
    /// none past it): a reader waiting for the first page of a large
    /// request need not wait for the last. Pages handed on before an error
    /// are of the view's version (the request was pinned to it); on an
    /// error, the pages not handed on are the caller's to fail.
    pub(super) async fn fetch_streamed(
        &self,
        handle: &FileHandle,
        view: &View,
        first: u64,
        count: u64,
        mut on_page: impl FnMut(Bytes),
    ) -> Result<(), ReadError> {
        let reader = self.reader_of_view(handle, view).await?;
        let page_size = self.cache.page_size() as usize;
        let (offset, len) = (first * page_size as u64, count as usize * page_size);
        let mut stream = match reader.read_stream(offset, len).await {
            Ok(stream) => stream,
            Err(e) => return Err(self.fetch_error(handle, view, e).await),
        };
        // The page being gathered and how much of it is filled.
        let mut page: Option<(PageBuffer, usize)> = None;
        let mut total = 0usize;
        // Counted as each page is handed on, not at the end of the body: a
        // reader served by this page may look at the counters before the
        // rest has arrived.
        let mut deliver = |page: Bytes| {
            self.count_fetched(1, page.len() as u64);
            on_page(page);
        };
        while let Some(item) = stream.next().await {
            let mut chunk = match item {
                Ok(chunk) => chunk,
                Err(e) => return Err(self.fetch_error(handle, view, e).await),
            };
            total += chunk.len();
            if total > len {
                // A backend's own check failed: never hand on bytes of
                // a page that was not asked for.
                tracing::warn!(path = %view.path, offset, len, total,
                    "the backend returned more bytes than asked for");
                return Err(FsError::new(libc::EIO).into());
            }
            while !chunk.is_empty() {
                if page.is_none() && chunk.len() >= page_size {
                    // A whole page within one buffer: no copy.
                    deliver(chunk.split_to(page_size));
                    continue;
                }
                // Buffers are usually far smaller than a page (an HTTP
                // body comes in frames of kilobytes): gather them into
                // one page buffer, so that a page holds its own memory
                // only, not a whole request's body. Page buffers come
                // from a pool whose memory stays resident: a fresh heap
                // allocation per page cost a page fault per 4 KiB.
                let (buf, filled) = page.get_or_insert_with(|| (PageBuffer::new(page_size), 0));
                let take = (page_size - *filled).min(chunk.len());
                buf.as_mut_slice()[*filled..*filled + take].copy_from_slice(&chunk.split_to(take));
                *filled += take;
                if *filled == page_size {
                    if let Some((full, _)) = page.take() {
                        deliver(full.freeze());
                    }
                }
            }
        }
        if let Some((mut last, filled)) = page.take() {
            last.truncate(filled);
            deliver(last.freeze());
        }
        Ok(())
    }

    /// Count a backend read of `pages` pages (not requests, as the cache
    /// counts its hits) and `bytes` bytes.
    fn count_fetched(&self, pages: u64, bytes: u64) {
        self.counters
            .backend_reads
            .fetch_add(pages, Ordering::Relaxed);
        self.counters
            .backend_read_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// What a failed backend read means for the view: the object the
    /// reader has open changed in place (another writer, behind the
    /// mount), and which version is there now decides (see `read`); any
    /// other error is the reader's.
    async fn fetch_error(
        &self,
        handle: &FileHandle,
        view: &View,
        e: crate::backend::BackendError,
    ) -> ReadError {
        if e.kind == ErrorKind::Stale {
            return self.changed_in_place(handle, view).await;
        }
        FsError::from(e).into()
    }

    /// The handle's reader if it reads the view's version; `Changed` if
    /// the backend has another one now.
    async fn reader_of_view(
        &self,
        handle: &FileHandle,
        view: &View,
    ) -> Result<Arc<dyn ObjectReader>, ReadError> {
        let reader = self.reader(handle, view).await?;
        if *reader.version() != view.version {
            return Err(ReadError::Changed {
                version: reader.version().clone(),
                size: reader.size(),
            });
        }
        Ok(reader)
    }

    /// The reader of `view` found its object changed in place: forget that
    /// reader, and report the version the backend has now (`Changed`), or
    /// ESTALE if there is nothing to follow.
    async fn changed_in_place(&self, handle: &FileHandle, view: &View) -> ReadError {
        handle.reader.lock().take();
        if let Ok(inode) = self.inodes.lock().get_mut(handle.ino) {
            inode.reader = None;
        }
        match self.backend.stat(handle.identity, &view.path).await {
            Ok(meta) if meta.version != view.version => ReadError::Changed {
                version: meta.version,
                size: meta.size,
            },
            _ => {
                tracing::warn!(path = %view.path, ino = handle.ino,
                    "file changed in place behind the mount while open; this descriptor's version is gone (ESTALE)");
                ReadError::Fs(FsError::new(libc::ESTALE))
            }
        }
    }

    /// The reader another descriptor of the inode opened, if of `version`.
    fn shared_reader(&self, ino: u64, version: &VersionToken) -> Option<Arc<dyn ObjectReader>> {
        let table = self.inodes.lock();
        let shared = table.get(ino).ok()?.reader.as_ref()?;
        (shared.version() == version && !version.0.is_empty()).then(|| Arc::clone(shared))
    }

    /// The handle's backend reader, opened at the view's path if it has none.
    async fn reader(
        &self,
        handle: &FileHandle,
        view: &View,
    ) -> Result<Arc<dyn ObjectReader>, ReadError> {
        if let Some(r) = handle.reader.lock().as_ref() {
            return Ok(Arc::clone(r));
        }
        if let Some(r) = self.shared_reader(handle.ino, &view.version) {
            *handle.reader.lock() = Some(Arc::clone(&r));
            return Ok(r);
        }
        let opened = self.backend.open_read(handle.identity, &view.path).await;
        let elsewhere = match &opened {
            Ok(r) => !view.version.0.is_empty() && *r.version() != view.version,
            Err(e) => e.kind == ErrorKind::NotFound,
        };
        if elsewhere {
            // The file may have been unlinked or replaced while open: its
            // object moves to a hidden name (and another file may take the
            // old one). Wait for any such move to finish and follow the
            // inode's name: this request starts over there.
            drop(self.hidden_ops.lock().await);
            let now = self.inodes.lock().path_of(handle.ino).ok();
            match now {
                Some(path) if path != view.path => {
                    handle.set_path(path);
                    return Err(ReadError::Moved);
                }
                // Removed while open and not kept (a backend without cheap
                // renames): its data is gone, as for an NFS file deleted by
                // another client.
                None if opened.is_err() => return Err(FsError::new(libc::ESTALE).into()),
                _ => {}
            }
        }
        let reader: Arc<dyn ObjectReader> = opened.map_err(FsError::from)?.into();
        if *reader.version() == view.version {
            if let Ok(inode) = self.inodes.lock().get_mut(handle.ino) {
                inode.reader = Some(Arc::clone(&reader));
            }
        }
        let mut slot = handle.reader.lock();
        // Keep a reader another request opened meanwhile if it matches.
        match slot.as_ref() {
            Some(r) if r.version() == &view.version => Ok(Arc::clone(r)),
            _ => {
                *slot = Some(Arc::clone(&reader));
                Ok(reader)
            }
        }
    }
}
