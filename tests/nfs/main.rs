//! NFSv3 against nfs-ganesha on 127.0.0.1: the backend, mounts and the CSI
//! plugin (server restarts are in nfs_restart, their own binary: they take the
//! shared server down).
//!
//! One binary per area, so the crate is linked once for all of its
//! suites; each module is one former test file, with its own doc.

#[path = "../common/mod.rs"]
mod common;
#[path = "../support_csi/mod.rs"]
mod support_csi;
#[path = "../support_nfs/mod.rs"]
mod support_nfs;
#[path = "../support_posix/mod.rs"]
mod support_posix;

mod backend;
mod csi;
mod mount;
mod pipeline;
