//! `cachalot doctor` run as a binary against real servers: a healthy
//! file:// source, NFS export and S3 bucket (exit 0, every check ✓), and
//! the failures it exists for: a root_squash export as root, a share that
//! is not exported, a wrong S3 secret, an https endpoint whose CA is not
//! trusted, an endpoint that refuses connections. Needs root (the squash case) and the NFS and S3 test
//! servers (`scripts/install-nfs-deps.sh`, `scripts/install-s3-deps.sh`).

use crate::support_nfs;
use crate::support_s3;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support_nfs::{ganesha, SQUASHED_OWNER};
use support_s3::{cachalot_bin, S3Server, BUCKET, KEY_ID, SECRET};

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    /// `(mark, name)` of every line, in order.
    fn marks(&self) -> Vec<(String, String)> {
        self.stdout
            .lines()
            .map(|l| {
                let mut words = l.split_whitespace();
                let mark = words.next().unwrap_or_default().to_string();
                let name = words.next().unwrap_or_default().to_string();
                (mark, name)
            })
            .collect()
    }

    /// The line of check `name`.
    fn line(&self, name: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no {name} line in:\n{}", self.stdout))
    }

    #[track_caller]
    fn expect(&self, marks: &[(&str, &str)]) {
        let want: Vec<(String, String)> = marks
            .iter()
            .map(|(m, n)| (m.to_string(), n.to_string()))
            .collect();
        // The kernel line is information either way (passthrough needs 6.9).
        let got: Vec<(String, String)> = self
            .marks()
            .into_iter()
            .map(|(m, n)| {
                if n == "kernel" && m == "ℹ" {
                    ("✓".into(), n)
                } else {
                    (m, n)
                }
            })
            .collect();
        assert_eq!(
            got, want,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
    }
}

/// Run `cachalot doctor args...` with a clean credential environment.
fn doctor(args: &[&str], env: &[(&str, &str)]) -> Run {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(cachalot_bin());
    cmd.arg("doctor")
        .args(args)
        .env("HOME", home.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let started = Instant::now();
    let out = cmd.output().expect("running cachalot doctor");
    // Shown for failing tests (and with --nocapture).
    println!(
        "$ cachalot doctor {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    }
}

const HOST_CHECKS: [(&str, &str); 4] = [
    ("✓", "cache"),
    ("✓", "space"),
    ("✓", "fuse"),
    ("✓", "kernel"),
];

fn with_host(source: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    source.iter().chain(HOST_CHECKS.iter()).copied().collect()
}

#[test]
fn a_healthy_local_directory_passes_every_check() {
    let dir = tempfile::tempdir().unwrap();
    let src = format!("file://{}", dir.path().display());
    let cache = dir.path().join("cache").display().to_string();
    let run = doctor(&[&src, "--cache-dir", &cache, "--cache-size", "1MiB"], &[]);
    run.expect(&with_host(&[("✓", "source"), ("✓", "identity")]));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // Too big a quota for the disk: ✗ space with the fix, exit non-zero.
    let run = doctor(
        &[&src, "--cache-dir", &cache, "--cache-size", "1000000TiB"],
        &[],
    );
    run.expect(&[
        ("✓", "source"),
        ("✓", "identity"),
        ("✓", "cache"),
        ("✗", "space"),
        ("✓", "fuse"),
        ("✓", "kernel"),
    ]);
    assert!(
        run.line("space").contains("fix: lower --cache-size"),
        "{}",
        run.stdout
    );
    assert_eq!(run.code, Some(1));
}

#[test]
fn a_healthy_nfs_export_passes_every_check() {
    let server = ganesha();
    let (_, url) = server.area("doctor-healthy");
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().display().to_string();
    let run = doctor(&[&url, "--cache-dir", &cache, "--cache-size", "1MiB"], &[]);
    run.expect(&with_host(&[
        ("✓", "dns"),
        ("✓", "tcp"),
        ("✓", "rpcbind"),
        ("✓", "export"),
        ("✓", "identity"),
    ]));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.line("identity").contains("uid 0 gid 0"),
        "{}",
        run.stdout
    );
}

#[test]
fn root_on_a_root_squash_export_gets_the_fix() {
    let server = ganesha();
    let _ = server.squashed_dir();
    let run = doctor(&["nfs://127.0.0.1/squashed"], &[]);
    run.expect(&[
        ("✓", "dns"),
        ("✓", "tcp"),
        ("✓", "rpcbind"),
        ("✓", "export"),
        ("✗", "identity"),
        ("–", "cache"),
        ("–", "space"),
        ("✓", "fuse"),
        ("✓", "kernel"),
    ]);
    let line = run.line("identity");
    let owner = format!("--uid {SQUASHED_OWNER} --gid {SQUASHED_OWNER}");
    for part in ["uid 0", "root_squash", "no_root_squash", owner.as_str()] {
        assert!(line.contains(part), "{part:?} missing from: {line}");
    }
    assert_ne!(run.code, Some(0));
    // The fix works: as the directory's owner every check passes.
    let uid = SQUASHED_OWNER.to_string();
    let run = doctor(
        &["nfs://127.0.0.1/squashed", "--uid", &uid, "--gid", &uid],
        &[],
    );
    assert!(run.line("identity").starts_with('✓'), "{}", run.stdout);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
}

#[test]
fn a_share_that_is_not_exported_names_the_exports() {
    let _server = ganesha();
    let run = doctor(&["nfs://127.0.0.1/nope"], &[]);
    run.expect(&[
        ("✓", "dns"),
        ("✓", "tcp"),
        ("✓", "rpcbind"),
        ("✗", "export"),
        ("–", "identity"),
        ("–", "cache"),
        ("–", "space"),
        ("✓", "fuse"),
        ("✓", "kernel"),
    ]);
    let line = run.line("export");
    for part in [
        "\"/nope\" is not exported by 127.0.0.1",
        "exports: /export, /squashed",
        "fix: set share",
    ] {
        assert!(line.contains(part), "{part:?} missing from: {line}");
    }
    assert!(run.line("identity").contains("skipped: export failed"));
    assert_ne!(run.code, Some(0));
}

fn s3_args(server: &S3Server, prefix: &str) -> Vec<String> {
    vec![
        format!("s3://{BUCKET}/{prefix}"),
        "--endpoint".into(),
        server.endpoint(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn s3_healthy_then_a_wrong_secret() {
    let server = S3Server::seaweed();
    let args = s3_args(&server, "doctor");
    let good = [
        ("AWS_ACCESS_KEY_ID", KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
    ];
    let run = doctor(&strs(&args), &good);
    let s3_checks = [
        ("✓", "endpoint"),
        ("✓", "dns"),
        ("✓", "tcp"),
        ("✓", "credentials"),
        ("✓", "clock"),
        ("✓", "access"),
        ("✓", "bucket"),
        ("✓", "identity"),
        ("–", "cache"),
        ("–", "space"),
        ("✓", "fuse"),
        ("✓", "kernel"),
    ];
    run.expect(&s3_checks);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.line("credentials")
            .contains(&format!("'{KEY_ID}' from environment")),
        "{}",
        run.stdout
    );

    let wrong = "not-the-secret-at-all";
    let bad = [
        ("AWS_ACCESS_KEY_ID", KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", wrong),
    ];
    let run = doctor(&strs(&args), &bad);
    run.expect(&[
        ("✓", "endpoint"),
        ("✓", "dns"),
        ("✓", "tcp"),
        ("✓", "credentials"),
        ("✓", "clock"),
        ("✗", "access"),
        ("–", "bucket"),
        ("–", "identity"),
        ("–", "cache"),
        ("–", "space"),
        ("✓", "fuse"),
        ("✓", "kernel"),
    ]);
    let line = run.line("access");
    for part in [
        "credentials are wrong",
        "fix: use the key id and secret that belong together",
    ] {
        assert!(line.contains(part), "{part:?} missing from: {line}");
    }
    assert!(!run.stdout.contains(wrong) && !run.stderr.contains(wrong));
    assert_ne!(run.code, Some(0));

    // No credentials at all: ✗ credentials, with where to put them.
    let run = doctor(&strs(&args), &[]);
    assert!(run.line("credentials").starts_with('✗'), "{}", run.stdout);
    assert!(run
        .line("credentials")
        .contains("fix: set AWS_ACCESS_KEY_ID"));
    assert_ne!(run.code, Some(0));
}

#[test]
fn an_https_endpoint_gets_its_certificate_checked() {
    let server = S3Server::seaweed_https();
    let args = [
        format!("s3://{BUCKET}/doctor"),
        "--endpoint".into(),
        server.https_endpoint(),
    ];
    let ca = server.ca_file().display().to_string();
    let trusted = [
        ("AWS_ACCESS_KEY_ID", KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("SSL_CERT_FILE", ca.as_str()),
    ];
    let host = [
        ("–", "cache"),
        ("–", "space"),
        ("✓", "fuse"),
        ("✓", "kernel"),
    ];
    let source = |tls: &'static str, rest: &'static str| {
        let mut marks = vec![
            ("✓", "endpoint"),
            ("✓", "dns"),
            ("✓", "tcp"),
            ("✓", "credentials"),
            (tls, "tls"),
        ];
        for name in ["clock", "access", "bucket", "identity"] {
            marks.push((rest, name));
        }
        marks.extend(host);
        marks
    };
    let run = doctor(&strs(&args), &trusted);
    run.expect(&source("✓", "✓"));
    assert_eq!(run.code, Some(0), "{}", run.stderr);

    // The CA not given: ✗ tls, naming the certificate and the fix; the
    // checks that need an answer are skipped.
    let run = doctor(&strs(&args), &trusted[..2]);
    run.expect(&source("✗", "–"));
    let line = run.line("tls");
    for part in ["is not trusted", "UnknownIssuer", "SSL_CERT_FILE="] {
        assert!(line.contains(part), "{part:?} missing from: {line}");
    }
    assert!(run.line("clock").contains("skipped: tls failed"));
    assert_ne!(run.code, Some(0));
}

#[test]
fn an_unreachable_endpoint_fails_fast_at_tcp() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = [
        ("AWS_ACCESS_KEY_ID", KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
    ];
    let run = doctor(&["s3://test/p", "--endpoint", &endpoint], &env);
    run.expect(&[
        ("✓", "endpoint"),
        ("✓", "dns"),
        ("✗", "tcp"),
        ("–", "credentials"),
        ("–", "clock"),
        ("–", "access"),
        ("–", "bucket"),
        ("–", "identity"),
        ("–", "cache"),
        ("–", "space"),
        ("✓", "fuse"),
        ("✓", "kernel"),
    ]);
    assert!(run.line("tcp").contains("does not accept connections"));
    assert!(run.line("credentials").contains("skipped: tcp failed"));
    assert_ne!(run.code, Some(0));
    assert!(run.took < Duration::from_secs(5), "took {:?}", run.took);
}

#[test]
fn s3_options_with_another_source_are_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let src = format!("file://{}", dir.path().display());
    let run = doctor(&[&src, "--endpoint", "http://x"], &[]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("only apply to s3:// sources"),
        "{}",
        run.stderr
    );
}
