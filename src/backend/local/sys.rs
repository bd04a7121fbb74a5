//! Thin wrappers over the `*at` system calls, and opening paths beneath the
//! volume root without ever following a symlink (openat2 RESOLVE_BENEATH,
//! or a component-by-component O_NOFOLLOW walk where it is refused).

use super::*;

pub(super) fn cvt(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub(super) fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `openat` with `O_CLOEXEC`, retried on EINTR.
pub(super) fn sys_openat(
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

pub(super) fn sys_fstatat(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid string and a buffer of the right type; filled on success.
    cvt(unsafe { libc::fstatat(dir, name.as_ptr(), st.as_mut_ptr(), flags) })?;
    // SAFETY: fstatat succeeded, so the buffer is initialised.
    Ok(unsafe { st.assume_init() })
}

/// fstat that also works on `O_PATH` descriptors.
pub(super) fn sys_fstat(fd: RawFd) -> io::Result<libc::stat> {
    sys_fstatat(fd, c"", libc::AT_EMPTY_PATH)
}

pub(super) fn sys_renameat2(
    from_dir: RawFd,
    from: &CStr,
    to_dir: RawFd,
    to: &CStr,
    flags: libc::c_uint,
) -> io::Result<()> {
    // SAFETY: valid NUL-terminated strings that outlive the call.
    cvt(unsafe { libc::renameat2(from_dir, from.as_ptr(), to_dir, to.as_ptr(), flags) })
}

pub(super) fn sys_unlinkat(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: valid NUL-terminated string.
    cvt(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) })
}

pub(super) fn sys_readlinkat(dir: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
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
pub(super) fn proc_fd_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a number")
}

pub(super) fn is_symlink(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

pub(super) fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub(super) fn is_regular(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

// ---------------------------------------------------------------------------
// Resolution beneath the root, without following symlinks.
// ---------------------------------------------------------------------------

/// Cleared once the kernel said it has no openat2 (ENOSYS, or a seccomp
/// filter that refuses it): from then on the `O_NOFOLLOW` walk is used.
pub(super) static OPENAT2_AVAILABLE: AtomicBool = AtomicBool::new(true);

/// Open the directory `rel` (`a/b`, not empty) beneath `root`, refusing to
/// follow a symlink in any of its components. `flags` are the open flags of
/// the final component (`O_PATH | O_DIRECTORY`, or `O_RDONLY | O_DIRECTORY` to
/// read it).
pub(super) fn open_beneath(root: RawFd, rel: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
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

pub(super) fn openat2_beneath(root: RawFd, rel: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
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
pub(super) fn walk_beneath(root: RawFd, rel: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
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
