//! Namespace changes: mkdir, rmdir, unlink, rename, symlink, link, mknod.
//! Names are links to inodes (see `inode`); an open file that loses its
//! last name keeps its object for its descriptors (see `unlinked`).

use super::*;

impl CachalotFs {
    /// A name the backend just created: its inode (with the reference the
    /// reply gives the kernel) and attributes.
    fn entered(&self, parent: u64, name: &str, meta: &Metadata) -> Attr {
        let ino = self
            .inodes
            .lock()
            .upsert_entry(parent, name, meta.clone(), Instant::now());
        self.attr_of(ino, meta)
    }

    pub async fn mkdir(
        &self,
        caller: Caller,
        parent: u64,
        name: &str,
        mode: u32,
    ) -> FsResult<Attr> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        let meta = self
            .backend
            .mkdir(self.identity(caller), &path, mode)
            .await?;
        Ok(self.entered(parent, name, &meta))
    }

    pub async fn rmdir(&self, caller: Caller, parent: u64, name: &str) -> FsResult<()> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        let id = self.identity(caller);
        let dir = self.inodes.lock().child(parent, name);
        if let Some(dir) = dir {
            self.evacuate_hidden(id, dir).await?;
        }
        self.backend.rmdir(id, &path).await?;
        self.inodes.lock().detach(parent, name);
        Ok(())
    }

    pub async fn unlink(&self, caller: Caller, parent: u64, name: &str) -> FsResult<()> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        let id = self.identity(caller);
        let removal = self.begin_removal(parent, name, false).await;
        if let Some(removal) = removal.as_ref().filter(|r| r.keeps_open_file()) {
            let hidden = self
                .keep_under_hidden_name(id, &path, removal, Keep::Move)
                .await?;
            self.record_hidden(id, removal, &hidden, |_| {}).await;
            return Ok(());
        }
        let session = {
            let table = self.inodes.lock();
            table
                .child(parent, name)
                .and_then(|ino| table.get(ino).ok())
                .and_then(|i| i.write.clone())
        };
        match &session {
            // Only a temporary object exists: nothing to remove in the
            // backend, except an object it replaced by a rename.
            Some(s) if s.is_new() => {
                if s.take_replaced() {
                    self.remove_replaced(id, &path).await?;
                }
            }
            _ => self.backend.unlink(id, &path).await?,
        }
        let (ino, named, first) = {
            let mut table = self.inodes.lock();
            let first = table
                .child(parent, name)
                .and_then(|ino| table.get(ino).ok())
                .is_some_and(|i| i.is_named(parent, name));
            let ino = table.detach(parent, name);
            let named = ino
                .and_then(|i| table.get(i).ok())
                .is_some_and(|i| i.attached);
            (ino, named, first)
        };
        match (ino, named) {
            // With another name left, the file's write goes on under it.
            (Some(ino), true) if first => self.follow_first_name(ino, &path).await?,
            (Some(_), true) => {}
            _ => {
                if let Some(s) = session {
                    s.orphan();
                }
            }
        }
        Ok(())
    }

    /// Delete the backend object a new file replaced by rename before it was
    /// published: its name has moved on, so nothing will replace it now.
    pub(super) async fn remove_replaced(&self, id: Identity, path: &BackendPath) -> FsResult<()> {
        match self.backend.unlink(id, path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn rename(
        &self,
        caller: Caller,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        no_replace: bool,
    ) -> FsResult<()> {
        self.check_writable()?;
        let from = self.child_path(parent, name)?;
        let to = self.child_path(new_parent, new_name)?;
        let id = self.identity(caller);
        let (source, target, from_first, to_first) = {
            let table = self.inodes.lock();
            let (source, target) = (table.child(parent, name), table.child(new_parent, new_name));
            let first = |ino: Option<u64>, p: u64, n: &str| {
                ino.and_then(|i| table.get(i).ok())
                    .is_none_or(|i| i.is_named(p, n))
            };
            (
                source,
                target,
                first(source, parent, name),
                first(target, new_parent, new_name),
            )
        };
        if source.is_some() && source == target {
            return Ok(()); // same inode: POSIX says do nothing
        }
        if let (Some(target), false) = (target, no_replace) {
            // A directory being replaced must look empty to the backend.
            let is_dir = self
                .inodes
                .lock()
                .get(target)
                .is_ok_and(|i| i.kind == FileKind::Directory);
            if is_dir {
                self.evacuate_hidden(id, target).await?;
            }
        }
        let removal = match no_replace {
            true => None,
            false => self.begin_removal(new_parent, new_name, true).await,
        };
        // An open file being replaced keeps its object for its handles.
        let kept = match removal.as_ref().filter(|r| r.keeps_open_file()) {
            Some(r) if self.backend.capabilities().hard_links => {
                let hidden = self.keep_under_hidden_name(id, &to, r, Keep::Link).await?;
                Some((r, hidden))
            }
            Some(r) => {
                // Without hard links the name is briefly missing.
                let hidden = self.keep_under_hidden_name(id, &to, r, Keep::Move).await?;
                self.record_hidden(id, r, &hidden, |_| {}).await;
                None
            }
            None => None,
        };
        let (session, replaced) = {
            let table = self.inodes.lock();
            let session = table
                .child(parent, name)
                .and_then(|ino| table.get(ino).ok())
                .and_then(|i| i.write.clone());
            // A kept file's write session goes on under its hidden name,
            // a file with other names under those.
            let replaced = table
                .child(new_parent, new_name)
                .filter(|_| kept.is_none())
                .and_then(|ino| table.get(ino).ok())
                .filter(|i| i.links.is_empty())
                .and_then(|i| i.write.clone());
            (session, replaced)
        };
        let moved = self
            .rename_objects(
                id,
                (&from, from_first),
                &to,
                session.as_ref(),
                new_parent,
                new_name,
                no_replace,
            )
            .await;
        if let Err(e) = moved {
            if let Some((r, hidden)) = &kept {
                self.undo_keep(id, &to, r, hidden).await;
            }
            return Err(e);
        }
        if let Some(r) = replaced {
            r.orphan();
        }
        let rename_entry = |t: &mut InodeTable| t.rename(parent, name, new_parent, new_name);
        match &kept {
            Some((r, hidden)) => self.record_hidden(id, r, hidden, rename_entry).await,
            None => rename_entry(&mut self.inodes.lock()),
        }
        if let (Some(target), true, None) = (target, to_first, &kept) {
            self.follow_first_name(target, &to).await?;
        }
        Ok(())
    }

    /// A file with several names lost its first one (`old`), and another
    /// took its place: a write in progress keeps its temporary object next
    /// to the first name (where it is published, and where an rmdir of the
    /// old directory would otherwise find it), so it moves over.
    pub(super) async fn follow_first_name(&self, ino: u64, old: &BackendPath) -> FsResult<()> {
        let (session, now) = {
            let table = self.inodes.lock();
            let inode = table.get(ino)?;
            match (&inode.write, inode.attached) {
                (Some(s), true) => (Arc::clone(s), table.path_of(ino)?),
                _ => return Ok(()),
            }
        };
        if now.parent() != old.parent() {
            session.retarget(old, &now).await?;
        }
        Ok(())
    }

    /// The backend side of a rename: a file being written for the first
    /// time exists only as its temporary object, which is retargeted (and
    /// replaces the target when it publishes); anything else is renamed.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn rename_objects(
        &self,
        id: Identity,
        (from, from_first): (&BackendPath, bool),
        to: &BackendPath,
        session: Option<&Arc<WriteSession>>,
        new_parent: u64,
        new_name: &str,
        no_replace: bool,
    ) -> FsResult<()> {
        match session {
            Some(s) if s.is_new() => {
                if no_replace && self.exists(id, new_parent, new_name, to).await? {
                    return Err(FsError::new(libc::EEXIST));
                }
                let existing = match self.backend.stat(id, to).await {
                    Ok(meta) => Some(meta),
                    Err(e) if e.kind == ErrorKind::NotFound => None,
                    Err(e) => return Err(e.into()),
                };
                if existing
                    .as_ref()
                    .is_some_and(|m| m.kind == FileKind::Directory)
                {
                    return Err(FsError::new(libc::EISDIR));
                }
                s.retarget(from, to).await?;
                // Moving on from a name it had replaced: that object is gone
                // for good now.
                if s.take_replaced() {
                    self.remove_replaced(id, from).await?;
                }
                match existing {
                    // A file with other names loses this one now (its link
                    // count shows it at once); it lives on under the others.
                    Some(m) if m.nlink > 1 => self.remove_replaced(id, to).await?,
                    Some(_) => s.set_replaced(),
                    None => {}
                }
            }
            _ => {
                self.backend.rename(id, from, to, no_replace).await?;
                // Its temporary object is next to the file's first name
                // (see `follow_first_name`) and moves along with it.
                if let Some(s) = session.filter(|_| from_first) {
                    s.retarget(from, to).await?;
                }
            }
        }
        Ok(())
    }

    pub(super) async fn exists(
        &self,
        id: Identity,
        parent: u64,
        name: &str,
        path: &BackendPath,
    ) -> FsResult<bool> {
        // Bind first: a guard in an `if let` scrutinee would live through the
        // body and deadlock local_attr's own lock.
        let known = self.inodes.lock().child(parent, name);
        if let Some(ino) = known {
            if self.local_attr(ino)?.is_some() {
                return Ok(true);
            }
        }
        match self.backend.stat(id, path).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn symlink(
        &self,
        caller: Caller,
        parent: u64,
        name: &str,
        target: &str,
    ) -> FsResult<Attr> {
        self.check_writable()?;
        if !self.backend.capabilities().symlinks {
            return Err(FsError::new(libc::EPERM));
        }
        let path = self.child_path(parent, name)?;
        let meta = self
            .backend
            .symlink(self.identity(caller), &path, target)
            .await?;
        Ok(self.entered(parent, name, &meta))
    }

    pub async fn link(
        &self,
        caller: Caller,
        ino: u64,
        new_parent: u64,
        new_name: &str,
    ) -> FsResult<Attr> {
        self.check_writable()?;
        if !self.backend.capabilities().hard_links {
            return Err(FsError::new(libc::EPERM));
        }
        let existing = self.path_of(ino)?;
        let path = self.child_path(new_parent, new_name)?;
        // A file not published yet exists only as its temporary object:
        // publish it (as fsync would) so there is an object to link.
        let unpublished = self.inodes.lock().get(ino)?.write.clone();
        if unpublished.is_some_and(|w| w.is_new()) {
            self.publish(ino).await?;
        }
        let meta = self
            .backend
            .link(self.identity(caller), &existing, &path)
            .await?;
        // One inode, one more name: the kernel updates the link count and
        // ctime every name shows from this reply (a write in progress
        // reports its own size).
        let mut table = self.inodes.lock();
        table.add_link(ino, new_parent, new_name, meta.clone(), Instant::now());
        self.relookup_split_names(&mut table);
        match self.local_attr_in(&table, ino) {
            Ok(Some(attr)) => Ok(attr),
            _ => Ok(self.attr_of(ino, &meta)),
        }
    }

    /// mknod: regular files (published empty at once), and FIFOs, device
    /// nodes (`rdev` as `dev_t`) and sockets where the backend can store
    /// them (EPERM elsewhere, as on filesystems without them). Creating a
    /// device node takes CAP_MKNOD as always: the backend refuses it to
    /// anyone but root.
    pub async fn mknod(
        &self,
        caller: Caller,
        parent: u64,
        name: &str,
        mode: u32,
        rdev: u64,
    ) -> FsResult<Attr> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        let id = self.identity(caller);
        let special = match mode & libc::S_IFMT {
            libc::S_IFIFO => Some(SpecialFile::Fifo),
            libc::S_IFSOCK => Some(SpecialFile::Socket),
            libc::S_IFCHR => Some(SpecialFile::CharDevice(rdev)),
            libc::S_IFBLK => Some(SpecialFile::BlockDevice(rdev)),
            _ => None,
        };
        let meta = match mode & libc::S_IFMT {
            _ if special.is_some() && !self.backend.capabilities().special_files => {
                return Err(FsError::new(libc::EPERM));
            }
            _ if special.is_some() => {
                let node = special.ok_or(FsError::new(libc::EINVAL))?;
                self.backend.mknod(id, &path, node, mode & 0o7777).await?
            }
            libc::S_IFREG | 0 => {
                if self.exists(id, parent, name, &path).await? {
                    return Err(FsError::new(libc::EEXIST));
                }
                let pending = self
                    .backend
                    .begin_write(id, &path, WriteStart::Empty, mode & 0o7777)
                    .await?;
                match pending.publish(&path).await {
                    Ok(meta) => meta,
                    Err(e) => {
                        pending.abort(&path).await;
                        return Err(e.into());
                    }
                }
            }
            _ => return Err(FsError::new(libc::EINVAL)),
        };
        Ok(self.entered(parent, name, &meta))
    }
}
