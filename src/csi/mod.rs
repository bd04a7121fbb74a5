//! The CSI plugin (`cachalot csi`): Identity, Controller and Node services
//! over a unix socket. The gRPC layer (server.rs) is a thin shell; each
//! service is a plain struct whose methods take and return the generated
//! message types, so tests can call them without gRPC.

pub mod backend;
pub mod capacity;
pub mod caps;
mod content;
pub mod controller;
mod copy;
pub mod errors;
pub mod get_volume;
pub mod host;
pub mod identity;
mod list_volumes;
pub mod locks;
pub mod mounts;
pub mod node;
#[cfg(test)]
mod node_tests;
pub mod params;
pub mod proto;
pub mod server;
pub mod snapshots;
pub mod state;
pub mod supervisor;
pub mod volume_id;

/// Driver name: GetPluginInfo, CSIDriver object, StorageClass provisioner.
pub const DRIVER_NAME: &str = "cachalot.csi.dev";
pub const DRIVER_VERSION: &str = env!("CARGO_PKG_VERSION");
