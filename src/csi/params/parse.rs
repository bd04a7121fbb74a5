//! Parsing of single parameter values: booleans, modes, ids, owners,
//! endpoints, source URLs and paths, subDir templates.

use super::*;

pub(super) fn parse_bool(key: &str, value: &str) -> Result<bool, InvalidArgument> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" | "" => Ok(false),
        _ => Err(invalid(format!(
            "parameter {key}: '{value}' is not true or false"
        ))),
    }
}

/// `0775`, `775`, `0o775`: permission bits only.
pub(super) fn parse_mode(text: &str) -> Result<u32, InvalidArgument> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if !digits.is_empty() && m <= 0o7777 => Ok(m),
        _ => Err(invalid(format!(
            "parameter mountPermissions: '{text}' is not an octal mode such as 0775"
        ))),
    }
}

pub(super) fn parse_id(key: &str, text: &str) -> Result<u32, InvalidArgument> {
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|v| *v != u32::MAX)
        .ok_or_else(|| invalid(format!("parameter {key}: '{text}' is not a numeric id")))
}

pub(super) fn parse_owner(
    uid: Option<&str>,
    gid: Option<&str>,
) -> Result<Option<Identity>, InvalidArgument> {
    match (uid, gid) {
        (None, None) => Ok(None),
        (Some(u), Some(g)) => Ok(Some(Identity::new(
            parse_id("uid", u)?,
            parse_id("gid", g)?,
        ))),
        _ => Err(invalid("parameters uid and gid must be given together")),
    }
}

pub(super) fn parse_endpoint(text: &str) -> Result<String, InvalidArgument> {
    crate::backend::s3::parse_endpoint(text)
        .map_err(|e| invalid(format!("parameter endpoint: {e}")))
}

pub(super) fn parse_region(text: &str) -> Result<String, InvalidArgument> {
    crate::backend::s3::parse_region(text).map_err(|e| invalid(format!("parameter region: {e}")))
}

pub(super) fn parse_location(
    source: Option<&str>,
    server: Option<&str>,
    share: Option<&str>,
    bucket: Option<&str>,
    prefix: Option<&str>,
    endpoint: Option<String>,
    region: Option<String>,
) -> Result<Source, InvalidArgument> {
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
        parse_source_url(s)?
    } else if server.is_some() || share.is_some() {
        let (Some(server), Some(share)) = (server, share) else {
            return Err(invalid(
                "parameters server and share must be given together",
            ));
        };
        let host = nfs_host(server).ok_or_else(|| {
            invalid(format!(
                "parameter server: '{server}' is not a host name or IP address"
            ))
        })?;
        Source::Nfs {
            host,
            port: None,
            path: parse_abs_path("share", share)?,
        }
    } else {
        let bucket = bucket.ok_or_else(|| invalid("parameter prefix needs parameter bucket"))?;
        if !bucket_name_ok(bucket) {
            return Err(invalid(format!(
                "parameter bucket: '{bucket}' is not a valid bucket name (3-63 of a-z 0-9 . - _, \
                 beginning and ending with a letter or digit)"
            )));
        }
        let prefix = prefix.unwrap_or("");
        Source::S3 {
            bucket: bucket.to_string(),
            prefix: normal_prefix(prefix).ok_or_else(|| {
                invalid(format!(
                    "parameter prefix: '{prefix}' must not contain '.', '..' or NUL components"
                ))
            })?,
            endpoint: None,
            region: None,
        }
    };
    if !location.is_s3() && (endpoint.is_some() || region.is_some()) {
        return Err(invalid(
            "parameters endpoint and region apply to S3 sources only",
        ));
    }
    Ok(location.with_s3_site(endpoint, region))
}

/// Parse a `source` URL (no I/O: existence is checked when the backend is
/// opened), by the rules every source follows.
pub fn parse_source_url(text: &str) -> Result<Source, InvalidArgument> {
    Source::parse(text).map_err(|e| match e {
        // The hint for the command line names flags; a StorageClass puts
        // keys into secrets.
        SourceError::Credentials { .. } => invalid(
            "parameter source: must not contain credentials; put keys in the provisioner/node-stage secrets",
        ),
        e => invalid(format!("parameter {e}")),
    })
}

/// An absolute, normalised path (no `.`/`..`/NUL; doubled and trailing
/// slashes dropped).
pub fn parse_abs_path(key: &str, text: &str) -> Result<String, InvalidArgument> {
    normal_abs_path(text).ok_or_else(|| {
        invalid(format!(
            "parameter {key}: '{text}' must be an absolute path without '.', '..' or NUL components"
        ))
    })
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

pub(super) const TEMPLATE_VARS: &[&str] = &[
    "${pvc.metadata.name}",
    "${pvc.metadata.namespace}",
    "${pv.metadata.name}",
];

/// Check a subDir template's syntax without expanding it.
pub(super) fn validate_template(t: &str) -> Result<String, InvalidArgument> {
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

pub(super) fn expand_template(t: &str, claim: &ClaimMeta) -> Result<String, InvalidArgument> {
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
