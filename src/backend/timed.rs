//! A backend wrapped to count and time every request by operation (for the
//! metrics), without the backends or the core knowing: [`Timed::wrap`]
//! returns a `Backend` like any other.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;

use super::{
    AttrChanges, Backend, BackendPath, BackendResult, ByteStream, Capabilities, DirEntry, FsStats,
    Identity, Metadata, ObjectReader, PendingWrite, Resumed, SpecialFile, SuspendedWrite,
    VersionToken, WriteStart,
};

/// Upper bounds of the latency buckets, in seconds (Prometheus `le`).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Backend operations as the metrics name them.
pub const OPS: [&str; 18] = [
    "stat",
    "list",
    "open_read",
    "read",
    "begin_write",
    "mkdir",
    "rmdir",
    "unlink",
    "rename",
    "symlink",
    "readlink",
    "link",
    "mknod",
    "set_attr",
    "statfs",
    "cleanup",
    "resume_write",
    "copy",
];

#[derive(Default)]
pub struct OpStats {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// Total time in microseconds.
    pub micros: AtomicU64,
    /// Requests per latency bucket (not cumulative), plus one above all.
    pub buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
}

impl OpStats {
    fn record(&self, started: Instant, ok: bool) {
        let elapsed = started.elapsed();
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }
}

/// Requests, errors and latencies of one backend, by operation.
#[derive(Default)]
pub struct BackendStats {
    ops: [OpStats; OPS.len()],
}

impl BackendStats {
    /// `(operation, stats)` for every operation.
    pub fn ops(&self) -> impl Iterator<Item = (&'static str, &OpStats)> {
        OPS.iter().copied().zip(self.ops.iter())
    }

    fn op(&self, name: &'static str) -> &OpStats {
        let i = OPS.iter().position(|o| *o == name).unwrap_or(0);
        &self.ops[i]
    }

    async fn time<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = BackendResult<T>>,
    ) -> BackendResult<T> {
        let started = Instant::now();
        let result = call.await;
        self.op(op).record(started, result.is_ok());
        result
    }
}

pub struct Timed {
    inner: Arc<dyn Backend>,
    stats: Arc<BackendStats>,
}

impl Timed {
    /// `inner`, counted and timed into the returned stats.
    pub fn wrap(inner: Arc<dyn Backend>) -> (Arc<dyn Backend>, Arc<BackendStats>) {
        let stats = Arc::new(BackendStats::default());
        let timed = Timed {
            inner,
            stats: Arc::clone(&stats),
        };
        (Arc::new(timed), stats)
    }
}

struct TimedReader {
    inner: Box<dyn ObjectReader>,
    stats: Arc<BackendStats>,
}

#[async_trait]
impl ObjectReader for TimedReader {
    fn version(&self) -> &VersionToken {
        self.inner.version()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    async fn read_at(&self, offset: u64, len: usize) -> BackendResult<bytes::Bytes> {
        self.stats
            .time("read", self.inner.read_at(offset, len))
            .await
    }

    /// Timed like `read_at`: from the request to the stream's last buffer
    /// (or its error); a stream dropped early counts when dropped.
    async fn read_stream(&self, offset: u64, len: usize) -> BackendResult<ByteStream> {
        let started = Instant::now();
        let stream = match self.inner.read_stream(offset, len).await {
            Ok(stream) => stream,
            Err(e) => {
                self.stats.op("read").record(started, false);
                return Err(e);
            }
        };
        let timer = StreamTimer {
            stats: Arc::clone(&self.stats),
            started,
            ok: true,
        };
        Ok(Box::pin(futures::stream::unfold(
            (stream, timer),
            |(mut stream, mut timer)| async move {
                let item = stream.next().await?;
                timer.ok &= item.is_ok();
                Some((item, (stream, timer)))
            },
        )))
    }
}

/// Records one streamed read when its stream is done with.
struct StreamTimer {
    stats: Arc<BackendStats>,
    started: Instant,
    ok: bool,
}

impl Drop for StreamTimer {
    fn drop(&mut self) {
        self.stats.op("read").record(self.started, self.ok);
    }
}

#[async_trait]
impl Backend for Timed {
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
        self.stats.time("stat", self.inner.stat(id, path)).await
    }
    async fn list(&self, id: Identity, path: &BackendPath) -> BackendResult<Vec<DirEntry>> {
        self.stats.time("list", self.inner.list(id, path)).await
    }
    async fn open_read(
        &self,
        id: Identity,
        path: &BackendPath,
    ) -> BackendResult<Box<dyn ObjectReader>> {
        let inner = self
            .stats
            .time("open_read", self.inner.open_read(id, path))
            .await?;
        Ok(Box::new(TimedReader {
            inner,
            stats: Arc::clone(&self.stats),
        }))
    }
    async fn begin_write(
        &self,
        id: Identity,
        path: &BackendPath,
        start: WriteStart,
        create_mode: u32,
    ) -> BackendResult<Box<dyn PendingWrite>> {
        let call = self.inner.begin_write(id, path, start, create_mode);
        self.stats.time("begin_write", call).await
    }
    async fn mkdir(&self, id: Identity, path: &BackendPath, mode: u32) -> BackendResult<Metadata> {
        self.stats
            .time("mkdir", self.inner.mkdir(id, path, mode))
            .await
    }
    async fn rmdir(&self, id: Identity, path: &BackendPath) -> BackendResult<()> {
        self.stats.time("rmdir", self.inner.rmdir(id, path)).await
    }
    async fn unlink(&self, id: Identity, path: &BackendPath) -> BackendResult<()> {
        self.stats.time("unlink", self.inner.unlink(id, path)).await
    }
    async fn rename(
        &self,
        id: Identity,
        from: &BackendPath,
        to: &BackendPath,
        no_replace: bool,
    ) -> BackendResult<()> {
        let call = self.inner.rename(id, from, to, no_replace);
        self.stats.time("rename", call).await
    }
    async fn symlink(
        &self,
        id: Identity,
        path: &BackendPath,
        target: &str,
    ) -> BackendResult<Metadata> {
        let call = self.inner.symlink(id, path, target);
        self.stats.time("symlink", call).await
    }
    async fn readlink(&self, id: Identity, path: &BackendPath) -> BackendResult<String> {
        self.stats
            .time("readlink", self.inner.readlink(id, path))
            .await
    }
    async fn link(
        &self,
        id: Identity,
        existing: &BackendPath,
        new: &BackendPath,
    ) -> BackendResult<Metadata> {
        self.stats
            .time("link", self.inner.link(id, existing, new))
            .await
    }
    async fn mknod(
        &self,
        id: Identity,
        path: &BackendPath,
        node: SpecialFile,
        mode: u32,
    ) -> BackendResult<Metadata> {
        let call = self.inner.mknod(id, path, node, mode);
        self.stats.time("mknod", call).await
    }
    async fn set_attr(
        &self,
        id: Identity,
        path: &BackendPath,
        changes: &AttrChanges,
    ) -> BackendResult<Metadata> {
        let call = self.inner.set_attr(id, path, changes);
        self.stats.time("set_attr", call).await
    }
    async fn statfs(&self, id: Identity) -> BackendResult<FsStats> {
        self.stats.time("statfs", self.inner.statfs(id)).await
    }
    async fn sync(&self, id: Identity, path: &BackendPath) -> BackendResult<()> {
        self.stats.time("sync", self.inner.sync(id, path)).await
    }
    async fn cleanup_stale_temps(&self) -> BackendResult<usize> {
        self.stats
            .time("cleanup", self.inner.cleanup_stale_temps())
            .await
    }
    async fn resume_write(
        &self,
        id: Identity,
        target: &BackendPath,
        state: SuspendedWrite,
    ) -> BackendResult<Resumed> {
        let call = self.inner.resume_write(id, target, state);
        self.stats.time("resume_write", call).await
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
        let call = self.inner.copy_file(id, from, to);
        self.stats.time("copy", call).await
    }
}
