//! Live volumes: a running pod's volume keeps serving while the CSI node
//! plugin's container is killed and restarted, while the mounter is taken
//! over live (upgrade) and while the mounter's container is killed -9 and
//! a new one started (crash recovery through the plugin, the keeper of the
//! sessions' descriptors).
//!
//! Kubernetes cannot run here, so the harness does what it does: each
//! component runs in its own PID namespace (a container: killing it kills
//! everything inside), the pod is a process in its own mount namespace with
//! slave propagation, and the volume is staged and published through the
//! CSI gRPC calls kubelet makes. The pod loop counts every failed syscall;
//! the test asserts there were none.

mod common;
mod support_csi;
mod support_nfs;
mod support_s3;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pattern;
use support_csi::*;

const ROLE_ENV: &str = "CACHALOT_LIVE_ROLE";
const DIR_ENV: &str = "CACHALOT_LIVE_DIR";
const SECS_ENV: &str = "CACHALOT_LIVE_SECS";
/// The file the pod keeps open for reading the whole time.
const LONG_READ: &str = "long-read.bin";
const LONG_READ_LEN: usize = 4 << 20;
/// The file the pod keeps open for writing the whole time.
const LONG_WRITE: &str = "long-write.bin";
const CHUNK: usize = 16 << 10;

/// What happens to the node while the pod runs.
#[derive(Debug, Clone, Copy)]
enum Disruption {
    /// Kill the CSI node plugin's container and start a new one.
    RestartPlugin,
    /// Start a second mounter: it takes the sessions over live.
    TakeOver,
    /// Kill the mounter's container (-9) and start a new one.
    CrashMounter,
}

/// The pod: for `secs` seconds write, read back and verify files, list and
/// stat the directory, read a long-open file and append to another; every
/// failed syscall is counted. Prints one RESULT line (JSON).
fn pod_loop(dir: &Path, secs: u64) -> serde_json::Value {
    let started_at = Instant::now();
    let deadline = started_at + Duration::from_secs(secs);
    let mut failures: Vec<String> = Vec::new();
    let mut ops = 0u64;
    let mut max_latency = Duration::ZERO;
    let fail = |what: String, failures: &mut Vec<String>| {
        if failures.len() < 20 {
            failures.push(format!(
                "[{:.2}s] {what}",
                started_at.elapsed().as_secs_f64()
            ));
        } else if failures.len() == 20 {
            failures.push("…".into());
        }
    };
    let expected_long = pattern(LONG_READ_LEN, 7);
    let mut reader = File::open(dir.join(LONG_READ)).expect("long-read file");
    let mut writer = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dir.join(LONG_WRITE))
        .expect("long-write file");
    let mut written = 0usize;
    let mut i = 0u64;
    while Instant::now() < deadline {
        i += 1;
        let started = Instant::now();
        let name = format!("f-{}", i % 16);
        let data = version(i);
        let path = dir.join(&name);
        match File::create(&path)
            .and_then(|mut f| f.write_all(&data).map(|_| f))
            .and_then(common::close_checked)
        {
            Ok(()) => match std::fs::read(&path) {
                Ok(back) if back == data => {}
                Ok(back) => fail(
                    format!(
                        "{name} (iteration {i}): read back {} bytes, wrote {}, first difference at {:?}",
                        back.len(),
                        data.len(),
                        back.iter().zip(&data).position(|(a, b)| a != b)
                    ),
                    &mut failures,
                ),
                Err(e) => fail(format!("read {name}: {e}"), &mut failures),
            },
            Err(e) => fail(format!("write {name}: {e}"), &mut failures),
        }
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for e in entries {
                    match e.and_then(|e| e.metadata()) {
                        Ok(_) => {}
                        Err(e) => fail(format!("stat in listing: {e}"), &mut failures),
                    }
                }
            }
            Err(e) => fail(format!("readdir: {e}"), &mut failures),
        }
        let off = (i as usize * 65_536) % (LONG_READ_LEN - 65_536);
        let mut buf = vec![0u8; 65_536];
        match reader
            .seek(SeekFrom::Start(off as u64))
            .and_then(|_| reader.read_exact(&mut buf))
        {
            Ok(()) if buf[..] == expected_long[off..off + 65_536] => {}
            Ok(()) => fail(
                format!("long-open reader: wrong data at {off}"),
                &mut failures,
            ),
            Err(e) => fail(format!("long-open reader at {off}: {e}"), &mut failures),
        }
        let chunk = pattern(CHUNK, 1000 + written as u64 / CHUNK as u64);
        match writer.write_all(&chunk) {
            Ok(()) => written += CHUNK,
            Err(e) => fail(format!("long-open writer: {e}"), &mut failures),
        }
        ops += 1;
        max_latency = max_latency.max(started.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Err(e) = common::close_checked(writer) {
        fail(format!("closing the long-open writer: {e}"), &mut failures);
    }
    serde_json::json!({
        "ops": ops,
        "failures": failures,
        "max_iteration_ms": max_latency.as_millis() as u64,
        "long_write_len": written,
    })
}

/// The content the pod writes to `f-{i % 16}` in iteration `i`.
fn version(i: u64) -> Vec<u8> {
    pattern(32 << 10 | (i as usize % 7) << 12, i)
}

/// Whether `bytes` is one complete version of `f-{n}` (never a partial
/// file under the final name).
fn is_complete_version(n: u64, bytes: &[u8], iterations: u64) -> bool {
    (1..=iterations)
        .filter(|i| i % 16 == n)
        .any(|i| bytes == version(i).as_slice())
}

/// Dispatch for child processes of this test binary (the pod).
#[test]
fn child_role() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    assert_eq!(role, "pod");
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("dir"));
    let secs: u64 = std::env::var(SECS_ENV)
        .expect("secs")
        .parse()
        .expect("secs");
    let result = pod_loop(&dir, secs);
    println!("RESULT {result}");
}

/// Start the pod: this test binary in its own mount namespace (slave
/// propagation, as kubelet sets up a container), working in `target`.
fn start_pod(target: &Path, secs: u64) -> std::process::Child {
    let exe = std::env::current_exe().expect("test binary");
    Command::new("unshare")
        .args(["--mount", "--propagation", "slave", "--"])
        .arg(exe)
        .args(common::CHILD_ROLE_ARGS)
        .env(ROLE_ENV, "pod")
        .env(DIR_ENV, target)
        .env(SECS_ENV, secs.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the pod")
}

fn pod_result(child: std::process::Child) -> serde_json::Value {
    let out = child.wait_with_output().expect("pod output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "the pod printed no result ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).expect("pod result JSON")
}

/// Start a second mounter on the node's socket and wait until it took the
/// sessions over and the old one exited 0.
fn take_over(env: &mut Env) {
    let old = env.mounter.take().expect("a mounter runs");
    let new = env.start_mounter();
    let status = tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(60)));
    assert!(
        status.is_some_and(|s| s.success()),
        "the old mounter did not exit 0 after the takeover ({status:?}):\n{}",
        env.mounter_logs()
    );
    env.mounter = Some(new);
    env.wait_for_mounter();
}

/// The whole scenario on one volume: stage + publish through CSI, run the
/// pod while `disruptions` happen at their times, check the pod saw no
/// error and the data is whole, then unpublish + unstage and check nothing
/// stays mounted.
async fn survive(
    env: &mut Env,
    params: HashMap<String, String>,
    secrets: HashMap<String, String>,
    pod_secs: u64,
    disruptions: &[(u64, Disruption)],
) {
    let mut c = env.clients().await;
    let mut params = params;
    // As the external-provisioner passes them with --extra-create-metadata.
    params.insert("csi.storage.k8s.io/pvc/name".into(), "pvc-live".into());
    params.insert("csi.storage.k8s.io/pvc/namespace".into(), "team-a".into());
    params.insert("csi.storage.k8s.io/pv/name".into(), "pvc-0a1b2c".into());
    let mut req = create_req("pvc-live", params);
    req.secrets = secrets.clone();
    let vol = c
        .controller
        .create_volume(req)
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .expect("volume");
    let staging = env.staging("live");
    let target = env.target("pod-live");
    let mut stage = stage_req(&vol, &staging);
    stage.secrets = secrets;
    c.node.node_stage_volume(stage).await.expect("NodeStage");
    c.publish(&vol, &staging, &target, false).await;
    std::fs::write(target.join(LONG_READ), pattern(LONG_READ_LEN, 7)).expect("long-read file");
    let sessions = env.sessions();
    assert_eq!(sessions.sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions.sessions[0].names.pvc.as_deref(), Some("pvc-live"));

    let pod = start_pod(&target, pod_secs);
    let started = Instant::now();
    for (at, what) in disruptions {
        let when = started + Duration::from_secs(*at);
        tokio::time::sleep(when.saturating_duration_since(Instant::now())).await;
        let t = Instant::now();
        match what {
            Disruption::RestartPlugin => {
                env.kill_plugin();
                tokio::time::sleep(Duration::from_millis(500)).await;
                env.start_plugin();
            }
            Disruption::TakeOver => take_over(env),
            Disruption::CrashMounter => {
                env.mounter.take().expect("a mounter runs").kill();
                tokio::time::sleep(Duration::from_millis(500)).await;
                let new = env.start_mounter();
                env.mounter = Some(new);
                env.wait_for_mounter();
            }
        }
        eprintln!("{what:?} at {at}s took {:?}", t.elapsed());
    }
    let result = tokio::task::block_in_place(|| pod_result(pod));
    eprintln!("pod: {result}");
    let failures = result["failures"].as_array().expect("failures");
    assert!(
        failures.is_empty(),
        "the pod saw failed syscalls: {failures:?}\n{}",
        env.mounter_logs()
    );
    assert!(result["ops"].as_u64().unwrap_or(0) > 10, "{result}");
    // The long-open writer's file was published complete at its close.
    let written = result["long_write_len"].as_u64().unwrap_or(0) as usize;
    let back = std::fs::read(target.join(LONG_WRITE)).expect("long-write file");
    assert_eq!(back.len(), written, "long-open writer's file");
    for (i, chunk) in back.chunks(CHUNK).enumerate() {
        assert!(
            chunk == &pattern(CHUNK, 1000 + i as u64)[..],
            "long-open writer's chunk {i} differs"
        );
    }
    // Every file under its final name is one complete version.
    let iterations = result["ops"].as_u64().unwrap_or(0);
    for n in 0..16 {
        if let Ok(bytes) = std::fs::read(target.join(format!("f-{n}"))) {
            assert!(
                is_complete_version(n, &bytes, iterations),
                "f-{n} ({} bytes) is not a complete version",
                bytes.len()
            );
        }
    }
    let sessions = env.sessions();
    assert_eq!(sessions.sessions.len(), 1, "{sessions:?}");

    let mut c = env.clients().await;
    c.unpublish(&vol, &target).await;
    c.unstage(&vol, &staging).await;
    assert!(!is_mounted(&target) && !is_mounted(&staging));
    assert!(
        mounts_below(env.root.path()).is_empty(),
        "left mounted: {:?}",
        mounts_below(env.root.path())
    );
    assert!(env.sessions().sessions.is_empty());
}

/// How long the pod runs: the disruptions below, with room after the last.
const POD_SECS: u64 = 40;

fn full_schedule() -> Vec<(u64, Disruption)> {
    vec![
        (5, Disruption::RestartPlugin),
        (12, Disruption::TakeOver),
        (20, Disruption::TakeOver),
        (28, Disruption::CrashMounter),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_volume_survives_plugin_restart_takeovers_and_mounter_crash() {
    common::require_root_and_fuse();
    let mut env = Env::with_mounter();
    let source = env.source_url();
    survive(
        &mut env,
        params(&[("source", &source)]),
        HashMap::new(),
        POD_SECS,
        &full_schedule(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nfs_volume_survives_plugin_restart_takeovers_and_mounter_crash() {
    common::require_root_and_fuse();
    let server = support_nfs::ganesha();
    let (_disk, url) = server.area("live");
    let mut env = Env::with_mounter();
    survive(
        &mut env,
        params(&[("source", &url), ("onDelete", "delete")]),
        HashMap::new(),
        POD_SECS,
        &full_schedule(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_volume_survives_plugin_restart_takeovers_and_mounter_crash() {
    use support_s3::{S3Server, BUCKET, KEY_ID, SECRET};
    common::require_root_and_fuse();
    let server = S3Server::seaweed();
    let mut env = Env::with_mounter();
    survive(
        &mut env,
        params(&[
            ("bucket", BUCKET),
            ("prefix", "live"),
            ("endpoint", &server.endpoint()),
            ("region", "us-east-1"),
            ("onDelete", "delete"),
        ]),
        params(&[("accessKeyId", KEY_ID), ("secretAccessKey", SECRET)]),
        POD_SECS,
        &full_schedule(),
    )
    .await;
}

fn five_crashes() -> Vec<(u64, Disruption)> {
    (1..=5).map(|n| (n * 3, Disruption::CrashMounter)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_mounter_crashes_lose_nothing_on_nfs() {
    common::require_root_and_fuse();
    let server = support_nfs::ganesha();
    let (_disk, url) = server.area("crashes");
    let mut env = Env::with_mounter();
    survive(
        &mut env,
        params(&[("source", &url), ("onDelete", "delete")]),
        HashMap::new(),
        18,
        &five_crashes(),
    )
    .await;
}

/// Crash recovery at many moments: the mounter's container is killed -9
/// five times while the pod works (each time somewhere else in its
/// create / write / close / read cycle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_mounter_crashes_lose_nothing() {
    common::require_root_and_fuse();
    let mut env = Env::with_mounter();
    let source = env.source_url();
    let crashes: Vec<(u64, Disruption)> =
        (1..=5).map(|n| (n * 3, Disruption::CrashMounter)).collect();
    survive(
        &mut env,
        params(&[("source", &source)]),
        HashMap::new(),
        18,
        &crashes,
    )
    .await;
}

/// Stage one file:// volume through CSI and publish it; returns the target.
async fn staged_volume(env: &Env) -> PathBuf {
    let mut c = env.clients().await;
    let source = env.source_url();
    let mut p = params(&[("source", &source)]);
    p.insert("csi.storage.k8s.io/pvc/name".into(), "pvc-bad".into());
    p.insert("csi.storage.k8s.io/pvc/namespace".into(), "team-b".into());
    let vol = c.create("pvc-bad", p).await;
    stage_and_publish(env, &mut c, &vol, "bad", "pod-bad")
        .await
        .1
}

/// NodeStage at the staging path `name` and NodePublish for `pod`, as the
/// kubelet does; returns (staging, target).
async fn stage_and_publish(
    env: &Env,
    c: &mut Clients,
    vol: &cachalot::csi::proto::Volume,
    name: &str,
    pod: &str,
) -> (PathBuf, PathBuf) {
    let staging = env.staging(name);
    let target = env.target(pod);
    c.stage(vol, &staging).await;
    c.publish(vol, &staging, &target, false).await;
    (staging, target)
}

/// A write through the volume from another thread, bounded in time: a
/// frozen or dead session makes it time out instead of hanging the test.
fn write_within(path: PathBuf, timeout: Duration) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::write(&path, b"still served").map_err(|e| e.to_string()));
    });
    rx.recv_timeout(timeout)
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

fn raw_request(socket: &Path, frame: &serde_json::Value) -> std::os::unix::net::UnixStream {
    use cachalot::mounter::wire;
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("mounter socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    wire::write_frame(&mut stream, frame).expect("sending a frame");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_that_cannot_take_over_leaves_the_running_mounter_serving() {
    use cachalot::mounter::protocol::{ErrorCode, Response};
    use cachalot::mounter::wire;
    common::require_root_and_fuse();
    let env = Env::with_mounter();
    let target = staged_volume(&env).await;
    let socket = env.mounter_socket();

    // Another protocol version: refused with both versions named.
    let mut s = raw_request(&socket, &serde_json::json!({"v": 999, "op": "takeover"}));
    match wire::read_frame::<Response>(&mut s).expect("answer") {
        Response::Error { code, message } => {
            assert_eq!(code, ErrorCode::VersionMismatch);
            assert!(
                message.contains("protocol 1") && message.contains("999"),
                "{message}"
            );
        }
        other => panic!("a mismatched takeover was answered {other:?}"),
    }
    // Garbage: a clear error, nothing else happens.
    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    std::io::Write::write_all(&mut s, &8u32.to_be_bytes()).unwrap();
    std::io::Write::write_all(&mut s, b"not json").unwrap();
    assert!(matches!(
        wire::read_frame::<Response>(&mut s).expect("answer"),
        Response::Error {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    write_within(target.join("a"), Duration::from_secs(10)).expect("served after refusals");

    // A successor that receives the sessions, then dies before accepting:
    // the old mounter serves again, including what it held meanwhile.
    let mut s = raw_request(&socket, &serde_json::json!({"v": 1, "op": "takeover"}));
    let Response::Handover { sessions } = wire::read_frame::<Response>(&mut s).expect("handover")
    else {
        panic!("no handover");
    };
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].record.names.pvc.as_deref(), Some("pvc-bad"));
    let fds = wire::recv_fds(&s, 1).expect("descriptors");
    // Frozen now: a write waits.
    let held = {
        let path = target.join("held");
        std::thread::spawn(move || std::fs::write(path, b"held, then served"))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(!held.is_finished(), "a frozen session answered a write");
    drop(fds);
    drop(s);
    held.join()
        .unwrap()
        .expect("the held write completes once the mounter serves again");
    assert_eq!(
        std::fs::read(target.join("held")).unwrap(),
        b"held, then served"
    );
    write_within(target.join("b"), Duration::from_secs(10))
        .expect("served after a failed takeover");

    // `cachalot sessions` names the claim.
    let out = Command::new(env!("CARGO_BIN_EXE_cachalot"))
        .args(["sessions", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("team-b/pvc-bad") && text.contains("serving"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_of_an_unknown_session_are_refused_without_harm() {
    use cachalot::mounter::MounterClient;
    common::require_root_and_fuse();
    let env = Env::with_mounter();
    let target = staged_volume(&env).await;
    let client = MounterClient::new(env.mounter_socket(), Duration::from_secs(10));
    let null = std::fs::File::open("/dev/null").unwrap();
    let bogus = vec![(
        PathBuf::from("/nonexistent/staging"),
        std::os::fd::OwnedFd::from(null),
    )];
    let e = client
        .adopt(&bogus)
        .expect_err("an unknown session must be refused");
    assert!(e.to_string().contains("no record"), "{e}");
    write_within(target.join("c"), Duration::from_secs(10)).expect("served after the refusal");
    assert_eq!(env.sessions().sessions.len(), 1);
}

#[test]
fn a_stale_socket_or_file_at_the_socket_path_is_replaced() {
    common::require_root_and_fuse();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("mounter.sock");
    // A socket nobody listens on any more.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    for round in 0..2 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cachalot"))
            .args(["mounter", "--socket"])
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let client = cachalot::mounter::MounterClient::new(&socket, Duration::from_secs(5));
        let up = common::wait_until(Duration::from_secs(20), || client.list().is_ok());
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        assert!(
            up,
            "round {round}: no mounter on a stale socket: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Round 2: a plain file in the way.
        let _ = std::fs::remove_file(&socket);
        std::fs::write(&socket, b"in the way").unwrap();
    }
}

/// Takeovers under fio (random 4 KiB reads + sequential 1 MiB writes, in
/// the pod's mount namespace): fio sees no error. The predecessor stops
/// its readers before it exits (`MountedFs::stop_serving`). Prints the longest
/// completion latency fio saw: the pause a takeover costs an application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeovers_under_fio_load_cause_no_error() {
    common::require_root_and_fuse();
    let mut env = Env::with_mounter();
    let target = staged_volume(&env).await;
    let report_path =
        std::env::temp_dir().join(format!("cachalot-fio-{}.json", std::process::id()));
    let fio = Command::new("unshare")
        .args(["--mount", "--propagation", "slave", "--", "fio"])
        .arg(format!("--directory={}", target.display()))
        .args([
            "--output-format=json",
            "--time_based",
            "--runtime=9",
            "--group_reporting=0",
            "--name=randread",
            "--rw=randread",
            "--bs=4k",
            "--size=32m",
            "--ioengine=psync",
            "--name=seqwrite",
            "--rw=write",
            "--bs=1m",
            "--size=64m",
            "--ioengine=psync",
        ])
        .arg(format!("--output={}", report_path.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fio (Debian package fio)");
    // Ten takeovers while fio runs: each successor's readers are fresh,
    // the case where a predecessor exiting during the kernel's copy of a
    // 1 MiB WRITE into a reader's buffer made that write fail with EIO.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        take_over(&mut env);
    }
    let result = tokio::task::block_in_place(|| fio.wait_with_output()).expect("fio");
    let report = std::fs::read_to_string(&report_path).unwrap_or_default();
    let _ = std::fs::remove_file(&report_path);
    assert!(
        result.status.success(),
        "fio failed ({}): {}\n{report}\n{}",
        result.status,
        String::from_utf8_lossy(&result.stderr),
        env.mounter_logs()
    );
    let json: serde_json::Value = serde_json::from_str(&report).expect("fio JSON");
    for job in json["jobs"].as_array().expect("jobs") {
        let name = job["jobname"].as_str().unwrap_or("?");
        assert_eq!(job["error"].as_i64(), Some(0), "{name}: {job}");
        let max_ms = |dir: &str| job[dir]["clat_ns"]["max"].as_f64().unwrap_or(0.0) / 1e6;
        eprintln!(
            "fio {name}: read {:.0} IOPS, write {:.0} MiB/s; longest read {:.1} ms, longest write {:.1} ms",
            job["read"]["iops"].as_f64().unwrap_or(0.0),
            job["write"]["bw"].as_f64().unwrap_or(0.0) / 1024.0,
            max_ms("read"),
            max_ms("write"),
        );
    }
}

/// Threads of this process blocked in read(2) on a `/dev/fuse` descriptor
/// (from /proc: the syscall each thread is in and its first argument).
fn threads_reading_dev_fuse() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            let syscall = std::fs::read_to_string(task.path().join("syscall")).unwrap_or_default();
            let mut fields = syscall.split_whitespace();
            let (Some(nr), Some(fd)) = (fields.next(), fields.next()) else {
                return false;
            };
            let fd = i64::from_str_radix(fd.trim_start_matches("0x"), 16).unwrap_or(-1);
            nr == libc::SYS_read.to_string()
                && std::fs::read_link(format!("/proc/self/fd/{fd}"))
                    .is_ok_and(|target| target == Path::new("/dev/fuse"))
        })
        .count()
}

/// A process that ends with its sessions left to a successor (takeover,
/// stop) first gets its FUSE readers out of read(2): killed while the
/// kernel copies a request into its buffer, a reader makes the kernel fail
/// that request with EIO (a pod's 1 MiB write failed that way, rarely,
/// during takeovers). After `stop_serving` no thread is left in read(2).
#[test]
fn a_stopped_session_leaves_no_thread_reading_dev_fuse() {
    common::require_root_and_fuse();
    let dir = tempfile::tempdir().expect("temp dir");
    let (backing, cache, mnt) = (
        dir.path().join("backing"),
        dir.path().join("cache"),
        dir.path().join("mnt"),
    );
    for d in [&backing, &cache, &mnt] {
        std::fs::create_dir_all(d).expect("dirs");
    }
    let source =
        cachalot::backend::Source::parse(&format!("file://{}", backing.display())).expect("source");
    let mounted = cachalot::mount::start(cachalot::mount::MountOptions {
        skip_preflight: true,
        keepable: true,
        ..cachalot::mount::MountOptions::new(source, mnt.clone(), cache)
    })
    .expect("mounted");
    // Detached whatever happens below, without a request to it (none
    // would be answered): its readers will not read again, and dropping
    // it would wait for them. The connection ends with this process.
    struct Abandon<'a>(&'a Path, Option<cachalot::mount::MountedFs>);
    impl Drop for Abandon<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
            std::mem::forget(self.1.take());
        }
    }
    let session = Abandon(&mnt, Some(mounted));
    std::fs::write(mnt.join("f"), b"served").expect("write through the mount");
    let deadline = Instant::now() + Duration::from_secs(5);
    while threads_reading_dev_fuse() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        threads_reading_dev_fuse() > 0,
        "the session's readers wait in read(2)"
    );
    let mounted = session.1.as_ref().expect("mounted");
    assert!(mounted.stop_serving(Duration::from_secs(1)));
    assert_eq!(
        threads_reading_dev_fuse(),
        0,
        "a reader is still in read(2) after stop_serving"
    );
    drop(session);
}

/// A read-only volume serves fully cached files by FUSE passthrough; a
/// takeover hands the kernel's backing ids over, so descriptors opened
/// before it keep reading and new opens of the same files work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_opens_survive_a_takeover() {
    use cachalot::csi::proto::volume_capability::access_mode::Mode;
    use std::io::Read;
    common::require_root_and_fuse();
    let mut env = Env::with_mounter();
    let source = env.source_url();
    let mut c = env.clients().await;
    let vol = c.create("pvc-ro", params(&[("source", &source)])).await;
    let data = pattern(3 << 20, 11);
    std::fs::write(env.source().join("pvc-ro/model.bin"), &data).unwrap();
    let staging = env.staging("ro");
    let target = env.target("pod-ro");
    let mut stage = stage_req(&vol, &staging);
    stage.volume_capability = Some(mount_cap(Mode::MultiNodeReaderOnly));
    c.node.node_stage_volume(stage).await.expect("NodeStage");
    let mut publish = publish_req(&vol, &staging, &target, true);
    publish.volume_capability = Some(mount_cap(Mode::MultiNodeReaderOnly));
    c.node
        .node_publish_volume(publish)
        .await
        .expect("NodePublish");
    let file = target.join("model.bin");
    let served_pages = || {
        let stats: serde_json::Value = serde_json::from_slice(
            &common::getxattr(&target, cachalot::fs::STATS_XATTR).expect("stats"),
        )
        .unwrap();
        common::stat_u64(&stats, "cache_hits") + common::stat_u64(&stats, "cache_misses")
    };
    // Read whole until an open is handed to the kernel (the file is first
    // assembled in the cache and verified): then reads leave our counters
    // alone.
    let mut before = None;
    for _ in 0..50 {
        let mut f = std::fs::File::open(&file).unwrap();
        common::drop_caches();
        let served = served_pages();
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        assert!(back == data);
        if served_pages() == served {
            before = Some(f);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut before = before.expect("no open was served by passthrough");
    use std::io::Seek;
    before.rewind().unwrap();
    take_over(&mut env);
    common::drop_caches();
    let served = served_pages();
    let mut back = Vec::new();
    before
        .read_to_end(&mut back)
        .expect("a descriptor opened before the takeover");
    assert!(back == data, "read through the old descriptor differs");
    assert_eq!(
        served_pages(),
        served,
        "the kernel read the old descriptor directly"
    );
    // New opens reuse the backing id handed over (the kernel allows one
    // per inode): they work, and are served by the kernel too.
    for _ in 0..2 {
        common::drop_caches();
        let served = served_pages();
        let again = std::fs::read(&file).expect("an open after the takeover");
        assert!(again == data, "read after the takeover differs");
        assert_eq!(
            served_pages(),
            served,
            "a new open after the takeover was not passthrough"
        );
    }
}

/// `cachalot sessions --quiet` (the DaemonSet's probes) succeeds only when
/// a mounter of its own version answers.
#[test]
fn the_probe_does_not_count_another_versions_mounter() {
    use cachalot::mounter::protocol::{Response, SessionList};
    use cachalot::mounter::wire;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("mounter.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let server = std::thread::spawn(move || {
        for version in [cachalot::csi::DRIVER_VERSION, "0.0.0-older"] {
            let (mut s, _) = listener.accept().unwrap();
            let _: serde_json::Value = wire::read_frame(&mut s).unwrap();
            let list = SessionList {
                mounter_pid: 1,
                instance: "x".into(),
                mounter_version: version.into(),
                sessions: Vec::new(),
            };
            wire::write_frame(&mut s, &Response::Sessions(list)).unwrap();
        }
    });
    let probe = || {
        Command::new(env!("CARGO_BIN_EXE_cachalot"))
            .args(["sessions", "--quiet", "--socket"])
            .arg(&socket)
            .output()
            .unwrap()
    };
    assert!(probe().status.success(), "same version: ready");
    let other = probe();
    assert!(
        !other.status.success(),
        "another version's mounter is not ours"
    );
    assert!(String::from_utf8_lossy(&other.stderr).contains("0.0.0-older"));
    server.join().unwrap();
}

/// The mounter and the node plugin die together (both containers, or a
/// node restart of both): the sessions are lost — the keeper died with its
/// descriptors — and the restarted plugin stages the volume afresh through
/// the new mounter and binds it into the published targets again: new
/// opens in the pod work again (what was open is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_mounter_and_plugin_die_together_the_volume_is_staged_afresh() {
    common::require_root_and_fuse();
    let mut env = Env::with_mounter();
    let target = staged_volume(&env).await;
    std::fs::write(target.join("before"), b"written before").unwrap();
    env.kill_plugin();
    env.mounter.take().expect("a mounter runs").kill();
    let mut dead = Vec::new();
    let path = target.join("before");
    let probe = std::thread::spawn(move || std::fs::read(path).map_err(|e| e.raw_os_error()));
    std::thread::sleep(Duration::from_millis(300));
    if probe.is_finished() {
        dead.push(probe.join().unwrap());
    }
    assert!(
        matches!(
            dead.first(),
            Some(Err(Some(libc::ENOTCONN | libc::ECONNABORTED)))
        ),
        "with mounter and keeper gone the session is dead: {dead:?}"
    );
    let mounter = env.start_mounter();
    env.mounter = Some(mounter);
    env.wait_for_mounter();
    env.start_plugin();
    // The plugin re-establishes the staged volume before it serves.
    assert_eq!(
        std::fs::read(target.join("before")).expect("the target serves again"),
        b"written before"
    );
    write_within(target.join("after"), Duration::from_secs(10)).expect("writes work again");
    assert_eq!(env.sessions().sessions.len(), 1);
}

/// A session the new mounter cannot rebuild (its journal is gone) is let
/// go by the keeper: its mount fails at once instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_cannot_be_recovered_fails_instead_of_hanging() {
    common::require_root_and_fuse();
    let mut env = Env::with_mounter();
    let target = staged_volume(&env).await;
    env.mounter.take().expect("a mounter runs").kill();
    std::fs::remove_dir_all(env.path("mounter-state/journal")).unwrap();
    let mounter = env.start_mounter();
    env.mounter = Some(mounter);
    env.wait_for_mounter();
    let e = write_within(target.join("x"), Duration::from_secs(10))
        .expect_err("a lost session cannot serve");
    assert!(
        !e.contains("no answer"),
        "the mount waits forever instead of failing: {e}"
    );
    assert!(env.sessions().sessions.is_empty());
    assert!(
        env.log().contains("could not rebuild some kept sessions"),
        "{}",
        env.log()
    );
}

/// `--metrics-addr` on the plugin and the mounter: the plugin counts CSI
/// calls by method and code; the mounter serves the volume's counters
/// (labelled with its volume ID). After a live takeover with the
/// predecessor idling as deployed (`--idle-after-handover`), requests are
/// all answered (the idle process reads no /dev/fuse request) and the
/// successor serves the metrics on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_survive_a_takeover_and_the_idle_predecessor_takes_no_request() {
    common::require_root_and_fuse();
    let (plugin_port, mounter_port) = (common::free_port(), common::free_port());
    let mut env = Env::with_mounter_metrics(Some((plugin_port, mounter_port)));
    let target = staged_volume(&env).await;
    std::fs::write(target.join("f"), b"metrics").unwrap();
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"metrics");
    // A refused call is counted with its code.
    let mut c = env.clients().await;
    let mut bad = stage_req(
        &cachalot::csi::proto::Volume::default(),
        &env.staging("none"),
    );
    bad.volume_id.clear();
    assert!(c.node.node_stage_volume(bad).await.is_err());
    let plugin = common::scrape(plugin_port);
    assert!(
        common::sample(
            &plugin,
            "cachalot_csi_requests_total",
            "method=\"NodeStageVolume\",code=\"OK\""
        ) >= 1,
        "{plugin}"
    );
    assert_eq!(
        common::sample(
            &plugin,
            "cachalot_csi_requests_total",
            "method=\"NodeStageVolume\",code=\"InvalidArgument\""
        ),
        1
    );
    assert!(
        plugin.contains("cachalot_csi_request_duration_seconds_bucket{"),
        "{plugin}"
    );
    let volume_id = env.sessions().sessions[0].volume_id.clone();
    let label = format!("volume=\"{volume_id}\"");
    let before = common::scrape(mounter_port);
    assert!(
        common::sample(&before, "cachalot_read_bytes_total", &label) >= 7,
        "{before}"
    );
    let mut predecessor = env.mounter.take().expect("a mounter runs");
    env.mounter = Some(env.start_mounter());
    env.wait_for_takeover();
    // Only the successor serves the FUSE session now, so only its counters
    // see this write: the port shows them once the successor holds it.
    // Bounded: a predecessor still reading /dev/fuse would take requests
    // and never answer them.
    let (done, finished) = std::sync::mpsc::channel();
    let big_path = target.join("big");
    std::thread::spawn(move || {
        let _ = done.send(std::fs::write(big_path, vec![7u8; 1 << 20]));
    });
    finished
        .recv_timeout(Duration::from_secs(30))
        .expect("a write after the takeover hung")
        .expect("writing after the takeover");
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        match common::try_scrape(mounter_port) {
            Ok(body)
                if body.contains(&label)
                    && common::sample(&body, "cachalot_write_bytes_total", &label) >= 1 << 20 =>
            {
                break body
            }
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!(
                "the successor never served the volume's metrics ({other:?}):\n{}",
                env.mounter_logs()
            ),
        }
    };
    assert!(after.contains("cachalot_cache_hits_total{"), "{after}");
    assert!(
        matches!(predecessor.child.try_wait(), Ok(None)),
        "the predecessor should idle, not exit"
    );
    // The idle process dies with its container, as the mounter would have.
    let unshare = predecessor.child.id();
    let idle: Vec<u32> =
        std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
    assert_eq!(idle.len(), 1, "the container's process: {idle:?}");
    predecessor.kill();
    common::wait_until(Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{}", idle[0])).exists()
    });
    assert!(
        !std::path::Path::new(&format!("/proc/{}", idle[0])).exists(),
        "the idle predecessor outlived its container"
    );
}

/// The StorageClass parameter `warm`: NodeStage starts loading the matching
/// files in the background (progress in the mounter's metrics and log);
/// once done, the pod reads them without one backend byte. An unstage
/// during a warm-up stops it and unmounts cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_attribute_loads_the_volume_at_stage_and_unstage_stops_it() {
    common::require_root_and_fuse();
    let mounter_port = common::free_port();
    let env = Env::with_mounter_metrics(Some((common::free_port(), mounter_port)));
    let mut c = env.clients().await;
    let p = params(&[("source", &env.source_url()), ("warm", "*.bin, keep/**")]);
    let vol = c.create("pvc-warm", p).await;
    assert_eq!(vol.volume_context["warm"], "*.bin,keep/**");
    let dir = env.source().join("pvc-warm");
    std::fs::create_dir_all(dir.join("keep/deep")).unwrap();
    std::fs::create_dir_all(dir.join("other")).unwrap();
    let data = |n: usize, seed: u8| (0..n).map(|i| (i as u8) ^ seed).collect::<Vec<u8>>();
    std::fs::write(dir.join("a.bin"), data(3 << 20, 1)).unwrap();
    std::fs::write(dir.join("other/b.bin"), data(1 << 20, 2)).unwrap();
    std::fs::write(dir.join("keep/deep/c.dat"), data(1 << 20, 3)).unwrap();
    std::fs::write(dir.join("skip.txt"), data(1 << 20, 4)).unwrap();
    let (staging, target) = stage_and_publish(&env, &mut c, &vol, "warm", "pod-warm").await;
    let label = format!("volume=\"{}\"", vol.volume_id);
    let deadline = Instant::now() + Duration::from_secs(60);
    let warmed = loop {
        let body = common::try_scrape(mounter_port).unwrap_or_default();
        if body.contains(&label) && common::sample(&body, "cachalot_warm_running", &label) == 0 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the warm-up never finished:\n{body}\n{}",
            env.mounter_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let gauge = |name: &str| common::sample(&warmed, name, &label);
    assert_eq!(gauge("cachalot_warm_wanted_files"), 3, "{warmed}");
    assert_eq!(gauge("cachalot_warm_done_files"), 3);
    assert_eq!(gauge("cachalot_warm_failed_files"), 0);
    assert_eq!(gauge("cachalot_warm_wanted_bytes"), 5 << 20);
    assert_eq!(gauge("cachalot_warm_done_bytes"), 5 << 20);
    let fetched = gauge("cachalot_backend_read_bytes_total");
    assert!(fetched >= 5 << 20, "{warmed}");
    assert!(env.mounter_logs().contains("warm-up finished"));
    // The pod's reads of the warmed files come from the cache alone.
    assert_eq!(
        std::fs::read(target.join("a.bin")).unwrap(),
        data(3 << 20, 1)
    );
    assert_eq!(
        std::fs::read(target.join("keep/deep/c.dat")).unwrap(),
        data(1 << 20, 3)
    );
    assert_eq!(
        std::fs::read(target.join("other/b.bin")).unwrap(),
        data(1 << 20, 2)
    );
    let after = common::scrape(mounter_port);
    assert_eq!(
        common::sample(&after, "cachalot_backend_read_bytes_total", &label),
        fetched,
        "reads after the warm-up went to the backend:\n{after}"
    );
    // What no glob matches was not loaded.
    std::fs::read(target.join("skip.txt")).unwrap();
    let last = common::scrape(mounter_port);
    assert!(common::sample(&last, "cachalot_backend_read_bytes_total", &label) > fetched);

    // A warm-up still running when the volume is unstaged.
    std::fs::File::create(dir.join("huge.bin"))
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    c.unpublish(&vol, &target).await;
    c.unstage(&vol, &staging).await;
    c.stage(&vol, &staging).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.unstage(&vol, &staging).await;
    assert!(!is_mounted(&staging));
    let logs = env.mounter_logs();
    assert!(logs.contains("warm-up stopped (unmounting)"), "{logs}");
    assert!(!logs.contains("detaching lazily"), "{logs}");
}

/// The PVC size is a quota: a write past it fails with EDQUOT and loses
/// nothing; NodeGetVolumeStats reports the volume, not the backing disk;
/// ControllerExpandVolume + NodeExpandVolume raise it while the pod writes,
/// and the raised capacity survives a mounter takeover and a repeated
/// NodeStage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_is_enforced_and_expands_live() {
    use cachalot::csi::proto::*;
    common::require_root_and_fuse();
    const MIB: i64 = 1 << 20;
    let mut env = Env::with_mounter();
    let mut c = env.clients().await;
    let mut req = create_req("pvc-quota", params(&[("source", &env.source_url())]));
    req.capacity_range = Some(CapacityRange {
        required_bytes: 2 * MIB,
        limit_bytes: 0,
    });
    let vol = c
        .controller
        .create_volume(req)
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .expect("volume");
    assert_eq!(vol.capacity_bytes, 2 * MIB);
    let (staging, target) = stage_and_publish(&env, &mut c, &vol, "quota", "pod-quota").await;
    let kept = vec![9u8; MIB as usize];
    std::fs::write(target.join("kept"), &kept).unwrap();
    let err = std::fs::write(target.join("big"), vec![1u8; 2 * MIB as usize]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err:?}");
    assert_eq!(std::fs::read(target.join("kept")).unwrap(), kept);
    let total = |stats: NodeGetVolumeStatsResponse| {
        stats
            .usage
            .iter()
            .find(|u| u.unit == volume_usage::Unit::Bytes as i32)
            .map(|u| u.total)
            .expect("byte usage")
    };
    let stats_req = NodeGetVolumeStatsRequest {
        volume_id: vol.volume_id.clone(),
        volume_path: target.display().to_string(),
        staging_target_path: String::new(),
    };
    let stats = c
        .node
        .node_get_volume_stats(stats_req.clone())
        .await
        .unwrap();
    assert_eq!(total(stats.into_inner()), 2 * MIB);

    let expand = |bytes: i64| CapacityRange {
        required_bytes: bytes,
        limit_bytes: 0,
    };
    let answer = c
        .controller
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            capacity_range: Some(expand(8 * MIB)),
            ..Default::default()
        })
        .await
        .expect("ControllerExpandVolume")
        .into_inner();
    assert!(answer.node_expansion_required);
    assert_eq!(answer.capacity_bytes, 8 * MIB);
    let node_answer = c
        .node
        .node_expand_volume(NodeExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: target.display().to_string(),
            capacity_range: Some(expand(8 * MIB)),
            ..Default::default()
        })
        .await
        .expect("NodeExpandVolume")
        .into_inner();
    assert_eq!(node_answer.capacity_bytes, 8 * MIB);
    std::fs::write(target.join("big"), vec![1u8; 4 * MIB as usize]).unwrap();
    let stats = c
        .node
        .node_get_volume_stats(stats_req.clone())
        .await
        .unwrap();
    assert_eq!(total(stats.into_inner()), 8 * MIB);

    // A successor serves the volume with the expanded capacity.
    let predecessor = env.mounter.take().expect("a mounter runs");
    env.mounter = Some(env.start_mounter());
    env.wait_for_takeover();
    let _ = predecessor.wait_exit(Duration::from_secs(30));
    let stats = c
        .node
        .node_get_volume_stats(stats_req.clone())
        .await
        .unwrap();
    assert_eq!(total(stats.into_inner()), 8 * MIB, "{}", env.mounter_logs());
    let err = std::fs::write(target.join("too-big"), vec![1u8; 4 * MIB as usize]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err:?}");
    // The kubelet staging again with the volume's original context is fine.
    c.stage(&vol, &staging).await;
    // Unknown paths and volumes are NOT_FOUND.
    let mut wrong = NodeExpandVolumeRequest {
        volume_id: vol.volume_id.clone(),
        volume_path: env.path("nowhere").display().to_string(),
        capacity_range: Some(expand(16 * MIB)),
        ..Default::default()
    };
    let code = c
        .node
        .node_expand_volume(wrong.clone())
        .await
        .unwrap_err()
        .code();
    assert_eq!(code, tonic::Code::NotFound);
    wrong.volume_path = target.display().to_string();
    wrong.capacity_range = None;
    let code = c.node.node_expand_volume(wrong).await.unwrap_err().code();
    assert_eq!(code, tonic::Code::InvalidArgument);
}

/// An inline (ephemeral) volume: NodePublish alone stages it (through the
/// mounter) and binds it; NodeUnpublish unmounts it, ends the session and
/// leaves the kubelet's directory empty. The data stays in the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_volume_lives_from_publish_to_unpublish() {
    use cachalot::csi::proto::*;
    common::require_root_and_fuse();
    let env = Env::with_mounter();
    let mut c = env.clients().await;
    std::fs::create_dir_all(env.source().join("shared/data")).unwrap();
    std::fs::write(env.source().join("shared/data/hello"), b"inline").unwrap();
    let target = env.target("pod-inline");
    let context = |pairs: &[(&str, &str)]| {
        let mut ctx = params(pairs);
        ctx.insert("csi.storage.k8s.io/ephemeral".into(), "true".into());
        ctx.insert("csi.storage.k8s.io/pod.name".into(), "pod-inline".into());
        ctx.insert("csi.storage.k8s.io/pod.namespace".into(), "team-c".into());
        ctx
    };
    let source = env.source_url();
    let publish = NodePublishVolumeRequest {
        volume_id: "csi-4f1e2d".into(),
        target_path: target.display().to_string(),
        volume_capability: Some(rwx()),
        volume_context: context(&[("source", &source), ("subDir", "shared/data")]),
        ..Default::default()
    };
    c.node
        .node_publish_volume(publish.clone())
        .await
        .expect("NodePublish of an inline volume");
    c.node
        .node_publish_volume(publish.clone())
        .await
        .expect("NodePublish again (idempotent)");
    assert_eq!(std::fs::read(target.join("hello")).unwrap(), b"inline");
    std::fs::write(target.join("from-pod"), b"written").unwrap();
    assert_eq!(
        std::fs::read(env.source().join("shared/data/from-pod")).unwrap(),
        b"written"
    );
    assert_eq!(env.sessions().sessions.len(), 1);
    let stats = c
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: publish.volume_id.clone(),
            volume_path: publish.target_path.clone(),
            staging_target_path: String::new(),
        })
        .await
        .expect("NodeGetVolumeStats of an inline volume")
        .into_inner();
    assert!(!stats.volume_condition.expect("condition").abnormal);

    c.node
        .node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: publish.volume_id.clone(),
            target_path: publish.target_path.clone(),
        })
        .await
        .expect("NodeUnpublish");
    assert!(!is_mounted(&target));
    let volume_dir = target.parent().unwrap();
    let left: Vec<_> = std::fs::read_dir(volume_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "left in the kubelet's volume dir: {left:?}"
    );
    assert!(mounts_below(&env.root.path().join("kubelet")).is_empty());
    assert!(env.sessions().sessions.is_empty());
    assert_eq!(
        std::fs::read(env.source().join("shared/data/from-pod")).unwrap(),
        b"written"
    );

    // Attributes are checked like a StorageClass's.
    let mut bad = publish.clone();
    bad.volume_context = context(&[("source", &source), ("subDir", "${pvc.metadata.name}")]);
    let err = c.node.node_publish_volume(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("subDir"), "{}", err.message());
    let mut bad = publish.clone();
    bad.volume_context = context(&[("sauce", &source)]);
    let err = c.node.node_publish_volume(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("sauce"), "{}", err.message());
}
