//! SeaweedFS killed (SIGKILL) and restarted on the same ports and data in
//! the middle of a sequential read and of a large write through a real
//! mount (the S3 twin of nfs_restart.rs). Requests are retried for up to
//! 60 s, so the read completes with exactly the object's bytes and the write
//! is published whole (never a partial object under the final key) and is
//! on the server; the daemon still serves, and the next mount leaves no
//! multipart upload or staging file behind. Two backend-level cases pin down
//! what happens when retries do run out during an outage (a publish redoes a
//! broken streamed upload; an upload that could not be aborted is aborted by
//! the next mount).
//!
//! Every test runs its own SeaweedFS (own ports, own data dir), so killing
//! it disturbs no other test. They still run one at a time: each moves
//! 64 MiB through FUSE next to a `weed mini`, and on a small machine two at
//! once would mostly measure CPU contention.

use crate::common;
use crate::support_s3;

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cachalot::backend::{Backend, BackendPath, Identity, WriteStart};
use common::{close_checked as close, pattern};
use futures::TryStreamExt;
use object_store::aws::AmazonS3;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use support_s3::mount::Mounted;
use support_s3::{PreparedRestart, S3Server};

static SERIAL: Mutex<()> = Mutex::new(());
const ME: Identity = Identity::new(1000, 1000);
const MIB: usize = 1 << 20;
const SIZE: usize = 64 * MIB;
const PREFIX: &str = "vol";
/// How long the server stays dead: longer than a connection refusal takes
/// to come back, like a real server restart.
const DOWN: Duration = Duration::from_secs(1);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The object as the server has it (`None` = no such key), read with an
/// independent client.
fn get(store: &AmazonS3, key: &str) -> Option<Vec<u8>> {
    rt().block_on(async {
        match store.get(&StorePath::parse(key).unwrap()).await {
            Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("get {key}: {e}"),
        }
    })
}

fn put(store: &AmazonS3, key: &str, data: &[u8]) {
    rt().block_on(store.put(
        &StorePath::parse(key).unwrap(),
        PutPayload::from(data.to_vec()),
    ))
    .unwrap();
}

/// Every key under `prefix/`, sorted.
fn keys(store: &AmazonS3, prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = rt()
        .block_on(
            store
                .list(Some(&StorePath::parse(prefix).unwrap()))
                .map_ok(|m| m.location.to_string())
                .try_collect::<Vec<_>>(),
        )
        .unwrap();
    out.sort();
    out
}

/// Multipart uploads in progress under the volume's prefix.
fn pending_uploads(server: &S3Server) -> Vec<(String, String)> {
    let staging = tempfile::tempdir().unwrap();
    let backend = server.backend(PREFIX, staging.path());
    rt().block_on(backend.pending_uploads()).unwrap()
}

/// Names in a directory of the mount, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// Files left in the mount's S3 staging directory (`<cache>/s3-staging`).
fn staging_files(cache: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(volumes) = fs::read_dir(cache.join("s3-staging")) else {
        return out;
    };
    for volume in volumes.flatten() {
        for file in fs::read_dir(volume.path()).into_iter().flatten().flatten() {
            out.push(file.path().display().to_string());
        }
    }
    out
}

/// Multipart uploads journaled in a staging root (`<cache>/s3-staging`),
/// as `(key, upload id)`: what the next mount will abort.
fn journaled_uploads(staging_root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for volume in fs::read_dir(staging_root).into_iter().flatten().flatten() {
        for file in fs::read_dir(volume.path()).into_iter().flatten().flatten() {
            if file.path().extension().is_some_and(|e| e == "upload") {
                let text = fs::read_to_string(file.path()).unwrap();
                let mut lines = text.lines();
                if let (Some(key), Some(id)) = (lines.next(), lines.next()) {
                    out.push((key.to_string(), id.to_string()));
                }
            }
        }
    }
    out
}

/// Wait until the mount's start-up cleanup left no multipart upload under
/// the prefix and no staging file in `cache` (it runs in the background).
fn wait_for_cleanup(server: &S3Server, cache: &Path, m: &Mounted) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(pending_uploads(server).is_empty() && staging_files(cache).is_empty()) {
        assert!(
            Instant::now() < deadline,
            "left behind: uploads {:?}, staging files {:?}\n{}",
            pending_uploads(server),
            staging_files(cache),
            m.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn multi_thread_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn p(s: &str) -> BackendPath {
    BackendPath::parse(s).unwrap()
}

/// Wait until `progress` reaches `at`, then kill the server, keep it down
/// for `DOWN` and restart it (prepared before the application opened its
/// file, see `prepare_restart`). Returns when the server serves again.
fn bounce_server_at(
    server: &mut S3Server,
    restart: PreparedRestart,
    progress: &AtomicUsize,
    at: usize,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.load(Ordering::Acquire) < at {
        assert!(
            Instant::now() < deadline,
            "no progress before the restart point"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (started, at) = (Instant::now(), progress.load(Ordering::Acquire));
    restart.kill_and_restart(server, DOWN);
    eprintln!(
        "server killed at {} MiB, serving again after {:?}",
        at / MIB,
        started.elapsed()
    );
}

/// Join the application thread, failing (not hanging) if it is stuck: a
/// request may wait out the 60 s retry budget, never longer.
fn join_within<T>(thread: std::thread::JoinHandle<T>, m: &Mounted) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !thread.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the application is stuck in the mount:\n{}",
            m.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    thread.join().unwrap()
}

#[test]
fn a_sequential_read_survives_a_server_restart() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut server = S3Server::seaweed();
    let store = server.store();
    let data = pattern(SIZE, 1);
    put(&store, "vol/data.bin", &data);
    let cache = tempfile::tempdir().unwrap();
    let m = Mounted::start(&server, PREFIX, cache.path(), &[]);
    let restart = server.prepare_restart();
    let progress = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (path, progress) = (m.path("data.bin"), Arc::clone(&progress));
        std::thread::spawn(move || {
            let mut out = Vec::with_capacity(SIZE);
            let mut f = match fs::File::open(path) {
                Ok(f) => f,
                Err(e) => return (out, Some(e)),
            };
            let mut buf = vec![0u8; MIB];
            loop {
                match f.read(&mut buf) {
                    Ok(0) => return (out, None),
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) => return (out, Some(e)),
                }
                progress.store(out.len(), Ordering::Release);
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    // Read-ahead is at most 16 pages (MiB) ahead: most of the file is
    // still to be fetched when the server dies.
    bounce_server_at(&mut server, restart, &progress, 16 * MIB);
    let (read, error) = join_within(reader, &m);
    let log = m.log_text();
    eprintln!(
        "read across the restart: {} MiB read, then {error:?}; {} retries logged",
        read.len() / MIB,
        log.matches("backing off").count()
    );
    // No byte served was wrong, and (requests are retried for up to 60 s)
    // none was refused: the restart is ridden out.
    assert!(
        read[..] == data[..read.len()],
        "data read across the restart differs"
    );
    if let Some(e) = error {
        panic!(
            "read failed after {} bytes: {e}\n{log}\n{}",
            read.len(),
            server.log_tail()
        );
    }
    assert_eq!(read.len(), SIZE);
    assert!(
        log.contains("backing off"),
        "no request met the dead server:\n{log}"
    );
    // The daemon still serves the file, whole and right, after the restart.
    let again = fs::read(m.path("data.bin")).unwrap();
    assert!(again == data, "data read after the restart differs");
}

#[test]
fn a_write_across_a_server_restart_is_published_whole() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut server = S3Server::seaweed();
    let store = server.store();
    let cache = tempfile::tempdir().unwrap();
    let data = Arc::new(pattern(SIZE, 2));
    let m = Mounted::start(&server, PREFIX, cache.path(), &[]);
    let restart = server.prepare_restart();
    let progress = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (path, progress, data) = (m.path("out.bin"), Arc::clone(&progress), Arc::clone(&data));
        std::thread::spawn(move || {
            let mut f = fs::File::create(path)?;
            for (i, chunk) in data.chunks(MIB).enumerate() {
                f.write_all(chunk)?;
                progress.store((i + 1) * MIB, Ordering::Release);
                std::thread::sleep(Duration::from_millis(3));
            }
            close(f)
        })
    };
    // With the default 16 MiB parts, part 1 is streaming by then.
    bounce_server_at(&mut server, restart, &progress, 16 * MIB);
    let result = join_within(writer, &m);
    let log = m.log_text();
    let published = get(&store, "vol/out.bin");
    eprintln!(
        "write across the restart: close {result:?}, object {}; {} retries logged, \
         streamed upload redone: {}",
        published
            .as_ref()
            .map_or("absent".to_string(), |p| format!("{} bytes", p.len())),
        log.matches("backing off").count(),
        log.contains("uploading the staging file instead")
    );
    // Never a partial object: the whole, or nothing if close said so.
    match &result {
        Ok(()) => {
            let published = published.expect("close succeeded but nothing was published");
            assert_eq!(published.len(), SIZE);
            assert!(published == *data, "published object differs");
        }
        Err(e) => assert!(
            published.is_none(),
            "close failed ({e}) but an object was published"
        ),
    }
    // And, requests being retried for up to 60 s, close succeeds.
    assert!(
        result.is_ok(),
        "close failed: {result:?}\n{log}\n{}",
        server.log_tail()
    );
    assert!(
        log.contains("backing off"),
        "no request met the dead server:\n{log}"
    );

    // The daemon still serves: a new write and read through the same mount.
    fs::write(m.path("after.txt"), b"after the restart").unwrap();
    assert_eq!(fs::read(m.path("after.txt")).unwrap(), b"after the restart");
    assert_eq!(get(&store, "vol/after.txt").unwrap(), b"after the restart");

    // The next mount on the same cache dir (this one stopped, so what it
    // journaled counts as a dead writer's) leaves nothing behind.
    drop(m);
    let m = Mounted::start(&server, PREFIX, cache.path(), &[]);
    wait_for_cleanup(&server, cache.path(), &m);
    assert_eq!(names(m.mnt.path()), ["after.txt", "out.bin"]);
    assert_eq!(keys(&store, PREFIX), ["vol/after.txt", "vol/out.bin"]);
    // What close acknowledged reads back whole through a mount with an
    // empty cache.
    let fresh_cache = tempfile::tempdir().unwrap();
    let fresh = Mounted::start(&server, PREFIX, fresh_cache.path(), &["--read-only"]);
    assert!(fs::read(fresh.path("out.bin")).unwrap() == *data);
}

/// Streaming is best effort: parts that failed while the application was
/// still writing (the server was restarting) must not fail the publish once
/// the server is back, since the staging file holds the whole content.
#[test]
fn a_streamed_upload_broken_by_a_restart_is_redone_at_publish() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut server = S3Server::seaweed();
    let store = server.store();
    let cache = tempfile::tempdir().unwrap();
    // 5 MiB parts, 2 retries: a part fails well within the outage.
    let backend = server.backend(PREFIX, &cache.path().join("s3-staging"));
    let restart = server.prepare_restart();
    let rt = multi_thread_rt();
    let data = pattern(24 * MIB, 3);
    let w = rt
        .block_on(backend.begin_write(ME, &p("f"), WriteStart::Empty, 0o644))
        .unwrap();
    // The first part starts streaming; the server dies under it.
    rt.block_on(w.write_at(0, &data[..5 * MIB])).unwrap();
    server.kill();
    // Writes are local: they succeed, and their parts fail.
    rt.block_on(w.write_at(5 * MIB as u64, &data[5 * MIB..]))
        .unwrap();
    std::thread::sleep(DOWN);
    restart.start(&mut server);
    assert_eq!(get(&store, "vol/f"), None, "visible before publish");
    let meta = rt
        .block_on(w.publish(&p("f")))
        .unwrap_or_else(|e| panic!("publish after the restart failed: {e}"));
    assert_eq!(meta.size, data.len() as u64);
    assert!(
        get(&store, "vol/f").unwrap() == data,
        "published object differs"
    );
    assert_eq!(
        rt.block_on(backend.pending_uploads()).unwrap(),
        vec![],
        "the broken upload was not aborted"
    );
}

/// A stream abandoned while the server is down cannot be aborted then; its
/// journal record must survive the retry's own upload, so that the next
/// mount aborts it (S3 keeps an unaborted upload's parts, invisible and
/// billed, until someone aborts it; unjournaled ones wait a day for the
/// sweep of foreign uploads).
#[test]
fn an_upload_that_could_not_be_aborted_is_aborted_by_the_next_mount() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut server = S3Server::seaweed();
    let store = server.store();
    let cache = tempfile::tempdir().unwrap();
    let staging = cache.path().join("s3-staging");
    let backend = server.backend(PREFIX, &staging);
    let restart = server.prepare_restart();
    let rt = multi_thread_rt();
    let data = pattern(48 * MIB, 4);
    let w = rt
        .block_on(backend.begin_write(ME, &p("g"), WriteStart::Empty, 0o644))
        .unwrap();
    rt.block_on(w.write_at(0, &data[..5 * MIB])).unwrap();
    let streaming = rt.block_on(backend.pending_uploads()).unwrap();
    assert_eq!(streaming.len(), 1, "streaming did not start");
    server.kill();
    // More than 4 parts in flight: the writer waits for the oldest, which
    // failed, abandons the stream and cannot abort it.
    for chunk in (5 * MIB..data.len()).step_by(5 * MIB) {
        let end = (chunk + 5 * MIB).min(data.len());
        rt.block_on(w.write_at(chunk as u64, &data[chunk..end]))
            .unwrap();
    }
    std::thread::sleep(DOWN);
    restart.start(&mut server);
    rt.block_on(w.publish(&p("g"))).unwrap();
    assert!(
        get(&store, "vol/g").unwrap() == data,
        "published object differs"
    );
    // Whatever is still pending on the server is journaled.
    let pending = rt.block_on(backend.pending_uploads()).unwrap();
    let journaled = journaled_uploads(&staging);
    eprintln!("pending after publish: {pending:?}, journaled: {journaled:?}");
    for upload in &pending {
        assert!(
            journaled.contains(upload),
            "upload {upload:?} left on the server and journaled nowhere: {journaled:?}"
        );
    }
    drop(w);
    drop(backend);
    // The next mount (another process: the writer, this test, is not a
    // cachalot process, so its records count as a dead writer's) aborts
    // them and removes the staging files.
    let m = Mounted::start(&server, PREFIX, cache.path(), &[]);
    wait_for_cleanup(&server, cache.path(), &m);
    assert_eq!(names(m.mnt.path()), ["g"]);
    assert_eq!(keys(&store, PREFIX), ["vol/g"]);
}
