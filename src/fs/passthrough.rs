//! FUSE passthrough: switching it on and off, the verified whole file in
//! the cache that an open hands to the kernel, and assembling that whole
//! file in the background once every page of it is cached.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::backend::BackendPath;

use super::read::FileHandle;
use super::CachalotFs;

/// Tries to assemble a whole file after a read handle closed.
const ASSEMBLY_ATTEMPTS: u32 = 10;

impl CachalotFs {
    /// Called by the adapter once the kernel granted FUSE passthrough.
    pub fn activate_passthrough(&self) {
        self.passthrough_active.store(true, Ordering::Release);
    }

    pub fn passthrough_active(&self) -> bool {
        self.passthrough_active.load(Ordering::Acquire)
    }

    /// The open could not be served by passthrough: undo its passthrough
    /// state; `disable` stops offering passthrough on this mount (the kernel
    /// refused a backing file).
    pub fn passthrough_refused(&self, fh: u64, disable: bool) {
        if disable {
            self.passthrough_active.store(false, Ordering::Release);
        }
        if let Ok(handle) = self.file_handle(fh) {
            if handle.passthrough.swap(false, Ordering::AcqRel) {
                if let Ok(inode) = self.inodes.lock().get_mut(handle.ino) {
                    inode.passthrough_opens = inode.passthrough_opens.saturating_sub(1);
                }
            }
        }
    }

    /// A verified whole file for the inode's current version (checked by
    /// this process, or still as an earlier check stamped it: passthrough
    /// from the first open after a restart). One that must be read to be
    /// checked is checked in the background, for later opens: this open
    /// does not wait for it.
    pub(super) async fn whole_file_for(
        &self,
        path: &BackendPath,
        ino: u64,
    ) -> Option<std::fs::File> {
        let version = self
            .inodes
            .lock()
            .get(ino)
            .ok()?
            .meta
            .as_ref()
            .map(|(m, _)| m.version.0.clone())?;
        let key = crate::cache::PageKey {
            source: self.backend.cache_identity().to_string(),
            path: path.as_str().to_string(),
            version,
            index: 0,
        };
        let cache = Arc::clone(&self.cache);
        let looked = {
            let key = key.clone();
            tokio::task::spawn_blocking(move || {
                if cache.trust_whole(&key) {
                    return (cache.verified_whole_file(&key), false);
                }
                (None, cache.has_whole(&key))
            })
            .await
        };
        let (file, unchecked) = looked.unwrap_or((None, false));
        if unchecked {
            self.check_whole_in_background(key);
        }
        file
    }

    /// Read and check a whole file once in the background (one check per
    /// file at a time).
    fn check_whole_in_background(&self, key: crate::cache::PageKey) {
        let stem = key.object_stem();
        if !self.assembling.lock().insert(stem.clone()) {
            return;
        }
        let (cache, busy) = (Arc::clone(&self.cache), Arc::clone(&self.assembling));
        tokio::task::spawn_blocking(move || {
            cache.verify_whole(&key);
            busy.lock().remove(&stem);
        });
    }

    /// After a read handle closes: if every page of the file is cached,
    /// assemble the whole file so later opens can use passthrough.
    pub(super) fn assemble_in_background(&self, handle: &FileHandle) {
        let size = handle.size.load(Ordering::Acquire);
        if size == 0 {
            return;
        }
        let key = self.page_key(&handle.view(), 0);
        let stem = key.object_stem();
        if !self.assembling.lock().insert(stem.clone()) {
            return;
        }
        let (cache, assembling) = (Arc::clone(&self.cache), Arc::clone(&self.assembling));
        tokio::task::spawn_blocking(move || {
            // The last pages may still be on their way to disk (page writes
            // run in the background): retry briefly before giving up.
            for _ in 0..ASSEMBLY_ATTEMPTS {
                if cache.assemble_whole(&key, size) {
                    tracing::debug!(path = key.path, "assembled a whole file for passthrough");
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            assembling.lock().remove(&stem);
        });
    }
}
