//! Where an object is: a directory descriptor beneath the root and a name
//! in it (`Loc`), and the backend's shared state that finds them.

use super::*;

/// A directory fd: the root's (borrowed) or one opened beneath it.
pub(super) enum DirFd<'a> {
    Borrowed(BorrowedFd<'a>),
    Opened(OwnedFd),
}

impl DirFd<'_> {
    pub(super) fn raw(&self) -> RawFd {
        match self {
            DirFd::Borrowed(fd) => fd.as_raw_fd(),
            DirFd::Opened(fd) => fd.as_raw_fd(),
        }
    }

    pub(super) fn borrow(&self) -> DirFd<'_> {
        match self {
            DirFd::Borrowed(fd) => DirFd::Borrowed(*fd),
            DirFd::Opened(fd) => DirFd::Borrowed(fd.as_fd()),
        }
    }
}

/// One backend object, addressed without following symlinks: its parent
/// directory (opened beneath the root) and its final name; no name for the
/// root itself. Every operation goes through one of these.
pub(super) struct Loc<'a> {
    pub(super) dir: DirFd<'a>,
    pub(super) name: Option<CString>,
}

impl Loc<'_> {
    pub(super) fn dir(&self) -> RawFd {
        self.dir.raw()
    }

    /// The final name, `.` for the root (operations that make no sense on the
    /// root get the kernel's error for `.`).
    pub(super) fn name(&self) -> &CStr {
        self.name.as_deref().unwrap_or(c".")
    }

    /// lstat: a symlink is reported as itself.
    pub(super) fn lstat(&self) -> io::Result<libc::stat> {
        match &self.name {
            Some(name) => sys_fstatat(self.dir(), name, libc::AT_SYMLINK_NOFOLLOW),
            None => sys_fstat(self.dir()),
        }
    }

    pub(super) fn meta(&self) -> io::Result<Metadata> {
        self.lstat().map(|st| metadata_of(&st))
    }

    /// Open the object itself; `O_NOFOLLOW` is always added, so a symlink
    /// is never opened through.
    pub(super) fn open(&self, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
        sys_openat(self.dir(), self.name(), flags | libc::O_NOFOLLOW, mode)
    }

    /// lchown.
    pub(super) fn chown(&self, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        let (uid, gid) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
        let (name, flags) = match &self.name {
            Some(name) => (name.as_c_str(), libc::AT_SYMLINK_NOFOLLOW),
            None => (c"", libc::AT_EMPTY_PATH),
        };
        // SAFETY: valid NUL-terminated string.
        cvt(unsafe { libc::fchownat(self.dir(), name.as_ptr(), uid, gid, flags) })
    }

    /// chmod that never follows a symlink (Linux symlinks have no mode:
    /// EOPNOTSUPP). Exact: the daemon's umask does not alter the mode.
    pub(super) fn chmod(&self, mode: u32) -> io::Result<()> {
        let mode = (mode & 0o7777) as libc::mode_t;
        // The object itself, opened without following it (the root: its fd).
        let opened;
        let fd = match &self.name {
            None => self.dir(),
            Some(name) => {
                opened = sys_openat(self.dir(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
                if is_symlink(&sys_fstat(opened.as_raw_fd())?) {
                    return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
                }
                opened.as_raw_fd()
            }
        };
        // fchmod refuses O_PATH descriptors; /proc/self/fd/N reaches the very
        // inode the fd holds (what glibc's fchmodat(AT_SYMLINK_NOFOLLOW) does).
        let path = proc_fd_path(fd);
        // SAFETY: valid NUL-terminated string; `fd` stays open during the call.
        cvt(unsafe { libc::chmod(path.as_ptr(), mode) })
    }

    /// utimensat of the object itself (a symlink's own times).
    pub(super) fn set_times(&self, changes: &AttrChanges) -> io::Result<()> {
        if changes.atime.is_none() && changes.mtime.is_none() {
            return Ok(());
        }
        let times = [
            timespec(changes.atime, changes.atime_now),
            timespec(changes.mtime, changes.mtime_now),
        ];
        let (dir, name, flags) = match &self.name {
            Some(name) => (self.dir(), name.clone(), libc::AT_SYMLINK_NOFOLLOW),
            // The root is a directory: following /proc/self/fd/N reaches it.
            None => (libc::AT_FDCWD, proc_fd_path(self.dir()), 0),
        };
        // SAFETY: valid string and an array of two timespecs.
        cvt(unsafe { libc::utimensat(dir, name.as_ptr(), times.as_ptr(), flags) })
    }
}

pub(super) fn rename_noreplace(from: &Loc<'_>, to: &Loc<'_>) -> io::Result<()> {
    match sys_renameat2(
        from.dir(),
        from.name(),
        to.dir(),
        to.name(),
        libc::RENAME_NOREPLACE,
    ) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // Filesystem without RENAME_NOREPLACE: best effort check-then-rename.
            if to.lstat().is_ok() {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            sys_renameat2(from.dir(), from.name(), to.dir(), to.name(), 0)
        }
        other => other,
    }
}

impl Shared {
    pub(super) fn root_fd(&self) -> io::Result<BorrowedFd<'_>> {
        match &self.root_fd {
            Ok(fd) => Ok(fd.as_fd()),
            Err(errno) => Err(io::Error::from_raw_os_error(*errno)),
        }
    }

    /// The backing path of `path`, for log lines only (never opened).
    pub(super) fn shown(&self, path: &[u8]) -> PathBuf {
        self.root.join(OsStr::from_bytes(path))
    }

    /// Open the directory `rel` beneath the root (see [`open_beneath`]); the
    /// root itself is borrowed, without a system call.
    pub(super) fn dir_beneath(&self, rel: &BackendPath) -> io::Result<DirFd<'_>> {
        let root = self.root_fd()?;
        if rel.is_root() {
            return Ok(DirFd::Borrowed(root));
        }
        open_beneath(
            root.as_raw_fd(),
            rel.as_str().as_bytes(),
            libc::O_PATH | libc::O_DIRECTORY,
        )
        .map(DirFd::Opened)
        .map_err(|e| self.not_followed(e, rel.as_str().as_bytes()))
    }

    /// A symlink met while resolving a path beneath the root (ELOOP), or an
    /// attempt to leave the root (EXDEV): refused, as "not a directory" (the
    /// component is a link, and links are not followed here), and logged with
    /// the backing path so whoever swapped it can be found.
    pub(super) fn not_followed(&self, e: io::Error, rel: &[u8]) -> io::Error {
        match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::EXDEV) => {
                let shown = self.shown(rel);
                tracing::warn!(backend = %self.describe, path = %shown.display(),
                    "refusing to follow a symbolic link inside the backing directory \
                     (a directory was replaced by a link behind the mount?)");
                io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!(
                        "{} or a directory above it (below the volume root) is a symbolic link, \
                         which the daemon never follows",
                        shown.display()
                    ),
                )
            }
            _ => e,
        }
    }

    /// Where `path` lives: its parent directory, opened beneath the root
    /// without following symlinks, plus its final name.
    pub(super) fn locate(&self, path: &BackendPath) -> io::Result<Loc<'_>> {
        if path.is_root() {
            return Ok(Loc {
                dir: DirFd::Borrowed(self.root_fd()?),
                name: None,
            });
        }
        Ok(Loc {
            dir: self.dir_beneath(&path.parent())?,
            name: Some(cstring(path.name().as_bytes())?),
        })
    }

    pub(super) fn err(
        &self,
        e: &io::Error,
        op: &'static str,
        path: &BackendPath,
        id: Identity,
    ) -> BackendError {
        BackendError::from_io(e, op, path.as_str())
            .with_backend(&self.describe)
            .with_identity(id)
    }

    /// Run blocking filesystem work on the blocking pool, as `id` when the
    /// identity is fixed. fsuid/fsgid are per-thread on Linux, so this never
    /// leaks into other requests.
    pub(super) async fn run<T, F>(
        self: &Arc<Self>,
        id: Identity,
        op: &'static str,
        path: &BackendPath,
        work: F,
    ) -> BackendResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> io::Result<T> + Send + 'static,
    {
        let shared = Arc::clone(self);
        let joined = super::super::blocking::run(move || {
            let _as =
                ImpersonationGuard::enter(shared.mode == IdentityMode::Fixed && shared.is_root, id);
            work(&shared)
        })
        .await;
        match joined {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.err(&e, op, path, id)),
            Err(join) => Err(BackendError::new(ErrorKind::Other, op, path.as_str())
                .with_backend(&self.describe)
                .with_identity(id)
                .with_cause(format!("worker failed: {join}"))),
        }
    }

    /// `run` on this thread, for a caller that checked `blocking::is_inline`:
    /// `work` may borrow (a write's data, not copied for another thread).
    pub(super) fn run_here<T>(
        &self,
        id: Identity,
        op: &'static str,
        path: &BackendPath,
        work: impl FnOnce(&Shared) -> io::Result<T>,
    ) -> BackendResult<T> {
        let _as = ImpersonationGuard::enter(self.mode == IdentityMode::Fixed && self.is_root, id);
        work(self).map_err(|e| self.err(&e, op, path, id))
    }

    /// Give a freshly created object to the caller (Caller mode, daemon is
    /// root). Honours setgid directories like the kernel does.
    pub(super) fn assign_owner(&self, loc: &Loc<'_>, id: Identity) -> io::Result<()> {
        if self.mode != IdentityMode::Caller || !self.is_root {
            return Ok(());
        }
        let gid = match sys_fstat(loc.dir()) {
            Ok(parent) if parent.st_mode & libc::S_ISGID != 0 => parent.st_gid,
            _ => id.gid,
        };
        loc.chown(Some(id.uid), Some(gid))
    }

    pub(super) fn next_temp_name(&self, final_name: &str) -> String {
        let seq = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        temp_name_for(final_name, &self.owner_tag, seq)
    }
}
