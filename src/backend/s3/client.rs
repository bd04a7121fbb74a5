//! Building the two clients (object_store and the raw signer) from a config.

use std::time::{Duration, SystemTime};

use object_store::aws::{AmazonS3Builder, AwsCredential};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

use super::keys::KeyMap;
use super::raw::RawClient;
use super::staging::Staging;
use super::{Inner, S3Config};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn build(cfg: S3Config) -> Result<Inner, String> {
    let addr = cfg.addressing().map_err(|e| e.to_string())?;
    let opts = &cfg.options;
    let client_options = ClientOptions::new()
        .with_allow_http(addr.allow_http)
        .with_timeout(opts.request_timeout)
        .with_connect_timeout(CONNECT_TIMEOUT);
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: opts.max_retries,
        retry_timeout: opts.retry_timeout,
    };
    let creds = &cfg.credentials;
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&cfg.bucket)
        .with_region(&addr.region)
        .with_endpoint(&addr.store_endpoint)
        .with_virtual_hosted_style_request(addr.virtual_hosted)
        .with_client_options(client_options.clone())
        .with_allow_http(addr.allow_http)
        .with_retry(retry)
        .with_access_key_id(&creds.access_key_id)
        .with_secret_access_key(creds.secret_access_key());
    if let Some(token) = &creds.session_token {
        builder = builder.with_token(token);
    }
    let store = builder
        .build()
        .map_err(|e| format!("configuring the S3 client: {e}"))?;
    let raw = RawClient::new(
        &client_options,
        &addr.bucket_url,
        &cfg.bucket,
        AwsCredential {
            key_id: creds.access_key_id.clone(),
            secret_key: creds.secret_access_key().to_string(),
            token: creds.session_token.clone(),
        },
        &addr.region,
        opts.max_retries,
        opts.retry_timeout,
    )?;
    let keys = KeyMap::new(&cfg.prefix);
    let endpoint = opts
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("AWS S3 ({})", addr.region));
    let mut describe = format!("s3://{}", cfg.bucket);
    if !keys.prefix().is_empty() {
        describe.push('/');
        describe.push_str(keys.prefix());
    }
    if let Some(e) = &opts.endpoint {
        // Part of every cache key: the same bucket name on two servers is
        // two different volumes.
        describe.push_str(&format!(" at {}", e.trim_end_matches('/')));
    }
    let staging = Staging::new(&cfg.staging_dir, &describe)
        .map_err(|e| format!("staging directory {}: {e}", cfg.staging_dir.display()))?;
    Ok(Inner {
        keys,
        store,
        raw,
        describe,
        endpoint,
        staging,
        started: SystemTime::now(),
        cfg,
    })
}
