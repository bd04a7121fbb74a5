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

pub(super) fn parse_region(text: &str) -> Result<String, InvalidArgument> {
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

pub(super) fn parse_location(
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
pub(super) fn decoded_path(url: &url::Url) -> Option<String> {
    let raw = url.path();
    if raw.to_ascii_lowercase().contains("%2f") || raw.contains("%00") {
        return None;
    }
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

pub(super) fn parse_host(key: &str, host: &str) -> Result<String, InvalidArgument> {
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

pub(super) fn parse_bucket(text: &str) -> Result<String, InvalidArgument> {
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
pub(super) fn parse_prefix(text: &str) -> Result<String, InvalidArgument> {
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
