//! Identity service: who we are, what we offer, whether we can work.

use std::path::PathBuf;

use tonic::Status;

use super::proto::plugin_capability::{
    service, volume_expansion, Service, Type as CapType, VolumeExpansion,
};
use super::proto::*;
use super::state::StateDir;
use super::{DRIVER_NAME, DRIVER_VERSION};

pub struct IdentityService {
    /// Advertise CONTROLLER_SERVICE (the plugin runs the controller role).
    pub controller: bool,
    pub cache_dir: PathBuf,
    pub state_dir: PathBuf,
}

impl IdentityService {
    pub fn get_plugin_info(&self) -> GetPluginInfoResponse {
        GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: DRIVER_VERSION.into(),
            manifest: Default::default(),
        }
    }

    pub fn get_plugin_capabilities(&self) -> GetPluginCapabilitiesResponse {
        let mut capabilities = Vec::new();
        if self.controller {
            capabilities.push(PluginCapability {
                r#type: Some(CapType::Service(Service {
                    r#type: service::Type::ControllerService as i32,
                })),
            });
        }
        // Expansion while the volume is in use (NodeExpandVolume raises the
        // mount's quota live).
        capabilities.push(PluginCapability {
            r#type: Some(CapType::VolumeExpansion(VolumeExpansion {
                r#type: volume_expansion::Type::Online as i32,
            })),
        });
        GetPluginCapabilitiesResponse { capabilities }
    }

    /// Ready only when the cache and state directories can be written: a
    /// node that cannot cache or record its mounts must not get volumes.
    /// Unusable directories are an error (unhealthy, restart may help), with
    /// the directory and the reason.
    pub fn probe(&self) -> Result<ProbeResponse, Status> {
        for (what, dir) in [("cache", &self.cache_dir), ("state", &self.state_dir)] {
            if let Err(e) = StateDir::check_writable(dir) {
                return Err(Status::failed_precondition(format!(
                    "{what} directory {} is not usable: {e}. Fix: mount a writable hostPath there",
                    dir.display()
                )));
            }
        }
        Ok(ProbeResponse { ready: Some(true) })
    }
}
