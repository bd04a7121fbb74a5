//! Publishing a staged file: one PUT for small objects, a multipart upload
//! for large ones. Either way the object appears under its key only when S3
//! acknowledges the whole (PUT / CompleteMultipartUpload); a failed
//! multipart upload is aborted so no parts linger, and the old object stays.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::multipart::MultipartStore;
use object_store::{ObjectStoreExt, PutPayload, PutResult};

use crate::backend::{BackendPath, BackendResult, Identity};

use super::Inner;

/// Parts in flight at once (memory: this many × part size).
const PARALLEL_PARTS: usize = 4;

pub struct Target<'a> {
    pub path: &'a BackendPath,
    pub key: &'a str,
    pub location: &'a object_store::path::Path,
    pub id: Identity,
    /// Staging id, names the journal record of a multipart upload.
    pub staging_id: &'a str,
}

/// Read `len` bytes at `offset` of a staging file on the blocking pool.
pub async fn read_chunk(file: &Arc<File>, offset: u64, len: usize) -> std::io::Result<Bytes> {
    let file = Arc::clone(file);
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break, // sparse tail: zeros
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Upload the staging file's `size` bytes; `held` is all of them when
/// memory has them (see `tail`).
pub async fn upload_file(
    inner: &Inner,
    file: &Arc<File>,
    held: Option<Bytes>,
    size: u64,
    t: &Target<'_>,
) -> BackendResult<PutResult> {
    let part_size = inner.cfg.options.part_size;
    let io_err = |e: std::io::Error| inner.io_error(&e, "read staging file", t.path, t.id);
    tracing::debug!(key = t.key, size, "uploading");
    if size <= part_size {
        let data = match held {
            Some(data) => data,
            None => read_chunk(file, 0, size as usize).await.map_err(io_err)?,
        };
        return inner
            .store
            .put(t.location, PutPayload::from(data))
            .await
            .map_err(|e| inner.s3_err(&e, "upload (PUT)", t.path, t.key, t.id));
    }
    let upload_id = inner
        .store
        .create_multipart(t.location)
        .await
        .map_err(|e| inner.s3_err(&e, "start multipart upload", t.path, t.key, t.id))?;
    if let Err(e) = inner.staging.record_upload(t.staging_id, t.key, &upload_id) {
        tracing::warn!(key = t.key, error = %e,
            "could not journal a multipart upload; a crash now would leave it for the server's lifecycle rules");
    }
    let parts = size.div_ceil(part_size);
    let uploaded = futures::stream::iter(0..parts)
        .map(|index| {
            let upload_id = &upload_id;
            async move {
                let offset = index * part_size;
                let len = part_size.min(size - offset) as usize;
                let data = read_chunk(file, offset, len).await.map_err(io_err)?;
                inner
                    .store
                    .put_part(
                        t.location,
                        upload_id,
                        index as usize,
                        PutPayload::from(data),
                    )
                    .await
                    .map_err(|e| inner.s3_err(&e, "upload part", t.path, t.key, t.id))
            }
        })
        .buffered(PARALLEL_PARTS)
        .try_collect::<Vec<_>>()
        .await;
    let completed = match uploaded {
        Ok(parts) => inner
            .store
            .complete_multipart(t.location, &upload_id, parts)
            .await
            .map_err(|e| inner.s3_err(&e, "complete multipart upload", t.path, t.key, t.id)),
        Err(e) => Err(e),
    };
    match completed {
        Ok(result) => {
            inner.staging.clear_upload(t.staging_id, &upload_id);
            Ok(result)
        }
        Err(e) => {
            abort_upload(inner, t, &upload_id).await;
            Err(e)
        }
    }
}

/// Abort on the server; the journal record stays if that fails so the next
/// mount tries again.
pub async fn abort_upload(inner: &Inner, t: &Target<'_>, upload_id: &str) {
    match inner
        .store
        .abort_multipart(t.location, &upload_id.to_string())
        .await
    {
        Ok(()) => inner.staging.clear_upload(t.staging_id, upload_id),
        Err(e) => {
            let err = inner.s3_err(&e, "abort multipart upload", t.path, t.key, t.id);
            tracing::warn!(error = %err, "could not abort a failed upload; the next mount will retry");
        }
    }
}
