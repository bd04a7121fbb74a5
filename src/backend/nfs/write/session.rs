//! Starting a write: a temp file created next to the target (with the
//! target's content copied in for a copy-on-write), or a suspended write
//! taken over from another process (its temp file renamed to a name of
//! ours).

use super::*;

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
        spill: spill_for(vol, &temp_name),
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
    let (fh, mut a) = vol
        .lookup_in(&ctx, &dir, &temp_name)
        .await?
        .ok_or_else(|| ctx.err(ErrorKind::NotFound, "the resumed temp file vanished"))?;
    if let Some(spilled) = vol
        .spill_dir
        .as_ref()
        .map(|d| spill::path_for(d, &s.temp_name))
    {
        // After a crash: what the dead process answered before the server
        // did goes out again first, stable. (A graceful hand-over leaves
        // no spill.) The size is measured after it.
        if resend_spilled(vol, &ctx, &fh, &spilled).await? {
            a = vol.getattr(&ctx, &fh).await?;
        }
    }
    let spill = spill_for(vol, &temp_name);
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
                spill,
                ..State::default()
            }),
            finished: AtomicBool::new(false),
        },
    )))
}

/// The spill of a write to the temp file `temp_name`, where a successor
/// resumes after a crash.
fn spill_for(vol: &Volume, temp_name: &str) -> Option<spill::Spill> {
    let dir = vol.spill_dir.as_ref()?;
    Some(spill::Spill::at(spill::path_for(dir, temp_name)))
}

/// Re-send the pieces spilled at `path` into the temp file `fh`, in order,
/// then remove the spill; true if there were any.
async fn resend_spilled(
    vol: &Volume,
    ctx: &Ctx<'_>,
    fh: &nfs_fh3,
    path: &std::path::Path,
) -> BackendResult<bool> {
    let read = path.to_path_buf();
    let pieces = crate::backend::blocking::run(move || spill::replay(&read))
        .await
        .map_err(|e| ctx.err(ErrorKind::Other, format!("reading the spill: {e}")))?
        .map_err(|e| {
            // Its own errno (a spill the successor may not read is EACCES).
            ctx.err(
                ErrorKind::from_io(&e),
                format!("reading the spill {}: {e}", path.display()),
            )
        })?;
    let bytes: usize = pieces.iter().map(|(_, d)| d.len()).sum();
    for (offset, data) in &pieces {
        write_stable(vol, ctx, fh, *offset, data).await?;
    }
    if !pieces.is_empty() {
        tracing::info!(spill = %path.display(), pieces = pieces.len(), bytes,
            "re-sent writes the previous process had answered before the server did");
    }
    spill::remove_file(path);
    Ok(!pieces.is_empty())
}

impl NfsPendingWrite {
    /// Copy-on-write: the current content becomes the temp file's start.
    async fn copy_from(&self, fh: nfs_fh3, a: &fattr3, path: &BackendPath) -> BackendResult<()> {
        let reader = NfsReader::new(Arc::clone(&self.vol), self.id, path.clone(), fh, a);
        let mut st = self.state.lock().await;
        let mut offset = 0;
        while offset < a.size {
            let data = reader.read_at(offset, COPY_CHUNK).await?;
            if data.is_empty() {
                break;
            }
            let len = data.len() as u64;
            self.write_locked(&mut st, offset, data).await?;
            offset += len;
        }
        self.size.store(offset, Ordering::Release);
        Ok(())
    }
}
