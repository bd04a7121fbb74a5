//! Writing the temp file UNSTABLE: WRITEs whose data is kept in a log
//! until a COMMIT with the same verifier, re-sent with FILE_SYNC when the
//! verifier shows the server restarted; and reading the temp file back.

use super::*;

impl NfsPendingWrite {
    pub(super) async fn write_locked(
        &self,
        st: &mut State,
        offset: u64,
        data: bytes::Bytes,
    ) -> BackendResult<()> {
        self.check_failed(st)?;
        if !self.vol.stable_writes {
            self.send_unstable(st, offset, data).await?;
            if st.log_bytes >= COMMIT_EVERY {
                self.commit_locked(st).await?;
            }
            return Ok(());
        }
        let temp = self.temp_path();
        let ctx = self.vol.ctx("write temp file", &temp, self.id);
        write_stable(&self.vol, &ctx, &self.fh, offset, &data).await
    }

    /// Re-send every logged unstable operation with FILE_SYNC, in order.
    pub(super) async fn resend_locked(&self, st: &mut State, ctx: &Ctx<'_>) -> BackendResult<()> {
        tracing::warn!(temp = %self.temp_name, bytes = st.log_bytes,
            "NFS write verifier changed (server restarted); re-sending uncommitted writes with FILE_SYNC");
        let log = std::mem::take(&mut st.log);
        st.log_bytes = 0;
        for op in &log {
            match op {
                Logged::Write { offset, data } => {
                    write_stable(&self.vol, ctx, &self.fh, *offset, data).await?;
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
    pub(super) async fn commit_locked(&self, st: &mut State) -> BackendResult<()> {
        self.settle(st, 0).await?;
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

    pub(super) async fn read_locked(&self, offset: u64, len: usize) -> BackendResult<Vec<u8>> {
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

/// All of `data` into `file` at `offset` with FILE_SYNC WRITEs of at most
/// the server's wtmax each.
pub(super) async fn write_stable(
    vol: &Volume,
    ctx: &Ctx<'_>,
    file: &nfs_fh3,
    offset: u64,
    data: &[u8],
) -> BackendResult<()> {
    let mut done = 0usize;
    while done < data.len() {
        let end = (done + vol.limits.wtmax as usize).min(data.len());
        let at = offset + done as u64;
        let (written, _, _) =
            write_once(vol, ctx, file, at, &data[done..end], stable_how::FILE_SYNC).await?;
        done += written;
    }
    Ok(())
}
