use super::*;

#[test]
fn parses_existing_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let src = Source::parse(&url).unwrap();
    assert_eq!(
        src,
        Source::Local {
            root: dir.path().to_path_buf()
        }
    );
    assert_eq!(src.to_string(), url);
}

#[test]
fn parses_nfs_urls() {
    let src = Source::parse("nfs://10.0.0.5/home/ubuntu/nfs/").unwrap();
    assert_eq!(
        src,
        Source::Nfs {
            host: "10.0.0.5".into(),
            port: None,
            path: "/home/ubuntu/nfs".into()
        }
    );
    assert_eq!(src.to_string(), "nfs://10.0.0.5/home/ubuntu/nfs");
    let src = Source::parse("nfs://filer.example:2050/export/a%20b").unwrap();
    assert_eq!(
        src,
        Source::Nfs {
            host: "filer.example".into(),
            port: Some(2050),
            path: "/export/a b".into()
        }
    );
    let src = Source::parse("nfs://[::1]/").unwrap();
    assert_eq!(src.to_string(), "nfs://[::1]/");
}

#[test]
fn rejects_bad_nfs_urls() {
    assert!(matches!(
        Source::parse("nfs:///export"),
        Err(SourceError::NfsHostMissing(_))
    ));
    assert!(matches!(
        Source::parse("nfs://h/export/%2e%2e/etc"),
        Err(SourceError::BadPath(_))
    ));
    assert!(matches!(
        Source::parse("nfs://h/export/../etc"),
        Err(SourceError::BadPath(_))
    ));
    assert!(matches!(
        Source::parse("nfs://h/export/a%2Fb"),
        Err(SourceError::BadPath(_))
    ));
    assert!(matches!(
        Source::parse("nfs://user@h/export"),
        Err(SourceError::Credentials { .. })
    ));
    assert!(matches!(
        Source::parse("nfs://h/export?x=1"),
        Err(SourceError::ExtraParts(_))
    ));
}

#[test]
fn rejects_bad_sources_with_a_reason() {
    assert!(matches!(
        Source::parse("relative/dir"),
        Err(SourceError::NotAUrl(_))
    ));
    assert!(matches!(
        Source::parse("ftp://host/x"),
        Err(SourceError::UnsupportedScheme(_))
    ));
    assert!(matches!(
        Source::parse("file://host/x"),
        Err(SourceError::HostNotAllowed(_))
    ));
    // Parsing is pure; the directory is checked on its own.
    let missing = Source::parse("file:///definitely/not/here").unwrap();
    assert!(matches!(
        missing.check_local_directory(),
        Err(SourceError::NotADirectory { .. })
    ));
}

#[test]
fn parses_s3_bucket_and_prefix() {
    let src = Source::parse("s3://test/some//prefix/").unwrap();
    assert_eq!(
        src,
        Source::S3 {
            bucket: "test".into(),
            prefix: "some/prefix".into(),
            endpoint: None,
            region: None,
        }
    );
    assert_eq!(src.to_string(), "s3://test/some/prefix");
    assert!(src.is_s3());
    let bare = Source::parse("s3://my-bucket.data").unwrap();
    assert_eq!(bare.to_string(), "s3://my-bucket.data");
    let spaced = Source::parse("s3://test/with%20space").unwrap();
    assert_eq!(spaced.to_string(), "s3://test/with space");
}

#[test]
fn rejects_bad_s3_sources() {
    for bad in [
        "s3://",
        "s3://ab",
        "s3://UPPER/x",
        "s3://test/a/../b",
        "s3://test:9000/x",
    ] {
        assert!(
            matches!(Source::parse(bad), Err(SourceError::BadS3 { .. })),
            "{bad}: {:?}",
            Source::parse(bad)
        );
    }
    assert!(matches!(
        Source::parse("s3://test/x?endpoint=y"),
        Err(SourceError::ExtraParts(_))
    ));
    for escaped in ["s3://test/a%2Fb", "s3://test/a%00b", "file:///srv/a%2fb"] {
        assert!(Source::parse(escaped).is_err(), "{escaped}");
    }
}

#[test]
fn userinfo_is_redacted() {
    for (url, shown) in [
        ("s3://key:secret@bucket/prefix", "s3://***@bucket/prefix"),
        ("nfs://u:pw@server/export", "nfs://***@server/export"),
        ("file://user:pw@/tmp", "file://***@/tmp"),
        ("s3://AKID:wJalr/K7MDENG@bucket/x", "s3://***@bucket/x"),
        ("s3://k:p@ss@bucket/a@b", "s3://***@b"),
        ("nfs://user@server/export", "nfs://***@server/export"),
        ("key:secret@bucket", "***@bucket"),
        // no userinfo: shown as given
        ("nfs://server/export/a@b", "nfs://server/export/a@b"),
        ("nfs://server:2049/a@b", "nfs://server:2049/a@b"),
        ("nfs://[::1]:2049/a@b", "nfs://[::1]:2049/a@b"),
        ("file:///data/a@b", "file:///data/a@b"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
    ] {
        assert_eq!(redacted_url(url), shown, "{url}");
    }
}

#[test]
fn credentials_in_the_url_are_refused_with_a_hint() {
    let cases = [
        ("s3://AKID:SeCrEt@bucket/prefix", "AWS_SECRET_ACCESS_KEY"),
        ("s3://AKID:Se/CrEt@bucket/prefix", "AWS_SECRET_ACCESS_KEY"),
        ("nfs://u:SeCrEt@server/export", "--uid"),
        ("nfs://u@server/export", "--uid"),
        ("file://u:SeCrEt@/tmp", "local directory"),
    ];
    for (url, hint) in cases {
        let err = Source::parse(url).unwrap_err();
        assert!(
            matches!(err, SourceError::Credentials { .. }),
            "{url}: {err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("credentials in the URL are not accepted"),
            "{text}"
        );
        assert!(text.contains(hint), "{text}");
        assert!(!text.contains("SeCrEt") && !text.contains("CrEt"), "{text}");
    }
    // '@' in a path is not userinfo
    assert!(!has_userinfo("nfs://server:2049/export/a@b"));
    assert!(!has_userinfo("file:///data/a@b"));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    /// No error for a URL with userinfo shows the password, whatever the
    /// scheme, user, password (any character RFC 3986 allows in userinfo,
    /// or a raw AWS-style secret key with '/' and '+') and rest of the URL.
    #[test]
    fn no_error_shows_the_password(
        scheme in "(s3|nfs|file|FILE|http|ftp|x)",
        user in "[a-zA-Z0-9._~-]{0,12}",
        password in proptest::prop_oneof![
            "[A-Za-z0-9._~!$&'()*+,;=:%-]{6,40}",
            "[A-Za-z][A-Za-z0-9+/]{5,39}",
        ],
        host in "(|[a-z][a-z0-9.-]{0,15}|127\\.0\\.0\\.1|\\[::1\\])(|:[0-9]{1,5})",
        path in "(/[a-zA-Z0-9@.%_-]{0,8}){0,3}",
    ) {
        // Only a password with enough letters or digits can be searched for.
        proptest::prop_assume!(
            password.chars().filter(|c| c.is_ascii_alphanumeric()).count() >= 6
        );
        let url = format!("{scheme}://{user}:{password}@{host}{path}");
        let shows = |text: &str| text.contains(&password);
        match Source::parse(&url) {
            Ok(src) => proptest::prop_assert!(false, "{} accepted as {}", url, src),
            Err(e) => proptest::prop_assert!(!shows(&e.to_string()), "{} -> {}", url, e),
        }
        let cli = crate::cli::parse_source(&url).err().unwrap_or_default();
        proptest::prop_assert!(!shows(&cli), "{} -> {}", url, cli);
        proptest::prop_assert!(!shows(&redacted_url(&url)), "{}", url);
    }
}

/// One component of a path: any character a file or key name may have
/// (spaces, '%', '#', '?', '@', non-ASCII), but not '/' or NUL.
fn component() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::strategy::Strategy;
    "[^/\\\\\u{0}]{1,12}".prop_filter("not . or ..", |s| s != "." && s != "..")
}

pub(crate) fn any_source() -> impl proptest::strategy::Strategy<Value = Source> {
    use proptest::prelude::*;
    let path = || proptest::collection::vec(component(), 0..4);
    prop_oneof![
        path().prop_map(|p| Source::Local {
            root: PathBuf::from(format!("/{}", p.join("/"))),
        }),
        (
            "[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,5}){0,2}|10\\.[0-9]\\.[0-9]\\.[0-9]|::1|fd00::[1-9a-f]",
            proptest::option::of(1u16..),
            path()
        )
            .prop_map(|(host, port, p)| Source::Nfs {
                host,
                port,
                path: format!("/{}", p.join("/")),
            }),
        ("[a-z0-9][a-z0-9.-]{1,20}[a-z0-9]", path()).prop_map(|(bucket, p)| Source::S3 {
            bucket,
            prefix: p.join("/"),
            endpoint: None,
            region: None,
        }),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    /// Every source shows as a URL that parses back to it: what the CSI
    /// plugin hands the mounter as text is what it meant.
    #[test]
    fn every_source_round_trips_through_its_url(source in any_source()) {
        let text = source.to_string();
        proptest::prop_assert_eq!(Source::parse(&text), Ok(source), "{}", text);
    }
}

#[test]
fn a_sub_directory_joins_the_path_or_prefix() {
    let sub = super::super::BackendPath::parse("ns/pvc-1").unwrap();
    let root = super::super::BackendPath::root();
    for (base, joined) in [
        ("s3://b-1/vols", "s3://b-1/vols/ns/pvc-1"),
        ("s3://b-1", "s3://b-1/ns/pvc-1"),
        ("nfs://h/export/", "nfs://h/export/ns/pvc-1"),
        ("nfs://h/", "nfs://h/ns/pvc-1"),
        ("file:///srv", "file:///srv/ns/pvc-1"),
    ] {
        let base = Source::parse(base).unwrap();
        assert_eq!(base.join(&sub).to_string(), joined);
        assert_eq!(base.join(&root), base);
    }
}
