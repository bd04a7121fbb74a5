//! Sources: where a volume's data lives. One model for the command line,
//! the mounter and the CSI plugin, parsed once at the edge and without I/O
//! (whether a local directory exists is checked when the backend opens it,
//! or by [`Source::check_local_directory`]).

use std::fmt;
use std::path::PathBuf;

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

mod parse;
mod redact;
#[cfg(test)]
pub(crate) mod tests;

pub use parse::{bucket_name_ok, nfs_host, normal_abs_path, normal_prefix};
pub use redact::{has_userinfo, redacted_url};

/// A parsed source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `file:///abs/path`: a local directory (also a kernel-mounted NFS).
    Local { root: PathBuf },
    /// `nfs://server[:port]/export/path`: NFSv3 spoken from user space. The
    /// path is the export, optionally followed by a directory below it; which
    /// part is the export is decided at mount time from the server's export list.
    Nfs {
        /// Name or address; an IPv6 address without brackets.
        host: String,
        /// NFS port; `None` = ask the server's portmapper (then 2049).
        port: Option<u16>,
        /// Absolute, normalised (`/export/sub`, `/` for the root).
        path: String,
    },
    /// `s3://bucket/prefix`: objects under `prefix/` in `bucket` (prefix may
    /// be empty), on `endpoint` (`None` = AWS) signed for `region` (`None` =
    /// the environment's, else us-east-1). The URL carries only bucket and
    /// prefix; endpoint and region come from options or parameters.
    S3 {
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        region: Option<String>,
    },
}

/// Errors quote the source as given, but always through [`redacted_url`]: a
/// password in the URL's userinfo never reaches a message or a log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    #[error("source '{url}': credentials in the URL are not accepted; {hint}")]
    Credentials { url: String, hint: &'static str },
    #[error("source '{0}' is not a URL; expected file:///absolute/path, nfs://server/export or s3://bucket/prefix")]
    NotAUrl(String),
    #[error("source has an unsupported scheme '{0}'; supported: file://, nfs://, s3://")]
    UnsupportedScheme(String),
    #[error("source '{0}': a file:// URL takes no host; write file:///absolute/path")]
    HostNotAllowed(String),
    #[error("source '{0}': the path must be absolute and must not contain '.', '..', an escaped '/' or NUL")]
    BadPath(String),
    #[error("source '{0}': an nfs:// URL needs a server: nfs://server[:port]/export/path")]
    NfsHostMissing(String),
    #[error("source '{0}': a source URL takes no query or fragment; options go on the command line or in parameters")]
    ExtraParts(String),
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
    /// `file`, `nfs` or `s3` (the `backend` label of the metrics, the kind
    /// field of volume IDs).
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Local { .. } => "file",
            Source::Nfs { .. } => "nfs",
            Source::S3 { .. } => "s3",
        }
    }

    /// Parse a source URL. Pure: a local directory is not looked at.
    pub fn parse(text: &str) -> Result<Source, SourceError> {
        parse::parse(text)
    }

    pub fn is_s3(&self) -> bool {
        matches!(self, Source::S3 { .. })
    }

    /// The same source with the S3 endpoint and region set (no effect on
    /// other kinds; callers refuse S3 options for them first).
    pub fn with_s3_site(
        mut self,
        new_endpoint: Option<String>,
        new_region: Option<String>,
    ) -> Self {
        if let Source::S3 {
            endpoint, region, ..
        } = &mut self
        {
            *endpoint = new_endpoint;
            *region = new_region;
        }
        self
    }

    /// The source of the directory `sub` below this one.
    pub fn join(&self, sub: &super::BackendPath) -> Source {
        if sub.is_root() {
            return self.clone();
        }
        let sub = sub.as_str();
        match self {
            Source::Local { root } => Source::Local {
                root: root.join(sub),
            },
            Source::Nfs { host, port, path } => Source::Nfs {
                host: host.clone(),
                port: *port,
                path: format!("{}/{sub}", path.trim_end_matches('/')),
            },
            Source::S3 {
                bucket,
                prefix,
                endpoint,
                region,
            } => Source::S3 {
                bucket: bucket.clone(),
                prefix: if prefix.is_empty() {
                    sub.to_string()
                } else {
                    format!("{prefix}/{sub}")
                },
                endpoint: endpoint.clone(),
                region: region.clone(),
            },
        }
    }

    /// For a local source, that its root is an existing directory (the
    /// command line checks this at once, so a typo fails before mounting).
    pub fn check_local_directory(&self) -> Result<(), SourceError> {
        let Source::Local { root } = self else {
            return Ok(());
        };
        let failed = |why: String| SourceError::NotADirectory {
            url: self.to_string(),
            path: root.display().to_string(),
            why,
        };
        match std::fs::metadata(root) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(failed("it is a file".into())),
            Err(e) => Err(failed(e.to_string())),
        }
    }
}

/// What a path component escapes when shown in a URL, so that the text
/// parses back to the same source (a space stays readable: URL parsers
/// take it).
const COMPONENT: &AsciiSet = &CONTROLS.add(b'%').add(b'#').add(b'?');

fn url_path(path: &str) -> String {
    utf8_percent_encode(path, COMPONENT).to_string()
}

/// The source as a URL that [`Source::parse`] reads back to the same
/// value (without an S3 endpoint and region, which are not part of URLs).
impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Local { root } => write!(f, "file://{}", url_path(&root.to_string_lossy())),
            Source::Nfs { host, port, path } => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                match port {
                    Some(p) => write!(f, "nfs://{host}:{p}{}", url_path(path)),
                    None => write!(f, "nfs://{host}{}", url_path(path)),
                }
            }
            Source::S3 { bucket, prefix, .. } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Source::S3 { bucket, prefix, .. } => write!(f, "s3://{bucket}/{}", url_path(prefix)),
        }
    }
}
