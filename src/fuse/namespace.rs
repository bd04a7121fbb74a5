//! Namespace changes: mknod, mkdir, unlink, rmdir, symlink, rename, link,
//! and create (which also opens the file it makes); each answered as done
//! when a re-sent request finds its first attempt already applied (see
//! `resent`).

use fuser::{
    Errno, FileHandle, Generation, INodeNo, RenameFlags, ReplyCreate, ReplyEmpty, ReplyEntry,
    Request,
};

use super::convert::{
    self, caller, created_before, errno, file_attr, open_flags, removed_before, reply_empty,
    reply_entry,
};
use super::resent::{already_applied, is_resent, Change};
use super::FuseAdapter;
use crate::fs::OpenMode;

#[allow(clippy::too_many_arguments)]
pub(super) fn mknod(
    adapter: &FuseAdapter,
    req: &Request,
    parent: INodeNo,
    name: String,
    mode: u32,
    umask: u32,
    rdev: u32,
    reply: ReplyEntry,
) {
    let (c, ttl, resent) = (caller(req), adapter.ttl, is_resent(req));
    adapter.spawn(move |fs| async move {
        let mode = (mode & libc::S_IFMT) | (mode & 0o7777 & !umask);
        let rdev = convert::dev_from_kernel(rdev);
        let made = fs.mknod(c, parent.0, &name, mode, rdev).await;
        let made = created_before(&fs, c, resent, parent.0, &name, made).await;
        reply_entry(&fs, reply, &ttl, made)
    });
}

pub(super) fn mkdir(
    adapter: &FuseAdapter,
    req: &Request,
    parent: INodeNo,
    name: String,
    mode: u32,
    umask: u32,
    reply: ReplyEntry,
) {
    let (c, ttl, resent) = (caller(req), adapter.ttl, is_resent(req));
    adapter.spawn(move |fs| async move {
        let made = fs.mkdir(c, parent.0, &name, mode & 0o7777 & !umask).await;
        let made = created_before(&fs, c, resent, parent.0, &name, made).await;
        reply_entry(&fs, reply, &ttl, made)
    });
}

/// `unlink` or, for a directory, `rmdir`.
pub(super) fn remove(
    adapter: &FuseAdapter,
    req: &Request,
    parent: INodeNo,
    name: String,
    directory: bool,
    reply: ReplyEmpty,
) {
    let (c, resent) = (caller(req), is_resent(req));
    adapter.spawn(move |fs| async move {
        let done = match directory {
            true => fs.rmdir(c, parent.0, &name).await,
            false => fs.unlink(c, parent.0, &name).await,
        };
        reply_empty(&fs, reply, removed_before(resent, Change::Remove, done))
    });
}

pub(super) fn symlink(
    adapter: &FuseAdapter,
    req: &Request,
    parent: INodeNo,
    name: String,
    target: String,
    reply: ReplyEntry,
) {
    let (c, ttl, resent) = (caller(req), adapter.ttl, is_resent(req));
    adapter.spawn(move |fs| async move {
        let made = fs.symlink(c, parent.0, &name, &target).await;
        let made = created_before(&fs, c, resent, parent.0, &name, made).await;
        reply_entry(&fs, reply, &ttl, made)
    });
}

#[allow(clippy::too_many_arguments)]
pub(super) fn rename(
    adapter: &FuseAdapter,
    req: &Request,
    parent: INodeNo,
    name: String,
    newparent: INodeNo,
    newname: String,
    flags: RenameFlags,
    reply: ReplyEmpty,
) {
    if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
        reply.error(Errno::from_i32(libc::EINVAL));
        return;
    }
    let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
    let (c, resent) = (caller(req), is_resent(req));
    adapter.spawn(move |fs| async move {
        let mut done = fs
            .rename(c, parent.0, &name, newparent.0, &newname, no_replace)
            .await;
        // Re-sent after the first attempt moved it: the source is gone
        // and the target is there.
        if let Err(e) = &done {
            if already_applied(resent, Change::Rename, e.errno())
                && fs.lookup(c, newparent.0, &newname).await.is_ok()
            {
                done = Ok(());
            }
        }
        reply_empty(&fs, reply, done)
    });
}

pub(super) fn link(
    adapter: &FuseAdapter,
    req: &Request,
    ino: INodeNo,
    newparent: INodeNo,
    name: String,
    reply: ReplyEntry,
) {
    let (c, ttl, resent) = (caller(req), adapter.ttl, is_resent(req));
    adapter.spawn(move |fs| async move {
        let made = fs.link(c, ino.0, newparent.0, &name).await;
        let made = created_before(&fs, c, resent, newparent.0, &name, made).await;
        reply_entry(&fs, reply, &ttl, made)
    });
}

#[allow(clippy::too_many_arguments)]
pub(super) fn create(
    adapter: &FuseAdapter,
    req: &Request,
    parent: INodeNo,
    name: String,
    mode: u32,
    umask: u32,
    flags: i32,
    reply: ReplyCreate,
) {
    let exclusive = flags & libc::O_EXCL != 0;
    let open_mode = OpenMode {
        writable: flags & libc::O_ACCMODE != libc::O_RDONLY,
        truncate: flags & libc::O_TRUNC != 0,
        append: flags & libc::O_APPEND != 0,
    };
    let (c, ttl, resent) = (caller(req), adapter.ttl, is_resent(req));
    adapter.spawn(move |fs| async move {
        let mode = mode & 0o7777 & !umask;
        let mut made = fs
            .create(c, parent.0, &name, mode, exclusive, open_mode)
            .await;
        // Re-sent O_EXCL create that the first attempt made: open it.
        if matches!(&made, Err(e) if already_applied(resent, Change::Create, e.errno())) {
            made = fs.create(c, parent.0, &name, mode, false, open_mode).await;
        }
        match made {
            Ok((a, o)) => reply.created(
                &ttl,
                &file_attr(&a),
                Generation(0),
                FileHandle(o.fh),
                open_flags(&o),
            ),
            Err(e) => reply.error(errno(fs.count_error(e))),
        }
    });
}
