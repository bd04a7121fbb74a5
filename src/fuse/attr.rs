//! Entries and attributes: lookup and forget (the kernel's references to
//! inodes), getattr, setattr, readlink, statfs.

use fuser::{INodeNo, ReplyAttr, ReplyData, ReplyEntry, ReplyStatfs, Request};

use super::convert::{caller, errno, reply_attr, reply_entry, reply_lookup};
use super::FuseAdapter;
use crate::backend::AttrChanges;

pub(super) fn lookup(
    adapter: &FuseAdapter,
    req: &Request,
    parent: INodeNo,
    name: String,
    reply: ReplyEntry,
) {
    let (c, ttl) = (caller(req), adapter.ttl);
    if let Some((attr, _pass)) = adapter.answer_now(|fs| fs.lookup_known(parent.0, &name)) {
        return reply_entry(&adapter.fs, reply, &ttl, Ok(attr));
    }
    adapter.spawn(move |fs| async move {
        reply_lookup(&fs, reply, &ttl, fs.lookup(c, parent.0, &name).await)
    });
}

pub(super) fn getattr(adapter: &FuseAdapter, req: &Request, ino: INodeNo, reply: ReplyAttr) {
    let (c, ttl) = (caller(req), adapter.ttl);
    if let Some((known, _pass)) = adapter.answer_now(|fs| fs.getattr_known(ino.0)) {
        return reply_attr(&adapter.fs, reply, &ttl, known);
    }
    adapter
        .spawn(move |fs| async move { reply_attr(&fs, reply, &ttl, fs.getattr(c, ino.0).await) });
}

pub(super) fn setattr(
    adapter: &FuseAdapter,
    req: &Request,
    ino: INodeNo,
    size: Option<u64>,
    changes: AttrChanges,
    reply: ReplyAttr,
) {
    let (c, ttl) = (caller(req), adapter.ttl);
    adapter.spawn(move |fs| async move {
        reply_attr(&fs, reply, &ttl, fs.setattr(c, ino.0, size, changes).await)
    });
}

pub(super) fn readlink(adapter: &FuseAdapter, req: &Request, ino: INodeNo, reply: ReplyData) {
    let c = caller(req);
    adapter.spawn(move |fs| async move {
        match fs.readlink(c, ino.0).await {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(errno(fs.count_error(e))),
        }
    });
}

pub(super) fn forget(adapter: &FuseAdapter, ino: INodeNo, nlookup: u64) {
    // Held at a takeover: the successor keeps the reference a little
    // longer (FORGET has no reply to re-send).
    if let Some(_pass) = adapter.gate.enter() {
        if adapter.fs.forget(ino.0, nlookup) {
            adapter.spawn(move |fs| async move { fs.remove_forgotten(ino.0).await });
        }
    }
}

pub(super) fn statfs(adapter: &FuseAdapter, req: &Request, reply: ReplyStatfs) {
    let c = caller(req);
    adapter.spawn(move |fs| async move {
        match fs.statfs(c).await {
            Ok(s) => reply.statfs(
                s.blocks,
                s.blocks_free,
                s.blocks_available,
                s.files,
                s.files_free,
                s.block_size,
                s.name_max,
                s.block_size,
            ),
            Err(e) => reply.error(errno(fs.count_error(e))),
        }
    });
}
