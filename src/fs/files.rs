//! Open files: open, create, writes into a write session, and the publish
//! at close or fsync (see `write`); reads are in `read`.

use super::*;

impl CachalotFs {
    pub(super) fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// Open an existing file. `truncate` is O_TRUNC (atomic with the open,
    /// FUSE_ATOMIC_O_TRUNC): the file is emptied in a write session and
    /// published at close, so readers never see it empty in between.
    pub async fn open(&self, caller: Caller, ino: u64, mode: OpenMode) -> FsResult<Opened> {
        let OpenMode {
            writable,
            truncate,
            append,
        } = mode;
        if writable || truncate {
            self.check_writable()?;
        }
        // An inode that lost its name (replaced by a rename, unlinked) and
        // whose data is gone: ESTALE makes the kernel look the path up again
        // and open what is there now, instead of failing with ENOENT.
        let path = loop {
            // An unlink or rename over this file is deciding whether open
            // handles keep its object: wait for it, so this open is either
            // counted (and kept) or finds the name gone.
            let settled = self.namespace_settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            {
                let mut table = self.inodes.lock();
                let path = match table.path_of(ino) {
                    Ok(path) => path,
                    // Replaced behind the mount after the kernel looked it
                    // up: open the version that lookup saw, unless a read
                    // found it gone (then ESTALE, as below).
                    Err(_)
                        if table
                            .get(ino)
                            .is_ok_and(|i| i.superseded && !i.version_gone) =>
                    {
                        table.last_path(ino)?
                    }
                    Err(_) => return Err(FsError::new(libc::ESTALE)),
                };
                if Self::held_by_other_passthrough(table.get(ino)?, writable || truncate) {
                    // The kernel reads this inode from the backing file of
                    // its passthrough opens and refuses any open of it that
                    // is not passthrough with that file. Those descriptors
                    // keep the version they read, as when a file is replaced
                    // by a rename; the name moves on to a new inode, which
                    // the kernel finds when ESTALE makes it look the path up
                    // again.
                    return Err(self.move_off_passthrough(&mut table, ino));
                }
                let inode = table.get_mut(ino)?;
                if inode.replacing == 0 {
                    inode.opening += 1;
                    if writable {
                        inode.writers += 1;
                    }
                    break path;
                }
            }
            settled.await;
        };
        let mut opening = OpeningGuard {
            fs: self,
            ino,
            writer: writable,
            opened: false,
        };
        let attr = self.getattr(caller, ino).await?;
        if attr.kind == FileKind::Directory {
            return Err(FsError::new(libc::EISDIR));
        }
        if truncate {
            loop {
                let session = self.write_session(caller, ino, WriteStart::Empty).await?;
                if session.truncate(0).await? {
                    break;
                }
            }
            // O_RDONLY|O_TRUNC truncates too (as Linux does); no writer will
            // close this handle, so publish now unless a writer is open.
            let writers = self.inodes.lock().get(ino)?.writers;
            if !writable && writers == 0 {
                self.publish(ino).await?;
            }
        }
        let wants_passthrough = self.passthrough_active() && !writable && !truncate;
        let whole = match (wants_passthrough, &attr) {
            (true, a) if a.size > 0 => self.whole_file_for(&path, ino, a.size).await,
            _ => None,
        };
        let decided = {
            let mut table = self.inodes.lock();
            let inode = table.get_mut(ino)?;
            // If the revalidation above found the file replaced behind the
            // mount (and superseded this inode for its open descriptors),
            // this open still reads the version its lookup saw: as if it had
            // happened just before the replacement.
            // Passthrough only if every other open of the inode is
            // passthrough too; otherwise the kernel would refuse the open.
            let passthrough = if inode.passthrough_opens > 0 {
                // (Changed while this open waited: see the check above.)
                // Without the whole file (evicted meanwhile) this open
                // could not register the backing file should the open that
                // did still be on its way to the kernel.
                let shares = wants_passthrough
                    && inode.write.is_none()
                    && !Self::held_by_other_passthrough(inode, false);
                whole.filter(|_| shares).map(Passthrough::Reuse)
            } else if !wants_passthrough || inode.write.is_some() {
                Some(Passthrough::No)
            } else {
                match whole {
                    Some(file) if inode.kernel_opens == 0 => Some(Passthrough::New(file)),
                    _ => Some(Passthrough::No),
                }
            };
            match passthrough {
                None => Err(self.move_off_passthrough(&mut table, ino)),
                Some(passthrough) => {
                    let inode = table.get_mut(ino)?;
                    let version = inode.meta.as_ref().map(|(m, _)| m.version.clone());
                    inode.open_handles += 1;
                    inode.kernel_opens += 1;
                    // Its writer count, taken at the start, now belongs to the handle.
                    opening.opened = true;
                    if !matches!(passthrough, Passthrough::No) {
                        inode.passthrough_opens += 1;
                        inode.passthrough_version.clone_from(&version);
                    }
                    let keep = inode.write.is_none()
                        && version.is_some()
                        && inode.last_open_version == version;
                    inode.last_open_version = version.clone();
                    Ok((
                        version.unwrap_or(VersionToken(String::new())),
                        keep,
                        passthrough,
                    ))
                }
            }
        };
        let (version, keep_cache, passthrough) = match decided {
            Ok(decided) => decided,
            Err(moved_off) => {
                // This open held off the removal of a hidden object (see
                // `remove_hidden`): done now, if its last handle closed.
                drop(opening);
                self.remove_hidden(self.identity(caller), ino).await;
                return Err(moved_off);
            }
        };
        let fh = self.new_fh();
        let handle = FileHandle::new(
            ino,
            writable,
            append,
            path,
            version,
            self.identity(caller),
            attr.size,
            self.threads.process_of(caller.pid),
        );
        if !matches!(passthrough, Passthrough::No) {
            handle.passthrough.store(true, Ordering::Release);
        }
        self.add_handle(fh, Handle::File(Arc::new(handle)));
        Ok(Opened {
            fh,
            keep_cache,
            passthrough,
            wants_close: writable,
        })
    }

    /// Create and open a new file. Nothing appears under the final name
    /// until the first close/fsync publishes it.
    pub async fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &str,
        mode: u32,
        exclusive: bool,
        open_mode: OpenMode,
    ) -> FsResult<(Attr, Opened)> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        let id = self.identity(caller);
        // One create at a time per directory: two racing creators of a name
        // must not both start a temporary object for it.
        let gate = self.session_gate(parent);
        let held = gate.lock().await;
        if self.exists(id, parent, name, &path).await? {
            drop(held);
            if exclusive {
                return Err(FsError::new(libc::EEXIST));
            }
            let attr = self.lookup(caller, parent, name).await?;
            let opened = self.open(caller, attr.ino, open_mode).await?;
            return Ok((attr, opened));
        }
        let pending = self
            .backend
            .begin_write(id, &path, WriteStart::Empty, mode & 0o7777)
            .await?;
        let now = SystemTime::now();
        let base = Metadata {
            kind: FileKind::File,
            size: 0,
            mode: mode & 0o7777,
            uid: id.uid,
            gid: id.gid,
            nlink: 1,
            atime: now,
            mtime: now,
            ctime: now,
            version: VersionToken(String::new()),
            object_id: pending.object_id(),
            rdev: 0,
        };
        let session = Arc::new(WriteSession::new(
            pending,
            id,
            true,
            base.clone(),
            path.clone(),
        ));
        let ino = {
            let mut table = self.inodes.lock();
            let ino = table.upsert_entry(parent, name, base.clone(), Instant::now());
            self.log_write_begin(ino, &session);
            let inode = table.get_mut(ino)?;
            inode.write = Some(session);
            // Nothing on the backend yet: its attributes are the session's.
            inode.meta = None;
            // The creating handle always publishes, even if opened O_RDONLY.
            inode.writers += 1;
            inode.open_handles += 1;
            inode.kernel_opens += 1;
            ino
        };
        let fh = self.new_fh();
        let handle = FileHandle::new(
            ino,
            true,
            open_mode.append,
            path,
            VersionToken(String::new()),
            id,
            0,
            self.threads.process_of(caller.pid),
        );
        self.add_handle(fh, Handle::File(Arc::new(handle)));
        Ok((
            self.attr_of(ino, &base),
            Opened {
                fh,
                keep_cache: false,
                passthrough: Passthrough::No,
                wants_close: true,
            },
        ))
    }

    pub(super) fn session_gate(&self, ino: u64) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.session_gates.lock();
        // Drop gates nobody holds, so the map stays as small as the set of
        // files being opened for writing right now.
        gates.retain(|_, g| Arc::strong_count(g) > 1);
        Arc::clone(gates.entry(ino).or_default())
    }

    /// The inode's write session, started if needed. `start` decides what a
    /// new temporary object contains.
    pub(super) async fn write_session(
        &self,
        caller: Caller,
        ino: u64,
        start: WriteStart,
    ) -> FsResult<Arc<WriteSession>> {
        if let Some(s) = self.inodes.lock().get(ino)?.write.clone() {
            return Ok(s);
        }
        let gate = self.session_gate(ino);
        let _gate = gate.lock().await;
        if let Some(s) = self.inodes.lock().get(ino)?.write.clone() {
            return Ok(s);
        }
        let path = self.path_of(ino)?;
        let id = self.identity(caller);
        let cached = self.inodes.lock().get(ino)?.meta.clone();
        let mut base_meta = match cached {
            Some((m, _)) => m,
            None => self.backend.stat(id, &path).await?,
        };
        let pending = self
            .backend
            .begin_write(id, &path, start, base_meta.mode)
            .await?;
        // A change of content by anyone but root drops setuid (and setgid
        // with group execute), as the kernel does for any write.
        let privileges = match base_meta.mode & libc::S_IXGRP {
            0 => libc::S_ISUID,
            _ => libc::S_ISUID | libc::S_ISGID,
        };
        if id.uid != 0 && base_meta.mode & privileges != 0 {
            base_meta.mode &= !privileges;
            let dropped = AttrChanges {
                mode: Some(base_meta.mode),
                ..AttrChanges::default()
            };
            if let Err(e) = pending.set_attr(&dropped).await {
                pending.abort(&path).await;
                return Err(e.into());
            }
        }
        let session = Arc::new(WriteSession::new(pending, id, false, base_meta, path));
        let mut table = self.inodes.lock();
        table.get_mut(ino)?.write = Some(Arc::clone(&session));
        self.log_write_begin(ino, &session);
        drop(table);
        Ok(session)
    }

    pub async fn write(&self, caller: Caller, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.write_data(caller, fh, offset, WriteData::Lent(data))
            .await
    }

    /// `write` with the data lent or given (see [`WriteData`]).
    pub async fn write_data(
        &self,
        caller: Caller,
        fh: u64,
        offset: u64,
        data: WriteData<'_>,
    ) -> FsResult<u32> {
        let written = self.write_to_handle(caller, fh, offset, data).await?;
        self.counters
            .write_bytes
            .fetch_add(u64::from(written), Ordering::Relaxed);
        Ok(written)
    }

    async fn write_to_handle(
        &self,
        caller: Caller,
        fh: u64,
        offset: u64,
        data: WriteData<'_>,
    ) -> FsResult<u32> {
        self.check_writable()?;
        let handle = self.file_handle(fh)?;
        if !handle.writable {
            return Err(FsError::new(libc::EBADF));
        }
        // O_APPEND: the end of the file is ours to know. The kernel's offset
        // comes from its cached size, which may lag behind (another
        // descriptor's append, a short read); writing there would overwrite
        // acknowledged data.
        let at = if handle.append { None } else { Some(offset) };
        loop {
            let session = self
                .write_session(caller, handle.ino, WriteStart::CopyExisting)
                .await?;
            if let Some(written_at) = session.write(at, data.clone()).await? {
                if written_at != offset {
                    // The kernel copied the data into its cache at its
                    // offset: drop that view.
                    tracing::debug!(
                        ino = handle.ino,
                        kernel_offset = offset,
                        written_at,
                        "append placed at the real end of file"
                    );
                    self.invalidate_kernel(handle.ino);
                }
                return Ok(data.len() as u32);
            }
        }
    }

    /// Publish the inode's write session, if any. On failure the temporary
    /// object is gone, the final name untouched, and the errno returned.
    pub(super) async fn publish(&self, ino: u64) -> FsResult<()> {
        let Some(session) = self.inodes.lock().get(ino)?.write.clone() else {
            return Ok(());
        };
        // Held before the name is looked up (a removal moving the object
        // to a hidden name holds it until the move is recorded) and until
        // the table has the new version: a second publish of the session
        // (finding nothing left to do) would otherwise end the write in
        // the table before the first recorded what it published, and a
        // reader meeting the new version then took it for a change behind
        // the mount (ESTALE).
        let mut hold = session.hold().await;
        let (path, linked) = {
            let table = self.inodes.lock();
            let inode = table.get(ino)?;
            if session.is_orphaned() && inode.open_handles > inode.closing {
                // Unlinked while open and never published: the data lives
                // in the session for the handles still open; it is
                // discarded with the last of them.
                return Ok(());
            }
            let path = table
                .last_path(ino)
                .unwrap_or_else(|_| session.last_target());
            // Replacing a file that has other names would cut it off them.
            let linked = inode.attached
                && (!inode.links.is_empty()
                    || inode.meta.as_ref().is_some_and(|(m, _)| m.nlink > 1));
            (path, linked)
        };
        let result = session.finish(&mut hold, &path, linked).await;
        let published = match &result {
            Ok(Finished::Published(meta)) => Some(meta.clone()),
            _ => None,
        };
        {
            let mut table = self.inodes.lock();
            if let Ok(inode) = table.get_mut(ino) {
                if inode
                    .write
                    .as_ref()
                    .is_some_and(|w| Arc::ptr_eq(w, &session))
                {
                    inode.write = None;
                    self.log(journal::Event::WriteEnd { ino });
                }
            }
            if let Some(meta) = published {
                // A new file was listed from its write session alone, and
                // listings kept meanwhile do not have it.
                table.relist_dirs_naming(ino);
                // A hard-linked file written through here is a new object
                // under the name it was published to (see `set_meta`).
                table.set_meta(ino, meta, Instant::now());
                self.relookup_split_names(&mut table);
            }
        }
        drop(hold);
        match result {
            Ok(Finished::Published(_)) => {
                self.counters.publishes.fetch_add(1, Ordering::Relaxed);
                let deferred = session.take_deferred_times();
                if !deferred.is_empty() {
                    let meta = self
                        .backend
                        .set_attr(session.identity, &path, &deferred)
                        .await?;
                    self.inodes.lock().set_meta(ino, meta, Instant::now());
                }
                Ok(())
            }
            Ok(Finished::Nothing) => Ok(()),
            Err(e) => {
                // The kernel may hold pages of the data that was never
                // published.
                self.invalidate_kernel(ino);
                if session.is_new() {
                    self.forget_unpublished_name(ino);
                }
                self.counters
                    .publish_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %path, errno = e.errno(),
                    "publish failed; the temporary file was removed and the final name is untouched");
                Err(e)
            }
        }
    }

    /// A new file whose first publish failed never existed in the backend:
    /// its name goes, so that a retry creates it afresh instead of finding
    /// a name with nothing behind it (ENOENT). What the name held before a
    /// rename over it is still there and is looked up again.
    fn forget_unpublished_name(&self, ino: u64) {
        let mut table = self.inodes.lock();
        let Ok(inode) = table.get(ino) else { return };
        if !inode.attached {
            return;
        }
        let (parent, name) = (inode.parent, inode.name.clone());
        self.invalidate_kernel_entry(&table, ino);
        table.detach(parent, &name);
    }

    /// close(2) of one descriptor: publish what this handle wrote.
    ///
    /// A flush from another process than the opener is a forked child
    /// closing its inherited copy (typically at exec): publishing then would
    /// expose a half-written file, so it is left to the writer's own close or
    /// the last release.
    pub async fn flush(&self, caller: Caller, fh: u64) -> FsResult<()> {
        let handle = self.file_handle(fh)?;
        let by_opener = self.threads.process_of(caller.pid) == handle.opener;
        if by_opener && !handle.closed_by_opener.swap(true, Ordering::AcqRel) {
            if let Ok(inode) = self.inodes.lock().get_mut(handle.ino) {
                inode.closing += 1;
            }
        }
        if !handle.writable {
            return Ok(());
        }
        if !by_opener {
            tracing::debug!(
                ino = handle.ino,
                pid = caller.pid,
                opener = handle.opener,
                "flush from another process; publish deferred to the writer's close"
            );
            return Ok(());
        }
        self.publish(handle.ino).await
    }

    /// fsync(2): publish now, whoever asks, and durably: close(2) only
    /// makes the data visible (see `PendingWrite::publish`). With nothing
    /// pending, the published data is flushed.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let handle = self.file_handle(fh)?;
        let (session, path) = {
            let table = self.inodes.lock();
            let session = table.get(handle.ino)?.write.clone();
            (session, table.last_path(handle.ino))
        };
        if let Some(session) = session.filter(|_| handle.writable) {
            session.sync().await?;
            return self.publish(handle.ino).await;
        }
        let Ok(path) = path else {
            return Ok(()); // unlinked: nothing under a name to keep
        };
        match self.backend.sync(handle.identity(), &path).await {
            // Replaced or removed behind the mount: nothing of ours there.
            Err(e) if e.kind == crate::backend::ErrorKind::NotFound => Ok(()),
            done => Ok(done?),
        }
    }

    /// Last close of a handle. The last writer publishes anything still
    /// pending (e.g. writes through mmap) or discards an orphaned write.
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let handle = match self.remove_handle(fh) {
            Some(Handle::File(h)) => h,
            Some(Handle::Dir(_)) | None => return Ok(()),
        };
        let (last_writer, session) = {
            let mut table = self.inodes.lock();
            let Ok(inode) = table.get_mut(handle.ino) else {
                return Ok(());
            };
            inode.open_handles = inode.open_handles.saturating_sub(1);
            if inode.open_handles == 0 {
                inode.reader = None;
            }
            if handle.closed_by_opener.load(Ordering::Acquire) {
                inode.closing = inode.closing.saturating_sub(1);
            }
            if handle.writable {
                inode.writers = inode.writers.saturating_sub(1);
            }
            // (`kernel_opens` and `passthrough_opens`: see `kernel_released`.)
            // A writable open in progress counts as a writer: the session
            // may be its O_TRUNC one, still empty.
            (
                inode.writers == 0 || (inode.open_handles == 0 && inode.opening == 0),
                inode.write.clone(),
            )
        };
        let mut result = Ok(());
        if last_writer && session.is_some() {
            result = self.publish(handle.ino).await;
        }
        if self.passthrough_active()
            && !handle.writable
            && !handle.passthrough.load(Ordering::Acquire)
        {
            self.assemble_in_background(&handle);
        }
        self.remove_hidden(handle.identity(), handle.ino).await;
        self.inodes.lock().maybe_drop(handle.ino);
        result
    }
}
