//! The NFS backend driven through the `Backend` trait (no FUSE) against a
//! real nfs-ganesha on 127.0.0.1; results are checked on the exported
//! directory itself (ground truth).

use crate::support_nfs;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use cachalot::backend::nfs::{NfsBackend, NfsOptions};
use cachalot::backend::{
    AttrChanges, Backend, BackendPath, ErrorKind, FileKind, Identity, Source, SpecialFile,
    WriteStart,
};

use support_nfs::{ganesha, SQUASHED_OWNER};

const ROOT: Identity = Identity::new(0, 0);

fn p(s: &str) -> BackendPath {
    BackendPath::parse(s).unwrap()
}

async fn connect(url: &str, identity: Option<Identity>) -> NfsBackend {
    let source = Source::parse(url).unwrap();
    NfsBackend::connect(
        &source,
        NfsOptions {
            identity,
            ..NfsOptions::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

async fn write_file(b: &NfsBackend, id: Identity, path: &str, data: &[u8], mode: u32) {
    let w = b
        .begin_write(id, &p(path), WriteStart::Empty, mode)
        .await
        .unwrap();
    w.write_at(0, data).await.unwrap();
    w.publish(&p(path)).await.unwrap();
}

async fn read_all(b: &NfsBackend, id: Identity, path: &str) -> Vec<u8> {
    let r = b.open_read(id, &p(path)).await.unwrap();
    r.read_at(0, r.size() as usize + 10).await.unwrap().to_vec()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed as u32) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_matches_the_export_on_disk() {
    let server = ganesha();
    let (disk, url) = server.area("ops");
    let b = connect(&url, None).await;

    let root = b.stat(ROOT, &BackendPath::root()).await.unwrap();
    assert_eq!(root.kind, FileKind::Directory);

    // mkdir + create + publish
    let d = b.mkdir(ROOT, &p("dir"), 0o750).await.unwrap();
    assert_eq!(d.kind, FileKind::Directory);
    assert_eq!(
        fs::metadata(disk.join("dir")).unwrap().permissions().mode() & 0o7777,
        0o750
    );
    let data = pattern(3 * 1024 * 1024 + 17, 1);
    let w = b
        .begin_write(ROOT, &p("dir/f.bin"), WriteStart::Empty, 0o640)
        .await
        .unwrap();
    w.write_at(0, &data).await.unwrap();
    assert!(!disk.join("dir/f.bin").exists(), "visible before publish");
    assert!(
        b.list(ROOT, &p("dir")).await.unwrap().is_empty(),
        "temp file listed"
    );
    let meta = w.publish(&p("dir/f.bin")).await.unwrap();
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(meta.mode, 0o640);
    assert_eq!(fs::read(disk.join("dir/f.bin")).unwrap(), data);
    assert_eq!(
        fs::metadata(disk.join("dir/f.bin"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o640
    );
    assert_eq!(
        fs::read_dir(disk.join("dir")).unwrap().count(),
        1,
        "temp file left behind"
    );

    // ranged reads, including past the end
    let r = b.open_read(ROOT, &p("dir/f.bin")).await.unwrap();
    assert_eq!(r.size(), data.len() as u64);
    assert_eq!(r.read_at(5, 100).await.unwrap(), &data[5..105]);
    let tail = r.read_at(data.len() as u64 - 10, 4096).await.unwrap();
    assert_eq!(tail, &data[data.len() - 10..]);
    assert!(r
        .read_at(data.len() as u64 + 1, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        r.version(),
        &b.stat(ROOT, &p("dir/f.bin")).await.unwrap().version
    );

    // copy-on-write overwrite of a range; abort keeps the old file
    let w = b
        .begin_write(ROOT, &p("dir/f.bin"), WriteStart::CopyExisting, 0o600)
        .await
        .unwrap();
    w.write_at(10, b"XYZ").await.unwrap();
    assert_eq!(
        w.read_at(8, 7).await.unwrap(),
        [&data[8..10], b"XYZ", &data[13..15]].concat()
    );
    w.abort(&p("dir/f.bin")).await;
    assert_eq!(fs::read(disk.join("dir/f.bin")).unwrap(), data);
    let w = b
        .begin_write(ROOT, &p("dir/f.bin"), WriteStart::CopyExisting, 0o600)
        .await
        .unwrap();
    w.write_at(10, b"XYZ").await.unwrap();
    w.truncate(1000).await.unwrap();
    w.write_at(1000, b"end").await.unwrap();
    let meta = w.publish(&p("dir/f.bin")).await.unwrap();
    let mut expect = data[..1000].to_vec();
    expect[10..13].copy_from_slice(b"XYZ");
    expect.extend_from_slice(b"end");
    assert_eq!(fs::read(disk.join("dir/f.bin")).unwrap(), expect);
    assert_eq!(meta.mode, 0o640, "mode of the replaced file kept");
    assert_ne!(meta.version, r.version().clone());

    // the old reader sees the replacement and refuses to mix versions
    let err = r.read_at(0, 10).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Stale, "{err}");

    // rename, no_replace, link, symlink, readlink
    write_file(&b, ROOT, "dir/other", b"other", 0o644).await;
    let err = b
        .rename(ROOT, &p("dir/f.bin"), &p("dir/other"), true)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::AlreadyExists);
    b.rename(ROOT, &p("dir/f.bin"), &p("moved.bin"), false)
        .await
        .unwrap();
    assert!(!disk.join("dir/f.bin").exists());
    assert_eq!(fs::read(disk.join("moved.bin")).unwrap(), expect);
    let linked = b.link(ROOT, &p("moved.bin"), &p("dir/hard")).await.unwrap();
    assert_eq!(linked.nlink, 2);
    assert_eq!(
        fs::metadata(disk.join("dir/hard")).unwrap().ino(),
        fs::metadata(disk.join("moved.bin")).unwrap().ino()
    );
    let s = b
        .symlink(ROOT, &p("dir/sym"), "../moved.bin")
        .await
        .unwrap();
    assert_eq!(s.kind, FileKind::Symlink);
    assert_eq!(
        fs::read_link(disk.join("dir/sym")).unwrap().to_str(),
        Some("../moved.bin")
    );
    assert_eq!(
        b.readlink(ROOT, &p("dir/sym")).await.unwrap(),
        "../moved.bin"
    );

    // set_attr: mode, times
    let mtime = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let m = b
        .set_attr(
            ROOT,
            &p("moved.bin"),
            &AttrChanges {
                mode: Some(0o600),
                mtime: Some(mtime),
                ..AttrChanges::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(m.mode, 0o600);
    assert_eq!(m.mtime, mtime);
    let on_disk = fs::metadata(disk.join("moved.bin")).unwrap();
    assert_eq!(on_disk.permissions().mode() & 0o7777, 0o600);
    assert_eq!(on_disk.mtime(), 1_600_000_000);

    // mknod (FIFO, device, socket), list, unlink, rmdir
    let f = b
        .mknod(ROOT, &p("dir/fifo"), SpecialFile::Fifo, 0o644)
        .await
        .unwrap();
    assert_eq!(f.kind, FileKind::Fifo);
    let dev = libc::makedev(1, 3);
    let c = b
        .mknod(ROOT, &p("dir/null"), SpecialFile::CharDevice(dev), 0o644)
        .await
        .unwrap();
    assert_eq!((c.kind, c.rdev), (FileKind::CharDevice, dev));
    assert_eq!(fs::metadata(disk.join("dir/null")).unwrap().rdev(), dev);
    let s = b
        .mknod(ROOT, &p("dir/sock"), SpecialFile::Socket, 0o644)
        .await
        .unwrap();
    assert_eq!(s.kind, FileKind::Socket);
    for name in ["dir/null", "dir/sock"] {
        b.unlink(ROOT, &p(name)).await.unwrap();
    }
    let names: BTreeSet<String> = b
        .list(ROOT, &p("dir"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        ["fifo", "hard", "other", "sym"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    let err = b.rmdir(ROOT, &p("dir")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotEmpty);
    let err = b.unlink(ROOT, &p("dir")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::IsADirectory);
    for name in ["fifo", "hard", "other", "sym"] {
        b.unlink(ROOT, &p(&format!("dir/{name}"))).await.unwrap();
    }
    b.rmdir(ROOT, &p("dir")).await.unwrap();
    assert!(!disk.join("dir").exists());
    let err = b.stat(ROOT, &p("dir")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    let err = b.stat(ROOT, &p("moved.bin/x")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotADirectory, "{err}");

    let stats = b.statfs(ROOT).await.unwrap();
    assert!(stats.blocks > 0 && stats.name_max >= 255, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_a_directory_of_20000_entries_completely() {
    let server = ganesha();
    let (disk, url) = server.area("big");
    let mut expect = BTreeSet::new();
    for i in 0..20_000 {
        let name = format!("entry-{i:05}-with-a-longer-name-to-fill-pages");
        fs::write(disk.join(&name), i.to_string()).unwrap();
        expect.insert(name);
    }
    // Temp files of ours are never listed.
    fs::write(disk.join(".x.cachalot-0000000000000000ff"), b"t").unwrap();
    let b = connect(&url, None).await;
    let listed = b.list(ROOT, &BackendPath::root()).await.unwrap();
    assert_eq!(listed.len(), 20_000);
    let names: BTreeSet<String> = listed.iter().map(|e| e.name.clone()).collect();
    assert_eq!(names, expect);
    let one = listed
        .iter()
        .find(|e| e.name == "entry-12345-with-a-longer-name-to-fill-pages")
        .unwrap();
    assert_eq!(one.meta.size, 5);
    assert_eq!(one.meta.kind, FileKind::File);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_errors_stay_permission_errors() {
    let server = ganesha();
    let b = connect("nfs://127.0.0.1/squashed", None).await;
    // root is squashed to nobody; the directory belongs to uid 1000, 0755
    let err = b
        .begin_write(ROOT, &p("f"), WriteStart::Empty, 0o644)
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind, ErrorKind::PermissionDenied, "{err}");
    assert_eq!(err.errno(), libc::EACCES);
    assert!(err.to_string().contains("create temp file"), "{err}");
    assert!(err.to_string().contains("uid 0"), "{err}");
    let err = b.mkdir(ROOT, &p("d"), 0o755).await.unwrap_err();
    assert_eq!(err.errno(), libc::EACCES);
    // the owner may write
    let owner = Identity::new(SQUASHED_OWNER, SQUASHED_OWNER);
    write_file(&b, owner, "by-owner", b"ok", 0o644).await;
    let on_disk = fs::metadata(server.squashed_dir().join("by-owner")).unwrap();
    assert_eq!(
        (on_disk.uid(), on_disk.gid()),
        (SQUASHED_OWNER, SQUASHED_OWNER)
    );
    // and others get EACCES on its 0644 file when writing, EPERM on chown
    let other = Identity::new(4321, 4321);
    let err = b
        .set_attr(
            other,
            &p("by-owner"),
            &AttrChanges {
                uid: Some(4321),
                ..AttrChanges::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::EPERM, "{err}");
    assert_eq!(read_all(&b, other, "by-owner").await, b"ok");
    fs::remove_file(server.squashed_dir().join("by-owner")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_export_lists_the_real_ones() {
    let _server = ganesha();
    let source = Source::parse("nfs://127.0.0.1/no/such/share").unwrap();
    let err = NfsBackend::connect(&source, NfsOptions::default())
        .await
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.contains(r#"share "/no/such/share" is not exported by 127.0.0.1"#),
        "{text}"
    );
    assert!(
        text.contains("exports: /export, /squashed")
            || text.contains("exports: /squashed, /export"),
        "{text}"
    );
    // below a real export, a missing directory is named as such
    let source = Source::parse("nfs://127.0.0.1/export/not-there").unwrap();
    let err = NfsBackend::connect(&source, NfsOptions::default())
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(
        err.to_string().contains("/export/not-there does not exist"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_reach_the_server() {
    let server = ganesha();
    let (disk, url) = server.area("ids");
    fs::set_permissions(&disk, fs::Permissions::from_mode(0o777)).unwrap();
    // caller mode: the identity of each call
    let b = connect(&url, None).await;
    let alice = Identity::new(2001, 2002);
    write_file(&b, alice, "alice.txt", b"a", 0o600).await;
    let m = fs::metadata(disk.join("alice.txt")).unwrap();
    assert_eq!((m.uid(), m.gid()), (2001, 2002));
    let bob = Identity::new(3001, 3002);
    let err = b.open_read(bob, &p("alice.txt")).await.unwrap();
    let err = err.read_at(0, 1).await.unwrap_err();
    assert_eq!(err.errno(), libc::EACCES, "{err}");
    // fixed mode: every call as the configured identity
    let fixed = Identity::new(4001, 4002);
    let b = connect(&url, Some(fixed)).await;
    let d = b.mkdir(fixed, &p("sub"), 0o755).await.unwrap();
    assert_eq!((d.uid, d.gid), (4001, 4002));
    // preflight passes for a writable identity
    b.preflight(fixed).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_explains_root_squash() {
    let _server = ganesha();
    let b = connect("nfs://127.0.0.1/squashed", None).await;
    let err = b.preflight(ROOT).await.unwrap_err();
    let text = err.to_string();
    assert_eq!(err.kind, ErrorKind::PermissionDenied);
    assert!(text.contains("root_squash"), "{text}");
    assert!(text.contains("uid 0"), "{text}");
    assert!(text.contains("--uid 1000 --gid 1000"), "{text}");
    let owner = Identity::new(SQUASHED_OWNER, SQUASHED_OWNER);
    b.preflight(owner).await.unwrap();
    let b = connect("nfs://127.0.0.1/export", None).await;
    b.preflight(ROOT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_in_one_directory() {
    let server = ganesha();
    let (disk, url) = server.area("concurrent");
    let b = Arc::new(connect(&url, None).await);
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let b = Arc::clone(&b);
        tasks.push(tokio::spawn(async move {
            let path = format!("file-{i}");
            let data = pattern(700_000 + i as usize * 1000, i);
            let w = b
                .begin_write(ROOT, &p(&path), WriteStart::Empty, 0o644)
                .await
                .unwrap();
            for (n, chunk) in data.chunks(128 * 1024).enumerate() {
                w.write_at((n * 128 * 1024) as u64, chunk).await.unwrap();
            }
            w.publish(&p(&path)).await.unwrap();
            data
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let data = t.await.unwrap();
        assert_eq!(
            fs::read(disk.join(format!("file-{i}"))).unwrap(),
            data,
            "file-{i}"
        );
    }
    assert_eq!(
        fs::read_dir(&disk).unwrap().count(),
        16,
        "temp files left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_directory_handles_are_looked_up_again() {
    let server = ganesha();
    let (disk, url) = server.area("stale");
    let b = connect(&url, None).await;
    b.mkdir(ROOT, &p("d"), 0o755).await.unwrap();
    b.mkdir(ROOT, &p("d/e"), 0o755).await.unwrap();
    write_file(&b, ROOT, "d/e/f", b"first", 0o644).await;
    assert_eq!(read_all(&b, ROOT, "d/e/f").await, b"first");
    // Behind the client's back: the directories are replaced by new ones.
    fs::remove_dir_all(disk.join("d")).unwrap();
    fs::create_dir_all(disk.join("d/e")).unwrap();
    fs::write(disk.join("d/e/g"), b"second").unwrap();
    assert_eq!(b.stat(ROOT, &p("d/e/g")).await.unwrap().size, 6);
    assert_eq!(read_all(&b, ROOT, "d/e/g").await, b"second");
    let names: Vec<String> = b
        .list(ROOT, &p("d/e"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec!["g"]);
    // and writes into the new directory work
    fs::remove_dir_all(disk.join("d")).unwrap();
    fs::create_dir_all(disk.join("d/e")).unwrap();
    write_file(&b, ROOT, "d/e/h", b"third", 0o644).await;
    assert_eq!(fs::read(disk.join("d/e/h")).unwrap(), b"third");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_writes_commit_along_the_way_and_stable_mode_works() {
    let server = ganesha();
    let (disk, url) = server.area("large");
    let data = pattern(40 << 20, 7);
    for stable_writes in [false, true] {
        let source = Source::parse(&url).unwrap();
        let b = NfsBackend::connect(
            &source,
            NfsOptions {
                stable_writes,
                ..NfsOptions::default()
            },
        )
        .await
        .unwrap();
        let w = b
            .begin_write(ROOT, &p("big"), WriteStart::Empty, 0o644)
            .await
            .unwrap();
        for (n, chunk) in data.chunks(1 << 20).enumerate() {
            w.write_at((n << 20) as u64, chunk).await.unwrap();
        }
        w.publish(&p("big")).await.unwrap();
        assert!(
            fs::read(disk.join("big")).unwrap() == data,
            "stable_writes={stable_writes}"
        );
        let back = read_all(&b, ROOT, "big").await;
        assert!(back == data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_files_of_dead_writers_are_cleaned_up() {
    let server = ganesha();
    let (disk, url) = server.area("cleanup");
    let b = connect(&url, None).await;
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host_tag = format!("{:08x}", crc32c::crc32c(host.trim().as_bytes()));
    let dead = format!(".x.cachalot-{host_tag}{:08x}1", u32::MAX - 1);
    let alive = format!(".y.cachalot-{host_tag}{:08x}1", std::process::id());
    fs::create_dir(disk.join("sub")).unwrap();
    fs::write(disk.join("sub").join(&dead), b"partial").unwrap();
    fs::write(disk.join(&alive), b"in progress").unwrap();
    assert_eq!(b.cleanup_stale_temps().await.unwrap(), 1);
    assert!(!disk.join("sub").join(&dead).exists());
    assert!(disk.join(&alive).exists());
}
