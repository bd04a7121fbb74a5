//! Writing a file through a temporary file in the same directory: the
//! temp file created at begin (a copy of the file, or empty) or found
//! again for a suspended write, written, and published by a rename (or by
//! copying into the file) or removed.

use super::*;
use crate::buffers::PageBuffer;

/// fchmod with the exact mode (the daemon's umask does not apply).
fn fchmod(file: &File, mode: u32) -> io::Result<()> {
    // SAFETY: a valid open descriptor.
    cvt(unsafe { libc::fchmod(file.as_raw_fd(), (mode & 0o7777) as libc::mode_t) })
}

/// fsync(2) of the directory `dir` (an O_PATH descriptor, which cannot be
/// synced itself): makes a rename in it durable.
fn sync_dir(dir: std::os::fd::RawFd) -> io::Result<()> {
    // SAFETY: a valid descriptor and a NUL-terminated name; the result is
    // checked before it is owned.
    let fd = unsafe {
        libc::openat(
            dir,
            c".".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let opened = File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
    opened.sync_all()
}

pub(super) struct LocalPendingWrite {
    pub(super) file: Arc<File>,
    pub(super) temp_name: String,
    pub(super) size: AtomicU64,
    /// Published or aborted: the temp file no longer belongs to us.
    pub(super) finished: AtomicBool,
    pub(super) shared: Arc<Shared>,
    pub(super) id: Identity,
    /// fsync(2) was asked for: the publish flushes the data and the
    /// directory too. Without it a publish is a plain rename, as a local
    /// filesystem's close(2) flushes nothing (2.5 ms per file saved).
    durable: AtomicBool,
}

impl LocalPendingWrite {
    pub(super) fn new(
        file: File,
        temp_name: String,
        size: u64,
        shared: Arc<Shared>,
        id: Identity,
    ) -> LocalPendingWrite {
        LocalPendingWrite::new_shared(Arc::new(file), temp_name, size, shared, id)
    }

    /// `new` for a temp file also used elsewhere (a copy in progress).
    pub(super) fn new_shared(
        file: Arc<File>,
        temp_name: String,
        size: u64,
        shared: Arc<Shared>,
        id: Identity,
    ) -> LocalPendingWrite {
        LocalPendingWrite {
            file,
            temp_name,
            size: AtomicU64::new(size),
            finished: AtomicBool::new(false),
            shared,
            id,
            durable: AtomicBool::new(false),
        }
    }
}

/// A temp file: next to `target`, in its parent directory (opened beneath
/// the root without following symlinks).
fn temp_loc<'a>(s: &'a Shared, target: &BackendPath, temp_name: &str) -> io::Result<Loc<'a>> {
    Ok(Loc {
        dir: s.dir_beneath(&target.parent())?,
        name: Some(cstring(temp_name.as_bytes())?),
    })
}

#[async_trait]
impl PendingWrite for LocalPendingWrite {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> BackendResult<()> {
        let end = offset + data.len() as u64;
        let temp = BackendPath::parse(&self.temp_name).unwrap_or_default();
        if crate::backend::blocking::is_inline() {
            // On the FUSE worker: written from the request's own buffer
            // (a copy of each 1 MiB WRITE cost a third of the daemon's time).
            self.shared
                .run_here(self.id, "write temp file", &temp, |_| {
                    self.file.write_all_at(data, offset)
                })?;
        } else {
            let file = Arc::clone(&self.file);
            let data = data.to_vec();
            self.shared
                .run(self.id, "write temp file", &temp, move |_| {
                    file.write_all_at(&data, offset)
                })
                .await?;
        }
        self.size.fetch_max(end, Ordering::AcqRel);
        Ok(())
    }

    async fn read_at(&self, offset: u64, len: usize) -> BackendResult<Vec<u8>> {
        let file = Arc::clone(&self.file);
        let temp = BackendPath::parse(&self.temp_name).unwrap_or_default();
        self.shared
            .run(self.id, "read temp file", &temp, move |_| {
                PageBuffer::read_at(&file, offset, len).map(|buf| buf.as_slice().to_vec())
            })
            .await
    }

    async fn truncate(&self, size: u64) -> BackendResult<()> {
        let file = Arc::clone(&self.file);
        let temp = BackendPath::parse(&self.temp_name).unwrap_or_default();
        self.shared
            .run(self.id, "truncate temp file", &temp, move |_| {
                file.set_len(size)
            })
            .await?;
        self.size.store(size, Ordering::Release);
        Ok(())
    }

    async fn set_attr(&self, changes: &AttrChanges) -> BackendResult<()> {
        let file = Arc::clone(&self.file);
        let changes = changes.clone();
        let temp = BackendPath::parse(&self.temp_name).unwrap_or_default();
        self.shared
            .run(self.id, "set attributes of temp file", &temp, move |_| {
                if changes.uid.is_some() || changes.gid.is_some() {
                    std::os::unix::fs::fchown(&*file, changes.uid, changes.gid)?;
                }
                if let Some(mode) = changes.mode {
                    fchmod(&file, mode)?;
                }
                Ok(())
            })
            .await
    }

    async fn retarget(
        &self,
        old_target: &BackendPath,
        new_target: &BackendPath,
    ) -> BackendResult<()> {
        if old_target.parent() == new_target.parent() {
            return Ok(());
        }
        let (old, new) = (old_target.parent(), new_target.parent());
        let temp = self.temp_name.clone();
        self.shared
            .run(self.id, "move temp file", new_target, move |s| {
                let (from, to) = (s.dir_beneath(&old)?, s.dir_beneath(&new)?);
                let name = cstring(temp.as_bytes())?;
                sys_renameat2(from.raw(), &name, to.raw(), &name, 0)
            })
            .await
    }

    async fn sync(&self) -> BackendResult<()> {
        self.durable.store(true, Ordering::Release);
        let file = Arc::clone(&self.file);
        let temp = BackendPath::parse(&self.temp_name).unwrap_or_default();
        self.shared
            .run(self.id, "sync temp file", &temp, move |_| file.sync_data())
            .await
    }

    async fn publish(&self, target: &BackendPath) -> BackendResult<Metadata> {
        let file = Arc::clone(&self.file);
        let t = target.clone();
        let temp_name = self.temp_name.clone();
        let durable = self.durable.load(Ordering::Acquire);
        let op = match durable {
            true => "publish (sync + rename + sync directory)",
            false => "publish (rename)",
        };
        let meta = self
            .shared
            .run(self.id, op, target, move |s| {
                if durable {
                    // Durable before visible: a crash after the rename
                    // must not leave the name on data it could still lose
                    // (quick when `sync` just flushed it).
                    file.sync_data()?;
                }
                let temp = temp_loc(s, &t, &temp_name)?;
                let target = Loc {
                    dir: temp.dir.borrow(),
                    name: Some(cstring(t.name().as_bytes())?),
                };
                sys_renameat2(temp.dir(), temp.name(), target.dir(), target.name(), 0)?;
                if durable {
                    // The new name itself survives a crash.
                    sync_dir(temp.dir())?;
                }
                target.meta()
            })
            .await?;
        self.finished.store(true, Ordering::Release);
        Ok(meta)
    }

    async fn publish_in_place(&self, target: &BackendPath) -> BackendResult<Metadata> {
        let file = Arc::clone(&self.file);
        let t = target.clone();
        let temp_name = self.temp_name.clone();
        let size = self.size();
        let meta = self
            .shared
            .run(
                self.id,
                "publish in place (copy into the linked file)",
                target,
                move |s| {
                    let target = s.locate(&t)?;
                    let out = File::from(target.open(libc::O_WRONLY, 0)?);
                    let mut buf = vec![0u8; 1 << 20];
                    let mut offset = 0;
                    while offset < size {
                        let want = (size - offset).min(buf.len() as u64) as usize;
                        let n = file.read_at(&mut buf[..want], offset)?;
                        if n == 0 {
                            break;
                        }
                        out.write_all_at(&buf[..n], offset)?;
                        offset += n as u64;
                    }
                    out.set_len(offset)?;
                    // A chmod made while writing belongs to the file too.
                    let mode = sys_fstat(file.as_raw_fd())?.st_mode;
                    if sys_fstat(out.as_raw_fd())?.st_mode != mode {
                        fchmod(&out, mode)?;
                    }
                    out.sync_data()?;
                    let temp = temp_loc(s, &t, &temp_name)?;
                    sys_unlinkat(temp.dir(), temp.name(), 0)?;
                    target.meta()
                },
            )
            .await?;
        self.finished.store(true, Ordering::Release);
        Ok(meta)
    }

    async fn allocate(&self, offset: u64, len: u64, mode: i32) -> BackendResult<()> {
        let file = Arc::clone(&self.file);
        let temp = BackendPath::parse(&self.temp_name).unwrap_or_default();
        let (at, length) = (
            i64::try_from(offset).unwrap_or(i64::MAX),
            i64::try_from(len).unwrap_or(i64::MAX),
        );
        self.shared
            .run(self.id, "fallocate temp file", &temp, move |_| {
                // SAFETY: a valid open descriptor.
                cvt(unsafe { libc::fallocate(file.as_raw_fd(), mode, at, length) })
            })
            .await?;
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
            self.size
                .fetch_max(offset.saturating_add(len), Ordering::AcqRel);
        }
        Ok(())
    }

    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    fn object_id(&self) -> Option<u64> {
        let st = sys_fstat(self.file.as_raw_fd()).ok()?;
        Some(object_id(st.st_dev as u64, st.st_ino as u64))
    }

    fn describe(&self) -> SuspendedWrite {
        let ino = sys_fstat(self.file.as_raw_fd())
            .ok()
            .map(|st| inode_number(&st));
        serde_json::json!({ "temp_name": self.temp_name, "ino": ino })
    }

    async fn suspend(&self) -> BackendResult<SuspendedWrite> {
        // Nothing is buffered: the temp file holds every write already.
        let ino = sys_fstat(self.file.as_raw_fd())
            .ok()
            .map(|st| inode_number(&st));
        Ok(serde_json::json!({
            "temp_name": self.temp_name,
            "size": self.size(),
            "ino": ino,
        }))
    }

    async fn abort(&self, target: &BackendPath) {
        if self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        let temp_name = self.temp_name.clone();
        let t = target.clone();
        let result = self
            .shared
            .run(self.id, "remove temp file", target, move |s| {
                let temp = temp_loc(s, &t, &temp_name)?;
                match sys_unlinkat(temp.dir(), temp.name(), 0) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                }
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not remove an aborted temp file; the next mount will");
        }
    }
}

/// Create the temp file `temp` next to `target` (blocking; see
/// `Backend::begin_write`): the existing file's copy (or an empty file)
/// with its owner and mode, or a new file of the caller's with `create_mode`.
pub(super) fn create_temp(
    s: &Shared,
    target: &BackendPath,
    temp: &str,
    start: WriteStart,
    create_mode: u32,
    id: Identity,
) -> io::Result<(File, u64)> {
    let target = s.locate(target)?;
    let temp = Loc {
        dir: target.dir.borrow(),
        name: Some(cstring(temp.as_bytes())?),
    };
    let existing = match target.open(libc::O_RDONLY, 0) {
        Ok(fd) => {
            let f = File::from(fd);
            let st = sys_fstat(f.as_raw_fd())?;
            if is_dir(&st) {
                return Err(io::Error::from_raw_os_error(libc::EISDIR));
            }
            Some((f, st))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
        Err(e) => return Err(e),
    };
    let mut file = File::from(temp.open(libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o600)?);
    let prepared = (|| -> io::Result<u64> {
        match &existing {
            Some((src, st)) => {
                if s.is_root {
                    std::os::unix::fs::fchown(&file, Some(st.st_uid), Some(st.st_gid))?;
                }
                fchmod(&file, st.st_mode)?;
                if start == WriteStart::CopyExisting {
                    let mut src = src;
                    io::copy(&mut src, &mut file)
                } else {
                    Ok(0)
                }
            }
            None => {
                s.assign_owner(&temp, id)?;
                fchmod(&file, create_mode)?;
                Ok(0)
            }
        }
    })();
    match prepared {
        Ok(size) => Ok((file, size)),
        Err(e) => {
            let _ = sys_unlinkat(temp.dir(), temp.name(), 0);
            Err(e)
        }
    }
}

/// Find a suspended write's temp file `old_name` next to `t` again and give
/// it a name of ours (blocking; see `Backend::resume_write`); `None` if it
/// is gone because it was published (the target is its inode `ino`).
pub(super) fn reopen_temp(
    sh: &Shared,
    t: &BackendPath,
    old_name: &str,
    ino: Option<u64>,
) -> io::Result<Option<(File, String)>> {
    let dir = sh.dir_beneath(&t.parent())?;
    let from = cstring(old_name.as_bytes())?;
    let temp = Loc {
        dir: dir.borrow(),
        name: Some(from.clone()),
    };
    if let Err(e) = temp.meta() {
        let published = Loc {
            dir: dir.borrow(),
            name: Some(cstring(t.name().as_bytes())?),
        };
        let target_ino = published
            .open(libc::O_RDONLY, 0)
            .and_then(|fd| Ok(inode_number(&sys_fstat(File::from(fd).as_raw_fd())?)));
        return match (ino, target_ino) {
            (Some(i), Ok(t)) if i == t => Ok(None),
            _ => Err(e),
        };
    }
    // In a container every mounter is pid 1: a name of ours may
    // be the very name (then it stays) or another live temp
    // file's (then the next one is tried).
    let mut name = sh.next_temp_name(t.name());
    for _ in 0..64 {
        if name == old_name {
            break;
        }
        let to = cstring(name.as_bytes())?;
        match sys_renameat2(dir.raw(), &from, dir.raw(), &to, libc::RENAME_NOREPLACE) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                name = sh.next_temp_name(t.name());
            }
            other => {
                other?;
                break;
            }
        }
    }
    let temp = Loc {
        dir,
        name: Some(cstring(name.as_bytes())?),
    };
    Ok(Some((File::from(temp.open(libc::O_RDWR, 0)?), name)))
}
