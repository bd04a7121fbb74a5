//! Directories: opendir, readdir, readdirplus (each entry a kernel
//! reference), releasedir, fsyncdir. Listings are answered on the FUSE
//! thread, from the snapshot the handle took at opendir; a handle opened
//! for the kernel to read its own cache is listed at its first readdir.

use fuser::{
    Errno, FileHandle, FopenFlags, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyOpen, Request,
};

use std::time::Duration;

use super::convert::{caller, errno, file_attr, file_type};
use super::{FuseAdapter, Gate};
use crate::fs::{CachalotFs, DirHandle};

pub(super) fn opendir(adapter: &FuseAdapter, req: &Request, ino: INodeNo, reply: ReplyOpen) {
    let c = caller(req);
    adapter.spawn(move |fs| async move {
        match fs.opendir(c, ino.0).await {
            // The kernel caches the entries it reads (in the directory's
            // page cache) and keeps them while they are still ours to give.
            Ok(dir) => {
                let mut flags = FopenFlags::FOPEN_CACHE_DIR;
                if dir.kernel_cache_valid {
                    flags |= FopenFlags::FOPEN_KEEP_CACHE;
                }
                reply.opened(FileHandle(dir.fh), flags)
            }
            Err(e) => reply.error(errno(fs.count_error(e))),
        }
    });
}

pub(super) fn readdir(
    adapter: &FuseAdapter,
    req: &Request,
    fh: FileHandle,
    offset: u64,
    reply: ReplyDirectory,
) {
    let answer = move |_: &CachalotFs, h: &DirHandle, r| fill_dir(h, offset, r);
    answer_listing(adapter, req, fh, reply, answer, ReplyDirectory::error);
}

/// Answer a readdir(plus) from its handle's listing, taken first (on the
/// runtime: it may ask the backend) if opendir left the entries to the
/// kernel's cache and the kernel asks after all.
fn answer_listing<R: Send + 'static>(
    adapter: &FuseAdapter,
    req: &Request,
    fh: FileHandle,
    reply: R,
    answer: impl FnOnce(&CachalotFs, &DirHandle, R) + Send + 'static,
    fail: fn(R, Errno),
) {
    let handle = {
        let Some(_pass) = adapter.gate.enter() else {
            return Gate::hold(reply);
        };
        match adapter.fs.readdir(fh.0) {
            Ok(h) if h.entries().is_some() => return answer(&adapter.fs, &h, reply),
            Ok(h) => h,
            Err(e) => return fail(reply, errno(adapter.fs.count_error(e))),
        }
    };
    let c = caller(req);
    adapter.spawn(move |fs| async move {
        match fs.list_handle(c, &handle).await {
            Ok(()) => answer(&fs, &handle, reply),
            Err(e) => fail(reply, errno(fs.count_error(e))),
        }
    });
}

fn fill_dir(listing: &DirHandle, offset: u64, mut reply: ReplyDirectory) {
    for (next, e) in listing.from(offset) {
        if reply.add(INodeNo(e.attr.ino), next, file_type(e.attr.kind), &e.name) {
            break;
        }
    }
    reply.ok();
}

pub(super) fn readdirplus(
    adapter: &FuseAdapter,
    req: &Request,
    ino: INodeNo,
    fh: FileHandle,
    offset: u64,
    reply: ReplyDirectoryPlus,
) {
    let ttl = adapter.ttl;
    let answer = move |fs: &CachalotFs, h: &DirHandle, r| fill_dir_plus(fs, ttl, ino, h, offset, r);
    answer_listing(adapter, req, fh, reply, answer, ReplyDirectoryPlus::error);
}

fn fill_dir_plus(
    fs: &CachalotFs,
    ttl: Duration,
    ino: INodeNo,
    listing: &DirHandle,
    offset: u64,
    mut reply: ReplyDirectoryPlus,
) {
    for (next, e) in listing.from(offset) {
        // Each entry is a kernel reference (except . and ..).
        let Some(now) = fs.remember_listed(ino.0, e) else {
            continue;
        };
        let entry_ino = now.ino;
        let attr = file_attr(&now);
        if reply.add(
            INodeNo(entry_ino),
            next,
            &e.name,
            &ttl,
            &attr,
            Generation(0),
        ) {
            if e.name != "." && e.name != ".." {
                fs.unremember(entry_ino);
            }
            break;
        }
    }
    reply.ok();
}

pub(super) fn releasedir(adapter: &FuseAdapter, fh: FileHandle, reply: ReplyEmpty) {
    let Some(_pass) = adapter.gate.enter() else {
        return Gate::hold(reply);
    };
    adapter.fs.releasedir(fh.0);
    reply.ok();
}

pub(super) fn fsyncdir(reply: ReplyEmpty) {
    // Directory operations are synchronous on the backend already.
    reply.ok();
}
