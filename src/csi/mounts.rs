//! The host's mount table as the node service uses it: a trait, so that
//! the service's logic (publish, unpublish, heal) has unit tests with a
//! fake table, in addition to the end-to-end suites on real mounts.

use std::io;
use std::path::Path;

pub use crate::mount::table::*;

/// What the node service does to mounts.
pub trait MountTable: Send + Sync {
    fn health(&self, path: &Path) -> Health;
    fn is_mount_point(&self, path: &Path) -> io::Result<bool>;
    fn bind(&self, src: &Path, dst: &Path, read_only: bool, flags: &[String]) -> io::Result<()>;
    /// Lazily unmount whatever is at `path` (a dead mount).
    fn detach(&self, path: &Path) -> io::Result<()>;
    /// Unmount `path`; false if nothing was mounted there.
    fn unmount(&self, path: &Path) -> io::Result<bool>;
}

/// The real mount table of this host.
pub struct HostMounts;

impl MountTable for HostMounts {
    fn health(&self, path: &Path) -> Health {
        health(path)
    }
    fn is_mount_point(&self, path: &Path) -> io::Result<bool> {
        is_mount_point(path)
    }
    fn bind(&self, src: &Path, dst: &Path, read_only: bool, flags: &[String]) -> io::Result<()> {
        bind(src, dst, read_only, flags)
    }
    fn detach(&self, path: &Path) -> io::Result<()> {
        detach(path)
    }
    fn unmount(&self, path: &Path) -> io::Result<bool> {
        unmount(path)
    }
}
