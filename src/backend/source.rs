//! Source URLs: where a volume's data lives. Parsed once at the edge.

use std::fmt;
use std::path::PathBuf;

/// A parsed source URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `file:///abs/path`: a local directory (also a kernel-mounted NFS).
    Local { root: PathBuf },
    /// `s3://bucket/prefix`: objects under `prefix/` in `bucket` (prefix may
    /// be empty). Endpoint, region and credentials come from options.
    S3 { bucket: String, prefix: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    #[error("source '{0}' is not a URL; expected file:///absolute/path")]
    NotAUrl(String),
    #[error("source scheme '{0}' is not supported yet; supported: file://, s3://")]
    UnsupportedScheme(String),
    #[error("source '{0}': a file:// URL takes no host; write file:///absolute/path")]
    HostNotAllowed(String),
    #[error("source '{0}': the path must be absolute and must not contain '..'")]
    BadPath(String),
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

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Local { root } => write!(f, "file://{}", root.display()),
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
