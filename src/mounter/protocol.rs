//! What the mounter and its clients (the CSI node plugin, `cachalot
//! sessions`, a successor mounter) say to each other: length-prefixed JSON
//! frames over a root-only unix socket, each request tagged with the
//! protocol version. A peer of another version gets a clear
//! `version_mismatch` error and nothing changes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::mount::spec::MountSpec;

/// Bumped on any incompatible change of the messages below or of the
/// takeover state.
pub const PROTOCOL_VERSION: u32 = 1;

/// A request and the protocol version it was written for.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Serve a volume at `spec.staging` (idempotent: the same spec again is
    /// a success, another spec at the same path is refused).
    Stage(Box<StageRequest>),
    /// Stop serving the volume at `staging` and unmount it (idempotent).
    Unstage { staging: PathBuf },
    /// The sessions served now.
    List,
    /// A keeper asks for duplicates of every session's `/dev/fuse`
    /// descriptor: the answer is followed by the descriptors, in the order
    /// of `Response::Fds::staging`.
    Fds,
    /// A successor mounter asks for every session (live upgrade).
    Takeover,
    /// A keeper hands the descriptors it holds to a mounter that started
    /// after its predecessor died: followed by the descriptors, in the
    /// order of `staging`.
    Adopt { staging: Vec<PathBuf> },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StageRequest {
    pub volume_id: String,
    pub spec: MountSpec,
    /// The volume's S3 node-stage secret, if any.
    #[serde(default)]
    pub secret: Option<S3Secret>,
    /// PV / PVC names, for the logs and `cachalot sessions`.
    #[serde(default)]
    pub names: VolumeNames,
}

/// Who a session is for, as Kubernetes names it (from the volume context
/// the external-provisioner fills with `--extra-create-metadata`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeNames {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl VolumeNames {
    pub fn from_context(ctx: &std::collections::HashMap<String, String>) -> VolumeNames {
        use crate::csi::params::{PVC_NAMESPACE_KEY, PVC_NAME_KEY, PV_NAME_KEY};
        VolumeNames {
            pv: ctx.get(PV_NAME_KEY).cloned(),
            pvc: ctx.get(PVC_NAME_KEY).cloned(),
            namespace: ctx.get(PVC_NAMESPACE_KEY).cloned(),
        }
    }

    /// `namespace/pvc` or `-`.
    pub fn claim(&self) -> String {
        match (&self.namespace, &self.pvc) {
            (Some(ns), Some(pvc)) => format!("{ns}/{pvc}"),
            (None, Some(pvc)) => pvc.clone(),
            _ => "-".into(),
        }
    }
}

/// S3 keys of a volume. Never printed: Debug is redacted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Secret {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default)]
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("S3Secret { <redacted> }")
    }
}

impl S3Secret {
    pub fn credentials(&self) -> crate::backend::s3::Credentials {
        let mut c = crate::backend::s3::Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            self.session_token.as_deref(),
        );
        c.origin = "the volume's node-stage secret".into();
        c
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok,
    /// The volume is served; `already`: it was before this request.
    Staged {
        mounter_pid: u32,
        already: bool,
    },
    Sessions(SessionList),
    /// Followed by one descriptor per entry, in this order.
    Fds {
        staging: Vec<PathBuf>,
    },
    /// The sessions a mounter hands to its successor; followed by one
    /// `/dev/fuse` descriptor per session, in this order.
    Handover {
        sessions: Vec<HandedSession>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// One session as handed to a successor mounter.
#[derive(Debug, Serialize, Deserialize)]
pub struct HandedSession {
    pub record: super::records::SessionRecord,
    pub adapter: crate::fuse::AdapterState,
    pub fs: crate::fs::snapshot::FsSnapshot,
}

/// The successor's answer to a `Handover`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum HandoverAnswer {
    /// Everything received: exit without unmounting.
    Accepted,
    /// Keep serving (the successor exits).
    Refused { message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// Malformed or unknown request.
    BadRequest,
    /// Another volume or other options are served at that staging path.
    AlreadyExists,
    /// The mount failed; the message says why (backend checks included).
    MountFailed,
    /// The mounter is handing its sessions to a successor.
    ShuttingDown,
    Internal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionList {
    pub mounter_pid: u32,
    /// Changes with every mounter process: a keeper sees a restart by it.
    #[serde(default)]
    pub instance: String,
    pub mounter_version: String,
    pub sessions: Vec<SessionInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionInfo {
    pub volume_id: String,
    #[serde(default)]
    pub names: VolumeNames,
    /// Source URL, credentials never included.
    pub source: String,
    pub staging: PathBuf,
    pub read_only: bool,
    /// Seconds since the Unix epoch when the session started (first stage
    /// on this node; kept across takeovers).
    pub started_unix: u64,
    /// "serving", or what is wrong.
    pub health: String,
    /// How this process got the session: "mounted", "takeover", "recovered".
    pub origin: String,
}

/// The generic map form of a frame, to check its version before its shape.
pub type RawFrame = BTreeMap<String, serde_json::Value>;
