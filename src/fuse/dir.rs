//! Directories: opendir, readdir, readdirplus (each entry a kernel
//! reference), releasedir, fsyncdir. Listings are answered on the FUSE
//! thread, from the snapshot the handle took at opendir; a handle opened
//! for the kernel to read its own cache is listed at its first readdir.

use fuser::{
    FileHandle, FopenFlags, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyOpen, Request,
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
    let handle = {
        let Some(_pass) = adapter.gate.enter() else {
            return Gate::hold(reply);
        };
        match adapter.fs.readdir(fh.0) {
            Ok(h) if h.entries().is_some() => return fill_dir(&h, offset, reply),
            Ok(h) => h,
            Err(e) => return reply.error(errno(adapter.fs.count_error(e))),
        }
    };
    let c = caller(req);
    adapter.spawn(move |fs| async move {
        match fs.list_handle(c, &handle).await {
            Ok(()) => fill_dir(&handle, offset, reply),
            Err(e) => reply.error(errno(fs.count_error(e))),
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
    let handle = {
        let Some(_pass) = adapter.gate.enter() else {
            return Gate::hold(reply);
        };
        match adapter.fs.readdir(fh.0) {
            Ok(h) if h.entries().is_some() => {
                return fill_dir_plus(&adapter.fs, adapter.ttl, ino, &h, offset, reply)
            }
            Ok(h) => h,
            Err(e) => return reply.error(errno(adapter.fs.count_error(e))),
        }
    };
    let (c, ttl) = (caller(req), adapter.ttl);
    adapter.spawn(move |fs| async move {
        match fs.list_handle(c, &handle).await {
            Ok(()) => fill_dir_plus(&fs, ttl, ino, &handle, offset, reply),
            Err(e) => reply.error(errno(fs.count_error(e))),
        }
    });
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
        let Some(entry_ino) = fs.remember_listed(ino.0, e) else {
            continue;
        };
        let mut attr = file_attr(&e.attr);
        attr.ino = INodeNo(entry_ino);
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
