//! Live takeover: a new mounter started on the socket of a running one
//! takes every session over without unmounting anything.
//!
//! ```text
//! new                                   old
//!  │── Takeover (protocol v) ──────────▶│  other version: refused, nothing changes
//!  │                                    │  stop answering each session (gate),
//!  │                                    │  wait until nothing is in flight,
//!  │                                    │  describe it (suspend write sessions)
//!  │◀── Handover{sessions} + fds ───────│
//!  │── Accepted ───────────────────────▶│  gets its FUSE readers out of read(2)
//!  │                                    │  (MountedFs::stop_serving), exits 0
//!  │                                    │  (or execs an idle process,
//!  │                                    │  --idle-after-handover, see idle.rs)
//!  │   waits for the connection to close│
//!  │   (old gone: nobody reads its fds) │
//!  │   binds the socket, resumes each   │
//!  │   session, FUSE_NOTIFY_RESEND      │
//! ```
//!
//! Until the handover was accepted the old mounter can go back to serving
//! (the requests held meanwhile are re-sent by the kernel); after that the
//! sessions belong to the new one.

use std::io::Read;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::protocol::{
    Envelope, ErrorCode, HandedSession, HandoverAnswer, Request, Response, PROTOCOL_VERSION,
};
use super::server::{Hosted, Mounter};
use super::{wire, MounterError};
use crate::fs::snapshot::SNAPSHOT_VERSION;

/// A request being answered when a takeover starts is waited for, however
/// long it takes: re-sending it to the successor while this process may
/// still answer it would apply it twice.
const DRAIN_WAIT: Duration = Duration::from_secs(24 * 3600);
/// How long the old mounter waits for the successor's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(120);

impl Mounter {
    /// The old side (see the module docs). Returns only if the handover
    /// did not happen; otherwise the process exits (or idles).
    pub(super) fn hand_over(&self, mut stream: UnixStream) {
        let _control = self.control.lock();
        let started = Instant::now();
        let sessions = self.sessions.lock();
        let mut frozen: Vec<&Hosted> = Vec::new();
        let mut handed = Vec::new();
        let mut handles = 0usize;
        for hosted in sessions.values() {
            frozen.push(hosted);
            match hosted.mounted.freeze(DRAIN_WAIT) {
                Ok(state) => {
                    handles += state.fs.handles.len();
                    handed.push(HandedSession {
                        record: hosted.record.clone(),
                        adapter: state.adapter,
                        fs: state.fs,
                    });
                }
                Err(e) => {
                    let message = format!(
                        "session {} cannot be handed over: {}",
                        hosted.record.spec.staging.display(),
                        crate::mount::chain(&e)
                    );
                    refuse(&mut stream, &frozen, message);
                    return;
                }
            }
        }
        let fds: Vec<BorrowedFd<'_>> = sessions
            .values()
            .filter_map(|h| h.mounted.fuse_fd())
            .collect();
        if fds.len() != handed.len() {
            let message = "a session has no descriptor to hand over".to_string();
            refuse(&mut stream, &frozen, message);
            return;
        }
        let count = handed.len();
        let sent = wire::write_frame(&mut stream, &Response::Handover { sessions: handed })
            .and_then(|_| wire::send_fds(&stream, &fds));
        let answer: std::io::Result<HandoverAnswer> = sent.and_then(|_| {
            stream.set_read_timeout(Some(ANSWER_WAIT))?;
            wire::read_frame(&mut stream)
        });
        match answer {
            Ok(HandoverAnswer::Accepted) => {
                self.handed_over.store(true, Ordering::SeqCst);
                // Drained already (frozen): only requests being held pass.
                stop_serving(&frozen, Duration::from_secs(1));
                tracing::info!(
                    sessions = count,
                    handles,
                    seconds = started.elapsed().as_secs_f64(),
                    "handed over to a successor; exiting without unmounting"
                );
                if self.cfg.idle_after_handover {
                    // Keep the container alive (a DaemonSet would restart
                    // an exited one, and the restart would take the
                    // sessions back) until Kubernetes deletes the pod, but
                    // with no thread left reading /dev/fuse (see idle.rs).
                    let e = super::idle::become_idle();
                    tracing::error!(error = %e, "could not re-execute as an idle process; exiting instead (the container will restart)");
                }
                // No destructors: they would unmount.
                std::process::exit(0);
            }
            Ok(HandoverAnswer::Refused { message }) => {
                tracing::warn!(%message, "the successor refused the sessions; going on serving");
                thaw(&frozen);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the successor went away during the handover; going on serving");
                thaw(&frozen);
            }
        }
    }
}

/// Before this process ends: no answer in progress (waited for up to
/// `drain`) and no reader inside read(2) (see `MountedFs::stop_serving`).
pub(super) fn stop_serving(sessions: &[&Hosted], drain: Duration) {
    for hosted in sessions {
        if !hosted.mounted.stop_serving(drain) {
            tracing::warn!(
                staging = %hosted.record.spec.staging.display(),
                "the session was still busy at exit: a request in progress may fail with EIO or be applied again"
            );
        }
    }
}

fn thaw(frozen: &[&Hosted]) {
    for hosted in frozen {
        hosted.mounted.thaw();
    }
}

/// Give up a handover that cannot happen: serve on, and say why to the
/// successor. Answered, so the successor does not take the closed
/// connection for this process going away.
fn refuse(stream: &mut UnixStream, frozen: &[&Hosted], message: String) {
    tracing::error!("{message}; going on serving");
    thaw(frozen);
    let _ = wire::write_frame(
        stream,
        &Response::Error {
            code: ErrorCode::Internal,
            message,
        },
    );
}

/// The new side: ask the mounter on `stream` for its sessions. Returns them
/// with their descriptors once the old process is gone.
pub fn take_from(
    mut stream: UnixStream,
    timeout: Duration,
) -> Result<Vec<(HandedSession, OwnedFd)>, MounterError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source: std::io::Error| MounterError::Io {
            what: format!("taking over: {what}"),
            source,
        }
    };
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io("setting a timeout"))?;
    // Until the first answer arrives nothing was handed over: a closed
    // connection means the old process is going away on its own.
    let gone_or = |what: &str| {
        let io = io(what);
        move |e: std::io::Error| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ) {
                MounterError::PredecessorGone(e)
            } else {
                io(e)
            }
        }
    };
    wire::write_frame(
        &mut stream,
        &Envelope {
            v: PROTOCOL_VERSION,
            request: Request::Takeover,
        },
    )
    .map_err(gone_or("asking the running mounter"))?;
    let sessions = match wire::read_frame::<Response>(&mut stream)
        .map_err(gone_or("waiting for the running mounter's sessions"))?
    {
        Response::Handover { sessions } => sessions,
        Response::Error { code, message } => {
            return Err(MounterError::Refused(format!(
                "the running mounter refused the takeover ({code:?}): {message}; it goes on serving"
            )))
        }
        other => {
            return Err(MounterError::Refused(format!(
                "the running mounter answered {other:?} to a takeover"
            )))
        }
    };
    let fds = wire::recv_fds(&stream, sessions.len()).map_err(io("receiving descriptors"))?;
    if let Some(bad) = sessions.iter().find(|s| s.fs.version != SNAPSHOT_VERSION) {
        let message = format!(
            "session {} comes in state version {}, this mounter reads {SNAPSHOT_VERSION}",
            bad.record.spec.staging.display(),
            bad.fs.version
        );
        let _ = wire::write_frame(
            &mut stream,
            &HandoverAnswer::Refused {
                message: message.clone(),
            },
        );
        return Err(MounterError::Refused(message));
    }
    wire::write_frame(&mut stream, &HandoverAnswer::Accepted).map_err(io("accepting"))?;
    // The old process closes the connection by exiting (or idling after
    // dropping it): once it is closed, none of its threads reads the
    // sessions' descriptors any more.
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    Ok(sessions.into_iter().zip(fds).collect())
}
