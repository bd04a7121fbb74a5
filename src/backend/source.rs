//! Source URLs: where a volume's data lives. Parsed once at the edge.

use std::fmt;
use std::path::PathBuf;

/// A parsed source URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `file:///abs/path`: a local directory (also a kernel-mounted NFS).
    Local { root: PathBuf },
    /// `nfs://server[:port]/export/path`: NFSv3 spoken from user space. The
    /// path is the export, optionally followed by a directory below it; which
    /// part is the export is decided at mount time from the server's export list.
    Nfs {
        host: String,
        /// NFS port; `None` = ask the server's portmapper (then 2049).
        port: Option<u16>,
        /// Absolute, normalised (`/export/sub`, `/` for the root).
        path: String,
    },
    /// `s3://bucket/prefix`: objects under `prefix/` in `bucket` (prefix may
    /// be empty). Endpoint, region and credentials come from options.
    S3 { bucket: String, prefix: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    #[error("source '{0}' is not a URL; expected file:///absolute/path")]
    NotAUrl(String),
    #[error("source scheme '{0}' is not supported; supported: file://, nfs://, s3://")]
    UnsupportedScheme(String),
    #[error("source '{0}': a file:// URL takes no host; write file:///absolute/path")]
    HostNotAllowed(String),
    #[error("source '{0}': the path must be absolute and must not contain '..'")]
    BadPath(String),
    #[error("source '{0}': an nfs:// URL needs a server: nfs://server[:port]/export/path")]
    NfsHostMissing(String),
    #[error("source '{0}': an nfs:// URL takes no user, password, query or fragment")]
    NfsExtraParts(String),
    #[error("source '{url}': {why}; expected s3://bucket[/prefix]")]
    BadS3 { url: String, why: String },
    #[error("source '{url}': {path} is not a directory ({why})")]
    NotADirectory {
        url: String,
        path: String,
        why: String,
    },
}

impl Source {
    /// Parse and check a source URL. Local sources must name an existing
    /// directory, so a typo fails at mount time and not at first use.
    pub fn parse(text: &str) -> Result<Source, SourceError> {
        if text.starts_with("s3://") {
            return parse_s3(text);
        }
        let url = url::Url::parse(text).map_err(|_| SourceError::NotAUrl(text.to_string()))?;
        match url.scheme() {
            "file" => {
                if url.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(SourceError::HostNotAllowed(text.to_string()));
                }
                // Check the text as written: the URL parser resolves `..`
                // (file:///srv/v/../../etc becomes /etc) and accepts
                // relative forms like file:tmp.
                let written = text.strip_prefix("file://").unwrap_or("");
                let escapes = written
                    .split(['/', '\\'])
                    .map(|seg| percent_encoding::percent_decode_str(seg).decode_utf8_lossy())
                    .any(|seg| seg == ".." || seg == "." || seg.contains(['/', '\\']))
                    || written.to_ascii_lowercase().contains("%2f")
                    || !written.starts_with('/');
                if escapes {
                    return Err(SourceError::BadPath(text.to_string()));
                }
                let raw = url
                    .to_file_path()
                    .map_err(|_| SourceError::BadPath(text.to_string()))?;
                if raw
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
                {
                    return Err(SourceError::BadPath(text.to_string()));
                }
                match std::fs::metadata(&raw) {
                    Ok(m) if m.is_dir() => Ok(Source::Local { root: raw }),
                    Ok(_) => Err(SourceError::NotADirectory {
                        url: text.to_string(),
                        path: raw.display().to_string(),
                        why: "it is a file".into(),
                    }),
                    Err(e) => Err(SourceError::NotADirectory {
                        url: text.to_string(),
                        path: raw.display().to_string(),
                        why: e.to_string(),
                    }),
                }
            }
            "nfs" => parse_nfs(text, &url),
            other => Err(SourceError::UnsupportedScheme(other.to_string())),
        }
    }

    pub fn is_s3(&self) -> bool {
        matches!(self, Source::S3 { .. })
    }
}

/// `s3://bucket/prefix`: the bucket is the URL's host, the prefix its path
/// (normalised: no leading/trailing or doubled slashes). Parsed from the
/// raw text because URL parsing would silently resolve `..`.
fn parse_s3(text: &str) -> Result<Source, SourceError> {
    let bad = |why: &str| SourceError::BadS3 {
        url: text.to_string(),
        why: why.to_string(),
    };
    let rest = &text["s3://".len().min(text.len())..];
    if rest.contains(['?', '#']) {
        return Err(bad("options go on the command line, not in the URL"));
    }
    let (bucket, raw_prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.contains(['@', ':']) {
        return Err(bad("credentials or a port do not belong in the URL"));
    }
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        && bucket.as_bytes()[0].is_ascii_alphanumeric();
    if !valid_bucket {
        return Err(bad(
            "bucket names have 3 to 63 characters: lowercase letters, digits, '-', '.'",
        ));
    }
    let decoded = percent_encoding::percent_decode_str(raw_prefix)
        .decode_utf8()
        .map_err(|_| bad("the prefix is not valid UTF-8"))?;
    let prefix = super::BackendPath::parse(&decoded)
        .map_err(|_| bad("the prefix must not contain '.', '..' or NUL components"))?;
    Ok(Source::S3 {
        bucket: bucket.to_string(),
        prefix: prefix.as_str().to_string(),
    })
}

fn parse_nfs(text: &str, url: &url::Url) -> Result<Source, SourceError> {
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        _ => return Err(SourceError::NfsHostMissing(text.to_string())),
    };
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(SourceError::NfsExtraParts(text.to_string()));
    }
    let mut components = Vec::new();
    for raw in url.path().split('/').filter(|c| !c.is_empty()) {
        let decoded = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| SourceError::BadPath(text.to_string()))?;
        // `url` already resolved literal dot segments; encoded ones are
        // still here and must not escape the export either.
        if decoded == "." || decoded == ".." || decoded.contains('/') || decoded.contains('\0') {
            return Err(SourceError::BadPath(text.to_string()));
        }
        components.push(decoded.into_owned());
    }
    // The URL parser resolves `..` (also `%2e%2e`) before we see the path:
    // look at the segments as written, so nothing silently changes directory.
    let written = text
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or("");
    for raw in written.split(['/', '?', '#']) {
        let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
        if decoded == "." || decoded == ".." {
            return Err(SourceError::BadPath(text.to_string()));
        }
    }
    Ok(Source::Nfs {
        host,
        port: url.port(),
        path: format!("/{}", components.join("/")),
    })
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Local { root } => write!(f, "file://{}", root.display()),
            Source::Nfs { host, port, path } => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                match port {
                    Some(p) => write!(f, "nfs://{host}:{p}{path}"),
                    None => write!(f, "nfs://{host}{path}"),
                }
            }
            Source::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Source::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_existing_local_directory() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let src = Source::parse(&url).unwrap();
        assert_eq!(
            src,
            Source::Local {
                root: dir.path().to_path_buf()
            }
        );
        assert_eq!(src.to_string(), url);
    }

    #[test]
    fn parses_nfs_urls() {
        let src = Source::parse("nfs://10.0.0.5/home/ubuntu/nfs/").unwrap();
        assert_eq!(
            src,
            Source::Nfs {
                host: "10.0.0.5".into(),
                port: None,
                path: "/home/ubuntu/nfs".into()
            }
        );
        assert_eq!(src.to_string(), "nfs://10.0.0.5/home/ubuntu/nfs");
        let src = Source::parse("nfs://filer.example:2050/export/a%20b").unwrap();
        assert_eq!(
            src,
            Source::Nfs {
                host: "filer.example".into(),
                port: Some(2050),
                path: "/export/a b".into()
            }
        );
        let src = Source::parse("nfs://[::1]/").unwrap();
        assert_eq!(src.to_string(), "nfs://[::1]/");
    }

    #[test]
    fn rejects_bad_nfs_urls() {
        assert!(matches!(
            Source::parse("nfs:///export"),
            Err(SourceError::NfsHostMissing(_))
        ));
        assert!(matches!(
            Source::parse("nfs://h/export/%2e%2e/etc"),
            Err(SourceError::BadPath(_))
        ));
        assert!(matches!(
            Source::parse("nfs://h/export/../etc"),
            Err(SourceError::BadPath(_))
        ));
        assert!(matches!(
            Source::parse("nfs://h/export/a%2Fb"),
            Err(SourceError::BadPath(_))
        ));
        assert!(matches!(
            Source::parse("nfs://user@h/export"),
            Err(SourceError::NfsExtraParts(_))
        ));
        assert!(matches!(
            Source::parse("nfs://h/export?x=1"),
            Err(SourceError::NfsExtraParts(_))
        ));
    }

    #[test]
    fn rejects_bad_sources_with_a_reason() {
        assert!(matches!(
            Source::parse("relative/dir"),
            Err(SourceError::NotAUrl(_))
        ));
        assert!(matches!(
            Source::parse("ftp://host/x"),
            Err(SourceError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            Source::parse("file://host/x"),
            Err(SourceError::HostNotAllowed(_))
        ));
        assert!(matches!(
            Source::parse("file:///definitely/not/here"),
            Err(SourceError::NotADirectory { .. })
        ));
    }

    #[test]
    fn parses_s3_bucket_and_prefix() {
        let src = Source::parse("s3://test/some//prefix/").unwrap();
        assert_eq!(
            src,
            Source::S3 {
                bucket: "test".into(),
                prefix: "some/prefix".into()
            }
        );
        assert_eq!(src.to_string(), "s3://test/some/prefix");
        assert!(src.is_s3());
        let bare = Source::parse("s3://my-bucket.data").unwrap();
        assert_eq!(bare.to_string(), "s3://my-bucket.data");
        let spaced = Source::parse("s3://test/with%20space").unwrap();
        assert_eq!(spaced.to_string(), "s3://test/with space");
    }

    #[test]
    fn rejects_bad_s3_sources() {
        for bad in [
            "s3://",
            "s3://ab",
            "s3://UPPER/x",
            "s3://test/a/../b",
            "s3://test/x?endpoint=y",
            "s3://key:secret@test/x",
            "s3://test:9000/x",
        ] {
            assert!(
                matches!(Source::parse(bad), Err(SourceError::BadS3 { .. })),
                "{bad}: {:?}",
                Source::parse(bad)
            );
        }
    }
}
