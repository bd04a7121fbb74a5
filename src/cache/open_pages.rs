//! Page files kept open with their verified headers, the most recently
//! used ones, for the whole store: a small read of a stored page is then
//! an fstat and one pread of the blocks it touches, instead of an open, a
//! header read and a close (after the kernel dropped its caches, the
//! header read alone is a disk access as long as the read itself).
//!
//! An open descriptor keeps a removed file's blocks allocated, so every
//! removal by this process forgets the file here first (eviction, a
//! damaged page, a page replaced by its whole file), and a file another
//! process removed is noticed by its link count at the next read of it
//! and closed.

use std::fs::File;
use std::num::NonZeroUsize;
use std::sync::{Arc, OnceLock};

use super::index::VolumeTag;
use super::page::HeaderV2;

/// Descriptors the store may keep open: enough for the pages of a few GiB
/// read at random (1 MiB pages), within a share of the process's limit
/// (the mounter also holds FUSE sessions, sockets and backend files).
const MOST_OPEN: usize = 4096;

pub(super) struct OpenPage {
    pub file: File,
    pub header: HeaderV2,
}

type Key = (VolumeTag, String);

pub(super) struct OpenPages(parking_lot::Mutex<lru::LruCache<Key, Arc<OpenPage>>>);

impl OpenPages {
    pub fn new() -> OpenPages {
        let most = NonZeroUsize::new(descriptor_budget()).unwrap_or(NonZeroUsize::MIN);
        OpenPages(parking_lot::Mutex::new(lru::LruCache::new(most)))
    }

    pub fn get(&self, volume: VolumeTag, stem: &str) -> Option<Arc<OpenPage>> {
        self.0.lock().get(&(volume, stem.to_string())).cloned()
    }

    pub fn put(&self, volume: VolumeTag, stem: String, page: OpenPage) {
        self.0.lock().put((volume, stem), Arc::new(page));
    }

    /// Close the page file (a reader holding it finishes its read).
    pub fn forget(&self, volume: VolumeTag, stem: &str) {
        self.0.lock().pop(&(volume, stem.to_string()));
    }
}

/// How many page files the store keeps open: raises the soft limit of open
/// descriptors to the hard one (once per process; the usual default of
/// 1024 is a leftover of `select`, which we do not use) and takes up to a
/// quarter of it.
fn descriptor_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a valid pointer to a struct of the right type.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                ..limit
            };
            // SAFETY: as above; on failure the limit stays as it was.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit = raised;
            }
        }
        usize::try_from(limit.rlim_cur / 4)
            .unwrap_or(usize::MAX)
            .min(MOST_OPEN)
    })
}
