//! The mounter's sessions and its request handling. Control requests are
//! served one connection per thread and serialised by `control`: stages,
//! unstages and handovers are rare, and one at a time keeps the session
//! map and the records in the state dir in step.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use super::protocol::{
    Envelope, ErrorCode, RawFrame, Request, Response, SessionInfo, SessionList, StageRequest,
    PROTOCOL_VERSION,
};
use super::records::{Records, SessionRecord};
use super::wire;
use crate::mount::table as mounts;
use crate::mount::{self, MountedFs};

#[derive(Debug, Clone)]
pub struct MounterConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub cache_size: Option<u64>,
    pub takeover_timeout: Duration,
    /// After handing the sessions to a successor, stay alive (idle) until
    /// stopped instead of exiting (see `takeover`).
    pub idle_after_handover: bool,
    /// Serve Prometheus metrics here (once a predecessor let go of it).
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// One volume served by this process.
pub(super) struct Hosted {
    pub record: SessionRecord,
    /// How this process got it: "mounted", "takeover", "recovered".
    pub origin: &'static str,
    pub mounted: MountedFs,
}

pub struct Mounter {
    pub(super) cfg: MounterConfig,
    pub(super) sessions: Mutex<BTreeMap<PathBuf, Hosted>>,
    pub(super) records: Records,
    /// Serialises stage, unstage and handover.
    pub(super) control: Mutex<()>,
    /// Set once the sessions went to a successor: every later request is
    /// refused, and the process exits.
    pub(super) handed_over: AtomicBool,
    /// Tells this process from its predecessors (pids repeat in containers).
    pub(super) instance: String,
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error {
        code,
        message: message.into(),
    }
}

pub(super) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Mounter {
    pub fn new(cfg: MounterConfig, records: Records) -> Mounter {
        Mounter {
            cfg,
            sessions: Mutex::new(BTreeMap::new()),
            records,
            control: Mutex::new(()),
            handed_over: AtomicBool::new(false),
            instance: format!(
                "{:x}-{:x}",
                std::process::id(),
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            ),
        }
    }

    /// Accept connections until the process ends (a handover ends it).
    pub fn serve(self: &Arc<Self>, listener: UnixListener) {
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => {
                    let me = Arc::clone(self);
                    let spawned = std::thread::Builder::new()
                        .name("mounter-conn".into())
                        .spawn(move || me.connection(stream));
                    if let Err(e) = spawned {
                        tracing::error!(error = %e, "cannot start a connection thread");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn connection(self: Arc<Self>, mut stream: UnixStream) {
        if let Err(why) = check_peer(&stream) {
            tracing::warn!(why, "refused a connection");
            let _ = wire::write_frame(&mut stream, &error(ErrorCode::BadRequest, why));
            return;
        }
        let response = match self.read_request(&mut stream) {
            Ok(Request::Takeover) => {
                self.hand_over(stream);
                return;
            }
            Ok(Request::Adopt { staging }) => self.adopt(&stream, staging),
            Ok(Request::Fds) => return self.send_fds(stream),
            Ok(request) => self.handle(request),
            Err(response) => response,
        };
        if let Err(e) = wire::write_frame(&mut stream, &response) {
            tracing::debug!(error = %e, "client went away before the answer");
        }
    }

    /// The next request, its version checked before its shape.
    fn read_request(&self, stream: &mut UnixStream) -> Result<Request, Response> {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let bytes = wire::read_frame_bytes(stream)
            .map_err(|e| error(ErrorCode::BadRequest, format!("reading the request: {e}")))?;
        let raw: RawFrame = serde_json::from_slice(&bytes)
            .map_err(|e| error(ErrorCode::BadRequest, format!("malformed request: {e}")))?;
        let version = raw.get("v").and_then(|v| v.as_u64());
        if version != Some(u64::from(PROTOCOL_VERSION)) {
            let theirs = version
                .map(|v| format!("protocol {v}"))
                .unwrap_or_else(|| "no protocol version".into());
            return Err(error(
                ErrorCode::VersionMismatch,
                format!(
                    "this mounter (cachalot {}) speaks protocol {PROTOCOL_VERSION}, the request has {theirs}; \
                     run the same cachalot version for the CSI node plugin and the mounter",
                    crate::csi::DRIVER_VERSION
                ),
            ));
        }
        let envelope: Envelope = serde_json::from_slice(&bytes)
            .map_err(|e| error(ErrorCode::BadRequest, format!("unknown request: {e}")))?;
        if self.handed_over.load(Ordering::SeqCst) {
            return Err(error(
                ErrorCode::ShuttingDown,
                "this mounter handed its sessions to a successor and is exiting; retry",
            ));
        }
        Ok(envelope.request)
    }

    fn handle(&self, request: Request) -> Response {
        match request {
            Request::Stage(req) => self.stage(*req),
            Request::Unstage { staging } => self.unstage(&staging),
            Request::List => Response::Sessions(self.list()),
            Request::Fds | Request::Takeover | Request::Adopt { .. } => {
                error(ErrorCode::BadRequest, "not handled here")
            }
        }
    }

    fn stage(&self, req: StageRequest) -> Response {
        let _control = self.control.lock();
        let staging = req.spec.staging.clone();
        let pid = std::process::id();
        if let Some(existing) = self.sessions.lock().get(&staging) {
            let same =
                existing.record.volume_id == req.volume_id && existing.record.spec == req.spec;
            if existing.mounted.is_serving() {
                return if same {
                    Response::Staged {
                        mounter_pid: pid,
                        already: true,
                    }
                } else {
                    error(
                        ErrorCode::AlreadyExists,
                        format!(
                            "{} already serves volume {} with other options; unstage it first",
                            staging.display(),
                            existing.record.volume_id
                        ),
                    )
                };
            }
        }
        // A session that ended (unmounted from outside) is replaced.
        if let Some(dead) = self.sessions.lock().remove(&staging) {
            tracing::warn!(volume_id = %dead.record.volume_id, staging = %staging.display(), "session had ended; mounting again");
            drop(dead);
        }
        let record = SessionRecord::new(&req);
        match self.mount(&record) {
            Ok(mounted) => {
                if let Err(e) = self.records.save(&record) {
                    tracing::warn!(error = %e, "recording the session failed: it will not be recovered after a crash");
                }
                tracing::info!(
                    volume_id = %record.volume_id,
                    pv = record.names.pv.as_deref().unwrap_or("-"),
                    pvc = %record.names.claim(),
                    source = %record.spec.source,
                    staging = %staging.display(),
                    "session started"
                );
                self.sessions.lock().insert(
                    staging,
                    Hosted {
                        record,
                        origin: "mounted",
                        mounted,
                    },
                );
                Response::Staged {
                    mounter_pid: pid,
                    already: false,
                }
            }
            Err(response) => response,
        }
    }

    /// Serve sessions handed over by the predecessor (its process is gone).
    pub fn resume_handed(
        &self,
        handed: Vec<(super::protocol::HandedSession, std::os::fd::OwnedFd)>,
    ) {
        for (session, fd) in handed {
            let staging = session.record.spec.staging.clone();
            let resumed = self.options(&session.record).and_then(|opts| {
                mount::resume(opts, fd, session.adapter, session.fs)
                    .map_err(|e| error(ErrorCode::MountFailed, mount::chain(&e)))
            });
            match resumed {
                Ok(mounted) => {
                    self.sessions.lock().insert(
                        staging,
                        Hosted {
                            record: session.record,
                            origin: "takeover",
                            mounted,
                        },
                    );
                }
                Err(Response::Error { message, .. }) => {
                    tracing::error!(staging = %staging.display(), %message, "a handed-over session could not be resumed: its requests wait until the volume is staged again");
                }
                Err(_) => {}
            }
        }
    }

    /// The mount options of a session, as this mounter runs it.
    fn options(&self, record: &SessionRecord) -> Result<mount::MountOptions, Response> {
        let mut spec = record.spec.clone();
        spec.cache_dir = self.cfg.cache_dir.clone();
        if spec.cache_size.is_none() {
            spec.cache_size = self.cfg.cache_size;
        }
        let credentials = record.secret.as_ref().map(|s| s.credentials());
        let mut opts = spec
            .options(credentials)
            .map_err(|e| error(ErrorCode::BadRequest, format!("invalid mount spec: {e}")))?;
        opts.journal_dir = Some(self.records.journal_dir(&record.spec.staging));
        opts.volume = Some(record.volume_id.clone());
        Ok(opts)
    }

    /// After the previous mounter died: serve the sessions whose
    /// descriptors the keeper kept, from their records and journals.
    pub(super) fn adopt(&self, stream: &UnixStream, staging: Vec<PathBuf>) -> Response {
        let fds = match wire::recv_fds(stream, staging.len()) {
            Ok(fds) => fds,
            Err(e) => return error(ErrorCode::BadRequest, format!("receiving descriptors: {e}")),
        };
        let _control = self.control.lock();
        let started = std::time::Instant::now();
        let mut recovered = 0usize;
        let mut failed = Vec::new();
        for (path, fd) in staging.into_iter().zip(fds) {
            if self.sessions.lock().contains_key(&path) {
                // Served already (taken over, or adopted before): the
                // keeper's copy is just another reference.
                continue;
            }
            match self.recover_one(&path, fd) {
                Ok(hosted) => {
                    tracing::info!(
                        volume_id = %hosted.record.volume_id,
                        pvc = %hosted.record.names.claim(),
                        staging = %path.display(),
                        "session recovered from the keeper's descriptor and the journal"
                    );
                    self.sessions.lock().insert(path, hosted);
                    recovered += 1;
                }
                Err(message) => {
                    tracing::error!(staging = %path.display(), %message, "a session could not be recovered");
                    failed.push(format!("{}: {message}", path.display()));
                }
            }
        }
        tracing::info!(
            recovered,
            failed = failed.len(),
            seconds = started.elapsed().as_secs_f64(),
            "recovered sessions from the keeper (requests the dead mounter held are re-sent)"
        );
        if failed.is_empty() {
            Response::Ok
        } else {
            error(ErrorCode::MountFailed, failed.join("; "))
        }
    }

    fn recover_one(&self, staging: &Path, fd: std::os::fd::OwnedFd) -> Result<Hosted, String> {
        let record = self
            .records
            .load(staging)
            .map_err(|e| format!("reading its record: {e}"))?
            .ok_or("no record of it in the state dir")?;
        let (snapshot, abi) = mount::journal::FileJournal::load(&self.records.journal_dir(staging))
            .map_err(|e| format!("reading its journal: {e}"))?;
        let opts = match self.options(&record) {
            Ok(o) => o,
            Err(Response::Error { message, .. }) => return Err(message),
            Err(_) => return Err("invalid options".into()),
        };
        let adapter = crate::fuse::AdapterState {
            abi,
            backing_ids: Vec::new(),
        };
        let mounted = mount::resume(opts, fd, adapter, snapshot).map_err(|e| mount::chain(&e))?;
        Ok(Hosted {
            record,
            origin: "recovered",
            mounted,
        })
    }

    /// Mount a session afresh at its staging path.
    pub(super) fn mount(&self, record: &SessionRecord) -> Result<MountedFs, Response> {
        let staging = &record.spec.staging;
        std::fs::create_dir_all(staging)
            .or_else(|e| match mounts::is_mount_point(staging) {
                Ok(true) => Ok(()),
                _ => Err(e),
            })
            .map_err(|e| {
                error(
                    ErrorCode::MountFailed,
                    format!("creating the staging path {}: {e}", staging.display()),
                )
            })?;
        // Whatever is left there (a dead mount of a crashed process) goes.
        mounts::detach(staging).map_err(|e| {
            error(
                ErrorCode::MountFailed,
                format!("clearing the staging path {}: {e}", staging.display()),
            )
        })?;
        let opts = self.options(record)?;
        mount::start(opts).map_err(|e| error(ErrorCode::MountFailed, mount::chain(&e)))
    }

    fn unstage(&self, staging: &Path) -> Response {
        let _control = self.control.lock();
        let hosted = self.sessions.lock().remove(staging);
        let result = match hosted {
            Some(mut h) => {
                let result = h.mounted.unmount();
                tracing::info!(
                    volume_id = %h.record.volume_id,
                    pv = h.record.names.pv.as_deref().unwrap_or("-"),
                    pvc = %h.record.names.claim(),
                    staging = %staging.display(),
                    "session stopped"
                );
                self.records.remove(staging);
                result.map_err(|e| mount::chain(&e))
            }
            None => {
                self.records.remove(staging);
                mounts::unmount(staging)
                    .map(|_| ())
                    .map_err(|e| format!("unmounting {}: {e}", staging.display()))
            }
        };
        match result {
            Ok(()) => Response::Ok,
            Err(message) => error(ErrorCode::Internal, message),
        }
    }

    pub fn list(&self) -> SessionList {
        let sessions = self.sessions.lock();
        SessionList {
            mounter_pid: std::process::id(),
            instance: self.instance.clone(),
            mounter_version: crate::csi::DRIVER_VERSION.to_string(),
            sessions: sessions
                .values()
                .map(|h| SessionInfo {
                    volume_id: h.record.volume_id.clone(),
                    names: h.record.names.clone(),
                    source: h.record.spec.source.clone(),
                    staging: h.record.spec.staging.clone(),
                    read_only: h.record.spec.read_only,
                    started_unix: h.record.started_unix,
                    // The session thread, not a statfs: a backend outage
                    // must not make the mounter look dead.
                    health: if h.mounted.is_serving() {
                        "serving".into()
                    } else {
                        "ended (unmounted from outside)".into()
                    },
                    origin: h.origin.into(),
                })
                .collect(),
        }
    }

    fn send_fds(&self, mut stream: UnixStream) {
        let sessions = self.sessions.lock();
        let kept: Vec<(PathBuf, BorrowedFd<'_>)> = sessions
            .iter()
            .filter_map(|(p, h)| h.mounted.fuse_fd().map(|fd| (p.clone(), fd)))
            .collect();
        let response = Response::Fds {
            staging: kept.iter().map(|(p, _)| p.clone()).collect(),
        };
        let fds: Vec<BorrowedFd<'_>> = kept.iter().map(|(_, fd)| fd.as_fd()).collect();
        let sent =
            wire::write_frame(&mut stream, &response).and_then(|_| wire::send_fds(&stream, &fds));
        if let Err(e) = sent {
            tracing::warn!(error = %e, "sending descriptors to a keeper failed");
        }
    }
}

/// Only root (or our own user) may talk to the mounter: it mounts.
fn check_peer(stream: &UnixStream) -> Result<(), String> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("reading the peer's credentials: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() == 0 || cred.uid() == me {
        Ok(())
    } else {
        Err(format!(
            "uid {} may not use the mounter (only root)",
            cred.uid()
        ))
    }
}
