//! S3 credentials from a volume's CSI secrets.

use super::*;

/// S3 credentials from CSI secrets. Debug never shows the values.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("S3Credentials { <redacted> }")
    }
}

pub(super) const SECRET_KEYS: &[(&str, &str)] = &[
    ("accessKeyId", "access"),
    ("AWS_ACCESS_KEY_ID", "access"),
    ("secretAccessKey", "secret"),
    ("AWS_SECRET_ACCESS_KEY", "secret"),
    ("sessionToken", "token"),
    ("AWS_SESSION_TOKEN", "token"),
];

impl S3Credentials {
    /// `None` when no secrets were given (anonymous or ambient credentials).
    /// Errors name keys, never values.
    pub fn from_secrets(
        secrets: &HashMap<String, String>,
    ) -> Result<Option<S3Credentials>, InvalidArgument> {
        if secrets.is_empty() {
            return Ok(None);
        }
        let (mut access, mut secret, mut token) = (None, None, None);
        for (key, value) in secrets {
            let Some((_, slot)) = SECRET_KEYS
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
            else {
                let names: Vec<&str> = SECRET_KEYS.iter().map(|(k, _)| *k).collect();
                return Err(invalid(format!(
                    "unknown secret key '{key}'; known secret keys: {}",
                    names.join(", ")
                )));
            };
            let target = match *slot {
                "access" => &mut access,
                "secret" => &mut secret,
                _ => &mut token,
            };
            if target.replace(value.clone()).is_some() {
                return Err(invalid(format!("secret key {key} is given twice")));
            }
        }
        match (access, secret) {
            (Some(a), Some(s)) if !a.is_empty() && !s.is_empty() => Ok(Some(S3Credentials {
                access_key_id: a,
                secret_access_key: s,
                session_token: token,
            })),
            _ => Err(invalid(
                "secrets must contain both accessKeyId and secretAccessKey (non-empty)",
            )),
        }
    }

    /// Environment for a mount child: secrets never go on a command line.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("AWS_ACCESS_KEY_ID", self.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key.clone()),
        ];
        if let Some(t) = &self.session_token {
            env.push(("AWS_SESSION_TOKEN", t.clone()));
        }
        env
    }
}
