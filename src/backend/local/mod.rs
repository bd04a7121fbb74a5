//! `file:///dir` backend: a local directory (or a kernel-mounted NFS export).
//!
//! Identity: by default operations run as the daemon and new objects are
//! chowned to the caller (the kernel's `default_permissions` already checked
//! the caller's access). With a fixed identity (`--uid/--gid`) every
//! operation runs with that fsuid/fsgid, so the directory's own permissions
//! are enforced exactly as a squashing NFS server would.
//!
//! Containment: the daemon runs as root, and anyone with access to the backing
//! directory (another client of a shared export, a process on the host) can
//! replace a directory in it by a symbolic link to somewhere else behind the
//! mount's back. So no path is ever handed to the kernel as `root/a/b/c`: the
//! root is opened once (`O_PATH`), each operation opens the *parent* directory
//! of its object beneath it with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! (a component-by-component `O_NOFOLLOW` walk on kernels without openat2),
//! and then acts on the final name relative to that directory with the `*at`
//! calls, never following a symlink there either. A symlink inside the volume
//! is an object of its own (stat, readlink, rename, unlink it); following it is
//! the client kernel's business, with the client's permissions.

use crate::backend::owner;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use nix::dir::Type;

use super::path::{temp_name_for, temp_owner};
use super::{
    is_temp_name, AttrChanges, Backend, BackendError, BackendPath, BackendResult, Capabilities,
    DirEntry, ErrorKind, FileKind, FsStats, Identity, Metadata, ObjectReader, PendingWrite,
    VersionToken, WriteStart,
};
use super::{Resumed, SpecialFile, SuspendedWrite};

mod files;
mod loc;
mod sys;
#[cfg(test)]
mod tests;

use files::{fchmod, LocalPendingWrite, LocalReader};
use loc::*;
use sys::*;

/// Temp objects of dead writers older than this are removed even when we
/// cannot tell whether their writer (another host) is alive.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityMode {
    /// Run as the daemon; give new objects to the caller.
    Caller,
    /// Run every operation with this identity's fsuid/fsgid.
    Fixed,
}

struct Shared {
    root: PathBuf,
    /// The root directory, opened once (`O_PATH`): every path is resolved
    /// beneath it. The error (errno) if it could not be opened.
    root_fd: Result<OwnedFd, i32>,
    describe: String,
    /// See `Backend::cache_identity`.
    cache_identity: String,
    mode: IdentityMode,
    is_root: bool,
    /// `<host><pid>` (8 + 8 hex digits): names temp objects so a later mount can tell whether
    /// their writer is still alive.
    owner_tag: String,
    host_tag: String,
    temp_seq: AtomicU64,
}

pub struct LocalBackend {
    shared: Arc<Shared>,
}

/// See `Backend::cache_identity`. Frozen: `file://` and the root path.
fn cache_identity(root: &Path) -> String {
    format!("file://{}", root.display())
}

impl LocalBackend {
    /// A backend on `root`. If the root cannot be opened, every operation
    /// fails with that error; [`LocalBackend::open`] reports it at once.
    pub fn new(root: PathBuf, mode: IdentityMode) -> LocalBackend {
        let host_tag = owner::host_tag();
        let owner_tag = owner::own_tag();
        let root_fd = open_root(&root).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO));
        LocalBackend {
            shared: Arc::new(Shared {
                describe: format!("file://{}", root.display()),
                cache_identity: cache_identity(&root),
                root,
                root_fd,
                mode,
                is_root: nix::unistd::geteuid().is_root(),
                owner_tag,
                host_tag,
                temp_seq: AtomicU64::new(super::path::first_seq()),
            }),
        }
    }

    /// Like [`LocalBackend::new`], but fails if the root directory cannot be opened.
    pub fn open(root: PathBuf, mode: IdentityMode) -> io::Result<LocalBackend> {
        let backend = LocalBackend::new(root, mode);
        backend.shared.root_fd()?;
        Ok(backend)
    }
}

fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    sys_openat(libc::AT_FDCWD, &c, libc::O_PATH | libc::O_DIRECTORY, 0)
}

// ---------------------------------------------------------------------------
// Thin wrappers over the *at system calls (all errors as io::Error).
// ---------------------------------------------------------------------------

struct ImpersonationGuard {
    active: bool,
}

impl ImpersonationGuard {
    fn enter(active: bool, id: Identity) -> ImpersonationGuard {
        if active {
            // Group first: once fsuid is unprivileged we could not change it.
            nix::unistd::setfsgid(nix::unistd::Gid::from_raw(id.gid));
            nix::unistd::setfsuid(nix::unistd::Uid::from_raw(id.uid));
        }
        ImpersonationGuard { active }
    }
}

impl Drop for ImpersonationGuard {
    fn drop(&mut self) {
        if self.active {
            nix::unistd::setfsuid(nix::unistd::Uid::from_raw(0));
            nix::unistd::setfsgid(nix::unistd::Gid::from_raw(0));
        }
    }
}

fn to_time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs.clamp(0, 999_999_999) as u32)
    } else {
        UNIX_EPOCH
    }
}

// Field types of `struct stat` differ between architectures.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
fn metadata_of(st: &libc::stat) -> Metadata {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => FileKind::File,
        libc::S_IFDIR => FileKind::Directory,
        libc::S_IFLNK => FileKind::Symlink,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFCHR => FileKind::CharDevice,
        libc::S_IFBLK => FileKind::BlockDevice,
        libc::S_IFSOCK => FileKind::Socket,
        _ => FileKind::Special,
    };
    let (mtime, mtime_nsec) = (st.st_mtime as i64, st.st_mtime_nsec as i64);
    let mtime_ns = mtime as i128 * 1_000_000_000 + mtime_nsec as i128;
    let size = st.st_size as u64;
    Metadata {
        kind,
        size,
        mode: (st.st_mode as u32) & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        nlink: (st.st_nlink as u64).min(u32::MAX as u64) as u32,
        atime: to_time(st.st_atime as i64, st.st_atime_nsec as i64),
        mtime: to_time(mtime, mtime_nsec),
        ctime: to_time(st.st_ctime as i64, st.st_ctime_nsec as i64),
        version: VersionToken(format!("{:x}-{:x}-{:x}", st.st_ino as u64, size, mtime_ns)),
        object_id: Some(object_id(st.st_dev as u64, st.st_ino as u64)),
        rdev: match kind {
            FileKind::CharDevice | FileKind::BlockDevice => st.st_rdev as u64,
            _ => 0,
        },
    }
}

/// One number for (device, inode): the inode number itself on the usual
/// one-device tree, with the device folded into the high bits so that two
/// devices under one volume (a mount inside the backing directory) do not
/// share numbers for the inode numbers real filesystems hand out.
pub(crate) fn object_id(dev: u64, ino: u64) -> u64 {
    ino ^ dev.rotate_left(40)
}

#[allow(clippy::unnecessary_cast)]
fn mtime_of(st: &libc::stat) -> SystemTime {
    to_time(st.st_mtime as i64, st.st_mtime_nsec as i64)
}

/// A time for utimensat: omitted, now (UTIME_NOW: write permission is
/// enough), or the given one.
fn timespec(t: Option<SystemTime>, now: bool) -> libc::timespec {
    match t {
        Some(_) if now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(t) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as _,
            }
        }
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    }
}

fn rename_noreplace(from: &Loc<'_>, to: &Loc<'_>) -> io::Result<()> {
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

/// `st_ino` as u64 (its type differs between architectures).
#[allow(clippy::unnecessary_cast)]
fn inode_number(st: &libc::stat) -> u64 {
    st.st_ino as u64
}

#[async_trait]
impl Backend for LocalBackend {
    fn describe(&self) -> &str {
        &self.shared.describe
    }

    fn cache_identity(&self) -> &str {
        &self.shared.cache_identity
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            hard_links: true,
            symlinks: true,
            special_files: true,
            caller_groups: false,
            cheap_rename: true,
        }
    }

    async fn stat(&self, id: Identity, path: &BackendPath) -> BackendResult<Metadata> {
        let p = path.clone();
        self.shared
            .run(id, "stat", path, move |s| s.locate(&p)?.meta())
            .await
    }

    async fn list(&self, id: Identity, path: &BackendPath) -> BackendResult<Vec<DirEntry>> {
        let p = path.clone();
        self.shared
            .run(id, "list directory", path, move |s| {
                let fd = s.locate(&p)?.open(libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                let mut dir = nix::dir::Dir::from(fd).map_err(io::Error::from)?;
                let dir_fd = dir.as_raw_fd();
                let mut out = Vec::new();
                for entry in dir.iter() {
                    let entry = entry.map_err(io::Error::from)?;
                    let raw = entry.file_name();
                    if matches!(raw.to_bytes(), b"." | b"..") {
                        continue;
                    }
                    let Ok(name) = std::str::from_utf8(raw.to_bytes()) else {
                        tracing::warn!(dir = %s.shown(p.as_str().as_bytes()).display(),
                            name = ?OsStr::from_bytes(raw.to_bytes()),
                            "skipping a file name that is not valid UTF-8");
                        continue;
                    };
                    if is_temp_name(name) {
                        continue;
                    }
                    match sys_fstatat(dir_fd, raw, libc::AT_SYMLINK_NOFOLLOW) {
                        Ok(st) => out.push(DirEntry {
                            name: name.to_string(),
                            meta: metadata_of(&st),
                        }),
                        // Removed between readdir and stat: not an error.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn open_read(
        &self,
        id: Identity,
        path: &BackendPath,
    ) -> BackendResult<Box<dyn ObjectReader>> {
        let p = path.clone();
        let (file, meta) = self
            .shared
            .run(id, "open for reading", path, move |s| {
                let file = File::from(s.locate(&p)?.open(libc::O_RDONLY, 0)?);
                let meta = metadata_of(&sys_fstat(file.as_raw_fd())?);
                if meta.kind == FileKind::Directory {
                    return Err(io::Error::from_raw_os_error(libc::EISDIR));
                }
                Ok((file, meta))
            })
            .await?;
        Ok(Box::new(LocalReader {
            file: Arc::new(file),
            version: meta.version,
            size: meta.size,
            path: path.clone(),
            shared: Arc::clone(&self.shared),
            id,
        }))
    }

    async fn begin_write(
        &self,
        id: Identity,
        path: &BackendPath,
        start: WriteStart,
        create_mode: u32,
    ) -> BackendResult<Box<dyn PendingWrite>> {
        let temp_name = self.shared.next_temp_name(path.name());
        let target = path.clone();
        let temp = temp_name.clone();
        let (file, size) = self
            .shared
            .run(id, "create temp file", path, move |s| {
                let target = s.locate(&target)?;
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
                let mut file =
                    File::from(temp.open(libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o600)?);
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
            })
            .await?;
        Ok(Box::new(LocalPendingWrite {
            file: Arc::new(file),
            temp_name,
            size: AtomicU64::new(size),
            finished: AtomicBool::new(false),
            shared: Arc::clone(&self.shared),
            id,
        }))
    }

    async fn mkdir(&self, id: Identity, path: &BackendPath, mode: u32) -> BackendResult<Metadata> {
        let p = path.clone();
        self.shared
            .run(id, "mkdir", path, move |s| {
                let loc = s.locate(&p)?;
                // SAFETY: valid NUL-terminated string.
                cvt(unsafe { libc::mkdirat(loc.dir(), loc.name().as_ptr(), 0o777) })?;
                loc.chmod(mode)?;
                s.assign_owner(&loc, id)?;
                loc.meta()
            })
            .await
    }

    async fn rmdir(&self, id: Identity, path: &BackendPath) -> BackendResult<()> {
        let p = path.clone();
        self.shared
            .run(id, "rmdir", path, move |s| {
                let loc = s.locate(&p)?;
                sys_unlinkat(loc.dir(), loc.name(), libc::AT_REMOVEDIR)
            })
            .await
    }

    async fn unlink(&self, id: Identity, path: &BackendPath) -> BackendResult<()> {
        let p = path.clone();
        self.shared
            .run(id, "unlink", path, move |s| {
                let loc = s.locate(&p)?;
                if is_dir(&loc.lstat()?) {
                    return Err(io::Error::from_raw_os_error(libc::EISDIR));
                }
                sys_unlinkat(loc.dir(), loc.name(), 0)
            })
            .await
    }

    async fn rename(
        &self,
        id: Identity,
        from: &BackendPath,
        to: &BackendPath,
        no_replace: bool,
    ) -> BackendResult<()> {
        let (f, t) = (from.clone(), to.clone());
        self.shared
            .run(id, "rename", from, move |s| {
                let (from, to) = (s.locate(&f)?, s.locate(&t)?);
                if no_replace {
                    rename_noreplace(&from, &to)
                } else {
                    sys_renameat2(from.dir(), from.name(), to.dir(), to.name(), 0)
                }
            })
            .await
    }

    async fn symlink(
        &self,
        id: Identity,
        path: &BackendPath,
        target: &str,
    ) -> BackendResult<Metadata> {
        let (p, target) = (path.clone(), target.to_string());
        self.shared
            .run(id, "symlink", path, move |s| {
                let loc = s.locate(&p)?;
                let target = cstring(target.as_bytes())?;
                // SAFETY: valid NUL-terminated strings.
                cvt(unsafe { libc::symlinkat(target.as_ptr(), loc.dir(), loc.name().as_ptr()) })?;
                s.assign_owner(&loc, id)?;
                loc.meta()
            })
            .await
    }

    async fn readlink(&self, id: Identity, path: &BackendPath) -> BackendResult<String> {
        let p = path.clone();
        self.shared
            .run(id, "readlink", path, move |s| {
                let loc = s.locate(&p)?;
                let target = sys_readlinkat(loc.dir(), loc.name())?;
                String::from_utf8(target).map_err(|_| io::Error::from_raw_os_error(libc::EILSEQ))
            })
            .await
    }

    async fn link(
        &self,
        id: Identity,
        existing: &BackendPath,
        new: &BackendPath,
    ) -> BackendResult<Metadata> {
        let (e, n) = (existing.clone(), new.clone());
        self.shared
            .run(id, "link", new, move |s| {
                let (existing, new) = (s.locate(&e)?, s.locate(&n)?);
                // Flags 0: a symlink is linked as itself, never followed.
                // SAFETY: valid NUL-terminated strings.
                cvt(unsafe {
                    libc::linkat(
                        existing.dir(),
                        existing.name().as_ptr(),
                        new.dir(),
                        new.name().as_ptr(),
                        0,
                    )
                })?;
                new.meta()
            })
            .await
    }

    async fn mknod(
        &self,
        id: Identity,
        path: &BackendPath,
        node: SpecialFile,
        mode: u32,
    ) -> BackendResult<Metadata> {
        let p = path.clone();
        let (format, rdev) = match node {
            SpecialFile::Fifo => (libc::S_IFIFO, 0),
            SpecialFile::Socket => (libc::S_IFSOCK, 0),
            SpecialFile::CharDevice(rdev) => (libc::S_IFCHR, rdev),
            SpecialFile::BlockDevice(rdev) => (libc::S_IFBLK, rdev),
        };
        self.shared
            .run(id, "mknod", path, move |s| {
                let loc = s.locate(&p)?;
                // SAFETY: valid NUL-terminated string.
                cvt(unsafe {
                    libc::mknodat(
                        loc.dir(),
                        loc.name().as_ptr(),
                        format | 0o600,
                        rdev as libc::dev_t,
                    )
                })?;
                loc.chmod(mode)?;
                s.assign_owner(&loc, id)?;
                loc.meta()
            })
            .await
    }

    async fn set_attr(
        &self,
        id: Identity,
        path: &BackendPath,
        changes: &AttrChanges,
    ) -> BackendResult<Metadata> {
        let (p, changes) = (path.clone(), changes.clone());
        self.shared
            .run(id, "set attributes", path, move |s| {
                let loc = s.locate(&p)?;
                let symlink = is_symlink(&loc.lstat()?);
                if changes.uid.is_some() || changes.gid.is_some() {
                    loc.chown(changes.uid, changes.gid)?;
                }
                // Linux has no symlink modes; chmod would follow the link.
                if let (Some(mode), false) = (changes.mode, symlink) {
                    loc.chmod(mode)?;
                }
                loc.set_times(&changes)?;
                loc.meta()
            })
            .await
    }

    async fn statfs(&self, id: Identity) -> BackendResult<FsStats> {
        self.shared
            .run(id, "statfs", &BackendPath::root(), move |s| {
                let v = nix::sys::statvfs::fstatvfs(s.root_fd()?).map_err(io::Error::from)?;
                Ok(FsStats {
                    block_size: v.fragment_size() as u32,
                    blocks: v.blocks(),
                    blocks_free: v.blocks_free(),
                    blocks_available: v.blocks_available(),
                    files: v.files(),
                    files_free: v.files_free(),
                    name_max: v.name_max() as u32,
                })
            })
            .await
    }

    async fn resume_write(
        &self,
        id: Identity,
        target: &BackendPath,
        state: SuspendedWrite,
    ) -> BackendResult<Resumed> {
        #[derive(serde::Deserialize)]
        struct Suspended {
            temp_name: String,
            /// Absent when described at begin (after a crash): measured.
            size: Option<u64>,
            /// The temp file's inode number: the target is it once published.
            ino: Option<u64>,
        }
        let bad = |why: String| {
            BackendError::new(ErrorKind::Other, "resume write", target.as_str())
                .with_backend(self.describe())
                .with_identity(id)
                .with_cause(why)
        };
        let s: Suspended =
            serde_json::from_value(state).map_err(|e| bad(format!("bad suspended write: {e}")))?;
        if !crate::backend::is_temp_name(&s.temp_name) || s.temp_name.contains('/') {
            return Err(bad(format!("{:?} is not a temp file name", s.temp_name)));
        }
        let (old_name, t) = (s.temp_name.clone(), target.clone());
        let ino = s.ino;
        let found: Option<(File, String)> = self
            .shared
            .run(id, "resume temp file", target, move |sh| {
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
            })
            .await?;
        let Some((file, new_name)) = found else {
            return Ok(Resumed::Published);
        };
        let size = match s.size {
            Some(size) => size,
            None => file
                .metadata()
                .map_err(|e| BackendError::from_io(&e, "resume temp file", target.as_str()))?
                .len(),
        };
        Ok(Resumed::Pending(Box::new(LocalPendingWrite {
            file: Arc::new(file),
            temp_name: new_name,
            size: AtomicU64::new(size),
            finished: AtomicBool::new(false),
            shared: Arc::clone(&self.shared),
            id,
        })))
    }

    async fn cleanup_stale_temps(&self) -> BackendResult<usize> {
        let root_id = Identity::new(0, 0);
        self.shared
            .run(
                root_id,
                "clean up stale temp files",
                &BackendPath::root(),
                |s| {
                    let root = s.root_fd()?.as_raw_fd();
                    let mut removed = 0;
                    // Relative paths (bytes: names on disk need not be UTF-8),
                    // each opened beneath the root when its turn comes, so
                    // neither a symlink nor a deep tree's open fds get in the way.
                    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
                    while let Some(rel) = stack.pop() {
                        let opened = if rel.is_empty() {
                            sys_openat(root, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
                        } else {
                            open_beneath(root, &rel, libc::O_RDONLY | libc::O_DIRECTORY)
                        };
                        let Ok(mut dir) =
                            opened.and_then(|fd| nix::dir::Dir::from(fd).map_err(io::Error::from))
                        else {
                            continue;
                        };
                        let dir_fd = dir.as_raw_fd();
                        for entry in dir.iter().flatten() {
                            let raw = entry.file_name();
                            let bytes = raw.to_bytes();
                            if matches!(bytes, b"." | b"..") {
                                continue;
                            }
                            let stat = || sys_fstatat(dir_fd, raw, libc::AT_SYMLINK_NOFOLLOW);
                            let (is_subdir, is_file) = match entry.file_type() {
                                Some(t) => (t == Type::Directory, t == Type::File),
                                None => match stat() {
                                    Ok(st) => (is_dir(&st), is_regular(&st)),
                                    Err(_) => continue,
                                },
                            };
                            let mut child = rel.clone();
                            if !child.is_empty() {
                                child.push(b'/');
                            }
                            child.extend_from_slice(bytes);
                            let name = String::from_utf8_lossy(bytes);
                            if is_subdir {
                                stack.push(child);
                            } else if is_file
                                && is_temp_name(&name)
                                && stat().is_ok_and(|st| {
                                    is_regular(&st) && s.is_stale_temp(&name, mtime_of(&st))
                                })
                                && sys_unlinkat(dir_fd, raw, 0).is_ok()
                            {
                                tracing::info!(path = %s.shown(&child).display(),
                                    "removed temp file left by a crashed writer");
                                removed += 1;
                            }
                        }
                    }
                    Ok(removed)
                },
            )
            .await
    }
}
