//! Requests the kernel sends a second time (FUSE_NOTIFY_RESEND after the
//! mounter crashed): the process that died may have applied a namespace
//! change without answering. Applied again, it would fail as if the
//! application had raced itself (ENOENT for an unlink that happened,
//! EEXIST for a mkdir that happened). For a re-sent request that is the
//! answer to the first attempt, so it counts as a success — the same call
//! a network filesystem client makes for a retransmitted request.

use fuser::Request;

/// Set by the kernel in the unique id of a re-sent request.
const FUSE_UNIQUE_RESEND: u64 = 1 << 63;

pub fn is_resent(req: &Request) -> bool {
    req.unique().0 & FUSE_UNIQUE_RESEND != 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// unlink, rmdir
    Remove,
    /// mkdir, symlink, mknod, link
    Create,
    /// rename (the source is gone)
    Rename,
}

/// Whether a re-sent `change` failing with `errno` was applied by the
/// first attempt.
pub fn already_applied(resent: bool, change: Change, errno: i32) -> bool {
    resent
        && match change {
            Change::Remove | Change::Rename => errno == libc::ENOENT,
            Change::Create => errno == libc::EEXIST,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_resent_requests_with_the_matching_error_count_as_applied() {
        assert!(already_applied(true, Change::Remove, libc::ENOENT));
        assert!(already_applied(true, Change::Create, libc::EEXIST));
        assert!(already_applied(true, Change::Rename, libc::ENOENT));
        assert!(!already_applied(false, Change::Remove, libc::ENOENT));
        assert!(!already_applied(true, Change::Create, libc::ENOENT));
        assert!(!already_applied(true, Change::Remove, libc::EACCES));
    }
}
