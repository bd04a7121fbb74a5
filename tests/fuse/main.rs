//! FUSE mounts of file:// sources: operations, cache, errors, permissions,
//! POSIX edges, atomic writes, concurrency, security, the model test and the
//! page store.
//!
//! One binary per area, so the crate is linked once for all of its
//! suites; each module is one former test file, with its own doc.

#[path = "../common/mod.rs"]
mod common;
#[path = "../support_nfs/mod.rs"]
mod support_nfs;
#[path = "../support_posix/mod.rs"]
mod support_posix;
#[path = "../support_s3/mod.rs"]
mod support_s3;

mod basic;
mod cache;
mod cache_store;
mod concurrency;
mod errors;
mod model_fsx;
mod permissions;
mod posix_edge;
mod rename_races;
mod security;
mod write_atomic;
