//! FUSE passthrough: switching it on and off, the verified whole file in
//! the cache that an open hands to the kernel, and assembling that whole
//! file in the background once every page of it is cached.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::backend::BackendPath;

use super::inode::{Inode, InodeTable};
use super::read::FileHandle;
use super::types::FsError;
use super::CachalotFs;

/// Tries to assemble a whole file after a read handle closed.
const ASSEMBLY_ATTEMPTS: u32 = 10;

/// Unchecked whole files up to this size are checked within the open that
/// finds them (tens of milliseconds): a damaged one is gone before the
/// open's reads, so they fetch and store every page again (and the file is
/// assembled anew at its close). Larger ones are checked in the background.
const CHECK_IN_OPEN_MAX_BYTES: u64 = 64 << 20;

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
                    if inode.passthrough_opens == 0 {
                        inode.passthrough_version = None;
                    }
                }
            }
        }
    }

    /// How the kernel reads the open file `fh`: its inode, and whether by
    /// passthrough. Taken when its RELEASE arrives, for `kernel_released`.
    pub fn kernel_mode_of(&self, fh: u64) -> Option<(u64, bool)> {
        let handle = self.file_handle(fh).ok()?;
        Some((handle.ino, handle.passthrough.load(Ordering::Acquire)))
    }

    /// The reply to a file's RELEASE was sent: the kernel no longer counts
    /// it in its inode's I/O mode.
    pub fn kernel_released(&self, ino: u64, passthrough: bool) {
        let mut table = self.inodes.lock();
        if let Ok(inode) = table.get_mut(ino) {
            inode.kernel_opens = inode.kernel_opens.saturating_sub(1);
            if passthrough {
                inode.passthrough_opens = inode.passthrough_opens.saturating_sub(1);
                if inode.passthrough_opens == 0 {
                    inode.passthrough_version = None;
                }
            }
        }
    }

    /// Whether an open of `inode` cannot share it with its passthrough
    /// opens: it writes (or truncates), or the inode's version is no longer
    /// the one their backing file holds (published since, through this
    /// mount or seen changed).
    pub(super) fn held_by_other_passthrough(inode: &Inode, writes: bool) -> bool {
        if inode.passthrough_opens == 0 {
            return false;
        }
        let current = inode.meta.as_ref().map(|(m, _)| &m.version);
        writes
            || inode
                .passthrough_version
                .as_ref()
                .is_some_and(|read| Some(read) != current)
    }

    /// Leave the inode `ino` to its passthrough opens (see
    /// `held_by_other_passthrough`): it keeps their version and leaves the
    /// namespace, and the kernel is told to look its name up again. The
    /// error for the open that could not share it: ESTALE, on which the
    /// kernel walks the path again and opens the new inode.
    pub(super) fn move_off_passthrough(&self, table: &mut InodeTable, ino: u64) -> FsError {
        // One that already left the namespace (replaced, unlinked: its
        // hidden name is what removes its object at the last close) has
        // nothing to move: the kernel's new walk finds what the name is now.
        let named = table
            .get(ino)
            .is_ok_and(|i| i.attached && !i.hidden && !i.unlinked && !i.superseded);
        if named {
            table.supersede(ino);
            self.invalidate_kernel_entry(table, ino);
        }
        tracing::debug!(ino, "an open moved off an inode read by passthrough");
        FsError::new(libc::ESTALE)
    }

    /// A verified whole file for the inode's current version of `size`
    /// bytes (checked by this process, or still as an earlier check stamped
    /// it: passthrough from the first open after a restart). One that must
    /// be read to be checked is checked here if small, else in the
    /// background for later opens (see [`CHECK_IN_OPEN_MAX_BYTES`]).
    pub(super) async fn whole_file_for(
        &self,
        path: &BackendPath,
        ino: u64,
        size: u64,
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
                if size <= CHECK_IN_OPEN_MAX_BYTES && cache.has_whole(&key) {
                    return match cache.verify_whole(&key) {
                        true => (cache.verified_whole_file(&key), false),
                        false => (None, false),
                    };
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
