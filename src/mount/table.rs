//! Kernel mount helpers for the node service: mount table lookups, health of
//! a FUSE mount, bind mounts and (lazy) unmounts.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// One line of /proc/self/mountinfo, the parts we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The filesystem's device, `major:minor` (a FUSE mount's backing
    /// device info in /sys/class/bdi is named so).
    pub dev: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(MountEntry {
                dev: fields.get(2)?.to_string(),
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                fs_type: fields.get(sep + 1)?.to_string(),
                source: unescape(fields.get(sep + 2)?),
            })
        })
        .collect()
}

pub fn mount_table() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

pub(crate) fn normalize(path: &Path) -> PathBuf {
    let s = path.to_string_lossy();
    let t = s.trim_end_matches('/');
    PathBuf::from(if t.is_empty() { "/" } else { t })
}

/// Is something mounted exactly at `path`? Compares strings: a dead FUSE
/// mount cannot be canonicalized (ENOTCONN).
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let want = normalize(path);
    Ok(mount_table()?.iter().any(|m| m.mount_point == want))
}

/// Health of a mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    NotMounted,
    Healthy,
    /// Mounted, but the filesystem does not answer (dead FUSE session:
    /// ENOTCONN, or ECONNABORTED when the session asked for
    /// FUSE_ABORT_ERROR), with the error text.
    Dead(String),
}

pub fn health(path: &Path) -> Health {
    match is_mount_point(path) {
        Ok(false) => return Health::NotMounted,
        Ok(true) => {}
        Err(e) => return Health::Dead(format!("reading the mount table: {e}")),
    }
    match nix::sys::statfs::statfs(path) {
        Ok(_) => Health::Healthy,
        Err(e) => Health::Dead(format!("{} ({e})", e.desc())),
    }
}

/// Bind-mount `src` on `dst`, then remount read-only and/or with the given
/// flags (a bind mount ignores flags on the first call).
pub fn bind(src: &Path, dst: &Path, read_only: bool, flags: &[String]) -> io::Result<()> {
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(io::Error::from)?;
    let mut extra = MsFlags::empty();
    for f in flags {
        match f.as_str() {
            "nosuid" => extra |= MsFlags::MS_NOSUID,
            "nodev" => extra |= MsFlags::MS_NODEV,
            "noexec" => extra |= MsFlags::MS_NOEXEC,
            "noatime" => extra |= MsFlags::MS_NOATIME,
            "nodiratime" => extra |= MsFlags::MS_NODIRATIME,
            "relatime" => extra |= MsFlags::MS_RELATIME,
            _ => {}
        }
    }
    if read_only {
        extra |= MsFlags::MS_RDONLY;
    }
    if !extra.is_empty() {
        // The FUSE mount already has nosuid,nodev; a remount must keep the
        // locked flags or the kernel refuses it (EPERM in user namespaces).
        let all =
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | extra;
        if let Err(e) = mount(None::<&str>, dst, None::<&str>, all, None::<&str>) {
            let _ = umount2(dst, MntFlags::MNT_DETACH);
            return Err(io::Error::from(e));
        }
    }
    Ok(())
}

/// Unmount `path` if mounted; lazily (detach) when busy or dead. Returns
/// whether anything was unmounted. Stacked mounts are all removed.
pub fn unmount(path: &Path) -> io::Result<bool> {
    let mut any = false;
    for _ in 0..16 {
        if !is_mount_point(path)? {
            return Ok(any);
        }
        match umount2(path, MntFlags::empty()) {
            Ok(()) => {}
            Err(nix::errno::Errno::EBUSY)
            | Err(nix::errno::Errno::ENOTCONN)
            | Err(nix::errno::Errno::ECONNABORTED) => {
                tracing::info!(path = %path.display(), "mount busy or dead; detaching lazily");
                umount2(path, MntFlags::MNT_DETACH).map_err(io::Error::from)?;
            }
            Err(nix::errno::Errno::EINVAL) => return Ok(any),
            Err(e) => return Err(io::Error::from(e)),
        }
        any = true;
    }
    Err(io::Error::other(format!(
        "{} still mounted after 16 unmounts",
        path.display()
    )))
}

/// Lazy unmount without trying a normal one first (dead sessions).
pub fn detach(path: &Path) -> io::Result<()> {
    while is_mount_point(path)? {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => {}
            Err(nix::errno::Errno::EINVAL) => break,
            Err(e) => return Err(io::Error::from(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - fuse.cachalot cachalot:file:///x rw\n\
                    37 35 98:0 / /var/lib/kubelet/pods/x rw shared:2 - ext4 /dev/sda1 rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(m[0].fs_type, "fuse.cachalot");
        assert_eq!(m[0].source, "cachalot:file:///x");
        assert_eq!(m[0].dev, "98:0");
        assert_eq!(m[1].fs_type, "ext4");
    }
}
