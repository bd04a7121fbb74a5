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

use std::ffi::{CStr, CString, OsStr};
use std::fs::{self, File};
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
    /// The root directory, opened once (`O_PATH`): every path is resolved
    /// beneath it. The error (errno) if it could not be opened.
    root_fd: Result<OwnedFd, i32>,
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
    /// A backend on `root`. If the root cannot be opened, every operation
    /// fails with that error; [`LocalBackend::open`] reports it at once.
    pub fn new(root: PathBuf, mode: IdentityMode) -> LocalBackend {
        let host_tag = host_tag();
        let owner_tag = format!("{host_tag}{:08x}", std::process::id());
        let root_fd = open_root(&root).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO));
        LocalBackend {
            shared: Arc::new(Shared {
                describe: format!("file://{}", root.display()),
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

fn host_tag() -> String {
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{:08x}", crc32c::crc32c(host.trim().as_bytes()))
}

fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    sys_openat(libc::AT_FDCWD, &c, libc::O_PATH | libc::O_DIRECTORY, 0)
}

// ---------------------------------------------------------------------------
// Thin wrappers over the *at system calls (all errors as io::Error).
// ---------------------------------------------------------------------------

fn cvt(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `openat` with `O_CLOEXEC`, retried on EINTR.
fn sys_openat(
    dir: RawFd,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: `name` is a valid NUL-terminated string; the result is checked.
        let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, mode) };
        if fd >= 0 {
            // SAFETY: a fresh descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

fn sys_fstatat(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid string and a buffer of the right type; filled on success.
    cvt(unsafe { libc::fstatat(dir, name.as_ptr(), st.as_mut_ptr(), flags) })?;
    // SAFETY: fstatat succeeded, so the buffer is initialised.
    Ok(unsafe { st.assume_init() })
}

/// fstat that also works on `O_PATH` descriptors.
fn sys_fstat(fd: RawFd) -> io::Result<libc::stat> {
    sys_fstatat(fd, c"", libc::AT_EMPTY_PATH)
}

fn sys_renameat2(
    from_dir: RawFd,
    from: &CStr,
    to_dir: RawFd,
    to: &CStr,
    flags: libc::c_uint,
) -> io::Result<()> {
    // SAFETY: valid NUL-terminated strings that outlive the call.
    cvt(unsafe { libc::renameat2(from_dir, from.as_ptr(), to_dir, to.as_ptr(), flags) })
}

fn sys_unlinkat(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: valid NUL-terminated string.
    cvt(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) })
}

fn sys_readlinkat(dir: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: the buffer is valid for `buf.len()` bytes.
        let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// `/proc/self/fd/<fd>`: the object an fd refers to, for the few calls that
/// have no form taking a descriptor (chmod without following a symlink).
fn proc_fd_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a number")
}

fn is_symlink(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn is_regular(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

// ---------------------------------------------------------------------------
// Resolution beneath the root, without following symlinks.
// ---------------------------------------------------------------------------

/// Cleared once the kernel said it has no openat2 (ENOSYS, or a seccomp
/// filter that refuses it): from then on the `O_NOFOLLOW` walk is used.
static OPENAT2_AVAILABLE: AtomicBool = AtomicBool::new(true);

/// Open the directory `rel` (`a/b`, not empty) beneath `root`, refusing to
/// follow a symlink in any of its components. `flags` are the open flags of
/// the final component (`O_PATH | O_DIRECTORY`, or `O_RDONLY | O_DIRECTORY` to
/// read it).
fn open_beneath(root: RawFd, rel: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    if OPENAT2_AVAILABLE.load(Ordering::Relaxed) {
        match openat2_beneath(root, rel, flags) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) => {
                // EPERM: a seccomp profile that does not know openat2 yet. A
                // genuine EPERM is reproduced by the walk below.
                tracing::info!(error = %e, "openat2 is not available: resolving backend paths component by component");
                OPENAT2_AVAILABLE.store(false, Ordering::Relaxed);
            }
            other => return other,
        }
    }
    walk_beneath(root, rel, flags)
}

fn openat2_beneath(root: RawFd, rel: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = cstring(rel)?;
    // SAFETY: open_how is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    let mut tries = 0;
    loop {
        // SAFETY: valid string and open_how of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root,
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a fresh descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        let e = io::Error::last_os_error();
        tries += 1;
        // EAGAIN: a concurrent rename made the kernel unsure; it asks to retry.
        if !matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) || tries >= 16 {
            return Err(e);
        }
    }
}

/// openat2's fallback: one `openat(O_NOFOLLOW | O_DIRECTORY)` per component.
/// A symlink component fails with ENOTDIR (`O_PATH | O_NOFOLLOW` opens the
/// link itself, which `O_DIRECTORY` then refuses), reported as ELOOP like openat2.
fn walk_beneath(root: RawFd, rel: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    let components: Vec<&[u8]> = rel
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    let mut cur: Option<OwnedFd> = None;
    for (i, comp) in components.iter().enumerate() {
        if *comp == b".." || *comp == b"." {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        let name = cstring(comp)?;
        let at = cur.as_ref().map_or(root, |f| f.as_raw_fd());
        let last = i + 1 == components.len();
        let how = if last {
            flags | libc::O_NOFOLLOW
        } else {
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW
        };
        match sys_openat(at, &name, how, 0) {
            Ok(fd) => cur = Some(fd),
            Err(e)
                if e.raw_os_error() == Some(libc::ENOTDIR)
                    || e.raw_os_error() == Some(libc::ELOOP) =>
            {
                let link = sys_fstatat(at, &name, libc::AT_SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| is_symlink(&st));
                return Err(if link {
                    io::Error::from_raw_os_error(libc::ELOOP)
                } else {
                    e
                });
            }
            Err(e) => return Err(e),
        }
    }
    cur.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// A directory fd: the root's (borrowed) or one opened beneath it.
enum DirFd<'a> {
    Borrowed(BorrowedFd<'a>),
    Opened(OwnedFd),
}

impl DirFd<'_> {
    fn raw(&self) -> RawFd {
        match self {
            DirFd::Borrowed(fd) => fd.as_raw_fd(),
            DirFd::Opened(fd) => fd.as_raw_fd(),
        }
    }

    fn borrow(&self) -> DirFd<'_> {
        match self {
            DirFd::Borrowed(fd) => DirFd::Borrowed(*fd),
            DirFd::Opened(fd) => DirFd::Borrowed(fd.as_fd()),
        }
    }
}

/// One backend object, addressed without following symlinks: its parent
/// directory (opened beneath the root) and its final name; no name for the
/// root itself. Every operation goes through one of these.
struct Loc<'a> {
    dir: DirFd<'a>,
    name: Option<CString>,
}

impl Loc<'_> {
    fn dir(&self) -> RawFd {
        self.dir.raw()
    }

    /// The final name, `.` for the root (operations that make no sense on the
    /// root get the kernel's error for `.`).
    fn name(&self) -> &CStr {
        self.name.as_deref().unwrap_or(c".")
    }

    /// lstat: a symlink is reported as itself.
    fn lstat(&self) -> io::Result<libc::stat> {
        match &self.name {
            Some(name) => sys_fstatat(self.dir(), name, libc::AT_SYMLINK_NOFOLLOW),
            None => sys_fstat(self.dir()),
        }
    }

    fn meta(&self) -> io::Result<Metadata> {
        self.lstat().map(|st| metadata_of(&st))
    }

    /// Open the object itself; `O_NOFOLLOW` is always added, so a symlink
    /// is never opened through.
    fn open(&self, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
        sys_openat(self.dir(), self.name(), flags | libc::O_NOFOLLOW, mode)
    }

    /// lchown.
    fn chown(&self, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
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
    fn chmod(&self, mode: u32) -> io::Result<()> {
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
    fn set_times(&self, changes: &AttrChanges) -> io::Result<()> {
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

impl Shared {
    fn root_fd(&self) -> io::Result<BorrowedFd<'_>> {
        match &self.root_fd {
            Ok(fd) => Ok(fd.as_fd()),
            Err(errno) => Err(io::Error::from_raw_os_error(*errno)),
        }
    }

    /// The backing path of `path`, for log lines only (never opened).
    fn shown(&self, path: &[u8]) -> PathBuf {
        self.root.join(OsStr::from_bytes(path))
    }

    /// Open the directory `rel` beneath the root (see [`open_beneath`]); the
    /// root itself is borrowed, without a system call.
    fn dir_beneath(&self, rel: &BackendPath) -> io::Result<DirFd<'_>> {
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
    fn not_followed(&self, e: io::Error, rel: &[u8]) -> io::Error {
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
    fn locate(&self, path: &BackendPath) -> io::Result<Loc<'_>> {
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
    fn assign_owner(&self, loc: &Loc<'_>, id: Identity) -> io::Result<()> {
        if self.mode != IdentityMode::Caller || !self.is_root {
            return Ok(());
        }
        let gid = match sys_fstat(loc.dir()) {
            Ok(parent) if parent.st_mode & libc::S_ISGID != 0 => parent.st_gid,
            _ => id.gid,
        };
        loc.chown(Some(id.uid), Some(gid))
    }

    fn next_temp_name(&self, final_name: &str) -> String {
        let seq = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        temp_name_for(final_name, &self.owner_tag, seq)
    }

    /// A temp object is stale when its writer process on this host is gone,
    /// or when it is older than a day (writer on another host, or unknown).
    fn is_stale_temp(&self, name: &str, modified: SystemTime) -> bool {
        let age = SystemTime::now()
            .duration_since(modified)
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

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            hard_links: true,
            symlinks: true,
            special_files: true,
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

/// fchmod with the exact mode (the daemon's umask does not apply).
fn fchmod(file: &File, mode: u32) -> io::Result<()> {
    // SAFETY: a valid open descriptor.
    cvt(unsafe { libc::fchmod(file.as_raw_fd(), (mode & 0o7777) as libc::mode_t) })
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

struct LocalPendingWrite {
    file: Arc<File>,
    temp_name: String,
    size: AtomicU64,
    /// Published or aborted: the temp file no longer belongs to us.
    finished: AtomicBool,
    shared: Arc<Shared>,
    id: Identity,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn backend(dir: &Path) -> LocalBackend {
        LocalBackend::new(dir.to_path_buf(), IdentityMode::Caller)
    }

    fn me() -> Identity {
        Identity::new(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
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

    /// Outside the root: a neighbour directory with files that must stay untouched.
    fn swapped_dir() -> (tempfile::TempDir, PathBuf, LocalBackend) {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("vol");
        let outside = top.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), b"secret").unwrap();
        fs::write(outside.join("victim"), b"victim").unwrap();
        fs::create_dir(outside.join("sub")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("d")).unwrap();
        fs::create_dir(root.join("real")).unwrap();
        std::os::unix::fs::symlink("../d", root.join("real/up")).unwrap();
        let b = backend(&root);
        (top, outside, b)
    }

    fn outside_snapshot(outside: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = fs::read_dir(outside)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let data = fs::read(e.path()).unwrap_or_default();
                (e.file_name().to_string_lossy().into_owned(), data)
            })
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn symlinks_in_intermediate_components_are_never_followed() {
        let (_top, outside, b) = swapped_dir();
        let before = outside_snapshot(&outside);
        for dir in ["d", "real/up", "d/sub"] {
            let at = |n: &str| p(&format!("{dir}/{n}"));
            let not_dir = |r: Result<(), BackendError>, what: &str| {
                let e = r.expect_err(what);
                assert_eq!(e.kind, ErrorKind::NotADirectory, "{what} via {dir}: {e}");
                assert!(e.to_string().contains("symbolic link"), "{e}");
            };
            not_dir(b.stat(me(), &at("secret")).await.map(drop), "stat");
            not_dir(b.list(me(), &at("sub")).await.map(drop), "list");
            not_dir(b.open_read(me(), &at("secret")).await.map(drop), "open");
            not_dir(
                b.begin_write(me(), &at("created"), WriteStart::Empty, 0o644)
                    .await
                    .map(drop),
                "create",
            );
            not_dir(
                b.begin_write(me(), &at("victim"), WriteStart::CopyExisting, 0o644)
                    .await
                    .map(drop),
                "copy-on-write",
            );
            not_dir(b.mkdir(me(), &at("new"), 0o755).await.map(drop), "mkdir");
            not_dir(b.unlink(me(), &at("victim")).await, "unlink");
            not_dir(b.rmdir(me(), &at("sub")).await, "rmdir");
            not_dir(
                b.rename(me(), &at("victim"), &p("stolen"), false).await,
                "rename from",
            );
            not_dir(
                b.rename(me(), &p("real"), &at("moved"), false).await,
                "rename to",
            );
            not_dir(b.symlink(me(), &at("l"), "x").await.map(drop), "symlink");
            not_dir(b.readlink(me(), &at("l")).await.map(drop), "readlink");
            not_dir(
                b.link(me(), &at("victim"), &p("hard")).await.map(drop),
                "link from",
            );
            not_dir(
                b.mknod(me(), &at("fifo"), SpecialFile::Fifo, 0o644)
                    .await
                    .map(drop),
                "mknod",
            );
            let chmod = AttrChanges {
                mode: Some(0o777),
                ..AttrChanges::default()
            };
            not_dir(
                b.set_attr(me(), &at("secret"), &chmod).await.map(drop),
                "chmod",
            );
        }
        assert_eq!(outside_snapshot(&outside), before);
        assert!(!outside.join("sub/new").exists());
    }

    #[tokio::test]
    async fn a_symlink_as_the_final_component_is_an_object_of_its_own() {
        let (top, outside, b) = swapped_dir();
        let root = top.path().join("vol");
        let before = outside_snapshot(&outside);
        let mode_before = fs::metadata(&outside).unwrap().mode();
        let meta = b.stat(me(), &p("d")).await.unwrap();
        assert_eq!(meta.kind, FileKind::Symlink);
        assert_eq!(
            b.readlink(me(), &p("d")).await.unwrap(),
            outside.display().to_string()
        );
        // not listed, opened, written or chmod-ed through
        assert!(b.list(me(), &p("d")).await.is_err());
        assert!(b.open_read(me(), &p("d")).await.is_err());
        let chmod = AttrChanges {
            mode: Some(0o777),
            ..AttrChanges::default()
        };
        b.set_attr(me(), &p("d"), &chmod).await.unwrap();
        assert_eq!(fs::metadata(&outside).unwrap().mode(), mode_before);
        // never written through (as before: O_NOFOLLOW refuses it, ELOOP)
        assert!(b
            .begin_write(me(), &p("real/up"), WriteStart::CopyExisting, 0o600)
            .await
            .is_err());
        assert!(b.list(me(), &p("real/up")).await.is_err());
        // renamed and removed as itself
        b.rename(me(), &p("d"), &p("real/d"), true).await.unwrap();
        assert!(fs::symlink_metadata(root.join("real/d"))
            .unwrap()
            .file_type()
            .is_symlink());
        b.link(me(), &p("real/d"), &p("hard")).await.unwrap();
        assert!(fs::symlink_metadata(root.join("hard"))
            .unwrap()
            .file_type()
            .is_symlink());
        b.unlink(me(), &p("real/d")).await.unwrap();
        b.unlink(me(), &p("hard")).await.unwrap();
        assert_eq!(outside_snapshot(&outside), before);
    }

    #[tokio::test]
    async fn the_root_itself_can_be_stat_listed_and_changed() {
        let dir = tempfile::tempdir().unwrap();
        let b = backend(dir.path());
        fs::write(dir.path().join("f"), b"x").unwrap();
        assert_eq!(
            b.stat(me(), &BackendPath::root()).await.unwrap().kind,
            FileKind::Directory
        );
        let names: Vec<String> = b
            .list(me(), &BackendPath::root())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["f"]);
        let changes = AttrChanges {
            mode: Some(0o750),
            mtime: Some(UNIX_EPOCH + Duration::from_secs(1_000_000)),
            ..AttrChanges::default()
        };
        let meta = b
            .set_attr(me(), &BackendPath::root(), &changes)
            .await
            .unwrap();
        assert_eq!(meta.mode, 0o750);
        assert_eq!(meta.mtime, UNIX_EPOCH + Duration::from_secs(1_000_000));
        assert!(b.statfs(me()).await.unwrap().blocks > 0);
    }

    #[test]
    fn the_walk_without_openat2_refuses_symlinks_too() {
        let (top, _outside, _b) = swapped_dir();
        let root = open_root(&top.path().join("vol")).unwrap();
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        let fd = root.as_raw_fd();
        assert!(walk_beneath(fd, b"real", flags).is_ok());
        for rel in [&b"d"[..], b"d/sub", b"real/up", b"real/up/sub"] {
            let e = walk_beneath(fd, rel, flags).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{rel:?}");
            let e = openat2_beneath(fd, rel, flags).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{rel:?}");
        }
        let e = walk_beneath(fd, b"real/../..", flags).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
        let e = walk_beneath(fd, b"missing/x", flags).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    #[tokio::test]
    async fn temp_cleanup_does_not_descend_into_linked_directories() {
        let (top, outside, b) = swapped_dir();
        let dead = temp_name_for(
            "x",
            &format!("{}{:08x}", b.shared.host_tag, u32::MAX - 1),
            1,
        );
        fs::write(outside.join(&dead), b"not ours").unwrap();
        fs::write(top.path().join("vol/real").join(&dead), b"ours").unwrap();
        assert_eq!(b.cleanup_stale_temps().await.unwrap(), 1);
        assert!(outside.join(&dead).exists());
        assert!(!top.path().join("vol/real").join(&dead).exists());
    }
}
