//! S3 against SeaweedFS (and moto) on 127.0.0.1, one server per test: the
//! backend, mounts, server restarts and the CSI plugin.
//!
//! One binary per area, so the crate is linked once for all of its
//! suites; each module is one former test file, with its own doc.

#[path = "../common/mod.rs"]
mod common;
#[path = "../support_csi/mod.rs"]
mod support_csi;
#[path = "../support_posix/mod.rs"]
mod support_posix;
#[path = "../support_s3/mod.rs"]
mod support_s3;

mod backend;
mod csi;
mod https;
mod mounts;
mod pod_identity;
mod restart;
mod streaming;
mod web_identity;
