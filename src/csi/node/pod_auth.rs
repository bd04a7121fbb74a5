//! Volumes with `authenticationSource: pod` (see `params::auth`): S3
//! requests are signed with keys STS gives for each pod's own
//! service-account token, never with the driver's.
//!
//! NodeStageVolume only prepares the staging directory: the kubelet hands
//! out tokens with NodePublishVolume alone (the CSIDriver's
//! `tokenRequests`). Each publish then serves the pod from the session of
//! its service account, started on first use:
//!
//! ```text
//! <staging>/sa-<hash>/        FUSE mount of that service account's session
//! <staging>/sa-<hash>.token   its token, rewritten at every publish
//! ```
//!
//! The kubelet calls NodePublishVolume again before the token expires
//! (`requiresRepublish`); the token file is replaced then, and the session
//! reads it at its next exchange with STS. The session ends with the last
//! target unpublished from it, or at NodeUnstageVolume.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tonic::Status;

use super::super::caps::Checked;
use super::super::errors::io_status;
use super::super::params::{NodeParams, PodAuthentication};
use super::super::proto::*;
use super::super::state::{stage_key, StagedRecord};
use super::super::supervisor::MountSpec;
use super::super::volume_id::VolumeId;
use super::NodeService;
use crate::backend::s3::WebIdentity;

/// What the kubelet adds to NodePublishVolume's volume context: the tokens
/// the CSIDriver's `tokenRequests` asked for, and (with `podInfoOnMount`)
/// who the pod is.
pub const TOKENS_KEY: &str = "csi.storage.k8s.io/serviceAccount.tokens";
pub const SERVICE_ACCOUNT_KEY: &str = "csi.storage.k8s.io/serviceAccount.name";
pub const POD_NAMESPACE_KEY: &str = "csi.storage.k8s.io/pod.namespace";

/// STS takes session names of 2 to 64 characters.
const SESSION_NAME_MAX: usize = 64;

/// One entry of the kubelet's tokens JSON (`{"<audience>": {"token": ..,
/// "expirationTimestamp": ..}}`).
#[derive(Deserialize)]
struct KubeletToken {
    token: String,
}

/// A pod's token for the volume's audience, and whose it is.
pub(super) struct PodToken {
    /// `namespace/name` of the pod's service account.
    pub service_account: String,
    pub token: String,
}

/// The pod's token from a NodePublishVolume context; a missing piece is a
/// deployment error, named with its fix.
pub(super) fn pod_token(ctx: &HashMap<String, String>, audience: &str) -> Result<PodToken, Status> {
    let tokens = ctx.get(TOKENS_KEY).ok_or_else(|| {
        Status::failed_precondition(format!(
            "authenticationSource: pod needs the pod's service-account token, and the kubelet \
             sent none: the CSIDriver object must have tokenRequests: [{{audience: {audience}}}] \
             and requiresRepublish: true (deploy/kubernetes and the Helm chart set both)"
        ))
    })?;
    let tokens: HashMap<String, KubeletToken> = serde_json::from_str(tokens).map_err(|e| {
        Status::invalid_argument(format!(
            "volume context {TOKENS_KEY} is not the kubelet's tokens JSON: {e}"
        ))
    })?;
    let token = match tokens.get(audience) {
        Some(t) if !t.token.is_empty() => t.token.clone(),
        _ => {
            let mut have: Vec<&str> = tokens.keys().map(String::as_str).collect();
            have.sort_unstable();
            return Err(Status::failed_precondition(format!(
                "the kubelet sent tokens for audiences [{}] but the volume's tokenAudience is \
                 {audience}: add {{audience: {audience}}} to the CSIDriver's tokenRequests",
                have.join(", ")
            )));
        }
    };
    let named = |key: &str| ctx.get(key).filter(|v| !v.is_empty());
    let (Some(namespace), Some(name)) = (named(POD_NAMESPACE_KEY), named(SERVICE_ACCOUNT_KEY))
    else {
        return Err(Status::failed_precondition(
            "authenticationSource: pod needs to know the pod's service account: the CSIDriver \
             object must have podInfoOnMount: true",
        ));
    };
    Ok(PodToken {
        service_account: format!("{namespace}/{name}"),
        token,
    })
}

/// The directory name of a service account's session below the staging
/// path (a hash: names may be long, and paths are not for reading).
fn session_dir(service_account: &str) -> String {
    let hash = blake3::hash(service_account.as_bytes()).to_hex();
    format!("sa-{}", &hash[..16])
}

/// A session's token file: next to its mount point, `<dir>.token`.
fn token_file_of(session_staging: &Path) -> PathBuf {
    let mut name = session_staging.as_os_str().to_owned();
    name.push(".token");
    PathBuf::from(name)
}

/// The role session name STS records (CloudTrail): `namespace.name`, cut
/// to what STS accepts. Kubernetes names only hold characters STS allows.
fn session_name(service_account: &str) -> String {
    let mut name = service_account.replace('/', ".");
    name.truncate(SESSION_NAME_MAX);
    name
}

/// Replace the token file at once (the session may read it any time):
/// written aside, readable by root only, then renamed over.
fn write_token(path: &Path, token: &str) -> std::io::Result<()> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".new");
    let aside = PathBuf::from(aside);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&aside)?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&aside, path)
}

impl NodeService {
    /// NodePublishVolume of a volume whose pods sign with their own token.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn publish_for_pod(
        &self,
        req: &NodePublishVolumeRequest,
        staging: &Path,
        target: &Path,
        cap: &Checked,
        id: &VolumeId,
        params: &NodeParams,
        pod: &PodAuthentication,
    ) -> Result<(), Status> {
        let who = pod_token(&req.volume_context, &pod.audience)?;
        if !staging.is_dir() {
            return Err(Status::failed_precondition(format!(
                "volume {} is not staged at {} on this node; call NodeStageVolume first",
                req.volume_id,
                staging.display()
            )));
        }
        let session_staging = staging.join(session_dir(&who.service_account));
        let token_file = token_file_of(&session_staging);
        // Before the session starts (its first request exchanges it), and
        // at every republish (the kubelet's fresher token).
        write_token(&token_file, &who.token)
            .map_err(|e| io_status(&format!("writing {}", token_file.display()), &e))?;
        let source = id.location.join(&id.sub);
        let mut spec = MountSpec::new(
            &source,
            session_staging,
            self.cache_dir.clone(),
            &params.cache,
            cap.is_reader(),
            params.owner,
            cap.mount_group,
        );
        spec.web_identity = Some(WebIdentity {
            token_file,
            role_arn: pod.role_arn.clone(),
            session_name: Some(session_name(&who.service_account)),
        });
        let sa = Some(who.service_account.as_str());
        let running = self.state.load_staged(&stage_key(&req.volume_id, sa));
        if running.ok().flatten().is_none() {
            // A session started after an expansion gets the raised capacity
            // the volume's other sessions already have (a running one keeps
            // its own: `stage_blocking`). Only then are they all read: the
            // kubelet republishes every volume periodically.
            for other in self.state.pod_sessions(&req.volume_id) {
                spec.capacity = spec.capacity.max(other.spec.capacity);
            }
        }
        let session_staging = spec.staging.clone();
        let started =
            self.stage_blocking(&req.volume_id, sa, &source, spec, None, &req.volume_context);
        if let Err(e) = started {
            // Nothing left behind for an identity that got no session (a
            // token STS refuses); the kubelet retries with a fresh one.
            if self
                .state
                .load_staged(&stage_key(&req.volume_id, sa))
                .ok()
                .flatten()
                .is_none()
            {
                let _ = std::fs::remove_file(token_file_of(&session_staging));
                let _ = std::fs::remove_dir(&session_staging);
            }
            return Err(e);
        }
        let rec = self
            .state
            .load_staged(&stage_key(&req.volume_id, sa))
            .map_err(|e| Status::internal(format!("reading the stage record: {e}")))?
            .ok_or_else(|| Status::internal("the service account's stage record is missing"))?;
        let read_only = req.readonly || cap.wants_ro();
        self.bind_target(rec, target, read_only, cap, None)
    }

    /// Stop a service account's session and remove its directory and
    /// token.
    pub(super) fn end_pod_session(&self, rec: &StagedRecord) -> Result<(), Status> {
        self.unstage_blocking(&rec.key(), &rec.staging_path)?;
        if let Some(w) = &rec.spec.web_identity {
            match std::fs::remove_file(&w.token_file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, file = %w.token_file.display(), "token file not removed")
                }
            }
        }
        let _ = std::fs::remove_dir(&rec.staging_path);
        Ok(())
    }

    /// The session of the volume serving `path` (its staging path or a
    /// target): the volume's own, or one of its service accounts'.
    pub(super) fn session_at(
        &self,
        volume_id: &str,
        path: &Path,
    ) -> Result<Option<StagedRecord>, Status> {
        let own = self
            .state
            .load_staged(volume_id)
            .map_err(|e| Status::internal(format!("reading the stage record: {e}")))?;
        let serves = |r: &StagedRecord| r.staging_path == path || r.targets.contains_key(path);
        // The volume's own session first: only volumes of pod sessions pay
        // for reading every record (stats come for every volume, often).
        if let Some(r) = own.filter(serves) {
            return Ok(Some(r));
        }
        Ok(self.state.pod_sessions(volume_id).into_iter().find(serves))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const TOKENS: &str =
        r#"{"sts.amazonaws.com":{"token":"tok-1","expirationTimestamp":"2026-12-04T07:00:00Z"}}"#;

    #[test]
    fn the_token_of_the_audience_and_the_service_account_are_taken() {
        let c = ctx(&[
            (TOKENS_KEY, TOKENS),
            (SERVICE_ACCOUNT_KEY, "reader"),
            (POD_NAMESPACE_KEY, "team-a"),
        ]);
        let t = pod_token(&c, "sts.amazonaws.com").unwrap();
        assert_eq!(
            (t.service_account.as_str(), t.token.as_str()),
            ("team-a/reader", "tok-1")
        );
    }

    #[test]
    fn each_missing_piece_names_the_csidriver_field_that_provides_it() {
        let no_tokens = ctx(&[(SERVICE_ACCOUNT_KEY, "r"), (POD_NAMESPACE_KEY, "n")]);
        let e = pod_token(&no_tokens, "sts.amazonaws.com").err().unwrap();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("tokenRequests"), "{}", e.message());
        assert!(e.message().contains("requiresRepublish"), "{}", e.message());

        let other_audience = ctx(&[
            (TOKENS_KEY, TOKENS),
            (SERVICE_ACCOUNT_KEY, "r"),
            (POD_NAMESPACE_KEY, "n"),
        ]);
        let e = pod_token(&other_audience, "my-audience").err().unwrap();
        assert!(
            e.message().contains("[sts.amazonaws.com]"),
            "{}",
            e.message()
        );
        assert!(
            e.message().contains("{audience: my-audience}"),
            "{}",
            e.message()
        );

        let anonymous = ctx(&[(TOKENS_KEY, TOKENS)]);
        let e = pod_token(&anonymous, "sts.amazonaws.com").err().unwrap();
        assert!(
            e.message().contains("podInfoOnMount: true"),
            "{}",
            e.message()
        );

        let garbled = ctx(&[
            (TOKENS_KEY, "{not json"),
            (SERVICE_ACCOUNT_KEY, "r"),
            (POD_NAMESPACE_KEY, "n"),
        ]);
        let e = pod_token(&garbled, "sts.amazonaws.com").err().unwrap();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn session_names_fit_sts() {
        assert_eq!(session_name("team-a/reader"), "team-a.reader");
        let long = format!("{}/{}", "n".repeat(63), "s".repeat(200));
        assert_eq!(session_name(&long).len(), SESSION_NAME_MAX);
        assert_ne!(session_dir("a/b"), session_dir("a/c"));
    }

    #[test]
    fn the_token_file_is_replaced_whole_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sa-x.token");
        write_token(&path, "first").unwrap();
        write_token(&path, "second").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "a leftover aside file"
        );
    }
}
