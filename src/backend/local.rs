//! `file:///dir` backend: a local directory (or a kernel-mounted NFS export).
//!
//! Identity: by default operations run as the daemon and new objects are
//! chowned to the caller (the kernel's `default_permissions` already checked
//! the caller's access). With a fixed identity (`--uid/--gid`) every
//! operation runs with that fsuid/fsgid, so the directory's own permissions
//! are enforced exactly as a squashing NFS server would.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use nix::sys::stat::UtimensatFlags;
use nix::sys::time::TimeSpec;

use super::path::{temp_name_for, temp_owner};
use super::{
    is_temp_name, AttrChanges, Backend, BackendError, BackendPath, BackendResult, Capabilities,
    DirEntry, ErrorKind, FileKind, FsStats, Identity, Metadata, ObjectReader, PendingWrite,
    VersionToken, WriteStart,
};

/// Temp objects of dead writers older than this are removed even when we
/// cannot tell whether their writer (another host) is alive.
const FOREIGN_TEMP_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityMode {
    /// Run as the daemon; give new objects to the caller.
    Caller,
    /// Run every operation with this identity's fsuid/fsgid.
    Fixed,
}

struct Shared {
    root: PathBuf,
    describe: String,
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

impl LocalBackend {
    pub fn new(root: PathBuf, mode: IdentityMode) -> LocalBackend {
        let host_tag = host_tag();
        let owner_tag = format!("{host_tag}{:08x}", std::process::id());
        LocalBackend {
            shared: Arc::new(Shared {
                describe: format!("file://{}", root.display()),
                root,
                mode,
                is_root: nix::unistd::geteuid().is_root(),
                owner_tag,
                host_tag,
                temp_seq: AtomicU64::new(0),
            }),
        }
    }
}

fn host_tag() -> String {
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{:08x}", crc32c::crc32c(host.trim().as_bytes()))
}

impl Shared {
    fn full(&self, path: &BackendPath) -> PathBuf {
        if path.is_root() {
            self.root.clone()
        } else {
            self.root.join(path.as_str())
        }
    }

    fn err(
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
    async fn run<T, F>(
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
        let joined = tokio::task::spawn_blocking(move || {
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

    /// Give a freshly created object to the caller (Caller mode, daemon is
    /// root). Honours setgid directories like the kernel does.
    fn assign_owner(&self, path: &Path, id: Identity) -> io::Result<()> {
        if self.mode != IdentityMode::Caller || !self.is_root {
            return Ok(());
        }
        let gid = match path.parent().map(fs::metadata) {
            Some(Ok(parent)) if parent.mode() & libc::S_ISGID != 0 => parent.gid(),
            _ => id.gid,
        };
        std::os::unix::fs::lchown(path, Some(id.uid), Some(gid))
    }

    fn next_temp_name(&self, final_name: &str) -> String {
        let seq = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        temp_name_for(final_name, &self.owner_tag, seq)
    }

    /// A temp object is stale when its writer process on this host is gone,
    /// or when it is older than a day (writer on another host, or unknown).
    fn is_stale_temp(&self, name: &str, meta: &fs::Metadata) -> bool {
        let age = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .unwrap_or_default();
        if age > FOREIGN_TEMP_MAX_AGE {
            return true;
        }
        let Some(owner) = temp_owner(name) else {
            return false;
        };
        let (host, pid) = owner.split_at(8);
        if host != self.host_tag {
            return false;
        }
        let Ok(pid) = u32::from_str_radix(pid, 16) else {
            return false;
        };
        !writer_alive(pid)
    }
}

fn writer_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    match fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => comm.trim() == "cachalot",
        Err(_) => false,
    }
}

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

fn metadata_of(m: &fs::Metadata) -> Metadata {
    let ft = m.file_type();
    let kind = if ft.is_file() {
        FileKind::File
    } else if ft.is_dir() {
        FileKind::Directory
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else if std::os::unix::fs::FileTypeExt::is_fifo(&ft) {
        FileKind::Fifo
    } else {
        FileKind::Special
    };
    let mtime_ns = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
    Metadata {
        kind,
        size: m.size(),
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        nlink: m.nlink().min(u32::MAX as u64) as u32,
        atime: to_time(m.atime(), m.atime_nsec()),
        mtime: to_time(m.mtime(), m.mtime_nsec()),
        ctime: to_time(m.ctime(), m.ctime_nsec()),
        version: VersionToken(format!("{:x}-{:x}-{:x}", m.ino(), m.size(), mtime_ns)),
    }
}

fn lstat(path: &Path) -> io::Result<Metadata> {
    fs::symlink_metadata(path).map(|m| metadata_of(&m))
}

fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn chmod_exact(path: &Path, mode: u32) -> io::Result<()> {
    // Explicit chmod: the daemon's umask must not alter requested modes.
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
}

fn timespec(t: SystemTime) -> TimeSpec {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    TimeSpec::new(d.as_secs() as i64, d.subsec_nanos() as i64)
}

const UTIME_OMIT: TimeSpec = TimeSpec::new(0, libc::UTIME_OMIT);

fn apply_times(path: &Path, changes: &AttrChanges) -> io::Result<()> {
    if changes.atime.is_none() && changes.mtime.is_none() {
        return Ok(());
    }
    let atime = changes.atime.map(timespec).unwrap_or(UTIME_OMIT);
    let mtime = changes.mtime.map(timespec).unwrap_or(UTIME_OMIT);
    nix::sys::stat::utimensat(None, path, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
        .map_err(io::Error::from)
}

fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let from_c = CString::new(from.as_os_str().as_bytes())?;
    let to_c = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINVAL) {
        // Filesystem without RENAME_NOREPLACE: best effort check-then-rename.
        if fs::symlink_metadata(to).is_ok() {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        return fs::rename(from, to);
    }
    Err(err)
}

#[async_trait]
impl Backend for LocalBackend {
    fn describe(&self) -> &str {
        &self.shared.describe
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            hard_links: true,
            symlinks: true,
            fifos: true,
            cheap_rename: true,
        }
    }

    async fn stat(&self, id: Identity, path: &BackendPath) -> BackendResult<Metadata> {
        let p = path.clone();
        self.shared
            .run(id, "stat", path, move |s| lstat(&s.full(&p)))
            .await
    }

    async fn list(&self, id: Identity, path: &BackendPath) -> BackendResult<Vec<DirEntry>> {
        let p = path.clone();
        self.shared
            .run(id, "list directory", path, move |s| {
                let dir = s.full(&p);
                let mut out = Vec::new();
                for entry in fs::read_dir(&dir)? {
                    let entry = entry?;
                    let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                        tracing::warn!(dir = %dir.display(), name = ?entry.file_name(),
                            "skipping a file name that is not valid UTF-8");
                        continue;
                    };
                    if is_temp_name(&name) {
                        continue;
                    }
                    match entry.metadata() {
                        Ok(m) => out.push(DirEntry {
                            name,
                            meta: metadata_of(&m),
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
                let file = open_nofollow(&s.full(&p))?;
                let meta = metadata_of(&file.metadata()?);
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
                let final_path = s.full(&target);
                let temp_path = s.full(&target.parent()).join(&temp);
                let existing = match open_nofollow(&final_path) {
                    Ok(f) => {
                        let m = f.metadata()?;
                        if m.is_dir() {
                            return Err(io::Error::from_raw_os_error(libc::EISDIR));
                        }
                        Some((f, m))
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
                    Err(e) => return Err(e),
                };
                let mut file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&temp_path)?;
                let prepared = (|| -> io::Result<u64> {
                    match &existing {
                        Some((src, m)) => {
                            if s.is_root {
                                std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid()))?;
                            }
                            file.set_permissions(fs::Permissions::from_mode(m.mode() & 0o7777))?;
                            if start == WriteStart::CopyExisting {
                                let mut src = src;
                                io::copy(&mut src, &mut file)
                            } else {
                                Ok(0)
                            }
                        }
                        None => {
                            s.assign_owner(&temp_path, id)?;
                            file.set_permissions(fs::Permissions::from_mode(create_mode & 0o7777))?;
                            Ok(0)
                        }
                    }
                })();
                match prepared {
                    Ok(size) => Ok((file, size)),
                    Err(e) => {
                        let _ = fs::remove_file(&temp_path);
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
                let full = s.full(&p);
                fs::create_dir(&full)?;
                chmod_exact(&full, mode)?;
                s.assign_owner(&full, id)?;
                lstat(&full)
            })
            .await
    }

    async fn rmdir(&self, id: Identity, path: &BackendPath) -> BackendResult<()> {
        let p = path.clone();
        self.shared
            .run(id, "rmdir", path, move |s| fs::remove_dir(s.full(&p)))
            .await
    }

    async fn unlink(&self, id: Identity, path: &BackendPath) -> BackendResult<()> {
        let p = path.clone();
        self.shared
            .run(id, "unlink", path, move |s| {
                let full = s.full(&p);
                if fs::symlink_metadata(&full)?.is_dir() {
                    return Err(io::Error::from_raw_os_error(libc::EISDIR));
                }
                fs::remove_file(full)
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
                if no_replace {
                    rename_noreplace(&s.full(&f), &s.full(&t))
                } else {
                    fs::rename(s.full(&f), s.full(&t))
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
                let full = s.full(&p);
                std::os::unix::fs::symlink(&target, &full)?;
                s.assign_owner(&full, id)?;
                lstat(&full)
            })
            .await
    }

    async fn readlink(&self, id: Identity, path: &BackendPath) -> BackendResult<String> {
        let p = path.clone();
        self.shared
            .run(id, "readlink", path, move |s| {
                let target = fs::read_link(s.full(&p))?;
                target
                    .into_os_string()
                    .into_string()
                    .map_err(|_| io::Error::from_raw_os_error(libc::EILSEQ))
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
                fs::hard_link(s.full(&e), s.full(&n))?;
                lstat(&s.full(&n))
            })
            .await
    }

    async fn mkfifo(&self, id: Identity, path: &BackendPath, mode: u32) -> BackendResult<Metadata> {
        let p = path.clone();
        self.shared
            .run(id, "mkfifo", path, move |s| {
                let full = s.full(&p);
                nix::unistd::mkfifo(&full, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .map_err(io::Error::from)?;
                chmod_exact(&full, mode)?;
                s.assign_owner(&full, id)?;
                lstat(&full)
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
                let full = s.full(&p);
                let is_symlink = fs::symlink_metadata(&full)?.file_type().is_symlink();
                if changes.uid.is_some() || changes.gid.is_some() {
                    std::os::unix::fs::lchown(&full, changes.uid, changes.gid)?;
                }
                // Linux has no symlink modes; chmod would follow the link.
                if let (Some(mode), false) = (changes.mode, is_symlink) {
                    chmod_exact(&full, mode)?;
                }
                apply_times(&full, &changes)?;
                lstat(&full)
            })
            .await
    }

    async fn statfs(&self, id: Identity) -> BackendResult<FsStats> {
        self.shared
            .run(id, "statfs", &BackendPath::root(), move |s| {
                let v = nix::sys::statvfs::statvfs(&s.root).map_err(io::Error::from)?;
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

    async fn cleanup_stale_temps(&self) -> BackendResult<usize> {
        let root_id = Identity { uid: 0, gid: 0 };
        self.shared
            .run(
                root_id,
                "clean up stale temp files",
                &BackendPath::root(),
                |s| {
                    let mut removed = 0;
                    let mut stack = vec![s.root.clone()];
                    while let Some(dir) = stack.pop() {
                        let Ok(entries) = fs::read_dir(&dir) else {
                            continue;
                        };
                        for entry in entries.flatten() {
                            let Ok(ft) = entry.file_type() else { continue };
                            let name = entry.file_name();
                            let name = name.to_string_lossy();
                            if ft.is_dir() {
                                stack.push(entry.path());
                            } else if ft.is_file() && is_temp_name(&name) {
                                let stale = entry
                                    .metadata()
                                    .map(|m| s.is_stale_temp(&name, &m))
                                    .unwrap_or(false);
                                if stale && fs::remove_file(entry.path()).is_ok() {
                                    tracing::info!(path = %entry.path().display(),
                                    "removed temp file left by a crashed writer");
                                    removed += 1;
                                }
                            }
                        }
                    }
                    Ok(removed)
                },
            )
            .await
    }
}

struct LocalReader {
    file: Arc<File>,
    version: VersionToken,
    size: u64,
    path: BackendPath,
    shared: Arc<Shared>,
    id: Identity,
}

fn read_full_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
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

    async fn read_at(&self, offset: u64, len: usize) -> BackendResult<Vec<u8>> {
        let file = Arc::clone(&self.file);
        self.shared
            .run(self.id, "read", &self.path, move |_| {
                read_full_at(&file, offset, len)
            })
            .await
    }
}

struct LocalPendingWrite {
    file: Arc<File>,
    temp_name: String,
    size: AtomicU64,
    /// Published or aborted: the temp file no longer belongs to us.
    finished: AtomicBool,
    shared: Arc<Shared>,
    id: Identity,
}

impl LocalPendingWrite {
    fn temp_path(&self, s: &Shared, target: &BackendPath) -> PathBuf {
        s.full(&target.parent()).join(&self.temp_name)
    }
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
                    file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
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
        let (old, new) = (old_target.clone(), new_target.clone());
        let temp = self.temp_name.clone();
        self.shared
            .run(self.id, "move temp file", new_target, move |s| {
                fs::rename(
                    s.full(&old.parent()).join(&temp),
                    s.full(&new.parent()).join(&temp),
                )
            })
            .await
    }

    async fn publish(&self, target: &BackendPath) -> BackendResult<Metadata> {
        let file = Arc::clone(&self.file);
        let temp_path = self.temp_path(&self.shared, target);
        let t = target.clone();
        let meta = self
            .shared
            .run(self.id, "publish (sync + rename)", target, move |s| {
                // Durable before visible: the rename must never expose data
                // that a crash could still lose.
                file.sync_data()?;
                fs::rename(&temp_path, s.full(&t))?;
                lstat(&s.full(&t))
            })
            .await?;
        self.finished.store(true, Ordering::Release);
        Ok(meta)
    }

    async fn abort(&self, target: &BackendPath) {
        if self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        let temp_path = self.temp_path(&self.shared, target);
        let result = self
            .shared
            .run(
                self.id,
                "remove temp file",
                target,
                move |_| match fs::remove_file(&temp_path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                },
            )
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not remove an aborted temp file; the next mount will");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(dir: &Path) -> LocalBackend {
        LocalBackend::new(dir.to_path_buf(), IdentityMode::Caller)
    }

    fn me() -> Identity {
        Identity {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    fn p(s: &str) -> BackendPath {
        BackendPath::parse(s).unwrap()
    }

    fn visible_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn pending_write_is_invisible_until_published() {
        let dir = tempfile::tempdir().unwrap();
        let b = backend(dir.path());
        let w = b
            .begin_write(me(), &p("new.txt"), WriteStart::Empty, 0o640)
            .await
            .unwrap();
        w.write_at(0, b"hello").await.unwrap();
        assert!(!dir.path().join("new.txt").exists());
        assert!(b.list(me(), &BackendPath::root()).await.unwrap().is_empty());
        let meta = w.publish(&p("new.txt")).await.unwrap();
        assert_eq!(meta.size, 5);
        assert_eq!(meta.mode, 0o640);
        assert_eq!(fs::read(dir.path().join("new.txt")).unwrap(), b"hello");
        assert_eq!(visible_names(dir.path()), vec!["new.txt"]);
    }

    #[tokio::test]
    async fn copy_on_write_keeps_untouched_ranges_and_abort_keeps_old_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"0123456789").unwrap();
        let b = backend(dir.path());
        let w = b
            .begin_write(me(), &p("f"), WriteStart::CopyExisting, 0o644)
            .await
            .unwrap();
        w.write_at(2, b"AB").await.unwrap();
        assert_eq!(w.read_at(0, 100).await.unwrap(), b"01AB456789");
        w.abort(&p("f")).await;
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"0123456789");
        assert_eq!(visible_names(dir.path()), vec!["f"]);
    }

    #[tokio::test]
    async fn stale_temps_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let b = backend(dir.path());
        // A temp owned by a pid that cannot exist on this host.
        let dead = temp_name_for(
            "x",
            &format!("{}{:08x}", b.shared.host_tag, u32::MAX - 1),
            1,
        );
        let live = b.shared.next_temp_name("y");
        fs::write(dir.path().join(&dead), b"partial").unwrap();
        fs::write(dir.path().join(&live), b"in progress").unwrap();
        assert_eq!(b.cleanup_stale_temps().await.unwrap(), 1);
        assert!(!dir.path().join(&dead).exists());
        assert!(dir.path().join(&live).exists());
    }

    #[tokio::test]
    async fn errors_carry_kind_and_context() {
        let dir = tempfile::tempdir().unwrap();
        let b = backend(dir.path());
        let err = b.stat(me(), &p("missing")).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(err.to_string().contains("/missing"));
        fs::create_dir(dir.path().join("d")).unwrap();
        fs::write(dir.path().join("d/f"), b"x").unwrap();
        let err = b.rmdir(me(), &p("d")).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotEmpty);
    }

    #[tokio::test]
    async fn rename_noreplace_refuses_existing_target() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), b"a").unwrap();
        fs::write(dir.path().join("b"), b"b").unwrap();
        let b = backend(dir.path());
        let err = b.rename(me(), &p("a"), &p("b"), true).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::AlreadyExists);
        assert_eq!(fs::read(dir.path().join("b")).unwrap(), b"b");
    }
}
