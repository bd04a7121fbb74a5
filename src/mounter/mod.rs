//! `cachalot mounter`: the node's FUSE sessions in one long-lived process,
//! apart from the CSI plugin.
//!
//! A container's processes die together, so FUSE daemons inside the CSI
//! plugin's container die on every rollout, liveness restart or OOM kill,
//! and the pods' mounts answer ENOTCONN for good. The mounter runs in a
//! container of its own (docs/deploy.md) and is asked by the CSI node
//! plugin, over a root-only unix socket, to start and stop sessions
//! (`protocol`). It survives the plugin, and its own lifecycle is covered
//! twice:
//!
//! - **Upgrade (live takeover, `takeover`)**: a second mounter started on
//!   the same socket asks the running one for its sessions. The old one
//!   stops answering the kernel at a clean point, sends each session's
//!   `/dev/fuse` descriptor and the filesystem state the kernel depends on,
//!   and exits 0 without unmounting; the new one resumes without a FUSE
//!   INIT and asks the kernel to re-send what was left unanswered.
//! - **Crash (`recovery`)**: the CSI node plugin keeps duplicates of the
//!   descriptors (the *keeper*), so a dead mounter's connections stay
//!   alive and requests wait in the kernel. The next mounter gets the
//!   descriptors back from the keeper, rebuilds each session from its
//!   record and journal in `--state-dir`, and has the kernel re-send the
//!   requests the dead process had read.
//!
//! Only when the mounter and the keeper die together is a session lost.

pub mod client;
pub mod idle;
pub mod protocol;
pub mod records;
pub mod server;
pub mod takeover;
pub mod wire;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

pub use client::{ClientError, MounterClient};
pub use server::{Mounter, MounterConfig};

#[derive(Debug, thiserror::Error)]
pub enum MounterError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
    /// The running mounter closed the connection before handing anything
    /// over: it is exiting (killed, or its container stopping), and its
    /// sessions stay with the keeper for recovery.
    #[error("the running mounter went away before handing its sessions over: {0}")]
    PredecessorGone(std::io::Error),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MounterError {
    let what = what.into();
    move |source| MounterError::Io { what, source }
}

/// What is at the socket path before we listen there.
enum Predecessor {
    None,
    /// A mounter answers: take its sessions over.
    Running(UnixStream),
}

fn predecessor(socket: &Path) -> Result<Predecessor, MounterError> {
    match UnixStream::connect(socket) {
        Ok(stream) => Ok(Predecessor::Running(stream)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            if socket.exists() {
                // Left by a mounter that died: nobody listens.
                tracing::info!(socket = %socket.display(), "removing a stale mounter socket");
                std::fs::remove_file(socket).map_err(io_err(format!(
                    "removing the stale socket {}",
                    socket.display()
                )))?;
            }
            Ok(Predecessor::None)
        }
        Err(e) => Err(MounterError::Io {
            what: format!("probing {}", socket.display()),
            source: e,
        }),
    }
}

/// How long a stopping mounter waits for answers in progress (within the
/// 30 s a pod gets to end after SIGTERM).
const EXIT_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a successor waits for a mounter that closed the takeover
/// connection unanswered to stop accepting on the socket.
const GONE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Take the sessions of a mounter running on the socket, if any. One that
/// goes away before handing them over (killed while we connect) leaves
/// them to recovery: we wait until its socket stops answering, then go on
/// as if none ran (the sessions come back from the keeper).
fn take_over_or_recover(cfg: &MounterConfig, mounter: &Mounter) -> Result<(), MounterError> {
    let deadline = std::time::Instant::now() + GONE_WAIT;
    loop {
        let stream = match predecessor(&cfg.socket)? {
            Predecessor::None => return Ok(()),
            Predecessor::Running(stream) => stream,
        };
        let started = std::time::Instant::now();
        tracing::info!(socket = %cfg.socket.display(), "a mounter runs on this socket; taking its sessions over");
        let handed = match takeover::take_from(stream, cfg.takeover_timeout) {
            Ok(handed) => handed,
            Err(MounterError::PredecessorGone(e)) if std::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "the running mounter went away before handing its sessions over; waiting for it to be gone, then recovering them");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
            Err(e) => return Err(e),
        };
        // The old process is gone: its socket file is a leftover.
        let _ = std::fs::remove_file(&cfg.socket);
        let (sessions, handles) = handed
            .iter()
            .fold((0, 0), |(s, h), (x, _)| (s + 1, h + x.fs.handles.len()));
        mounter.resume_handed(handed);
        tracing::info!(
            sessions,
            handles,
            resumed = mounter.sessions.lock().len(),
            seconds = started.elapsed().as_secs_f64(),
            "took over from the previous mounter"
        );
        return Ok(());
    }
}

/// Run the mounter until SIGTERM/SIGINT or until a successor took over.
/// Sessions are never unmounted on exit: they belong to the pods.
pub fn run(cfg: MounterConfig) -> Result<(), MounterError> {
    use nix::sys::signal::{SigSet, Signal};
    idle::remember_parent_death_signal();
    // Before any thread exists, so every thread inherits the mask and the
    // signals wait for `sigwait` below.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
        .thread_block()
        .map_err(|e| io_err("blocking signals")(e.into()))?;

    std::fs::create_dir_all(&cfg.cache_dir).map_err(io_err(format!(
        "creating the cache directory {}",
        cfg.cache_dir.display()
    )))?;
    let records = records::Records::open(&cfg.state_dir).map_err(io_err(format!(
        "opening the state directory {}",
        cfg.state_dir.display()
    )))?;
    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    }
    let mounter = Arc::new(Mounter::new(cfg.clone(), records));
    take_over_or_recover(&cfg, &mounter)?;
    let listener = UnixListener::bind(&cfg.socket)
        .map_err(io_err(format!("listening on {}", cfg.socket.display())))?;
    std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(format!("restricting {}", cfg.socket.display())))?;
    tracing::info!(
        socket = %cfg.socket.display(),
        pid = std::process::id(),
        protocol = protocol::PROTOCOL_VERSION,
        sessions = mounter.sessions.lock().len(),
        "mounter serving"
    );
    if let Some(addr) = cfg.metrics_addr {
        // After the signal mask (the thread inherits it) and the takeover.
        crate::metrics::serve_when_free(addr);
    }
    let server = Arc::clone(&mounter);
    std::thread::Builder::new()
        .name("mounter-accept".into())
        .spawn(move || server.serve(listener))
        .map_err(io_err("starting the accept thread"))?;
    let signal = signals
        .wait()
        .map_err(|e| io_err("waiting for signals")(e.into()))?;
    // A handover in progress finishes first (it holds the control lock and
    // ends the process itself when it succeeds).
    let _control = mounter.control.lock();
    let hosted = mounter.sessions.lock();
    let sessions = hosted.len();
    // Their requests wait in the kernel for the successor.
    takeover::stop_serving(&hosted.values().collect::<Vec<_>>(), EXIT_DRAIN);
    tracing::info!(
        ?signal,
        sessions,
        "mounter stopping; its sessions stay mounted for a successor (the CSI node plugin keeps them alive)"
    );
    // No destructors: dropping a session would unmount it.
    std::process::exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn mounter(dir: &Path) -> Mounter {
        let cfg = MounterConfig {
            socket: dir.join("mounter.sock"),
            state_dir: dir.join("state"),
            cache_dir: dir.join("cache"),
            cache_size: None,
            takeover_timeout: Duration::from_secs(5),
            idle_after_handover: false,
            metrics_addr: None,
        };
        let records = records::Records::open(&cfg.state_dir).expect("state dir");
        Mounter::new(cfg, records)
    }

    /// A predecessor killed while the successor connects accepts the
    /// connection, then closes it unanswered and stops listening. Its
    /// sessions are the keeper's to give back: the successor goes on as a
    /// recovering mounter instead of exiting with "connection reset".
    #[test]
    fn a_predecessor_gone_before_answering_leaves_the_sessions_to_recovery() {
        let dir = tempfile::tempdir().expect("temp dir");
        let m = mounter(dir.path());
        let listener = UnixListener::bind(&m.cfg.socket).expect("bind");
        let dying = std::thread::spawn(move || {
            let (conn, _) = listener.accept().expect("accept");
            std::thread::sleep(Duration::from_millis(50));
            drop(conn);
            // The socket file stays behind, as after a SIGKILL.
            drop(listener);
        });
        take_over_or_recover(&m.cfg, &m).expect("recovers instead of failing");
        dying.join().expect("predecessor thread");
        assert!(m.sessions.lock().is_empty());
        assert!(!m.cfg.socket.exists(), "the stale socket is removed");
    }

    /// One that answers with an error keeps its sessions and goes on
    /// serving: the successor must not take them.
    #[test]
    fn a_predecessor_that_refuses_keeps_its_sessions() {
        let dir = tempfile::tempdir().expect("temp dir");
        let m = mounter(dir.path());
        let listener = UnixListener::bind(&m.cfg.socket).expect("bind");
        let refusing = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let _: protocol::Envelope = wire::read_frame(&mut conn).expect("request");
            wire::write_frame(
                &mut conn,
                &protocol::Response::Error {
                    code: protocol::ErrorCode::Internal,
                    message: "busy".into(),
                },
            )
            .expect("answer");
        });
        let e = take_over_or_recover(&m.cfg, &m).expect_err("refused");
        assert!(matches!(e, MounterError::Refused(_)), "{e}");
        refusing.join().expect("predecessor thread");
    }
}
