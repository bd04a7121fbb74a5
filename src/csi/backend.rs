//! The controller's backends: the sources of volume IDs and parameters,
//! opened through the one factory ([`crate::backend::open`]) with what
//! the controller needs (request secrets, a short S3 retry budget).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tonic::Status;

use super::errors::backend_status;
use super::params::S3Credentials;
use crate::backend::s3::{CredentialSource, Credentials, S3Options};
use crate::backend::{Backend, BackendPath, ErrorKind, OpenError, OpenOptions, Source};

/// Controller calls must answer within the sidecar's timeout: bound S3
/// retries well below the mount's one minute.
const CONTROLLER_S3_RETRY_TIMEOUT: Duration = Duration::from_secs(20);

/// What a backend opened by the controller needs besides the source.
pub struct OpenContext<'a> {
    /// Provisioner (or controller) secrets; S3 only.
    pub credentials: Option<&'a S3Credentials>,
    /// The plugin's cache dir: S3 staging files live below it.
    pub cache_dir: &'a Path,
}

/// S3 options for a source: a custom endpoint is addressed path-style, as
/// most S3-compatible servers (MinIO, SeaweedFS, Ceph RGW) expect (a mount
/// child is given `--path-style` by the same rule, in `MountSpec::args`).
pub fn s3_options(source: &Source) -> S3Options {
    let custom_endpoint = matches!(
        source,
        Source::S3 {
            endpoint: Some(_),
            ..
        }
    );
    S3Options {
        path_style: custom_endpoint,
        ..S3Options::default()
    }
}

/// A backend rooted at `location/sub` for the controller's directory work.
/// The controller acts as root and hands new objects to the identity it
/// passes per call (like the mount's default "caller" mode).
pub async fn open(
    location: &Source,
    sub: &BackendPath,
    cx: &OpenContext<'_>,
) -> Result<Arc<dyn Backend>, Status> {
    let source = location.join(sub);
    let mut s3 = s3_options(&source);
    s3.retry_timeout = CONTROLLER_S3_RETRY_TIMEOUT;
    s3.max_retries = 2;
    // No secrets: the plugin's own (ambient) credentials.
    s3.credentials = CredentialSource {
        explicit: cx.credentials.map(|c| {
            Credentials::new(
                &c.access_key_id,
                &c.secret_access_key,
                c.session_token.as_deref(),
            )
        }),
        ..CredentialSource::default()
    };
    let opts = OpenOptions {
        identity: None,
        groups: Vec::new(),
        s3,
        staging_dir: cx.cache_dir.join("controller-s3-staging"),
        // The controller's writes (volume content, snapshots) are its own
        // and end with it: nothing resumes them after a crash.
        spill_dir: None,
    };
    crate::backend::open(&source, &opts)
        .await
        .map_err(|e| match e {
            OpenError::Backend(e) if e.kind == ErrorKind::NotFound => {
                Status::failed_precondition(format!(
                    "source {source} does not exist ({e}). Fix: create it (or mount the storage \
                     there on the controller) or correct the StorageClass source/server/share"
                ))
            }
            OpenError::Backend(e) => backend_status(&format!("opening {source}"), &e),
            OpenError::Credentials(e) => Status::failed_precondition(format!(
                "{e}. Fix: set csi.storage.k8s.io/provisioner-secret-name/-namespace in the \
                 StorageClass to a Secret with accessKeyId and secretAccessKey"
            )),
            OpenError::S3Client { .. } => Status::invalid_argument(format!(
                "{e}. Fix: correct the StorageClass endpoint/region"
            )),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_endpoint_means_path_style() {
        let s3 = |endpoint: Option<&str>| Source::S3 {
            bucket: "b".into(),
            prefix: String::new(),
            endpoint: endpoint.map(str::to_string),
            region: Some("eu-1".into()),
        };
        assert!(s3_options(&s3(Some("http://127.0.0.1:9000"))).path_style);
        assert!(!s3_options(&s3(None)).path_style);
    }
}
