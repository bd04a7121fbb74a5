//! Metadata requests: lookup, getattr and setattr (a size change is a
//! truncate through a write session), readlink, statfs and the volume's
//! capacity; and the attributes answered from local state while they can
//! be trusted (a file being written, metadata within its TTL).

use std::time::Instant;

use crate::backend::{AttrChanges, ErrorKind, FileKind, FsStats, Metadata, WriteStart};

use super::inode::{self, InodeTable, Refreshed};
use super::types::{Attr, Caller, FsError, FsResult};
use super::CachalotFs;

impl CachalotFs {
    fn fresh(&self, fetched: Instant) -> bool {
        fetched.elapsed() < self.cfg.metadata_ttl
    }

    pub(super) fn attr_of(&self, ino: u64, meta: &Metadata) -> Attr {
        Attr {
            ino,
            kind: meta.kind,
            size: meta.size,
            mode: meta.mode,
            uid: meta.uid,
            gid: self.cfg.mount_group.unwrap_or(meta.gid),
            nlink: meta.nlink,
            atime: meta.atime,
            mtime: meta.mtime,
            ctime: meta.ctime,
            rdev: meta.rdev,
        }
    }

    /// Attributes from local state if still trustworthy: a file being written
    /// reports its temporary object, otherwise cached metadata within TTL.
    pub(super) fn local_attr(&self, ino: u64) -> FsResult<Option<Attr>> {
        let table = self.inodes.lock();
        self.local_attr_in(&table, ino)
    }

    pub(super) fn local_attr_in(&self, table: &InodeTable, ino: u64) -> FsResult<Option<Attr>> {
        self.local_attr_of(ino, table.get(ino)?)
    }

    /// `local_attr_in` for an inode already found.
    pub(super) fn local_attr_of(&self, ino: u64, inode: &inode::Inode) -> FsResult<Option<Attr>> {
        let attr = match (&inode.write, &inode.meta) {
            // The write's own size and times; the object's link count.
            (Some(session), Some((meta, _))) => {
                let mut attr = self.attr_of(ino, &session.attributes());
                attr.nlink = meta.nlink;
                attr
            }
            (Some(session), None) => self.attr_of(ino, &session.attributes()),
            (None, Some((meta, at))) if self.fresh(*at) => self.attr_of(ino, meta),
            // Gone from the backend namespace: what we last knew is all
            // there is (fstat of an open, removed directory).
            (None, Some((meta, _))) if !inode.attached => self.attr_of(ino, meta),
            (None, None) if !inode.attached => return Err(FsError::new(libc::ESTALE)),
            _ => return Ok(None),
        };
        Ok(Some(Self::unlinked_view(inode, attr)))
    }

    /// An unlinked inode (still open somewhere) has no links left.
    fn unlinked_view(inode: &inode::Inode, mut attr: Attr) -> Attr {
        if inode.unlinked {
            attr.nlink = 0;
        }
        attr
    }

    /// `lookup` answered from the inode table alone (a known name whose
    /// attributes are fresh), or `None`: nothing was done.
    pub fn lookup_known(&self, parent: u64, name: &str) -> Option<Attr> {
        // Resolve and count the kernel's reference under one lock: a
        // FORGET in between must not drop the inode we reply with.
        let mut table = self.inodes.lock();
        let ino = table.child(parent, name)?;
        if table.get(ino).ok()?.replacing > 0 {
            return None; // see `removal_settled`
        }
        let attr = self.local_attr_in(&table, ino).ok()??;
        table.remember(ino);
        Some(attr)
    }

    /// Wait while the file named `parent/name` is being unlinked or renamed
    /// over: answering with it now would send the kernel an inode that is
    /// about to lose the name, and its open would fail (ESTALE) after the
    /// kernel already retried once.
    async fn removal_settled(&self, parent: u64, name: &str) {
        loop {
            let settled = self.namespace_settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            {
                let table = self.inodes.lock();
                let removing = table
                    .child(parent, name)
                    .and_then(|ino| table.get(ino).ok())
                    .is_some_and(|inode| inode.replacing > 0);
                if !removing {
                    return;
                }
            }
            settled.await;
        }
    }

    /// Whether `meta`, just read from the backend, shows another version
    /// under the name of `ino` while that file is open: a change
    /// behind the mount, or a rename over it through this mount that has
    /// moved the objects but not yet recorded the move (`moves_recorded`).
    pub(super) fn would_supersede(table: &InodeTable, ino: Option<u64>, meta: &Metadata) -> bool {
        ino.and_then(|ino| table.get(ino).ok())
            .is_some_and(|inode| inode.replaced_behind_open_descriptors(meta))
    }

    /// Wait until the renames and unlinks through this mount that keep an
    /// open file's object under a hidden name have recorded their moves
    /// (they hold the hidden-ops lock from the first backend change until
    /// then). A stat that met one halfway is then asked again: only a
    /// change behind the mount may supersede an open file, whose readers
    /// would otherwise get ESTALE for a rename done through this mount.
    pub(super) async fn moves_recorded(&self) {
        drop(self.hidden_ops.lock().await);
    }

    /// `getattr` answered from the inode table alone, or `None`.
    pub fn getattr_known(&self, ino: u64) -> Option<FsResult<Attr>> {
        self.local_attr_in(&self.inodes.lock(), ino).transpose()
    }

    pub async fn lookup(&self, caller: Caller, parent: u64, name: &str) -> FsResult<Attr> {
        let path = self.child_path(parent, name)?;
        self.removal_settled(parent, name).await;
        if let Some(attr) = self.lookup_known(parent, name) {
            return Ok(attr);
        }
        let mut waited = false;
        let (asked, found) = loop {
            let asked = Instant::now();
            let found = self.backend.stat(self.identity(caller), &path).await;
            let supersedes = |meta| {
                let table = self.inodes.lock();
                Self::would_supersede(&table, table.child(parent, name), meta)
            };
            match &found {
                Ok(meta) if !waited && supersedes(meta) => {
                    self.moves_recorded().await;
                    waited = true;
                }
                _ => break (asked, found),
            }
        };
        match found {
            Ok(meta) => {
                let mut table = self.inodes.lock();
                let ino = table.upsert_entry(parent, name, meta.clone(), asked);
                // A file being written reports its temporary object.
                let attr = match self.local_attr_in(&table, ino) {
                    Ok(Some(attr)) => attr,
                    _ => self.attr_of(ino, &meta),
                };
                Ok(attr)
            }
            Err(e) => {
                if e.kind == ErrorKind::NotFound {
                    self.inodes.lock().detach(parent, name);
                }
                Err(e.into())
            }
        }
    }

    pub async fn getattr(&self, caller: Caller, ino: u64) -> FsResult<Attr> {
        // One look at the table: an inode detached in between (replaced,
        // superseded) is answered from what was last known, not ENOENT.
        let mut waited = false;
        let (asked, meta) = loop {
            let path = {
                let table = self.inodes.lock();
                if let Some(attr) = self.local_attr_in(&table, ino)? {
                    return Ok(attr);
                }
                table.path_of(ino)?
            };
            let asked = Instant::now();
            let meta = self.backend.stat(self.identity(caller), &path).await?;
            if waited || !Self::would_supersede(&self.inodes.lock(), Some(ino), &meta) {
                break (asked, meta);
            }
            self.moves_recorded().await;
            waited = true;
        };
        let mut table = self.inodes.lock();
        let refreshed = table.refresh(ino, meta.clone(), asked)?;
        self.relookup_split_names(&mut table);
        if refreshed == Refreshed::Superseded {
            // The kernel's entry still points here: make its next path walk
            // look the name up (and meet the new version's inode).
            self.invalidate_kernel_entry(&table, ino);
        }
        let inode = table.get(ino)?;
        // What is recorded now: the new metadata, or what the open
        // descriptors read (superseded), or a newer publish (outdated).
        let attr = match &inode.meta {
            Some((recorded, _)) => self.attr_of(ino, recorded),
            None => self.attr_of(ino, &meta),
        };
        Ok(Self::unlinked_view(inode, attr))
    }

    /// Change attributes. A size change is a write: it goes through a write
    /// session and is published at once unless the file is open for writing
    /// (then at close), so a truncate is as atomic as any write.
    pub async fn setattr(
        &self,
        caller: Caller,
        ino: u64,
        size: Option<u64>,
        changes: AttrChanges,
    ) -> FsResult<Attr> {
        self.check_writable()?;
        if let Some(size) = size {
            self.truncate(caller, ino, size).await?;
        }
        if !changes.is_empty() {
            let session = self.inodes.lock().get(ino)?.write.clone();
            let on_backend = match &session {
                Some(s) => {
                    s.set_attr(&changes).await?;
                    !s.is_new()
                }
                None => true,
            };
            if on_backend {
                let path = self.path_of(ino)?;
                let meta = self
                    .backend
                    .set_attr(self.identity(caller), &path, &changes)
                    .await?;
                self.inodes.lock().set_meta(ino, meta, Instant::now());
            }
        }
        self.getattr(caller, ino).await
    }

    async fn truncate(&self, caller: Caller, ino: u64, size: u64) -> FsResult<()> {
        if self.inodes.lock().get(ino)?.kind == FileKind::Directory {
            return Err(FsError::new(libc::EISDIR));
        }
        let start = if size == 0 {
            WriteStart::Empty
        } else {
            WriteStart::CopyExisting
        };
        // Whether an open writer will publish the session at its release:
        // asked once the session exists. Asked before, a writer released
        // in between (its RELEASE comes after close(2) returned) found no
        // session to publish, and this one was left to nobody.
        let no_writer = || -> FsResult<bool> { Ok(self.inodes.lock().get(ino)?.writers == 0) };
        loop {
            let session = self.write_session(caller, ino, start).await?;
            match session.truncate(size).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    // truncate(2) on a path: nobody will close it, so the
                    // failed session (and its temporary object) goes now.
                    if no_writer()? {
                        let _ = self.publish(ino).await;
                    }
                    return Err(e);
                }
            }
        }
        if no_writer()? {
            // truncate(2) on a path: nobody will close it, publish now.
            self.publish(ino).await?;
        }
        Ok(())
    }

    pub async fn readlink(&self, caller: Caller, ino: u64) -> FsResult<String> {
        let path = self.path_of(ino)?;
        Ok(self.backend.readlink(self.identity(caller), &path).await?)
    }

    pub async fn statfs(&self, caller: Caller) -> FsResult<FsStats> {
        Ok(self.backend.statfs(self.identity(caller)).await?)
    }

    /// A new byte quota for the volume, live (CSI NodeExpandVolume sets
    /// the root's `user.cachalot.capacity`); root only.
    pub async fn set_capacity(&self, caller: Caller, bytes: u64) -> FsResult<()> {
        if caller.uid != 0 {
            return Err(FsError::new(libc::EPERM));
        }
        self.backend.set_capacity(bytes).await?;
        tracing::info!(capacity = bytes, "the volume's capacity changed");
        Ok(())
    }
}
