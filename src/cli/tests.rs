//! Parsing of the command line: sizes, sources, option rules.
use super::s3_args::{parse_mode, parse_role_arn};
use super::*;

#[test]
fn sizes() {
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("512MiB"), Ok(512 << 20));
    assert_eq!(parse_size("10GiB"), Ok(10 << 30));
    assert_eq!(parse_size("1mb"), Ok(1_000_000));
    assert!(parse_size("12XB").unwrap_err().contains("12XB"));
    assert!(parse_size("").is_err());
    assert!(parse_size("-1GiB").is_err());
    assert!(parse_size("99999999999TiB")
        .unwrap_err()
        .contains("too large"));
}

#[test]
fn page_sizes_must_be_sane() {
    assert_eq!(parse_page_size("1MiB"), Ok(1 << 20));
    assert!(parse_page_size("1000").is_err());
    assert!(parse_page_size("1KiB").is_err());
    assert!(parse_page_size("128MiB").is_err());
}

#[test]
fn durations() {
    assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    assert!(parse_duration("soon").unwrap_err().contains("soon"));
}

#[test]
fn uid_requires_gid() {
    let dir = tempfile::tempdir().unwrap();
    let src = format!("file://{}", dir.path().display());
    let mnt = dir.path().display().to_string();
    let args = [
        "cachalot",
        "mount",
        &src,
        &mnt,
        "--cache-dir",
        "/tmp/c",
        "--uid",
        "5",
    ];
    let err = Cli::try_parse_from(args).unwrap_err();
    assert_eq!(err.exit_code(), 2);
}

#[test]
fn modes() {
    assert_eq!(parse_mode("0644"), Ok(0o644));
    assert_eq!(parse_mode("755"), Ok(0o755));
    assert_eq!(parse_mode("0o600"), Ok(0o600));
    assert!(parse_mode("0999").is_err());
    assert!(parse_mode("77777").is_err());
}

#[test]
fn s3_options_only_with_s3_sources() {
    let dir = tempfile::tempdir().unwrap();
    let src = format!("file://{}", dir.path().display());
    let mnt = dir.path().display().to_string();
    let parse = |extra: &[&str], source: &str| {
        let mut args = vec!["cachalot", "mount", source, &mnt, "--cache-dir", "/tmp/c"];
        args.extend_from_slice(extra);
        match Cli::try_parse_from(args).unwrap().command {
            Command::Mount(m) => m,
            _ => unreachable!(),
        }
    };
    let check = |m: &MountArgs| m.validate(&m.source()?);
    let local = parse(&["--endpoint", "http://x", "--path-style"], &src);
    let err = check(&local).unwrap_err();
    assert!(err.contains("--endpoint, --path-style"), "{err}");
    assert!(check(&parse(&["--skip-preflight"], &src)).is_ok());
    let s3 = parse(
        &[
            "--endpoint",
            "http://127.0.0.1:1",
            "--file-mode",
            "0600",
            "--profile",
            "p",
        ],
        "s3://bucket/prefix",
    );
    assert!(check(&s3).is_ok());
    let o = s3.s3.to_options();
    assert_eq!(o.file_mode, 0o600);
    assert_eq!(o.dir_mode, 0o755);
    assert_eq!(o.credentials.profile.as_deref(), Some("p"));
    let small = parse(&["--part-size", "1MiB"], "s3://bucket/prefix");
    assert!(check(&small).is_err());
}

#[test]
fn role_arns_are_checked_for_their_form() {
    let ok = "arn:aws:iam::123456789012:role/cachalot-reader";
    assert_eq!(parse_role_arn(ok).as_deref(), Ok(ok));
    assert!(parse_role_arn("arn:aws-cn:iam::123456789012:role/path/r").is_ok());
    for bad in [
        "",
        "cachalot-reader",
        "arn:aws:s3:::bucket",
        "arn:aws:iam::12345:role/r",
        "arn:aws:iam::123456789012:user/u",
        "arn:aws:iam::123456789012:role/",
    ] {
        let err = parse_role_arn(bad).unwrap_err();
        assert!(
            err.contains("arn:aws:iam::123456789012:role/NAME"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn a_web_identity_needs_its_role_and_only_applies_to_s3() {
    let base = [
        "cachalot",
        "mount",
        "s3://b/p",
        "/mnt",
        "--cache-dir",
        "/tmp/c",
    ];
    let parse = |extra: &[&str]| {
        Cli::try_parse_from(base.iter().chain(extra)).map(|c| match c.command {
            Command::Mount(m) => m,
            _ => unreachable!(),
        })
    };
    assert!(parse(&[]).is_ok());
    let missing = |extra: &[&str]| parse(extra).err().map(|e| e.kind());
    let needs = Some(clap::error::ErrorKind::MissingRequiredArgument);
    assert_eq!(missing(&["--web-identity-token-file", "/t"]), needs);
    assert_eq!(
        missing(&["--role-arn", "arn:aws:iam::123456789012:role/r"]),
        needs
    );
    let m = parse(&[
        "--web-identity-token-file",
        "/t",
        "--role-arn",
        "arn:aws:iam::123456789012:role/r",
        "--role-session-name",
        "ns.sa",
    ])
    .unwrap();
    let w = m.s3.to_options().credentials.web_identity.unwrap();
    assert_eq!(w.token_file, PathBuf::from("/t"));
    assert_eq!(w.role_arn, "arn:aws:iam::123456789012:role/r");
    assert_eq!(w.session_name.as_deref(), Some("ns.sa"));
    let local = Source::parse("file:///tmp").unwrap();
    let err = m.validate(&local).unwrap_err();
    assert!(err.contains("--web-identity-token-file"), "{err}");
}
