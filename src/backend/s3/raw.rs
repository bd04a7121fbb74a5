//! SigV4-signed requests object_store cannot make for us: its `Path` type
//! drops trailing slashes (so `dir/` marker objects cannot be written or
//! deleted), its listing fails on keys no `Path` can hold (`a//b`) and offers
//! no `max-keys`, and it has no ListMultipartUploads. We sign with
//! object_store's own `AwsAuthorizer` and send through its HTTP client, so
//! TLS, timeouts and signing behave exactly like the rest of the backend.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use http::{Method, StatusCode};
use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::client::{HttpClient, HttpConnector, ReqwestConnector};
use object_store::ClientOptions;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::errors::is_certificate_refused;
use super::xml::{self, ListPage, ListedObject, Upload};
use crate::error_text::chain;

/// AWS URI encoding: everything but unreserved characters.
const STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// The same for a key in the URL path, where '/' stays.
const PATH: &AsciiSet = &STRICT.remove(b'/');

/// A failed raw request: HTTP status and S3 error code when the server
/// answered, the transport error otherwise.
#[derive(Debug, Clone)]
pub struct RawError {
    pub status: Option<u16>,
    pub code: Option<String>,
    pub message: String,
}

impl std::fmt::Display for RawError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.status, &self.code) {
            (Some(s), Some(c)) => write!(f, "HTTP {s} {c}: {}", self.message),
            (Some(s), None) => write!(f, "HTTP {s}: {}", self.message),
            _ => write!(f, "{}", self.message),
        }
    }
}

/// The credential provider failed (it retried what it could itself): with
/// STS's status where STS answered, so a refused token (403) fails the
/// request at once as access denied instead of being retried.
fn credentials_error(e: &object_store::Error) -> RawError {
    let failure = super::errors::S3Failure::from(e);
    RawError {
        status: failure.status,
        code: failure.code,
        message: format!("getting credentials: {e}"),
    }
}

pub struct RawResponse {
    pub body: Bytes,
}

pub struct RawClient {
    http: HttpClient,
    bucket_url: String,
    bucket: String,
    credentials: AwsCredentialProvider,
    region: String,
    max_retries: usize,
    retry_timeout: Duration,
}

/// Result of listing one directory level completely.
#[derive(Debug, Default)]
pub struct DirListing {
    pub objects: Vec<ListedObject>,
    /// Sub-prefixes, each ending with '/'.
    pub prefixes: Vec<String>,
}

impl RawClient {
    pub fn new(
        options: &ClientOptions,
        bucket_url: &str,
        bucket: &str,
        credentials: AwsCredentialProvider,
        region: &str,
        max_retries: usize,
        retry_timeout: Duration,
    ) -> Result<RawClient, String> {
        super::client::install_tls_provider();
        let http = ReqwestConnector::default()
            .connect(options)
            .map_err(|e| format!("creating the HTTP client: {e}"))?;
        Ok(RawClient {
            http,
            bucket_url: bucket_url.trim_end_matches('/').to_string(),
            bucket: bucket.to_string(),
            credentials,
            region: region.to_string(),
            max_retries,
            retry_timeout,
        })
    }

    fn url(&self, key: &str, query: &[(&str, &str)]) -> String {
        let mut url = format!("{}/{}", self.bucket_url, utf8_percent_encode(key, PATH));
        // Encoded exactly as SigV4 canonicalises, so what we sign is what we send.
        let mut pairs: Vec<String> = query
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    utf8_percent_encode(k, STRICT),
                    utf8_percent_encode(v, STRICT)
                )
            })
            .collect();
        pairs.sort();
        if !pairs.is_empty() {
            url.push('?');
            url.push_str(&pairs.join("&"));
        }
        url
    }

    /// Send with retries (5xx, 429, 408, transport errors) and exponential
    /// backoff, like object_store's RetryConfig does for its own requests.
    pub async fn send(
        &self,
        method: Method,
        key: &str,
        query: &[(&str, &str)],
    ) -> Result<RawResponse, RawError> {
        self.send_with(method, key, query, &[]).await
    }

    async fn send_with(
        &self,
        method: Method,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(&'static str, String)],
    ) -> Result<RawResponse, RawError> {
        let url = self.url(key, query);
        (|| self.send_once(&method, &url, headers))
            .retry(retry_policy(self.max_retries, self.retry_timeout))
            .when(|e: &RawError| match e.status {
                Some(s) => s >= 500 || s == 429 || s == 408,
                None => !is_certificate_refused(&e.message),
            })
            .notify(|e, delay| {
                tracing::info!(%method, key, error = %e, "S3 request failed, retrying in {delay:?}");
            })
            .await
    }

    async fn send_once(
        &self,
        method: &Method,
        url: &str,
        headers: &[(&'static str, String)],
    ) -> Result<RawResponse, RawError> {
        let transport = |message: String| RawError {
            status: None,
            code: None,
            message,
        };
        let mut builder = http::Request::builder().method(method.clone()).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let mut request = builder
            .body(object_store::client::HttpRequestBody::empty())
            .map_err(|e| transport(format!("building request for {url}: {e}")))?;
        let credential = self
            .credentials
            .get_credential()
            .await
            .map_err(|e| credentials_error(&e))?;
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .map_err(|e| transport(format!("signing request: {e}")))?;
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| transport(format!("{method} {url}: {}", chain(&e))))?;
        let (parts, body) = response.into_parts();
        let body = body
            .bytes()
            .await
            .map_err(|e| transport(format!("reading answer to {method} {url}: {}", chain(&e))))?;
        if parts.status.is_success() {
            // CopyObject can fail after answering 200: the error is in the
            // body. S3 documents it as retryable, like a 500.
            if body.starts_with(b"<?xml") || body.starts_with(b"<Error") {
                let text = String::from_utf8_lossy(&body);
                if let Some((code, message)) = xml::parse_error(&text) {
                    return Err(RawError {
                        status: Some(500),
                        code: Some(code),
                        message,
                    });
                }
            }
            return Ok(RawResponse { body });
        }
        Err(error_from(parts.status, &body))
    }

    /// One signed ListObjectsV2 of at most one key under `prefix`, never
    /// retried: how the server answered, and its `Date` header (any answer
    /// carries one, an error too), for `cachalot doctor`'s clock check.
    pub async fn probe(&self, prefix: &str) -> (Option<String>, Result<(), RawError>) {
        let transport = |message: String| RawError {
            status: None,
            code: None,
            message,
        };
        let url = self.url(
            "",
            &[("list-type", "2"), ("max-keys", "1"), ("prefix", prefix)],
        );
        let request = http::Request::builder()
            .method(Method::GET)
            .uri(&url)
            .body(object_store::client::HttpRequestBody::empty());
        let mut request = match request {
            Ok(r) => r,
            Err(e) => {
                return (
                    None,
                    Err(transport(format!("building request for {url}: {e}"))),
                )
            }
        };
        let credential = match self.credentials.get_credential().await {
            Ok(c) => c,
            Err(e) => return (None, Err(credentials_error(&e))),
        };
        if let Err(e) =
            AwsAuthorizer::new(&credential, "s3", &self.region).try_authorize(&mut request, None)
        {
            return (None, Err(transport(format!("signing request: {e}"))));
        }
        let response = match self.http.execute(request).await {
            Ok(r) => r,
            Err(e) => return (None, Err(transport(format!("GET {url}: {}", chain(&e))))),
        };
        let (parts, body) = response.into_parts();
        let date = parts
            .headers
            .get(http::header::DATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match body.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return (
                    date,
                    Err(transport(format!("reading answer to GET {url}: {e}"))),
                )
            }
        };
        if parts.status.is_success() {
            return (date, Ok(()));
        }
        (date, Err(error_from(parts.status, &body)))
    }

    /// One ListObjectsV2 page.
    pub async fn list_page(
        &self,
        prefix: &str,
        delimiter: bool,
        max_keys: Option<usize>,
        token: Option<&str>,
    ) -> Result<ListPage, RawError> {
        let max = max_keys.map(|m| m.to_string());
        let mut query: Vec<(&str, &str)> = vec![("list-type", "2"), ("prefix", prefix)];
        if delimiter {
            query.push(("delimiter", "/"));
        }
        if let Some(m) = &max {
            query.push(("max-keys", m));
        }
        if let Some(t) = token {
            query.push(("continuation-token", t));
        }
        let response = self.send(Method::GET, "", &query).await?;
        let text = String::from_utf8_lossy(&response.body);
        xml::parse_list(&text).map_err(|message| RawError {
            status: None,
            code: None,
            message,
        })
    }

    /// Every entry of one directory level (all pages).
    pub async fn list_dir(&self, prefix: &str) -> Result<DirListing, RawError> {
        let mut out = DirListing::default();
        let mut token: Option<String> = None;
        loop {
            let page = self.list_page(prefix, true, None, token.as_deref()).await?;
            out.objects.extend(page.contents);
            out.prefixes
                .extend(page.common_prefixes.into_iter().map(|p| p.prefix));
            match (page.is_truncated, page.next_continuation_token) {
                (true, Some(t)) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// Every key under `prefix`, recursively, stopping after `limit` keys.
    pub async fn list_recursive(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<ListedObject>, RawError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .list_page(prefix, false, None, token.as_deref())
                .await?;
            out.extend(page.contents);
            if out.len() > limit {
                return Ok(out);
            }
            match (page.is_truncated, page.next_continuation_token) {
                (true, Some(t)) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// Up to `n` keys under `prefix` (recursive): cheap existence checks.
    pub async fn first_keys(&self, prefix: &str, n: usize) -> Result<Vec<ListedObject>, RawError> {
        Ok(self.list_page(prefix, false, Some(n), None).await?.contents)
    }

    /// PUT an empty object; used for `dir/` markers.
    pub async fn put_empty(&self, key: &str) -> Result<RawResponse, RawError> {
        self.send(Method::PUT, key, &[]).await
    }

    /// Server-side copy of any key (also `dir/` markers) within the bucket.
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), RawError> {
        let source = format!("/{}/{}", self.bucket, utf8_percent_encode(from, PATH));
        self.send_with(Method::PUT, to, &[], &[("x-amz-copy-source", source)])
            .await
            .map(|_| ())
    }

    /// UploadPartCopy: bytes `range` (inclusive) of `from`, pinned to its
    /// `etag`, as part `part` of the multipart upload `upload_id` of `to`;
    /// the part's ETag.
    pub async fn copy_part(
        &self,
        from: &str,
        to: &str,
        upload_id: &str,
        part: usize,
        range: (u64, u64),
        etag: &str,
    ) -> Result<String, RawError> {
        let source = format!("/{}/{}", self.bucket, utf8_percent_encode(from, PATH));
        let mut headers = vec![
            ("x-amz-copy-source", source),
            (
                "x-amz-copy-source-range",
                format!("bytes={}-{}", range.0, range.1),
            ),
        ];
        if !etag.is_empty() {
            headers.push(("x-amz-copy-source-if-match", etag.to_string()));
        }
        let number = part.to_string();
        let query = [("partNumber", number.as_str()), ("uploadId", upload_id)];
        let answer = self.send_with(Method::PUT, to, &query, &headers).await?;
        let text = String::from_utf8_lossy(&answer.body);
        xml::parse_copy_part(&text).ok_or_else(|| RawError {
            status: None,
            code: None,
            message: format!("UploadPartCopy of '{from}' answered without an ETag: {text}"),
        })
    }

    pub async fn delete(&self, key: &str) -> Result<(), RawError> {
        self.send(Method::DELETE, key, &[]).await.map(|_| ())
    }

    /// All multipart uploads in progress under `prefix`.
    pub async fn list_uploads(&self, prefix: &str) -> Result<Vec<Upload>, RawError> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (String::new(), String::new());
        loop {
            let mut query: Vec<(&str, &str)> = vec![("uploads", ""), ("prefix", prefix)];
            if !key_marker.is_empty() {
                query.push(("key-marker", &key_marker));
                query.push(("upload-id-marker", &id_marker));
            }
            let response = self.send(Method::GET, "", &query).await?;
            let text = String::from_utf8_lossy(&response.body);
            let page = xml::parse_uploads(&text).map_err(|message| RawError {
                status: None,
                code: None,
                message,
            })?;
            out.extend(page.uploads);
            match (page.is_truncated, page.next_key_marker) {
                (true, Some(k)) if !k.is_empty() => {
                    key_marker = k;
                    id_marker = page.next_upload_id_marker.unwrap_or_default();
                }
                _ => return Ok(out),
            }
        }
    }

    pub async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), RawError> {
        self.send(Method::DELETE, key, &[("uploadId", upload_id)])
            .await
            .map(|_| ())
    }
}

fn error_from(status: StatusCode, body: &[u8]) -> RawError {
    let text = String::from_utf8_lossy(body);
    let (code, message) = match xml::parse_error(&text) {
        Some((code, message)) => (Some(code), message),
        None => (None, status.canonical_reason().unwrap_or("").to_string()),
    };
    RawError {
        status: Some(status.as_u16()),
        code,
        message,
    }
}

/// 100 ms doubling up to 5 s, randomly jittered so many clients do not
/// retry in lockstep; at most `times` retries and `total` of waiting.
fn retry_policy(times: usize, total: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(times)
        .with_total_delay(Some(total))
        .with_jitter()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> RawClient {
        RawClient::new(
            &ClientOptions::new().with_allow_http(true),
            "http://127.0.0.1:1/bucket/",
            "bucket",
            std::sync::Arc::new(object_store::StaticCredentialProvider::new(
                object_store::aws::AwsCredential {
                    key_id: "k".into(),
                    secret_key: "s".into(),
                    token: None,
                },
            )),
            "us-east-1",
            0,
            Duration::from_secs(1),
        )
        .unwrap()
    }

    #[test]
    fn urls_are_encoded_like_sigv4_canonicalises() {
        let c = client();
        assert_eq!(
            c.url("p/a b+c~/", &[("prefix", "p/x y"), ("list-type", "2")]),
            "http://127.0.0.1:1/bucket/p/a%20b%2Bc~/?list-type=2&prefix=p%2Fx%20y"
        );
        assert_eq!(
            c.url("", &[("uploads", "")]),
            "http://127.0.0.1:1/bucket/?uploads="
        );
    }

    #[test]
    fn retries_are_bounded_in_count_and_in_time() {
        use backon::BackoffBuilder;
        let delays: Vec<Duration> = retry_policy(10, Duration::from_secs(3600))
            .build()
            .collect();
        assert_eq!(delays.len(), 10);
        assert!(delays[0] >= Duration::from_millis(100));
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(10)),
            "{delays:?}"
        );
        let total: Duration = retry_policy(100, Duration::from_secs(3)).build().sum();
        assert!(total <= Duration::from_secs(3), "{total:?}");
    }

    #[tokio::test]
    async fn transport_errors_have_no_status() {
        let err = client().delete("x").await.unwrap_err();
        assert_eq!(err.status, None);
    }
}
