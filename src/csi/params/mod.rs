//! StorageClass parameters, volume context and secrets, parsed once into
//! typed values. Everything a request carries as strings is checked here;
//! the rest of the plugin only sees [`VolumeParams`], [`NodeParams`],
//! [`Source`] and [`S3Credentials`].
//!
//! Error messages name the parameter and, for unknown ones, list the known
//! ones. Secret values never appear in an error or a `Debug` output.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use std::time::Duration;

use crate::backend::source::{
    bucket_name_ok, nfs_host, normal_abs_path, normal_prefix, SourceError,
};
use crate::backend::{BackendPath, Identity, Source};

mod auth;
mod parse;
mod secrets;
#[cfg(test)]
mod tests;

pub use auth::{Authentication, PodAuthentication, DEFAULT_TOKEN_AUDIENCE};
use parse::*;
pub use parse::{parse_abs_path, parse_source_url, parse_sub_path};
pub use secrets::S3Credentials;

/// Keys the external-provisioner adds with `--extra-create-metadata`.
pub const PVC_NAME_KEY: &str = "csi.storage.k8s.io/pvc/name";
pub const PVC_NAMESPACE_KEY: &str = "csi.storage.k8s.io/pvc/namespace";
pub const PV_NAME_KEY: &str = "csi.storage.k8s.io/pv/name";

/// Mode of a newly provisioned directory when `mountPermissions` is absent:
/// group-writable so that a pod's fsGroup (volume_mount_group) can write.
pub const DEFAULT_MOUNT_PERMISSIONS: u32 = 0o775;

const STORAGE_CLASS_KEYS: &[&str] = &[
    "source",
    "server",
    "share",
    "bucket",
    "prefix",
    "subDir",
    "onDelete",
    "mountPermissions",
    "uid",
    "gid",
    "endpoint",
    "region",
    "cacheSize",
    "pageSize",
    "metadataTTL",
    "readOnly",
    "passthroughReadWrite",
    "warm",
    "authenticationSource",
    "roleArn",
    "tokenAudience",
    PVC_NAME_KEY,
    PVC_NAMESPACE_KEY,
    PV_NAME_KEY,
];

const CONTEXT_KEYS: &[&str] = &[
    "capacity",
    "cacheSize",
    "pageSize",
    "metadataTTL",
    "readOnly",
    "passthroughReadWrite",
    "warm",
    "uid",
    "gid",
    "authenticationSource",
    "roleArn",
    "tokenAudience",
];

/// Volume-context keys set by Kubernetes itself (pod info on mount, the
/// provisioner's identity); they are informational and ignored.
const CONTEXT_IGNORED_PREFIXES: &[&str] = &["csi.storage.k8s.io/", "storage.kubernetes.io/"];

/// A request argument that cannot be accepted (gRPC INVALID_ARGUMENT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidArgument(pub String);

impl fmt::Display for InvalidArgument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn invalid(msg: impl Into<String>) -> InvalidArgument {
    InvalidArgument(msg.into())
}

/// What DeleteVolume does with the volume's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    Delete,
    Retain,
    /// Rename to `archived-<name>` next to it.
    Archive,
}

impl OnDelete {
    pub fn as_str(self) -> &'static str {
        match self {
            OnDelete::Delete => "delete",
            OnDelete::Retain => "retain",
            OnDelete::Archive => "archive",
        }
    }

    pub fn parse(text: &str) -> Result<OnDelete, InvalidArgument> {
        match text.to_ascii_lowercase().as_str() {
            "delete" => Ok(OnDelete::Delete),
            "retain" => Ok(OnDelete::Retain),
            "archive" => Ok(OnDelete::Archive),
            _ => Err(invalid(format!(
                "parameter onDelete: '{text}' is not one of delete, retain, archive"
            ))),
        }
    }
}

/// Cache and mount knobs; they travel to the node in the volume context.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheKnobs {
    pub cache_size: Option<u64>,
    pub page_size: Option<u64>,
    pub metadata_ttl: Option<Duration>,
    pub read_only: bool,
    /// FUSE passthrough on read-write mounts too (`cachalot mount
    /// --passthrough-read-write`); read-only mounts use it anyway.
    pub passthrough_read_write: bool,
    /// Globs of the files NodeStage warms up in the background.
    pub warm: Vec<String>,
    /// The volume's byte quota: the PVC size of a provisioned volume (set
    /// by CreateVolume, not a StorageClass parameter), or a static PV's
    /// `capacity` attribute.
    pub capacity: Option<u64>,
}

impl CacheKnobs {
    /// Canonical text form for the volume context (parsed back by [`NodeParams`]).
    fn write_context(&self, ctx: &mut BTreeMap<String, String>) {
        if let Some(v) = self.cache_size {
            ctx.insert("cacheSize".into(), v.to_string());
        }
        if let Some(v) = self.page_size {
            ctx.insert("pageSize".into(), v.to_string());
        }
        if let Some(v) = self.metadata_ttl {
            ctx.insert("metadataTTL".into(), format!("{}ms", v.as_millis()));
        }
        if self.read_only {
            ctx.insert("readOnly".into(), "true".into());
        }
        if self.passthrough_read_write {
            ctx.insert("passthroughReadWrite".into(), "true".into());
        }
        if !self.warm.is_empty() {
            ctx.insert("warm".into(), self.warm.join(","));
        }
        if let Some(v) = self.capacity {
            ctx.insert("capacity".into(), v.to_string());
        }
    }

    /// Returns false when `key` is not a cache knob.
    fn set(&mut self, key: &str, value: &str) -> Result<bool, InvalidArgument> {
        let named = |e: String| invalid(format!("parameter {key}: {e}"));
        match key {
            "cacheSize" => self.cache_size = Some(crate::cli::parse_size(value).map_err(named)?),
            "pageSize" => self.page_size = Some(crate::cli::parse_page_size(value).map_err(named)?),
            "metadataTTL" => {
                self.metadata_ttl = Some(crate::cli::parse_duration(value).map_err(named)?)
            }
            "readOnly" => self.read_only = parse_bool(key, value)?,
            "passthroughReadWrite" => self.passthrough_read_write = parse_bool(key, value)?,
            "warm" => self.warm = parse_globs(value).map_err(named)?,
            "capacity" => self.capacity = Some(crate::cli::parse_size(value).map_err(named)?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// `warm`: comma-separated globs (path below the volume root, or file
/// name), as `cachalot mount --warm` takes them.
fn parse_globs(value: &str) -> Result<Vec<String>, String> {
    let globs: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(|g| crate::cli::parse_glob(g).map(|_| g.to_string()))
        .collect::<Result<_, _>>()?;
    if globs.is_empty() {
        return Err(
            "no glob given (e.g. \"*.bin,data/**\"; leave the key out for no warm-up)".into(),
        );
    }
    Ok(globs)
}

/// Metadata the provisioner passes about the claim (for subDir templates).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimMeta {
    pub pvc_name: Option<String>,
    pub pvc_namespace: Option<String>,
    pub pv_name: Option<String>,
}

/// StorageClass parameters of one CreateVolume call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeParams {
    pub location: Source,
    /// Raw `subDir` template (validated syntax); `None` = the volume name.
    pub sub_dir: Option<String>,
    pub on_delete: OnDelete,
    pub mount_permissions: u32,
    /// Owner of the new directory and identity of every backend operation.
    pub owner: Option<Identity>,
    pub cache: CacheKnobs,
    pub claim: ClaimMeta,
    pub auth: Authentication,
}

/// Parameter lookup by name, case-insensitively (as csi-driver-nfs does),
/// rejecting unknown names and the same name given twice.
fn canonical_keys<'a>(
    params: &'a HashMap<String, String>,
    known: &[&'static str],
    what: &str,
) -> Result<BTreeMap<&'static str, &'a str>, InvalidArgument> {
    let mut out = BTreeMap::new();
    for (key, value) in params {
        let Some(name) = known.iter().find(|k| k.eq_ignore_ascii_case(key)) else {
            return Err(invalid(format!(
                "unknown {what} '{key}'; known {what}s: {}",
                known.join(", ")
            )));
        };
        if out.insert(*name, value.as_str()).is_some() {
            return Err(invalid(format!("{what} {name} is given twice")));
        }
    }
    Ok(out)
}

impl VolumeParams {
    pub fn parse(params: &HashMap<String, String>) -> Result<VolumeParams, InvalidArgument> {
        let p = canonical_keys(params, STORAGE_CLASS_KEYS, "parameter")?;
        let get = |k: &str| p.get(k).copied();

        let endpoint = get("endpoint").map(parse_endpoint).transpose()?;
        let region = get("region").map(parse_region).transpose()?;
        let location = parse_location(
            get("source"),
            get("server"),
            get("share"),
            get("bucket"),
            get("prefix"),
            endpoint,
            region,
        )?;

        let auth = Authentication::parse(
            get("authenticationSource"),
            get("roleArn"),
            get("tokenAudience"),
        )?;
        auth.check_location(&location)?;
        let sub_dir = get("subDir").map(validate_template).transpose()?;
        let on_delete = get("onDelete")
            .map(OnDelete::parse)
            .transpose()?
            .unwrap_or(OnDelete::Delete);
        let mount_permissions = get("mountPermissions")
            .map(parse_mode)
            .transpose()?
            .unwrap_or(DEFAULT_MOUNT_PERMISSIONS);
        let owner = parse_owner(get("uid"), get("gid"))?;
        let mut cache = CacheKnobs::default();
        // (`set` takes the cache knobs among them and skips the others.)
        for key in STORAGE_CLASS_KEYS {
            if let Some(v) = get(key) {
                cache.set(key, v)?;
            }
        }
        let claim = ClaimMeta {
            pvc_name: get(PVC_NAME_KEY).map(str::to_string),
            pvc_namespace: get(PVC_NAMESPACE_KEY).map(str::to_string),
            pv_name: get(PV_NAME_KEY).map(str::to_string),
        };
        Ok(VolumeParams {
            location,
            sub_dir,
            on_delete,
            mount_permissions,
            owner,
            cache,
            claim,
            auth,
        })
    }

    /// The volume's directory relative to the location: the expanded
    /// `subDir` template, or the volume name.
    pub fn sub_path(&self, volume_name: &str) -> Result<BackendPath, InvalidArgument> {
        match &self.sub_dir {
            None => parse_sub_path(volume_name)
                .map_err(|e| invalid(format!("volume name '{volume_name}' as directory: {e}"))),
            Some(t) => {
                let expanded = expand_template(t, &self.claim)?;
                parse_sub_path(&expanded).map_err(|e| {
                    invalid(format!(
                        "parameter subDir: '{t}' expands to '{expanded}': {e}"
                    ))
                })
            }
        }
    }

    /// The directory of an inline (ephemeral) volume below its location:
    /// `subDir` as a plain path (there is no claim to expand a template
    /// from), or the location itself.
    pub fn inline_sub_path(&self) -> Result<BackendPath, InvalidArgument> {
        match &self.sub_dir {
            None => Ok(BackendPath::root()),
            Some(t) if t.contains("${") => Err(invalid(format!(
                "parameter subDir: '{t}': an inline volume has no claim to expand templates from; give a plain path"
            ))),
            Some(t) => parse_sub_path(t).map_err(|e| invalid(format!("parameter subDir: '{t}': {e}"))),
        }
    }

    /// The volume context handed to the node (no secrets, no location:
    /// those are in the volume ID or the node's secrets).
    pub fn volume_context(&self) -> HashMap<String, String> {
        let mut ctx = BTreeMap::new();
        self.cache.write_context(&mut ctx);
        self.auth.write_context(&mut ctx);
        if let Some(id) = self.owner {
            ctx.insert("uid".into(), id.uid.to_string());
            ctx.insert("gid".into(), id.gid.to_string());
        }
        // Who the volume is for: the mounter names the PV and PVC in its
        // logs and `cachalot sessions` (the node ignores these keys).
        for (key, value) in [
            (PV_NAME_KEY, &self.claim.pv_name),
            (PVC_NAME_KEY, &self.claim.pvc_name),
            (PVC_NAMESPACE_KEY, &self.claim.pvc_namespace),
        ] {
            if let Some(v) = value {
                ctx.insert(key.into(), v.clone());
            }
        }
        ctx.into_iter().collect()
    }
}

/// What NodeStage needs besides the volume ID, from the volume context.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeParams {
    pub cache: CacheKnobs,
    pub owner: Option<Identity>,
    pub auth: Authentication,
}

impl NodeParams {
    pub fn parse(ctx: &HashMap<String, String>) -> Result<NodeParams, InvalidArgument> {
        let ours: HashMap<String, String> = ctx
            .iter()
            .filter(|(k, _)| !CONTEXT_IGNORED_PREFIXES.iter().any(|p| k.starts_with(p)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let p = canonical_keys(&ours, CONTEXT_KEYS, "volume context key")?;
        let mut cache = CacheKnobs::default();
        for (k, v) in &p {
            cache.set(k, v)?;
        }
        let owner = parse_owner(p.get("uid").copied(), p.get("gid").copied())?;
        let auth = Authentication::parse(
            p.get("authenticationSource").copied(),
            p.get("roleArn").copied(),
            p.get("tokenAudience").copied(),
        )?;
        Ok(NodeParams { cache, owner, auth })
    }
}
