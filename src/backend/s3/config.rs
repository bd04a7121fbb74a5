//! What an S3 volume needs besides its URL: endpoint and addressing style,
//! credentials, the fixed POSIX attributes S3 cannot store, and limits.

use std::path::PathBuf;
use std::time::Duration;

use super::credentials::{CredentialSource, Credentials};

/// S3 options as given on the command line (or by the CSI driver); the
/// endpoint and region belong to the source ([`crate::backend::Source::S3`]).
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Address the bucket as `endpoint/bucket` instead of `bucket.endpoint`.
    pub path_style: bool,
    pub credentials: CredentialSource,
    /// Mode of every file (S3 stores no modes).
    pub file_mode: u32,
    /// Mode of every directory.
    pub dir_mode: u32,
    /// Most objects a directory rename may copy; beyond, EXDEV.
    pub rename_dir_max_objects: usize,
    /// Objects at least this big are uploaded in parts of this size.
    pub part_size: u64,
    /// Largest object copied (renamed, snapshotted) with one CopyObject;
    /// larger ones are copied in parts of at most this size
    /// (UploadPartCopy). S3's limit; tests lower it.
    pub single_copy_max: u64,
    /// Retries of 5xx answers, throttling and connection failures (see
    /// `DEFAULT_MAX_RETRIES`).
    pub max_retries: usize,
    /// Overall time bound for one request including its retries.
    pub retry_timeout: Duration,
    /// Per-request timeout.
    pub request_timeout: Duration,
}

pub const DEFAULT_FILE_MODE: u32 = 0o644;
pub const DEFAULT_DIR_MODE: u32 = 0o755;
pub const DEFAULT_RENAME_DIR_MAX_OBJECTS: usize = 10_000;
/// S3 accepts parts of 5 MiB to 5 GiB and at most 10 000 of them; 16 MiB
/// parts reach 160 GiB objects.
pub const DEFAULT_PART_SIZE: u64 = 16 << 20;
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// S3 copies at most 5 GiB in one CopyObject (or one UploadPartCopy).
pub const MAX_SINGLE_COPY: u64 = 5 << 30;
/// Large on purpose, so that `retry_timeout` is the bound that applies: a
/// restarting server is back within seconds, and object_store's jittered
/// backoff (from 100 ms) spent the 4 retries we used to allow in about one,
/// so every read and write in flight failed with EIO (NFS rides out 60 s).
/// The count still stops a request that keeps failing at once.
pub const DEFAULT_MAX_RETRIES: usize = 1_000;

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            path_style: false,
            credentials: CredentialSource::default(),
            file_mode: DEFAULT_FILE_MODE,
            dir_mode: DEFAULT_DIR_MODE,
            rename_dir_max_objects: DEFAULT_RENAME_DIR_MAX_OBJECTS,
            part_size: DEFAULT_PART_SIZE,
            single_copy_max: MAX_SINGLE_COPY,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything the backend is built from, resolved and validated.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix of the volume root without trailing slash ("" = bucket root).
    pub prefix: String,
    /// `http(s)://host[:port]` of an S3-compatible server; `None` = AWS.
    pub endpoint: Option<String>,
    /// Signing region; `None` = $AWS_REGION, $AWS_DEFAULT_REGION or us-east-1.
    pub region: Option<String>,
    pub options: S3Options,
    pub credentials: Credentials,
    /// Owner reported for every file and directory.
    pub uid: u32,
    pub gid: u32,
    /// Local directory for staging files and the upload journal.
    pub staging_dir: PathBuf,
}

/// Why an S3 endpoint is refused. One rule wherever an endpoint comes from
/// (`--endpoint`, a StorageClass `endpoint`, a mount spec).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error(
        "'{0}' is not an http:// or https:// URL with a host and without a path, query or \
         fragment; example: https://s3.example.com"
    )]
    Malformed(String),
    #[error(
        "an endpoint must not contain credentials; S3 keys go in the environment, a \
         credentials file or the CSI secrets"
    )]
    Credentials,
}

/// An S3 endpoint, checked; returned without a trailing slash.
pub fn parse_endpoint(text: &str) -> Result<String, EndpointError> {
    if crate::backend::has_userinfo(text) {
        // Not quoted: what precedes the '@' may be a key.
        return Err(EndpointError::Credentials);
    }
    let bad = || EndpointError::Malformed(text.to_string());
    let url = url::Url::parse(text).map_err(|_| bad())?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EndpointError::Credentials);
    }
    let path_ok = url.path() == "/" || url.path().is_empty();
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none_or(str::is_empty)
        || !path_ok
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(bad());
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// A signing region name (`us-east-1`; S3-compatible servers have their
/// own, e.g. `garage`): lowercase letters, digits and '-'.
pub fn parse_region(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!(
            "'{text}' is not a region name such as us-east-1 (lowercase letters, digits, '-')"
        ))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("S3 endpoint {0}")]
    BadEndpoint(EndpointError),
    #[error("--part-size must be at least 5 MiB (an S3 limit)")]
    PartTooSmall,
}

/// How requests reach the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressing {
    /// Base URL of the bucket: requests go to `{bucket_url}/{key}`.
    pub bucket_url: String,
    /// The endpoint as object_store wants it (with the bucket in the host
    /// for virtual-hosted style).
    pub store_endpoint: String,
    pub virtual_hosted: bool,
    pub allow_http: bool,
    pub region: String,
}

impl S3Config {
    pub fn region(&self) -> String {
        self.region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "us-east-1".to_string())
    }

    /// Work out URLs. Virtual-hosted style is impossible for IP addresses
    /// and `localhost`, so those use path style even without --path-style.
    pub fn addressing(&self) -> Result<Addressing, ConfigError> {
        if self.options.part_size < MIN_PART_SIZE {
            return Err(ConfigError::PartTooSmall);
        }
        let region = self.region();
        let endpoint = match &self.endpoint {
            Some(e) => {
                let checked = parse_endpoint(e).map_err(ConfigError::BadEndpoint)?;
                url::Url::parse(&checked)
                    .map_err(|_| ConfigError::BadEndpoint(EndpointError::Malformed(e.clone())))?
            }
            None => url::Url::parse(&format!("https://s3.{region}.amazonaws.com"))
                .map_err(|_| ConfigError::BadEndpoint(EndpointError::Malformed(region.clone())))?,
        };
        let host = endpoint.host_str().unwrap_or_default().to_string();
        let no_vhost = host == "localhost"
            || host.parse::<std::net::IpAddr>().is_ok()
            || host.starts_with('[');
        let virtual_hosted = !self.options.path_style && !no_vhost;
        let origin = endpoint.origin().ascii_serialization();
        let (bucket_url, store_endpoint) = if virtual_hosted {
            let port = endpoint.port().map(|p| format!(":{p}")).unwrap_or_default();
            let url = format!("{}://{}.{host}{port}", endpoint.scheme(), self.bucket);
            (url.clone(), url)
        } else {
            (format!("{origin}/{}", self.bucket), origin)
        };
        Ok(Addressing {
            bucket_url,
            store_endpoint,
            virtual_hosted,
            allow_http: endpoint.scheme() == "http",
            region,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: Option<&str>, path_style: bool) -> S3Config {
        S3Config {
            bucket: "data".into(),
            prefix: "p".into(),
            endpoint: endpoint.map(str::to_string),
            region: Some("eu-west-1".into()),
            options: S3Options {
                path_style,
                ..S3Options::default()
            },
            credentials: Credentials::for_tests(),
            uid: 0,
            gid: 0,
            staging_dir: PathBuf::from("/tmp"),
        }
    }

    #[test]
    fn addressing_styles() {
        let aws = config(None, false).addressing().unwrap();
        assert_eq!(aws.bucket_url, "https://data.s3.eu-west-1.amazonaws.com");
        assert!(aws.virtual_hosted);
        let aws_path = config(None, true).addressing().unwrap();
        assert_eq!(
            aws_path.bucket_url,
            "https://s3.eu-west-1.amazonaws.com/data"
        );
        let local = config(Some("http://127.0.0.1:8333"), false)
            .addressing()
            .unwrap();
        assert_eq!(local.bucket_url, "http://127.0.0.1:8333/data");
        assert!(!local.virtual_hosted && local.allow_http);
        let named = config(Some("https://minio.example:9000/"), false)
            .addressing()
            .unwrap();
        assert_eq!(named.bucket_url, "https://data.minio.example:9000");
        assert_eq!(named.store_endpoint, named.bucket_url);
    }

    #[test]
    fn bad_endpoints_are_refused() {
        for e in [
            "ftp://x",
            "http://host/path",
            "not a url",
            "http://host?x=1",
            "http://key:hunter2@host",
        ] {
            assert!(config(Some(e), true).addressing().is_err(), "{e}");
            assert!(parse_endpoint(e).is_err(), "{e}");
        }
        let shown = parse_endpoint("http://key:hunter2@host")
            .unwrap_err()
            .to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(
            parse_endpoint("http://127.0.0.1:9000/").as_deref(),
            Ok("http://127.0.0.1:9000")
        );
    }
}
