//! S3 over https: the mount trusts the server's CA through `SSL_CERT_FILE`
//! (as the controller and the mounter do for a private CA), and a server
//! that checks every signature accepts its uploads, a single PUT and
//! multipart parts alike, whose bodies stay out of the signature there
//! (`UNSIGNED-PAYLOAD`, see `backend::s3::client`); without the CA, the
//! mount fails at once saying so.

use crate::support_s3;

use std::fs;
use std::io::Write;

use super::backend::pseudo_random;
use super::mounts::get;
use support_s3::mount::{command_at, is_mounted, Mounted};
use support_s3::S3Server;

const MIB: usize = 1 << 20;

fn mount_over_https(server: &S3Server, cache: &std::path::Path) -> Mounted {
    let ca = server.ca_file();
    Mounted::start_at(&server.https_endpoint(), "tls", cache, |cmd| {
        cmd.args(["--part-size", "5MiB"]).env("SSL_CERT_FILE", &ca);
    })
}

#[test]
fn a_mount_over_https_uploads_and_reads_back() {
    let server = S3Server::seaweed_https();
    let (small, big) = (pseudo_random(4096, 1), pseudo_random(12 * MIB, 2));
    {
        let cache = tempfile::tempdir().unwrap();
        let m = mount_over_https(&server, cache.path());
        fs::write(m.path("small"), &small).unwrap();
        // Written in 1 MiB pieces: parts 1 and 2 are uploaded while the
        // writer goes on, the rest at close.
        let mut f = fs::File::create(m.path("big")).unwrap();
        for piece in big.chunks(MIB) {
            f.write_all(piece).unwrap();
        }
        drop(f);
    }
    // What the server holds, through the plain http client.
    let store = server.store();
    assert!(get(&store, "tls/small").as_deref() == Some(&small[..]));
    assert!(get(&store, "tls/big").as_deref() == Some(&big[..]));
    // Read back over https by a mount with nothing cached.
    let cache = tempfile::tempdir().unwrap();
    let m = mount_over_https(&server, cache.path());
    assert!(fs::read(m.path("small")).unwrap() == small);
    assert!(fs::read(m.path("big")).unwrap() == big);
}

#[test]
fn an_untrusted_certificate_fails_the_mount_saying_how_to_trust_it() {
    let server = S3Server::seaweed_https();
    let (cache, mnt) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = format!("s3://{}/tls", support_s3::BUCKET);
    let out = command_at(&server.https_endpoint(), &source, mnt.path(), cache.path())
        .env_remove("SSL_CERT_FILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!is_mounted(mnt.path()));
    assert!(stderr.contains("is not trusted"), "{stderr}");
    assert!(stderr.contains("SSL_CERT_FILE="), "{stderr}");
    // No request can succeed until the certificate is trusted: none is
    // retried (each retry logs "retrying in").
    assert!(!stderr.contains("retrying"), "{stderr}");
}
