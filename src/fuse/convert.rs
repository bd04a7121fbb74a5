//! Between fuser's types and the core's: callers, errnos, attributes,
//! replies, and the answers to re-sent requests.

use std::ffi::OsStr;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileType, FopenFlags, Generation, INodeNo, Notifier, ReplyAttr, ReplyEmpty,
    ReplyEntry, ReplyXattr, Request, TimeOrNow,
};

use super::resent::{already_applied, Change};
use super::BLOCK_SIZE;
use crate::backend::FileKind;
use crate::fs::{Attr, CachalotFs, Caller, FsError, KernelCache, Opened};

/// The core's view of the kernel caches, through FUSE notifications.
pub struct KernelNotifier(pub Notifier);

impl KernelCache for KernelNotifier {
    fn invalidate_inode(&self, ino: u64) {
        // ENOENT: the kernel does not have the inode cached; nothing to do.
        if let Err(e) = self.0.inval_inode(INodeNo(ino), 0, 0) {
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::debug!(ino, error = %e, "kernel cache invalidation failed");
            }
        }
    }

    fn invalidate_entry(&self, parent: u64, name: &str) {
        if let Err(e) = self.0.inval_entry(INodeNo(parent), OsStr::new(name)) {
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::debug!(parent, name, error = %e, "kernel entry invalidation failed");
            }
        }
    }
}

pub(super) fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

pub(super) fn errno(e: FsError) -> Errno {
    Errno::from_i32(e.errno())
}

/// Names from the kernel are bytes; backends take UTF-8 names.
pub(super) fn utf8(name: &OsStr) -> Result<String, Errno> {
    name.to_str()
        .map(str::to_string)
        .ok_or(Errno::from_i32(libc::EINVAL))
}

pub(super) fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Socket | FileKind::Special => FileType::Socket,
    }
}

pub(super) fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: kernel_dev(a.rdev),
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

/// Node 0: the kernel reads the entry as "no such name" (its other fields
/// are not looked at).
fn no_such_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: fuser::FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

/// A re-sent removal that finds nothing to remove: done by the first
/// attempt (see `resent`).
pub(super) fn removed_before(
    resent: bool,
    change: Change,
    done: Result<(), FsError>,
) -> Result<(), FsError> {
    match done {
        Err(e) if already_applied(resent, change, e.errno()) => Ok(()),
        other => other,
    }
}

/// A re-sent creation that finds its name taken: made by the first
/// attempt; answer with the entry (see `resent`).
pub(super) async fn created_before(
    fs: &CachalotFs,
    c: Caller,
    resent: bool,
    parent: u64,
    name: &str,
    made: Result<Attr, FsError>,
) -> Result<Attr, FsError> {
    match made {
        Err(e) if already_applied(resent, Change::Create, e.errno()) => {
            fs.lookup(c, parent, name).await.or(Err(e))
        }
        other => other,
    }
}

pub(super) fn reply_entry(
    fs: &CachalotFs,
    reply: ReplyEntry,
    ttl: &Duration,
    result: Result<Attr, FsError>,
) {
    match result {
        Ok(a) => reply.entry(ttl, &file_attr(&a), Generation(0)),
        Err(e) => reply.error(errno(fs.count_error(e))),
    }
}

/// The answer to a lookup. A name that does not exist is answered as a
/// negative entry (node 0) valid for the metadata TTL, not as an error:
/// the kernel then answers the next lookups of it itself (a Python import
/// or a shell's PATH search asks for many missing names, each a backend
/// request on S3). A name created through this mount shows at once (the
/// kernel replaces its own negative entry); one created behind the mount,
/// after the TTL, as for every other attribute.
pub(super) fn reply_lookup(
    fs: &CachalotFs,
    reply: ReplyEntry,
    ttl: &Duration,
    result: Result<Attr, FsError>,
) {
    match result {
        Err(e) if e.errno() == libc::ENOENT && !ttl.is_zero() => {
            fs.count_error(e);
            reply.entry(ttl, &no_such_entry(), Generation(0));
        }
        other => reply_entry(fs, reply, ttl, other),
    }
}

pub(super) fn reply_attr(
    fs: &CachalotFs,
    reply: ReplyAttr,
    ttl: &Duration,
    result: Result<Attr, FsError>,
) {
    match result {
        Ok(a) => reply.attr(ttl, &file_attr(&a)),
        Err(e) => reply.error(errno(fs.count_error(e))),
    }
}

pub(super) fn reply_empty(fs: &CachalotFs, reply: ReplyEmpty, result: Result<(), FsError>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(fs.count_error(e))),
    }
}

pub(super) fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

pub(super) fn open_flags(opened: &Opened) -> FopenFlags {
    let mut flags = FopenFlags::empty();
    if opened.keep_cache {
        flags |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    if !opened.wants_close {
        flags |= FopenFlags::FOPEN_NOFLUSH;
    }
    flags
}

/// A `dev_t` as the FUSE protocol carries it: the kernel's 32-bit
/// encoding (`new_encode_dev`: 12 bits of major, 20 of minor).
pub(super) fn kernel_dev(rdev: u64) -> u32 {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// The kernel's 32-bit device encoding (`mknod` requests) as a `dev_t`.
pub(super) fn dev_from_kernel(rdev: u32) -> u64 {
    let major = (rdev & 0xfff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

/// An extended attribute's value, or its size when `size` is 0.
pub(super) fn reply_value(reply: ReplyXattr, size: u32, value: &str) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if (size as usize) < value.len() {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(value.as_bytes());
    }
}

#[cfg(test)]
mod dev_tests {
    use super::*;

    #[test]
    fn device_numbers_round_trip_through_the_kernel_encoding() {
        for (major, minor) in [(1, 3), (8, 0), (259, 65_537), (4095, 1_048_575)] {
            let dev = libc::makedev(major, minor);
            assert_eq!(dev_from_kernel(kernel_dev(dev)), dev, "{major}:{minor}");
        }
    }
}
