//! One way from a [`Source`] to a backend, shared by the command line, the
//! mounter, the CSI controller and the doctor: the rules (which identity
//! mode, which S3 owner, where S3 stages) live here once.

use std::path::PathBuf;
use std::sync::Arc;

use super::local::{IdentityMode, LocalBackend};
use super::nfs::{NfsBackend, NfsOptions};
use super::s3::{Credentials, CredentialsError, S3Backend, S3Config, S3Options};
use super::{Backend, BackendError, Identity, Source};

/// What a backend is opened with besides its source.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Every request as this identity (`--uid/--gid`); `None` = as the
    /// caller of each request.
    pub identity: Option<Identity>,
    /// Supplementary groups sent with the fixed identity (NFS).
    pub groups: Vec<u32>,
    /// S3: limits, retries and where the credentials come from (explicit
    /// keys, as from a CSI secret, go in `s3.credentials.explicit`).
    pub s3: S3Options,
    /// S3: staging files and the upload journal.
    pub staging_dir: PathBuf,
    /// NFS: where unanswered WRITEs are spilled for crash recovery (the
    /// session's journal directory); `None` where nothing resumes.
    pub spill_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The S3 client could not be configured (endpoint, part size).
    #[error("S3 source {url}: {why}")]
    S3Client { url: String, why: String },
}

/// The backend serving `source`. Local roots must exist; NFS connects and
/// mounts the export; S3 builds its clients without sending a request.
pub async fn open(source: &Source, opts: &OpenOptions) -> Result<Arc<dyn Backend>, OpenError> {
    match source {
        Source::Local { root } => {
            let mode = match opts.identity {
                Some(_) => IdentityMode::Fixed,
                None => IdentityMode::Caller,
            };
            let backend = LocalBackend::open(root.clone(), mode).map_err(|e| {
                BackendError::from_io(&e, "open the source directory", "")
                    .with_backend(&source.to_string())
            })?;
            Ok(Arc::new(backend))
        }
        Source::Nfs { .. } => {
            let nfs = NfsOptions {
                identity: opts.identity,
                groups: opts.groups.clone(),
                spill_dir: opts.spill_dir.clone(),
                ..NfsOptions::default()
            };
            Ok(Arc::new(NfsBackend::connect(source, nfs).await?))
        }
        Source::S3 { .. } => Ok(open_s3(source, opts, &opts.s3)?),
    }
}

/// The S3 backend of an s3:// source with `options` (which may differ
/// from `opts.s3` in their retry budget: a mount's checks run on a short
/// one). Sources of other kinds are refused.
pub fn open_s3(
    source: &Source,
    opts: &OpenOptions,
    options: &S3Options,
) -> Result<Arc<S3Backend>, OpenError> {
    let credentials = Credentials::load(&options.credentials)?;
    let config = s3_config(source, opts, options.clone(), credentials)?;
    S3Backend::new(config)
        .map(Arc::new)
        .map_err(|why| OpenError::S3Client {
            url: source.to_string(),
            why,
        })
}

/// The client configuration of an s3:// source. S3 stores no owners:
/// everything belongs to the fixed identity, else to this process's.
pub fn s3_config(
    source: &Source,
    opts: &OpenOptions,
    options: S3Options,
    credentials: Credentials,
) -> Result<S3Config, OpenError> {
    let Source::S3 {
        bucket,
        prefix,
        endpoint,
        region,
    } = source
    else {
        return Err(OpenError::S3Client {
            url: source.to_string(),
            why: "not an s3:// source".into(),
        });
    };
    let owner = opts.identity.unwrap_or_else(super::nfs::process_identity);
    Ok(S3Config {
        bucket: bucket.clone(),
        prefix: prefix.clone(),
        endpoint: endpoint.clone(),
        region: region.clone(),
        options,
        credentials,
        uid: owner.uid,
        gid: owner.gid,
        staging_dir: opts.staging_dir.clone(),
    })
}
