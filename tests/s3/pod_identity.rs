//! `authenticationSource: pod`, driven as the kubelet drives it: the
//! CSIDriver's `tokenRequests` put each pod's service-account token in
//! NodePublishVolume's volume context, and `requiresRepublish` has the
//! kubelet publish again with a fresher one. The node plugin and the
//! mounter have no S3 keys of their own; STS (tests/support_s3/sts.py)
//! hands keys only for the token it currently accepts, and SeaweedFS (SigV4
//! enforced) knows only those keys.

use crate::support_csi;
use crate::support_s3;

use std::collections::HashMap;
use std::path::Path;

use cachalot::csi::proto::*;
use support_csi::*;
use support_s3::sts::{Sts, ROLE_ARN};
use support_s3::{S3Server, BUCKET, KEY_ID, SECRET};

const READER_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.team-a-reader";
const RENEWED_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.team-a-reader-renewed";

/// A pod's NodePublishVolume context: the volume's, plus what the kubelet
/// adds for a pod of service account `namespace/name` holding `token`.
fn pod_context(vol: &Volume, namespace: &str, name: &str, token: &str) -> HashMap<String, String> {
    let mut ctx = vol.volume_context.clone();
    let tokens = serde_json::json!({
        "sts.amazonaws.com": {"token": token, "expirationTimestamp": "2030-01-01T00:00:00Z"}
    });
    ctx.insert(
        "csi.storage.k8s.io/serviceAccount.tokens".into(),
        tokens.to_string(),
    );
    ctx.insert("csi.storage.k8s.io/serviceAccount.name".into(), name.into());
    ctx.insert("csi.storage.k8s.io/pod.namespace".into(), namespace.into());
    ctx
}

fn publish_as(
    vol: &Volume,
    staging: &Path,
    target: &Path,
    ctx: HashMap<String, String>,
) -> NodePublishVolumeRequest {
    let mut req = publish_req(vol, staging, target, false);
    req.volume_context = ctx;
    req
}

async fn object(server: &S3Server, key: &str) -> Option<Vec<u8>> {
    use object_store::ObjectStoreExt;
    let got = server
        .store()
        .get(&object_store::path::Path::from(key))
        .await;
    Some(got.ok()?.bytes().await.ok()?.to_vec())
}

fn sessions_below(staging: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(staging)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_account_signs_with_its_own_renewed_token() {
    let server = S3Server::seaweed();
    // Keys that expire within object_store's refresh margin: every request
    // (spaced more than 100 ms) exchanges the token file's token again.
    let sts = Sts::start(READER_TOKEN, KEY_ID, SECRET, 120);
    let env = Env::with_mounter_env(&[
        ("AWS_ENDPOINT_URL_STS", sts.url()),
        ("SSL_CERT_FILE", sts.ca_file().display().to_string()),
    ]);
    let mut c = env.clients().await;
    let mut params = params(&[
        ("bucket", BUCKET),
        ("prefix", "pods"),
        ("endpoint", &server.endpoint()),
        ("region", "us-east-1"),
        ("authenticationSource", "pod"),
        ("roleArn", ROLE_ARN),
    ]);
    params.insert("onDelete".into(), "delete".into());
    let mut create = create_req("pvc-pod-auth", params);
    // The provisioner signs with its own keys (the driver's).
    create.secrets = crate::csi::secrets(KEY_ID, SECRET);
    let vol = create_volume_retrying(&mut c, create).await;
    let staging = env.staging("pod-auth");
    // No secrets at stage, and nothing to mount before a pod's token.
    c.stage(&vol, &staging).await;
    assert!(!is_mounted(&staging));

    let first = env.target("reader-1");
    let ctx = pod_context(&vol, "team-a", "reader", READER_TOKEN);
    c.node
        .node_publish_volume(publish_as(&vol, &staging, &first, ctx.clone()))
        .await
        .unwrap_or_else(|e| panic!("publish with the pod's token: {e}\n{}", env.mounter_logs()));
    std::fs::write(first.join("a.txt"), b"signed by the pod's role").unwrap();
    assert_eq!(
        object(&server, "pods/pvc-pod-auth/a.txt").await.as_deref(),
        Some(&b"signed by the pod's role"[..])
    );
    let calls = sts.calls();
    assert!(
        calls
            .iter()
            .any(|c| c == &format!("ok {ROLE_ARN} team-a.reader")),
        "STS never saw the pod's service account as the session: {calls:?}"
    );

    // A second pod of the same service account shares its session.
    let second = env.target("reader-2");
    c.node
        .node_publish_volume(publish_as(&vol, &staging, &second, ctx))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(second.join("a.txt")).unwrap(),
        b"signed by the pod's role"
    );
    let sessions = sessions_below(&staging);
    assert_eq!(
        sessions.iter().filter(|p| p.is_dir()).count(),
        1,
        "{sessions:?}"
    );

    // A service account STS does not trust gets no session, and says so.
    let intruder = env.target("intruder");
    let refused = c
        .node
        .node_publish_volume(publish_as(
            &vol,
            &staging,
            &intruder,
            pod_context(&vol, "team-b", "intruder", "eyJ.forged"),
        ))
        .await
        .expect_err("a token STS refuses must not be served");
    assert!(
        refused.message().contains("session team-b.intruder"),
        "the error does not name whose identity failed: {}",
        refused.message()
    );
    assert!(!is_mounted(&intruder));

    // The kubelet renews the token; until it publishes again, the session
    // only has the old one, which STS no longer takes.
    sts.accept(RENEWED_TOKEN);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let refused = |sts: &Sts| {
        sts.calls()
            .iter()
            .filter(|c| c.starts_with("refused "))
            .count()
    };
    let refused_before = refused(&sts);
    let stale = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(first.join("stale.txt"))?;
        f.write_all(b"x")?;
        f.sync_all()
    })();
    // At once and precisely: STS's refusal is not retried as if the
    // network had failed, nor reported as an I/O error.
    assert_eq!(
        stale.map_err(|e| e.raw_os_error()),
        Err(Some(libc::EACCES)),
        "a write with a token STS refuses"
    );
    // Each request asks STS once: a refusal is final (retrying it as a
    // network failure asked about ten times per request, for 30 s).
    let asked = refused(&sts) - refused_before;
    assert!(
        (1..=4).contains(&asked),
        "STS refused {asked} times for one failed write"
    );
    c.node
        .node_publish_volume(publish_as(
            &vol,
            &staging,
            &first,
            pod_context(&vol, "team-a", "reader", RENEWED_TOKEN),
        ))
        .await
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::write(first.join("renewed.txt"), b"with the renewed token").unwrap();
    assert_eq!(
        object(&server, "pods/pvc-pod-auth/renewed.txt")
            .await
            .as_deref(),
        Some(&b"with the renewed token"[..])
    );

    // The session ends with its last pod; its token goes with it.
    c.unpublish(&vol, &first).await;
    assert!(is_mounted(&second), "the other pod lost its volume");
    c.unpublish(&vol, &second).await;
    c.node
        .node_unpublish_volume(unpublish_req(&vol, &intruder))
        .await
        .unwrap();
    assert_eq!(sessions_below(&staging), Vec::<std::path::PathBuf>::new());
    assert!(env.sessions().sessions.is_empty(), "{:?}", env.sessions());
    c.unstage(&vol, &staging).await;
    let log = env.mounter_logs();
    for secret in [SECRET, READER_TOKEN, RENEWED_TOKEN] {
        assert!(!log.contains(secret), "a secret reached the mounter's log");
    }
}

/// A CSIDriver without `tokenRequests` gives the plugin no token: the
/// publish fails with the field to set, not with an S3 error later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_kubelets_token_the_fix_is_named() {
    let server = S3Server::seaweed();
    let env = Env::new();
    let mut c = env.clients().await;
    let mut create = create_req(
        "pvc-no-token",
        params(&[
            ("bucket", BUCKET),
            ("endpoint", &server.endpoint()),
            ("authenticationSource", "pod"),
            ("roleArn", ROLE_ARN),
        ]),
    );
    create.secrets = crate::csi::secrets(KEY_ID, SECRET);
    let vol = create_volume_retrying(&mut c, create).await;
    let staging = env.staging("no-token");
    c.stage(&vol, &staging).await;
    let target = env.target("pod");
    let err = c
        .node
        .node_publish_volume(publish_req(&vol, &staging, &target, false))
        .await
        .expect_err("published without a token");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("tokenRequests"), "{}", err.message());
    c.unstage(&vol, &staging).await;
}
