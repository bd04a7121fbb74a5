//! Source URLs: where a volume's data lives. Parsed once at the edge.

use std::fmt;
use std::path::PathBuf;

/// A parsed source URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `file:///abs/path`: a local directory (also a kernel-mounted NFS).
    Local { root: PathBuf },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    #[error("source '{0}' is not a URL; expected file:///absolute/path")]
    NotAUrl(String),
    #[error("source scheme '{0}' is not supported yet; supported: file://")]
    UnsupportedScheme(String),
    #[error("source '{0}': a file:// URL takes no host; write file:///absolute/path")]
    HostNotAllowed(String),
    #[error("source '{0}': the path must be absolute and must not contain '..'")]
    BadPath(String),
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
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Local { root } => write!(f, "file://{}", root.display()),
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
}
