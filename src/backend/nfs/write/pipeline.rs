//! UNSTABLE WRITEs in flight while the application goes on writing: a
//! sequential writer waited one round trip per 1 MiB with one WRITE at a
//! time. Up to [`WRITES_IN_FLIGHT`] go out on the identity's pooled
//! connections; everything else that touches the temp file (COMMIT,
//! truncate, read-back, publish, abort) waits for them first.
//!
//! The data is in the log from the moment a WRITE is sent (until a COMMIT
//! with a matching verifier), so a reply with a new verifier is handled
//! as before: once nothing is in flight, the log is re-sent FILE_SYNC.
//! A failed WRITE is reported to the next call on this write and to every
//! one after (the temp file may lack data: it must never be published).
//!
//! Answered before the server answers, a piece would die with the process:
//! where a successor resumes after a crash, it goes to the spill first
//! (see `spill`); if the spill cannot take it, the piece is waited for.

use bytes::Bytes;

use crate::backend::BackendError;

use super::*;

/// At most this many WRITEs of one write in flight; one connection of the
/// identity's pool (`CONNS_PER_IDENTITY`, 4) stays free for its reads and
/// lookups.
pub(super) const WRITES_IN_FLIGHT: usize = 3;

/// What a WRITE in flight came back with.
pub(super) struct Sent {
    offset: u64,
    data: Bytes,
    written: usize,
    verf: writeverf3,
}

#[derive(Default)]
pub(super) struct InFlight {
    tasks: tokio::task::JoinSet<BackendResult<Sent>>,
    /// End of the highest range in flight: a write below it could overlap
    /// one in flight (whose order on the server is unknown) and waits.
    end: u64,
}

impl NfsPendingWrite {
    /// The error of an earlier WRITE, if one failed.
    pub(super) fn check_failed(&self, st: &State) -> BackendResult<()> {
        match &st.failed {
            None => Ok(()),
            Some((kind, cause)) => {
                let temp = self.temp_path();
                Err(self.vol.ctx("write temp file", &temp, self.id).err(
                    *kind,
                    format!("an earlier write of this file failed: {cause}"),
                ))
            }
        }
    }

    fn fail(&self, st: &mut State, e: BackendError) -> BackendError {
        st.failed = Some((e.kind, e.to_string()));
        e
    }

    /// Send `data` at `offset` as UNSTABLE WRITEs in flight (logged now).
    pub(super) async fn send_unstable(
        &self,
        st: &mut State,
        offset: u64,
        data: Bytes,
    ) -> BackendResult<()> {
        let mut done = 0usize;
        while done < data.len() {
            let end = (done + self.vol.limits.wtmax as usize).min(data.len());
            let at = offset + done as u64;
            if at < st.in_flight.end {
                self.settle(st, 0).await?;
            }
            self.settle(st, WRITES_IN_FLIGHT - 1).await?;
            let piece = data.slice(done..end);
            // Spilled before it is sent, so a crash right after the answer
            // leaves it in the spill (a test relies on this order).
            let kept = self.spill(st, at, &piece).await;
            st.log.push(Logged::Write {
                offset: at,
                data: piece.clone(),
            });
            st.log_bytes += piece.len();
            st.in_flight.end = st.in_flight.end.max(at + piece.len() as u64);
            let (vol, id, fh, temp) = (
                Arc::clone(&self.vol),
                self.id,
                self.fh.clone(),
                self.temp_path(),
            );
            st.in_flight.tasks.spawn(async move {
                let ctx = vol.ctx("write temp file", &temp, id);
                let (written, _, verf) =
                    write_once(&vol, &ctx, &fh, at, &piece, stable_how::UNSTABLE).await?;
                Ok(Sent {
                    offset: at,
                    data: piece,
                    written,
                    verf,
                })
            });
            if !kept {
                self.settle(st, 0).await?;
            }
            done = end;
        }
        Ok(())
    }

    /// Put `piece` in the spill; false if it could not (then it must be on
    /// the server before the kernel hears of it).
    async fn spill(&self, st: &mut State, at: u64, piece: &Bytes) -> bool {
        let Some(spill) = st.spill.as_mut() else {
            return true;
        };
        match spill.record(at, piece.clone()).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, spill = %spill.path().display(), temp = %self.temp_name,
                    "cannot spill a write to local disk; waiting for the server's answer instead (slower, as safe)");
                false
            }
        }
    }

    /// Wait until at most `keep` WRITEs are in flight; with a new verifier
    /// among the replies, wait for all and re-send the log.
    pub(super) async fn settle(&self, st: &mut State, keep: usize) -> BackendResult<()> {
        self.check_failed(st)?;
        let mut new_verf = None;
        while st.in_flight.tasks.len() > keep
            || (new_verf.is_some() && !st.in_flight.tasks.is_empty())
        {
            let Some(joined) = st.in_flight.tasks.join_next().await else {
                break;
            };
            let sent = match joined {
                Ok(Ok(sent)) => sent,
                Ok(Err(e)) => return Err(self.fail(st, e)),
                Err(e) => {
                    let temp = self.temp_path();
                    let e = self
                        .vol
                        .ctx("write temp file", &temp, self.id)
                        .err(ErrorKind::Other, format!("a WRITE task ended: {e}"));
                    return Err(self.fail(st, e));
                }
            };
            if sent.written < sent.data.len() {
                // The server took part of it: the rest goes now, stable.
                if let Err(e) = self.write_rest(&sent).await {
                    return Err(self.fail(st, e));
                }
            }
            match st.verf {
                None => st.verf = Some(sent.verf),
                Some(v) if v != sent.verf => new_verf = Some(sent.verf),
                Some(_) => {}
            }
        }
        if st.in_flight.tasks.is_empty() {
            st.in_flight.end = 0;
            // All on the server: re-sending any of it later could undo a
            // truncate or rewrite that follows.
            if let Some(spill) = st.spill.as_mut() {
                spill.clear().await;
            }
        }
        if let Some(verf) = new_verf {
            // The server restarted since earlier unstable writes: they may
            // be gone. Re-send everything still uncommitted.
            let temp = self.temp_path();
            let ctx = self.vol.ctx("write temp file", &temp, self.id);
            if let Err(e) = self.resend_locked(st, &ctx).await {
                return Err(self.fail(st, e));
            }
            st.verf = Some(verf);
        }
        Ok(())
    }

    async fn write_rest(&self, sent: &Sent) -> BackendResult<()> {
        let temp = self.temp_path();
        let ctx = self.vol.ctx("write temp file", &temp, self.id);
        let mut done = sent.written;
        while done < sent.data.len() {
            let at = sent.offset + done as u64;
            let rest = &sent.data[done..];
            let (n, _, _) =
                write_once(&self.vol, &ctx, &self.fh, at, rest, stable_how::FILE_SYNC).await?;
            done += n;
        }
        Ok(())
    }

    /// An abort: WRITEs in flight cancelled (their connections closed,
    /// as for any cancelled call), their outcome ignored.
    pub(super) async fn cancel_in_flight(&self, st: &mut State) {
        st.in_flight.tasks.abort_all();
        while st.in_flight.tasks.join_next().await.is_some() {}
        st.in_flight.end = 0;
    }
}
