//! The filesystem's state as data: what a successor process needs to go on
//! answering the kernel, which knows our inode numbers, lookup counts and
//! file handles (the mounter's live takeover). Taken while no request is
//! being answered (the FUSE adapter's gate is closed), restored before the
//! successor reads its first request. Metadata is restored as expired, and
//! backend readers are opened again on demand; write sessions are suspended
//! by their backend (temporary object made complete) and resumed by the
//! successor's.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::backend::Resumed;
use crate::backend::{
    AttrChanges, Backend, BackendError, BackendPath, BackendResult, ErrorKind, FileKind, Identity,
    Metadata, PendingWrite, SuspendedWrite, VersionToken,
};
use crate::cache::VolumeCache;

use super::dir::DirHandle;
use super::inode::InodeTable;
use super::read::FileHandle;
use super::types::{FsConfig, FsResult, ListedEntry};
use super::write::WriteSession;
use super::{CachalotFs, Handle};

/// Bumped on any incompatible change of the types below.
pub const SNAPSHOT_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
pub struct FsSnapshot {
    pub version: u32,
    pub next_ino: u64,
    pub next_fh: u64,
    pub passthrough_active: bool,
    pub inodes: Vec<InodeState>,
    pub handles: Vec<HandleState>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct InodeState {
    pub ino: u64,
    pub parent: u64,
    pub name: String,
    pub kind: FileKind,
    pub meta: Option<Metadata>,
    pub nlookup: u64,
    pub writers: u32,
    pub open_handles: u32,
    pub closing: u32,
    pub passthrough_opens: u32,
    /// Absent from a predecessor of an older version.
    #[serde(default)]
    pub passthrough_version: Option<VersionToken>,
    pub last_open_version: Option<VersionToken>,
    pub unlinked: bool,
    pub attached: bool,
    pub hidden: bool,
    pub superseded: bool,
    pub write: Option<WriteState>,
    /// Other names of the object (hard links); see `Inode::links`.
    #[serde(default)]
    pub links: Vec<(u64, String)>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WriteState {
    /// The backend's description of the temporary object.
    pub pending: SuspendedWrite,
    pub identity: Identity,
    pub new_object: bool,
    pub orphaned: bool,
    pub failed: Option<i32>,
    pub finished: bool,
    pub base: Metadata,
    pub last_target: BackendPath,
    pub deferred_times: AttrChanges,
    pub replaces_existing: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HandleState {
    File {
        fh: u64,
        ino: u64,
        writable: bool,
        append: bool,
        opener: u32,
        passthrough: bool,
        closed_by_opener: bool,
        identity: Identity,
        path: BackendPath,
        version: VersionToken,
        followed: Option<VersionToken>,
        size: u64,
    },
    Dir {
        fh: u64,
        ino: u64,
        entries: Vec<ListedEntry>,
    },
}

impl CachalotFs {
    /// The state as data. Only while no request is being answered: the
    /// caller closed the adapter's gate and waited for it to drain.
    pub async fn snapshot(&self) -> FsResult<FsSnapshot> {
        let sessions: Vec<(u64, Arc<WriteSession>)> = {
            let table = self.inodes.lock();
            let (states, _) = table.export();
            states
                .iter()
                .filter_map(|s| {
                    let write = table.get(s.ino).ok()?.write.clone()?;
                    Some((s.ino, write))
                })
                .collect()
        };
        let mut writes = std::collections::HashMap::new();
        for (ino, session) in sessions {
            writes.insert(ino, session.export().await?);
        }
        let (mut inodes, next_ino) = self.inodes.lock().export();
        for inode in &mut inodes {
            inode.write = writes.remove(&inode.ino);
        }
        let handles = self.export_handles();
        Ok(FsSnapshot {
            version: SNAPSHOT_VERSION,
            next_ino,
            next_fh: self.next_fh.load(Ordering::Acquire),
            passthrough_active: self.passthrough_active(),
            inodes,
            handles,
        })
    }

    fn export_handles(&self) -> Vec<HandleState> {
        self.handles
            .lock()
            .iter()
            .map(|(fh, h)| match h {
                Handle::File(f) => {
                    let view = f.view.lock().clone();
                    HandleState::File {
                        fh: *fh,
                        ino: f.ino,
                        writable: f.writable,
                        append: f.append,
                        opener: f.opener,
                        passthrough: f.passthrough.load(Ordering::Acquire),
                        closed_by_opener: f.closed_by_opener.load(Ordering::Acquire),
                        identity: f.identity,
                        path: view.path,
                        version: view.version,
                        followed: f.followed.lock().clone(),
                        size: f.size.load(Ordering::Acquire),
                    }
                }
                Handle::Dir(d) => HandleState::Dir {
                    fh: *fh,
                    ino: d.ino,
                    entries: d.entries().unwrap_or_default().to_vec(),
                },
            })
            .collect()
    }

    /// The state as the journal starts from it (see `journal`): write
    /// sessions as described at their begin, nothing flushed. While no
    /// request is answered yet (a session being resumed).
    pub fn journal_base(&self) -> FsSnapshot {
        let table = self.inodes.lock();
        let (mut inodes, next_ino) = table.export();
        for inode in &mut inodes {
            // Metadata changes are not journaled: what is known now would
            // be stale after a crash (an open file's old version would make
            // its republished name look replaced behind the mount). A
            // recovered inode fetches its metadata afresh.
            inode.meta = None;
            inode.last_open_version = None;
            inode.write = table
                .get(inode.ino)
                .ok()
                .and_then(|i| i.write.as_ref())
                .filter(|w| !w.is_finished_now())
                .map(|w| w.describe());
        }
        drop(table);
        FsSnapshot {
            version: SNAPSHOT_VERSION,
            next_ino,
            next_fh: self.next_fh.load(Ordering::Acquire),
            passthrough_active: self.passthrough_active(),
            inodes,
            handles: self.export_handles(),
        }
    }

    /// The filesystem another process exported. Write sessions whose
    /// temporary object cannot be resumed fail their writes and close with
    /// EIO (logged with the path) instead of losing data silently.
    pub async fn restore(
        backend: Arc<dyn Backend>,
        cache: Arc<VolumeCache>,
        cfg: FsConfig,
        snapshot: FsSnapshot,
    ) -> Result<CachalotFs, BackendError> {
        let invalid = |why: String| {
            BackendError::new(ErrorKind::InvalidArgument, "restore state", "")
                .with_backend(backend.describe())
                .with_cause(why)
        };
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(invalid(format!(
                "state version {} (this process reads {SNAPSHOT_VERSION})",
                snapshot.version
            )));
        }
        let fs = CachalotFs::new(Arc::clone(&backend), cache, cfg).await?;
        let mut states = Vec::with_capacity(snapshot.inodes.len());
        for mut inode in snapshot.inodes {
            let write = match inode.write.take() {
                Some(w) => Some(Arc::new(resume_write(backend.as_ref(), w).await)),
                None => None,
            };
            states.push((inode, write));
        }
        let table = InodeTable::restore(states, snapshot.next_ino).map_err(invalid)?;
        let mut handles = std::collections::HashMap::new();
        for h in snapshot.handles {
            let (fh, handle) = match h {
                HandleState::File {
                    fh,
                    ino,
                    writable,
                    append,
                    opener,
                    passthrough,
                    closed_by_opener,
                    identity,
                    path,
                    version,
                    followed,
                    size,
                } => {
                    let f = FileHandle::new(
                        ino, writable, append, path, version, identity, size, opener,
                    );
                    f.passthrough.store(passthrough, Ordering::Release);
                    f.closed_by_opener
                        .store(closed_by_opener, Ordering::Release);
                    *f.followed.lock() = followed;
                    (fh, Handle::File(Arc::new(f)))
                }
                // Without a listing (from the journal, or never read): taken
                // at its first readdir (its offsets were into the old one;
                // close enough).
                HandleState::Dir { fh, ino, entries } => {
                    let entries = Some(entries).filter(|e| !e.is_empty());
                    (fh, Handle::Dir(Arc::new(DirHandle::new(ino, entries))))
                }
            };
            if fh >= snapshot.next_fh {
                return Err(invalid(format!(
                    "handle {fh} beyond next {}",
                    snapshot.next_fh
                )));
            }
            handles.insert(fh, handle);
        }
        *fs.inodes.lock() = table;
        *fs.handles.lock() = handles;
        fs.next_fh.store(snapshot.next_fh, Ordering::Release);
        if snapshot.passthrough_active {
            fs.activate_passthrough();
        }
        Ok(fs)
    }
}

async fn resume_write(backend: &dyn Backend, mut w: WriteState) -> WriteSession {
    let resumed = if w.finished {
        Ok(Resumed::Published)
    } else {
        backend
            .resume_write(w.identity, &w.last_target, w.pending.clone())
            .await
    };
    match resumed {
        Ok(Resumed::Pending(pending)) => WriteSession::restore(pending, w),
        Ok(Resumed::Published) => {
            // Finished, or published by the process that died before it
            // could say so: the re-sent close finds nothing to publish.
            w.finished = true;
            let done = LostWrite::boxed(ErrorKind::Other, &w);
            WriteSession::restore(done, w)
        }
        Err(e) => {
            // The unpublished data is lost. A permission or space problem
            // keeps its errno; for a temporary object that vanished no
            // errno says more than EIO.
            let kind = match e.kind {
                ErrorKind::NotFound => ErrorKind::Other,
                kind => kind,
            };
            tracing::error!(error = %e, path = w.last_target.as_str(), errno = kind.errno(), "a write in progress could not be taken over: its writes and close fail");
            w.failed = Some(kind.errno());
            let lost = LostWrite::boxed(kind, &w);
            WriteSession::restore(lost, w)
        }
    }
}

/// Stands in for a write session whose temporary object could not be taken
/// over (or needs none any more): every operation fails with `kind`.
struct LostWrite {
    kind: ErrorKind,
    path: String,
}

impl LostWrite {
    fn boxed(kind: ErrorKind, w: &WriteState) -> Box<dyn PendingWrite> {
        Box::new(LostWrite {
            kind,
            path: w.last_target.as_str().to_string(),
        })
    }

    fn fail<T>(&self) -> BackendResult<T> {
        Err(
            BackendError::new(self.kind, "resume write", self.path.clone())
                .with_cause("the write in progress was lost at a takeover"),
        )
    }
}

#[async_trait]
impl PendingWrite for LostWrite {
    fn size(&self) -> u64 {
        0
    }
    async fn write_at(&self, _offset: u64, _data: &[u8]) -> BackendResult<()> {
        self.fail()
    }
    async fn read_at(&self, _offset: u64, _len: usize) -> BackendResult<Vec<u8>> {
        self.fail()
    }
    async fn truncate(&self, _size: u64) -> BackendResult<()> {
        self.fail()
    }
    async fn set_attr(&self, _changes: &AttrChanges) -> BackendResult<()> {
        self.fail()
    }
    async fn retarget(&self, _old: &BackendPath, _new: &BackendPath) -> BackendResult<()> {
        self.fail()
    }
    async fn sync(&self) -> BackendResult<()> {
        self.fail()
    }
    async fn publish(&self, _target: &BackendPath) -> BackendResult<Metadata> {
        self.fail()
    }
    async fn abort(&self, _target: &BackendPath) {}
    fn describe(&self) -> SuspendedWrite {
        SuspendedWrite::Null
    }
    async fn suspend(&self) -> BackendResult<SuspendedWrite> {
        self.fail()
    }
}
