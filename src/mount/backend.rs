//! The backend a session serves: opened from the source (with the S3
//! checks at mount), checked for what writes need (preflight), wrapped
//! with the volume's quota.

use std::sync::Arc;
use std::time::Duration;

use super::{MountOptions, SourceFailure};
use crate::backend::{Backend, BackendPath, Identity, OpenOptions, Source};

/// How a mount opens its source: as `--uid/--gid` (else as each caller),
/// S3 staging below the cache dir, NFS spill next to the journal.
fn open_options(opts: &MountOptions) -> OpenOptions {
    OpenOptions {
        identity: opts.identity,
        groups: opts.groups.clone(),
        s3: opts.s3.clone(),
        staging_dir: opts.cache_dir.join("s3-staging"),
        spill_dir: spill_dir(opts),
    }
}

/// Where a session that a successor can resume after a crash (it has a
/// journal) spills NFS WRITEs not yet answered by the server.
fn spill_dir(opts: &MountOptions) -> Option<std::path::PathBuf> {
    opts.journal_dir.as_ref().map(|d| d.join("nfs-spill"))
}

/// A session mounted afresh resumes no write: whatever an earlier session
/// at its staging path spilled is of no use any more.
pub(super) fn forget_stale_spill(opts: &MountOptions) {
    let Some(dir) = spill_dir(opts) else { return };
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(error = %e, dir = %dir.display(), "could not remove an earlier session's spill");
        }
        _ => {}
    }
}

pub(super) async fn backend_for(opts: &MountOptions) -> Result<Arc<dyn Backend>, SourceFailure> {
    let open = open_options(opts);
    if let Source::S3 { .. } = &opts.source {
        // The checks run on a client with a short retry budget, so a
        // wrong endpoint or a dead server fails the mount in seconds
        // with its cause; the data path rides out a server restart for
        // the whole retry_timeout.
        let mut check = opts.s3.clone();
        check.max_retries = check.max_retries.min(S3_CHECK_RETRIES);
        check.retry_timeout = check.retry_timeout.min(S3_CHECK_TIMEOUT);
        let probe = crate::backend::open_s3(&opts.source, &open, &check)?;
        probe
            .check_credentials()
            .await
            .map_err(SourceFailure::Check)?;
        probe
            .stat(Identity::new(0, 0), &BackendPath::root())
            .await
            .map_err(SourceFailure::Bucket)?;
        if !opts.read_only && !opts.skip_preflight {
            probe.preflight().await?;
        }
        let backend = crate::backend::open_s3(&opts.source, &open, &opts.s3)?;
        tracing::info!(source = %opts.source, access_key_id = backend.access_key_id(),
            credentials = backend.credentials_origin(), "using S3");
        return Ok(backend);
    }
    Ok(crate::backend::open(&opts.source, &open).await?)
}

/// Read-write mounts check at mount time that the identity can write, so a
/// squashed root or wrong uid fails here with the fix, not at first write.
pub(super) async fn preflight(
    backend: &dyn Backend,
    opts: &MountOptions,
) -> Result<(), SourceFailure> {
    if opts.read_only || opts.skip_preflight {
        return Ok(());
    }
    let id = opts
        .identity
        .unwrap_or_else(crate::backend::nfs::process_identity);
    backend.preflight(id).await?;
    Ok(())
}

/// Retry budget of the S3 checks at mount time (see `backend_for`).
const S3_CHECK_RETRIES: usize = 2;
const S3_CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// The backend with the volume's quota, if it has one, its usage measured
/// in the background. A capacity an expansion set while another process
/// served the session (kept in its journal directory) wins over the one
/// the volume was created with.
pub(super) fn with_capacity(
    runtime: &tokio::runtime::Runtime,
    backend: Arc<dyn Backend>,
    opts: &MountOptions,
) -> Arc<dyn Backend> {
    let Some(created_with) = opts.capacity else {
        return backend;
    };
    let kept_in = opts.journal_dir.as_ref().map(|d| d.join("capacity"));
    let capacity = kept_in
        .as_deref()
        .and_then(crate::backend::quota::kept_capacity)
        .unwrap_or(created_with);
    let below = Arc::downgrade(&backend);
    let (backend, state) = crate::backend::quota::Quota::wrap(backend, capacity, kept_in);
    let id = opts.identity.unwrap_or_else(|| {
        crate::backend::Identity::new(
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    });
    runtime.spawn(crate::backend::quota::keep_sharing(
        below,
        Arc::downgrade(&state),
        id,
    ));
    runtime.spawn(crate::backend::quota::keep_walking(
        Arc::downgrade(&backend),
        state,
        id,
    ));
    backend
}
