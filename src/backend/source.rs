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

/// Errors quote the source as given, but always through [`redacted_url`]: a
/// password in the URL's userinfo never reaches a message or a log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    #[error("source '{url}': credentials in the URL are not accepted; {hint}")]
    Credentials { url: String, hint: &'static str },
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
    #[error("source '{0}': an nfs:// URL takes no query or fragment")]
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
    /// `file`, `nfs` or `s3` (the `backend` label of the metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Local { .. } => "file",
            Source::Nfs { .. } => "nfs",
            Source::S3 { .. } => "s3",
        }
    }

    /// Parse and check a source URL. Local sources must name an existing
    /// directory, so a typo fails at mount time and not at first use.
    pub fn parse(text: &str) -> Result<Source, SourceError> {
        if let (true, Some(hint)) = (has_userinfo(text), credentials_hint(text)) {
            return Err(SourceError::Credentials {
                url: redacted_url(text),
                hint,
            });
        }
        if text.starts_with("s3://") {
            return parse_s3(text);
        }
        let url = url::Url::parse(text).map_err(|_| SourceError::NotAUrl(redacted_url(text)))?;
        match url.scheme() {
            "file" => {
                if url.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(SourceError::HostNotAllowed(redacted_url(text)));
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
                    return Err(SourceError::BadPath(redacted_url(text)));
                }
                let raw = url
                    .to_file_path()
                    .map_err(|_| SourceError::BadPath(redacted_url(text)))?;
                if raw
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
                {
                    return Err(SourceError::BadPath(redacted_url(text)));
                }
                match std::fs::metadata(&raw) {
                    Ok(m) if m.is_dir() => Ok(Source::Local { root: raw }),
                    Ok(_) => Err(SourceError::NotADirectory {
                        url: redacted_url(text),
                        path: raw.display().to_string(),
                        why: "it is a file".into(),
                    }),
                    Err(e) => Err(SourceError::NotADirectory {
                        url: redacted_url(text),
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

/// `text` with the userinfo of its authority (`user:password@`) replaced by
/// `***`: `s3://key:secret@bucket/p` shows as `s3://***@bucket/p`. Every error
/// or log line that quotes a source URL as given goes through this.
///
/// Errs on the side of hiding: with userinfo, everything up to the *last* `@`
/// goes (a secret may itself contain `/` or `@`). A URL without userinfo is
/// shown as it is (`nfs://server/export/a@b`).
pub fn redacted_url(text: &str) -> String {
    let (head, rest) = match text.split_once("://") {
        Some((scheme, rest)) if has_userinfo(text) => (format!("{scheme}://"), rest),
        Some(_) => return text.to_string(),
        // Not a URL with an authority: hide whatever precedes an '@'.
        None => (String::new(), text),
    };
    match rest.rfind('@') {
        Some(at) => format!("{head}***{}", &rest[at..]),
        None => text.to_string(),
    }
}

/// True when the URL's authority carries a user or password
/// (`scheme://user[:password]@host/...`), also when a raw `/`, `?` or `#` in
/// the password cuts the authority short (`s3://key:se/cret@bucket`, as AWS
/// secret keys often contain a `/`).
pub fn has_userinfo(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return true;
    }
    if !rest.contains('@') {
        return false;
    }
    // An '@' further on, after an authority with a ':' in it: `user:pass/...@`,
    // unless the ':' is a port (nfs://server:2049/a@b). s3:// and file://
    // URLs never have a port, so there any ':' counts.
    match scheme.to_ascii_lowercase().as_str() {
        "s3" | "file" => authority.contains(':'),
        _ => !is_host_and_port(authority),
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` (or empty): no room for a password.
fn is_host_and_port(authority: &str) -> bool {
    let after_host = if authority.starts_with('[') {
        match authority.find(']') {
            Some(i) => &authority[i + 1..],
            None => return false,
        }
    } else {
        authority.find(':').map_or("", |i| &authority[i..])
    };
    match after_host.strip_prefix(':') {
        Some(port) => port.bytes().all(|b| b.is_ascii_digit()),
        None => after_host.is_empty(),
    }
}

/// Where the credentials of each kind of source belong instead (`None`: not
/// a scheme we support, which is the error to report then).
fn credentials_hint(text: &str) -> Option<&'static str> {
    let scheme = text.split_once("://")?.0.to_ascii_lowercase();
    match scheme.as_str() {
        "s3" => Some(
            "give S3 keys in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, \
             AWS_SESSION_TOKEN) or in a shared credentials file (--credentials-file, --profile); \
             with the CSI driver, in the provisioner/node-stage secret",
        ),
        "nfs" => Some(
            "NFSv3 (AUTH_SYS) has no passwords: choose the identity with --uid, --gid and --groups",
        ),
        "file" => Some("a file:// source is a local directory and takes no user or password"),
        _ => None,
    }
}

/// `s3://bucket/prefix`: the bucket is the URL's host, the prefix its path
/// (normalised: no leading/trailing or doubled slashes). Parsed from the
/// raw text because URL parsing would silently resolve `..`.
fn parse_s3(text: &str) -> Result<Source, SourceError> {
    let bad = |why: &str| SourceError::BadS3 {
        url: redacted_url(text),
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
        _ => return Err(SourceError::NfsHostMissing(redacted_url(text))),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(SourceError::Credentials {
            url: redacted_url(text),
            hint: credentials_hint(text).unwrap_or_default(),
        });
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(SourceError::NfsExtraParts(redacted_url(text)));
    }
    let mut components = Vec::new();
    for raw in url.path().split('/').filter(|c| !c.is_empty()) {
        let decoded = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| SourceError::BadPath(redacted_url(text)))?;
        // `url` already resolved literal dot segments; encoded ones are
        // still here and must not escape the export either.
        if decoded == "." || decoded == ".." || decoded.contains('/') || decoded.contains('\0') {
            return Err(SourceError::BadPath(redacted_url(text)));
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
            return Err(SourceError::BadPath(redacted_url(text)));
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
            Err(SourceError::Credentials { .. })
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
            "s3://test:9000/x",
        ] {
            assert!(
                matches!(Source::parse(bad), Err(SourceError::BadS3 { .. })),
                "{bad}: {:?}",
                Source::parse(bad)
            );
        }
    }

    #[test]
    fn userinfo_is_redacted() {
        for (url, shown) in [
            ("s3://key:secret@bucket/prefix", "s3://***@bucket/prefix"),
            ("nfs://u:pw@server/export", "nfs://***@server/export"),
            ("file://user:pw@/tmp", "file://***@/tmp"),
            ("s3://AKID:wJalr/K7MDENG@bucket/x", "s3://***@bucket/x"),
            ("s3://k:p@ss@bucket/a@b", "s3://***@b"),
            ("nfs://user@server/export", "nfs://***@server/export"),
            ("key:secret@bucket", "***@bucket"),
            // no userinfo: shown as given
            ("nfs://server/export/a@b", "nfs://server/export/a@b"),
            ("nfs://server:2049/a@b", "nfs://server:2049/a@b"),
            ("nfs://[::1]:2049/a@b", "nfs://[::1]:2049/a@b"),
            ("file:///data/a@b", "file:///data/a@b"),
            ("s3://bucket/prefix", "s3://bucket/prefix"),
        ] {
            assert_eq!(redacted_url(url), shown, "{url}");
        }
    }

    #[test]
    fn credentials_in_the_url_are_refused_with_a_hint() {
        let cases = [
            ("s3://AKID:SeCrEt@bucket/prefix", "AWS_SECRET_ACCESS_KEY"),
            ("s3://AKID:Se/CrEt@bucket/prefix", "AWS_SECRET_ACCESS_KEY"),
            ("nfs://u:SeCrEt@server/export", "--uid"),
            ("nfs://u@server/export", "--uid"),
            ("file://u:SeCrEt@/tmp", "local directory"),
        ];
        for (url, hint) in cases {
            let err = Source::parse(url).unwrap_err();
            assert!(
                matches!(err, SourceError::Credentials { .. }),
                "{url}: {err:?}"
            );
            let text = err.to_string();
            assert!(
                text.contains("credentials in the URL are not accepted"),
                "{text}"
            );
            assert!(text.contains(hint), "{text}");
            assert!(!text.contains("SeCrEt") && !text.contains("CrEt"), "{text}");
        }
        // '@' in a path is not userinfo
        assert!(!has_userinfo("nfs://server:2049/export/a@b"));
        assert!(!has_userinfo("file:///data/a@b"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// No error for a URL with userinfo shows the password, whatever the
        /// scheme, user, password (any character RFC 3986 allows in userinfo,
        /// or a raw AWS-style secret key with '/' and '+') and rest of the URL.
        #[test]
        fn no_error_shows_the_password(
            scheme in "(s3|nfs|file|FILE|http|ftp|x)",
            user in "[a-zA-Z0-9._~-]{0,12}",
            password in proptest::prop_oneof![
                "[A-Za-z0-9._~!$&'()*+,;=:%-]{6,40}",
                "[A-Za-z][A-Za-z0-9+/]{5,39}",
            ],
            host in "(|[a-z][a-z0-9.-]{0,15}|127\\.0\\.0\\.1|\\[::1\\])(|:[0-9]{1,5})",
            path in "(/[a-zA-Z0-9@.%_-]{0,8}){0,3}",
        ) {
            // Only a password with enough letters or digits can be searched for.
            proptest::prop_assume!(
                password.chars().filter(|c| c.is_ascii_alphanumeric()).count() >= 6
            );
            let url = format!("{scheme}://{user}:{password}@{host}{path}");
            let shows = |text: &str| text.contains(&password);
            match Source::parse(&url) {
                Ok(src) => proptest::prop_assert!(false, "{} accepted as {}", url, src),
                Err(e) => proptest::prop_assert!(!shows(&e.to_string()), "{} -> {}", url, e),
            }
            let cli = crate::cli::parse_source(&url).err().unwrap_or_default();
            proptest::prop_assert!(!shows(&cli), "{} -> {}", url, cli);
            proptest::prop_assert!(!shows(&redacted_url(&url)), "{}", url);
        }
    }
}
