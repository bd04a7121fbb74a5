//! `cachalot doctor`: what a mount needs, checked in order, one line per
//! check with the cause and the fix on failure. The checks are also the
//! mount's and the CSI node's: their messages come from the same functions
//! (the backends' write probes, `source_dir`, `cache_space`), so an
//! operator reads the same text from `doctor`, `mount` and NodeStage.
//!
//! Groups, one file each: `net` (DNS, TCP), `nfs` (rpcbind, exports,
//! identity), `s3` (credentials, clock, access, bucket, identity), `local`
//! (file:// sources), `host` (cache directory, /dev/fuse, kernel).

mod host;
mod local;
mod net;
mod nfs;
mod s3;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;

use serde::Serialize;

use crate::backend::s3::S3Options;
use crate::backend::{Identity, Source};

pub use host::{cache_space, kernel_release};
pub use local::{source_dir, SourceDirError};

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// Passes; tells of an optional feature (e.g. FUSE passthrough).
    Info,
    /// Not run: a check it depends on failed, or it does not apply.
    Skipped,
}

impl Status {
    pub fn mark(self) -> &'static str {
        match self {
            Status::Pass => "✓",
            Status::Fail => "✗",
            Status::Info => "ℹ",
            Status::Skipped => "–",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:<11} ", self.status.mark(), self.name)?;
        if self.status == Status::Skipped {
            write!(f, "skipped: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, " — fix: {fix}")?;
        }
        Ok(())
    }
}

/// Why a check failed, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{cause}{}", fix.as_ref().map(|f| format!(" — fix: {f}")).unwrap_or_default())]
pub struct Problem {
    pub cause: String,
    pub fix: Option<String>,
}

impl Problem {
    pub fn new(cause: impl Into<String>, fix: impl Into<String>) -> Problem {
        Problem {
            cause: cause.into(),
            fix: Some(fix.into()),
        }
    }

    /// A cause whose text already says what to do (the backends' probes).
    pub fn explained(cause: impl Into<String>) -> Problem {
        Problem {
            cause: cause.into(),
            fix: None,
        }
    }
}

impl From<crate::backend::BackendError> for Problem {
    /// The backend's cause, which names the fix where it knows one.
    fn from(e: crate::backend::BackendError) -> Problem {
        if e.cause.is_empty() {
            Problem::explained(e.to_string())
        } else {
            Problem::explained(e.cause)
        }
    }
}

/// A passed check: what was found.
#[derive(Debug)]
pub struct Found {
    pub message: String,
    pub info: bool,
}

impl From<String> for Found {
    fn from(message: String) -> Found {
        Found {
            message,
            info: false,
        }
    }
}

/// What to check: the same things `cachalot mount` is given.
#[derive(Debug, Clone)]
pub struct Request {
    pub source: Source,
    /// `--uid/--gid`; `None` = this process's identity, as for a mount.
    pub identity: Option<Identity>,
    pub groups: Vec<u32>,
    /// `None`: the cache checks are skipped.
    pub cache_dir: Option<PathBuf>,
    pub cache_size: u64,
    pub s3: S3Options,
}

impl Request {
    /// How the backend is opened: as a mount with these arguments would,
    /// S3 staging in `staging_dir`.
    pub fn open_options(&self, staging_dir: PathBuf) -> crate::backend::OpenOptions {
        crate::backend::OpenOptions {
            identity: self.identity,
            groups: self.groups.clone(),
            s3: self.s3.clone(),
            staging_dir,
            // The doctor's probe writes are its own: nothing resumes them.
            spill_dir: None,
        }
    }

    /// The identity the backend is used as.
    pub fn identity(&self) -> Identity {
        self.identity
            .unwrap_or_else(crate::backend::nfs::process_identity)
    }
}

/// Runs checks in order, skipping those whose prerequisites failed.
pub struct Doctor<'a> {
    checks: Vec<Check>,
    blocked: Option<String>,
    sink: &'a mut dyn FnMut(&Check),
}

impl<'a> Doctor<'a> {
    pub fn new(sink: &'a mut dyn FnMut(&Check)) -> Doctor<'a> {
        Doctor {
            checks: Vec::new(),
            blocked: None,
            sink,
        }
    }

    fn push(&mut self, check: Check) {
        (self.sink)(&check);
        self.checks.push(check);
    }

    /// Run `check` unless an earlier check of this group failed; its value
    /// when it passed.
    pub async fn step<T, F>(&mut self, name: &'static str, check: F) -> Option<T>
    where
        F: Future<Output = Result<(T, Found), Problem>>,
    {
        if let Some(why) = &self.blocked {
            let message = why.clone();
            self.skip(name, message);
            return None;
        }
        match check.await {
            Ok((value, found)) => {
                let status = if found.info {
                    Status::Info
                } else {
                    Status::Pass
                };
                self.push(Check {
                    name,
                    status,
                    message: found.message,
                    fix: None,
                });
                Some(value)
            }
            Err(problem) => {
                self.blocked = Some(format!("{name} failed"));
                self.push(Check {
                    name,
                    status: Status::Fail,
                    message: problem.cause,
                    fix: problem.fix,
                });
                None
            }
        }
    }

    pub fn skip(&mut self, name: &'static str, why: impl Into<String>) {
        self.push(Check {
            name,
            status: Status::Skipped,
            message: why.into(),
            fix: None,
        });
    }

    /// Start an independent group: earlier failures do not skip it.
    pub fn next_group(&mut self) {
        self.blocked = None;
    }

    pub fn finish(self) -> Vec<Check> {
        self.checks
    }
}

/// Every check for `req`, in order, each handed to `sink` as it ends.
pub async fn run(req: &Request, sink: &mut dyn FnMut(&Check)) -> Vec<Check> {
    let mut doc = Doctor::new(sink);
    match &req.source {
        Source::Local { root } => local::checks(&mut doc, root, req).await,
        Source::Nfs { host, port, path } => {
            nfs::checks(
                &mut doc,
                req,
                nfs::Target {
                    host,
                    port: *port,
                    share: path,
                },
            )
            .await
        }
        Source::S3 { .. } => s3::checks(&mut doc, req).await,
    }
    doc.next_group();
    host::cache_checks(&mut doc, req.cache_dir.as_deref(), req.cache_size).await;
    doc.next_group();
    host::kernel_checks(&mut doc).await;
    doc.finish()
}

/// True when no check failed.
pub fn all_passed(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Fail)
}

/// Run `run` on a runtime of its own (the command line).
pub fn run_blocking(req: &Request, sink: &mut dyn FnMut(&Check)) -> std::io::Result<Vec<Check>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(run(req, sink)))
}

/// Byte counts as people read them (`10 GiB`, `512 MiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests;
