//! S3 credentials: the standard AWS environment variables or an AWS
//! shared-credentials file (INI), else the cloud's own: a web identity
//! token (IRSA: `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`), container
//! credentials (EKS pod identity, ECS: `AWS_CONTAINER_CREDENTIALS_*`) or the
//! instance metadata service. Cloud credentials are fetched and refreshed
//! before they expire by object_store's providers (see `client.rs`). The
//! secret never appears in Debug output, logs or error messages; the access
//! key id does, because it is what an operator needs to find the right key.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where to take credentials from, as configured. The default: the
/// environment variables, else the default shared file if it exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialSource {
    /// `--credentials-file`: an AWS shared-credentials file.
    pub file: Option<PathBuf>,
    /// `--profile`: section of the file (default "default").
    pub profile: Option<String>,
    /// Given by the caller (the CSI node-stage secret handed to the
    /// mounter): used as they are, nothing else is looked at.
    pub explicit: Option<Credentials>,
    /// `--web-identity-token-file` + `--role-arn`: this mount's own web
    /// identity (a pod's service-account token with `authenticationSource:
    /// pod`), whatever keys or identity the process environment has.
    pub web_identity: Option<WebIdentity>,
}

/// A web identity given for one mount rather than taken from the
/// environment: the token file (re-read at every exchange, so whoever
/// writes it fresh keeps the mount's keys fresh) and the role to assume.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WebIdentity {
    pub token_file: PathBuf,
    pub role_arn: String,
    /// The role session's name (shows in CloudTrail and in STS's answer).
    #[serde(default)]
    pub session_name: Option<String>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    secret_access_key: String,
    pub session_token: Option<String>,
    /// Where they came from, for messages ("environment", "file X profile Y").
    pub origin: String,
    /// Keys come from the cloud at request time; the fields above are empty.
    pub cloud: Option<CloudCredentials>,
}

/// Where temporary keys come from when none are configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudCredentials {
    /// `AssumeRoleWithWebIdentity` with the token in the file (IRSA).
    WebIdentity,
    /// The container credentials endpoint (EKS pod identity, ECS task role).
    Container,
    /// The instance metadata service (the node's instance profile).
    InstanceMetadata,
    /// `AssumeRoleWithWebIdentity` with a token file and role given for
    /// this mount, not the environment's.
    GivenWebIdentity(WebIdentity),
}

/// The environment variables object_store's cloud providers read (nothing
/// else of the environment reaches the client: endpoint and region are
/// ours to set).
pub const CLOUD_ENV: &[&str] = &[
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_ENDPOINT_URL_STS",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_METADATA_ENDPOINT",
    "AWS_IMDSV1_FALLBACK",
];

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("origin", &self.origin)
            .field("cloud", &self.cloud)
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialsError {
    #[error("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or pass --credentials-file (AWS shared-credentials format) and optionally --profile")]
    Missing,
    #[error("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not (or is empty)")]
    IncompleteEnvironment,
    #[error("credentials file {path}: {why}")]
    File { path: String, why: String },
}

impl Credentials {
    pub fn new(access_key_id: &str, secret_access_key: &str, session_token: Option<&str>) -> Self {
        Credentials {
            access_key_id: access_key_id.to_string(),
            secret_access_key: secret_access_key.to_string(),
            session_token: session_token.map(str::to_string),
            origin: "explicit".into(),
            cloud: None,
        }
    }

    fn from_cloud(kind: CloudCredentials, origin: String) -> Self {
        Credentials {
            access_key_id: String::new(),
            secret_access_key: String::new(),
            session_token: None,
            origin,
            cloud: Some(kind),
        }
    }

    #[cfg(test)]
    pub fn for_tests() -> Self {
        Credentials::new("AKIDTEST", "secret-value", None)
    }

    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    /// Resolve `source` against the process environment.
    pub fn load(source: &CredentialSource) -> Result<Credentials, CredentialsError> {
        Self::load_with(source, |name| std::env::var(name).ok())
    }

    fn load_with(
        source: &CredentialSource,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Credentials, CredentialsError> {
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        if let Some(given) = &source.explicit {
            return Ok(given.clone());
        }
        if let Some(w) = &source.web_identity {
            let session = w
                .session_name
                .as_ref()
                .map(|n| format!(", session {n}"))
                .unwrap_or_default();
            let origin = format!(
                "the mount's web identity (role {}{session}, token file {})",
                w.role_arn,
                w.token_file.display()
            );
            return Ok(Credentials::from_cloud(
                CloudCredentials::GivenWebIdentity(w.clone()),
                origin,
            ));
        }
        if let Some(file) = &source.file {
            let profile = source.profile.as_deref().unwrap_or("default");
            return from_file(file, profile);
        }
        let default_file = || {
            env("AWS_SHARED_CREDENTIALS_FILE")
                .map(PathBuf::from)
                .or_else(|| env("HOME").map(|h| Path::new(&h).join(".aws/credentials")))
        };
        if let Some(profile) = &source.profile {
            let file = default_file().ok_or(CredentialsError::Missing)?;
            return from_file(&file, profile);
        }
        match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => {
                let token = env("AWS_SESSION_TOKEN");
                let mut c = Credentials::new(&id, &secret, token.as_deref());
                c.origin = "environment (AWS_ACCESS_KEY_ID)".into();
                Ok(c)
            }
            (Some(_), None) => Err(CredentialsError::IncompleteEnvironment),
            _ => match default_file() {
                Some(file) if file.exists() => {
                    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
                    from_file(&file, &profile)
                }
                _ => Ok(cloud(env)),
            },
        }
    }
}

/// No keys configured: the cloud's, in the order the AWS SDKs try them.
fn cloud(env: impl Fn(&str) -> Option<String>) -> Credentials {
    if let (Some(token), Some(role)) = (env("AWS_WEB_IDENTITY_TOKEN_FILE"), env("AWS_ROLE_ARN")) {
        let origin = format!("web identity (role {role}, token file {token})");
        return Credentials::from_cloud(CloudCredentials::WebIdentity, origin);
    }
    if env("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
        || env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
    {
        let origin = "container credentials (EKS pod identity / ECS task role)".to_string();
        return Credentials::from_cloud(CloudCredentials::Container, origin);
    }
    let origin = "instance metadata (no AWS_ACCESS_KEY_ID, credentials file, web identity or \
                  container credentials were found)"
        .to_string();
    Credentials::from_cloud(CloudCredentials::InstanceMetadata, origin)
}

fn from_file(path: &Path, profile: &str) -> Result<Credentials, CredentialsError> {
    let err = |why: String| CredentialsError::File {
        path: path.display().to_string(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let section =
        parse_ini_section(&text, profile).ok_or_else(|| err(format!("no profile [{profile}]")))?;
    let get = |key: &str| {
        section
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let id = get("aws_access_key_id")
        .ok_or_else(|| err(format!("profile [{profile}] has no aws_access_key_id")))?;
    let secret = get("aws_secret_access_key")
        .ok_or_else(|| err(format!("profile [{profile}] has no aws_secret_access_key")))?;
    let token = get("aws_session_token");
    let mut c = Credentials::new(&id, &secret, token.as_deref());
    c.origin = format!("file {} profile [{profile}]", path.display());
    Ok(c)
}

/// Key/value pairs of one INI section. `[profile name]` (the config-file
/// spelling) is accepted as well as `[name]`; `#` and `;` start comments.
fn parse_ini_section(text: &str, wanted: &str) -> Option<Vec<(String, String)>> {
    let mut in_section = false;
    let mut found = None::<Vec<(String, String)>>;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            let name = name.strip_prefix("profile ").map(str::trim).unwrap_or(name);
            in_section = name == wanted;
            if in_section && found.is_none() {
                found = Some(Vec::new());
            }
            continue;
        }
        if !in_section {
            continue;
        }
        if let (Some((k, v)), Some(entries)) = (line.split_once('='), found.as_mut()) {
            entries.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# comment
[default]
aws_access_key_id = AKIDDEFAULT
aws_secret_access_key = s3cr3t

[profile team]
aws_access_key_id=AKIDTEAM
aws_secret_access_key=teamsecret
aws_session_token = tok
";

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// A mount's own web identity (a pod's token) is used even where the
    /// process has keys or a web identity of its own (the node plugin's).
    #[test]
    fn a_given_web_identity_wins_over_the_environment() {
        let given = WebIdentity {
            token_file: "/var/lib/kubelet/x/token".into(),
            role_arn: "arn:aws:iam::123456789012:role/pod".into(),
            session_name: Some("ns.sa".into()),
        };
        let src = CredentialSource {
            web_identity: Some(given.clone()),
            ..CredentialSource::default()
        };
        let env = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" => Some("AKIDDRIVER".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("driver-secret".to_string()),
            "AWS_WEB_IDENTITY_TOKEN_FILE" => Some("/driver/token".to_string()),
            "AWS_ROLE_ARN" => Some("arn:aws:iam::123456789012:role/driver".to_string()),
            _ => None,
        };
        let c = Credentials::load_with(&src, env).unwrap();
        assert_eq!(c.cloud, Some(CloudCredentials::GivenWebIdentity(given)));
        assert_eq!(c.access_key_id, "");
        assert!(c.origin.contains("role/pod, session ns.sa"), "{}", c.origin);
    }

    #[test]
    fn file_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(&path, FILE).unwrap();
        let mut src = CredentialSource {
            file: Some(path.clone()),
            profile: None,
            ..CredentialSource::default()
        };
        let c = Credentials::load_with(&src, no_env).unwrap();
        assert_eq!(c.access_key_id, "AKIDDEFAULT");
        assert_eq!(c.secret_access_key(), "s3cr3t");
        src.profile = Some("team".into());
        let c = Credentials::load_with(&src, no_env).unwrap();
        assert_eq!(c.access_key_id, "AKIDTEAM");
        assert_eq!(c.session_token.as_deref(), Some("tok"));
        src.profile = Some("nope".into());
        let e = Credentials::load_with(&src, no_env).unwrap_err();
        assert!(e.to_string().contains("no profile [nope]"), "{e}");
    }

    #[test]
    fn environment_and_missing() {
        let env = |n: &str| match n {
            "AWS_ACCESS_KEY_ID" => Some("AKIDENV".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("envsecret".to_string()),
            _ => None,
        };
        let c = Credentials::load_with(&CredentialSource::default(), env).unwrap();
        assert_eq!(c.access_key_id, "AKIDENV");
        let half = |n: &str| (n == "AWS_ACCESS_KEY_ID").then(|| "AKID".to_string());
        assert_eq!(
            Credentials::load_with(&CredentialSource::default(), half),
            Err(CredentialsError::IncompleteEnvironment)
        );
        let c = Credentials::load_with(&CredentialSource::default(), no_env).unwrap();
        assert_eq!(c.cloud, Some(CloudCredentials::InstanceMetadata));
    }

    #[test]
    fn without_keys_the_cloud_provides_them_in_the_sdk_order() {
        let load = |vars: &'static [(&'static str, &'static str)]| {
            let env = move |n: &str| {
                vars.iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| v.to_string())
            };
            Credentials::load_with(&CredentialSource::default(), env).unwrap()
        };
        let web = load(&[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/secrets/token"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://169.254.170.23/v1/credentials",
            ),
        ]);
        assert_eq!(web.cloud, Some(CloudCredentials::WebIdentity));
        assert!(
            web.origin.contains("arn:aws:iam::1:role/r"),
            "{}",
            web.origin
        );
        // A token file without a role is not IRSA.
        let pod = load(&[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/secrets/token"),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://169.254.170.23/v1/credentials",
            ),
        ]);
        assert_eq!(pod.cloud, Some(CloudCredentials::Container));
        // Keys in the environment win over the cloud.
        let keys = load(&[
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
        ]);
        assert_eq!(keys.cloud, None);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = Credentials::new("AKIDX", "very-secret", Some("token-secret"));
        let text = format!("{c:?}");
        assert!(text.contains("AKIDX"));
        assert!(!text.contains("very-secret") && !text.contains("token-secret"));
    }
}
