//! The S3 backend through a real FUSE mount of the cachalot binary, checked
//! against the bucket with an independent object_store client. Needs root
//! (FUSE) and `scripts/install-s3-deps.sh`.

use crate::common;
use crate::support_posix;
use crate::support_s3;

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cachalot::backend::s3::S3Backend;
use object_store::aws::AmazonS3;
use object_store::path::Path as StorePath;
use object_store::{ObjectStoreExt, PutPayload};
use support_s3::mount::{is_mounted, mount_command, mount_source_command, Mounted};
use support_s3::S3Server;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Blocking GET through the independent client (`None` = no such key).
pub(crate) fn get(store: &AmazonS3, key: &str) -> Option<Vec<u8>> {
    rt().block_on(async {
        match store.get(&StorePath::parse(key).unwrap()).await {
            Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("get {key}: {e}"),
        }
    })
}

pub(crate) fn put(store: &AmazonS3, key: &str, data: Vec<u8>) {
    rt().block_on(store.put(&StorePath::parse(key).unwrap(), PutPayload::from(data)))
        .unwrap();
}

pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

#[test]
fn posix_operations_through_the_mount() {
    let server = S3Server::seaweed();
    let store = server.store();
    let cache = tempfile::tempdir().unwrap();
    let m = Mounted::start(&server, "vol", cache.path(), &[]);

    // create + read
    fs::write(m.path("a.txt"), b"hello").unwrap();
    assert_eq!(get(&store, "vol/a.txt").unwrap(), b"hello");
    assert_eq!(fs::read(m.path("a.txt")).unwrap(), b"hello");
    let md = fs::metadata(m.path("a.txt")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(md.mode() & 0o7777, 0o644);
    assert_eq!(md.len(), 5);

    // overwrite (O_TRUNC)
    fs::write(m.path("a.txt"), b"bye").unwrap();
    assert_eq!(get(&store, "vol/a.txt").unwrap(), b"bye");

    // append
    let mut f = OpenOptions::new()
        .append(true)
        .open(m.path("a.txt"))
        .unwrap();
    f.write_all(b" for now").unwrap();
    drop(f);
    assert_eq!(get(&store, "vol/a.txt").unwrap(), b"bye for now");

    // random write into an existing object (copy-on-write of the rest)
    let original = pattern(3 << 20, 1);
    put(&store, "vol/big.bin", original.clone());
    let f = OpenOptions::new()
        .write(true)
        .open(m.path("big.bin"))
        .unwrap();
    f.write_all_at(b"PATCH", 1_500_000).unwrap();
    drop(f);
    let mut expected = original.clone();
    expected[1_500_000..1_500_005].copy_from_slice(b"PATCH");
    assert!(get(&store, "vol/big.bin").unwrap() == expected);
    assert!(fs::read(m.path("big.bin")).unwrap() == expected);
    // Its pages went to the page store with O_DIRECT (v3, data aligned).
    let pages = cache.path().join("pages");
    assert!(
        common::wait_until(Duration::from_secs(5), || common::page_magics(&pages)
            .iter()
            .any(|m| m == "CCHLPG03")),
        "{:?}",
        common::page_magics(&pages)
    );

    // truncate (path-based: published at once), shrink then grow
    let f = OpenOptions::new()
        .write(true)
        .open(m.path("big.bin"))
        .unwrap();
    f.set_len(1000).unwrap();
    drop(f);
    assert_eq!(get(&store, "vol/big.bin").unwrap(), &original[..1000]);
    std::process::Command::new("truncate")
        .args(["-s", "1010"])
        .arg(m.path("big.bin"))
        .status()
        .unwrap();
    let got = get(&store, "vol/big.bin").unwrap();
    assert_eq!(&got[..1000], &original[..1000]);
    assert_eq!(&got[1000..], &[0u8; 10]);

    // seek + write past the end (hole reads as zeros)
    let mut f = OpenOptions::new()
        .write(true)
        .open(m.path("a.txt"))
        .unwrap();
    f.seek(SeekFrom::Start(16)).unwrap();
    f.write_all(b"!").unwrap();
    drop(f);
    assert_eq!(get(&store, "vol/a.txt").unwrap(), b"bye for now\0\0\0\0\0!");

    // mkdir / rmdir
    fs::create_dir(m.path("d")).unwrap();
    assert!(m.path("d").is_dir());
    fs::write(m.path("d/inner"), b"i").unwrap();
    assert_eq!(errno_of(fs::remove_dir(m.path("d"))), libc::ENOTEMPTY);
    assert_eq!(get(&store, "vol/d/inner").unwrap(), b"i");

    // rename of a file and of a directory
    fs::rename(m.path("a.txt"), m.path("d/b.txt")).unwrap();
    assert_eq!(get(&store, "vol/a.txt"), None);
    assert!(get(&store, "vol/d/b.txt").unwrap().starts_with(b"bye"));
    fs::rename(m.path("d"), m.path("e")).unwrap();
    assert_eq!(get(&store, "vol/d/inner"), None);
    assert_eq!(get(&store, "vol/e/inner").unwrap(), b"i");
    let mut names: Vec<String> = fs::read_dir(m.path("e"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["b.txt", "inner"]);

    // unlink; the directory survives its last entry; then rmdir
    fs::remove_file(m.path("e/inner")).unwrap();
    fs::remove_file(m.path("e/b.txt")).unwrap();
    assert_eq!(get(&store, "vol/e/inner"), None);
    assert!(m.path("e").is_dir());
    fs::remove_dir(m.path("e")).unwrap();
    assert!(!m.path("e").exists());

    // chmod to another mode is refused; to the same mode accepted
    use std::os::unix::fs::PermissionsExt;
    let perm = |mode| fs::Permissions::from_mode(mode);
    assert_eq!(
        errno_of(fs::set_permissions(m.path("big.bin"), perm(0o600))),
        libc::EPERM
    );
    fs::set_permissions(m.path("big.bin"), perm(0o644)).unwrap();
}

#[test]
fn what_s3_cannot_do_fails_with_a_clear_errno() {
    let server = S3Server::seaweed();
    let cache = tempfile::tempdir().unwrap();
    let m = Mounted::start(&server, "caps", cache.path(), &[]);
    fs::write(m.path("f"), b"x").unwrap();
    assert_eq!(
        errno_of(fs::hard_link(m.path("f"), m.path("g"))),
        libc::EPERM
    );
    let fifo = nix::unistd::mkfifo(
        &m.path("p"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    );
    assert_eq!(fifo, Err(nix::errno::Errno::EPERM));
    assert_eq!(
        errno_of(std::os::unix::fs::symlink("f", m.path("s"))),
        libc::EPERM
    );
    assert!(!m.path("g").exists() && !m.path("p").exists() && !m.path("s").exists());
    let dev = nix::sys::stat::mknod(
        &m.path("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
        libc::makedev(1, 3),
    );
    assert_eq!(dev, Err(nix::errno::Errno::EPERM), "device nodes");

    // fallocate: mode 0 extends the object (published at close); modes that
    // need real space management are EOPNOTSUPP.
    {
        use std::os::fd::AsRawFd;
        let f = OpenOptions::new().write(true).open(m.path("f")).unwrap();
        // SAFETY: a valid descriptor.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 10_000) };
        assert_eq!(
            rc,
            0,
            "fallocate mode 0: {}",
            std::io::Error::last_os_error()
        );
        let keep = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 20_000) };
        assert_eq!(keep, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EOPNOTSUPP)
        );
    }
    let mut expect = b"x".to_vec();
    expect.resize(10_000, 0);
    assert!(get(&server.store(), "caps/f").unwrap() == expect);

    support_posix::copy_file_range_copies(&m.path(""), None);
    assert!(
        !m.log_text().contains("Not Implemented"),
        "the kernel fell back"
    );
    assert!(get(&server.store(), "caps/copy-dst").is_some());

    // st_ino is the key's: the same after the kernel forgot the file.
    use std::os::unix::fs::MetadataExt;
    let ino = fs::metadata(m.path("f")).unwrap().ino();
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    assert_eq!(fs::metadata(m.path("f")).unwrap().ino(), ino);

    // No hidden names on S3 (a rename is a copy): an open file unlinked
    // before its data was cached has nothing left to read: ESTALE, as NFS
    // says for a file deleted by another client (not ENOENT, not EIO).
    put(&server.store(), "caps/big", pattern(3 << 20, 7));
    let mut f = fs::File::open(m.path("big")).unwrap();
    fs::remove_file(m.path("big")).unwrap();
    let mut buf = vec![0u8; 4096];
    assert_eq!(errno_of(f.read(&mut buf)), libc::ESTALE);
    assert!(get(&server.store(), "caps/big").is_none());
}

/// Copy argv[1] to argv[2] (opened O_TRUNC) 1 MiB at a time, slowly.
const WRITER: &str = "
import sys, time
with open(sys.argv[1], 'rb') as s, open(sys.argv[2], 'wb', buffering=0) as d:
    while True:
        b = s.read(1 << 20)
        if not b:
            break
        d.write(b)
        time.sleep(0.04)
";

/// Large sequential writes reach the staging file with O_DIRECT and are
/// uploaded from memory; rewrites, inside the part held in memory and
/// below what already streamed, must still give the bytes last written,
/// read back while the file is open and once published.
#[test]
fn rewrites_of_a_sequential_write_keep_the_last_bytes_written() {
    let server = S3Server::seaweed();
    let store = server.store();
    let cache = tempfile::tempdir().unwrap();
    let m = Mounted::start(&server, "rewrite", cache.path(), &["--part-size", "5MiB"]);
    let mib = 1usize << 20;
    let mut want = pattern(17 * mib + 123, 31);
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(m.path("f"))
        .unwrap();
    for (i, chunk) in want[..12 * mib].chunks(mib).enumerate() {
        f.write_all_at(chunk, (i * mib) as u64).unwrap();
    }
    // Part 3 (10-15 MiB) is being filled: rewrite inside it.
    let patch = pattern(300_000, 77);
    f.write_all_at(&patch, (10 * mib + 4096) as u64).unwrap();
    want[10 * mib + 4096..10 * mib + 4096 + patch.len()].copy_from_slice(&patch);
    let open_read = fs::read(m.path("f")).unwrap();
    assert!(
        open_read == want[..12 * mib],
        "read back while open differs"
    );
    f.write_all_at(&want[12 * mib..16 * mib], (12 * mib) as u64)
        .unwrap();
    // Below the streamed parts: the upload starts over from the file.
    f.write_all_at(&patch, 5000).unwrap();
    want[5000..5000 + patch.len()].copy_from_slice(&patch);
    f.write_all_at(&want[16 * mib..], (16 * mib) as u64)
        .unwrap();
    drop(f);
    assert!(
        get(&store, "rewrite/f").unwrap() == want,
        "published content differs"
    );
    assert!(fs::read(m.path("f")).unwrap() == want, "read back differs");
}

#[test]
fn readers_never_see_partial_content() {
    let server = S3Server::seaweed();
    let store = server.store();
    let cache = tempfile::tempdir().unwrap();
    let old = pattern(4 << 20, 9);
    put(&store, "atomic/f", old.clone());
    let m = Mounted::start(&server, "atomic", cache.path(), &["--part-size", "5MiB"]);

    let new = pattern(24 << 20, 200);
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (stop, store, old, new) = (Arc::clone(&stop), store.clone(), old.clone(), new.clone());
        std::thread::spawn(move || {
            let mut seen = (0usize, 0usize);
            while !stop.load(Ordering::Acquire) {
                let got = get(&store, "atomic/f").expect("the key never disappears");
                if got == old {
                    seen.0 += 1;
                } else if got == new {
                    seen.1 += 1;
                } else {
                    let prefix_of_new = new.starts_with(&got);
                    let prefix_of_old = old.starts_with(&got);
                    panic!(
                        "partial content of {} bytes visible under the final key \
                         (prefix of new: {prefix_of_new}, of old: {prefix_of_old})",
                        got.len()
                    );
                }
            }
            seen
        })
    };
    // Overwrite slowly, 1 MiB at a time, then close (publish). The writer is
    // a separate process without children: every close(2) publishes, and
    // so does the implicit close of an inherited descriptor when a forked
    // child execs, which other tests in this process do all the time.
    let src = cache.path().join("new.src");
    fs::write(&src, &new).unwrap();
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            WRITER,
            src.to_str().unwrap(),
            m.path("f").to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Release);
    let (saw_old, saw_new) = poller.join().expect("poller saw partial content");
    eprintln!("poller saw the old object {saw_old} times, the new one {saw_new} times");
    assert!(saw_old > 0 && saw_new > 0);
    assert!(get(&store, "atomic/f").unwrap() == new);
}

/// A sequential cold reader makes few, large GETs (a GET costs the server
/// about as much as megabytes of data): read-ahead asks for 8 pages at
/// once, and reader and read-ahead share each fetch. Pages still count one
/// by one, and a second read is served without the backend.
#[test]
fn a_sequential_cold_read_fetches_several_pages_per_get() {
    let server = S3Server::seaweed();
    let store = server.store();
    let cache = tempfile::tempdir().unwrap();
    let data = pattern(48 << 20, 7);
    put(&store, "batch/f", data.clone());
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let m = Mounted::start(&server, "batch", cache.path(), &["--metrics-addr", &addr]);
    let mut got = Vec::new();
    let mut f = fs::File::open(m.path("f")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got == data, "content differs");
    let first = common::scrape(port);
    let gets = common::sample(&first, "cachalot_backend_requests_total", "op=\"read\"");
    let pages = common::sample(&first, "cachalot_backend_reads_total", "volume=");
    assert!(pages >= 48, "pages read from the backend: {pages}");
    assert!(
        gets <= 16,
        "{gets} GETs for 48 pages read in order: read-ahead did not batch"
    );
    common::drop_caches();
    assert!(
        fs::read(m.path("f")).unwrap() == data,
        "second read differs"
    );
    let second = common::scrape(port);
    assert_eq!(
        common::sample(&second, "cachalot_backend_read_bytes_total", "volume="),
        common::sample(&first, "cachalot_backend_read_bytes_total", "volume="),
        "the second read went to the backend"
    );
}

#[test]
fn crash_during_upload_keeps_old_object_and_next_mount_aborts_the_upload() {
    let server = S3Server::seaweed();
    let store = server.store();
    let cache = tempfile::tempdir().unwrap();
    let old = b"the old content".to_vec();
    put(&store, "crash/f", old.clone());
    let args = ["--part-size", "5MiB"];
    let mut m = Mounted::start(&server, "crash", cache.path(), &args);

    let target = m.path("f");
    let writer = std::thread::spawn(move || {
        // Fails once the daemon dies; only the side effects matter.
        let _ = fs::write(&target, pattern(300 << 20, 3));
    });
    // The journal record appears once the multipart upload has started.
    let staging = cache.path().join("s3-staging");
    let deadline = Instant::now() + Duration::from_secs(120);
    let journal = loop {
        let found = fs::read_dir(&staging).ok().and_then(|dirs| {
            dirs.flatten().find_map(|d| {
                fs::read_dir(d.path())
                    .ok()?
                    .flatten()
                    .find(|e| e.file_name().to_string_lossy().ends_with(".upload"))
            })
        });
        if let Some(entry) = found {
            break entry.path();
        }
        assert!(Instant::now() < deadline, "no upload started");
        std::thread::sleep(Duration::from_millis(5));
    };
    m.crash();
    writer.join().unwrap();
    assert!(journal.exists(), "journal record survives the crash");

    // The old object is intact; the dangling upload exists on the server.
    assert_eq!(get(&store, "crash/f").unwrap(), old);
    let staging_probe = tempfile::tempdir().unwrap();
    let probe: S3Backend = server.backend("crash", staging_probe.path());
    let pending = rt().block_on(probe.pending_uploads()).unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].0, "crash/f");

    // The next mount aborts it and removes the leftovers (in the background,
    // after the mount is up: wait for it).
    let m2 = Mounted::start(&server, "crash", cache.path(), &args);
    let deadline = Instant::now() + Duration::from_secs(60);
    while journal.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let pending = rt().block_on(probe.pending_uploads()).unwrap();
    assert!(pending.is_empty(), "{pending:?}\n{}", m2.log_text());
    assert!(!journal.exists());
    assert!(m2
        .log_text()
        .contains("aborted the multipart upload of a crashed writer"));
    assert_eq!(fs::read(m2.path("f")).unwrap(), old);
}

#[test]
fn mount_errors_are_explained() {
    let server = S3Server::seaweed();
    let cache = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        assert!(!is_mounted(mnt.path()));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, err) = run(mount_command(&server, "p", mnt.path(), cache.path())
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret"));
    assert_eq!(code, Some(1));
    assert!(err.contains("credentials are wrong"), "{err}");
    assert!(
        err.contains(support_s3::KEY_ID) && !err.contains("not-the-secret"),
        "{err}"
    );

    let mut cmd = mount_source_command(&server, "s3://no-such-bucket/p", mnt.path(), cache.path());
    let (code, err) = run(&mut cmd);
    assert_eq!(code, Some(1));
    assert!(err.contains("'no-such-bucket' does not exist"), "{err}");

    // Nothing listens at the endpoint: the mount fails from its short-budget
    // check (not after the data path's long retries), naming the endpoint.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("http://127.0.0.1:{port}");
    let (code, err) = run(std::process::Command::new(support_s3::cachalot_bin())
        .arg("mount")
        .arg("s3://bucket/p")
        .arg(mnt.path())
        .arg("--cache-dir")
        .arg(cache.path())
        .args(["--endpoint", &dead, "--path-style", "--foreground"])
        .env("AWS_ACCESS_KEY_ID", support_s3::KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env_remove("AWS_SESSION_TOKEN"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("reaching the bucket"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");

    // S3 options with another source: a usage error.
    let local = tempfile::tempdir().unwrap();
    let (code, err) = run(std::process::Command::new(support_s3::cachalot_bin())
        .arg("mount")
        .arg(format!("file://{}", local.path().display()))
        .arg(mnt.path())
        .args(["--cache-dir"])
        .arg(cache.path())
        .args(["--endpoint", "http://127.0.0.1:1"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--endpoint only apply to s3:// sources"),
        "{err}"
    );
}

#[test]
fn smoke_test_against_moto() {
    let server = S3Server::moto();
    let store = server.store();
    let cache = tempfile::tempdir().unwrap();
    let m = Mounted::start(&server, "smoke", cache.path(), &[]);
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("dir/f"), b"moto").unwrap();
    assert_eq!(get(&store, "smoke/dir/f").unwrap(), b"moto");
    let f = OpenOptions::new()
        .write(true)
        .open(m.path("dir/f"))
        .unwrap();
    f.write_all_at(b"M", 0).unwrap();
    drop(f);
    assert_eq!(fs::read(m.path("dir/f")).unwrap(), b"Moto");
    fs::rename(m.path("dir"), m.path("dir2")).unwrap();
    assert_eq!(get(&store, "smoke/dir2/f").unwrap(), b"Moto");
    assert_eq!(get(&store, "smoke/dir/f"), None);
    let names: Vec<_> = fs::read_dir(m.path("dir2"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["f"]);
    fs::remove_file(m.path("dir2/f")).unwrap();
    fs::remove_dir(m.path("dir2")).unwrap();
    assert!(fs::read_dir(m.path("")).unwrap().next().is_none());
}

#[test]
fn access_denied_through_the_mount() {
    let server = S3Server::seaweed();
    let store = server.store();
    put(&store, "ro/existing", b"hello".to_vec());
    let cache = tempfile::tempdir().unwrap();
    let reader = [
        ("AWS_ACCESS_KEY_ID", support_s3::READER_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", support_s3::READER_SECRET),
    ];

    // Read-write mount: the preflight refuses it and says why.
    let mnt = tempfile::tempdir().unwrap();
    let out = mount_command(&server, "ro", mnt.path(), cache.path())
        .envs(reader)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("preflight failed: PUT of a probe object"),
        "{err}"
    );
    assert!(
        err.contains("s3:PutObject") && err.contains(support_s3::READER_KEY_ID),
        "{err}"
    );
    assert!(!is_mounted(mnt.path()));

    // Without the preflight: reads work, a write fails with EACCES at fsync.
    let m = Mounted::start_with_env(&server, "ro", cache.path(), &["--skip-preflight"], &reader);
    assert_eq!(fs::read(m.path("existing")).unwrap(), b"hello");
    let mut f = fs::File::create(m.path("new")).unwrap();
    f.write_all(b"data").unwrap();
    assert_eq!(errno_of(f.sync_all()), libc::EACCES);
    drop(f);
    assert_eq!(get(&store, "ro/new"), None);
    assert!(
        m.log_text().contains("access denied (AccessDenied)"),
        "{}",
        m.log_text()
    );
}

#[test]
fn capacity_is_a_quota_on_s3() {
    let server = S3Server::seaweed();
    let store = server.store();
    put(&store, "quota/old", vec![1u8; 2 << 20]);
    let cache = tempfile::tempdir().unwrap();
    let m = Mounted::start(&server, "quota", cache.path(), &["--capacity", "3MiB"]);
    support_posix::capacity_is_enforced(&m.path(""));
    assert_eq!(get(&store, "quota/new").map(|d| d.len()), Some(2 << 20));
    assert_eq!(get(&store, "quota/old"), None);
}

/// No keys anywhere, but a container credentials endpoint (EKS pod
/// identity): the mount fetches temporary keys from it with the pod's
/// token, signs with them (SeaweedFS checks the signatures) in both clients
/// (object_store and the raw signer), and fetches new ones before they
/// expire (these expire in 200 s, within the 5 min the cache keeps in
/// hand, so every use after a short backoff refreshes them).
#[test]
fn pod_identity_credentials_are_fetched_and_refreshed() {
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    let server = S3Server::seaweed();
    let store = server.store();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/credentials", listener.local_addr().unwrap());
    let fetches = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&fetches);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(&conn);
            let mut auth = String::new();
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                if line.to_ascii_lowercase().starts_with("authorization:") {
                    auth = line[14..].trim().to_string();
                }
                line.clear();
            }
            seen.lock().unwrap().push(auth);
            let expires = chrono::Utc::now() + chrono::Duration::seconds(200);
            let body = format!(
                r#"{{"AccessKeyId":"{}","SecretAccessKey":"{}","Token":"","Expiration":"{}"}}"#,
                support_s3::KEY_ID,
                support_s3::SECRET,
                expires.format("%Y-%m-%dT%H:%M:%SZ")
            );
            let mut conn = conn;
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let token = cache.path().join("eks-pod-identity-token");
    fs::write(&token, "pod-token-123").unwrap();
    let token = token.display().to_string();
    let env = [
        ("AWS_ACCESS_KEY_ID", ""),
        ("AWS_SECRET_ACCESS_KEY", ""),
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", url.as_str()),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token.as_str()),
    ];
    let m = Mounted::start_with_env(&server, "podid", cache.path(), &[], &env);
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/f"), b"from a pod role").unwrap();
    assert_eq!(get(&store, "podid/d/f").unwrap(), b"from a pod role");
    std::thread::sleep(Duration::from_millis(300));
    // A directory rename goes through the raw signer (listing, copy).
    fs::rename(m.path("d"), m.path("e")).unwrap();
    assert_eq!(get(&store, "podid/e/f").unwrap(), b"from a pod role");
    let log = fs::read_to_string(&m.log).unwrap_or_default();
    assert!(
        log.contains("container credentials"),
        "the mount does not say where its credentials came from:\n{log}"
    );
    let fetches = fetches.lock().unwrap().clone();
    assert!(
        fetches.len() >= 2,
        "the keys were not refreshed before expiry: {fetches:?}"
    );
    assert!(fetches.iter().all(|a| a == "pod-token-123"), "{fetches:?}");
}
