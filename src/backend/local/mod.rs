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
//!
//! This module holds the backend's state and its `Backend` methods; the
//! blocking work they hand to the blocking pool is in its parts:
//! - `loc`: where an object is (`Loc`: a directory beneath the root and a
//!   name), and the shared state that finds it and runs the work;
//! - `sys`: thin wrappers over the `*at` system calls, opening beneath the
//!   root;
//! - `identity`: whose identity the work runs with;
//! - `meta`: `struct stat` as `Metadata`;
//! - `read`: listing a directory, reading a file;
//! - `write`: the temp file a write goes through, from begin (or resume)
//!   to publish;
//! - `cleanup`: removing crashed writers' temp files.

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

mod cleanup;
mod copy;
mod identity;
mod loc;
mod meta;
mod read;
mod sys;
#[cfg(test)]
mod tests;
mod write;

use cleanup::remove_stale_temps;
pub use identity::IdentityMode;
use identity::ImpersonationGuard;
use loc::*;
use meta::*;
use read::{list_dir, LocalReader};
use sys::*;
use write::{create_temp, reopen_temp, LocalPendingWrite};

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
    /// The root is on a local disk filesystem (see `Capabilities::inline_io`).
    on_local_disk: bool,
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
        let on_local_disk = root_fd.as_ref().is_ok_and(on_local_disk);
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
                on_local_disk,
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

/// Whether `dir` is on a filesystem of the local disk (or memory), whose
/// system calls take microseconds: not a network filesystem (a `file://`
/// source may be a kernel NFS mount), a FUSE one or anything unknown.
fn on_local_disk(dir: &OwnedFd) -> bool {
    const LOCAL: [i64; 8] = [
        0xEF53,      // ext2/3/4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0x794C_7630, // overlayfs
        0x2FC1_2FC1, // zfs
        0xF2F5_2010, // f2fs
        0x8584_58F6, // ramfs
    ];
    // SAFETY: a valid descriptor and a zeroed struct for the kernel to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(dir.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)]
    LOCAL.contains(&(st.f_type as i64))
}

fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    sys_openat(libc::AT_FDCWD, &c, libc::O_PATH | libc::O_DIRECTORY, 0)
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
            inline_io: self.shared.on_local_disk,
            inline_writes: self.shared.on_local_disk,
            large_reads: false,
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
            .run(id, "list directory", path, move |s| list_dir(s, &p))
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
                create_temp(s, &target, &temp, start, create_mode, id)
            })
            .await?;
        Ok(Box::new(LocalPendingWrite::new(
            file,
            temp_name,
            size,
            Arc::clone(&self.shared),
            id,
        )))
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

    /// A publish without fsync(2) is a plain rename: flush the file now.
    async fn sync(&self, id: Identity, path: &BackendPath) -> BackendResult<()> {
        let p = path.clone();
        self.shared
            .run(id, "sync", path, move |s| {
                let file = File::from(s.locate(&p)?.open(libc::O_RDONLY, 0)?);
                file.sync_data()
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

    async fn copy_file(
        &self,
        id: Identity,
        from: &BackendPath,
        to: &BackendPath,
    ) -> BackendResult<bool> {
        self.copy_within(id, from, to).await
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
                reopen_temp(sh, &t, &old_name, ino)
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
        Ok(Resumed::Pending(Box::new(LocalPendingWrite::new(
            file,
            new_name,
            size,
            Arc::clone(&self.shared),
            id,
        ))))
    }

    async fn cleanup_stale_temps(&self) -> BackendResult<usize> {
        let root_id = Identity::new(0, 0);
        self.shared
            .run(
                root_id,
                "clean up stale temp files",
                &BackendPath::root(),
                remove_stale_temps,
            )
            .await
    }
}
