//! StorageClass parameters, volume context and secrets, parsed once into
//! typed values. Everything a request carries as strings is checked here;
//! the rest of the plugin only sees [`VolumeParams`], [`NodeParams`],
//! [`Location`] and [`S3Credentials`].
//!
//! Error messages name the parameter and, for unknown ones, list the known
//! ones. Secret values never appear in an error or a `Debug` output.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::backend::{has_userinfo, redacted_url, BackendPath, Identity};

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
    PVC_NAME_KEY,
    PVC_NAMESPACE_KEY,
    PV_NAME_KEY,
];

const CONTEXT_KEYS: &[&str] = &[
    "cacheSize",
    "pageSize",
    "metadataTTL",
    "readOnly",
    "uid",
    "gid",
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

/// Where a volume's parent directory lives. One variant per backend kind,
/// whether or not this build can talk to it: parameters for a backend that
/// is not built still parse, and fail later with "backend not available".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `file:///abs/path`
    Local { root: PathBuf },
    /// `nfs://server[:port]/export` or `server` + `share`
    Nfs {
        server: String,
        port: Option<u16>,
        export: String,
    },
    /// `s3://bucket/prefix` or `bucket` + `prefix`, with `endpoint`/`region`
    S3 {
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        region: Option<String>,
    },
}

impl Location {
    pub fn kind(&self) -> &'static str {
        match self {
            Location::Local { .. } => "file",
            Location::Nfs { .. } => "nfs",
            Location::S3 { .. } => "s3",
        }
    }

    pub fn needs_credentials(&self) -> bool {
        matches!(self, Location::S3 { .. })
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local { root } => write!(f, "file://{}", root.display()),
            Location::Nfs {
                server,
                port,
                export,
            } => match port {
                Some(p) => write!(f, "nfs://{server}:{p}{export}"),
                None => write!(f, "nfs://{server}{export}"),
            },
            Location::S3 { bucket, prefix, .. } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
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
            _ => return Ok(false),
        }
        Ok(true)
    }
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
    pub location: Location,
    /// Raw `subDir` template (validated syntax); `None` = the volume name.
    pub sub_dir: Option<String>,
    pub on_delete: OnDelete,
    pub mount_permissions: u32,
    /// Owner of the new directory and identity of every backend operation.
    pub owner: Option<Identity>,
    pub cache: CacheKnobs,
    pub claim: ClaimMeta,
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
        for key in ["cacheSize", "pageSize", "metadataTTL", "readOnly"] {
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

    /// The volume context handed to the node (no secrets, no location:
    /// those are in the volume ID or the node's secrets).
    pub fn volume_context(&self) -> HashMap<String, String> {
        let mut ctx = BTreeMap::new();
        self.cache.write_context(&mut ctx);
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
        Ok(NodeParams { cache, owner })
    }
}

/// S3 credentials from CSI secrets. Debug never shows the values.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("S3Credentials { <redacted> }")
    }
}

const SECRET_KEYS: &[(&str, &str)] = &[
    ("accessKeyId", "access"),
    ("AWS_ACCESS_KEY_ID", "access"),
    ("secretAccessKey", "secret"),
    ("AWS_SECRET_ACCESS_KEY", "secret"),
    ("sessionToken", "token"),
    ("AWS_SESSION_TOKEN", "token"),
];

impl S3Credentials {
    /// `None` when no secrets were given (anonymous or ambient credentials).
    /// Errors name keys, never values.
    pub fn from_secrets(
        secrets: &HashMap<String, String>,
    ) -> Result<Option<S3Credentials>, InvalidArgument> {
        if secrets.is_empty() {
            return Ok(None);
        }
        let (mut access, mut secret, mut token) = (None, None, None);
        for (key, value) in secrets {
            let Some((_, slot)) = SECRET_KEYS
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
            else {
                let names: Vec<&str> = SECRET_KEYS.iter().map(|(k, _)| *k).collect();
                return Err(invalid(format!(
                    "unknown secret key '{key}'; known secret keys: {}",
                    names.join(", ")
                )));
            };
            let target = match *slot {
                "access" => &mut access,
                "secret" => &mut secret,
                _ => &mut token,
            };
            if target.replace(value.clone()).is_some() {
                return Err(invalid(format!("secret key {key} is given twice")));
            }
        }
        match (access, secret) {
            (Some(a), Some(s)) if !a.is_empty() && !s.is_empty() => Ok(Some(S3Credentials {
                access_key_id: a,
                secret_access_key: s,
                session_token: token,
            })),
            _ => Err(invalid(
                "secrets must contain both accessKeyId and secretAccessKey (non-empty)",
            )),
        }
    }

    /// Environment for a mount child: secrets never go on a command line.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("AWS_ACCESS_KEY_ID", self.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key.clone()),
        ];
        if let Some(t) = &self.session_token {
            env.push(("AWS_SESSION_TOKEN", t.clone()));
        }
        env
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool, InvalidArgument> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" | "" => Ok(false),
        _ => Err(invalid(format!(
            "parameter {key}: '{value}' is not true or false"
        ))),
    }
}

/// `0775`, `775`, `0o775`: permission bits only.
fn parse_mode(text: &str) -> Result<u32, InvalidArgument> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if !digits.is_empty() && m <= 0o7777 => Ok(m),
        _ => Err(invalid(format!(
            "parameter mountPermissions: '{text}' is not an octal mode such as 0775"
        ))),
    }
}

fn parse_id(key: &str, text: &str) -> Result<u32, InvalidArgument> {
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|v| *v != u32::MAX)
        .ok_or_else(|| invalid(format!("parameter {key}: '{text}' is not a numeric id")))
}

fn parse_owner(uid: Option<&str>, gid: Option<&str>) -> Result<Option<Identity>, InvalidArgument> {
    match (uid, gid) {
        (None, None) => Ok(None),
        (Some(u), Some(g)) => Ok(Some(Identity::new(
            parse_id("uid", u)?,
            parse_id("gid", g)?,
        ))),
        _ => Err(invalid("parameters uid and gid must be given together")),
    }
}

fn parse_endpoint(text: &str) -> Result<String, InvalidArgument> {
    let shown = redacted_url(text);
    let url = url::Url::parse(text).map_err(|e| {
        invalid(format!(
            "parameter endpoint: '{shown}' is not a URL ({e}); example: https://s3.example.com"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(format!(
            "parameter endpoint: '{shown}' must be an http:// or https:// URL with a host"
        )));
    }
    if has_userinfo(text) || !url.username().is_empty() || url.password().is_some() {
        // Keys belong in secrets; do not echo what may be a credential.
        return Err(invalid(
            "parameter endpoint: must not contain credentials; put keys in the provisioner/node-stage secrets",
        ));
    }
    Ok(text.trim_end_matches('/').to_string())
}

fn parse_region(text: &str) -> Result<String, InvalidArgument> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(text.to_string())
    } else {
        Err(invalid(format!(
            "parameter region: '{text}' is not a region name such as us-east-1"
        )))
    }
}

fn parse_location(
    source: Option<&str>,
    server: Option<&str>,
    share: Option<&str>,
    bucket: Option<&str>,
    prefix: Option<&str>,
    endpoint: Option<String>,
    region: Option<String>,
) -> Result<Location, InvalidArgument> {
    let given = [
        source.is_some(),
        server.is_some() || share.is_some(),
        bucket.is_some() || prefix.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(invalid(
            "give exactly one of: parameter source (file:///dir, nfs://server/export, s3://bucket/prefix), \
             parameters server + share (NFS), or parameters bucket [+ prefix] (S3)",
        ));
    }
    let location = if let Some(s) = source {
        parse_source_url(s, endpoint.clone(), region.clone())?
    } else if server.is_some() || share.is_some() {
        let (Some(server), Some(share)) = (server, share) else {
            return Err(invalid(
                "parameters server and share must be given together",
            ));
        };
        Location::Nfs {
            server: parse_host("server", server)?,
            port: None,
            export: parse_abs_path("share", share)?,
        }
    } else {
        let bucket = bucket.ok_or_else(|| invalid("parameter prefix needs parameter bucket"))?;
        Location::S3 {
            bucket: parse_bucket(bucket)?,
            prefix: parse_prefix(prefix.unwrap_or(""))?,
            endpoint: endpoint.clone(),
            region: region.clone(),
        }
    };
    if !matches!(location, Location::S3 { .. }) && (endpoint.is_some() || region.is_some()) {
        return Err(invalid(
            "parameters endpoint and region apply to S3 sources only",
        ));
    }
    Ok(location)
}

/// Parse a `source` URL into a location (no I/O: existence is checked when
/// the backend is opened).
pub fn parse_source_url(
    text: &str,
    endpoint: Option<String>,
    region: Option<String>,
) -> Result<Location, InvalidArgument> {
    if has_userinfo(text) {
        return Err(invalid(
            "parameter source: must not contain credentials; put keys in the provisioner/node-stage secrets",
        ));
    }
    let shown = redacted_url(text);
    let bad = |why: &str| {
        invalid(format!(
            "parameter source: '{shown}' {why}; expected file:///dir, nfs://server[:port]/export or s3://bucket[/prefix]"
        ))
    };
    // The URL parser would silently resolve `a/../b`; a source with dot
    // segments (plain or escaped) is refused instead.
    let dot_segment = text.split(['/', '?', '#']).any(|seg| {
        let s = seg.to_ascii_lowercase().replace("%2e", ".");
        s == "." || s == ".."
    });
    if dot_segment {
        return Err(bad("has a '.' or '..' path segment"));
    }
    let url = url::Url::parse(text).map_err(|_| bad("is not a URL"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "parameter source: must not contain credentials; put keys in the provisioner/node-stage secrets",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("has a query or fragment"));
    }
    let path = decoded_path(&url).ok_or_else(|| bad("has an invalid escape in its path"))?;
    match url.scheme() {
        "file" => {
            if url.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(bad("has a host (write file:///absolute/path)"));
            }
            Ok(Location::Local {
                root: PathBuf::from(parse_abs_path("source", &path)?),
            })
        }
        "nfs" => {
            let host = url.host_str().ok_or_else(|| bad("has no server"))?;
            Ok(Location::Nfs {
                server: parse_host("source", host)?,
                port: url.port(),
                export: parse_abs_path("source", &path)?,
            })
        }
        "s3" => {
            let bucket = url.host_str().ok_or_else(|| bad("has no bucket"))?;
            Ok(Location::S3 {
                bucket: parse_bucket(bucket)?,
                prefix: parse_prefix(path.trim_start_matches('/'))?,
                endpoint,
                region,
            })
        }
        other => Err(bad(&format!("has the unsupported scheme '{other}'"))),
    }
}

/// The URL's path, percent-decoded, refusing escaped slashes (`%2F`) which
/// would let one component pose as two.
fn decoded_path(url: &url::Url) -> Option<String> {
    let raw = url.path();
    if raw.to_ascii_lowercase().contains("%2f") || raw.contains("%00") {
        return None;
    }
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

fn parse_host(key: &str, host: &str) -> Result<String, InvalidArgument> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if ok {
        Ok(host.to_string())
    } else {
        Err(invalid(format!(
            "parameter {key}: '{host}' is not a host name or IP address"
        )))
    }
}

/// An absolute, normalized path: no `.`/`..`, no empty components.
pub fn parse_abs_path(key: &str, text: &str) -> Result<String, InvalidArgument> {
    let bad = || {
        invalid(format!(
            "parameter {key}: '{text}' must be an absolute path without '.', '..' or empty components"
        ))
    };
    if !text.starts_with('/') || text.contains('\0') {
        return Err(bad());
    }
    let trimmed = if text.len() > 1 {
        text.trim_end_matches('/')
    } else {
        text
    };
    if trimmed.len() > 1
        && trimmed[1..]
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad());
    }
    let p = Path::new(trimmed);
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(bad());
    }
    Ok(trimmed.to_string())
}

fn parse_bucket(text: &str) -> Result<String, InvalidArgument> {
    let ok = (3..=63).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && !text.starts_with(['.', '-'])
        && !text.ends_with(['.', '-']);
    if ok {
        Ok(text.to_string())
    } else {
        Err(invalid(format!(
            "parameter bucket: '{text}' is not a valid bucket name (3-63 of a-z 0-9 . -)"
        )))
    }
}

/// An S3 prefix: a relative path (may be empty), stored without slashes at
/// either end.
fn parse_prefix(text: &str) -> Result<String, InvalidArgument> {
    let t = text.trim_end_matches('/');
    if t.is_empty() {
        return Ok(String::new());
    }
    parse_sub_path(t)
        .map(|p| p.as_str().to_string())
        .map_err(|e| invalid(format!("parameter prefix: '{text}': {e}")))
}

/// A relative path that stays below its root: no leading `/`, no `.`/`..`,
/// no empty components, no NUL, every component a valid name.
pub fn parse_sub_path(text: &str) -> Result<BackendPath, String> {
    if text.is_empty() {
        return Err("the path is empty".into());
    }
    if text.starts_with('/') {
        return Err("the path must be relative (no leading '/')".into());
    }
    let mut out = BackendPath::root();
    for c in text.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(format!(
                "'{text}' has an empty, '.' or '..' component; it must stay inside the source"
            ));
        }
        out = out.join(c).map_err(|e| format!("'{text}': {e}"))?;
    }
    Ok(out)
}

const TEMPLATE_VARS: &[&str] = &[
    "${pvc.metadata.name}",
    "${pvc.metadata.namespace}",
    "${pv.metadata.name}",
];

/// Check a subDir template's syntax without expanding it.
fn validate_template(t: &str) -> Result<String, InvalidArgument> {
    let mut rest = t;
    while let Some(i) = rest.find("${") {
        let tail = &rest[i..];
        let Some(end) = tail.find('}') else {
            return Err(invalid(format!(
                "parameter subDir: '{t}' has an unterminated '${{'"
            )));
        };
        let var = &tail[..=end];
        if !TEMPLATE_VARS.contains(&var) {
            return Err(invalid(format!(
                "parameter subDir: unknown variable {var}; known: {}",
                TEMPLATE_VARS.join(", ")
            )));
        }
        rest = &tail[end + 1..];
    }
    if t.trim().is_empty() {
        return Err(invalid("parameter subDir: empty"));
    }
    Ok(t.to_string())
}

fn expand_template(t: &str, claim: &ClaimMeta) -> Result<String, InvalidArgument> {
    let mut out = t.to_string();
    for (var, value, key) in [
        ("${pvc.metadata.name}", &claim.pvc_name, PVC_NAME_KEY),
        (
            "${pvc.metadata.namespace}",
            &claim.pvc_namespace,
            PVC_NAMESPACE_KEY,
        ),
        ("${pv.metadata.name}", &claim.pv_name, PV_NAME_KEY),
    ] {
        if !out.contains(var) {
            continue;
        }
        let Some(v) = value else {
            return Err(invalid(format!(
                "parameter subDir uses {var} but the request has no {key}; \
                 run the external-provisioner with --extra-create-metadata"
            )));
        };
        // A value is one path component: never a separator or a dot name.
        if v.is_empty() || v == "." || v == ".." || v.contains('/') || v.contains('\0') {
            return Err(invalid(format!(
                "{key} '{v}' cannot be used in subDir: it must be a single path component"
            )));
        }
        out = out.replace(var, v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_a_full_local_storage_class() {
        let p = VolumeParams::parse(&map(&[
            ("source", "file:///srv/data"),
            ("subDir", "${pvc.metadata.namespace}/${pvc.metadata.name}"),
            ("onDelete", "archive"),
            ("mountPermissions", "0770"),
            ("uid", "1000"),
            ("gid", "2000"),
            ("cacheSize", "1GiB"),
            ("pageSize", "256KiB"),
            ("metadataTTL", "500ms"),
            ("readOnly", "false"),
            (PVC_NAME_KEY, "data"),
            (PVC_NAMESPACE_KEY, "team-a"),
            (PV_NAME_KEY, "pvc-123"),
        ]))
        .unwrap();
        assert_eq!(
            p.location,
            Location::Local {
                root: "/srv/data".into()
            }
        );
        assert_eq!(p.on_delete, OnDelete::Archive);
        assert_eq!(p.mount_permissions, 0o770);
        assert_eq!(p.owner, Some(Identity::new(1000, 2000)));
        assert_eq!(p.sub_path("pvc-123").unwrap().as_str(), "team-a/data");
        let ctx = p.volume_context();
        assert_eq!(ctx["cacheSize"], (1u64 << 30).to_string());
        let node = NodeParams::parse(&ctx).unwrap();
        assert_eq!(node.cache, p.cache);
        assert_eq!(node.owner, p.owner);
    }

    #[test]
    fn default_sub_dir_is_the_volume_name() {
        let p = VolumeParams::parse(&map(&[("source", "file:///srv")])).unwrap();
        assert_eq!(p.sub_path("pvc-1").unwrap().as_str(), "pvc-1");
        assert!(p.sub_path("../x").is_err());
        assert_eq!(p.on_delete, OnDelete::Delete);
        assert_eq!(p.mount_permissions, DEFAULT_MOUNT_PERMISSIONS);
    }

    #[test]
    fn nfs_and_s3_forms_parse_into_typed_locations() {
        let a = VolumeParams::parse(&map(&[("server", "10.0.0.5"), ("share", "/exports/k8s/")]))
            .unwrap();
        assert_eq!(
            a.location,
            Location::Nfs {
                server: "10.0.0.5".into(),
                port: None,
                export: "/exports/k8s".into()
            }
        );
        let b =
            VolumeParams::parse(&map(&[("source", "nfs://nas.local:2049/exports/k8s")])).unwrap();
        assert!(matches!(
            b.location,
            Location::Nfs {
                port: Some(2049),
                ..
            }
        ));
        let c = VolumeParams::parse(&map(&[
            ("source", "s3://my-bucket/team/a/"),
            ("endpoint", "http://127.0.0.1:8333"),
            ("region", "us-east-1"),
        ]))
        .unwrap();
        assert_eq!(
            c.location,
            Location::S3 {
                bucket: "my-bucket".into(),
                prefix: "team/a".into(),
                endpoint: Some("http://127.0.0.1:8333".into()),
                region: Some("us-east-1".into())
            }
        );
        let d = VolumeParams::parse(&map(&[("bucket", "my-bucket")])).unwrap();
        assert!(matches!(d.location, Location::S3 { ref prefix, .. } if prefix.is_empty()));
    }

    #[test]
    fn unknown_parameter_is_named_and_known_ones_listed() {
        let e =
            VolumeParams::parse(&map(&[("source", "file:///srv"), ("colour", "red")])).unwrap_err();
        assert!(e.0.contains("'colour'"), "{e}");
        assert!(e.0.contains("subDir") && e.0.contains("onDelete"), "{e}");
    }

    #[test]
    fn parameter_names_match_case_insensitively_like_csi_driver_nfs() {
        let p = VolumeParams::parse(&map(&[("SOURCE", "file:///srv"), ("subdir", "x")])).unwrap();
        assert_eq!(p.sub_dir.as_deref(), Some("x"));
        let e = VolumeParams::parse(&map(&[("source", "file:///a"), ("Source", "file:///b")]))
            .unwrap_err();
        assert!(e.0.contains("twice"), "{e}");
    }

    #[test]
    fn malformed_values_are_rejected_with_the_parameter_name() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("source", "not a url")], "source"),
            (&[("source", "ftp://h/x")], "source"),
            (&[("source", "file://host/x")], "source"),
            (&[("source", "file:///srv/../etc")], "source"),
            (&[("source", "file:///srv/a%2F..%2Fb")], "source"),
            (&[("source", "s3://UPPER/x")], "bucket"),
            (&[("source", "s3://user:pw@bucket/x")], "credentials"),
            (&[("server", "h")], "together"),
            (&[("server", "h"), ("share", "relative")], "share"),
            (
                &[("source", "file:///a"), ("server", "h"), ("share", "/x")],
                "exactly one",
            ),
            (
                &[("source", "file:///a"), ("onDelete", "shred")],
                "onDelete",
            ),
            (
                &[("source", "file:///a"), ("mountPermissions", "999")],
                "mountPermissions",
            ),
            (&[("source", "file:///a"), ("uid", "5")], "together"),
            (
                &[("source", "file:///a"), ("uid", "x"), ("gid", "1")],
                "uid",
            ),
            (&[("source", "file:///a"), ("pageSize", "1000")], "pageSize"),
            (
                &[("source", "file:///a"), ("metadataTTL", "soon")],
                "metadataTTL",
            ),
            (
                &[("source", "file:///a"), ("readOnly", "maybe")],
                "readOnly",
            ),
            (
                &[("source", "file:///a"), ("endpoint", "http://x")],
                "S3 sources only",
            ),
            (&[("bucket", "bkt"), ("endpoint", "ftp://x")], "endpoint"),
            (&[("bucket", "bkt"), ("region", "US EAST")], "region"),
            (
                &[("source", "file:///a"), ("subDir", "${nope}")],
                "unknown variable",
            ),
            (
                &[("source", "file:///a"), ("subDir", "${pvc.metadata.name")],
                "unterminated",
            ),
        ];
        for (pairs, needle) in cases {
            let e = VolumeParams::parse(&map(pairs)).expect_err(&format!("{pairs:?}"));
            assert!(e.0.contains(needle), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn templates_cannot_leave_the_source() {
        let bad_templates = [
            "../x",
            "/abs",
            "a/../../b",
            "a//b",
            "./a",
            "${pvc.metadata.name}/..",
        ];
        for t in bad_templates {
            let p = VolumeParams::parse(&map(&[
                ("source", "file:///srv"),
                ("subDir", t),
                (PVC_NAME_KEY, "data"),
            ]))
            .unwrap();
            assert!(p.sub_path("pvc-1").is_err(), "{t}");
        }
        for evil in ["..", ".", "a/b", ""] {
            let p = VolumeParams::parse(&map(&[
                ("source", "file:///srv"),
                ("subDir", "x/${pvc.metadata.name}"),
                (PVC_NAME_KEY, evil),
            ]))
            .unwrap();
            assert!(p.sub_path("pvc-1").is_err(), "{evil:?}");
        }
    }

    #[test]
    fn missing_template_metadata_says_how_to_fix_it() {
        let p = VolumeParams::parse(&map(&[
            ("source", "file:///srv"),
            ("subDir", "${pvc.metadata.namespace}"),
        ]))
        .unwrap();
        let e = p.sub_path("pvc-1").unwrap_err();
        assert!(e.0.contains("--extra-create-metadata"), "{e}");
    }

    #[test]
    fn secrets_are_typed_and_never_echoed() {
        let creds = S3Credentials::from_secrets(&map(&[
            ("accessKeyId", "AKIAEXAMPLE"),
            ("secretAccessKey", "TOPSECRETVALUE"),
        ]))
        .unwrap()
        .unwrap();
        assert!(!format!("{creds:?}").contains("TOPSECRET"));
        assert_eq!(creds.env()[1].1, "TOPSECRETVALUE");
        let e = S3Credentials::from_secrets(&map(&[("password", "TOPSECRETVALUE")])).unwrap_err();
        assert!(
            e.0.contains("password") && !e.0.contains("TOPSECRET"),
            "{e}"
        );
        let e =
            S3Credentials::from_secrets(&map(&[("accessKeyId", "TOPSECRETVALUE")])).unwrap_err();
        assert!(!e.0.contains("TOPSECRET"), "{e}");
        assert_eq!(S3Credentials::from_secrets(&HashMap::new()).unwrap(), None);
    }

    #[test]
    fn node_context_ignores_kubernetes_keys_but_not_unknown_ones() {
        let ok = NodeParams::parse(&map(&[
            ("csi.storage.k8s.io/pod.name", "p"),
            ("storage.kubernetes.io/csiProvisionerIdentity", "x"),
            ("readOnly", "true"),
        ]))
        .unwrap();
        assert!(ok.cache.read_only);
        assert!(NodeParams::parse(&map(&[("colour", "red")])).is_err());
    }
}
