//! Reading source URLs, and the rules for their parts that parameters
//! given one by one (CSI `server` + `share`, `bucket` + `prefix`) share:
//! one rule per part, whichever way it arrives.

use std::path::PathBuf;

use percent_encoding::percent_decode_str;

use super::redact::{credentials_hint, has_userinfo, redacted_url};
use super::{Source, SourceError};

pub(super) fn parse(text: &str) -> Result<Source, SourceError> {
    if let (true, Some(hint)) = (has_userinfo(text), credentials_hint(text)) {
        return Err(SourceError::Credentials {
            url: redacted_url(text),
            hint,
        });
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        // `file:tmp` and friends: a scheme, but no authority and no
        // absolute path.
        return match url::Url::parse(text) {
            Ok(u) if u.scheme() == "file" => Err(SourceError::BadPath(redacted_url(text))),
            Ok(u) => Err(SourceError::UnsupportedScheme(u.scheme().to_string())),
            Err(_) => Err(SourceError::NotAUrl(redacted_url(text))),
        };
    };
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "file" | "nfs" | "s3") {
        return match url::Url::parse(text) {
            Ok(_) => Err(SourceError::UnsupportedScheme(scheme)),
            Err(_) => Err(SourceError::NotAUrl(redacted_url(text))),
        };
    }
    if rest.contains(['?', '#']) {
        return Err(SourceError::ExtraParts(redacted_url(text)));
    }
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    match scheme.as_str() {
        "file" => {
            if !authority.is_empty() {
                return Err(SourceError::HostNotAllowed(redacted_url(text)));
            }
            let root = normal_abs_path(&decoded(path, text, SourceError::BadPath)?)
                .ok_or_else(|| SourceError::BadPath(redacted_url(text)))?;
            Ok(Source::Local {
                root: PathBuf::from(root),
            })
        }
        "nfs" => {
            let host = nfs_host_port(authority)
                .ok_or_else(|| SourceError::NfsHostMissing(redacted_url(text)))?;
            let path = normal_abs_path(&decoded(path, text, SourceError::BadPath)?)
                .ok_or_else(|| SourceError::BadPath(redacted_url(text)))?;
            Ok(Source::Nfs {
                host: host.0,
                port: host.1,
                path,
            })
        }
        _ => parse_s3(text, authority, path),
    }
}

/// `s3://bucket/prefix`: the bucket is the URL's authority, the prefix its
/// path, normalised (no leading, trailing or doubled slashes).
fn parse_s3(text: &str, bucket: &str, path: &str) -> Result<Source, SourceError> {
    let bad = |why: &str| SourceError::BadS3 {
        url: redacted_url(text),
        why: why.to_string(),
    };
    if bucket.contains(['@', ':']) {
        return Err(bad("credentials or a port do not belong in the URL"));
    }
    if !bucket_name_ok(bucket) {
        return Err(bad(
            "bucket names have 3 to 63 characters: lowercase letters, digits, '-', '.', \
             beginning and ending with a letter or digit",
        ));
    }
    let prefix = decoded(path, text, |_| {
        bad("the prefix must not contain an escaped '/', NUL or invalid UTF-8")
    })?;
    let prefix = normal_prefix(&prefix)
        .ok_or_else(|| bad("the prefix must not contain '.' or '..' components"))?;
    Ok(Source::S3 {
        bucket: bucket.to_string(),
        prefix,
        endpoint: None,
        region: None,
    })
}

/// The URL path `raw`, percent-decoded; refused (with `err`) when a `.`
/// or `..` segment hides in it in any spelling, or an escape would make
/// one component pose as two (`%2F`) or carry a NUL.
fn decoded(
    raw: &str,
    text: &str,
    err: impl Fn(String) -> SourceError,
) -> Result<String, SourceError> {
    let refuse = || Err(err(redacted_url(text)));
    let lower = raw.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%00") {
        return refuse();
    }
    // Dot segments are looked for between '/' and '\' alike: some URL
    // parsers treat a backslash as a separator, so `a\..\b` must not pass.
    let dot_segment = raw.split(['/', '\\']).any(|seg| {
        let seg = percent_decode_str(seg).decode_utf8_lossy();
        seg == "." || seg == ".."
    });
    if dot_segment {
        return refuse();
    }
    match percent_decode_str(raw).decode_utf8() {
        Ok(s) => Ok(s.into_owned()),
        Err(_) => refuse(),
    }
}

/// An absolute path with `.`/`..`/NUL refused and empty components and a
/// trailing slash dropped (`/srv//data/` is `/srv/data`).
pub fn normal_abs_path(text: &str) -> Option<String> {
    let inner = text.strip_prefix('/')?;
    Some(format!("/{}", normal_prefix(inner)?))
}

/// A relative path (an S3 prefix, a sub-directory) normalised like
/// [`normal_abs_path`]; may be empty.
pub fn normal_prefix(text: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in text.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." || part.contains('\0') {
            return None;
        }
        parts.push(part);
    }
    Some(parts.join("/"))
}

/// S3 bucket names: 3 to 63 of lowercase letters, digits, `-`, `.` (and
/// `_`, which old buckets and S3-compatible servers have), beginning and
/// ending with a letter or digit.
pub fn bucket_name_ok(name: &str) -> bool {
    let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        && alnum(name.as_bytes().first())
        && alnum(name.as_bytes().last())
}

/// An NFS server as given on its own (a host name, an IPv4 address, an
/// IPv6 address with or without brackets), as stored in a source: IPv6
/// without brackets.
pub fn nfs_host(text: &str) -> Option<String> {
    let bracketed = text.contains(':') && !text.starts_with('[');
    let text = if bracketed {
        format!("[{text}]")
    } else {
        text.to_string()
    };
    match nfs_host_port(&text)? {
        (host, None) => Some(host),
        (_, Some(_)) => None,
    }
}

/// `host[:port]` of an nfs:// URL.
fn nfs_host_port(authority: &str) -> Option<(String, Option<u16>)> {
    if authority.is_empty() || authority.contains(['@', '%']) {
        return None;
    }
    let url = url::Url::parse(&format!("nfs://{authority}/")).ok()?;
    let host = match url.host()? {
        url::Host::Domain(d) if !d.is_empty() => d.to_string(),
        url::Host::Domain(_) => return None,
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => ip.to_string(),
    };
    Some((host, url.port()))
}
