use super::*;

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn parses_a_full_local_storage_class() {
    let p = VolumeParams::parse(&map(&[
        ("source", "file:///srv/data"),
        ("subDir", "${pvc.metadata.namespace}/${pvc.metadata.name}"),
        ("onDelete", "archive"),
        ("mountPermissions", "0770"),
        ("uid", "1000"),
        ("gid", "2000"),
        ("cacheSize", "1GiB"),
        ("pageSize", "256KiB"),
        ("metadataTTL", "500ms"),
        ("readOnly", "false"),
        ("passthroughReadWrite", "true"),
        ("warm", " *.safetensors ,config/** ,"),
        (PVC_NAME_KEY, "data"),
        (PVC_NAMESPACE_KEY, "team-a"),
        (PV_NAME_KEY, "pvc-123"),
    ]))
    .unwrap();
    assert_eq!(
        p.location,
        Source::Local {
            root: "/srv/data".into()
        }
    );
    assert_eq!(p.on_delete, OnDelete::Archive);
    assert_eq!(p.mount_permissions, 0o770);
    assert_eq!(p.owner, Some(Identity::new(1000, 2000)));
    assert_eq!(p.sub_path("pvc-123").unwrap().as_str(), "team-a/data");
    let ctx = p.volume_context();
    assert_eq!(ctx["cacheSize"], (1u64 << 30).to_string());
    assert_eq!(ctx["warm"], "*.safetensors,config/**");
    assert_eq!(ctx["passthroughReadWrite"], "true");
    let node = NodeParams::parse(&ctx).unwrap();
    assert_eq!(node.cache, p.cache);
    assert_eq!(node.owner, p.owner);
}

#[test]
fn default_sub_dir_is_the_volume_name() {
    let p = VolumeParams::parse(&map(&[("source", "file:///srv")])).unwrap();
    assert_eq!(p.sub_path("pvc-1").unwrap().as_str(), "pvc-1");
    assert!(p.sub_path("../x").is_err());
    assert_eq!(p.on_delete, OnDelete::Delete);
    assert_eq!(p.mount_permissions, DEFAULT_MOUNT_PERMISSIONS);
}

#[test]
fn nfs_and_s3_forms_parse_into_typed_locations() {
    let a =
        VolumeParams::parse(&map(&[("server", "10.0.0.5"), ("share", "/exports/k8s/")])).unwrap();
    assert_eq!(
        a.location,
        Source::Nfs {
            host: "10.0.0.5".into(),
            port: None,
            path: "/exports/k8s".into()
        }
    );
    let b = VolumeParams::parse(&map(&[("source", "nfs://nas.local:2049/exports/k8s")])).unwrap();
    assert!(matches!(
        b.location,
        Source::Nfs {
            port: Some(2049),
            ..
        }
    ));
    let c = VolumeParams::parse(&map(&[
        ("source", "s3://my-bucket/team/a/"),
        ("endpoint", "http://127.0.0.1:8333"),
        ("region", "us-east-1"),
    ]))
    .unwrap();
    assert_eq!(
        c.location,
        Source::S3 {
            bucket: "my-bucket".into(),
            prefix: "team/a".into(),
            endpoint: Some("http://127.0.0.1:8333".into()),
            region: Some("us-east-1".into())
        }
    );
    let d = VolumeParams::parse(&map(&[("bucket", "my-bucket")])).unwrap();
    assert!(matches!(d.location, Source::S3 { ref prefix, .. } if prefix.is_empty()));
    // One rule per part, whichever way it is given: a bracketed IPv6
    // server is the same host as in a URL, a doubled slash is dropped.
    let e = VolumeParams::parse(&map(&[("server", "[fd00::1]"), ("share", "/a//b")])).unwrap();
    let f = VolumeParams::parse(&map(&[("source", "nfs://[fd00::1]/a/b")])).unwrap();
    assert_eq!(e.location, f.location);
    assert_eq!(e.location.to_string(), "nfs://[fd00::1]/a/b");
    for (params, word) in [
        (&[("source", "s3://b-1/a%2Fb")][..], "source"),
        (&[("bucket", "b-1"), ("prefix", "a/../b")][..], "prefix"),
        (&[("source", "file:///srv?x=1")][..], "query"),
        (&[("bucket", "ends-with-dash-")][..], "bucket"),
    ] {
        let err = VolumeParams::parse(&map(params)).unwrap_err();
        assert!(err.0.contains(word), "{params:?}: {err}");
    }
}

#[test]
fn unknown_parameter_is_named_and_known_ones_listed() {
    let e = VolumeParams::parse(&map(&[("source", "file:///srv"), ("colour", "red")])).unwrap_err();
    assert!(e.0.contains("'colour'"), "{e}");
    assert!(e.0.contains("subDir") && e.0.contains("onDelete"), "{e}");
}

#[test]
fn parameter_names_match_case_insensitively_like_csi_driver_nfs() {
    let p = VolumeParams::parse(&map(&[("SOURCE", "file:///srv"), ("subdir", "x")])).unwrap();
    assert_eq!(p.sub_dir.as_deref(), Some("x"));
    let e =
        VolumeParams::parse(&map(&[("source", "file:///a"), ("Source", "file:///b")])).unwrap_err();
    assert!(e.0.contains("twice"), "{e}");
}

#[test]
fn malformed_values_are_rejected_with_the_parameter_name() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("source", "not a url")], "source"),
        (&[("source", "ftp://h/x")], "source"),
        (&[("source", "file://host/x")], "source"),
        (&[("source", "file:///srv/../etc")], "source"),
        (&[("source", "file:///srv/a%2F..%2Fb")], "source"),
        (&[("source", "s3://UPPER/x")], "bucket"),
        (&[("source", "s3://user:pw@bucket/x")], "credentials"),
        (&[("server", "h")], "together"),
        (&[("server", "h"), ("share", "relative")], "share"),
        (
            &[("source", "file:///a"), ("server", "h"), ("share", "/x")],
            "exactly one",
        ),
        (
            &[("source", "file:///a"), ("onDelete", "shred")],
            "onDelete",
        ),
        (
            &[("source", "file:///a"), ("mountPermissions", "999")],
            "mountPermissions",
        ),
        (&[("source", "file:///a"), ("uid", "5")], "together"),
        (
            &[("source", "file:///a"), ("uid", "x"), ("gid", "1")],
            "uid",
        ),
        (&[("source", "file:///a"), ("pageSize", "1000")], "pageSize"),
        (
            &[("source", "file:///a"), ("metadataTTL", "soon")],
            "metadataTTL",
        ),
        (
            &[("source", "file:///a"), ("readOnly", "maybe")],
            "readOnly",
        ),
        (
            &[("source", "file:///a"), ("endpoint", "http://x")],
            "S3 sources only",
        ),
        (&[("bucket", "bkt"), ("endpoint", "ftp://x")], "endpoint"),
        (&[("bucket", "bkt"), ("region", "US EAST")], "region"),
        (
            &[("source", "file:///a"), ("subDir", "${nope}")],
            "unknown variable",
        ),
        (
            &[("source", "file:///a"), ("subDir", "${pvc.metadata.name")],
            "unterminated",
        ),
    ];
    for (pairs, needle) in cases {
        let e = VolumeParams::parse(&map(pairs)).expect_err(&format!("{pairs:?}"));
        assert!(e.0.contains(needle), "{pairs:?}: {e}");
    }
}

#[test]
fn templates_cannot_leave_the_source() {
    let bad_templates = [
        "../x",
        "/abs",
        "a/../../b",
        "a//b",
        "./a",
        "${pvc.metadata.name}/..",
    ];
    for t in bad_templates {
        let p = VolumeParams::parse(&map(&[
            ("source", "file:///srv"),
            ("subDir", t),
            (PVC_NAME_KEY, "data"),
        ]))
        .unwrap();
        assert!(p.sub_path("pvc-1").is_err(), "{t}");
    }
    for evil in ["..", ".", "a/b", ""] {
        let p = VolumeParams::parse(&map(&[
            ("source", "file:///srv"),
            ("subDir", "x/${pvc.metadata.name}"),
            (PVC_NAME_KEY, evil),
        ]))
        .unwrap();
        assert!(p.sub_path("pvc-1").is_err(), "{evil:?}");
    }
}

#[test]
fn missing_template_metadata_says_how_to_fix_it() {
    let p = VolumeParams::parse(&map(&[
        ("source", "file:///srv"),
        ("subDir", "${pvc.metadata.namespace}"),
    ]))
    .unwrap();
    let e = p.sub_path("pvc-1").unwrap_err();
    assert!(e.0.contains("--extra-create-metadata"), "{e}");
}

#[test]
fn secrets_are_typed_and_never_echoed() {
    let creds = S3Credentials::from_secrets(&map(&[
        ("accessKeyId", "AKIAEXAMPLE"),
        ("secretAccessKey", "TOPSECRETVALUE"),
    ]))
    .unwrap()
    .unwrap();
    assert!(!format!("{creds:?}").contains("TOPSECRET"));
    assert_eq!(creds.env()[1].1, "TOPSECRETVALUE");
    let e = S3Credentials::from_secrets(&map(&[("password", "TOPSECRETVALUE")])).unwrap_err();
    assert!(
        e.0.contains("password") && !e.0.contains("TOPSECRET"),
        "{e}"
    );
    let e = S3Credentials::from_secrets(&map(&[("accessKeyId", "TOPSECRETVALUE")])).unwrap_err();
    assert!(!e.0.contains("TOPSECRET"), "{e}");
    assert_eq!(S3Credentials::from_secrets(&HashMap::new()).unwrap(), None);
}

#[test]
fn node_context_ignores_kubernetes_keys_but_not_unknown_ones() {
    let ok = NodeParams::parse(&map(&[
        ("csi.storage.k8s.io/pod.name", "p"),
        ("storage.kubernetes.io/csiProvisionerIdentity", "x"),
        ("readOnly", "true"),
    ]))
    .unwrap();
    assert!(ok.cache.read_only);
    assert!(NodeParams::parse(&map(&[("colour", "red")])).is_err());
}

#[test]
fn a_warm_list_that_is_no_glob_is_refused_with_the_glob_named() {
    for (value, says) in [
        ("data/[x", "'data/[x' is not a glob"),
        (" , ", "no glob given"),
    ] {
        let err = VolumeParams::parse(&map(&[("source", "file:///srv"), ("warm", value)]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("parameter warm") && err.contains(says),
            "{err}"
        );
    }
    let err = NodeParams::parse(&map(&[("warm", "[")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a glob"), "{err}");
}

#[test]
fn pod_authentication_travels_to_the_node_and_needs_a_role_and_s3() {
    let role = "arn:aws:iam::123456789012:role/readers";
    let p = VolumeParams::parse(&map(&[
        ("bucket", "data"),
        ("authenticationSource", "pod"),
        ("roleArn", role),
    ]))
    .unwrap();
    let want = Authentication::Pod(PodAuthentication {
        role_arn: role.into(),
        audience: DEFAULT_TOKEN_AUDIENCE.into(),
    });
    assert_eq!(p.auth, want);
    assert_eq!(NodeParams::parse(&p.volume_context()).unwrap().auth, want);
    let driver = VolumeParams::parse(&map(&[("bucket", "data")])).unwrap();
    assert_eq!(driver.auth, Authentication::Driver);
    assert!(!driver.volume_context().contains_key("authenticationSource"));

    let err = |pairs: &[(&str, &str)]| VolumeParams::parse(&map(pairs)).unwrap_err().0;
    let no_role = err(&[("bucket", "data"), ("authenticationSource", "pod")]);
    assert!(no_role.contains("needs roleArn"), "{no_role}");
    let nfs = err(&[
        ("server", "nfs.example"),
        ("share", "/export"),
        ("authenticationSource", "pod"),
        ("roleArn", role),
    ]);
    assert!(nfs.contains("S3 volumes only"), "{nfs}");
    let stray = err(&[("bucket", "data"), ("roleArn", role)]);
    assert!(
        stray.contains("only with authenticationSource: pod"),
        "{stray}"
    );
    let bad_role = err(&[
        ("bucket", "data"),
        ("authenticationSource", "pod"),
        ("roleArn", "readers"),
    ]);
    assert!(bad_role.contains("parameter roleArn"), "{bad_role}");
    let other = err(&[("bucket", "data"), ("authenticationSource", "node")]);
    assert!(other.contains("not one of driver, pod"), "{other}");
}
