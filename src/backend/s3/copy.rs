//! Server-side copy of one object, whatever its size: S3 copies at most
//! 5 GiB with one CopyObject, so a larger object (a model checkpoint) is
//! copied as a multipart upload of UploadPartCopy parts, each pinned to the
//! source's ETag. Like an upload, the copy appears under its key only at
//! CompleteMultipartUpload; a failed one is aborted (one left by a crash is
//! aborted by the mount-time cleanup once a day old).
//!
//! Renames (files and directories' objects) and snapshots go through here.

use futures::{StreamExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::ObjectStoreExt;

use crate::backend::{BackendPath, BackendResult, Identity};

use super::config::MAX_SINGLE_COPY;
use super::Inner;

/// Parts copied at once (the server moves the data; this bounds requests).
const PARALLEL_PARTS: usize = 4;

/// Largest part of a copy: fewer, larger parts are fewer requests.
const MAX_COPY_PART: u64 = 1 << 30;

/// What a copy is for, in error messages.
pub struct CopyContext<'a> {
    pub op: &'static str,
    pub path: &'a BackendPath,
    pub id: Identity,
}

/// Copy the object `from` to `to` (full keys).
pub async fn copy_key(
    inner: &Inner,
    from: &str,
    to: &str,
    cx: &CopyContext<'_>,
) -> BackendResult<()> {
    let limit = inner.cfg.options.single_copy_max;
    if limit >= MAX_SINGLE_COPY {
        // S3's own limit: ask for a single copy, and learn the size only
        // if it is refused (one request for the common case).
        match inner.raw.copy(from, to).await {
            Err(e) if e.code.as_deref() == Some("EntityTooLarge") => {}
            done => return done.map_err(|e| inner.s3_err(&e, cx.op, cx.path, from, cx.id)),
        }
    }
    let source = inner.store_path(from, cx.op, cx.path, cx.id)?;
    let head = inner
        .store
        .head(&source)
        .await
        .map_err(|e| inner.s3_err(&e, cx.op, cx.path, from, cx.id))?;
    if head.size <= limit {
        return inner
            .raw
            .copy(from, to)
            .await
            .map_err(|e| inner.s3_err(&e, cx.op, cx.path, from, cx.id));
    }
    let etag = head.e_tag.unwrap_or_default();
    copy_in_parts(inner, from, to, head.size, &etag, cx).await
}

async fn copy_in_parts(
    inner: &Inner,
    from: &str,
    to: &str,
    size: u64,
    etag: &str,
    cx: &CopyContext<'_>,
) -> BackendResult<()> {
    let part_size = copy_part_size(size, inner.cfg.options.single_copy_max);
    let target = inner.store_path(to, cx.op, cx.path, cx.id)?;
    let store_err = |e: &object_store::Error, what| inner.s3_err(e, what, cx.path, to, cx.id);
    let upload_id = inner
        .store
        .create_multipart(&target)
        .await
        .map_err(|e| store_err(&e, "start multipart copy"))?;
    tracing::debug!(from, to, size, part_size, "copying in parts");
    let parts: BackendResult<Vec<PartId>> = futures::stream::iter(0..size.div_ceil(part_size))
        .map(|index| {
            let upload_id = &upload_id;
            async move {
                let first = index * part_size;
                let last = (first + part_size).min(size) - 1;
                let part = index as usize + 1; // S3 numbers parts from 1
                inner
                    .raw
                    .copy_part(from, to, upload_id, part, (first, last), etag)
                    .await
                    .map(|content_id| PartId { content_id })
                    .map_err(|e| inner.s3_err(&e, "copy part", cx.path, from, cx.id))
            }
        })
        .buffered(PARALLEL_PARTS)
        .try_collect()
        .await;
    let completed = match parts {
        Ok(parts) => inner
            .store
            .complete_multipart(&target, &upload_id, parts)
            .await
            .map(|_| ())
            .map_err(|e| store_err(&e, "complete multipart copy")),
        Err(e) => Err(e),
    };
    if completed.is_err() {
        if let Err(e) = inner.store.abort_multipart(&target, &upload_id).await {
            let err = store_err(&e, "abort multipart copy");
            tracing::warn!(error = %err, "could not abort a failed copy; the mount-time cleanup will");
        }
    }
    completed
}

/// Parts of at most `limit` (and 1 GiB), few enough for S3's 10 000.
fn copy_part_size(size: u64, limit: u64) -> u64 {
    let fewest = size.div_ceil(10_000);
    limit.min(MAX_COPY_PART).max(fewest).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_parts_respect_the_limit_and_the_part_count() {
        assert_eq!(copy_part_size(6 << 30, MAX_SINGLE_COPY), 1 << 30);
        assert_eq!(copy_part_size(20 << 20, 6 << 20), 6 << 20);
        // 20 TiB needs parts above 1 GiB to stay within 10 000 parts.
        let huge = 20u64 << 40;
        assert!(huge.div_ceil(copy_part_size(huge, MAX_SINGLE_COPY)) <= 10_000);
    }
}
