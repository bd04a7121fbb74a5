//! S3 failures → errno-like kinds, in one place. The cause text names what an
//! operator needs (bucket, key, access key id, S3 error code, likely fix) and
//! never the secret.

use crate::backend::{BackendError, ErrorKind, Identity};

use super::raw::RawError;

/// A failure as S3 reported it, whichever client made the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Failure {
    pub status: Option<u16>,
    /// S3 error code (`AccessDenied`, `NoSuchBucket`, ...) when the answer had a body.
    pub code: Option<String>,
    /// True when no HTTP answer came (connection refused, timeout).
    pub transport: bool,
    pub detail: String,
}

impl From<&RawError> for S3Failure {
    fn from(e: &RawError) -> Self {
        S3Failure {
            status: e.status,
            code: e.code.clone(),
            transport: e.status.is_none(),
            detail: e.to_string(),
        }
    }
}

/// How rustls begins the message of a server certificate it refused
/// (unknown issuer, expired, another host's name).
const CERTIFICATE_REFUSED: &str = "invalid peer certificate";

/// No request can succeed until the server's certificate is trusted:
/// retrying is pointless.
pub fn is_certificate_refused(detail: &str) -> bool {
    detail.contains(CERTIFICATE_REFUSED)
}

impl From<&object_store::Error> for S3Failure {
    fn from(e: &object_store::Error) -> Self {
        use object_store::Error as E;
        let mut text = crate::error_text::chain(e);
        let mut transport = false;
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            if s.downcast_ref::<object_store::client::HttpError>()
                .is_some()
            {
                transport = true;
            }
            source = s.source();
        }
        let status = match e {
            E::NotFound { .. } => Some(404),
            E::PermissionDenied { .. } => Some(403),
            E::Unauthenticated { .. } => Some(401),
            E::Precondition { .. } => Some(412),
            E::AlreadyExists { .. } => Some(409),
            E::NotModified { .. } => Some(304),
            E::NotSupported { .. } | E::NotImplemented { .. } => Some(501),
            _ => status_in(&text),
        };
        let code = code_in(&text);
        if text.len() > 600 {
            let mut cut = 600;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        S3Failure {
            status,
            code,
            transport: transport && status.is_none(),
            detail: text,
        }
    }
}

/// `... status code: 503 Service Unavailable ...` in object_store's message.
fn status_in(text: &str) -> Option<u16> {
    let at = text.find("status code: ")? + "status code: ".len();
    text.get(at..at + 3)?.parse().ok()
}

/// `<Code>X</Code>` in an error body quoted inside a message.
fn code_in(text: &str) -> Option<String> {
    let start = text.find("<Code>")? + "<Code>".len();
    let end = text[start..].find("</Code>")? + start;
    Some(text[start..end].to_string())
}

/// Where an error happened, for the message.
pub struct ErrorSite<'a> {
    pub backend: &'a str,
    pub bucket: &'a str,
    pub endpoint: &'a str,
    pub access_key_id: &'a str,
    /// Where keys fetched from the cloud came from (web identity, container
    /// credentials, instance metadata); `None` for keys given as such.
    pub cloud_origin: Option<&'a str>,
}

const CREDENTIAL_CODES: &[&str] = &[
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
];

/// The server refused the credentials themselves (wrong key id or secret,
/// expired token), not what they may do.
pub fn is_credential_failure(f: &S3Failure) -> bool {
    CREDENTIAL_CODES.contains(&f.code.as_deref().unwrap_or("")) || f.status == Some(401)
}

/// The kind and an explanation for a failure of `operation` on `key`.
pub fn classify(f: &S3Failure, site: &ErrorSite<'_>, key: &str) -> (ErrorKind, String) {
    let code = f.code.as_deref().unwrap_or("");
    // Keys from the cloud are not ours to name: say where they came from.
    let (who, fix) = match site.cloud_origin {
        None => (
            format!("access key id '{}'", site.access_key_id),
            "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) or \
             --credentials-file/--profile",
        ),
        Some(origin) => (
            format!("the keys from {origin}"),
            "check that this identity's keys are meant for this server and bucket (the \
             role, AWS_ROLE_ARN and the token's audience; AWS_ENDPOINT_URL_STS), or give \
             keys in the environment",
        ),
    };
    if CREDENTIAL_CODES.contains(&code) || f.status == Some(401) {
        let code = if code.is_empty() {
            "Unauthorized"
        } else {
            code
        };
        return (
            ErrorKind::PermissionDenied,
            format!(
                "the S3 credentials are wrong ({code}): {} at {} rejected {who}; {fix}",
                site.bucket, site.endpoint
            ),
        );
    }
    if code == "AuthorizationHeaderMalformed" {
        return (
            ErrorKind::PermissionDenied,
            format!(
                "the server rejected the request signature's scope ({code}): the region is \
                 probably wrong; pass --region (detail: {})",
                f.detail
            ),
        );
    }
    if code == "NoSuchBucket" {
        return (
            ErrorKind::NotFound,
            format!(
                "bucket '{}' does not exist at {} (NoSuchBucket); create it or fix the \
                 source URL/--endpoint",
                site.bucket, site.endpoint
            ),
        );
    }
    if f.status == Some(403) || code == "AccessDenied" || code == "AllAccessDisabled" {
        let code = if code.is_empty() {
            "AccessDenied"
        } else {
            code
        };
        return (
            ErrorKind::PermissionDenied,
            format!(
                "access denied ({code}) to bucket '{}' key '{key}' for {who}; the key's \
                 policy must allow this operation",
                site.bucket
            ),
        );
    }
    let kind = match (f.status, code) {
        (_, "NoSuchKey") | (Some(404), _) => ErrorKind::NotFound,
        (_, "PreconditionFailed") | (Some(412), _) => ErrorKind::Stale,
        (_, "EntityTooLarge") => ErrorKind::FileTooBig,
        (_, "KeyTooLongError") => ErrorKind::NameTooLong,
        (_, "NotImplemented") | (Some(501), _) => ErrorKind::Unsupported,
        (_, "QuotaExceeded") => ErrorKind::QuotaExceeded,
        (Some(s), _) if s >= 500 => ErrorKind::Unavailable,
        (_, "SlowDown") | (Some(429), _) => ErrorKind::Unavailable,
        _ if f.transport => ErrorKind::Unavailable,
        _ => ErrorKind::Other,
    };
    let explanation = match kind {
        ErrorKind::Unavailable if is_certificate_refused(&f.detail) => format!(
            "the TLS certificate of S3 at {} is not trusted: {}; for a private CA, give \
             cachalot its certificate with SSL_CERT_FILE=/path/to/ca.pem (under CSI: the \
             Helm value s3CaBundle.configMap), or check that --endpoint names the server's \
             host",
            site.endpoint, f.detail
        ),
        ErrorKind::Unavailable => format!(
            "S3 at {} unavailable after retries: {}",
            site.endpoint, f.detail
        ),
        ErrorKind::Stale => format!("object '{key}' changed while in use: {}", f.detail),
        _ => format!("bucket '{}' key '{key}': {}", site.bucket, f.detail),
    };
    (kind, explanation)
}

/// A full backend error for a failed request.
pub fn backend_error(
    f: &S3Failure,
    site: &ErrorSite<'_>,
    operation: &'static str,
    path: &str,
    key: &str,
    id: Identity,
) -> BackendError {
    let (kind, cause) = classify(f, site, key);
    BackendError::new(kind, operation, path)
        .with_backend(site.backend)
        .with_identity(id)
        .with_cause(cause)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> ErrorSite<'static> {
        ErrorSite {
            backend: "s3://b/p",
            bucket: "b",
            endpoint: "http://127.0.0.1:1",
            access_key_id: "AKIDX",
            cloud_origin: None,
        }
    }

    fn failure(status: Option<u16>, code: Option<&str>) -> S3Failure {
        S3Failure {
            status,
            code: code.map(str::to_string),
            transport: status.is_none(),
            detail: "detail".into(),
        }
    }

    #[test]
    fn an_untrusted_certificate_says_how_to_trust_it() {
        let f = S3Failure {
            transport: true,
            detail: "GET https://x/b: HTTP error: error sending request: client error \
                     (Connect): invalid peer certificate: UnknownIssuer"
                .into(),
            ..S3Failure::default()
        };
        let (kind, cause) = classify(&f, &site(), "k");
        assert_eq!(kind, ErrorKind::Unavailable);
        assert!(cause.contains("not trusted"), "{cause}");
        assert!(cause.contains("UnknownIssuer"), "{cause}");
        assert!(cause.contains("SSL_CERT_FILE="), "{cause}");
        // Any other transport failure stays as it was.
        let (_, other) = classify(&failure(None, None), &site(), "k");
        assert!(!other.contains("SSL_CERT_FILE"), "{other}");
    }

    #[test]
    fn access_denied_is_eacces_and_names_bucket_key_and_key_id() {
        let (kind, text) = classify(&failure(Some(403), Some("AccessDenied")), &site(), "p/x");
        assert_eq!(kind, ErrorKind::PermissionDenied);
        assert_eq!(kind.errno(), libc::EACCES);
        assert!(
            text.contains("'b'") && text.contains("'p/x'") && text.contains("AKIDX"),
            "{text}"
        );
        // A HEAD answer has no body: status alone.
        let (kind, _) = classify(&failure(Some(403), None), &site(), "p/x");
        assert_eq!(kind, ErrorKind::PermissionDenied);
    }

    #[test]
    fn wrong_credentials_say_so() {
        for code in ["SignatureDoesNotMatch", "InvalidAccessKeyId"] {
            let (kind, text) = classify(&failure(Some(403), Some(code)), &site(), "");
            assert_eq!(kind, ErrorKind::PermissionDenied);
            assert!(
                text.contains("credentials are wrong") && text.contains(code),
                "{text}"
            );
            assert!(text.contains("AKIDX"), "{text}");
        }
        // Keys from a web identity: the message names it, not an empty key id.
        let cloud = ErrorSite {
            access_key_id: "",
            cloud_origin: Some("web identity (role arn:aws:iam::1:role/r, token file /t)"),
            ..site()
        };
        let (_, text) = classify(&failure(Some(403), Some("InvalidAccessKeyId")), &cloud, "");
        assert!(text.contains("the keys from web identity (role"), "{text}");
        assert!(
            text.contains("AWS_ROLE_ARN") && !text.contains("''"),
            "{text}"
        );
    }

    #[test]
    fn other_mappings() {
        let s = site();
        let k = |st, c| classify(&failure(st, c), &s, "k").0;
        assert_eq!(k(Some(404), Some("NoSuchBucket")), ErrorKind::NotFound);
        assert!(classify(&failure(Some(404), Some("NoSuchBucket")), &s, "")
            .1
            .contains("does not exist"));
        assert_eq!(k(Some(404), None), ErrorKind::NotFound);
        assert_eq!(k(Some(412), None), ErrorKind::Stale);
        assert_eq!(k(Some(503), Some("SlowDown")), ErrorKind::Unavailable);
        assert_eq!(k(Some(500), None), ErrorKind::Unavailable);
        assert_eq!(k(None, None), ErrorKind::Unavailable);
        assert_eq!(k(Some(400), Some("EntityTooLarge")), ErrorKind::FileTooBig);
        assert_eq!(k(Some(400), Some("Weird")), ErrorKind::Other);
    }

    #[test]
    fn status_and_code_found_in_object_store_text() {
        let t = "Generic S3 error: Error performing PUT http://x in 1s - Server returned non-2xx status code: 503 Service Unavailable: <Error><Code>SlowDown</Code></Error>";
        assert_eq!(status_in(t), Some(503));
        assert_eq!(code_in(t).as_deref(), Some("SlowDown"));
    }
}
