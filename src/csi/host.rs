//! Who runs a staged volume's FUSE session for the node service: the
//! node's mounter (`--mounter-socket`, production: sessions outlive this
//! plugin) or a `cachalot mount` child of this plugin (no mounter: sessions
//! die with the plugin's container; for trying things out). The node
//! service only sees this trait, so its logic is the same for both and can
//! be tested with a fake.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use tonic::Status;

use super::params::S3Credentials;
use super::state::StagedRecord;
use super::supervisor::{is_mount_child, pid_alive, Supervisor};
use crate::mount::spec::MountSpec;
use crate::mount::table as mounts;
use crate::mounter::protocol::{ErrorCode, S3Secret, StageRequest, VolumeNames};
use crate::mounter::{ClientError, MounterClient};

/// One session to start.
pub struct Start<'a> {
    pub volume_id: &'a str,
    pub spec: &'a MountSpec,
    pub creds: Option<&'a S3Credentials>,
    pub names: VolumeNames,
    /// Where a child logs (child mode).
    pub log_file: &'a Path,
}

pub trait SessionHost: Send + Sync {
    /// Serve `start.spec` at its staging path; the pid of the process that
    /// serves it. Errors carry the CSI code for the cause.
    fn start(&self, start: Start<'_>) -> Result<u32, Status>;
    /// Stop serving `staging` (its mount is gone or going). Blocking.
    fn stop(&self, staging: &Path, recorded_pid: u32);
    /// After a plugin restart: take charge of a session that still serves.
    fn adopt(&self, rec: &StagedRecord);
}

/// Secret values never leave the plugin, even where a mount quoted one
/// (the S3 backend names the access key id in its errors).
pub fn redact(mut msg: String, creds: Option<&S3Credentials>) -> String {
    if let Some(c) = creds {
        let mut values = vec![c.access_key_id.as_str(), c.secret_access_key.as_str()];
        values.extend(c.session_token.as_deref());
        for v in values.into_iter().filter(|v| !v.is_empty()) {
            msg = msg.replace(v, "<from the node-stage secret>");
        }
    }
    msg
}

/// The code for a mount that failed, from its reason: configuration
/// problems the operator must fix are FAILED_PRECONDITION, an unreachable
/// server UNAVAILABLE.
pub fn mount_failure_status(msg: &str) -> Status {
    let fixable = [
        // NFS preflight (squashed root, wrong uid) and export list
        ("root_squash", ""),
        (
            "is not exported by",
            "\nFix: correct the StorageClass share (the exports are listed above)",
        ),
        ("may not create files", ""),
        // S3 preflight and credentials
        (
            "credentials are wrong",
            "\nFix: put the right accessKeyId/secretAccessKey into the node-stage Secret",
        ),
        (
            "no S3 credentials",
            "\nFix: set csi.storage.k8s.io/node-stage-secret-name/-namespace in the StorageClass",
        ),
        ("NoSuchBucket", ""),
        ("S3 preflight failed", ""),
        (
            "ermission denied",
            "\nFix: give the mount's identity (uid/gid parameters) access to the source",
        ),
    ];
    if let Some((_, fix)) = fixable.iter().find(|(needle, _)| msg.contains(needle)) {
        return Status::failed_precondition(format!("{msg}{fix}"));
    }
    let unreachable = [
        "Unavailable",
        "unavailable",
        "Connection refused",
        "timed out",
    ];
    if unreachable.iter().any(|n| msg.contains(n)) {
        return Status::unavailable(format!(
            "{msg}\nThe source is unreachable; the call is retried"
        ));
    }
    Status::internal(msg.to_string())
}

impl SessionHost for Supervisor {
    fn start(&self, start: Start<'_>) -> Result<u32, Status> {
        let staging = &start.spec.staging;
        mounts::detach(staging).map_err(|e| {
            Status::internal(format!(
                "clearing the staging path {}: {e}",
                staging.display()
            ))
        })?;
        Supervisor::start(self, start.spec, start.creds, start.log_file)
            .map_err(|msg| mount_failure_status(&redact(msg, start.creds)))
    }

    fn stop(&self, staging: &Path, recorded_pid: u32) {
        Supervisor::stop(self, staging, recorded_pid)
    }

    fn adopt(&self, rec: &StagedRecord) {
        if self.running(&rec.staging_path).is_none()
            && pid_alive(rec.pid)
            && is_mount_child(rec.pid, &rec.staging_path)
        {
            Supervisor::adopt(self, &rec.staging_path, rec.pid);
        }
    }
}

/// Sessions in the node's mounter. This plugin is also their *keeper*: it
/// holds duplicates of the sessions' `/dev/fuse` descriptors, so that when
/// the mounter dies the kernel keeps the connections (requests wait) until
/// a new mounter takes them back (`keeper`).
pub struct MounterHost {
    client: MounterClient,
    kept: Mutex<Vec<(PathBuf, OwnedFd)>>,
}

impl MounterHost {
    pub fn new(client: MounterClient) -> MounterHost {
        MounterHost {
            client,
            kept: Mutex::new(Vec::new()),
        }
    }

    /// Fetch fresh duplicates of every session's descriptor.
    pub fn refresh_kept(&self) -> Result<usize, ClientError> {
        let fds = self.client.fds()?;
        let n = fds.len();
        *self.kept.lock() = fds;
        Ok(n)
    }

    /// The keeper's loop (a thread for the life of the plugin): when a new
    /// mounter process appears that lacks sessions we keep descriptors of,
    /// its predecessor died: hand them over, so the kernel connections,
    /// whose requests waited meanwhile, are served again.
    pub fn keep(self: std::sync::Arc<Self>, every: std::time::Duration) {
        let mut known_instance: Option<String> = None;
        loop {
            std::thread::sleep(every);
            let Ok(list) = self.client.list() else {
                continue; // down: the kept descriptors hold its sessions
            };
            if known_instance.as_deref() == Some(list.instance.as_str()) {
                continue;
            }
            let served: std::collections::HashSet<PathBuf> =
                list.sessions.iter().map(|s| s.staging.clone()).collect();
            let orphans: Vec<(PathBuf, OwnedFd)> = self
                .kept
                .lock()
                .iter()
                .filter(|(p, _)| !served.contains(p))
                .filter_map(|(p, fd)| fd.try_clone().ok().map(|fd| (p.clone(), fd)))
                .collect();
            if !orphans.is_empty() {
                tracing::warn!(sessions = orphans.len(), "the mounter restarted without its sessions (it died?); handing it the kept descriptors");
                match self.client.adopt(&orphans) {
                    Ok(()) => tracing::info!(
                        sessions = orphans.len(),
                        "the new mounter serves the kept sessions again"
                    ),
                    // What it could not rebuild (no record, damaged journal)
                    // it never will: said once, and those descriptors are
                    // let go below, so their mounts fail (ECONNABORTED)
                    // instead of waiting forever; NodeStage stages afresh.
                    Err(ClientError::Refused { message, .. }) => {
                        tracing::error!(%message, "the new mounter could not rebuild some kept sessions; letting them go")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "handing the kept sessions over failed; retrying");
                        continue;
                    }
                }
            }
            if known_instance.is_some() || !orphans.is_empty() {
                tracing::info!(instance = %list.instance, "keeping the descriptors of a new mounter process");
            }
            self.keep_fresh();
            known_instance = Some(list.instance);
        }
    }

    fn keep_fresh(&self) {
        if let Err(e) = self.refresh_kept() {
            tracing::warn!(error = %e, "could not fetch the sessions' descriptors from the mounter; a mounter crash now would break them");
        }
    }
}

fn client_status(e: ClientError, creds: Option<&S3Credentials>) -> Status {
    let msg = redact(e.to_string(), creds);
    match e.code() {
        Some(ErrorCode::AlreadyExists) => Status::already_exists(msg),
        Some(ErrorCode::MountFailed) => mount_failure_status(&msg),
        Some(ErrorCode::BadRequest) => Status::invalid_argument(msg),
        Some(ErrorCode::VersionMismatch) => Status::failed_precondition(msg),
        Some(ErrorCode::ShuttingDown) => Status::unavailable(msg),
        Some(ErrorCode::Internal) => Status::internal(msg),
        None => Status::unavailable(msg),
    }
}

impl SessionHost for std::sync::Arc<MounterHost> {
    fn start(&self, start: Start<'_>) -> Result<u32, Status> {
        MounterHost::start(self, start)
    }
    fn stop(&self, staging: &Path, recorded_pid: u32) {
        MounterHost::stop(self, staging, recorded_pid)
    }
    fn adopt(&self, rec: &StagedRecord) {
        MounterHost::adopt(self, rec)
    }
}

impl SessionHost for MounterHost {
    fn start(&self, start: Start<'_>) -> Result<u32, Status> {
        let secret = start.creds.map(|c| S3Secret {
            access_key_id: c.access_key_id.clone(),
            secret_access_key: c.secret_access_key.clone(),
            session_token: c.session_token.clone(),
        });
        let staged = self.client.stage(StageRequest {
            volume_id: start.volume_id.to_string(),
            spec: start.spec.clone(),
            secret,
            names: start.names,
        });
        let (pid, _already) = staged.map_err(|e| client_status(e, start.creds))?;
        self.keep_fresh();
        Ok(pid)
    }

    fn stop(&self, staging: &Path, _recorded_pid: u32) {
        if let Err(e) = self.client.unstage(staging) {
            tracing::warn!(error = %e, staging = %staging.display(), "the mounter could not stop a session");
        }
        self.keep_fresh();
    }

    fn adopt(&self, _rec: &StagedRecord) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_failures_get_codes_by_cause() {
        let code = |m: &str| mount_failure_status(m).code();
        assert_eq!(
            code("uid 0 is most likely squashed to an anonymous user (root_squash)"),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            code("share \"/x\" is not exported by h; exports: /a"),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            code("the S3 credentials are wrong (SignatureDoesNotMatch)"),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            code("S3 at x unavailable after retries"),
            tonic::Code::Unavailable
        );
        assert_eq!(code("something odd"), tonic::Code::Internal);
    }

    #[test]
    fn secret_values_are_redacted() {
        let c = S3Credentials {
            access_key_id: "AKID123".into(),
            secret_access_key: "s3cr3t".into(),
            session_token: Some("tok".into()),
        };
        let out = redact("as 'AKID123' with s3cr3t and tok".into(), Some(&c));
        assert!(!out.contains("AKID123") && !out.contains("s3cr3t") && !out.contains("tok"));
    }
}
