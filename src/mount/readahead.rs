//! The kernel's read-ahead for a FUSE mount. INIT's `max_readahead` can
//! only lower the read-ahead of the mount's backing device info, which
//! starts at the kernel default of 128 KiB: so a sequential reader's pages
//! came in 128 KiB READs, eight round trips (and eight context switches
//! each way) per MiB. Raising `/sys/class/bdi/<dev>/read_ahead_kb` to what
//! INIT asked for makes them one 1 MiB READ: on a cold 1 GiB NFS read or a
//! page-store warm local one, the daemon spent about a tenth less CPU.

use std::path::Path;

use super::table::{mount_table, normalize};
use crate::fuse::MAX_IO;

/// Raise the read-ahead of the FUSE mount at `mountpoint` to [`MAX_IO`].
/// A hint: without a writable /sys (an unprivileged container) reads still
/// work, in smaller requests, and only a debug line says so.
pub fn raise_kernel_readahead(mountpoint: &Path) {
    // The mount table names it by its real path. Only the parent is
    // resolved: a stat of the mountpoint itself would wait for our own
    // session, which does not serve yet.
    let real_parent = mountpoint
        .parent()
        .and_then(|p| std::fs::canonicalize(p).ok());
    let want = match (real_parent, mountpoint.file_name()) {
        (Some(parent), Some(name)) => parent.join(name),
        _ => normalize(mountpoint),
    };
    let dev = match mount_table() {
        // The newest mount on the path is ours.
        Ok(table) => table
            .into_iter()
            .rfind(|m| m.mount_point == want && m.fs_type.starts_with("fuse"))
            .map(|m| m.dev),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the mount table to set the kernel read-ahead");
            return;
        }
    };
    let Some(dev) = dev else {
        tracing::debug!(mountpoint = %mountpoint.display(), "mount not in the mount table; kernel read-ahead left as is");
        return;
    };
    let knob = Path::new("/sys/class/bdi").join(&dev).join("read_ahead_kb");
    match std::fs::write(&knob, format!("{}", MAX_IO / 1024)) {
        Ok(()) => {
            tracing::debug!(knob = %knob.display(), kib = MAX_IO / 1024, "kernel read-ahead raised")
        }
        Err(e) => tracing::debug!(knob = %knob.display(), error = %e,
            "cannot raise the kernel read-ahead; sequential reads go in 128 KiB requests"),
    }
}
