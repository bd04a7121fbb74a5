//! Mount-time cleanup of crashed writers: their multipart uploads (which S3
//! keeps, invisibly and billed, until aborted) and their staging files.
//!
//! Ours are known from the journal: an upload recorded by a process of this
//! host that is gone is aborted at once. Uploads under the prefix that no
//! journal explains (another node's crashed writer) are aborted once they
//! are older than a day, like the local backend's foreign temp files; a live
//! upload never lasts that long.

use std::time::{Duration, SystemTime};

use crate::backend::{BackendPath, BackendResult, Identity};

use super::Inner;

const FOREIGN_UPLOAD_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

pub async fn run(inner: &Inner) -> BackendResult<usize> {
    let root = BackendPath::root();
    let id = Identity::new(0, 0);
    let mut aborted = 0;
    let leftovers = inner.staging.leftovers();
    for dead in &leftovers.uploads {
        match inner.raw.abort_upload(&dead.key, &dead.upload_id).await {
            // NoSuchUpload: completed or aborted before the crash.
            Err(e) if e.status != Some(404) => {
                let err = inner.s3_err(&e, "abort dangling upload", &root, &dead.key, id);
                tracing::warn!(error = %err, "could not abort the upload of a crashed writer");
                continue;
            }
            Ok(()) => {
                tracing::info!(
                    key = dead.key,
                    upload_id = dead.upload_id,
                    "aborted the multipart upload of a crashed writer"
                );
                aborted += 1;
            }
            Err(_) => {}
        }
        let _ = std::fs::remove_file(&dead.journal);
    }
    for file in &leftovers.data_files {
        if std::fs::remove_file(file).is_ok() {
            tracing::info!(file = %file.display(), "removed the staging file of a crashed writer");
        }
    }
    let prefix = inner.keys.dir(&root);
    let uploads = inner
        .raw
        .list_uploads(&prefix)
        .await
        .map_err(|e| inner.s3_err(&e, "list multipart uploads", &root, &prefix, id))?;
    let now = SystemTime::now();
    for upload in uploads {
        let old = upload
            .initiated_at()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > FOREIGN_UPLOAD_MAX_AGE);
        if !old {
            continue;
        }
        match inner.raw.abort_upload(&upload.key, &upload.upload_id).await {
            Ok(()) => {
                tracing::info!(
                    key = upload.key,
                    "aborted a multipart upload older than a day"
                );
                aborted += 1;
            }
            Err(e) => {
                let err = inner.s3_err(&e, "abort stale upload", &root, &upload.key, id);
                tracing::warn!(error = %err, "could not abort a stale upload");
            }
        }
    }
    Ok(aborted)
}
