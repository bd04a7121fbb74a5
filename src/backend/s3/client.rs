//! Building the two clients (object_store and the raw signer) from a config.

use std::time::{Duration, SystemTime};

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

use super::credentials::CloudCredentials;
use super::keys::KeyMap;
use super::raw::RawClient;
use super::staging::Staging;
use super::{Inner, S3Config};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// reqwest's TLS (object_store's client, the raw signer, STS and the
/// metadata endpoints) uses the process's rustls provider: ring, chosen in
/// Cargo.toml so a cold build compiles no aws-lc. Installed before the
/// first client is built; an embedding program that installed its own
/// provider keeps it. Code that builds object_store clients of its own
/// (tests, tools) calls it first: reqwest panics without a provider.
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

pub fn build(cfg: S3Config) -> Result<Inner, String> {
    install_tls_provider();
    let addr = cfg.addressing().map_err(|e| e.to_string())?;
    let opts = &cfg.options;
    let client_options = ClientOptions::new()
        .with_allow_http(addr.allow_http)
        .with_timeout(opts.request_timeout)
        .with_connect_timeout(CONNECT_TIMEOUT);
    let store = store_builder(&cfg, &addr, &client_options)
        .build()
        .map_err(|e| format!("configuring the S3 client: {e}"))?;
    // The raw requests sign with the same provider (the same refreshed
    // keys), never a copy of them.
    let raw = RawClient::new(
        &client_options,
        &addr.bucket_url,
        &cfg.bucket,
        std::sync::Arc::clone(store.credentials()),
        &addr.region,
        opts.max_retries,
        opts.retry_timeout,
    )?;
    let keys = KeyMap::new(&cfg.prefix);
    let endpoint = cfg
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("AWS S3 ({})", addr.region));
    let cache_identity = cache_identity(&cfg.bucket, keys.prefix(), cfg.endpoint.as_deref());
    // Messages say the same today; reword them here, never in the identity.
    let describe = cache_identity.clone();
    let staging = Staging::new(&cfg.staging_dir, &cache_identity)
        .map_err(|e| format!("staging directory {}: {e}", cfg.staging_dir.display()))?;
    Ok(Inner {
        keys,
        store,
        raw,
        describe,
        cache_identity,
        endpoint,
        staging,
        started: SystemTime::now(),
        cfg,
    })
}

/// object_store's client of the bucket: addressing, retries, signing and
/// the credentials `cfg` names.
fn store_builder(
    cfg: &S3Config,
    addr: &super::config::Addressing,
    client_options: &ClientOptions,
) -> AmazonS3Builder {
    let opts = &cfg.options;
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
    let builder = AmazonS3Builder::new()
        .with_bucket_name(&cfg.bucket)
        .with_region(&addr.region)
        .with_endpoint(&addr.store_endpoint)
        .with_virtual_hosted_style_request(addr.virtual_hosted)
        .with_client_options(client_options.clone())
        .with_allow_http(addr.allow_http)
        .with_unsigned_payload(unsigned_payload(addr))
        .with_retry(retry);
    match &creds.cloud {
        None => {
            let mut b = builder
                .with_access_key_id(&creds.access_key_id)
                .with_secret_access_key(creds.secret_access_key());
            if let Some(token) = &creds.session_token {
                b = b.with_token(token);
            }
            b
        }
        // object_store picks web identity, container credentials or the
        // instance metadata from these, and refreshes what it got before
        // it expires.
        Some(CloudCredentials::GivenWebIdentity(w)) => {
            // The environment still says where STS is; the token and the
            // role are this mount's.
            let mut b = with_cloud_environment(builder)
                .with_config(
                    AmazonS3ConfigKey::WebIdentityTokenFile,
                    w.token_file.display().to_string(),
                )
                .with_config(AmazonS3ConfigKey::RoleArn, &w.role_arn);
            if let Some(name) = &w.session_name {
                b = b.with_config(AmazonS3ConfigKey::RoleSessionName, name);
            }
            b
        }
        Some(_) => with_cloud_environment(builder),
    }
}

/// Whether request bodies stay out of the signature (`UNSIGNED-PAYLOAD`):
/// over https, as the AWS CLI and SDKs do, because TLS already guards them
/// and SHA-256 of every uploaded byte was a third of the daemon's CPU for a
/// write (1 GiB over https: 1.47 CPU seconds with it, 0.94 without). Over
/// plain http the signature is the only thing that guards a body, so it
/// covers it there.
fn unsigned_payload(addr: &super::config::Addressing) -> bool {
    !addr.allow_http
}

/// See `Backend::cache_identity`. Frozen: `s3://bucket[/prefix]`, and
/// ` at <endpoint>` for another server than AWS (the same bucket name on two
/// servers is two different volumes).
fn cache_identity(bucket: &str, prefix: &str, endpoint: Option<&str>) -> String {
    let mut id = format!("s3://{bucket}");
    if !prefix.is_empty() {
        id.push('/');
        id.push_str(prefix);
    }
    if let Some(e) = endpoint {
        id.push_str(&format!(" at {}", e.trim_end_matches('/')));
    }
    id
}

/// The cloud-credential settings of the environment, and nothing else of it.
fn with_cloud_environment(mut builder: AmazonS3Builder) -> AmazonS3Builder {
    for name in super::credentials::CLOUD_ENV {
        let value = std::env::var(name).ok().filter(|v| !v.is_empty());
        let key = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>();
        if let (Some(value), Ok(key)) = (value, key) {
            builder = builder.with_config(key, value);
        }
    }
    builder
}

#[cfg(test)]
mod identity_tests {
    use super::cache_identity;

    /// Frozen: caches written by earlier versions are keyed by these.
    #[test]
    fn the_cache_identity_keeps_its_form() {
        assert_eq!(cache_identity("b", "", None), "s3://b");
        assert_eq!(
            cache_identity("b", "p/q", Some("http://127.0.0.1:8333/")),
            "s3://b/p/q at http://127.0.0.1:8333"
        );
    }
}

#[cfg(test)]
mod signing_tests {
    use std::path::PathBuf;

    use object_store::aws::AmazonS3ConfigKey;
    use object_store::ClientOptions;

    use super::store_builder;
    use crate::backend::s3::{Credentials, S3Config, S3Options};

    fn unsigned_payload_for(endpoint: &str) -> Option<String> {
        let cfg = S3Config {
            bucket: "data".into(),
            prefix: String::new(),
            endpoint: Some(endpoint.into()),
            region: Some("us-east-1".into()),
            options: S3Options::default(),
            credentials: Credentials::for_tests(),
            uid: 0,
            gid: 0,
            staging_dir: PathBuf::from("/tmp"),
        };
        let addr = cfg.addressing().unwrap();
        store_builder(&cfg, &addr, &ClientOptions::new())
            .get_config_value(&AmazonS3ConfigKey::UnsignedPayload)
    }

    /// TLS guards bodies over https, so they are not hashed there; over
    /// plain http the signature is all that guards them.
    #[test]
    fn bodies_are_signed_over_http_only() {
        assert_eq!(
            unsigned_payload_for("https://s3.example.com").as_deref(),
            Some("true")
        );
        assert_eq!(
            unsigned_payload_for("http://127.0.0.1:8333").as_deref(),
            Some("false")
        );
    }
}
