//! The atomic write path: a hidden temp file next to the target, written
//! UNSTABLE and COMMITted (or FILE_SYNC), then RENAMEd onto the final name.
//!
//! Unstable data lives only in the server's memory until COMMIT. The server
//! signals a restart by a new write verifier; we therefore keep every
//! unstable write since the last good COMMIT (bounded by `COMMIT_EVERY`) and
//! re-send it with FILE_SYNC when the verifier changes. Publishing commits
//! first, so a renamed file is always complete and durable.
//!
//! This module holds a write's state (`NfsPendingWrite`) and its
//! `PendingWrite` methods; its parts:
//! - `calls`: the single NFS calls (CREATE, REMOVE, RENAME, SETATTR), safe
//!   to re-send;
//! - `session`: begin (copy-on-write) and resume (a suspended write);
//! - `unstable`: UNSTABLE writes, their log, COMMIT and re-sending;
//! - `send`: one WRITE, its data sent from the caller's buffer;
//! - `pipeline`: several UNSTABLE WRITEs in flight, and their replies;
//! - `spill`: what those WRITEs carry, on local disk until answered, for a
//!   successor after a crash;
//! - `in_place`: publishing by writing into the file itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use nfs3_types::nfs3::{
    createhow3, fattr3, nfs_fh3, nfsstat3, sattr3, stable_how, writeverf3, COMMIT3args, COMMIT3res,
    CREATE3args, CREATE3res, Nfs3Option, Nfs3Result, READ3args, READ3res, REMOVE3args, REMOVE3res,
    RENAME3args, RENAME3res, SETATTR3args, SETATTR3res, WRITE3res, NFS_PROGRAM,
};

use super::attrs;
use super::errors::Ctx;
use super::read::NfsReader;
use super::volume::{dirop, Volume};
use crate::backend::{
    AttrChanges, BackendPath, BackendResult, ErrorKind, Identity, Metadata, ObjectReader,
    PendingWrite, SuspendedWrite, WriteStart,
};

mod calls;
mod in_place;
mod pipeline;
mod send;
mod session;
mod spill;
mod unstable;

use send::write_once;
use unstable::write_stable;

pub use calls::{create_file, remove_name, rename_known, setattr};
pub use session::{begin, resume};

/// Unstable bytes kept for a possible re-send before we force a COMMIT.
const COMMIT_EVERY: usize = 16 << 20;

/// Copy-on-write reads of the existing object go in chunks of this size.
const COPY_CHUNK: usize = 1 << 20;

enum Logged {
    /// Shared with the WRITE in flight that sends it.
    Write {
        offset: u64,
        data: bytes::Bytes,
    },
    Truncate(u64),
}

#[derive(Default)]
struct State {
    /// Unstable operations since the last COMMIT whose verifier matched.
    log: Vec<Logged>,
    log_bytes: usize,
    /// Verifier of the server instance that holds the logged writes.
    verf: Option<writeverf3>,
    /// Mode and owner to give the file at publish. The temp file stays 0600
    /// and ours while written: NFS checks permissions on every WRITE, so a
    /// read-only final mode must not apply before the data is in.
    mode: u32,
    owner: Option<(Option<u32>, Option<u32>)>,
    /// UNSTABLE WRITEs sent and not yet answered.
    in_flight: pipeline::InFlight,
    /// A WRITE failed: the temp file may lack data, so every later call
    /// fails too (with this kind and cause) until the write is aborted.
    failed: Option<(ErrorKind, String)>,
    /// Pieces answered to the kernel before the server answered us; none
    /// where no successor resumes after a crash.
    spill: Option<spill::Spill>,
}

impl State {
    /// The write is over or handed over committed: its spill is of no use.
    fn end_spill(&mut self) {
        if let Some(s) = self.spill.as_mut() {
            s.remove();
        }
    }
}

pub struct NfsPendingWrite {
    vol: Arc<Volume>,
    id: Identity,
    temp_name: String,
    fh: nfs_fh3,
    fileid: u64,
    size: AtomicU64,
    state: tokio::sync::Mutex<State>,
    /// Published or aborted: the temp file no longer belongs to us.
    finished: AtomicBool,
}

/// What `suspend` hands to another process.
#[derive(serde::Serialize, serde::Deserialize)]
struct Suspended {
    temp_name: String,
    /// The temp file's fileid: the target is it once published.
    #[serde(default)]
    fileid: Option<u64>,
    /// Absent when described at begin (after a crash): measured.
    size: Option<u64>,
    mode: u32,
    owner: Option<(Option<u32>, Option<u32>)>,
}

impl NfsPendingWrite {
    fn temp_path(&self) -> BackendPath {
        BackendPath::parse(&self.temp_name).unwrap_or_default()
    }
}

#[async_trait]
impl PendingWrite for NfsPendingWrite {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> BackendResult<()> {
        self.write_bytes(offset, bytes::Bytes::copy_from_slice(data))
            .await
    }

    /// The data stays in the log and in the WRITEs in flight as it is.
    async fn write_bytes(&self, offset: u64, data: bytes::Bytes) -> BackendResult<()> {
        let mut st = self.state.lock().await;
        let end = offset + data.len() as u64;
        self.write_locked(&mut st, offset, data).await?;
        self.size.fetch_max(end, Ordering::AcqRel);
        Ok(())
    }

    async fn read_at(&self, offset: u64, len: usize) -> BackendResult<Vec<u8>> {
        let mut st = self.state.lock().await;
        // Never serve data the server may have lost in a restart.
        self.commit_locked(&mut st).await?;
        self.read_locked(offset, len).await
    }

    async fn truncate(&self, size: u64) -> BackendResult<()> {
        let mut st = self.state.lock().await;
        // After the writes it follows, on the server too.
        self.settle(&mut st, 0).await?;
        let temp = self.temp_path();
        let ctx = self.vol.ctx("truncate temp file", &temp, self.id);
        setattr(&self.vol, &ctx, &self.fh, attrs::size_only(size)).await?;
        if !st.log.is_empty() {
            st.log.push(Logged::Truncate(size));
        }
        self.size.store(size, Ordering::Release);
        Ok(())
    }

    async fn set_attr(&self, changes: &AttrChanges) -> BackendResult<()> {
        let mut st = self.state.lock().await;
        if let Some(mode) = changes.mode {
            st.mode = mode & 0o7777;
        }
        if changes.uid.is_some() || changes.gid.is_some() {
            let (old_uid, old_gid) = st.owner.unwrap_or((None, None));
            st.owner = Some((changes.uid.or(old_uid), changes.gid.or(old_gid)));
        }
        Ok(())
    }

    fn describe(&self) -> SuspendedWrite {
        // At begin nobody holds the state: mode and owner are the initial ones.
        let (mode, owner) = match self.state.try_lock() {
            Ok(st) => (st.mode, st.owner),
            Err(_) => (0o644, None),
        };
        serde_json::to_value(Suspended {
            temp_name: self.temp_name.clone(),
            fileid: Some(self.fileid),
            size: None,
            mode,
            owner,
        })
        .unwrap_or(serde_json::Value::Null)
    }

    async fn suspend(&self) -> BackendResult<SuspendedWrite> {
        // Committed: the successor starts without a log of unstable writes.
        let mut st = self.state.lock().await;
        self.commit_locked(&mut st).await?;
        st.log.clear();
        st.log_bytes = 0;
        st.end_spill();
        serde_json::to_value(Suspended {
            temp_name: self.temp_name.clone(),
            fileid: Some(self.fileid),
            size: Some(self.size()),
            mode: st.mode,
            owner: st.owner,
        })
        .map_err(|e| {
            let temp = self.temp_path();
            self.vol
                .ctx("suspend temp file", &temp, self.id)
                .err(ErrorKind::Other, e.to_string())
        })
    }

    async fn retarget(
        &self,
        old_target: &BackendPath,
        new_target: &BackendPath,
    ) -> BackendResult<()> {
        if old_target.parent() == new_target.parent() {
            return Ok(());
        }
        let _st = self.state.lock().await;
        let ctx = self.vol.ctx("move temp file", new_target, self.id);
        let from = self.vol.dir_fh(&ctx, &old_target.parent()).await?;
        let to = self.vol.dir_fh(&ctx, &new_target.parent()).await?;
        rename_known(
            &self.vol,
            &ctx,
            (&from, &self.temp_name),
            (&to, &self.temp_name),
            self.fileid,
        )
        .await
    }

    /// Publishing COMMITs anyway (and the rename is a server operation,
    /// stable when answered): fsync(2) waits for the publish that follows.
    async fn sync(&self) -> BackendResult<()> {
        Ok(())
    }

    async fn publish(&self, target: &BackendPath) -> BackendResult<Metadata> {
        let mut st = self.state.lock().await;
        if self.finished.load(Ordering::Acquire) {
            return Err(self
                .vol
                .ctx("publish", target, self.id)
                .err(ErrorKind::InvalidArgument, "already published or aborted"));
        }
        self.commit_locked(&mut st).await?;
        let ctx = self.vol.ctx("publish (commit + rename)", target, self.id);
        if let Some((uid, gid)) = st.owner {
            let change = AttrChanges {
                uid,
                gid,
                ..AttrChanges::default()
            };
            if let Err(e) = setattr(&self.vol, &ctx, &self.fh, attrs::sattr(&change, false)).await {
                // A user other than the owner (or squashed root) cannot
                // give the replacement the owner's identity: renaming it
                // over the file would hand the file to the writer. Write
                // into the file instead, as an NFS client kernel does (the
                // server clears setuid/setgid as for any such write).
                tracing::info!(path = %target, error = %e, uid = self.id.uid,
                    "cannot give the new version the file's owner; updating the file in place (not atomic)");
                let published = self.copy_into(target, st.mode).await?;
                st.end_spill();
                return Ok(published);
            }
        }
        setattr(&self.vol, &ctx, &self.fh, attrs::mode_only(st.mode)).await?;
        let dir = self.vol.dir_fh(&ctx, &target.parent()).await?;
        rename_known(
            &self.vol,
            &ctx,
            (&dir, &self.temp_name),
            (&dir, target.name()),
            self.fileid,
        )
        .await?;
        self.finished.store(true, Ordering::Release);
        st.end_spill();
        let a = self.vol.getattr(&ctx, &self.fh).await?;
        Ok(attrs::metadata(&a))
    }

    fn object_id(&self) -> Option<u64> {
        Some(self.fileid)
    }

    async fn publish_in_place(&self, target: &BackendPath) -> BackendResult<Metadata> {
        let mut st = self.state.lock().await;
        if self.finished.load(Ordering::Acquire) {
            return Err(self
                .vol
                .ctx("publish", target, self.id)
                .err(ErrorKind::InvalidArgument, "already published or aborted"));
        }
        // Committed, not only answered: the copy reads the temp file back,
        // and unstable data a restarted server lost would be read as holes.
        self.commit_locked(&mut st).await?;
        let published = self.copy_into(target, st.mode).await?;
        st.end_spill();
        Ok(published)
    }

    async fn abort(&self, target: &BackendPath) {
        if self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        // WRITEs in flight are of no use now, and against a server that
        // is down each would retry for a minute: cancel them. One the
        // server still runs after the REMOVE finds a stale handle.
        let mut st = self.state.lock().await;
        self.cancel_in_flight(&mut st).await;
        st.end_spill();
        drop(st);
        let ctx = self.vol.ctx("remove temp file", target, self.id);
        let result = async {
            let dir = self.vol.dir_fh(&ctx, &target.parent()).await?;
            match remove_name(&self.vol, &ctx, &dir, &self.temp_name).await {
                Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
                other => other,
            }
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not remove an aborted temp file; the next mount will");
        }
    }
}
