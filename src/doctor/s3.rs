//! s3:// sources: the endpoint resolves and accepts connections, where the
//! credentials come from, an https server's certificate, the server's clock
//! against ours (SigV4 refuses requests more than 15 minutes off), the
//! signature (credentials, region), the bucket, then the backend's own
//! write probe (put, copy, delete).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use super::{net, Doctor, Found, Problem, Request};
use crate::backend::s3::{
    is_certificate_refused, is_credential_failure, Credentials, Probe, S3Backend, S3Config,
};
use crate::backend::Source;

/// Clock difference reported as a failure: well inside SigV4's 15 minutes.
pub const MAX_SKEW: Duration = Duration::from_secs(5 * 60);

const FIX_CREDENTIALS: &str = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and \
    AWS_SESSION_TOKEN for temporary keys), or pass --credentials-file/--profile, or run where a \
    cloud identity exists (IRSA, EKS pod identity, an instance profile); with the CSI driver, put \
    them in the StorageClass's node-stage secret";

pub async fn checks(doc: &mut Doctor<'_>, req: &Request) {
    let rest = [
        "tcp",
        "credentials",
        "tls",
        "clock",
        "access",
        "bucket",
        "identity",
    ];
    let Source::S3 { bucket, prefix, .. } = &req.source else {
        return;
    };
    let staging = tempfile::Builder::new()
        .prefix("cachalot-doctor-")
        .tempdir();
    let config = match (Credentials::load(&req.s3.credentials), &staging) {
        (Ok(credentials), Ok(dir)) => {
            let opts = req.open_options(dir.path().to_path_buf());
            crate::backend::s3_config(&req.source, &opts, check_options(req), credentials)
                .map_err(|e| Problem::new(e.to_string(), "give an s3:// source"))
        }
        (Err(e), _) => Err(Problem::new(e.to_string(), FIX_CREDENTIALS)),
        (_, Err(e)) => Err(Problem::new(
            format!("creating a temporary directory: {e}"),
            "make $TMPDIR writable",
        )),
    };
    // Where requests go does not depend on the credentials.
    let address = endpoint(req);
    let Some((host, port, https)) = doc.step("endpoint", async { address }).await else {
        doc.skip("dns", "endpoint failed");
        return skip_all(doc, &rest, "endpoint failed");
    };
    let Some(ip) = doc.step("dns", net::dns(&host)).await else {
        return skip_all(doc, &rest, "dns failed");
    };
    doc.step("tcp", net::tcp(SocketAddr::new(ip, port), "S3"))
        .await;
    let backend = doc.step("credentials", credentials(config)).await;
    let probe = match &backend {
        Some(b) => Some(b.probe().await),
        None => None,
    };
    if https {
        doc.step("tls", tls(probe.as_ref())).await;
    }
    doc.step("clock", clock(probe.as_ref())).await;
    doc.step("access", access(probe.as_ref(), req)).await;
    doc.step("bucket", bucket_check(probe.as_ref(), bucket))
        .await;
    doc.step("identity", identity(backend.as_ref(), bucket, prefix))
        .await;
}

fn skip_all(doc: &mut Doctor<'_>, names: &[&'static str], why: &str) {
    for name in names {
        doc.skip(name, why);
    }
}

/// Short retry budget: a wrong endpoint fails in seconds with its cause.
fn check_options(req: &Request) -> crate::backend::s3::S3Options {
    let mut o = req.s3.clone();
    o.max_retries = 1;
    o.retry_timeout = o.retry_timeout.min(Duration::from_secs(10));
    o.request_timeout = o.request_timeout.min(Duration::from_secs(10));
    o
}

/// The client configuration of the request's source, without credentials:
/// for what does not depend on them (addresses, region).
fn keyless_config(req: &Request) -> Result<S3Config, Problem> {
    let opts = req.open_options(Default::default());
    let none = Credentials::new("", "", None);
    crate::backend::s3_config(&req.source, &opts, req.s3.clone(), none)
        .map_err(|e| Problem::new(e.to_string(), "give an s3:// source"))
}

/// Host and port requests go to (the bucket's host for virtual-hosted
/// style), and whether over https.
fn endpoint(req: &Request) -> Result<((String, u16, bool), Found), Problem> {
    let config = keyless_config(req)?;
    let fix = "pass --endpoint http(s)://host[:port] of the S3 server";
    let addressing = config
        .addressing()
        .map_err(|e| Problem::new(e.to_string(), fix))?;
    let url = url::Url::parse(&addressing.bucket_url)
        .map_err(|e| Problem::new(format!("{}: {e}", addressing.bucket_url), fix))?;
    let host = url
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .ok_or_else(|| Problem::new(format!("{} has no host", addressing.bucket_url), fix))?;
    let port = url.port_or_known_default().unwrap_or(443);
    let style = if addressing.virtual_hosted {
        "virtual-hosted style"
    } else {
        "path style"
    };
    Ok((
        (host, port, url.scheme() == "https"),
        format!(
            "{} (region {}, {style})",
            addressing.bucket_url, addressing.region
        )
        .into(),
    ))
}

/// Where the keys come from; the secret is never shown.
async fn credentials(config: Result<S3Config, Problem>) -> Result<(S3Backend, Found), Problem> {
    let config = config?;
    let origin = config.credentials.origin.clone();
    let key = config.credentials.access_key_id.clone();
    let token = if config.credentials.session_token.is_some() {
        " with a session token"
    } else {
        ""
    };
    let backend = S3Backend::new(config)
        .map_err(|e| Problem::new(e, "check --endpoint, --region and --part-size"))?;
    if let Err(why) = backend.check_credentials().await {
        let cause = why.split("; fix:").next().unwrap_or(&why).to_string();
        return Err(Problem::new(cause, FIX_CREDENTIALS));
    }
    let what = match key.is_empty() {
        true => "temporary keys".to_string(),
        false => format!("access key id '{key}'{token}"),
    };
    Ok((
        backend,
        format!("{what} from {origin} (the secret is not shown)").into(),
    ))
}

/// An https server answered: its certificate is one this node trusts.
async fn tls(probe: Option<&Probe>) -> Result<((), Found), Problem> {
    let probe = probe.ok_or_else(|| Problem::explained("credentials failed"))?;
    match &probe.result {
        // The cause names the fix (SSL_CERT_FILE, the Helm value).
        Err((f, cause)) if f.transport && is_certificate_refused(&f.detail) => {
            Err(Problem::explained(cause.clone()))
        }
        Err((f, cause)) if f.transport => Err(Problem::new(
            format!("no answer over TLS: {cause}"),
            "check --endpoint (scheme http/https and port)",
        )),
        _ => Ok(((), "the server's certificate is trusted".to_string().into())),
    }
}

/// The server's `Date` against this node's clock.
async fn clock(probe: Option<&Probe>) -> Result<((), Found), Problem> {
    let probe = probe.ok_or_else(|| Problem::explained("credentials failed"))?;
    if let Err((f, cause)) = &probe.result {
        if f.transport {
            return Err(Problem::new(
                format!("no answer from the endpoint: {cause}"),
                "check --endpoint (scheme http/https and port)",
            ));
        }
    }
    let Some(date) = &probe.server_date else {
        return Ok((
            (),
            Found {
                message: "the server sent no Date header; clocks not compared".into(),
                info: true,
            },
        ));
    };
    let server = chrono::DateTime::parse_from_rfc2822(date)
        .map_err(|e| Problem::explained(format!("the server's Date header '{date}': {e}")))?;
    let server = SystemTime::from(server);
    let now = SystemTime::now();
    let (skew, ahead) = match server.duration_since(now) {
        Ok(d) => (d, "ahead of"),
        Err(e) => (e.duration(), "behind"),
    };
    let secs = skew.as_secs();
    if skew > MAX_SKEW {
        return Err(Problem::new(
            format!(
                "the server's clock is {secs} s {ahead} this node's (Date: {date}); S3 \
                 signatures fail beyond 15 minutes"
            ),
            "synchronise the node's clock (chrony or systemd-timesyncd) or the server's",
        ));
    }
    Ok((
        (),
        format!("server and node clocks differ by {secs} s").into(),
    ))
}

/// The signature was accepted: right key id, secret and region.
async fn access(probe: Option<&Probe>, req: &Request) -> Result<((), Found), Problem> {
    let probe = probe.ok_or_else(|| Problem::explained("credentials failed"))?;
    if let Err((f, cause)) = &probe.result {
        if is_credential_failure(f) {
            return Err(Problem::new(
                cause.clone(),
                "use the key id and secret that belong together (AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY, the credentials file's profile, or the CSI node-stage \
                 secret); a session token must not have expired",
            ));
        }
        if f.code.as_deref() == Some("AuthorizationHeaderMalformed") {
            return Err(Problem::new(
                cause.clone(),
                "pass --region with the bucket's region",
            ));
        }
    }
    let region = keyless_config(req)?.region();
    Ok((
        (),
        format!("the server accepts the signature (region {region})").into(),
    ))
}

/// The bucket exists and the prefix may be listed.
async fn bucket_check(probe: Option<&Probe>, bucket: &str) -> Result<((), Found), Problem> {
    let probe = probe.ok_or_else(|| Problem::explained("credentials failed"))?;
    match &probe.result {
        Ok(()) => Ok((
            (),
            format!("bucket '{bucket}' exists and can be listed").into(),
        )),
        Err((f, cause)) => {
            let fix = match (f.code.as_deref(), f.status) {
                (Some("NoSuchBucket"), _) => {
                    format!("create bucket '{bucket}' or fix the source URL/--endpoint")
                }
                (_, Some(403)) => {
                    format!("allow s3:ListBucket on arn:aws:s3:::{bucket} for this key")
                }
                _ => "see the cause; retry when the server is healthy".to_string(),
            };
            Err(Problem::new(cause.clone(), fix))
        }
    }
}

/// The backend's write probe: list, put, copy, delete under the prefix.
async fn identity(
    backend: Option<&S3Backend>,
    bucket: &str,
    prefix: &str,
) -> Result<((), Found), Problem> {
    let backend = backend.ok_or_else(|| Problem::explained("credentials failed"))?;
    backend
        .preflight()
        .await
        .map_err(|e| Problem::explained(e.to_string()))?;
    let under = if prefix.is_empty() { "/" } else { prefix };
    Ok((
        (),
        format!(
            "access key id '{}' can list, put, copy and delete in bucket '{bucket}' under {under}",
            backend.access_key_id()
        )
        .into(),
    ))
}
