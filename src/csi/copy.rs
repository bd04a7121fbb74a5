//! Copying a directory tree through the backend API, for snapshots,
//! restores and clones: one implementation for every backend. A file is
//! copied inside the backend where it can (S3: CopyObject), else streamed
//! through here; either way it appears whole under its name, so a reader
//! of the copy never sees half a file. Long copies run as background jobs that a
//! retried request finds again (the CO retries until the copy is done).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::backend::{
    AttrChanges, Backend, BackendPath, BackendResult, ErrorKind, FileKind, Identity, WriteStart,
};

/// Bytes read and written per request.
const CHUNK: usize = 4 << 20;

#[derive(Debug, Default)]
pub struct CopyProgress {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
}

impl CopyProgress {
    pub fn describe(&self) -> String {
        format!(
            "{} files, {} bytes so far",
            self.files.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed)
        )
    }
}

/// Copy the tree at `from` to `to` (created if missing; what is there is
/// overwritten file by file), as `id`, keeping modes and, where the backend
/// stores them, owners. Names for which `skip` is true (at the top of
/// `from`) are left out.
pub async fn copy_tree(
    backend: &dyn Backend,
    id: Identity,
    from: &BackendPath,
    to: &BackendPath,
    skip: &(dyn Fn(&str) -> bool + Sync),
    progress: &CopyProgress,
) -> BackendResult<()> {
    let top = backend.stat(id, from).await?;
    make_dir(backend, id, to, top.mode).await?;
    let mut dirs = vec![(from.clone(), to.clone())];
    while let Some((src, dst)) = dirs.pop() {
        for entry in backend.list(id, &src).await? {
            if src == *from && skip(&entry.name) {
                continue;
            }
            let (s, d) = (src.join(&entry.name)?, dst.join(&entry.name)?);
            match entry.meta.kind {
                FileKind::Directory => {
                    make_dir(backend, id, &d, entry.meta.mode).await?;
                    dirs.push((s, d.clone()));
                }
                FileKind::File if backend.copy_file(id, &s, &d).await? => {
                    progress.files.fetch_add(1, Ordering::Relaxed);
                    progress.bytes.fetch_add(entry.meta.size, Ordering::Relaxed);
                }
                FileKind::File => copy_file(backend, id, &s, &d, entry.meta.mode, progress).await?,
                FileKind::Symlink => {
                    let target = backend.readlink(id, &s).await?;
                    match backend.symlink(id, &d, &target).await {
                        Err(e) if e.kind != ErrorKind::AlreadyExists => return Err(e),
                        _ => {}
                    }
                }
                // FIFOs, sockets, devices: nothing to copy that a volume
                // needs back.
                _ => continue,
            }
            keep_owner(backend, id, &d, entry.meta.uid, entry.meta.gid).await;
        }
    }
    Ok(())
}

async fn make_dir(
    backend: &dyn Backend,
    id: Identity,
    dir: &BackendPath,
    mode: u32,
) -> BackendResult<()> {
    match backend.mkdir(id, dir, mode & 0o7777).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

async fn copy_file(
    backend: &dyn Backend,
    id: Identity,
    from: &BackendPath,
    to: &BackendPath,
    mode: u32,
    progress: &CopyProgress,
) -> BackendResult<()> {
    let reader = backend.open_read(id, from).await?;
    let writer = backend
        .begin_write(id, to, WriteStart::Empty, mode & 0o7777)
        .await?;
    let size = reader.size();
    let mut offset = 0u64;
    let copied: BackendResult<()> = async {
        while offset < size {
            let data = reader.read_at(offset, CHUNK).await?;
            if data.is_empty() {
                break;
            }
            writer.write_at(offset, &data).await?;
            offset += data.len() as u64;
            progress
                .bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }
    .await;
    match copied {
        Ok(()) => {
            writer.publish(to).await?;
            progress.files.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            writer.abort(to).await;
            Err(e)
        }
    }
}

/// The owner of the original, where the backend keeps owners (best effort:
/// S3 stores none, and a squashed identity may not chown).
async fn keep_owner(backend: &dyn Backend, id: Identity, path: &BackendPath, uid: u32, gid: u32) {
    let changes = AttrChanges {
        uid: Some(uid),
        gid: Some(gid),
        ..AttrChanges::default()
    };
    if let Err(e) = backend.set_attr(id, path, &changes).await {
        tracing::debug!(%path, error = %e, "owner not kept in the copy");
    }
}

/// A copy running in the background.
pub struct CopyJob {
    pub progress: CopyProgress,
    outcome: Mutex<Option<Result<(), String>>>,
    finished: tokio::sync::Notify,
}

impl CopyJob {
    /// Wait up to `patience` for the job: `Some(outcome)` once it ended.
    pub async fn wait(&self, patience: Duration) -> Option<Result<(), String>> {
        let notified = self.finished.notified();
        if let Some(done) = self.outcome.lock().clone() {
            return Some(done);
        }
        let _ = tokio::time::timeout(patience, notified).await;
        self.outcome.lock().clone()
    }
}

/// The copies of this process, by what they produce (a snapshot or volume
/// ID); a finished one is forgotten when its outcome is taken.
#[derive(Default)]
pub struct CopyJobs {
    jobs: Mutex<HashMap<String, Arc<CopyJob>>>,
}

impl CopyJobs {
    /// The job for `key`, started with `copy` if none runs.
    pub fn start_or_join<F, Fut>(&self, key: &str, copy: F) -> Arc<CopyJob>
    where
        F: FnOnce(Arc<CopyJob>) -> Fut,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let mut jobs = self.jobs.lock();
        if let Some(job) = jobs.get(key) {
            return Arc::clone(job);
        }
        let job = Arc::new(CopyJob {
            progress: CopyProgress::default(),
            outcome: Mutex::new(None),
            finished: tokio::sync::Notify::new(),
        });
        jobs.insert(key.to_string(), Arc::clone(&job));
        let running = copy(Arc::clone(&job));
        let done = Arc::clone(&job);
        tokio::spawn(async move {
            let outcome = running.await;
            *done.outcome.lock() = Some(outcome);
            done.finished.notify_waiters();
        });
        job
    }

    /// Forget the job for `key` (after its outcome was acted on, so that a
    /// later request starts afresh).
    pub fn forget(&self, key: &str) {
        self.jobs.lock().remove(key);
    }
}
