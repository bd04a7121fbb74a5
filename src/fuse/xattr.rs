//! Extended attributes: the cachalot attributes (cached bytes of a file;
//! on the root, the counters and the volume's capacity); no others.
//!
//! Names outside the `user.` namespace (security labels, POSIX ACLs,
//! file capabilities) are answered EOPNOTSUPP, not ENODATA: no backend
//! stores them, and "unsupported" is what lets tools stop asking. `ls -l`
//! remembers it per device, so listing 10 000 files costs two GETXATTR
//! round trips instead of 20 000.

use std::ffi::OsStr;

use fuser::{Errno, INodeNo, ReplyEmpty, ReplyXattr, Request};

use super::convert::{caller, errno, reply_value};
use super::FuseAdapter;
use crate::fs::{CACHED_XATTR, CAPACITY_XATTR, STATS_XATTR};

/// The only namespace holding attributes here (ours).
const USER_NAMESPACE: &[u8] = b"user.";

pub(super) fn getxattr(
    adapter: &FuseAdapter,
    req: &Request,
    ino: INodeNo,
    name: &OsStr,
    size: u32,
    reply: ReplyXattr,
) {
    if name == CACHED_XATTR {
        let c = caller(req);
        adapter.spawn(move |fs| async move {
            match fs.cached_bytes(c, ino.0).await {
                Ok((cached, total)) => reply_value(reply, size, &format!("{cached} {total}")),
                Err(e) => reply.error(errno(fs.count_error(e))),
            }
        });
        return;
    }
    if !name.as_encoded_bytes().starts_with(USER_NAMESPACE) {
        reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        return;
    }
    if ino != INodeNo::ROOT || name != STATS_XATTR {
        reply.error(Errno::from_i32(libc::ENODATA));
        return;
    }
    reply_value(reply, size, &adapter.fs.stats_json());
}

pub(super) fn listxattr(size: u32, reply: ReplyXattr) {
    // No user-visible xattrs (the stats attribute is fetched by name).
    if size == 0 {
        reply.size(0);
    } else {
        reply.data(&[]);
    }
}

pub(super) fn setxattr(
    adapter: &FuseAdapter,
    req: &Request,
    ino: INodeNo,
    name: &OsStr,
    value: &[u8],
    reply: ReplyEmpty,
) {
    if ino != INodeNo::ROOT || name != CAPACITY_XATTR {
        reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        return;
    }
    let Some(bytes) = std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    else {
        reply.error(Errno::from_i32(libc::EINVAL));
        return;
    };
    let c = caller(req);
    adapter.spawn(move |fs| async move {
        match fs.set_capacity(c, bytes).await {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(fs.count_error(e))),
        }
    });
}

pub(super) fn removexattr(reply: ReplyEmpty) {
    reply.error(Errno::from_i32(libc::EOPNOTSUPP));
}
