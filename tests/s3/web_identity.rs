//! S3 credentials from a web identity (IRSA on EKS): no keys anywhere, only
//! `AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`. The mount exchanges
//! the token at STS (`AWS_ENDPOINT_URL_STS`, HTTPS) for keys and signs with
//! them; SeaweedFS (SigV4 enforced) accepts only those keys, so a request
//! that went out without them fails.

use std::path::Path;
use std::process::Command;

use crate::support_s3::mount::{mount_command, Mounted};
use crate::support_s3::sts::{Sts, ROLE_ARN};
use crate::support_s3::{S3Server, KEY_ID, SECRET};

const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.a-projected-service-account-token";

/// The mount's environment as a pod with IRSA has it: a token file and a
/// role, no keys (and no credentials file to fall back on).
fn as_irsa_pod(cmd: &mut Command, sts: &Sts, dir: &Path, token: &str) {
    let token_file = dir.join("token");
    std::fs::write(&token_file, token).unwrap();
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.join("no-credentials-file"),
        )
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file)
        .env("AWS_ROLE_ARN", ROLE_ARN)
        .env("AWS_ENDPOINT_URL_STS", sts.url())
        .env("SSL_CERT_FILE", sts.ca_file());
}

fn ok_calls(sts: &Sts) -> usize {
    sts.calls().iter().filter(|c| c.starts_with("ok ")).count()
}

#[test]
fn a_mount_signs_with_keys_from_a_web_identity_token() {
    let server = S3Server::seaweed();
    let sts = Sts::start(TOKEN, KEY_ID, SECRET, 3600);
    let cache = tempfile::tempdir().unwrap();
    let m = Mounted::start_edited(&server, "irsa", cache.path(), |cmd| {
        as_irsa_pod(cmd, &sts, cache.path(), TOKEN)
    });
    std::fs::write(m.path("written.txt"), b"through keys from STS").unwrap();
    assert_eq!(
        std::fs::read(m.path("written.txt")).unwrap(),
        b"through keys from STS"
    );
    assert_eq!(
        crate::mounts::get(&server.store(), "irsa/written.txt").as_deref(),
        Some(&b"through keys from STS"[..])
    );
    assert!(ok_calls(&sts) >= 1, "STS calls: {:?}", sts.calls());
    let log = m.log_text();
    assert!(log.contains("web identity (role"), "{log}");
    assert!(!log.contains(SECRET), "the secret reached the log:\n{log}");
}

/// Keys about to expire (within object_store's five-minute margin) are
/// fetched again before a request, not used until they fail. (object_store
/// uses what it fetched less than 100 ms ago: the writes are spaced.)
#[test]
fn keys_near_their_expiry_are_fetched_again() {
    let server = S3Server::seaweed();
    let sts = Sts::start(TOKEN, KEY_ID, SECRET, 120);
    let cache = tempfile::tempdir().unwrap();
    let m = Mounted::start_edited(&server, "irsa-refresh", cache.path(), |cmd| {
        as_irsa_pod(cmd, &sts, cache.path(), TOKEN)
    });
    let before = ok_calls(&sts);
    for i in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        std::fs::write(m.path(&format!("f{i}")), b"x").unwrap();
    }
    assert!(
        ok_calls(&sts) > before,
        "no new STS call for requests made with keys 2 minutes from expiry: {:?}",
        sts.calls()
    );
}

/// A token STS refuses fails the mount at once, saying where the
/// credentials were to come from.
#[test]
fn a_refused_token_fails_the_mount_naming_the_web_identity() {
    let server = S3Server::seaweed();
    let sts = Sts::start(TOKEN, KEY_ID, SECRET, 3600);
    let dir = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let mut cmd = mount_command(
        &server,
        "irsa-refused",
        mnt.path(),
        &dir.path().join("cache"),
    );
    as_irsa_pod(&mut cmd, &sts, dir.path(), "a-token-of-another-cluster");
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run cachalot mount");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "mounted with a refused token:\n{stderr}"
    );
    assert!(stderr.contains("web identity"), "{stderr}");
    assert!(
        sts.calls().iter().any(|c| c.starts_with("refused ")),
        "{:?}",
        sts.calls()
    );
}
