//! MUST rules of the CSI spec (idempotency, error codes, required fields,
//! capability consistency) and bad input, against a real plugin process.

use crate::support_csi;
use crate::support_nfs;

use cachalot::csi::proto::controller_service_capability::rpc::Type as CtlCap;
use cachalot::csi::proto::node_service_capability::rpc::Type as NodeCap;
use cachalot::csi::proto::plugin_capability::service::Type as PluginCap;
use cachalot::csi::proto::volume_capability::access_mode::Mode;
use cachalot::csi::proto::volume_capability::{AccessType, BlockVolume};
use cachalot::csi::proto::*;
use support_csi::*;
use tonic::Code;

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("expected an error");
    (s.code(), s.message().to_string())
}

async fn new_volume(env: &Env, c: &mut Clients, name: &str) -> Volume {
    let url = env.source_url();
    c.controller
        .create_volume(create_req(name, params(&[("source", &url)])))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_and_capabilities_are_consistent() {
    let env = Env::new();
    let mut c = env.clients().await;
    let info = c
        .identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "cachalot.csi.dev");
    assert!(info.name.len() <= 63);
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let probe = c
        .identity
        .probe(ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(true));

    let plugin_caps = c
        .identity
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let has_controller = plugin_caps.capabilities.iter().any(|cap| {
        matches!(&cap.r#type, Some(plugin_capability::Type::Service(s)) if s.r#type == PluginCap::ControllerService as i32)
    });
    assert!(has_controller);

    let ctl: Vec<i32> = c
        .controller
        .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .into_iter()
        .filter_map(|cap| {
            cap.r#type
                .map(|controller_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    assert!(ctl.contains(&(CtlCap::CreateDeleteVolume as i32)));
    assert!(ctl.contains(&(CtlCap::SingleNodeMultiWriter as i32)));
    // What is not advertised is not implemented.
    assert!(!ctl.contains(&(CtlCap::ListVolumesPublishedNodes as i32)));
    // Advertised and implemented (capacity, get-volume and list tests below).
    for want in [
        CtlCap::GetCapacity,
        CtlCap::GetVolume,
        CtlCap::VolumeCondition,
        CtlCap::ListVolumes,
    ] {
        assert!(ctl.contains(&(want as i32)), "{want:?}");
    }
    // Parameters are optional: without a source nothing is available.
    let none = c
        .controller
        .get_capacity(GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none.available_capacity, 0);
    assert!(!ctl.contains(&(CtlCap::PublishUnpublishVolume as i32)));
    assert_eq!(
        code(
            c.controller
                .controller_publish_volume(ControllerPublishVolumeRequest::default())
                .await
        )
        .0,
        Code::Unimplemented
    );

    let node: Vec<i32> = c
        .node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .into_iter()
        .filter_map(|cap| {
            cap.r#type
                .map(|node_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    for want in [
        NodeCap::StageUnstageVolume,
        NodeCap::GetVolumeStats,
        NodeCap::VolumeCondition,
        NodeCap::SingleNodeMultiWriter,
        NodeCap::VolumeMountGroup,
        NodeCap::ExpandVolume,
    ] {
        assert!(node.contains(&(want as i32)), "{want:?}");
    }
    // Advertised, so implemented: an empty request is malformed.
    assert_eq!(
        code(
            c.node
                .node_expand_volume(NodeExpandVolumeRequest::default())
                .await
        )
        .0,
        Code::InvalidArgument
    );
    let ni = c
        .node
        .node_get_info(NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ni.node_id, "test-node-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_volume_idempotency_and_codes() {
    let env = Env::new();
    let mut c = env.clients().await;
    let url = env.source_url();
    let p = params(&[("source", &url)]);

    let mut req = create_req("", p.clone());
    assert_eq!(
        code(c.controller.create_volume(req.clone()).await).0,
        Code::InvalidArgument
    );
    req.name = "pvc-a".into();
    req.volume_capabilities.clear();
    assert_eq!(
        code(c.controller.create_volume(req).await).0,
        Code::InvalidArgument
    );

    let mut block = create_req("pvc-a", p.clone());
    block.volume_capabilities = vec![VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        ..rwx()
    }];
    let (cd, msg) = code(c.controller.create_volume(block).await);
    assert_eq!(cd, Code::InvalidArgument);
    assert!(msg.contains("block"), "{msg}");
    let mut no_mode = create_req("pvc-a", p.clone());
    no_mode.volume_capabilities = vec![mount_cap(Mode::Unknown)];
    assert_eq!(
        code(c.controller.create_volume(no_mode).await).0,
        Code::InvalidArgument
    );

    let first = c
        .controller
        .create_volume(create_req("pvc-a", p.clone()))
        .await
        .unwrap()
        .into_inner();
    let second = c
        .controller
        .create_volume(create_req("pvc-a", p.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, second, "same request, same volume");

    let mut bigger = create_req("pvc-a", p.clone());
    bigger.capacity_range = Some(CapacityRange {
        required_bytes: 2 << 30,
        limit_bytes: 0,
    });
    assert_eq!(
        code(c.controller.create_volume(bigger).await).0,
        Code::AlreadyExists
    );
    let other_params = create_req("pvc-a", params(&[("source", &url), ("onDelete", "retain")]));
    assert_eq!(
        code(c.controller.create_volume(other_params).await).0,
        Code::AlreadyExists
    );

    let mut inverted = create_req("pvc-b", p.clone());
    inverted.capacity_range = Some(CapacityRange {
        required_bytes: 10,
        limit_bytes: 5,
    });
    assert_eq!(
        code(c.controller.create_volume(inverted).await).0,
        Code::OutOfRange
    );
    let mut negative = create_req("pvc-b", p.clone());
    negative.capacity_range = Some(CapacityRange {
        required_bytes: -1,
        limit_bytes: 0,
    });
    assert_eq!(
        code(c.controller.create_volume(negative).await).0,
        Code::InvalidArgument
    );
    // A content source that names nothing, or a volume that is not ours.
    let mut clone = create_req("pvc-b", p.clone());
    clone.volume_content_source = Some(VolumeContentSource { r#type: None });
    assert_eq!(
        code(c.controller.create_volume(clone.clone()).await).0,
        Code::InvalidArgument
    );
    clone.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(
            volume_content_source::VolumeSource {
                volume_id: "someone-elses-volume".into(),
            },
        )),
    });
    assert_eq!(
        code(c.controller.create_volume(clone).await).0,
        Code::NotFound
    );

    // Missing source directory: a precondition, with the fix.
    let gone = format!("file://{}/nope", env.source().display());
    let (cd, msg) = code(
        c.controller
            .create_volume(create_req("pvc-c", params(&[("source", &gone)])))
            .await,
    );
    assert_eq!(cd, Code::FailedPrecondition);
    assert!(msg.contains("Fix"), "{msg}");
    // A file where the volume directory should be.
    std::fs::write(env.source().join("pvc-file"), b"x").unwrap();
    let (cd, _) = code(
        c.controller
            .create_volume(create_req("pvc-file", p.clone()))
            .await,
    );
    assert_eq!(cd, Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_invalid_arguments_naming_the_problem() {
    let env = Env::new();
    let mut c = env.clients().await;
    let url = env.source_url();
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("source", &url), ("colour", "blue")], "'colour'"),
        (vec![("source", &url), ("subDir", "../escape")], "subDir"),
        (vec![("source", &url), ("subDir", "/etc")], "subDir"),
        (vec![("source", &url), ("subDir", "a/../../b")], "subDir"),
        (
            vec![("source", &url), ("subDir", "${pvc.metadata.name}/..")],
            "subDir",
        ),
        (
            vec![("source", &url), ("subDir", "${pvc.metadata.name}")],
            "--extra-create-metadata",
        ),
        (
            vec![
                ("source", &url),
                ("subDir", "${pvc.metadata.name}"),
                ("csi.storage.k8s.io/pvc/name", ".."),
            ],
            "single path component",
        ),
        (
            vec![("source", &url), ("subDir", "${pvc.metadata.uid}")],
            "unknown variable",
        ),
        (vec![("source", "file:///srv/../etc")], "source"),
        (vec![("source", "file:///srv/a%2F..%2Fb")], "source"),
        (vec![("source", "not a url")], "source"),
        (
            vec![("source", "http://example.com/x")],
            "unsupported scheme",
        ),
        (vec![("source", "file://host/x")], "host"),
        (vec![("source", "s3://Bad_Bucket/x")], "bucket"),
        (vec![("source", &url), ("onDelete", "shred")], "onDelete"),
        (
            vec![("source", &url), ("mountPermissions", "rwx")],
            "mountPermissions",
        ),
        (vec![("source", &url), ("cacheSize", "lots")], "cacheSize"),
        (vec![], "source"),
    ];
    for (pairs, needle) in cases {
        let (cd, msg) = code(
            c.controller
                .create_volume(create_req("pvc-bad", params(&pairs)))
                .await,
        );
        assert_eq!(cd, Code::InvalidArgument, "{pairs:?}: {msg}");
        assert!(msg.contains(needle), "{pairs:?}: {msg}");
    }
    let (_, msg) = code(
        c.controller
            .create_volume(create_req(
                "pvc-bad",
                params(&[("source", &url), ("colour", "x")]),
            ))
            .await,
    );
    for known in [
        "source",
        "server",
        "share",
        "subDir",
        "onDelete",
        "mountPermissions",
        "cacheSize",
    ] {
        assert!(msg.contains(known), "known parameters listed: {msg}");
    }
    // Nothing was created anywhere for the refused requests.
    let created: Vec<_> = std::fs::read_dir(env.source()).unwrap().collect();
    assert!(created.is_empty(), "{created:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_validate_codes() {
    let env = Env::new();
    let mut c = env.clients().await;
    let del = |id: &str| DeleteVolumeRequest {
        volume_id: id.into(),
        ..Default::default()
    };
    assert_eq!(
        code(c.controller.delete_volume(del("")).await).0,
        Code::InvalidArgument
    );
    c.controller
        .delete_volume(del("reallyfakevolumeid"))
        .await
        .expect("unknown id is OK");
    let src = env.source().display().to_string();
    c.controller
        .delete_volume(del(&format!("v1#file#{src}#never-created#delete")))
        .await
        .expect("deleted before: OK");
    // Outside the source: refused, and nothing outside is touched.
    let victim = env.path("victim");
    std::fs::create_dir_all(&victim).unwrap();
    for evil in [
        format!("v1#file#{src}#../victim#delete"),
        format!("v1#file#{src}#..%2Fvictim#delete"),
        format!("v1#file#{src}#%2E%2E#delete"),
        format!("v1#file#{src}#/victim#delete"),
    ] {
        let (cd, msg) = code(c.controller.delete_volume(del(&evil)).await);
        assert_eq!(cd, Code::InvalidArgument, "{evil}: {msg}");
    }
    assert!(victim.exists());
    // A whole-source volume (static) is never deleted.
    c.controller
        .delete_volume(del(&format!("v1#file#{src}##delete")))
        .await
        .unwrap();
    assert!(env.source().exists());

    let vol = new_volume(&env, &mut c, "pvc-v").await;
    let vreq = |id: &str, caps: Vec<VolumeCapability>| ValidateVolumeCapabilitiesRequest {
        volume_id: id.into(),
        volume_capabilities: caps,
        ..Default::default()
    };
    assert_eq!(
        code(
            c.controller
                .validate_volume_capabilities(vreq("", vec![rwx()]))
                .await
        )
        .0,
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.controller
                .validate_volume_capabilities(vreq(&vol.volume_id, vec![]))
                .await
        )
        .0,
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.controller
                .validate_volume_capabilities(vreq("reallyfakevolumeid", vec![rwx()]))
                .await
        )
        .0,
        Code::NotFound
    );
    assert_eq!(
        code(
            c.controller
                .validate_volume_capabilities(vreq(
                    &format!("v1#file#{src}#nope#delete"),
                    vec![rwx()]
                ))
                .await
        )
        .0,
        Code::NotFound
    );
    let ok = c
        .controller
        .validate_volume_capabilities(vreq(
            &vol.volume_id,
            vec![rwx(), mount_cap(Mode::SingleNodeWriter)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.confirmed.is_some(), "{ok:?}");
    let block = VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        ..rwx()
    };
    let no = c
        .controller
        .validate_volume_capabilities(vreq(&vol.volume_id, vec![block]))
        .await
        .unwrap()
        .into_inner();
    assert!(no.confirmed.is_none() && !no.message.is_empty(), "{no:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_required_fields_and_unknown_volumes() {
    let env = Env::new();
    let mut c = env.clients().await;
    let vol = new_volume(&env, &mut c, "pvc-n").await;
    let staging = env.staging("n");
    let target = env.target("pod-n");

    let mut r = stage_req(&vol, &staging);
    r.volume_id.clear();
    assert_eq!(
        code(c.node.node_stage_volume(r).await).0,
        Code::InvalidArgument
    );
    let mut r = stage_req(&vol, &staging);
    r.staging_target_path.clear();
    assert_eq!(
        code(c.node.node_stage_volume(r).await).0,
        Code::InvalidArgument
    );
    let mut r = stage_req(&vol, &staging);
    r.volume_capability = None;
    assert_eq!(
        code(c.node.node_stage_volume(r).await).0,
        Code::InvalidArgument
    );
    let mut r = stage_req(&vol, &staging);
    r.volume_context.insert("colour".into(), "red".into());
    assert_eq!(
        code(c.node.node_stage_volume(r).await).0,
        Code::InvalidArgument
    );
    let mut r = stage_req(&vol, &staging);
    r.volume_id = "reallyfakevolumeid".into();
    assert_eq!(code(c.node.node_stage_volume(r).await).0, Code::NotFound);
    let mut r = stage_req(&vol, &staging);
    r.volume_id = format!("v1#file#{}#deleted-already#delete", env.source().display());
    assert_eq!(code(c.node.node_stage_volume(r).await).0, Code::NotFound);
    let mut r = stage_req(&vol, &staging);
    r.volume_id = format!("v1#file#{}#a%2F..%2F..#delete", env.source().display());
    assert_eq!(
        code(c.node.node_stage_volume(r).await).0,
        Code::InvalidArgument
    );
    assert!(!is_mounted(&staging));
    assert!(env.mount_children().is_empty());

    // Publish before stage: precondition.
    let (cd, _) = code(
        c.node
            .node_publish_volume(publish_req(&vol, &staging, &target, false))
            .await,
    );
    assert_eq!(cd, Code::FailedPrecondition);
    c.stage(&vol, &staging).await;
    let mut p = publish_req(&vol, &staging, &target, false);
    p.target_path.clear();
    assert_eq!(
        code(c.node.node_publish_volume(p).await).0,
        Code::InvalidArgument
    );
    let mut p = publish_req(&vol, &staging, &target, false);
    p.volume_capability = None;
    assert_eq!(
        code(c.node.node_publish_volume(p).await).0,
        Code::InvalidArgument
    );
    let mut p = publish_req(&vol, &staging, &target, false);
    p.volume_id.clear();
    assert_eq!(
        code(c.node.node_publish_volume(p).await).0,
        Code::InvalidArgument
    );
    let mut p = publish_req(&vol, &staging, &target, false);
    p.staging_target_path.clear();
    assert_eq!(
        code(c.node.node_publish_volume(p).await).0,
        Code::InvalidArgument
    );
    // A second stage at another path while the first is live: ALREADY_EXISTS.
    let (cd, _) = code(
        c.node
            .node_stage_volume(stage_req(&vol, &env.staging("other")))
            .await,
    );
    assert_eq!(cd, Code::AlreadyExists);

    c.publish(&vol, &staging, &target, false).await;
    // Same target, other read-only flag: incompatible.
    let (cd, _) = code(
        c.node
            .node_publish_volume(publish_req(&vol, &staging, &target, true))
            .await,
    );
    assert_eq!(cd, Code::AlreadyExists);

    let stats = |id: &str, path: &std::path::Path| NodeGetVolumeStatsRequest {
        volume_id: id.into(),
        volume_path: path.display().to_string(),
        staging_target_path: String::new(),
    };
    assert_eq!(
        code(c.node.node_get_volume_stats(stats("", &target)).await).0,
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.node
                .node_get_volume_stats(stats(&vol.volume_id, std::path::Path::new("")))
                .await
        )
        .0,
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.node
                .node_get_volume_stats(stats("reallyfakevolumeid", &target))
                .await
        )
        .0,
        Code::NotFound
    );
    assert_eq!(
        code(
            c.node
                .node_get_volume_stats(stats(&vol.volume_id, &env.path("nowhere")))
                .await
        )
        .0,
        Code::NotFound
    );
    // A relative path is no published or staged path either (the spec's
    // NOT_FOUND, as csi-sanity expects), not a malformed request.
    assert_eq!(
        code(
            c.node
                .node_get_volume_stats(stats(&vol.volume_id, std::path::Path::new("some/relative")))
                .await
        )
        .0,
        Code::NotFound
    );

    let mut u = unpublish_req(&vol, &target);
    u.target_path.clear();
    assert_eq!(
        code(c.node.node_unpublish_volume(u).await).0,
        Code::InvalidArgument
    );
    let mut u = unpublish_req(&vol, &target);
    u.volume_id.clear();
    assert_eq!(
        code(c.node.node_unpublish_volume(u).await).0,
        Code::InvalidArgument
    );
    let mut s = unstage_req(&vol, &staging);
    s.staging_target_path.clear();
    assert_eq!(
        code(c.node.node_unstage_volume(s).await).0,
        Code::InvalidArgument
    );
    let mut s = unstage_req(&vol, &staging);
    s.volume_id.clear();
    assert_eq!(
        code(c.node.node_unstage_volume(s).await).0,
        Code::InvalidArgument
    );

    c.unpublish(&vol, &target).await;
    c.unstage(&vol, &staging).await;
    // Never staged / never published: OK.
    c.node
        .node_unstage_volume(unstage_req(&vol, &env.staging("never")))
        .await
        .unwrap();
    c.node
        .node_unpublish_volume(unpublish_req(&vol, &env.target("never")))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_a_log_line_or_an_error() {
    const ACCESS: &str = "AKIAVERYSECRETACCESS";
    const SECRET: &str = "wJalrXUtnFEMI-TOPSECRET-VALUE";
    let env = Env::with_log("trace");
    let mut c = env.clients().await;
    let secrets = params(&[("accessKeyId", ACCESS), ("secretAccessKey", SECRET)]);
    let bad_secrets = params(&[("accessKeyId", ACCESS), ("password", SECRET)]);
    let mut messages = Vec::new();

    // S3 volume on an unreachable default endpoint: secrets parsed, then refused.
    for s in [secrets.clone(), bad_secrets.clone()] {
        let mut req = create_req("pvc-s3", params(&[("source", "s3://bucket/prefix")]));
        req.secrets = s;
        let err = c.controller.create_volume(req).await.unwrap_err();
        messages.push(err.message().to_string());
    }
    // Secrets on file volumes travel through every call, too.
    let url = env.source_url();
    let mut req = create_req("pvc-f", params(&[("source", &url)]));
    req.secrets = secrets.clone();
    let vol = c
        .controller
        .create_volume(req)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let staging = env.staging("f");
    let target = env.target("pod-f");
    let mut stage = stage_req(&vol, &staging);
    stage.secrets = secrets.clone();
    c.node.node_stage_volume(stage).await.unwrap();
    let mut publish = publish_req(&vol, &staging, &target, false);
    publish.secrets = secrets.clone();
    c.node.node_publish_volume(publish).await.unwrap();
    let mut bad_publish = publish_req(&vol, &staging, &env.target("pod-g"), false);
    bad_publish.secrets = bad_secrets.clone();
    bad_publish
        .volume_context
        .insert("colour".into(), SECRET.into());
    messages.push(
        c.node
            .node_publish_volume(bad_publish)
            .await
            .unwrap_err()
            .message()
            .to_string(),
    );
    let s3_id = "v1#s3#bucket#prefix###pvc-x#delete";
    let mut s3_stage = stage_req(&vol, &env.staging("s3"));
    s3_stage.volume_id = s3_id.into();
    s3_stage.secrets = secrets.clone();
    messages.push(
        c.node
            .node_stage_volume(s3_stage)
            .await
            .unwrap_err()
            .message()
            .to_string(),
    );
    let mut del = DeleteVolumeRequest {
        volume_id: s3_id.into(),
        ..Default::default()
    };
    del.secrets = bad_secrets;
    messages.push(
        c.controller
            .delete_volume(del)
            .await
            .unwrap_err()
            .message()
            .to_string(),
    );
    c.unpublish(&vol, &target).await;
    c.unstage(&vol, &staging).await;

    let log = env.log();
    assert!(log.lines().count() > 20, "trace logging is on:\n{log}");
    assert!(
        log.contains("TRACE") || log.contains("trace"),
        "trace level reached the log"
    );
    for line in log.lines().chain(messages.iter().map(String::as_str)) {
        assert!(!line.contains(ACCESS), "access key leaked: {line}");
        assert!(!line.contains(SECRET), "secret leaked: {line}");
    }
    // The mount children's logs too. The S3 backend names the access key
    // id there on purpose (like AWS tools, to say which identity was used);
    // the secret key never appears.
    for e in std::fs::read_dir(env.path("state/logs")).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        assert!(!text.contains(SECRET), "secret leaked in a mount log");
    }
}

/// Bytes available to unprivileged writers on the filesystem of `dir`.
fn statvfs_available(dir: &std::path::Path) -> i64 {
    let v = nix::sys::statvfs::statvfs(dir).unwrap();
    (v.blocks_available() as u128 * v.fragment_size() as u128) as i64
}

/// `reported` lies within `slack` of the range the filesystem showed
/// around the call (other tests write to the same filesystem).
fn assert_near(reported: i64, before: i64, after: i64, what: &str) {
    const SLACK: i64 = 256 << 20;
    let (lo, hi) = (before.min(after) - SLACK, before.max(after) + SLACK);
    assert!(
        (lo..=hi).contains(&reported),
        "{what}: GetCapacity said {reported}, statvfs {before}..{after}"
    );
}

fn capacity_req(pairs: &[(&str, &str)]) -> GetCapacityRequest {
    GetCapacityRequest {
        parameters: params(pairs),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_capacity_is_the_free_space_of_the_source() {
    let env = Env::new();
    let mut c = env.clients().await;
    let url = env.source_url();
    for pairs in [
        vec![("source", url.as_str())],
        vec![("source", &url), ("uid", "1234"), ("gid", "2345")],
    ] {
        let before = statvfs_available(&env.source());
        let got = c
            .controller
            .get_capacity(GetCapacityRequest {
                volume_capabilities: vec![rwx()],
                ..capacity_req(&pairs)
            })
            .await
            .unwrap()
            .into_inner();
        let after = statvfs_available(&env.source());
        assert_near(got.available_capacity, before, after, &format!("{pairs:?}"));
        assert!(got.available_capacity > 0);
        assert_eq!(got.maximum_volume_size, None);
        assert_eq!(got.minimum_volume_size, None);
    }

    // Bad parameters: INVALID_ARGUMENT with CreateVolume's message.
    for pairs in [
        vec![("source", url.as_str()), ("colour", "blue")],
        vec![("source", "file:///srv/../etc")],
        vec![("source", &url), ("onDelete", "shred")],
        vec![("colour", "blue")],
    ] {
        let (cd, msg) = code(c.controller.get_capacity(capacity_req(&pairs)).await);
        assert_eq!(cd, Code::InvalidArgument, "{pairs:?}: {msg}");
        let (_, create_msg) = code(
            c.controller
                .create_volume(create_req("pvc-cap", params(&pairs)))
                .await,
        );
        assert_eq!(msg, create_msg, "{pairs:?}");
    }
    let block = VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        ..rwx()
    };
    let (cd, msg) = code(
        c.controller
            .get_capacity(GetCapacityRequest {
                volume_capabilities: vec![block],
                ..capacity_req(&[("source", &url)])
            })
            .await,
    );
    assert_eq!(cd, Code::InvalidArgument, "{msg}");
    assert!(msg.contains("block"), "{msg}");

    // A missing source: FAILED_PRECONDITION naming it and the fix.
    let gone = format!("file://{}", env.path("no-such-source").display());
    let (cd, msg) = code(
        c.controller
            .get_capacity(capacity_req(&[("source", &gone)]))
            .await,
    );
    assert_eq!(cd, Code::FailedPrecondition, "{msg}");
    assert!(
        msg.contains("no-such-source") && msg.contains("Fix"),
        "{msg}"
    );

    // An unreachable NFS server: UNAVAILABLE.
    let (cd, msg) = code(
        c.controller
            .get_capacity(capacity_req(&[("source", "nfs://nfs.invalid/export")]))
            .await,
    );
    assert_eq!(cd, Code::Unavailable, "{msg}");

    // S3: no capacity limit, answered without a request to the bucket
    // (this endpoint answers nothing).
    let s3 = c
        .controller
        .get_capacity(capacity_req(&[
            ("source", "s3://bucket/prefix"),
            ("endpoint", "http://127.0.0.1:9"),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s3.available_capacity, i64::MAX);
    assert_eq!(s3.maximum_volume_size, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_capacity_of_an_nfs_export() {
    let server = support_nfs::ganesha();
    let (disk, url) = server.area("csi-capacity");
    let env = Env::new();
    let mut c = env.clients().await;
    for pairs in [
        vec![("source", url.as_str())],
        vec![("source", &url), ("uid", "1234"), ("gid", "2345")],
    ] {
        let before = statvfs_available(&disk);
        let got = c
            .controller
            .get_capacity(capacity_req(&pairs))
            .await
            .unwrap()
            .into_inner();
        let after = statvfs_available(&disk);
        assert_near(got.available_capacity, before, after, &format!("{pairs:?}"));
    }
    let (cd, msg) = code(
        c.controller
            .get_capacity(capacity_req(&[("source", "nfs://127.0.0.1/not-exported")]))
            .await,
    );
    assert_eq!(cd, Code::FailedPrecondition, "{msg}");
}

async fn get(
    c: &mut Clients,
    id: &str,
) -> Result<tonic::Response<ControllerGetVolumeResponse>, tonic::Status> {
    c.controller
        .controller_get_volume(ControllerGetVolumeRequest {
            volume_id: id.into(),
        })
        .await
}

fn condition(r: &ControllerGetVolumeResponse) -> (bool, String) {
    let c = r
        .status
        .as_ref()
        .and_then(|s| s.volume_condition.as_ref())
        .expect("VOLUME_CONDITION: the condition is always set");
    (c.abnormal, c.message.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_get_volume_condition_and_codes() {
    let env = Env::new();
    let mut c = env.clients().await;
    let vol = new_volume(&env, &mut c, "pvc-get").await;
    let dir = env.source().join("pvc-get");

    let ok = get(&mut c, &vol.volume_id).await.unwrap().into_inner();
    let v = ok.volume.as_ref().expect("volume is required");
    assert_eq!(v.volume_id, vol.volume_id);
    assert_eq!(
        v.capacity_bytes, vol.capacity_bytes,
        "the size it was created with"
    );
    assert!(v.capacity_bytes > 0);
    let status = ok.status.as_ref().expect("status is required");
    assert!(status.published_node_ids.is_empty());
    let (abnormal, msg) = condition(&ok);
    assert!(!abnormal, "{msg}");
    assert!(msg.contains("pvc-get"), "{msg}");

    // A file in place of the directory: abnormal, naming the cause and fix.
    std::fs::remove_dir(&dir).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    let r = get(&mut c, &vol.volume_id).await.unwrap().into_inner();
    let (abnormal, msg) = condition(&r);
    assert!(abnormal, "{msg}");
    assert!(
        msg.contains("no longer a directory") && msg.contains("Fix"),
        "{msg}"
    );
    std::fs::remove_file(&dir).unwrap();

    // The directory deleted from under it: NOT_FOUND.
    let (cd, msg) = code(get(&mut c, &vol.volume_id).await);
    assert_eq!(cd, Code::NotFound, "{msg}");

    // The whole source missing (not mounted on the controller?): abnormal,
    // not NOT_FOUND, since the volume may come back.
    let moved = env.path("source-away");
    std::fs::rename(env.source(), &moved).unwrap();
    let r = get(&mut c, &vol.volume_id).await.unwrap().into_inner();
    std::fs::rename(&moved, env.source()).unwrap();
    let (abnormal, msg) = condition(&r);
    assert!(abnormal, "{msg}");
    assert!(
        msg.contains("does not exist") && msg.contains("Fix"),
        "{msg}"
    );

    // An unreachable NFS server: abnormal, not an error.
    let nfs_id = "v1#nfs#nfs.invalid##/export#pvc-x#delete";
    let r = get(&mut c, nfs_id).await.unwrap().into_inner();
    let (abnormal, msg) = condition(&r);
    assert!(abnormal, "{msg}");
    assert!(msg.contains("nfs.invalid") && msg.contains("Fix"), "{msg}");

    // IDs: empty and malformed → INVALID_ARGUMENT; not ours → NOT_FOUND
    // (the volume does not exist, as csi-sanity expects).
    let src = env.source().display().to_string();
    for (id, want) in [
        (String::new(), Code::InvalidArgument),
        (
            format!("v1#file#{src}#../victim#delete"),
            Code::InvalidArgument,
        ),
        (format!("v1#file#{src}#pvc-get"), Code::InvalidArgument),
        ("reallyfakevolumeid".to_string(), Code::NotFound),
        (
            format!("v1#file#{src}#never-created#delete"),
            Code::NotFound,
        ),
    ] {
        let (cd, msg) = code(get(&mut c, &id).await);
        assert_eq!(cd, want, "{id}: {msg}");
    }
}

fn listed(r: &ListVolumesResponse) -> Vec<(String, bool, String)> {
    r.entries
        .iter()
        .map(|e| {
            let v = e.volume.as_ref().expect("volume is required");
            let c = e
                .status
                .as_ref()
                .and_then(|s| s.volume_condition.as_ref())
                .expect("VOLUME_CONDITION: every entry has its condition");
            (v.volume_id.clone(), c.abnormal, c.message.clone())
        })
        .collect()
}

async fn list(
    c: &mut Clients,
    max: i32,
    token: &str,
) -> Result<ListVolumesResponse, tonic::Status> {
    c.controller
        .list_volumes(ListVolumesRequest {
            max_entries: max,
            starting_token: token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// ListVolumes lists what CreateVolume made, in pages whose tokens survive
/// volumes deleted or created between pages (csi-sanity's pagination
/// spec), with each volume's condition; bad tokens are ABORTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_volumes_pages_and_reports_conditions() {
    let env = Env::new();
    let mut c = env.clients().await;
    assert!(list(&mut c, 0, "").await.unwrap().entries.is_empty());
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            new_volume(&env, &mut c, &format!("pvc-list-{i}"))
                .await
                .volume_id,
        );
    }
    ids.sort();

    // Everything at once, each once, healthy.
    let all = list(&mut c, 0, "").await.unwrap();
    assert!(all.next_token.is_empty());
    let got = listed(&all);
    assert_eq!(got.iter().map(|e| e.0.clone()).collect::<Vec<_>>(), ids);
    assert!(got.iter().all(|e| !e.1), "{got:?}");
    let sizes: Vec<i64> = all
        .entries
        .iter()
        .map(|e| e.volume.as_ref().unwrap().capacity_bytes)
        .collect();
    assert!(sizes.iter().all(|s| *s > 0), "{sizes:?}");

    // Pages of two; the last volume of the first page deleted and a new
    // one created before the next page: nothing skipped, nothing twice.
    let first = list(&mut c, 2, "").await.unwrap();
    assert_eq!(listed(&first).len(), 2);
    assert!(!first.next_token.is_empty());
    let gone = listed(&first)[1].0.clone();
    c.controller
        .delete_volume(DeleteVolumeRequest {
            volume_id: gone.clone(),
            secrets: Default::default(),
        })
        .await
        .unwrap();
    let late = new_volume(&env, &mut c, "pvc-list-late").await.volume_id;
    let mut seen: Vec<String> = listed(&first).into_iter().map(|e| e.0).collect();
    let mut token = first.next_token.clone();
    while !token.is_empty() {
        let page = list(&mut c, 2, &token).await.unwrap();
        assert!(page.entries.len() <= 2);
        seen.extend(listed(&page).into_iter().map(|e| e.0));
        token = page.next_token;
    }
    let mut want: Vec<String> = ids.iter().filter(|i| **i != gone).cloned().collect();
    if late > listed(&first)[1].0 {
        want.push(late.clone());
    }
    want.sort();
    seen.retain(|i| *i != gone);
    seen.sort();
    assert_eq!(seen, want);

    // A volume's directory removed behind the driver: listed, abnormal,
    // with the fix.
    let victim = ids.iter().find(|i| **i != gone).unwrap().clone();
    let name = victim.rsplit('#').nth(1).unwrap().to_string();
    std::fs::remove_dir_all(env.source().join(&name)).unwrap();
    let now = listed(&list(&mut c, 0, "").await.unwrap());
    let entry = now.iter().find(|e| e.0 == victim).expect("still listed");
    assert!(
        entry.1 && entry.2.contains("does not exist") && entry.2.contains("Fix"),
        "{entry:?}"
    );

    for bad in ["0", "not-a-token", "v1#file#x"] {
        let (cd, msg) = code(
            c.controller
                .list_volumes(ListVolumesRequest {
                    max_entries: 0,
                    starting_token: bad.into(),
                })
                .await,
        );
        assert_eq!(cd, Code::Aborted, "{bad}: {msg}");
    }
    let (cd, msg) = code(
        c.controller
            .list_volumes(ListVolumesRequest {
                max_entries: -1,
                starting_token: String::new(),
            })
            .await,
    );
    assert_eq!(cd, Code::InvalidArgument, "{msg}");
}
