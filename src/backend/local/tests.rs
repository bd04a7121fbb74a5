use super::*;
use std::fs;
use std::os::unix::fs::MetadataExt;

fn backend(dir: &Path) -> LocalBackend {
    LocalBackend::new(dir.to_path_buf(), IdentityMode::Caller)
}

fn me() -> Identity {
    Identity::new(
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    )
}

fn p(s: &str) -> BackendPath {
    BackendPath::parse(s).unwrap()
}

fn visible_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn pending_write_is_invisible_until_published() {
    let dir = tempfile::tempdir().unwrap();
    let b = backend(dir.path());
    let w = b
        .begin_write(me(), &p("new.txt"), WriteStart::Empty, 0o640)
        .await
        .unwrap();
    w.write_at(0, b"hello").await.unwrap();
    assert!(!dir.path().join("new.txt").exists());
    assert!(b.list(me(), &BackendPath::root()).await.unwrap().is_empty());
    let meta = w.publish(&p("new.txt")).await.unwrap();
    assert_eq!(meta.size, 5);
    assert_eq!(meta.mode, 0o640);
    assert_eq!(fs::read(dir.path().join("new.txt")).unwrap(), b"hello");
    assert_eq!(visible_names(dir.path()), vec!["new.txt"]);
}

#[tokio::test]
async fn copy_on_write_keeps_untouched_ranges_and_abort_keeps_old_file() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"0123456789").unwrap();
    let b = backend(dir.path());
    let w = b
        .begin_write(me(), &p("f"), WriteStart::CopyExisting, 0o644)
        .await
        .unwrap();
    w.write_at(2, b"AB").await.unwrap();
    assert_eq!(w.read_at(0, 100).await.unwrap(), b"01AB456789");
    w.abort(&p("f")).await;
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"0123456789");
    assert_eq!(visible_names(dir.path()), vec!["f"]);
}

#[tokio::test]
async fn stale_temps_of_dead_writers_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let b = backend(dir.path());
    // A temp owned by a pid that cannot exist on this host.
    let dead = temp_name_for(
        "x",
        &format!("{}{:08x}", b.shared.host_tag, u32::MAX - 1),
        1,
    );
    let live = b.shared.next_temp_name("y");
    fs::write(dir.path().join(&dead), b"partial").unwrap();
    fs::write(dir.path().join(&live), b"in progress").unwrap();
    assert_eq!(b.cleanup_stale_temps().await.unwrap(), 1);
    assert!(!dir.path().join(&dead).exists());
    assert!(dir.path().join(&live).exists());
}

#[tokio::test]
async fn errors_carry_kind_and_context() {
    let dir = tempfile::tempdir().unwrap();
    let b = backend(dir.path());
    let err = b.stat(me(), &p("missing")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(err.to_string().contains("/missing"));
    fs::create_dir(dir.path().join("d")).unwrap();
    fs::write(dir.path().join("d/f"), b"x").unwrap();
    let err = b.rmdir(me(), &p("d")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotEmpty);
}

#[tokio::test]
async fn rename_noreplace_refuses_existing_target() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a"), b"a").unwrap();
    fs::write(dir.path().join("b"), b"b").unwrap();
    let b = backend(dir.path());
    let err = b.rename(me(), &p("a"), &p("b"), true).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::AlreadyExists);
    assert_eq!(fs::read(dir.path().join("b")).unwrap(), b"b");
}

/// Outside the root: a neighbour directory with files that must stay untouched.
fn swapped_dir() -> (tempfile::TempDir, PathBuf, LocalBackend) {
    let top = tempfile::tempdir().unwrap();
    let root = top.path().join("vol");
    let outside = top.path().join("outside");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"secret").unwrap();
    fs::write(outside.join("victim"), b"victim").unwrap();
    fs::create_dir(outside.join("sub")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("d")).unwrap();
    fs::create_dir(root.join("real")).unwrap();
    std::os::unix::fs::symlink("../d", root.join("real/up")).unwrap();
    let b = backend(&root);
    (top, outside, b)
}

fn outside_snapshot(outside: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = fs::read_dir(outside)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let data = fs::read(e.path()).unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), data)
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn symlinks_in_intermediate_components_are_never_followed() {
    let (_top, outside, b) = swapped_dir();
    let before = outside_snapshot(&outside);
    for dir in ["d", "real/up", "d/sub"] {
        let at = |n: &str| p(&format!("{dir}/{n}"));
        let not_dir = |r: Result<(), BackendError>, what: &str| {
            let e = r.expect_err(what);
            assert_eq!(e.kind, ErrorKind::NotADirectory, "{what} via {dir}: {e}");
            assert!(e.to_string().contains("symbolic link"), "{e}");
        };
        not_dir(b.stat(me(), &at("secret")).await.map(drop), "stat");
        not_dir(b.list(me(), &at("sub")).await.map(drop), "list");
        not_dir(b.open_read(me(), &at("secret")).await.map(drop), "open");
        not_dir(
            b.begin_write(me(), &at("created"), WriteStart::Empty, 0o644)
                .await
                .map(drop),
            "create",
        );
        not_dir(
            b.begin_write(me(), &at("victim"), WriteStart::CopyExisting, 0o644)
                .await
                .map(drop),
            "copy-on-write",
        );
        not_dir(b.mkdir(me(), &at("new"), 0o755).await.map(drop), "mkdir");
        not_dir(b.unlink(me(), &at("victim")).await, "unlink");
        not_dir(b.rmdir(me(), &at("sub")).await, "rmdir");
        not_dir(
            b.rename(me(), &at("victim"), &p("stolen"), false).await,
            "rename from",
        );
        not_dir(
            b.rename(me(), &p("real"), &at("moved"), false).await,
            "rename to",
        );
        not_dir(b.symlink(me(), &at("l"), "x").await.map(drop), "symlink");
        not_dir(b.readlink(me(), &at("l")).await.map(drop), "readlink");
        not_dir(
            b.link(me(), &at("victim"), &p("hard")).await.map(drop),
            "link from",
        );
        not_dir(
            b.mknod(me(), &at("fifo"), SpecialFile::Fifo, 0o644)
                .await
                .map(drop),
            "mknod",
        );
        let chmod = AttrChanges {
            mode: Some(0o777),
            ..AttrChanges::default()
        };
        not_dir(
            b.set_attr(me(), &at("secret"), &chmod).await.map(drop),
            "chmod",
        );
    }
    assert_eq!(outside_snapshot(&outside), before);
    assert!(!outside.join("sub/new").exists());
}

#[tokio::test]
async fn a_symlink_as_the_final_component_is_an_object_of_its_own() {
    let (top, outside, b) = swapped_dir();
    let root = top.path().join("vol");
    let before = outside_snapshot(&outside);
    let mode_before = fs::metadata(&outside).unwrap().mode();
    let meta = b.stat(me(), &p("d")).await.unwrap();
    assert_eq!(meta.kind, FileKind::Symlink);
    assert_eq!(
        b.readlink(me(), &p("d")).await.unwrap(),
        outside.display().to_string()
    );
    // not listed, opened, written or chmod-ed through
    assert!(b.list(me(), &p("d")).await.is_err());
    assert!(b.open_read(me(), &p("d")).await.is_err());
    let chmod = AttrChanges {
        mode: Some(0o777),
        ..AttrChanges::default()
    };
    b.set_attr(me(), &p("d"), &chmod).await.unwrap();
    assert_eq!(fs::metadata(&outside).unwrap().mode(), mode_before);
    // never written through (as before: O_NOFOLLOW refuses it, ELOOP)
    assert!(b
        .begin_write(me(), &p("real/up"), WriteStart::CopyExisting, 0o600)
        .await
        .is_err());
    assert!(b.list(me(), &p("real/up")).await.is_err());
    // renamed and removed as itself
    b.rename(me(), &p("d"), &p("real/d"), true).await.unwrap();
    assert!(fs::symlink_metadata(root.join("real/d"))
        .unwrap()
        .file_type()
        .is_symlink());
    b.link(me(), &p("real/d"), &p("hard")).await.unwrap();
    assert!(fs::symlink_metadata(root.join("hard"))
        .unwrap()
        .file_type()
        .is_symlink());
    b.unlink(me(), &p("real/d")).await.unwrap();
    b.unlink(me(), &p("hard")).await.unwrap();
    assert_eq!(outside_snapshot(&outside), before);
}

#[tokio::test]
async fn the_root_itself_can_be_stat_listed_and_changed() {
    let dir = tempfile::tempdir().unwrap();
    let b = backend(dir.path());
    fs::write(dir.path().join("f"), b"x").unwrap();
    assert_eq!(
        b.stat(me(), &BackendPath::root()).await.unwrap().kind,
        FileKind::Directory
    );
    let names: Vec<String> = b
        .list(me(), &BackendPath::root())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec!["f"]);
    let changes = AttrChanges {
        mode: Some(0o750),
        mtime: Some(UNIX_EPOCH + Duration::from_secs(1_000_000)),
        ..AttrChanges::default()
    };
    let meta = b
        .set_attr(me(), &BackendPath::root(), &changes)
        .await
        .unwrap();
    assert_eq!(meta.mode, 0o750);
    assert_eq!(meta.mtime, UNIX_EPOCH + Duration::from_secs(1_000_000));
    assert!(b.statfs(me()).await.unwrap().blocks > 0);
}

#[test]
fn the_walk_without_openat2_refuses_symlinks_too() {
    let (top, _outside, _b) = swapped_dir();
    let root = open_root(&top.path().join("vol")).unwrap();
    let flags = libc::O_PATH | libc::O_DIRECTORY;
    let fd = root.as_raw_fd();
    assert!(walk_beneath(fd, b"real", flags).is_ok());
    for rel in [&b"d"[..], b"d/sub", b"real/up", b"real/up/sub"] {
        let e = walk_beneath(fd, rel, flags).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{rel:?}");
        let e = openat2_beneath(fd, rel, flags).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{rel:?}");
    }
    let e = walk_beneath(fd, b"real/../..", flags).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
    let e = walk_beneath(fd, b"missing/x", flags).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
}

#[tokio::test]
async fn temp_cleanup_does_not_descend_into_linked_directories() {
    let (top, outside, b) = swapped_dir();
    let dead = temp_name_for(
        "x",
        &format!("{}{:08x}", b.shared.host_tag, u32::MAX - 1),
        1,
    );
    fs::write(outside.join(&dead), b"not ours").unwrap();
    fs::write(top.path().join("vol/real").join(&dead), b"ours").unwrap();
    assert_eq!(b.cleanup_stale_temps().await.unwrap(), 1);
    assert!(outside.join(&dead).exists());
    assert!(!top.path().join("vol/real").join(&dead).exists());
}

/// Frozen: caches written by earlier versions are keyed by it.
#[test]
fn the_cache_identity_keeps_its_form() {
    let b = LocalBackend::new(PathBuf::from("/srv/data"), IdentityMode::Caller);
    assert_eq!(b.cache_identity(), "file:///srv/data");
}

#[tokio::test]
async fn an_fsync_makes_the_publish_durable_and_a_published_file_can_be_synced() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("d")).unwrap();
    let b = backend(dir.path());
    let w = b
        .begin_write(me(), &p("d/f"), WriteStart::Empty, 0o644)
        .await
        .unwrap();
    w.write_at(0, b"durable").await.unwrap();
    // fsync(2) of the writer: data flushed, then a publish that syncs the
    // file and its directory.
    w.sync().await.unwrap();
    w.publish(&p("d/f")).await.unwrap();
    assert_eq!(fs::read(dir.path().join("d/f")).unwrap(), b"durable");
    assert_eq!(visible_names(&dir.path().join("d")), vec!["f"]);
    // fsync(2) with nothing pending flushes the published file.
    b.sync(me(), &p("d/f")).await.unwrap();
    let gone = b.sync(me(), &p("d/missing")).await.unwrap_err();
    assert_eq!(gone.kind, ErrorKind::NotFound);
}
