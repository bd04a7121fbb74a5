//! A file being written: a local staging file that is the whole new content,
//! except for ranges of the old object (copy-on-write base) not fetched yet.
//! Those are fetched lazily (reads of the pending file) or at publish, with
//! `If-Match` on the base's ETag, so a base replaced meanwhile fails the
//! publish with ESTALE instead of mixing two versions. Random writes,
//! overwrites, appends and truncates are therefore all plain local file
//! operations; publish uploads the result (upload.rs).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use async_trait::async_trait;

use crate::backend::{
    blocking, AttrChanges, BackendPath, BackendResult, ErrorKind, Identity, Metadata, PendingWrite,
    SuspendedWrite, WriteStart,
};

use super::ranges::RangeSet;
use super::resume::Suspended;
use super::staging::Staging;
use super::stream::Stream;
use super::tail::{self, Tail};
use super::upload::{self, Target};
use super::{meta, namespace, read, Inner};

/// Largest single GET when filling base ranges.
const FILL_CHUNK: u64 = 8 << 20;

pub(super) struct Base {
    pub location: object_store::path::Path,
    pub key: String,
    pub etag: String,
    pub size: u64,
}

pub(super) struct State {
    pub size: u64,
    pub base: Option<Base>,
    /// Bytes `[0, base_limit)` come from the base where not written; a
    /// truncate below it drops the rest of the base for good.
    pub base_limit: u64,
    /// Ranges of the staging file that hold their final content.
    pub present: RangeSet,
    finished: bool,
    /// Sequential prefix already streaming into a multipart upload.
    stream: Option<Stream>,
    /// Streaming was abandoned (non-sequential write): upload at publish.
    pub stream_off: bool,
    /// The part a sequential writer is filling, in memory too.
    tail: Tail,
}

pub struct S3PendingWrite {
    inner: Arc<Inner>,
    id: Identity,
    file: Arc<File>,
    /// The staging file opened with O_DIRECT (see `tail`) at the first
    /// write that fits it (small files never need it); `None` where the
    /// filesystem refuses it.
    direct: OnceLock<Option<File>>,
    /// A direct write was refused (EINVAL: an alignment this filesystem
    /// wants that ours is not): the page cache from then on.
    direct_off: AtomicBool,
    file_path: PathBuf,
    staging_id: String,
    /// Path at begin: for messages and the object number (targets are
    /// passed per call).
    origin: BackendPath,
    size: AtomicU64,
    state: tokio::sync::Mutex<State>,
}

pub async fn begin(
    inner: &Arc<Inner>,
    id: Identity,
    path: &BackendPath,
    start: WriteStart,
) -> BackendResult<Box<dyn PendingWrite>> {
    // A new or truncated file needs nothing from S3.
    let base = match start {
        WriteStart::Empty => None,
        WriteStart::CopyExisting => {
            let key = inner.keys.object(path);
            let location = inner.store_path(&key, "begin write", path, id)?;
            namespace::head_object(inner, id, path)
                .await?
                .map(|m| Base {
                    location,
                    key,
                    etag: m.e_tag.unwrap_or_default(),
                    size: m.size,
                })
        }
    };
    let staging = inner
        .staging
        .create()
        .map_err(|e| inner.io_error(&e, "create staging file", path, id))?;
    let size = base.as_ref().map_or(0, |b| b.size);
    let state = State::new(inner, size, base, size, RangeSet::default());
    Ok(Box::new(S3PendingWrite::new(
        inner, id, path, staging, state,
    )))
}

impl State {
    pub(super) fn new(
        inner: &Inner,
        size: u64,
        base: Option<Base>,
        base_limit: u64,
        present: RangeSet,
    ) -> State {
        State {
            size,
            base,
            base_limit,
            present,
            finished: false,
            stream: None,
            stream_off: false,
            tail: Tail::new(inner.cfg.options.part_size),
        }
    }
}

impl S3PendingWrite {
    /// A write session on the staging file `(file, path, id)`.
    pub(super) fn new(
        inner: &Arc<Inner>,
        id: Identity,
        origin: &BackendPath,
        (file, file_path, staging_id): (File, PathBuf, String),
        state: State,
    ) -> S3PendingWrite {
        S3PendingWrite {
            inner: Arc::clone(inner),
            id,
            file: Arc::new(file),
            direct: OnceLock::new(),
            direct_off: AtomicBool::new(false),
            file_path,
            staging_id,
            origin: origin.clone(),
            size: AtomicU64::new(state.size),
            state: tokio::sync::Mutex::new(state),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        work: impl FnOnce(&File) -> std::io::Result<T> + Send + 'static,
    ) -> BackendResult<T> {
        self.blocking_io(work)
            .await
            .map_err(|e| self.inner.io_error(&e, op, &self.origin, self.id))
    }

    async fn blocking_io<T: Send + 'static>(
        &self,
        work: impl FnOnce(&File) -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || work(&file))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
    }

    /// Write `data` at `offset` of the staging file on this thread: with
    /// O_DIRECT where it fits (see `tail`), else through the page cache.
    fn write_staging_here(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let fits = tail::direct_fits(offset, data) && !self.direct_off.load(Ordering::Relaxed);
        let direct = fits
            .then(|| {
                self.direct
                    .get_or_init(|| Staging::open_direct(&self.file_path))
            })
            .and_then(Option::as_ref);
        if let Some(direct) = direct {
            match direct.write_all_at(data, offset) {
                Ok(()) => return Ok(()),
                // Partly written at most: the buffered write redoes it all.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!(error = %e, "direct write refused; using the page cache");
                    self.direct_off.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(data, offset)
    }

    fn check_open(&self, state: &State, op: &'static str) -> BackendResult<()> {
        if state.finished {
            return Err(self.inner.error(
                ErrorKind::InvalidArgument,
                op,
                &self.origin,
                self.id,
                "write already published or aborted",
            ));
        }
        Ok(())
    }

    /// Queue every complete part of the final sequential prefix for upload,
    /// starting the multipart upload when the first part is complete.
    /// Streaming is best effort: a failure abandons it and publish uploads
    /// the staging file (and reports any error that persists).
    async fn advance_stream(&self, state: &mut State) {
        if state.stream_off {
            return;
        }
        let part = self.inner.cfg.options.part_size;
        loop {
            let next_end = state.stream.as_ref().map_or(0, |s| s.queued) + part;
            if state.size < next_end || !state.present.covers_prefix(next_end) {
                break;
            }
            if state.stream.is_none() {
                let key = self.inner.keys.object(&self.origin);
                match Stream::start(&self.inner, &self.origin, &key, self.id, &self.staging_id)
                    .await
                {
                    Ok(s) => state.stream = Some(s),
                    Err(e) => {
                        tracing::debug!(error = %e, "not streaming this write");
                        state.stream_off = true;
                        return;
                    }
                }
            }
            if let Some(s) = state.stream.as_mut() {
                let held = state.tail.take(s.queued, next_end - s.queued);
                s.queue(
                    &self.inner,
                    &self.file,
                    held,
                    next_end,
                    &self.origin,
                    self.id,
                );
            }
        }
        let pressure = match state.stream.as_mut() {
            Some(s) => s.backpressure().await,
            None => Ok(()),
        };
        if let Err(e) = pressure {
            tracing::warn!(error = %e, "streamed upload failed; uploading at close instead");
            self.abandon_stream(state).await;
        }
    }

    async fn abandon_stream(&self, state: &mut State) {
        state.stream_off = true;
        state.tail.clear();
        if let Some(s) = state.stream.take() {
            s.abort(&self.inner, &self.staging_id).await;
        }
    }

    /// Make `range` (clipped to the base) hold its final content.
    async fn fill(&self, state: &mut State, start: u64, end: u64) -> BackendResult<()> {
        let end = end.min(state.base_limit);
        let Some(base) = &state.base else {
            return Ok(());
        };
        if start >= end {
            return Ok(());
        }
        for gap in state.present.missing(start..end) {
            let mut pos = gap.start;
            while pos < gap.end {
                let chunk_end = (pos + FILL_CHUNK).min(gap.end);
                let data = read::get_range(
                    &self.inner,
                    &base.location,
                    &base.etag,
                    pos,
                    chunk_end,
                    ("copy-on-write fetch", &self.origin, &base.key, self.id),
                )
                .await?;
                self.blocking("write staging file", move |f| f.write_all_at(&data, pos))
                    .await?;
                state.present.insert(pos..chunk_end);
                pos = chunk_end;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl PendingWrite for S3PendingWrite {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> BackendResult<()> {
        let mut state = self.state.lock().await;
        self.check_open(&state, "write")?;
        let end = offset + data.len() as u64;
        if state.stream.as_ref().is_some_and(|s| offset < s.queued) {
            // Rewriting what is already uploading: no longer sequential.
            self.abandon_stream(&mut state).await;
        }
        let state_now = &mut *state;
        for (at, range) in state_now.tail.split(offset, data.len()) {
            let piece = &data[range];
            let held = match state_now.stream_off {
                true => None,
                false => state_now
                    .tail
                    .stage(at, piece, &state_now.present, &self.file),
            };
            let staged = held.is_some();
            let written = match (blocking::is_inline(), held) {
                // On the FUSE worker (see `Capabilities::inline_writes`):
                // from memory, with O_DIRECT where it fits.
                (true, Some(held)) => self.write_staging_here(at, held),
                (true, None) => self.write_staging_here(at, piece),
                (false, _) => {
                    let piece = piece.to_vec();
                    self.blocking_io(move |f| f.write_all_at(&piece, at)).await
                }
            };
            if let Err(e) = written {
                state_now.tail.clear();
                return Err(self
                    .inner
                    .io_error(&e, "write staging file", &self.origin, self.id));
            }
            if staged {
                state_now.tail.commit(piece.len());
            }
        }
        state.present.insert(offset..end);
        state.size = state.size.max(end);
        self.size.store(state.size, Ordering::Release);
        self.advance_stream(&mut state).await;
        Ok(())
    }

    async fn read_at(&self, offset: u64, len: usize) -> BackendResult<Vec<u8>> {
        let mut state = self.state.lock().await;
        self.check_open(&state, "read")?;
        let end = offset.saturating_add(len as u64).min(state.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        self.fill(&mut state, offset, end).await?;
        let want = (end - offset) as usize;
        let data = upload::read_chunk(&self.file, offset, want)
            .await
            .map_err(|e| {
                self.inner
                    .io_error(&e, "read staging file", &self.origin, self.id)
            })?;
        Ok(data.to_vec())
    }

    async fn truncate(&self, size: u64) -> BackendResult<()> {
        let mut state = self.state.lock().await;
        self.check_open(&state, "truncate")?;
        if state.stream.as_ref().is_some_and(|s| size < s.queued) {
            self.abandon_stream(&mut state).await;
        }
        state.tail.truncate(size);
        self.blocking("truncate staging file", move |f| f.set_len(size))
            .await?;
        if size < state.base_limit {
            state.base_limit = size;
        }
        state.present.truncate(size);
        if size > state.size {
            // Extension: zeros, which the sparse staging file already holds.
            let old = state.size;
            state.present.insert(old..size);
        }
        state.size = size;
        self.size.store(size, Ordering::Release);
        Ok(())
    }

    async fn set_attr(&self, changes: &AttrChanges) -> BackendResult<()> {
        let fixed = meta::file(&self.inner, "", 0, SystemTime::now(), "");
        meta::check_fixed_attrs(&self.inner, &fixed, changes, self.id, &self.origin)
    }

    async fn retarget(
        &self,
        old_target: &BackendPath,
        new_target: &BackendPath,
    ) -> BackendResult<()> {
        // The staging file is local: nothing moves. But the base object was
        // renamed (copied) along with the target: follow it, so unfetched
        // ranges come from its new key. A server-side copy may give it a new
        // ETag; the size must match or the base is gone.
        let mut state = self.state.lock().await;
        if old_target != new_target {
            // A multipart upload is bound to its key.
            self.abandon_stream(&mut state).await;
        }
        let Some(base) = &state.base else {
            return Ok(());
        };
        if state.present.covers_prefix(state.base_limit) {
            return Ok(());
        }
        let base_size = base.size;
        let moved = namespace::head_object(&self.inner, self.id, new_target).await?;
        match moved {
            Some(m) if m.size == base_size => {
                let key = self.inner.keys.object(new_target);
                let location = self
                    .inner
                    .store_path(&key, "retarget", new_target, self.id)?;
                state.base = Some(Base {
                    location,
                    key,
                    etag: m.e_tag.unwrap_or_default(),
                    size: base_size,
                });
                Ok(())
            }
            _ => Err(self.inner.error(
                ErrorKind::Stale,
                "retarget",
                new_target,
                self.id,
                "the original object changed while it was being rewritten",
            )),
        }
    }

    /// The object is durable once its upload completes at publish, which
    /// fsync(2) waits for.
    async fn sync(&self) -> BackendResult<()> {
        Ok(())
    }

    async fn publish(&self, target: &BackendPath) -> BackendResult<Metadata> {
        let mut state = self.state.lock().await;
        self.check_open(&state, "publish")?;
        let base_limit = state.base_limit;
        self.fill(&mut state, 0, base_limit).await?;
        let size = state.size;
        self.blocking("truncate staging file", move |f| f.set_len(size))
            .await?;
        let key = self.inner.keys.object(target);
        let location = self.inner.store_path(&key, "publish", target, self.id)?;
        let t = Target {
            path: target,
            key: &key,
            location: &location,
            id: self.id,
            staging_id: &self.staging_id,
        };
        let streamed = match state.stream.take() {
            Some(mut s) if s.key == key && s.queued <= size => {
                let part = self.inner.cfg.options.part_size;
                while s.queued < size {
                    let end = (s.queued + part).min(size);
                    let held = state.tail.take(s.queued, end - s.queued);
                    s.queue(&self.inner, &self.file, held, end, target, self.id);
                }
                match s
                    .complete(&self.inner, target, self.id, &self.staging_id)
                    .await
                {
                    Ok(r) => Some(r),
                    Err(e) => {
                        // Streaming is best effort (see advance_stream): a
                        // part that failed while the application was still
                        // writing (e.g. the server was restarting) must not
                        // fail a publish whose whole content is in the
                        // staging file. Upload that instead; an error that
                        // persists is reported by it. Should the completion
                        // have succeeded unseen, the same bytes are simply
                        // uploaded again.
                        tracing::warn!(error = %e,
                            "streamed upload failed; uploading the staging file instead");
                        s.abort(&self.inner, &self.staging_id).await;
                        None
                    }
                }
            }
            other => {
                if let Some(s) = other {
                    s.abort(&self.inner, &self.staging_id).await;
                }
                None
            }
        };
        let result = match streamed {
            Some(r) => r,
            None => {
                let held = state.tail.take(0, size);
                upload::upload_file(&self.inner, &self.file, held, size, &t).await?
            }
        };
        state.finished = true;
        let _ = std::fs::remove_file(&self.file_path);
        let meta = match result.e_tag {
            Some(etag) => meta::file(&self.inner, &key, size, SystemTime::now(), &etag),
            None => namespace::stat(&self.inner, self.id, target).await?,
        };
        Ok(meta)
    }

    /// The key's number (see `meta::key_id`), for the name the write was
    /// begun under (a rename before the first publish makes another key:
    /// the kernel sees that number once it looks the file up again).
    fn object_id(&self) -> Option<u64> {
        Some(meta::key_id(&self.inner.keys.object(&self.origin)))
    }

    fn describe(&self) -> SuspendedWrite {
        let state = self.state.try_lock();
        let described = Suspended::described(&self.staging_id, state.as_deref().ok());
        serde_json::to_value(described).unwrap_or(serde_json::Value::Null)
    }

    async fn suspend(&self) -> BackendResult<SuspendedWrite> {
        let mut state = self.state.lock().await;
        self.check_open(&state, "suspend")?;
        // A successor cannot continue a multipart upload it knows nothing
        // of: abandon it, publish then uploads the staging file.
        self.abandon_stream(&mut state).await;
        let suspended = Suspended::of_session(&self.staging_id, &state);
        serde_json::to_value(suspended).map_err(|e| {
            self.inner.error(
                ErrorKind::Other,
                "suspend",
                &self.origin,
                self.id,
                e.to_string(),
            )
        })
    }

    async fn abort(&self, _target: &BackendPath) {
        let mut state = self.state.lock().await;
        state.finished = true;
        self.abandon_stream(&mut state).await;
        let _ = std::fs::remove_file(&self.file_path);
    }
}

impl Drop for S3PendingWrite {
    fn drop(&mut self) {
        // Dropped without publish/abort (e.g. the session was discarded).
        let _ = std::fs::remove_file(&self.file_path);
        if let (Some(stream), Ok(rt)) = (
            self.state.get_mut().stream.take(),
            tokio::runtime::Handle::try_current(),
        ) {
            let (inner, staging_id) = (Arc::clone(&self.inner), self.staging_id.clone());
            rt.spawn(async move { stream.abort(&inner, &staging_id).await });
        }
    }
}
