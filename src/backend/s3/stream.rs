//! Streaming of sequential writes into a multipart upload, an optimisation
//! on top of the staging file: once the first `part_size` bytes of a file
//! are final (written in order, nothing before them pending from a base
//! object), they are uploaded as part 1 in the background while the
//! application keeps writing, and so on. Publish then only uploads the tail
//! and completes. Nothing is visible under the key before completion.
//!
//! Any write or truncate below the streamed offset, or a rename, abandons
//! the stream (the upload is aborted) and publish falls back to uploading
//! the staging file, which always holds the whole content.

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use object_store::multipart::{MultipartStore, PartId};
use object_store::PutPayload;
use tokio::task::JoinHandle;

use crate::backend::{BackendError, BackendPath, BackendResult, Identity};

use super::upload::read_chunk;
use super::Inner;

/// Parts being uploaded at once; a writer ahead of that waits (backpressure).
const IN_FLIGHT: usize = 4;

enum Part {
    Running(JoinHandle<BackendResult<PartId>>),
    Done(PartId),
}

pub struct Stream {
    pub key: String,
    location: object_store::path::Path,
    upload_id: String,
    parts: Vec<Part>,
    /// Bytes `[0, queued)` are handed to part uploads.
    pub queued: u64,
}

impl Stream {
    /// Start a multipart upload for `key` and journal it under `staging_id`.
    pub async fn start(
        inner: &Inner,
        path: &BackendPath,
        key: &str,
        id: Identity,
        staging_id: &str,
    ) -> BackendResult<Stream> {
        let location = inner.store_path(key, "start streamed upload", path, id)?;
        let upload_id = inner
            .store
            .create_multipart(&location)
            .await
            .map_err(|e| inner.s3_err(&e, "start streamed upload", path, key, id))?;
        if let Err(e) = inner.staging.record_upload(staging_id, key, &upload_id) {
            tracing::warn!(key, error = %e, "could not journal a multipart upload");
        }
        Ok(Stream {
            key: key.to_string(),
            location,
            upload_id,
            parts: Vec::new(),
            queued: 0,
        })
    }

    /// Queue `[queued, end)` as the next part: `held`, its bytes in memory
    /// (see `tail`), or else read from the staging file.
    pub fn queue(
        &mut self,
        inner: &Arc<Inner>,
        file: &Arc<File>,
        held: Option<Bytes>,
        end: u64,
        path: &BackendPath,
        id: Identity,
    ) {
        let (offset, len) = (self.queued, (end - self.queued) as usize);
        let index = self.parts.len();
        let (inner, file) = (Arc::clone(inner), Arc::clone(file));
        let (location, upload_id, key) = (
            self.location.clone(),
            self.upload_id.clone(),
            self.key.clone(),
        );
        let path = path.clone();
        self.parts.push(Part::Running(tokio::spawn(async move {
            let data = match held {
                Some(data) => data,
                None => read_chunk(&file, offset, len)
                    .await
                    .map_err(|e| inner.io_error(&e, "read staging file", &path, id))?,
            };
            inner
                .store
                .put_part(&location, &upload_id, index, PutPayload::from(data))
                .await
                .map_err(|e| inner.s3_err(&e, "upload part", &path, &key, id))
        })));
        self.queued = end;
    }

    /// Wait until at most `max` parts are running.
    pub async fn settle(&mut self, max: usize) -> BackendResult<()> {
        loop {
            let running: Vec<usize> = (0..self.parts.len())
                .filter(|&i| matches!(self.parts[i], Part::Running(_)))
                .collect();
            if running.len() <= max {
                return Ok(());
            }
            let i = running[0];
            let Part::Running(handle) = &mut self.parts[i] else {
                continue;
            };
            let part = handle.await.map_err(|e| {
                BackendError::new(crate::backend::ErrorKind::Other, "upload part", "")
                    .with_cause(format!("upload task failed: {e}"))
            })??;
            self.parts[i] = Part::Done(part);
        }
    }

    pub async fn backpressure(&mut self) -> BackendResult<()> {
        self.settle(IN_FLIGHT).await
    }

    /// Wait for every part and complete the upload. On failure the caller
    /// must `abort`.
    pub async fn complete(
        &mut self,
        inner: &Inner,
        path: &BackendPath,
        id: Identity,
        staging_id: &str,
    ) -> BackendResult<object_store::PutResult> {
        self.settle(0).await?;
        let parts = self
            .parts
            .iter()
            .filter_map(|p| match p {
                Part::Done(id) => Some(id.clone()),
                Part::Running(_) => None,
            })
            .collect();
        let result = inner
            .store
            .complete_multipart(&self.location, &self.upload_id, parts)
            .await
            .map_err(|e| inner.s3_err(&e, "complete streamed upload", path, &self.key, id))?;
        inner.staging.clear_upload(staging_id, &self.upload_id);
        Ok(result)
    }

    /// Cancel running parts and abort the upload on the server (the journal
    /// record stays if that fails, for the next mount).
    pub async fn abort(self, inner: &Inner, staging_id: &str) {
        for part in &self.parts {
            if let Part::Running(handle) = part {
                handle.abort();
            }
        }
        match inner
            .store
            .abort_multipart(&self.location, &self.upload_id)
            .await
        {
            Ok(()) => inner.staging.clear_upload(staging_id, &self.upload_id),
            Err(e) => {
                tracing::warn!(key = self.key, error = %e,
                    "could not abort a streamed upload; the next mount will")
            }
        }
    }
}
