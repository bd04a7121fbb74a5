//! Whose identity a filesystem call runs with: the daemon's, giving new
//! objects to the caller, or a fixed identity set as the thread's
//! fsuid/fsgid for the length of the call.

use super::*;

/// Whose identity operations run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityMode {
    /// Run as the daemon; give new objects to the caller.
    Caller,
    /// Run every operation with this identity's fsuid/fsgid.
    Fixed,
}

pub(super) struct ImpersonationGuard {
    active: bool,
}

impl ImpersonationGuard {
    pub(super) fn enter(active: bool, id: Identity) -> ImpersonationGuard {
        if active {
            // Group first: once fsuid is unprivileged we could not change it.
            nix::unistd::setfsgid(nix::unistd::Gid::from_raw(id.gid));
            nix::unistd::setfsuid(nix::unistd::Uid::from_raw(id.uid));
        }
        ImpersonationGuard { active }
    }
}

impl Drop for ImpersonationGuard {
    fn drop(&mut self) {
        if self.active {
            nix::unistd::setfsuid(nix::unistd::Uid::from_raw(0));
            nix::unistd::setfsgid(nix::unistd::Gid::from_raw(0));
        }
    }
}
