//! What a `struct stat` says, as the backend reports it: `Metadata` (kind,
//! mode, owner, times, a version token, an object id), and the times given
//! to utimensat.

use super::*;

pub(super) fn to_time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs.clamp(0, 999_999_999) as u32)
    } else {
        UNIX_EPOCH
    }
}

// Field types of `struct stat` differ between architectures.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
pub(super) fn metadata_of(st: &libc::stat) -> Metadata {
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
pub(super) fn object_id(dev: u64, ino: u64) -> u64 {
    ino ^ dev.rotate_left(40)
}

#[allow(clippy::unnecessary_cast)]
pub(super) fn mtime_of(st: &libc::stat) -> SystemTime {
    to_time(st.st_mtime as i64, st.st_mtime_nsec as i64)
}

/// A time for utimensat: omitted, now (UTIME_NOW: write permission is
/// enough), or the given one.
pub(super) fn timespec(t: Option<SystemTime>, now: bool) -> libc::timespec {
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

/// `st_ino` as u64 (its type differs between architectures).
#[allow(clippy::unnecessary_cast)]
pub(super) fn inode_number(st: &libc::stat) -> u64 {
    st.st_ino as u64
}
