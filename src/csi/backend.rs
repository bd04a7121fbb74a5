//! From typed locations to the backends and sources of this build. The only
//! place that knows which backend kinds are compiled in: a location whose
//! kind is missing here fails with "backend not available in this build".

use std::sync::Arc;

use tonic::Status;

use super::errors::backend_status;
use super::params::{InvalidArgument, Location};
use crate::backend::local::{IdentityMode, LocalBackend};
use crate::backend::nfs::{NfsBackend, NfsOptions};
use crate::backend::{Backend, BackendPath, Source};

fn unavailable(location: &Location) -> InvalidArgument {
    InvalidArgument(format!(
        "backend '{}' (source {location}) not available in this build; available: file, nfs",
        location.kind()
    ))
}

/// The source a mount child serves for a volume: the location with the
/// volume's sub-path appended.
pub fn source_for(location: &Location, sub: &BackendPath) -> Result<Source, InvalidArgument> {
    match location {
        Location::Local { root } => Ok(Source::Local {
            root: if sub.is_root() {
                root.clone()
            } else {
                root.join(sub.as_str())
            },
        }),
        Location::Nfs {
            server,
            port,
            export,
        } => Ok(Source::Nfs {
            host: server.clone(),
            port: *port,
            path: if sub.is_root() {
                export.clone()
            } else {
                format!("{}/{}", export.trim_end_matches('/'), sub.as_str())
            },
        }),
        Location::S3 { .. } => Err(unavailable(location)),
    }
}

/// A backend rooted at `location/sub` for the controller's directory work.
/// The controller acts as root and hands new objects to the identity it
/// passes per call (like the mount's default "caller" mode).
pub async fn open(location: &Location, sub: &BackendPath) -> Result<Arc<dyn Backend>, Status> {
    let source = source_for(location, sub)?;
    match source {
        Source::Local { root } => Ok(Arc::new(LocalBackend::new(root, IdentityMode::Caller))),
        Source::Nfs { .. } => NfsBackend::connect(&source, NfsOptions::default())
            .await
            .map(|b| Arc::new(b) as Arc<dyn Backend>)
            .map_err(|e| backend_status(&format!("connecting to {source}"), &e)),
        // source_for does not produce S3 sources yet (see `unavailable`).
        Source::S3 { .. } => Err(unavailable(location).into()),
    }
}
