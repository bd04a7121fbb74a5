//! The CSI plugin driven over its unix socket like kubelet and the sidecars,
//! and the deployment files.
//!
//! One binary per area, so the crate is linked once for all of its
//! suites; each module is one former test file, with its own doc.

#[path = "../common/mod.rs"]
mod common;
#[path = "../support_csi/mod.rs"]
mod support_csi;
#[path = "../support_nfs/mod.rs"]
mod support_nfs;

mod conformance;
mod deploy_manifests;
mod lifecycle;
mod restart;
