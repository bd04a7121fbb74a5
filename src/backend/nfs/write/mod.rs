//! The atomic write path: a hidden temp file next to the target, written
//! UNSTABLE and COMMITted (or FILE_SYNC), then RENAMEd onto the final name.
//!
//! Unstable data lives only in the server's memory until COMMIT. The server
//! signals a restart by a new write verifier; we therefore keep every
//! unstable write since the last good COMMIT (bounded by `COMMIT_EVERY`) and
//! re-send it with FILE_SYNC when the verifier changes. Publishing commits
//! first, so a renamed file is always complete and durable.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use nfs3_types::nfs3::{
    createhow3, fattr3, nfs_fh3, nfsstat3, sattr3, stable_how, writeverf3, COMMIT3args, COMMIT3res,
    CREATE3args, CREATE3res, Nfs3Option, Nfs3Result, READ3args, READ3res, REMOVE3args, REMOVE3res,
    RENAME3args, RENAME3res, SETATTR3args, SETATTR3res, WRITE3args, WRITE3res, NFS_PROGRAM,
};
use nfs3_types::xdr_codec::Opaque;

use super::attrs;
use super::errors::Ctx;
use super::read::NfsReader;
use super::volume::{dirop, Volume};
use crate::backend::{
    AttrChanges, BackendPath, BackendResult, ErrorKind, Identity, Metadata, ObjectReader,
    PendingWrite, SuspendedWrite, WriteStart,
};

mod in_place;

/// Unstable bytes kept for a possible re-send before we force a COMMIT.
const COMMIT_EVERY: usize = 16 << 20;

/// Copy-on-write reads of the existing object go in chunks of this size.
const COPY_CHUNK: usize = 1 << 20;

enum Logged {
    Write { offset: u64, data: Vec<u8> },
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

/// CREATE GUARDED: fails if the name exists, except when our own earlier
/// attempt (lost reply, re-sent request) created it.
pub async fn create_file(
    vol: &Volume,
    ctx: &Ctx<'_>,
    dir: &nfs_fh3,
    name: &str,
    mode: u32,
) -> BackendResult<(nfs_fh3, fattr3)> {
    let args = CREATE3args {
        where_: dirop(dir, name),
        how: createhow3::GUARDED(attrs::mode_only(mode)),
    };
    let reply = vol
        .rpc::<_, _, _>(ctx, NFS_PROGRAM::NFSPROC3_CREATE, &args)
        .await?;
    let res: CREATE3res = reply.res;
    match res {
        Nfs3Result::Ok(ok) => match ok.obj {
            Nfs3Option::Some(fh) => {
                let a = vol.attrs_or_getattr(ctx, &fh, ok.obj_attributes).await?;
                Ok((fh, a))
            }
            Nfs3Option::None => vol
                .lookup_in(ctx, dir, name)
                .await?
                .ok_or_else(|| ctx.err(ErrorKind::Other, "created file vanished")),
        },
        Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, _)) if reply.resent => vol
            .lookup_in(ctx, dir, name)
            .await?
            .ok_or_else(|| ctx.err(ErrorKind::AlreadyExists, "NFS3ERR_EXIST")),
        Nfs3Result::Err((stat, _)) => Err(ctx.status(stat)),
    }
}

/// REMOVE; NOENT on a re-sent request means our first attempt did it.
pub async fn remove_name(
    vol: &Volume,
    ctx: &Ctx<'_>,
    dir: &nfs_fh3,
    name: &str,
) -> BackendResult<()> {
    let args = REMOVE3args {
        object: dirop(dir, name),
    };
    let reply = vol
        .rpc::<_, _, _>(ctx, NFS_PROGRAM::NFSPROC3_REMOVE, &args)
        .await?;
    let res: REMOVE3res = reply.res;
    match res {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, _)) if reply.resent => Ok(()),
        Nfs3Result::Err((stat, _)) => Err(ctx.status(stat)),
    }
}

/// RENAME of an object whose fileid we know: a re-sent request answered
/// NOENT succeeded if the new name now holds that object.
pub async fn rename_known(
    vol: &Volume,
    ctx: &Ctx<'_>,
    (from_dir, from_name): (&nfs_fh3, &str),
    (to_dir, to_name): (&nfs_fh3, &str),
    fileid: u64,
) -> BackendResult<()> {
    let args = RENAME3args {
        from: dirop(from_dir, from_name),
        to: dirop(to_dir, to_name),
    };
    let reply = vol
        .rpc::<_, _, _>(ctx, NFS_PROGRAM::NFSPROC3_RENAME, &args)
        .await?;
    let res: RENAME3res = reply.res;
    match res {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, _)) if reply.resent => {
            match vol.lookup_in(ctx, to_dir, to_name).await? {
                Some((_, a)) if a.fileid == fileid => Ok(()),
                _ => Err(ctx.status(nfsstat3::NFS3ERR_NOENT)),
            }
        }
        Nfs3Result::Err((stat, _)) => Err(ctx.status(stat)),
    }
}

pub async fn setattr(
    vol: &Volume,
    ctx: &Ctx<'_>,
    fh: &nfs_fh3,
    new_attributes: sattr3,
) -> BackendResult<Option<fattr3>> {
    let args = SETATTR3args {
        object: fh.clone(),
        new_attributes,
        guard: Nfs3Option::None,
    };
    let res: SETATTR3res = vol
        .rpc(ctx, NFS_PROGRAM::NFSPROC3_SETATTR, &args)
        .await?
        .res;
    match res {
        Nfs3Result::Ok(ok) => Ok(match ok.obj_wcc.after {
            Nfs3Option::Some(a) => Some(a),
            Nfs3Option::None => None,
        }),
        Nfs3Result::Err((stat, _)) => Err(ctx.status(stat)),
    }
}

/// Start a temporary object for `path` (see `Backend::begin_write`).
pub async fn begin(
    vol: &Arc<Volume>,
    id: Identity,
    path: &BackendPath,
    start: WriteStart,
    create_mode: u32,
) -> BackendResult<NfsPendingWrite> {
    let ctx = vol.ctx("create temp file", path, id);
    let dir = vol.dir_fh(&ctx, &path.parent()).await?;
    let existing = vol.lookup_in(&ctx, &dir, path.name()).await?;
    if let Some((_, a)) = &existing {
        if a.type_ == nfs3_types::nfs3::ftype3::NF3DIR {
            return Err(ctx.err(ErrorKind::IsADirectory, "the target is a directory"));
        }
    }
    let temp_name = vol.next_temp_name(path.name());
    let (fh, temp_attrs) = create_file(vol, &ctx, &dir, &temp_name, 0o600).await?;
    let mut state = State {
        mode: create_mode & 0o7777,
        ..State::default()
    };
    if let Some((_, a)) = &existing {
        state.mode = a.mode & 0o7777;
        // The replacement must have the owner of the file it replaces; if
        // the server will not let us give it (we are not root, or root is
        // squashed), the publish writes into the file in place instead.
        if (a.uid, a.gid) != (temp_attrs.uid, temp_attrs.gid) {
            state.owner = Some((Some(a.uid), Some(a.gid)));
        }
    }
    let write = NfsPendingWrite {
        vol: Arc::clone(vol),
        id,
        temp_name,
        fh,
        fileid: temp_attrs.fileid,
        size: AtomicU64::new(0),
        state: tokio::sync::Mutex::new(state),
        finished: AtomicBool::new(false),
    };
    if let (Some((efh, a)), WriteStart::CopyExisting) = (existing, start) {
        if let Err(e) = write.copy_from(efh, &a, path).await {
            write.abort(path).await;
            return Err(e);
        }
    }
    Ok(write)
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

/// Continue a suspended session (see `Backend::resume_write`): its temp
/// file, committed by the suspending process, is renamed to a name of ours.
pub async fn resume(
    vol: &Arc<Volume>,
    id: Identity,
    target: &BackendPath,
    state: SuspendedWrite,
) -> BackendResult<crate::backend::Resumed> {
    let ctx = vol.ctx("resume temp file", target, id);
    let s: Suspended = serde_json::from_value(state)
        .map_err(|e| ctx.err(ErrorKind::Other, format!("bad suspended write: {e}")))?;
    if !crate::backend::is_temp_name(&s.temp_name) || s.temp_name.contains('/') {
        return Err(ctx.err(
            ErrorKind::Other,
            format!("{:?} is not a temp file name", s.temp_name),
        ));
    }
    let dir = vol.dir_fh(&ctx, &target.parent()).await?;
    let Some((_, old)) = vol.lookup_in(&ctx, &dir, &s.temp_name).await? else {
        let target_id = vol
            .lookup_in(&ctx, &dir, target.name())
            .await?
            .map(|(_, a)| a.fileid);
        if s.fileid.is_some() && target_id == s.fileid {
            return Ok(crate::backend::Resumed::Published);
        }
        return Err(ctx.err(ErrorKind::NotFound, "the suspended temp file is gone"));
    };
    // In a container every mounter is pid 1: a name of ours may be the
    // very name (then it stays) or another live temp file's (NFS RENAME
    // would replace that one: the next name is tried).
    let mut temp_name = vol.next_temp_name(target.name());
    for _ in 0..64 {
        if temp_name == s.temp_name || vol.lookup_in(&ctx, &dir, &temp_name).await?.is_none() {
            break;
        }
        temp_name = vol.next_temp_name(target.name());
    }
    if temp_name != s.temp_name {
        rename_known(
            vol,
            &ctx,
            (&dir, &s.temp_name),
            (&dir, &temp_name),
            old.fileid,
        )
        .await?;
    }
    let (fh, a) = vol
        .lookup_in(&ctx, &dir, &temp_name)
        .await?
        .ok_or_else(|| ctx.err(ErrorKind::NotFound, "the resumed temp file vanished"))?;
    Ok(crate::backend::Resumed::Pending(Box::new(
        NfsPendingWrite {
            vol: Arc::clone(vol),
            id,
            temp_name,
            fh,
            fileid: a.fileid,
            size: AtomicU64::new(s.size.unwrap_or(a.size)),
            state: tokio::sync::Mutex::new(State {
                mode: s.mode,
                owner: s.owner,
                ..State::default()
            }),
            finished: AtomicBool::new(false),
        },
    )))
}

impl NfsPendingWrite {
    fn temp_path(&self) -> BackendPath {
        BackendPath::parse(&self.temp_name).unwrap_or_default()
    }

    /// Copy-on-write: the current content becomes the temp file's start.
    async fn copy_from(&self, fh: nfs_fh3, a: &fattr3, path: &BackendPath) -> BackendResult<()> {
        let reader = NfsReader {
            vol: Arc::clone(&self.vol),
            id: self.id,
            path: path.clone(),
            fh: parking_lot::Mutex::new(fh),
            version: attrs::version(a),
            size: a.size,
        };
        let mut st = self.state.lock().await;
        let mut offset = 0;
        while offset < a.size {
            let data = reader.read_at(offset, COPY_CHUNK).await?;
            if data.is_empty() {
                break;
            }
            self.write_locked(&mut st, offset, &data).await?;
            offset += data.len() as u64;
        }
        self.size.store(offset, Ordering::Release);
        Ok(())
    }

    async fn write_locked(&self, st: &mut State, offset: u64, data: &[u8]) -> BackendResult<()> {
        let temp = self.temp_path();
        let ctx = self.vol.ctx("write temp file", &temp, self.id);
        let stable = if self.vol.stable_writes {
            stable_how::FILE_SYNC
        } else {
            stable_how::UNSTABLE
        };
        let mut done = 0usize;
        while done < data.len() {
            let end = (done + self.vol.limits.wtmax as usize).min(data.len());
            let piece = &data[done..end];
            let at = offset + done as u64;
            let (written, committed, verf) =
                self.send_write(&ctx, &self.fh, at, piece, stable).await?;
            if committed == stable_how::UNSTABLE {
                st.log.push(Logged::Write {
                    offset: at,
                    data: piece[..written].to_vec(),
                });
                st.log_bytes += written;
            }
            match st.verf {
                None => st.verf = Some(verf),
                Some(v) if v != verf => {
                    // The server restarted since earlier unstable writes: they
                    // may be gone. Re-send everything still uncommitted.
                    self.resend_locked(st, &ctx).await?;
                    st.verf = Some(verf);
                }
                Some(_) => {}
            }
            done += written;
        }
        if st.log_bytes >= COMMIT_EVERY {
            self.commit_locked(st).await?;
        }
        Ok(())
    }

    /// One WRITE to `file` (the temp file, or the target of an in-place
    /// publish).
    async fn send_write(
        &self,
        ctx: &Ctx<'_>,
        file: &nfs_fh3,
        offset: u64,
        data: &[u8],
        stable: stable_how,
    ) -> BackendResult<(usize, stable_how, writeverf3)> {
        let args = WRITE3args {
            file: file.clone(),
            offset,
            count: data.len() as u32,
            stable,
            data: Opaque::borrowed(data),
        };
        let res: WRITE3res = self
            .vol
            .rpc(ctx, NFS_PROGRAM::NFSPROC3_WRITE, &args)
            .await?
            .res;
        match res {
            Nfs3Result::Ok(ok) => {
                let written = (ok.count as usize).min(data.len());
                if written == 0 {
                    return Err(ctx.err(
                        ErrorKind::Other,
                        "the server accepted no data (WRITE count 0)",
                    ));
                }
                Ok((written, ok.committed, ok.verf))
            }
            Nfs3Result::Err((stat, _)) => Err(ctx.status(stat)),
        }
    }

    /// Re-send every logged unstable operation with FILE_SYNC, in order.
    async fn resend_locked(&self, st: &mut State, ctx: &Ctx<'_>) -> BackendResult<()> {
        tracing::warn!(temp = %self.temp_name, bytes = st.log_bytes,
            "NFS write verifier changed (server restarted); re-sending uncommitted writes with FILE_SYNC");
        let log = std::mem::take(&mut st.log);
        st.log_bytes = 0;
        for op in &log {
            match op {
                Logged::Write { offset, data } => {
                    let mut done = 0;
                    while done < data.len() {
                        let (n, _, _) = self
                            .send_write(
                                ctx,
                                &self.fh,
                                offset + done as u64,
                                &data[done..],
                                stable_how::FILE_SYNC,
                            )
                            .await?;
                        done += n;
                    }
                }
                Logged::Truncate(size) => {
                    setattr(&self.vol, ctx, &self.fh, attrs::size_only(*size)).await?;
                }
            }
        }
        Ok(())
    }

    /// COMMIT; if the verifier is not the one our writes got, the server
    /// lost them: re-send with FILE_SYNC.
    async fn commit_locked(&self, st: &mut State) -> BackendResult<()> {
        if st.log.is_empty() {
            return Ok(());
        }
        let temp = self.temp_path();
        let ctx = self.vol.ctx("commit temp file", &temp, self.id);
        let args = COMMIT3args {
            file: self.fh.clone(),
            offset: 0,
            count: 0,
        };
        let res: COMMIT3res = self
            .vol
            .rpc(&ctx, NFS_PROGRAM::NFSPROC3_COMMIT, &args)
            .await?
            .res;
        let verf = match res {
            Nfs3Result::Ok(ok) => ok.verf,
            Nfs3Result::Err((stat, _)) => return Err(ctx.status(stat)),
        };
        if st.verf != Some(verf) {
            self.resend_locked(st, &ctx).await?;
        }
        st.log.clear();
        st.log_bytes = 0;
        st.verf = Some(verf);
        Ok(())
    }

    async fn read_locked(&self, offset: u64, len: usize) -> BackendResult<Vec<u8>> {
        let temp = self.temp_path();
        let ctx = self.vol.ctx("read temp file", &temp, self.id);
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let want = (len - out.len()).min(self.vol.limits.rtmax as usize) as u32;
            let args = READ3args {
                file: self.fh.clone(),
                offset: offset + out.len() as u64,
                count: want,
            };
            let res: READ3res = self
                .vol
                .rpc(&ctx, NFS_PROGRAM::NFSPROC3_READ, &args)
                .await?
                .res;
            match res {
                Nfs3Result::Ok(ok) => {
                    let n = (ok.count as usize).min(ok.data.len());
                    out.extend_from_slice(&ok.data[..n]);
                    if ok.eof || n == 0 {
                        break;
                    }
                }
                Nfs3Result::Err((stat, _)) => return Err(ctx.status(stat)),
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl PendingWrite for NfsPendingWrite {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> BackendResult<()> {
        let mut st = self.state.lock().await;
        self.write_locked(&mut st, offset, data).await?;
        self.size
            .fetch_max(offset + data.len() as u64, Ordering::AcqRel);
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
                return self.copy_into(target, st.mode).await;
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
        let a = self.vol.getattr(&ctx, &self.fh).await?;
        Ok(attrs::metadata(&a))
    }

    fn object_id(&self) -> Option<u64> {
        Some(self.fileid)
    }

    async fn publish_in_place(&self, target: &BackendPath) -> BackendResult<Metadata> {
        let st = self.state.lock().await;
        if self.finished.load(Ordering::Acquire) {
            return Err(self
                .vol
                .ctx("publish", target, self.id)
                .err(ErrorKind::InvalidArgument, "already published or aborted"));
        }
        self.copy_into(target, st.mode).await
    }

    async fn abort(&self, target: &BackendPath) {
        if self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
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
