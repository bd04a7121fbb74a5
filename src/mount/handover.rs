//! Handing a live session to another process (the mounter's takeover):
//! stop answering and describe the session (`freeze`), go back to serving
//! if the handover fails (`thaw`), and stop reading `/dev/fuse` before
//! the process ends (`stop_serving`).

use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use super::{MountError, MountResult, MountedFs};

/// What a takeover needs to stop a session and describe it.
pub(super) struct Handover {
    pub gate: Arc<crate::fuse::Gate>,
    pub adapter: crate::fuse::AdapterStateReader,
    pub notifier: fuser::Notifier,
    pub quiescer: fuser::Quiescer,
}

/// A stopped session, described for its successor.
pub struct SessionState {
    pub adapter: crate::fuse::AdapterState,
    pub fs: crate::fs::snapshot::FsSnapshot,
}

/// Wakes the FUSE request loops out of `read(2)` (see `stop_serving`).
const STOP_READING_SIGNAL: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGUSR1;

/// How long the readers get to leave read(2).
const READERS_WAIT: Duration = Duration::from_secs(5);

extern "C" fn ignore_signal(_: libc::c_int) {}

/// A handler that does nothing, without SA_RESTART: a `read(2)` the
/// signal interrupts fails with EINTR instead of going on waiting.
fn install_stop_reading_handler() -> MountResult<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let action = SigAction::new(
                SigHandler::Handler(ignore_signal),
                SaFlags::empty(),
                SigSet::empty(),
            );
            // SAFETY: the handler does nothing, so it is async-signal-safe.
            unsafe { sigaction(STOP_READING_SIGNAL, &action) }
                .map(|_| ())
                .map_err(|e| format!("installing the handler that stops FUSE readers: {e}"))
        })
        .clone()
        .map_err(MountError::Refused)
}

impl MountedFs {
    fn handover(&self) -> MountResult<&Handover> {
        self.handover
            .as_ref()
            .ok_or_else(|| MountError::Refused("this session cannot be handed over".into()))
    }

    /// Stop answering the kernel (requests wait) and describe the session
    /// for a successor. An error if it would not drain within `timeout` or
    /// could not be described; call `thaw` then (it waits for the drain).
    pub fn freeze(&self, timeout: Duration) -> MountResult<SessionState> {
        let h = self.handover()?;
        if !h.gate.close_and_drain(timeout) {
            return Err(MountError::Refused(format!(
                "requests still being answered after {timeout:?}"
            )));
        }
        let adapter = h
            .adapter
            .read()
            .ok_or_else(|| MountError::Refused("the session's INIT is not known".into()))?;
        let fs = self.runtime.block_on(self.fs.snapshot()).map_err(|e| {
            MountError::Refused(format!(
                "describing the filesystem: {e} (errno {})",
                e.errno()
            ))
        })?;
        Ok(SessionState { adapter, fs })
    }

    /// Answer the kernel again after a failed handover, including the
    /// requests left unanswered meanwhile.
    pub fn thaw(&self) {
        if let Some(h) = &self.handover {
            // Re-sending a request this process is still answering would
            // apply it twice: wait until nothing is in flight.
            h.gate.close_and_drain(Duration::from_secs(24 * 3600));
            h.gate.open();
            if let Err(e) = h.notifier.resend() {
                tracing::warn!(error = %e, "FUSE_NOTIFY_RESEND failed: requests held during the handover stay unanswered");
            }
        }
    }

    /// Before the process ends with the session left to a successor (or
    /// to the keeper): stop answering (waiting up to `drain` for answers
    /// in progress, so the successor does not apply them again), then make
    /// sure no thread is inside `read(2)` on `/dev/fuse`. A thread killed
    /// while the kernel copies a request into its buffer makes the kernel
    /// fail that request with EIO for the application (seen as a pod's
    /// 1 MiB write failing during a takeover). Requests read and held stay
    /// in the kernel's list for the successor's FUSE_NOTIFY_RESEND.
    /// Irreversible. `false` if answers or readers were still busy after
    /// the waits (or the session is not keepable).
    pub fn stop_serving(&self, drain: Duration) -> bool {
        let Ok(h) = self.handover() else {
            return false;
        };
        let drained = h.gate.close_and_drain(drain);
        if let Err(e) = install_stop_reading_handler() {
            tracing::warn!(error = %super::chain(&e), "FUSE readers cannot be stopped before exit");
            return false;
        }
        let stopped = h
            .quiescer
            .quiesce(STOP_READING_SIGNAL as libc::c_int, READERS_WAIT);
        drained && stopped
    }
}
