//! Preflight for read-write mounts: list, put, copy and delete a hidden probe
//! object under the prefix, so a missing permission fails the mount with an
//! explanation instead of failing the first application write with EACCES.

use object_store::{ObjectStoreExt, PutPayload};

/// How long the cloud may take to hand out credentials at mount time.
const CLOUD_CREDENTIALS_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

use crate::backend::BackendPath;

use super::{classify, S3Backend, S3Failure};

#[derive(Debug)]
pub struct PreflightError {
    pub operation: &'static str,
    pub bucket: String,
    pub prefix: String,
    pub access_key_id: String,
    pub cause: String,
    pub fix: String,
}

impl std::fmt::Display for PreflightError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "S3 preflight failed: {} in bucket '{}' under prefix '{}' as access key id '{}': {}. \
             Likely fix: {}. (--skip-preflight skips this check.)",
            self.operation,
            self.bucket,
            if self.prefix.is_empty() {
                "/"
            } else {
                &self.prefix
            },
            self.access_key_id,
            self.cause,
            self.fix
        )
    }
}

impl std::error::Error for PreflightError {}

/// What one request to the bucket showed (`S3Backend::probe`).
#[derive(Debug)]
pub struct Probe {
    /// The server's `Date` header (RFC 7231), when it answered with one.
    pub server_date: Option<String>,
    /// `Err((failure, cause))`: the request failed, the cause worded as
    /// the backend's errors word it.
    pub result: Result<(), (S3Failure, String)>,
}

impl S3Backend {
    /// One signed listing of at most one key under the prefix, not
    /// retried: reaches the endpoint, checks the signature (credentials,
    /// region) and that the bucket exists and may be listed.
    pub async fn probe(&self) -> Probe {
        let inner = &self.inner;
        let prefix = inner.keys.dir(&BackendPath::root());
        let (server_date, result) = inner.raw.probe(&prefix).await;
        Probe {
            server_date,
            result: result.map_err(|e| {
                let f = S3Failure::from(&e);
                let (_, cause) = classify(&f, &inner.site(), &prefix);
                (f, cause)
            }),
        }
    }

    /// Where the credentials came from ("environment (AWS_ACCESS_KEY_ID)",
    /// "file F profile [P]"), for messages; never the secret.
    pub fn credentials_origin(&self) -> &str {
        &self.inner.cfg.credentials.origin
    }

    /// Cloud credentials (none configured): that the cloud gives some now,
    /// so a node without a cloud identity fails with the fix instead of
    /// a signing error on the first request. Configured keys: nothing.
    pub async fn check_credentials(&self) -> Result<(), String> {
        let cfg = &self.inner.cfg.credentials;
        if cfg.cloud.is_none() {
            return Ok(());
        }
        let fetch = self.inner.store.credentials().get_credential();
        let cause = match tokio::time::timeout(CLOUD_CREDENTIALS_WAIT, fetch).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {CLOUD_CREDENTIALS_WAIT:?}"),
        };
        Err(format!(
            "no S3 credentials: none are configured and {} gave none ({cause}); \
             fix: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, pass --credentials-file, \
             or run where a cloud identity exists (IRSA, EKS pod identity, an instance profile)",
            cfg.origin
        ))
    }

    /// Check that this mount can write: list, put, copy, delete a probe.
    /// The probes are removed whatever happens.
    pub async fn preflight(&self) -> Result<(), PreflightError> {
        let inner = &self.inner;
        let root = BackendPath::root();
        let probe = inner.keys.object(
            &BackendPath::root()
                .join(&inner.staging.probe_name())
                .unwrap_or_default(),
        );
        let copy = inner.keys.object(
            &BackendPath::root()
                .join(&inner.staging.probe_name())
                .unwrap_or_default(),
        );
        let bucket = &inner.cfg.bucket;
        let arn_prefix = if inner.keys.prefix().is_empty() {
            format!("arn:aws:s3:::{bucket}/*")
        } else {
            format!("arn:aws:s3:::{bucket}/{}/*", inner.keys.prefix())
        };
        let fail = |operation: &'static str, failure: S3Failure, key: &str, fix: String| {
            let (_, cause) = classify(&failure, &inner.site(), key);
            PreflightError {
                operation,
                bucket: bucket.clone(),
                prefix: inner.keys.prefix().to_string(),
                access_key_id: inner.cfg.credentials.access_key_id.clone(),
                cause,
                fix,
            }
        };
        let is_credentials = |f: &S3Failure| {
            classify(f, &inner.site(), "")
                .1
                .contains("credentials are wrong")
        };
        let fix_for = |f: &S3Failure, permission: String| {
            if is_credentials(f) {
                "use the right access key id and secret (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY \
                 or --credentials-file/--profile)"
                    .to_string()
            } else if f.code.as_deref() == Some("NoSuchBucket") {
                format!("create bucket '{bucket}' or fix the source URL/--endpoint")
            } else {
                permission
            }
        };

        let list_prefix = inner.keys.dir(&root);
        if let Err(e) = inner.raw.first_keys(&list_prefix, 1).await {
            let f = S3Failure::from(&e);
            let fix = fix_for(&f, format!("allow s3:ListBucket on arn:aws:s3:::{bucket}"));
            return Err(fail("LIST (ListObjectsV2)", f, &list_prefix, fix));
        }
        let (probe_path, copy_path) = match (
            object_store::path::Path::parse(&probe),
            object_store::path::Path::parse(&copy),
        ) {
            (Ok(p), Ok(c)) => (p, c),
            _ => {
                return Err(fail(
                    "naming the probe object",
                    S3Failure::default(),
                    &probe,
                    "use a prefix without control characters".into(),
                ))
            }
        };
        let put = inner
            .store
            .put(
                &probe_path,
                PutPayload::from_static(b"cachalot preflight probe\n"),
            )
            .await;
        if let Err(e) = put {
            let f = S3Failure::from(&e);
            let fix = fix_for(
                &f,
                format!("allow s3:PutObject on {arn_prefix}, or mount with --read-only"),
            );
            return Err(fail("PUT of a probe object", f, &probe, fix));
        }
        let copied = inner.store.copy(&probe_path, &copy_path).await;
        let deleted_copy = inner.store.delete(&copy_path).await;
        let deleted = inner.store.delete(&probe_path).await;
        if let Err(e) = copied {
            let f = S3Failure::from(&e);
            let fix = fix_for(
                &f,
                format!("allow s3:GetObject and s3:PutObject on {arn_prefix} (rename is a server-side copy)"),
            );
            return Err(fail("COPY of the probe object", f, &probe, fix));
        }
        if let Err(e) = deleted.and(deleted_copy) {
            let f = S3Failure::from(&e);
            let fix = fix_for(
                &f,
                format!("allow s3:DeleteObject on {arn_prefix} (needed by unlink, rename and overwrite)"),
            );
            return Err(fail("DELETE of the probe object", f, &probe, fix));
        }
        tracing::debug!(bucket, prefix = inner.keys.prefix(), "S3 preflight passed");
        Ok(())
    }
}
