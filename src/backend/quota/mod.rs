//! A volume's byte quota (the CSI capacity, `cachalot mount --capacity`),
//! enforced above any backend: [`Quota::wrap`] returns a `Backend` like any
//! other, and neither the backends nor the core know about it.
//!
//! What counts: the sizes of the volume's files (symlinks and special files
//! count 0; a file with several names counts once per name). Usage is
//! `scanned` (a walk of the volume, repeated in the background so that
//! other nodes' writes are picked up) plus what this process changed since
//! the last walk (published sizes, unlinks) plus the growth of the files
//! being written now. A write, truncate or fallocate that would take usage
//! past the capacity fails with EDQUOT before anything changes, so what
//! was written before stays whole. Until the first walk has finished,
//! usage counts from zero.
//!
//! Several processes (nodes) writing one volume share their changes
//! through small reports in the volume (`shared`): together they can
//! exceed the capacity by what the others write in one report interval
//! (the documented slack), and each one's next walk counts everything.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

mod shared;
pub use shared::{keep_sharing, REPORTS_DIR};

use super::{
    AttrChanges, Backend, BackendError, BackendPath, BackendResult, Capabilities, DirEntry,
    ErrorKind, FileKind, FsStats, Identity, Metadata, ObjectReader, PendingWrite, Resumed,
    SpecialFile, SuspendedWrite, WriteStart,
};

/// The shortest pause between two walks of the volume; longer for volumes
/// whose walk takes long (ten times the walk), so walking stays a small
/// part of the backend's load.
const MIN_RESCAN_PAUSE: Duration = Duration::from_secs(30);

/// Where a volume's usage stands.
#[derive(Debug, Default)]
pub struct QuotaState {
    capacity: AtomicU64,
    /// Bytes found by the last walk.
    scanned: AtomicU64,
    /// Published growth minus unlinked sizes since the last walk.
    changed: AtomicI64,
    /// Growth of the files being written now, above their size at the start.
    writing: AtomicU64,
    walked: AtomicBool,
    /// Every change this process published since it started, never reset
    /// (what its usage report tells the others).
    published: AtomicI64,
    /// When this process first changed the volume (ms since the epoch; 0:
    /// not yet): the others tell from it whether their walks counted it.
    first_change_ms: AtomicU64,
    /// The others' changes on top of the last walk (see `shared`).
    others: parking_lot::Mutex<shared::Others>,
    others_usage: AtomicI64,
    /// Where a changed capacity is kept for the next process serving the
    /// volume (a mounter taking over or recovering it).
    persist: parking_lot::Mutex<Option<PathBuf>>,
}

impl QuotaState {
    pub fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Relaxed)
    }

    /// Bytes in use as far as this process knows.
    pub fn used(&self) -> u64 {
        let known = self.scanned.load(Ordering::Relaxed) as i64
            + self.changed.load(Ordering::Relaxed)
            + self.writing.load(Ordering::Relaxed) as i64
            + self.others_usage.load(Ordering::Relaxed);
        known.max(0) as u64
    }

    /// Whether the first walk of the volume has finished.
    pub fn walked(&self) -> bool {
        self.walked.load(Ordering::Relaxed)
    }

    /// Take `bytes` more for a file being written, or refuse with EDQUOT.
    fn reserve(&self, bytes: u64, path: &str) -> BackendResult<()> {
        let capacity = self.capacity();
        let used = self.used();
        if used.saturating_add(bytes) > capacity {
            return Err(
                BackendError::new(ErrorKind::QuotaExceeded, "write", path).with_cause(format!(
                    "the volume's capacity is {capacity} bytes and {used} are used; \
                     {bytes} more do not fit (delete files or expand the volume)"
                )),
            );
        }
        self.writing.fetch_add(bytes, Ordering::Relaxed);
        self.note_change();
        Ok(())
    }

    fn unreserve(&self, bytes: u64) {
        let _ = self
            .writing
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some(w.saturating_sub(bytes))
            });
    }

    fn changed_by(&self, bytes: i64) {
        self.changed.fetch_add(bytes, Ordering::Relaxed);
        self.published.fetch_add(bytes, Ordering::Relaxed);
        self.note_change();
    }

    fn note_change(&self) {
        if self.first_change_ms.load(Ordering::Relaxed) == 0 {
            let _ = self.first_change_ms.compare_exchange(
                0,
                shared::now_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// A new capacity (an expansion), kept for the next process.
    pub fn set_capacity(&self, bytes: u64) -> std::io::Result<()> {
        self.capacity.store(bytes, Ordering::Relaxed);
        if let Some(file) = self.persist.lock().as_ref() {
            write_capacity_file(file, bytes)?;
        }
        Ok(())
    }
}

/// The capacity kept in `file` by a previous process serving the volume,
/// if any (it wins over the one the volume was created with: an expansion).
pub fn kept_capacity(file: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn write_capacity_file(file: &std::path::Path, bytes: u64) -> std::io::Result<()> {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, bytes.to_string())?;
    std::fs::rename(&tmp, file)
}

pub struct Quota {
    inner: Arc<dyn Backend>,
    state: Arc<QuotaState>,
}

impl Quota {
    /// `inner` with a quota of `capacity` bytes; a changed capacity is kept
    /// in `persist` (a file). Start [`keep_walking`] to measure usage.
    pub fn wrap(
        inner: Arc<dyn Backend>,
        capacity: u64,
        persist: Option<PathBuf>,
    ) -> (Arc<dyn Backend>, Arc<QuotaState>) {
        let state = Arc::new(QuotaState::default());
        state.capacity.store(capacity, Ordering::Relaxed);
        *state.persist.lock() = persist;
        let quota = Quota {
            inner,
            state: Arc::clone(&state),
        };
        (Arc::new(quota), state)
    }

    fn watch(&self, inner: Box<dyn PendingWrite>, replaced: u64) -> Box<dyn PendingWrite> {
        let base = inner.size();
        Box::new(QuotaWrite {
            inner,
            state: Arc::clone(&self.state),
            base,
            replaced,
            grown: AtomicU64::new(0),
        })
    }

    /// Size of the file at `path` before a change replaces or removes it
    /// (0 when there is none or it is no regular file).
    async fn size_of(&self, id: Identity, path: &BackendPath) -> u64 {
        match self.inner.stat(id, path).await {
            Ok(m) if m.kind == FileKind::File => m.size,
            _ => 0,
        }
    }
}

/// Walk the volume now and again, as `id`, for as long as the volume is
/// mounted (the backend lives).
pub async fn keep_walking(
    backend: std::sync::Weak<dyn Backend>,
    state: Arc<QuotaState>,
    id: Identity,
) {
    let state = Arc::downgrade(&state);
    loop {
        let started = Instant::now();
        let Some(s) = state.upgrade() else { return };
        let changed_before = s.changed.load(Ordering::Relaxed);
        s.others.lock().walk_started(shared::now_ms());
        drop(s);
        let Some(b) = backend.upgrade() else { return };
        let walked = walk(b.as_ref(), id).await;
        drop(b);
        let took = started.elapsed();
        let Some(s) = state.upgrade() else { return };
        match walked {
            Ok(bytes) => {
                s.scanned.store(bytes, Ordering::Relaxed);
                // Changes made during the walk may be counted twice until
                // the next one: usage errs on the full side.
                s.changed.fetch_sub(changed_before, Ordering::Relaxed);
                let mut others = s.others.lock();
                others.walk_taken();
                s.others_usage
                    .store(others.usage(shared::now_ms()), Ordering::Relaxed);
                drop(others);
                if !s.walked.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        used = bytes,
                        capacity = s.capacity(),
                        seconds = took.as_secs_f64(),
                        "measured the volume's usage"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not measure the volume's usage; trying again later")
            }
        }
        drop(s);
        tokio::time::sleep(MIN_RESCAN_PAUSE.max(took * 10)).await;
    }
}

/// Total size of the regular files below the root.
async fn walk(backend: &dyn Backend, id: Identity) -> BackendResult<u64> {
    let mut total = 0u64;
    let mut dirs = vec![BackendPath::root()];
    while let Some(dir) = dirs.pop() {
        let entries = match backend.list(id, &dir).await {
            Ok(entries) => entries,
            // Removed while walking.
            Err(e) if e.kind == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for DirEntry { name, meta } in entries {
            match meta.kind {
                FileKind::File => total = total.saturating_add(meta.size),
                FileKind::Directory => dirs.push(dir.join(&name)?),
                _ => {}
            }
        }
    }
    Ok(total)
}

/// A file being written: its growth above the size it started with is
/// reserved before each change that makes it larger.
struct QuotaWrite {
    inner: Box<dyn PendingWrite>,
    state: Arc<QuotaState>,
    /// Size of the temporary object at the start.
    base: u64,
    /// Size of the file the publish replaces.
    replaced: u64,
    /// Bytes reserved so far (the largest size reached above `base`).
    grown: AtomicU64,
}

impl QuotaWrite {
    /// Reserve what growing to `size` takes; returns what was reserved, to
    /// be given back if the change fails.
    fn grow_to(&self, size: u64) -> BackendResult<u64> {
        let grown = self.grown.load(Ordering::Relaxed);
        let need = size.saturating_sub(self.base).saturating_sub(grown);
        if need > 0 {
            self.state.reserve(need, "")?;
            self.grown.fetch_add(need, Ordering::Relaxed);
        }
        Ok(need)
    }

    fn give_back(&self, bytes: u64) {
        if bytes > 0 {
            self.grown.fetch_sub(bytes, Ordering::Relaxed);
            self.state.unreserve(bytes);
        }
    }

    /// Run `write` (of data ending at `end`) once the quota has room for
    /// the file's growth; give the room back if it fails.
    async fn write_within(
        &self,
        end: u64,
        write: impl std::future::Future<Output = BackendResult<()>>,
    ) -> BackendResult<()> {
        let taken = self.grow_to(end.max(self.inner.size()))?;
        let done = write.await;
        if done.is_err() {
            self.give_back(taken);
        }
        done
    }

    /// The session ended: its reservation becomes the published change, or
    /// nothing.
    fn settle(&self, published: Option<u64>) {
        self.state.unreserve(self.grown.swap(0, Ordering::Relaxed));
        if let Some(size) = published {
            self.state.changed_by(size as i64 - self.replaced as i64);
        }
    }
}

#[async_trait]
impl PendingWrite for QuotaWrite {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    async fn write_at(&self, offset: u64, data: &[u8]) -> BackendResult<()> {
        let end = offset.saturating_add(data.len() as u64);
        self.write_within(end, self.inner.write_at(offset, data))
            .await
    }
    async fn write_bytes(&self, offset: u64, data: bytes::Bytes) -> BackendResult<()> {
        let end = offset.saturating_add(data.len() as u64);
        self.write_within(end, self.inner.write_bytes(offset, data))
            .await
    }
    async fn read_at(&self, offset: u64, len: usize) -> BackendResult<Vec<u8>> {
        self.inner.read_at(offset, len).await
    }
    async fn truncate(&self, size: u64) -> BackendResult<()> {
        let taken = self.grow_to(size)?;
        let done = self.inner.truncate(size).await;
        match &done {
            Err(_) => self.give_back(taken),
            Ok(()) => {
                // Shrinking gives back what the file no longer holds.
                let above = size.saturating_sub(self.base);
                let grown = self.grown.load(Ordering::Relaxed);
                self.give_back(grown.saturating_sub(above));
            }
        }
        done
    }
    async fn set_attr(&self, changes: &AttrChanges) -> BackendResult<()> {
        self.inner.set_attr(changes).await
    }
    async fn retarget(&self, old: &BackendPath, new: &BackendPath) -> BackendResult<()> {
        self.inner.retarget(old, new).await
    }
    async fn sync(&self) -> BackendResult<()> {
        self.inner.sync().await
    }
    async fn publish(&self, target: &BackendPath) -> BackendResult<Metadata> {
        let meta = self.inner.publish(target).await?;
        self.settle(Some(meta.size));
        Ok(meta)
    }
    async fn publish_in_place(&self, target: &BackendPath) -> BackendResult<Metadata> {
        let meta = self.inner.publish_in_place(target).await?;
        self.settle(Some(meta.size));
        Ok(meta)
    }
    async fn allocate(&self, offset: u64, len: u64, mode: i32) -> BackendResult<()> {
        let extends = mode & libc::FALLOC_FL_KEEP_SIZE == 0;
        let taken = match extends {
            true => self.grow_to(offset.saturating_add(len).max(self.inner.size()))?,
            false => 0,
        };
        let done = self.inner.allocate(offset, len, mode).await;
        if done.is_err() {
            self.give_back(taken);
        }
        done
    }
    fn object_id(&self) -> Option<u64> {
        self.inner.object_id()
    }
    async fn abort(&self, target: &BackendPath) {
        self.inner.abort(target).await;
        self.settle(None);
    }
    async fn suspend(&self) -> BackendResult<SuspendedWrite> {
        self.inner.suspend().await
    }
    fn describe(&self) -> SuspendedWrite {
        self.inner.describe()
    }
}

#[async_trait]
impl Backend for Quota {
    fn describe(&self) -> &str {
        self.inner.describe()
    }
    fn cache_identity(&self) -> &str {
        self.inner.cache_identity()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn stat(&self, id: Identity, path: &BackendPath) -> BackendResult<Metadata> {
        self.inner.stat(id, path).await
    }
    async fn list(&self, id: Identity, path: &BackendPath) -> BackendResult<Vec<DirEntry>> {
        self.inner.list(id, path).await
    }
    async fn open_read(
        &self,
        id: Identity,
        path: &BackendPath,
    ) -> BackendResult<Box<dyn ObjectReader>> {
        self.inner.open_read(id, path).await
    }
    async fn begin_write(
        &self,
        id: Identity,
        path: &BackendPath,
        start: WriteStart,
        create_mode: u32,
    ) -> BackendResult<Box<dyn PendingWrite>> {
        let replaced = self.size_of(id, path).await;
        let inner = self.inner.begin_write(id, path, start, create_mode).await?;
        Ok(self.watch(inner, replaced))
    }
    async fn mkdir(&self, id: Identity, path: &BackendPath, mode: u32) -> BackendResult<Metadata> {
        self.inner.mkdir(id, path, mode).await
    }
    async fn rmdir(&self, id: Identity, path: &BackendPath) -> BackendResult<()> {
        self.inner.rmdir(id, path).await
    }
    async fn unlink(&self, id: Identity, path: &BackendPath) -> BackendResult<()> {
        let size = self.size_of(id, path).await;
        self.inner.unlink(id, path).await?;
        self.state.changed_by(-(size as i64));
        Ok(())
    }
    async fn rename(
        &self,
        id: Identity,
        from: &BackendPath,
        to: &BackendPath,
        no_replace: bool,
    ) -> BackendResult<()> {
        let replaced = match no_replace {
            true => 0,
            false => self.size_of(id, to).await,
        };
        self.inner.rename(id, from, to, no_replace).await?;
        self.state.changed_by(-(replaced as i64));
        Ok(())
    }
    async fn symlink(
        &self,
        id: Identity,
        path: &BackendPath,
        target: &str,
    ) -> BackendResult<Metadata> {
        self.inner.symlink(id, path, target).await
    }
    async fn readlink(&self, id: Identity, path: &BackendPath) -> BackendResult<String> {
        self.inner.readlink(id, path).await
    }
    async fn link(
        &self,
        id: Identity,
        existing: &BackendPath,
        new: &BackendPath,
    ) -> BackendResult<Metadata> {
        let meta = self.inner.link(id, existing, new).await?;
        if meta.kind == FileKind::File {
            self.state.changed_by(meta.size as i64);
        }
        Ok(meta)
    }
    async fn mknod(
        &self,
        id: Identity,
        path: &BackendPath,
        node: SpecialFile,
        mode: u32,
    ) -> BackendResult<Metadata> {
        self.inner.mknod(id, path, node, mode).await
    }
    async fn set_attr(
        &self,
        id: Identity,
        path: &BackendPath,
        changes: &AttrChanges,
    ) -> BackendResult<Metadata> {
        self.inner.set_attr(id, path, changes).await
    }
    /// The volume as `df` should see it: the capacity, what is used of it,
    /// and what is left (no more than the backend itself has left).
    async fn sync(&self, id: Identity, path: &BackendPath) -> BackendResult<()> {
        self.inner.sync(id, path).await
    }
    async fn statfs(&self, id: Identity) -> BackendResult<FsStats> {
        let mut stats = self.inner.statfs(id).await?;
        let block = u64::from(stats.block_size.max(1));
        let capacity = self.state.capacity();
        let left = capacity.saturating_sub(self.state.used()) / block;
        stats.blocks = capacity / block;
        stats.blocks_free = left.min(stats.blocks_free);
        stats.blocks_available = left.min(stats.blocks_available);
        Ok(stats)
    }
    async fn cleanup_stale_temps(&self) -> BackendResult<usize> {
        self.inner.cleanup_stale_temps().await
    }
    async fn resume_write(
        &self,
        id: Identity,
        target: &BackendPath,
        state: SuspendedWrite,
    ) -> BackendResult<Resumed> {
        let replaced = self.size_of(id, target).await;
        match self.inner.resume_write(id, target, state).await? {
            Resumed::Pending(inner) => Ok(Resumed::Pending(self.watch(inner, replaced))),
            Resumed::Published => Ok(Resumed::Published),
        }
    }
    async fn preflight(&self, id: Identity) -> BackendResult<()> {
        self.inner.preflight(id).await
    }
    async fn copy_file(
        &self,
        id: Identity,
        from: &BackendPath,
        to: &BackendPath,
    ) -> BackendResult<bool> {
        let (size, replaced) = (self.size_of(id, from).await, self.size_of(id, to).await);
        if size > replaced {
            self.state.reserve(size - replaced, &to.to_string())?;
            self.state.unreserve(size - replaced);
        }
        let copied = self.inner.copy_file(id, from, to).await?;
        if copied {
            self.state.changed_by(size as i64 - replaced as i64);
        }
        Ok(copied)
    }
    async fn set_capacity(&self, bytes: u64) -> BackendResult<()> {
        self.state.set_capacity(bytes).map_err(|e| {
            BackendError::new(ErrorKind::Other, "keep the capacity", "").with_cause(e.to_string())
        })
    }
}
