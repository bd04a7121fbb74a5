//! Write sessions: one temporary object per file being written, published
//! atomically under the final name on close/fsync, removed on failure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use crate::backend::{AttrChanges, BackendPath, Identity, Metadata, PendingWrite};

use super::types::{FsError, FsResult};

/// A session held still (see `WriteSession::hold`).
pub struct SessionHold(tokio::sync::OwnedMutexGuard<bool>);

impl std::ops::Deref for SessionHold {
    type Target = bool;
    fn deref(&self) -> &bool {
        &self.0
    }
}

/// The data of a write: lent for the call (written from where it is: a
/// FUSE request's buffer handled in place), or given (a backend that holds
/// data while it is on its way, NFS, keeps it without a copy).
#[derive(Clone)]
pub enum WriteData<'a> {
    Lent(&'a [u8]),
    Given(bytes::Bytes),
}

impl WriteData<'_> {
    pub fn len(&self) -> usize {
        match self {
            WriteData::Lent(d) => d.len(),
            WriteData::Given(d) => d.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct WriteSession {
    pending: Box<dyn PendingWrite>,
    /// Identity the temporary object was created with; publish uses the same
    /// one, whoever closes the file.
    pub identity: Identity,
    /// The final name does not exist in the backend yet.
    new_object: bool,
    orphaned: AtomicBool,
    /// errno of a failed write or truncate: the temporary object then holds
    /// incomplete data and must never be published; every later operation
    /// and the close report this error.
    failed: parking_lot::Mutex<Option<i32>>,
    /// Serialises data operations against publish/abort (and a move of
    /// the file's object under a hidden name against publish: `hold`).
    finished: Arc<tokio::sync::Mutex<bool>>,
    /// Attributes to report while the write is in progress.
    base: parking_lot::Mutex<Metadata>,
    /// Where the temporary object belongs, as of the last path-based call:
    /// used to clean up after the file was unlinked.
    last_target: parking_lot::Mutex<BackendPath>,
    /// utimens received while writing: applied after publish, since the
    /// publish itself sets a new mtime.
    deferred_times: parking_lot::Mutex<AttrChanges>,
    /// This new file was renamed over an existing backend object before its
    /// first publish: the publish replaces it; if the file moves on or is
    /// unlinked first, the object under its name then must be deleted. A
    /// flag, not a path: the object is always under the file's current
    /// name, which a rename of a directory above may have changed.
    replaces_existing: std::sync::atomic::AtomicBool,
}

/// What happened to a session when asked to finish.
pub enum Finished {
    Published(Metadata),
    /// Unlinked while open, or already finished: nothing to publish.
    Nothing,
}

impl WriteSession {
    pub fn new(
        pending: Box<dyn PendingWrite>,
        identity: Identity,
        new_object: bool,
        base: Metadata,
        target: BackendPath,
    ) -> WriteSession {
        WriteSession {
            pending,
            identity,
            new_object,
            orphaned: AtomicBool::new(false),
            failed: parking_lot::Mutex::new(None),
            finished: Arc::new(tokio::sync::Mutex::new(false)),
            base: parking_lot::Mutex::new(base),
            deferred_times: parking_lot::Mutex::new(AttrChanges::default()),
            last_target: parking_lot::Mutex::new(target),
            replaces_existing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// This session as data for another process (see `snapshot`); the
    /// backend makes the temporary object complete first.
    pub async fn export(&self) -> FsResult<super::snapshot::WriteState> {
        let finished = *self.finished.lock().await;
        let pending = if finished {
            serde_json::Value::Null
        } else {
            self.pending.suspend().await?
        };
        Ok(super::snapshot::WriteState {
            pending,
            identity: self.identity,
            new_object: self.new_object,
            orphaned: self.is_orphaned(),
            failed: *self.failed.lock(),
            finished,
            base: self.base.lock().clone(),
            last_target: self.last_target(),
            deferred_times: self.deferred_times.lock().clone(),
            replaces_existing: self
                .replaces_existing
                .load(std::sync::atomic::Ordering::Acquire),
        })
    }

    /// This session as logged when it begins (see `journal`): the backend's
    /// description of the temporary object, nothing flushed.
    pub fn describe(&self) -> super::snapshot::WriteState {
        super::snapshot::WriteState {
            pending: self.pending.describe(),
            identity: self.identity,
            new_object: self.new_object,
            orphaned: false,
            failed: None,
            finished: false,
            base: self.base.lock().clone(),
            last_target: self.last_target(),
            deferred_times: AttrChanges::default(),
            replaces_existing: false,
        }
    }

    /// Finished (published or aborted), seen without waiting for a data
    /// operation in progress (which then counts as not finished).
    pub fn is_finished_now(&self) -> bool {
        self.finished.try_lock().map(|f| *f).unwrap_or(false)
    }

    /// A session exported by another process, over `pending` (resumed by
    /// the backend).
    pub fn restore(pending: Box<dyn PendingWrite>, s: super::snapshot::WriteState) -> WriteSession {
        let mut session =
            WriteSession::new(pending, s.identity, s.new_object, s.base, s.last_target);
        session.orphaned.store(s.orphaned, Ordering::Release);
        *session.failed.lock() = s.failed;
        session.finished = Arc::new(tokio::sync::Mutex::new(s.finished));
        *session.deferred_times.lock() = s.deferred_times;
        session
            .replaces_existing
            .store(s.replaces_existing, std::sync::atomic::Ordering::Release);
        session
    }

    pub fn last_target(&self) -> BackendPath {
        self.last_target.lock().clone()
    }

    pub fn is_new(&self) -> bool {
        self.new_object
    }

    /// The file was unlinked (or replaced) while being written: its data must
    /// never be published.
    pub fn orphan(&self) {
        self.orphaned.store(true, Ordering::Release);
    }

    pub fn is_orphaned(&self) -> bool {
        self.orphaned.load(Ordering::Acquire)
    }

    pub fn attributes(&self) -> Metadata {
        let mut meta = self.base.lock().clone();
        meta.size = self.pending.size();
        meta
    }

    pub fn set_replaced(&self) {
        self.replaces_existing
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether an object under the file's current name was replaced (and
    /// forget it).
    pub fn take_replaced(&self) -> bool {
        self.replaces_existing
            .swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Write at `offset`, or at the end of the data for `None` (O_APPEND,
    /// decided under the session lock so concurrent appends never overlap).
    /// Returns where the data went; `Ok(None)` when the session already
    /// finished and the caller must start a new one.
    pub async fn write(&self, offset: Option<u64>, data: WriteData<'_>) -> FsResult<Option<u64>> {
        let finished = self.finished.lock().await;
        if *finished {
            return Ok(None);
        }
        self.check_not_failed()?;
        let at = offset.unwrap_or_else(|| self.pending.size());
        let result = match data {
            WriteData::Lent(d) => self.pending.write_at(at, d).await,
            WriteData::Given(d) => self.pending.write_bytes(at, d).await,
        };
        self.record(result)?;
        self.touch();
        Ok(Some(at))
    }

    fn check_not_failed(&self) -> FsResult<()> {
        match *self.failed.lock() {
            Some(errno) => Err(FsError::new(errno)),
            None => Ok(()),
        }
    }

    /// Poison the session on a data error, so a partial file is never
    /// published.
    fn record(&self, result: Result<(), crate::backend::BackendError>) -> FsResult<()> {
        result.map_err(|e| {
            let err = FsError::from(e);
            self.failed.lock().get_or_insert(err.errno());
            err
        })
    }

    pub async fn truncate(&self, size: u64) -> FsResult<bool> {
        let finished = self.finished.lock().await;
        if *finished {
            return Ok(false);
        }
        self.check_not_failed()?;
        let result = self.pending.truncate(size).await;
        self.record(result)?;
        self.touch();
        Ok(true)
    }

    /// fallocate(2) on the temporary object (see `CachalotFs::fallocate`).
    /// A refusal (no space, unsupported) leaves the data as it was: the
    /// session stays usable. `Ok(false)`: already finished, start anew.
    pub async fn allocate(&self, offset: u64, len: u64, mode: i32) -> FsResult<bool> {
        let finished = self.finished.lock().await;
        if *finished {
            return Ok(false);
        }
        self.check_not_failed()?;
        self.pending.allocate(offset, len, mode).await?;
        self.touch();
        Ok(true)
    }

    pub async fn read(&self, offset: u64, len: usize) -> FsResult<Option<Vec<u8>>> {
        let finished = self.finished.lock().await;
        if *finished {
            return Ok(None);
        }
        Ok(Some(self.pending.read_at(offset, len).await?))
    }

    pub async fn set_attr(&self, changes: &AttrChanges) -> FsResult<()> {
        let ownership = AttrChanges {
            mode: changes.mode,
            uid: changes.uid,
            gid: changes.gid,
            ..AttrChanges::default()
        };
        if !ownership.is_empty() {
            self.pending.set_attr(&ownership).await?;
        }
        let mut base = self.base.lock();
        if let Some(mode) = changes.mode {
            base.mode = mode & 0o7777;
        }
        if let Some(uid) = changes.uid {
            base.uid = uid;
        }
        if let Some(gid) = changes.gid {
            base.gid = gid;
        }
        if let Some(t) = changes.mtime {
            base.mtime = t;
        }
        if let Some(t) = changes.atime {
            base.atime = t;
        }
        let mut deferred = self.deferred_times.lock();
        deferred.atime = changes.atime.or(deferred.atime);
        deferred.mtime = changes.mtime.or(deferred.mtime);
        Ok(())
    }

    pub fn take_deferred_times(&self) -> AttrChanges {
        std::mem::take(&mut *self.deferred_times.lock())
    }

    pub async fn retarget(&self, old: &BackendPath, new: &BackendPath) -> FsResult<()> {
        let finished = self.finished.lock().await;
        self.retarget_held(&finished, old, new).await
    }

    /// Hold off the publish (and data operations) until the guard drops:
    /// taken by a removal that moves the file's object to a hidden name
    /// (from before the move until it is recorded), and by the publish
    /// itself before it looks up the name to publish under. Otherwise a
    /// publish under the old name could land after the object was linked
    /// away, and the inode would describe a version its hidden name lacks.
    pub async fn hold(&self) -> SessionHold {
        SessionHold(Arc::clone(&self.finished).lock_owned().await)
    }

    /// `retarget` under a `hold`.
    pub async fn retarget_held(
        &self,
        finished: &bool,
        old: &BackendPath,
        new: &BackendPath,
    ) -> FsResult<()> {
        if !*finished {
            self.pending.retarget(old, new).await?;
            *self.last_target.lock() = new.clone();
        }
        Ok(())
    }

    /// fsync(2): make what was written durable, and the publish that
    /// follows too. A failed or finished session has nothing to flush
    /// (`finish` reports the failure).
    pub async fn sync(&self) -> FsResult<()> {
        let finished = self.finished.lock().await;
        if *finished || self.is_orphaned() || self.failed.lock().is_some() {
            return Ok(());
        }
        Ok(self.pending.sync().await?)
    }

    /// Publish under `target` (or discard if orphaned). On failure the
    /// temporary object is removed and the final name is untouched. With
    /// `in_place`, the data is copied into the object at `target` (a file
    /// with several hard links, see `PendingWrite::publish_in_place`).
    pub async fn finish(
        &self,
        hold: &mut SessionHold,
        target: &BackendPath,
        in_place: bool,
    ) -> FsResult<Finished> {
        let finished = &mut *hold.0;
        if *finished {
            return Ok(Finished::Nothing);
        }
        *finished = true;
        if self.is_orphaned() {
            self.pending.abort(target).await;
            return Ok(Finished::Nothing);
        }
        let failed = *self.failed.lock();
        if let Some(errno) = failed {
            self.pending.abort(target).await;
            tracing::warn!(path = %target, errno,
                "a write failed earlier: discarded the temporary file, the final name is untouched");
            return Err(FsError::new(errno));
        }
        let published = match in_place && !self.is_new() {
            true => self.pending.publish_in_place(target).await,
            false => self.pending.publish(target).await,
        };
        match published {
            Ok(meta) => Ok(Finished::Published(meta)),
            Err(e) => {
                self.pending.abort(target).await;
                Err(e.into())
            }
        }
    }

    fn touch(&self) {
        let now = SystemTime::now();
        let mut base = self.base.lock();
        base.mtime = now;
        base.ctime = now;
    }
}
