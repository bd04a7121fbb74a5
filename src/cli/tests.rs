//! Parsing of the command line: sizes, sources, option rules.
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
