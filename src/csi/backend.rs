//! From typed locations to the backends and sources of this build. The only
//! place that knows which backend kinds are compiled in: a location whose
//! kind is missing here fails with "backend not available in this build".

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tonic::Status;

use super::errors::backend_status;
use super::params::{InvalidArgument, Location, S3Credentials};
use crate::backend::local::{IdentityMode, LocalBackend};
use crate::backend::nfs::{NfsBackend, NfsOptions};
use crate::backend::s3::{CredentialSource, Credentials, S3Backend, S3Config, S3Options};
use crate::backend::{Backend, BackendPath, Source};

/// Controller calls must answer within the sidecar's timeout: bound S3
/// retries well below the mount's one minute.
const CONTROLLER_S3_RETRY_TIMEOUT: Duration = Duration::from_secs(20);

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
        Location::S3 { bucket, prefix, .. } => Ok(Source::S3 {
            bucket: bucket.clone(),
            prefix: match (prefix.is_empty(), sub.is_root()) {
                (_, true) => prefix.clone(),
                (true, false) => sub.as_str().to_string(),
                (false, false) => format!("{prefix}/{}", sub.as_str()),
            },
        }),
    }
}

/// What a backend opened by the controller needs besides the location.
pub struct OpenContext<'a> {
    /// Provisioner (or controller) secrets; S3 only.
    pub credentials: Option<&'a S3Credentials>,
    /// The plugin's cache dir: S3 staging files live below it.
    pub cache_dir: &'a Path,
}

/// S3 options of a location (the mount child gets the same as arguments):
/// a custom endpoint is addressed path-style, as most S3-compatible servers
/// (MinIO, SeaweedFS, Ceph RGW) expect.
pub fn s3_options(location: &Location) -> S3Options {
    let (endpoint, region) = match location {
        Location::S3 {
            endpoint, region, ..
        } => (endpoint.clone(), region.clone()),
        _ => (None, None),
    };
    S3Options {
        path_style: endpoint.is_some(),
        endpoint,
        region,
        ..S3Options::default()
    }
}

fn s3_backend(
    location: &Location,
    bucket: String,
    prefix: String,
    cx: &OpenContext<'_>,
) -> Result<S3Backend, Status> {
    let credentials = match cx.credentials {
        Some(c) => Credentials::new(
            &c.access_key_id,
            &c.secret_access_key,
            c.session_token.as_deref(),
        ),
        // No secrets: the plugin's own (ambient) credentials.
        None => Credentials::load(&CredentialSource::default()).map_err(|e| {
            Status::failed_precondition(format!(
                "{e}. Fix: set csi.storage.k8s.io/provisioner-secret-name/-namespace in the \
                 StorageClass to a Secret with accessKeyId and secretAccessKey"
            ))
        })?,
    };
    let mut options = s3_options(location);
    options.retry_timeout = CONTROLLER_S3_RETRY_TIMEOUT;
    options.max_retries = 2;
    let config = S3Config {
        bucket,
        prefix,
        options,
        credentials,
        uid: 0,
        gid: 0,
        staging_dir: cx.cache_dir.join("controller-s3-staging"),
    };
    S3Backend::new(config).map_err(|e| {
        Status::invalid_argument(format!(
            "S3 source {location}: {e}. Fix: correct the StorageClass endpoint/region"
        ))
    })
}

/// A backend rooted at `location/sub` for the controller's directory work.
/// The controller acts as root and hands new objects to the identity it
/// passes per call (like the mount's default "caller" mode).
pub async fn open(
    location: &Location,
    sub: &BackendPath,
    cx: &OpenContext<'_>,
) -> Result<Arc<dyn Backend>, Status> {
    let source = source_for(location, sub)?;
    match source {
        Source::Local { root } => Ok(Arc::new(LocalBackend::new(root, IdentityMode::Caller))),
        Source::Nfs { .. } => NfsBackend::connect(&source, NfsOptions::default())
            .await
            .map(|b| Arc::new(b) as Arc<dyn Backend>)
            .map_err(|e| backend_status(&format!("connecting to {source}"), &e)),
        Source::S3 { bucket, prefix } => Ok(Arc::new(s3_backend(location, bucket, prefix, cx)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_sub_path_is_appended_to_the_prefix() {
        let loc = |prefix: &str| Location::S3 {
            bucket: "b".into(),
            prefix: prefix.into(),
            endpoint: None,
            region: None,
        };
        let sub = BackendPath::parse("ns/pvc-1").unwrap();
        let prefix_of = |s: Source| match s {
            Source::S3 { prefix, .. } => prefix,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            prefix_of(source_for(&loc("vols"), &sub).unwrap()),
            "vols/ns/pvc-1"
        );
        assert_eq!(prefix_of(source_for(&loc(""), &sub).unwrap()), "ns/pvc-1");
        assert_eq!(
            prefix_of(source_for(&loc("vols"), &BackendPath::root()).unwrap()),
            "vols"
        );
    }

    #[test]
    fn custom_endpoint_means_path_style() {
        let loc = Location::S3 {
            bucket: "b".into(),
            prefix: String::new(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: Some("eu-1".into()),
        };
        let o = s3_options(&loc);
        assert!(o.path_style);
        assert_eq!(o.region.as_deref(), Some("eu-1"));
    }
}
