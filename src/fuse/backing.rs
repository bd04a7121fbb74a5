//! FUSE passthrough backing ids, and the adapter state a successor process
//! needs (what INIT negotiated, which backing ids are registered).

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use fuser::{BackingId, FileHandle, FopenFlags, ReplyOpen};

use super::convert::open_flags;
use crate::fs::{CachalotFs, Opened, Passthrough};

/// What a successor process needs from the adapter of a session it takes
/// over: what INIT negotiated and the passthrough backing ids registered.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct AdapterState {
    pub abi: (u32, u32),
    /// Backing id registered per inode (FUSE passthrough).
    pub backing_ids: Vec<(u64, u32)>,
}

/// Kernel backing-file registrations for passthrough opens. The kernel
/// requires every concurrent passthrough open of an inode to use the same
/// backing id, so ids are shared per inode and dropped with the last handle.
#[derive(Default)]
pub(super) struct BackingIds {
    by_inode: parking_lot::Mutex<HashMap<u64, Weak<BackingId>>>,
    by_handle: parking_lot::Mutex<HashMap<u64, Arc<BackingId>>>,
    /// Ids a predecessor process registered, by inode: wrapped at the next
    /// open of the inode (its earlier opens use them in the kernel).
    pub(super) inherited: parking_lot::Mutex<HashMap<u64, u32>>,
    /// Inherited ids once wrapped.
    inherited_kept: parking_lot::Mutex<Vec<Arc<BackingId>>>,
}

impl BackingIds {
    /// Reply to an open, registering or reusing the inode's backing file.
    pub(super) fn reply(&self, fs: &CachalotFs, ino: u64, opened: Opened, reply: ReplyOpen) {
        let flags = open_flags(&opened);
        let mut refused = false;
        let id = {
            let mut by_inode = self.by_inode.lock();
            let live = by_inode.get(&ino).and_then(Weak::upgrade).or_else(|| {
                let raw = self.inherited.lock().remove(&ino)?;
                // SAFETY: registered on this connection by the process we
                // took it over from, and never closed since (that process
                // exited without dropping its ids).
                let id = Arc::new(unsafe { reply.wrap_backing(raw) });
                by_inode.insert(ino, Arc::downgrade(&id));
                // Handles opened before the takeover use it in the kernel
                // but hold no reference here: keep it until unmount.
                self.inherited_kept.lock().push(Arc::clone(&id));
                Some(id)
            });
            match (&opened.passthrough, live) {
                (Passthrough::No, _) => None,
                (_, Some(existing)) => Some(existing),
                (Passthrough::New(file), None) | (Passthrough::Reuse(file), None) => {
                    match reply.open_backing(file) {
                        Ok(id) => {
                            let id = Arc::new(id);
                            by_inode.insert(ino, Arc::downgrade(&id));
                            Some(id)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "kernel refused a passthrough backing file; passthrough disabled for this mount");
                            refused = true;
                            None
                        }
                    }
                }
            }
        };
        tracing::trace!(
            ino,
            fh = opened.fh,
            passthrough = !matches!(opened.passthrough, Passthrough::No),
            backing = id.is_some(),
            "open replied"
        );
        match id {
            Some(id) => {
                self.by_handle.lock().insert(opened.fh, Arc::clone(&id));
                // The kernel reads the backing file: no page cache of ours to keep.
                let flags = open_flags(&opened) - FopenFlags::FOPEN_KEEP_CACHE;
                reply.opened_passthrough(FileHandle(opened.fh), flags, &id);
            }
            None => {
                if !matches!(opened.passthrough, Passthrough::No) {
                    fs.passthrough_refused(opened.fh, refused);
                }
                reply.opened(FileHandle(opened.fh), flags);
            }
        }
    }

    pub(super) fn release(&self, fh: u64) {
        self.by_handle.lock().remove(&fh);
    }

    fn export(&self) -> Vec<(u64, u32)> {
        let mut ids: Vec<(u64, u32)> = self
            .by_inode
            .lock()
            .iter()
            .filter_map(|(ino, id)| id.upgrade().map(|id| (*ino, id.raw())))
            .collect();
        ids.extend(self.inherited.lock().iter().map(|(i, r)| (*i, *r)));
        ids
    }
}

/// Kept by the mount, which outlives the adapter (fuser owns that).
pub struct AdapterStateReader {
    pub(super) abi: Arc<parking_lot::Mutex<Option<(u32, u32)>>>,
    pub(super) backing: Arc<BackingIds>,
}

impl AdapterStateReader {
    pub fn read(&self) -> Option<AdapterState> {
        Some(AdapterState {
            abi: (*self.abi.lock())?,
            backing_ids: self.backing.export(),
        })
    }
}
