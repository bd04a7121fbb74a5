//! Reading a file (one version, checked after each read) and writing one
//! through a temporary file in the same directory.

use super::*;

/// fchmod with the exact mode (the daemon's umask does not apply).
pub(super) fn fchmod(file: &File, mode: u32) -> io::Result<()> {
    // SAFETY: a valid open descriptor.
    cvt(unsafe { libc::fchmod(file.as_raw_fd(), (mode & 0o7777) as libc::mode_t) })
}

pub(super) struct LocalReader {
    pub(super) file: Arc<File>,
    pub(super) version: VersionToken,
    pub(super) size: u64,
    pub(super) path: BackendPath,
    pub(super) shared: Arc<Shared>,
    pub(super) id: Identity,
}

pub(super) fn read_full_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

#[async_trait]
impl ObjectReader for LocalReader {
    fn version(&self) -> &VersionToken {
        &self.version
    }

    fn size(&self) -> u64 {
        self.size
    }

    /// The descriptor reads the file as it is now: if it was changed in
    /// place behind the mount (its version moved on), what was read may
    /// mix two versions, so the read fails with ESTALE (as the NFS reader
    /// does) instead of returning it.
    async fn read_at(&self, offset: u64, len: usize) -> BackendResult<Vec<u8>> {
        let file = Arc::clone(&self.file);
        let version = self.version.clone();
        self.shared
            .run(self.id, "read", &self.path, move |_| {
                let data = read_full_at(&file, offset, len)?;
                if metadata_of(&sys_fstat(file.as_raw_fd())?).version != version {
                    return Err(io::Error::from_raw_os_error(libc::ESTALE));
                }
                Ok(data)
            })
            .await
    }
}

pub(super) struct LocalPendingWrite {
    pub(super) file: Arc<File>,
    pub(super) temp_name: String,
    pub(super) size: AtomicU64,
    /// Published or aborted: the temp file no longer belongs to us.
    pub(super) finished: AtomicBool,
    pub(super) shared: Arc<Shared>,
    pub(super) id: Identity,
}

/// A temp file: next to `target`, in its parent directory (opened beneath
/// the root without following symlinks).
pub(super) fn temp_loc<'a>(
    s: &'a Shared,
    target: &BackendPath,
    temp_name: &str,
) -> io::Result<Loc<'a>> {
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
        let file = Arc::clone(&self.file);
        let data = data.to_vec();
        let end = offset + data.len() as u64;
        let temp = BackendPath::parse(&self.temp_name).unwrap_or_default();
        self.shared
            .run(self.id, "write temp file", &temp, move |_| {
                file.write_all_at(&data, offset)
            })
            .await?;
        self.size.fetch_max(end, Ordering::AcqRel);
        Ok(())
    }

    async fn read_at(&self, offset: u64, len: usize) -> BackendResult<Vec<u8>> {
        let file = Arc::clone(&self.file);
        let temp = BackendPath::parse(&self.temp_name).unwrap_or_default();
        self.shared
            .run(self.id, "read temp file", &temp, move |_| {
                read_full_at(&file, offset, len)
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

    async fn publish(&self, target: &BackendPath) -> BackendResult<Metadata> {
        let file = Arc::clone(&self.file);
        let t = target.clone();
        let temp_name = self.temp_name.clone();
        let meta = self
            .shared
            .run(self.id, "publish (sync + rename)", target, move |s| {
                // Durable before visible: the rename must never expose data
                // that a crash could still lose.
                file.sync_data()?;
                let temp = temp_loc(s, &t, &temp_name)?;
                let target = Loc {
                    dir: temp.dir.borrow(),
                    name: Some(cstring(t.name().as_bytes())?),
                };
                sys_renameat2(temp.dir(), temp.name(), target.dir(), target.name(), 0)?;
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
