//! Files that leave the namespace while open: an unlink, or a rename over
//! them. As on a local filesystem, their open descriptors keep reading (and
//! writing) the old file: on backends with cheap renames its object is kept
//! under a hidden name until the last handle closes. And an open racing the
//! removal either gets in first (and is kept) or waits and gets ESTALE (the
//! kernel then looks the name up again): never a descriptor on a file whose
//! object vanished under it.
//!
//! On a local filesystem a file replaced by a rename through this mount is
//! kept too while the kernel still references its inode, open or not: an
//! open whose path walk found it just before the rename must open it, as a
//! local filesystem would. ESTALE would make the kernel look again, but
//! only once; a writer replacing the file faster than that (write a temp
//! file, rename it over) would fail the open. The object goes when the
//! kernel forgets the inode, which it does at once for a replaced file
//! nobody holds.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::backend::{hidden_name_for, BackendPath, ErrorKind, FileKind, Identity};

use super::inode::InodeTable;
use super::types::FsResult;
use super::write::{SessionHold, WriteSession};
use super::{CachalotFs, Caller, ROOT_INO};

/// How the object of a removed open file gets its hidden name.
#[derive(Clone, Copy)]
pub(super) enum Keep {
    Move,
    Link,
}

/// An unlink or rename-over in progress of a file. Dropping it ends the
/// removal: opens that waited for it go on.
pub(super) struct Removal<'a> {
    fs: &'a CachalotFs,
    ino: u64,
    /// The file is open and its object must be kept for the handles: the
    /// hidden-ops lock is held until the move is recorded, so readers
    /// looking for the object find it where it went.
    keep: Option<tokio::sync::MutexGuard<'a, ()>>,
    /// Kept (also) because the kernel may still open it: until forgotten.
    for_kernel: bool,
    /// The file's write session, held still while its object moves (see
    /// `WriteSession::hold`).
    held: Option<(Arc<WriteSession>, SessionHold)>,
}

impl Removal<'_> {
    pub fn keeps_open_file(&self) -> bool {
        self.keep.is_some()
    }
}

impl Drop for Removal<'_> {
    fn drop(&mut self) {
        if self.keep.is_none() {
            if let Ok(inode) = self.fs.inodes.lock().get_mut(self.ino) {
                inode.replacing = inode.replacing.saturating_sub(1);
            }
            self.fs.namespace_settled.notify_waiters();
        }
    }
}

impl CachalotFs {
    /// Start removing the file `parent/name` from the namespace (unlink,
    /// rename over it). `None` if the name is not a known file. If the file
    /// is open (or being opened) and the backend renames cheaply, the
    /// removal keeps its object for the handles (`keeps_open_file`); so
    /// does a rename over it on a local filesystem while the kernel holds
    /// the inode (`replacing`, see the module's text). Otherwise opens of
    /// it wait until the removal is over.
    pub(super) async fn begin_removal(
        &self,
        parent: u64,
        name: &str,
        replacing: bool,
    ) -> Option<Removal<'_>> {
        let capabilities = self.backend.capabilities();
        let keepable = capabilities.cheap_rename;
        // Taken before looking at the open count, so a release cannot slip
        // between the check and the move (and miss the hidden object).
        let serial = if keepable {
            Some(self.hidden_ops.lock().await)
        } else {
            None
        };
        let (ino, keep) = {
            let mut table = self.inodes.lock();
            let ino = table.child(parent, name)?;
            let inode = table.get_mut(ino).ok()?;
            if inode.kind != FileKind::File {
                return None;
            }
            let live = (inode.open_handles + inode.opening).saturating_sub(inode.closing);
            // Another name (hard link) keeps the object anyway.
            let keepable = keepable && inode.links.is_empty();
            // A new file exists only as its write session's temporary
            // object, which its handles keep anyway.
            let published = inode.write.as_ref().is_none_or(|w| !w.is_new());
            let for_kernel = replacing && capabilities.inline_io && inode.nlookup > 0;
            if keepable && (live > 0 || for_kernel) && published {
                (ino, Some((for_kernel, inode.write.clone())))
            } else {
                inode.replacing += 1;
                (ino, None)
            }
        };
        let Some((for_kernel, session)) = keep else {
            return Some(Removal {
                fs: self,
                ino,
                keep: None,
                for_kernel: false,
                held: None,
            });
        };
        let held = match session {
            Some(s) => {
                let hold = s.hold().await;
                Some((s, hold))
            }
            None => None,
        };
        Some(Removal {
            fs: self,
            ino,
            keep: serial,
            for_kernel,
            held,
        })
    }

    /// Keep the object of the open file being removed under a hidden name
    /// in the same directory, by moving it (unlink) or by linking it (rename
    /// over it, where hard links exist: the final name never goes missing
    /// for others) and point its write session there. Returns the hidden
    /// path; `record_hidden` completes the move once the namespace changed.
    pub(super) async fn keep_under_hidden_name(
        &self,
        id: Identity,
        path: &BackendPath,
        removal: &Removal<'_>,
        how: Keep,
    ) -> FsResult<BackendPath> {
        let seq = self.hidden_seq.fetch_add(1, Ordering::Relaxed);
        let hidden = path.parent().join(&hidden_name_for(path.name(), seq))?;
        match how {
            Keep::Move => self.backend.rename(id, path, &hidden, true).await?,
            Keep::Link => {
                self.backend.link(id, path, &hidden).await?;
            }
        }
        if let Err(e) = self.retarget_removed(removal, path, &hidden).await {
            // The removal fails as a whole: put the object back.
            self.drop_hidden_name(id, path, &hidden, how).await;
            return Err(e);
        }
        Ok(hidden)
    }

    /// Point the write session of the file being removed (if any) at its
    /// object's new name, under the removal's hold if it is that session.
    async fn retarget_removed(
        &self,
        removal: &Removal<'_>,
        old: &BackendPath,
        new: &BackendPath,
    ) -> FsResult<()> {
        let session = self.inodes.lock().get(removal.ino)?.write.clone();
        match (session, &removal.held) {
            (Some(s), Some((held, hold))) if Arc::ptr_eq(&s, held) => {
                s.retarget_held(hold, old, new).await
            }
            // Opened for writing after the removal began: not held.
            (Some(s), _) => s.retarget(old, new).await,
            (None, _) => Ok(()),
        }
    }

    /// Undo the backend side of `keep_under_hidden_name`: remove the link,
    /// or move the object back under its name.
    async fn drop_hidden_name(
        &self,
        id: Identity,
        path: &BackendPath,
        hidden: &BackendPath,
        how: Keep,
    ) {
        let undone = match how {
            Keep::Link => self.backend.unlink(id, hidden).await,
            Keep::Move => self.backend.rename(id, hidden, path, true).await,
        };
        if let Err(e) = undone {
            if e.kind != ErrorKind::NotFound {
                tracing::warn!(error = %e, hidden = %hidden, path = %path, "could not undo the hidden name of a file after a failed unlink or rename; the next mount's cleanup removes it");
            }
        }
    }

    /// The removal failed after `keep_under_hidden_name(.., Keep::Link)`:
    /// the file stays under its name; drop the hidden link.
    pub(super) async fn undo_keep(
        &self,
        id: Identity,
        path: &BackendPath,
        removal: &Removal<'_>,
        hidden: &BackendPath,
    ) {
        if let Err(e) = self.retarget_removed(removal, hidden, path).await {
            tracing::warn!(error = %e, errno = e.errno(), path = %path, "could not point a write back at its file after a failed rename");
        }
        self.drop_hidden_name(id, path, hidden, Keep::Link).await;
    }

    /// Record in the table that the removed open file lives under `hidden`,
    /// together with `then` (the rest of the namespace change, so nobody
    /// sees the name missing in between), and remove the object at once if
    /// its last handle closed meanwhile.
    pub(super) async fn record_hidden(
        &self,
        id: Identity,
        removal: &Removal<'_>,
        hidden: &BackendPath,
        then: impl FnOnce(&mut InodeTable),
    ) {
        {
            let mut table = self.inodes.lock();
            table.hide(removal.ino, hidden.name());
            if let Ok(inode) = table.get_mut(removal.ino) {
                inode.kept_for_kernel = removal.for_kernel;
            }
            then(&mut table);
        }
        tracing::debug!(hidden = %hidden, "kept an unlinked open file under a hidden name");
        self.remove_hidden_locked(id, removal.ino).await;
    }

    /// The kernel forgot `ino`: remove its object if it was kept only for
    /// the kernel's opens.
    pub async fn remove_forgotten(&self, ino: u64) {
        let root = Caller {
            uid: 0,
            gid: 0,
            pid: 0,
        };
        // The daemon's own identity (or the volume's fixed one): nobody
        // asked, and the rename that hid it was allowed.
        self.remove_hidden(self.identity(root), ino).await;
    }

    /// Remove a hidden object once its last handle closed (and the kernel
    /// forgot it, if it was kept for the kernel).
    pub(super) async fn remove_hidden(&self, id: Identity, ino: u64) {
        // Cheap check first: almost no release concerns a hidden file.
        if !self.inodes.lock().get(ino).is_ok_and(|i| i.hidden) {
            return;
        }
        let _serial = self.hidden_ops.lock().await;
        self.remove_hidden_locked(id, ino).await;
    }

    /// `remove_hidden` with the hidden-ops lock held.
    async fn remove_hidden_locked(&self, id: Identity, ino: u64) {
        let path = {
            let mut table = self.inodes.lock();
            let Ok(inode) = table.get_mut(ino) else {
                return;
            };
            if !inode.hidden_object_removable() {
                return;
            }
            // Out of the table before the object goes: an open arriving now
            // (the kernel looked the name up before it was replaced) gets
            // ESTALE and looks again, instead of a handle on nothing.
            inode.hidden = false;
            let (parent, name) = (inode.parent, inode.name.clone());
            let path = table.path_of(ino);
            table.detach(parent, &name);
            match path {
                Ok(path) => path,
                Err(_) => return,
            }
        };
        if let Err(e) = self.backend.unlink(id, &path).await {
            if e.kind != ErrorKind::NotFound {
                tracing::warn!(error = %e, "could not remove the object of an unlinked file; the next mount's cleanup will");
            }
        }
    }

    /// Unlinked open files kept under hidden names in `dir` would make it
    /// look non-empty to the backend: move them to the volume root.
    pub(super) async fn evacuate_hidden(&self, id: Identity, dir: u64) -> FsResult<()> {
        let _serial = self.hidden_ops.lock().await;
        let hidden = self.inodes.lock().hidden_children(dir);
        for (name, ino) in hidden {
            let from = self.path_of(ino)?;
            let to = BackendPath::root().join(&name)?;
            self.backend.rename(id, &from, &to, true).await?;
            let session = self.inodes.lock().get(ino)?.write.clone();
            if let Some(s) = session {
                s.retarget(&from, &to).await?;
            }
            self.inodes.lock().move_hidden(ino, ROOT_INO);
        }
        let orphans = self.inodes.lock().orphans_in(dir);
        for ino in orphans {
            let (from, session) = {
                let table = self.inodes.lock();
                (table.last_path(ino)?, table.get(ino)?.write.clone())
            };
            if let Some(s) = session {
                let to = BackendPath::root().join(from.name())?;
                s.retarget(&from, &to).await?;
            }
            self.inodes.lock().set_orphan_parent(ino, ROOT_INO);
        }
        Ok(())
    }
}
