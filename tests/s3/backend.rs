//! The S3 backend through the `Backend` trait, against SeaweedFS on
//! 127.0.0.1 (SigV4 enforced), checked with an independent object_store
//! client. Run `scripts/install-s3-deps.sh` first.

use crate::support_s3;

use std::sync::Arc;

use bytes::Bytes;
use cachalot::backend::s3::{Credentials, S3Backend};
use cachalot::backend::{
    AttrChanges, Backend, BackendPath, ErrorKind, FileKind, Identity, WriteStart,
};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use support_s3::proxy::{HoldingProxy, LET_THROUGH};
use support_s3::S3Server;

const ME: Identity = Identity::new(1000, 1000);

fn p(s: &str) -> BackendPath {
    BackendPath::parse(s).unwrap()
}

fn key(s: &str) -> StorePath {
    StorePath::parse(s).unwrap()
}

async fn get(store: &AmazonS3, k: &str) -> Option<Vec<u8>> {
    match store.get(&key(k)).await {
        Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("get {k}: {e}"),
    }
}

async fn put(store: &AmazonS3, k: &str, data: impl Into<Bytes>) {
    store
        .put(&key(k), PutPayload::from(data.into()))
        .await
        .unwrap();
}

/// Keys under `prefix` as the server has them (recursive).
async fn keys_under(store: &AmazonS3, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = store
        .list(Some(&key(prefix)))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    keys.sort();
    keys
}

pub(crate) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Fixture {
    server: S3Server,
    staging: tempfile::TempDir,
    store: AmazonS3,
}

impl Fixture {
    fn new() -> Fixture {
        let server = S3Server::seaweed();
        let store = server.store();
        Fixture {
            server,
            staging: tempfile::tempdir().unwrap(),
            store,
        }
    }

    fn backend(&self, prefix: &str) -> S3Backend {
        self.server.backend(prefix, self.staging.path())
    }
}

async fn write_file(b: &S3Backend, path: &str, start: WriteStart, ops: &[(u64, &[u8])]) {
    let w = b.begin_write(ME, &p(path), start, 0o644).await.unwrap();
    for (off, data) in ops {
        w.write_at(*off, data).await.unwrap();
    }
    w.publish(&p(path)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation() {
    let fx = Fixture::new();
    let b = fx.backend("vol");
    let s = &fx.store;

    // Root of an empty prefix exists.
    let root = b.stat(ME, &BackendPath::root()).await.unwrap();
    assert_eq!(root.kind, FileKind::Directory);
    assert_eq!(root.mode, 0o755);
    assert!(b.list(ME, &BackendPath::root()).await.unwrap().is_empty());

    // mkdir writes a marker; the empty directory exists and lists.
    let d = b.mkdir(ME, &p("d"), 0o700).await.unwrap();
    assert_eq!(d.kind, FileKind::Directory);
    let markers = keys_under(s, "vol").await;
    assert!(markers.iter().any(|k| k == "vol/d"), "{markers:?}");
    assert_eq!(b.stat(ME, &p("d")).await.unwrap().kind, FileKind::Directory);
    assert!(b.list(ME, &p("d")).await.unwrap().is_empty());
    let err = b.mkdir(ME, &p("d"), 0o755).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::AlreadyExists);

    // A new file is invisible until published.
    let w = b
        .begin_write(ME, &p("d/f"), WriteStart::Empty, 0o644)
        .await
        .unwrap();
    w.write_at(0, b"hello").await.unwrap();
    assert_eq!(get(s, "vol/d/f").await, None);
    assert_eq!(w.read_at(0, 100).await.unwrap(), b"hello");
    let meta = w.publish(&p("d/f")).await.unwrap();
    assert_eq!(meta.size, 5);
    assert_eq!(get(s, "vol/d/f").await.unwrap(), b"hello");

    // stat / list / read.
    let st = b.stat(ME, &p("d/f")).await.unwrap();
    assert_eq!(
        (st.kind, st.size, st.mode, st.uid, st.gid),
        (FileKind::File, 5, 0o644, 1000, 1000)
    );
    assert_eq!(
        st.version, meta.version,
        "publish and stat agree on the version"
    );
    let names: Vec<String> = b
        .list(ME, &p("d"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec!["f"]);
    let r = b.open_read(ME, &p("d/f")).await.unwrap();
    assert_eq!(r.size(), 5);
    assert_eq!(r.read_at(1, 3).await.unwrap(), &b"ell"[..]);
    assert_eq!(r.read_at(4, 100).await.unwrap(), &b"o"[..]);
    assert!(r.read_at(5, 10).await.unwrap().is_empty());

    // Append (copy-on-write base fetched lazily), overwrite in the middle, truncate.
    write_file(&b, "d/f", WriteStart::CopyExisting, &[(5, b" world")]).await;
    assert_eq!(get(s, "vol/d/f").await.unwrap(), b"hello world");
    write_file(&b, "d/f", WriteStart::CopyExisting, &[(0, b"J")]).await;
    assert_eq!(get(s, "vol/d/f").await.unwrap(), b"Jello world");
    let w = b
        .begin_write(ME, &p("d/f"), WriteStart::CopyExisting, 0o644)
        .await
        .unwrap();
    w.truncate(4).await.unwrap();
    w.truncate(6).await.unwrap(); // extension reads as zeros, not old bytes
    w.publish(&p("d/f")).await.unwrap();
    assert_eq!(get(s, "vol/d/f").await.unwrap(), b"Jell\0\0");
    write_file(&b, "d/f", WriteStart::Empty, &[(0, b"new")]).await;
    assert_eq!(get(s, "vol/d/f").await.unwrap(), b"new");

    // Abort leaves the old object.
    let w = b
        .begin_write(ME, &p("d/f"), WriteStart::CopyExisting, 0o644)
        .await
        .unwrap();
    w.write_at(0, b"XXXXXXXX").await.unwrap();
    w.abort(&p("d/f")).await;
    assert_eq!(get(s, "vol/d/f").await.unwrap(), b"new");

    // Wrong kinds.
    assert_eq!(
        b.rmdir(ME, &p("d")).await.unwrap_err().kind,
        ErrorKind::NotEmpty
    );
    assert_eq!(
        b.rmdir(ME, &p("d/f")).await.unwrap_err().kind,
        ErrorKind::NotADirectory
    );
    assert_eq!(
        b.unlink(ME, &p("d")).await.unwrap_err().kind,
        ErrorKind::IsADirectory
    );
    assert_eq!(
        b.list(ME, &p("d/f")).await.unwrap_err().kind,
        ErrorKind::NotADirectory
    );
    assert_eq!(
        b.open_read(ME, &p("d")).await.err().unwrap().kind,
        ErrorKind::IsADirectory
    );
    assert_eq!(
        b.stat(ME, &p("nope")).await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    assert_eq!(
        b.unlink(ME, &p("nope")).await.unwrap_err().kind,
        ErrorKind::NotFound
    );

    // Rename a file: copy then delete; no_replace honoured.
    write_file(&b, "other", WriteStart::Empty, &[(0, b"o")]).await;
    let err = b
        .rename(ME, &p("d/f"), &p("other"), true)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::AlreadyExists);
    b.rename(ME, &p("d/f"), &p("d/g"), false).await.unwrap();
    assert_eq!(get(s, "vol/d/f").await, None);
    assert_eq!(get(s, "vol/d/g").await.unwrap(), b"new");
    b.rename(ME, &p("d/g"), &p("other"), false).await.unwrap();
    assert_eq!(get(s, "vol/other").await.unwrap(), b"new");
    // d lost its last file but stays a directory (marker kept).
    assert_eq!(b.stat(ME, &p("d")).await.unwrap().kind, FileKind::Directory);

    // Unlink then rmdir.
    b.unlink(ME, &p("other")).await.unwrap();
    assert_eq!(get(s, "vol/other").await, None);
    b.rmdir(ME, &p("d")).await.unwrap();
    assert_eq!(
        b.stat(ME, &p("d")).await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    assert!(keys_under(s, "vol").await.is_empty());

    // A directory implied by a deeper key (made by another client) exists;
    // removing its only file keeps it.
    put(s, "vol/x/y/z", "deep").await;
    assert_eq!(
        b.stat(ME, &p("x/y")).await.unwrap().kind,
        FileKind::Directory
    );
    b.unlink(ME, &p("x/y/z")).await.unwrap();
    assert_eq!(
        b.stat(ME, &p("x/y")).await.unwrap().kind,
        FileKind::Directory
    );
    assert!(b.list(ME, &p("x/y")).await.unwrap().is_empty());

    // What S3 cannot do.
    let caps = b.capabilities();
    assert!(!caps.hard_links && !caps.symlinks && !caps.special_files);
    assert_eq!(
        b.link(ME, &p("x"), &p("l")).await.unwrap_err().kind,
        ErrorKind::NotPermitted
    );
    assert_eq!(
        b.mknod(ME, &p("ff"), cachalot::backend::SpecialFile::Fifo, 0o644)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::NotPermitted
    );
    assert_eq!(
        b.symlink(ME, &p("sl"), "x").await.unwrap_err().kind,
        ErrorKind::NotPermitted
    );

    // chmod/chown: fixed; no-ops succeed, changes are EPERM; times are a no-op.
    write_file(&b, "attrs", WriteStart::Empty, &[(0, b"a")]).await;
    let same = AttrChanges {
        mode: Some(0o644),
        uid: Some(1000),
        ..Default::default()
    };
    b.set_attr(ME, &p("attrs"), &same).await.unwrap();
    let chmod = AttrChanges {
        mode: Some(0o600),
        ..Default::default()
    };
    let err = b.set_attr(ME, &p("attrs"), &chmod).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotPermitted);
    assert!(err.to_string().contains("--file-mode"), "{err}");
    let times = AttrChanges {
        mtime: Some(std::time::SystemTime::UNIX_EPOCH),
        ..Default::default()
    };
    b.set_attr(ME, &p("attrs"), &times).await.unwrap();

    let stats = b.statfs(ME).await.unwrap();
    assert!(stats.blocks_available > 0 && stats.name_max == 255);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_20000_keys_completely() {
    let fx = Fixture::new();
    let b = fx.backend("big");
    const N: usize = 20_000;
    let store = Arc::new(fx.store.clone());
    futures::stream::iter(0..N)
        .map(|i| {
            let store = Arc::clone(&store);
            async move {
                store
                    .put(
                        &key(&format!("big/many/f{i:05}")),
                        PutPayload::from_static(b"x"),
                    )
                    .await
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    put(&fx.store, "big/many/sub/inner", "i").await;
    let started = std::time::Instant::now();
    let entries = b.list(ME, &p("many")).await.unwrap();
    eprintln!(
        "listed {} entries in {:?}",
        entries.len(),
        started.elapsed()
    );
    assert_eq!(entries.len(), N + 1);
    let mut names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), N + 1, "no duplicates across pages");
    assert_eq!(names[0], "f00000");
    assert_eq!(names[N - 1], "f19999");
    let sub = entries.iter().find(|e| e.name == "sub").unwrap();
    assert_eq!(sub.meta.kind, FileKind::Directory);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renames_a_directory_of_50_objects() {
    let fx = Fixture::new();
    let b = fx.backend("ren");
    b.mkdir(ME, &p("src"), 0o755).await.unwrap();
    b.mkdir(ME, &p("src/empty"), 0o755).await.unwrap();
    for i in 0..48 {
        put(
            &fx.store,
            &format!("ren/src/{}/f{i}", i % 4),
            format!("content {i}"),
        )
        .await;
    }
    let before = keys_under(&fx.store, "ren/src").await;
    assert_eq!(before.len(), 50, "48 files and 2 directory markers");
    b.rename(ME, &p("src"), &p("dst"), false).await.unwrap();
    assert!(keys_under(&fx.store, "ren/src").await.is_empty());
    assert_eq!(
        b.stat(ME, &p("src")).await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    for i in 0..48 {
        let got = get(&fx.store, &format!("ren/dst/{}/f{i}", i % 4))
            .await
            .unwrap();
        assert_eq!(got, format!("content {i}").as_bytes());
    }
    // Markers moved too: the empty directory survived the rename.
    assert_eq!(
        b.stat(ME, &p("dst/empty")).await.unwrap().kind,
        FileKind::Directory
    );
    let mut names: Vec<String> = b
        .list(ME, &p("dst"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    assert_eq!(names, vec!["0", "1", "2", "3", "empty"]);

    // Onto a non-empty directory: ENOTEMPTY; onto a file: ENOTDIR.
    b.mkdir(ME, &p("other"), 0o755).await.unwrap();
    put(&fx.store, "ren/other/x", "x").await;
    assert_eq!(
        b.rename(ME, &p("dst"), &p("other"), false)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::NotEmpty
    );
    assert_eq!(
        b.rename(ME, &p("dst"), &p("other/x"), false)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::NotADirectory
    );
    assert_eq!(
        b.rename(ME, &p("dst"), &p("dst/0/in"), false)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::InvalidArgument
    );

    // Beyond the cap: EXDEV, nothing moved.
    let mut cfg = fx.server.config("ren", fx.staging.path());
    cfg.options.rename_dir_max_objects = 10;
    let capped = S3Backend::new(cfg).unwrap();
    let err = capped
        .rename(ME, &p("dst"), &p("moved"), false)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::CrossDevice);
    assert!(err.to_string().contains("more than 10 objects"), "{err}");
    assert_eq!(keys_under(&fx.store, "ren/dst").await.len(), 50);
    assert!(keys_under(&fx.store, "ren/moved").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_write_into_the_middle_of_20_mib() {
    let fx = Fixture::new();
    let b = fx.backend("rw");
    let original = pseudo_random(20 << 20, 42);
    put(&fx.store, "rw/big", original.clone()).await;

    let w = b
        .begin_write(ME, &p("big"), WriteStart::CopyExisting, 0o644)
        .await
        .unwrap();
    assert_eq!(w.size(), 20 << 20);
    let patch = pseudo_random(300_000, 7);
    let at = (7 << 20) + 12345;
    w.write_at(at, &patch).await.unwrap();
    // Reading the pending file mixes the patch and fetched base bytes.
    let around = w.read_at(at - 10, 20).await.unwrap();
    assert_eq!(&around[..10], &original[at as usize - 10..at as usize]);
    assert_eq!(&around[10..], &patch[..10]);
    // The object is untouched until publish.
    assert_eq!(get(&fx.store, "rw/big").await.unwrap(), original);
    w.publish(&p("big")).await.unwrap();

    let mut expected = original;
    expected[at as usize..at as usize + patch.len()].copy_from_slice(&patch);
    let got = get(&fx.store, "rw/big").await.unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "published content differs");
    let r = b.open_read(ME, &p("big")).await.unwrap();
    assert_eq!(r.read_at(at, 100).await.unwrap(), &patch[..100]);
    // No upload left behind, no staging file left behind.
    assert!(std::fs::read_dir(fx.staging.path())
        .unwrap()
        .flatten()
        .all(|d| {
            std::fs::read_dir(d.path())
                .map(|mut e| e.next().is_none())
                .unwrap_or(true)
        }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_objects_are_detected() {
    let fx = Fixture::new();
    let b = fx.backend("ver");
    put(&fx.store, "ver/f", vec![1u8; 1000]).await;
    let r = b.open_read(ME, &p("f")).await.unwrap();
    assert_eq!(r.read_at(0, 10).await.unwrap(), vec![1u8; 10]);
    let w = b
        .begin_write(ME, &p("f"), WriteStart::CopyExisting, 0o644)
        .await
        .unwrap();
    w.write_at(0, b"mine").await.unwrap();
    put(&fx.store, "ver/f", vec![2u8; 1000]).await;
    // The reader is pinned to the old ETag: ESTALE, not mixed content.
    let err = r.read_at(10, 10).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Stale, "{err}");
    // A copy-on-write publish whose base changed fails and keeps the new object.
    let err = w.publish(&p("f")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Stale, "{err}");
    w.abort(&p("f")).await;
    assert_eq!(get(&fx.store, "ver/f").await.unwrap(), vec![2u8; 1000]);
}

/// `read_stream` hands a GET's body on as it arrives (several buffers for
/// megabytes), the same bytes as `read_at`, short only at the end of the
/// object, and pinned to the reader's version like `read_at`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_reads_arrive_in_pieces_and_stay_on_their_version() {
    let fx = Fixture::new();
    let b = fx.backend("stream");
    let data = pseudo_random(20 << 20, 5);
    put(&fx.store, "stream/f", data.clone()).await;
    let r = b.open_read(ME, &p("f")).await.unwrap();
    let (offset, len) = ((1 << 20) + 7, 12 << 20);
    let buffers: Vec<Bytes> = r
        .read_stream(offset as u64, len)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(buffers.len() > 1, "12 MiB came in one buffer: not streamed");
    assert!(
        buffers.concat() == data[offset..offset + len],
        "streamed bytes differ"
    );
    let tail: Vec<Bytes> = r
        .read_stream((data.len() - 100) as u64, 1 << 20)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(tail.concat() == data[data.len() - 100..], "tail differs");
    put(&fx.store, "stream/f", pseudo_random(20 << 20, 6)).await;
    let err = match r.read_stream(0, 8 << 20).await {
        Err(e) => e,
        Ok(stream) => stream.try_collect::<Vec<Bytes>>().await.unwrap_err(),
    };
    assert_eq!(err.kind, ErrorKind::Stale, "{err}");
}

/// A streamed read whose body is cut part-way after its object was
/// replaced: what came before the cut is the old version's, then
/// object_store asks again for the rest with the same If-Match, and the
/// stream ends in one error, ESTALE naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_read_cut_after_its_object_changed_ends_in_estale() {
    let fx = Fixture::new();
    let proxy = HoldingProxy::start(fx.server.port);
    let cfg = S3Server::config_for_port(proxy.port(), "cut", fx.staging.path());
    let b = S3Backend::new(cfg).unwrap();
    let data = pseudo_random(8 << 20, 7);
    put(&fx.store, "cut/f", data.clone()).await;
    let r = b.open_read(ME, &p("f")).await.unwrap();
    let mut stream = r.read_stream(0, 8 << 20).await.unwrap();
    let mut got = Vec::new();
    while got.len() < LET_THROUGH {
        got.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
    assert!(got == data[..got.len()], "bytes before the cut differ");
    put(&fx.store, "cut/f", pseudo_random(8 << 20, 8)).await;
    // (The proxy must outlive the retry: it is the way to the server.)
    let _proxy = tokio::task::spawn_blocking(move || {
        proxy.wait_held(1, std::time::Duration::from_secs(10));
        proxy.cut();
        proxy
    })
    .await
    .unwrap();
    let rest: Vec<_> = stream.collect().await;
    let (last, before) = rest
        .split_last()
        .expect("the stream ended without an error");
    assert!(before.iter().all(|item| item.is_ok()), "{rest:?}");
    let err = last
        .as_ref()
        .expect_err("the stream ended without an error");
    assert_eq!(err.kind, ErrorKind::Stale, "{err}");
    assert!(err.to_string().contains("cut/f"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_bucket_errors_are_clear() {
    let fx = Fixture::new();
    let mut cfg = fx.server.config("p", fx.staging.path());
    cfg.credentials = Credentials::new(support_s3::KEY_ID, "wrong-secret", None);
    let b = S3Backend::new(cfg).unwrap();
    let err = b.stat(ME, &BackendPath::root()).await.unwrap_err();
    let text = err.to_string();
    assert_eq!(err.kind, ErrorKind::PermissionDenied, "{text}");
    assert!(text.contains("credentials are wrong"), "{text}");
    assert!(text.contains(support_s3::KEY_ID), "{text}");
    assert!(!text.contains("wrong-secret"), "secret leaked: {text}");
    let pre = b.preflight().await.unwrap_err().to_string();
    assert!(
        pre.contains("LIST") && pre.contains("right access key id"),
        "{pre}"
    );

    let mut cfg = fx.server.config("p", fx.staging.path());
    cfg.credentials = Credentials::new("unknownkey", "whatever", None);
    let err = S3Backend::new(cfg)
        .unwrap()
        .stat(ME, &BackendPath::root())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("credentials are wrong"), "{err}");

    let mut cfg = fx.server.config("p", fx.staging.path());
    cfg.bucket = "no-such-bucket".into();
    let err = S3Backend::new(cfg)
        .unwrap()
        .stat(ME, &BackendPath::root())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(
        err.to_string().contains("'no-such-bucket' does not exist"),
        "{err}"
    );

    // Preflight with good credentials passes and leaves nothing behind.
    let good = fx.backend("pf");
    good.preflight().await.unwrap();
    assert!(keys_under(&fx.store, "pf").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_is_eio_after_retries() {
    let staging = tempfile::tempdir().unwrap();
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // No server runs on this port.
    let mut cfg = S3Server::config_for_port(dead_port, "p", staging.path());
    cfg.options.max_retries = 2;
    cfg.options.retry_timeout = std::time::Duration::from_secs(5);
    let b = S3Backend::new(cfg).unwrap();
    let started = std::time::Instant::now();
    let err = b.stat(ME, &p("f")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert_eq!(err.errno(), libc::EIO);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_writes_stream_into_a_multipart_upload() {
    let fx = Fixture::new();
    let b = fx.backend("seq"); // part size 5 MiB
    let data = pseudo_random(13 << 20, 3);

    // Sequential: parts upload while writing; nothing visible until publish.
    let w = b
        .begin_write(ME, &p("s"), WriteStart::Empty, 0o644)
        .await
        .unwrap();
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        w.write_at((i << 20) as u64, chunk).await.unwrap();
    }
    let pending = b.pending_uploads().await.unwrap();
    assert_eq!(
        pending.len(),
        1,
        "a streamed upload is in progress: {pending:?}"
    );
    assert_eq!(pending[0].0, "seq/s");
    assert_eq!(get(&fx.store, "seq/s").await, None);
    w.publish(&p("s")).await.unwrap();
    assert!(get(&fx.store, "seq/s").await.unwrap() == data);
    assert!(b.pending_uploads().await.unwrap().is_empty());

    // Going back below the streamed offset abandons (aborts) the stream;
    // publish still uploads the right content.
    let w = b
        .begin_write(ME, &p("r"), WriteStart::Empty, 0o644)
        .await
        .unwrap();
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        w.write_at((i << 20) as u64, chunk).await.unwrap();
    }
    assert_eq!(b.pending_uploads().await.unwrap().len(), 1);
    w.write_at(100, b"REWRITE").await.unwrap();
    assert!(
        b.pending_uploads().await.unwrap().is_empty(),
        "stream aborted"
    );
    w.publish(&p("r")).await.unwrap();
    let mut expected = data.clone();
    expected[100..107].copy_from_slice(b"REWRITE");
    assert!(get(&fx.store, "seq/r").await.unwrap() == expected);

    // Abort of a streaming write leaves no upload and no object.
    let w = b
        .begin_write(ME, &p("gone"), WriteStart::Empty, 0o644)
        .await
        .unwrap();
    w.write_at(0, &data[..6 << 20]).await.unwrap();
    assert_eq!(b.pending_uploads().await.unwrap().len(), 1);
    w.abort(&p("gone")).await;
    assert!(b.pending_uploads().await.unwrap().is_empty());
    assert_eq!(get(&fx.store, "seq/gone").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_is_eacces_with_context() {
    let fx = Fixture::new();
    put(&fx.store, "ad/existing", "readable").await;
    let mut cfg = fx.server.config("ad", fx.staging.path());
    cfg.credentials = Credentials::new(support_s3::READER_KEY_ID, support_s3::READER_SECRET, None);
    let reader = S3Backend::new(cfg).unwrap();

    // Reading is allowed.
    let r = reader.open_read(ME, &p("existing")).await.unwrap();
    assert_eq!(r.read_at(0, 100).await.unwrap(), &b"readable"[..]);
    // Writing is not: EACCES naming bucket, key and access key id.
    let w = reader
        .begin_write(ME, &p("new"), WriteStart::Empty, 0o644)
        .await
        .unwrap();
    w.write_at(0, b"x").await.unwrap();
    let err = w.publish(&p("new")).await.unwrap_err();
    w.abort(&p("new")).await;
    let text = err.to_string();
    assert_eq!(err.kind, ErrorKind::PermissionDenied, "{text}");
    assert_eq!(err.errno(), libc::EACCES);
    assert!(text.contains("access denied (AccessDenied)"), "{text}");
    assert!(
        text.contains("'test'") && text.contains("'ad/new'"),
        "{text}"
    );
    assert!(text.contains(support_s3::READER_KEY_ID), "{text}");
    assert!(!text.contains(support_s3::READER_SECRET), "{text}");
    // Preflight explains which operation failed and the likely fix.
    let pre = reader.preflight().await.unwrap_err().to_string();
    assert!(pre.contains("PUT of a probe object"), "{pre}");
    assert!(
        pre.contains("s3:PutObject on arn:aws:s3:::test/ad/*"),
        "{pre}"
    );
    assert!(pre.contains(support_s3::READER_KEY_ID), "{pre}");
}

/// copy_file is a CopyObject: the copy is whole and the source stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_file_copies_inside_the_bucket() {
    let fx = Fixture::new();
    let b = fx.backend("cp");
    let data = pseudo_random(3 << 20, 7);
    put(&fx.store, "cp/src.bin", data.clone()).await;
    assert!(b.copy_file(ME, &p("src.bin"), &p("dst.bin")).await.unwrap());
    assert_eq!(get(&fx.store, "cp/dst.bin").await.unwrap(), data);
    assert_eq!(get(&fx.store, "cp/src.bin").await.unwrap(), data);
    let missing = b.copy_file(ME, &p("nope"), &p("x")).await.unwrap_err();
    assert_eq!(missing.kind, cachalot::backend::ErrorKind::NotFound);
}

/// Above the single-copy limit (5 GiB on S3; lowered to 6 MiB here) files
/// are copied in UploadPartCopy parts: renaming a file or a directory
/// holding one and copying one keep every byte, and the result is a
/// multipart object (its ETag ends in "-<parts>"), not a refused copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_above_the_single_copy_limit_are_copied_in_parts() {
    let fx = Fixture::new();
    let mut cfg = fx.server.config("big", fx.staging.path());
    cfg.options.single_copy_max = 6 << 20;
    let b = S3Backend::new(cfg).unwrap();
    let data = pseudo_random(20 << 20, 11);
    put(&fx.store, "big/src.bin", data.clone()).await;
    let parts_of = |k: &'static str| {
        let store = fx.store.clone();
        async move {
            let head = store.head(&key(k)).await.unwrap();
            let etag = head.e_tag.unwrap_or_default();
            etag.trim_matches('"')
                .rsplit_once('-')
                .map(|(_, n)| n.to_string())
        }
    };
    b.rename(ME, &p("src.bin"), &p("moved.bin"), false)
        .await
        .unwrap();
    assert_eq!(get(&fx.store, "big/moved.bin").await.unwrap(), data);
    assert!(get(&fx.store, "big/src.bin").await.is_none());
    assert_eq!(parts_of("big/moved.bin").await.as_deref(), Some("4"));

    assert!(b
        .copy_file(ME, &p("moved.bin"), &p("copy.bin"))
        .await
        .unwrap());
    assert_eq!(get(&fx.store, "big/copy.bin").await.unwrap(), data);
    assert_eq!(parts_of("big/copy.bin").await.as_deref(), Some("4"));

    b.mkdir(ME, &p("d"), 0o755).await.unwrap();
    b.rename(ME, &p("copy.bin"), &p("d/in.bin"), false)
        .await
        .unwrap();
    b.rename(ME, &p("d"), &p("e"), false).await.unwrap();
    assert_eq!(get(&fx.store, "big/e/in.bin").await.unwrap(), data);
    assert!(get(&fx.store, "big/d/in.bin").await.is_none());
}
