//! Removing the temp files that crashed writers left behind: a walk of the
//! whole volume at mount, without following symlinks, that removes each
//! temp file whose writer is gone.

use super::*;

/// Remove every stale temp file beneath the root (blocking; see
/// `Backend::cleanup_stale_temps`); how many were removed.
pub(super) fn remove_stale_temps(s: &Shared) -> io::Result<usize> {
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
        let Ok(mut dir) = opened.and_then(|fd| nix::dir::Dir::from(fd).map_err(io::Error::from))
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
                && stat().is_ok_and(|st| is_regular(&st) && s.is_stale_temp(&name, mtime_of(&st)))
                && sys_unlinkat(dir_fd, raw, 0).is_ok()
            {
                tracing::info!(path = %s.shown(&child).display(),
                    "removed temp file left by a crashed writer");
                removed += 1;
            }
        }
    }
    Ok(removed)
}

impl Shared {
    /// A temp object is stale when its writer process on this host is gone,
    /// or when it is older than a day (writer on another host, or unknown).
    fn is_stale_temp(&self, name: &str, modified: SystemTime) -> bool {
        let age = SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default();
        owner::is_stale(temp_owner(name), &self.host_tag, age)
    }
}
