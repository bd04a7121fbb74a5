//! Precise errno values reach the application (never a blanket EIO), and a failed
//! operation leaves nothing behind in the backing directory.

use crate::common;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::*;

/// name -> (is_dir, content or empty, mode) for everything below `dir`
fn snapshot(dir: &Path) -> BTreeMap<String, (bool, Vec<u8>, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let md = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if md.is_dir() {
                stack.push(p.clone());
                out.insert(rel, (true, Vec::new(), md.mode()));
            } else if md.is_file() {
                out.insert(rel, (false, fs::read(&p).unwrap(), md.mode()));
            } else {
                out.insert(rel, (false, Vec::new(), md.mode()));
            }
        }
    }
    out
}

#[test]
fn read_only_mount_rejects_every_mutation_with_erofs() {
    let m = Mount::with_prepare(&["--read-only"], |b| {
        fs::write(b.join("f"), b"data").unwrap();
        fs::create_dir(b.join("d")).unwrap();
        fs::write(b.join("d/inner"), b"inner").unwrap();
        fs::create_dir(b.join("empty")).unwrap();
    });
    let before = snapshot(m.backing());
    let e = libc::EROFS;

    expect_errno(fs::File::create(m.m("new")), e, "create");
    expect_errno(
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(m.m("new2")),
        e,
        "create O_EXCL",
    );
    expect_errno(fs::create_dir(m.m("newdir")), e, "mkdir");
    expect_errno(fs::remove_file(m.m("f")), e, "unlink");
    expect_errno(fs::remove_dir(m.m("empty")), e, "rmdir");
    expect_errno(fs::rename(m.m("f"), m.m("g")), e, "rename");
    expect_errno(fs::rename(m.m("d"), m.m("d2")), e, "rename dir");
    expect_errno(
        OpenOptions::new().write(true).open(m.m("f")),
        e,
        "open O_WRONLY",
    );
    expect_errno(
        OpenOptions::new().read(true).write(true).open(m.m("f")),
        e,
        "open O_RDWR",
    );
    expect_errno(
        OpenOptions::new().append(true).open(m.m("f")),
        e,
        "open O_APPEND",
    );
    expect_errno(
        OpenOptions::new().write(true).truncate(true).open(m.m("f")),
        e,
        "open O_TRUNC",
    );
    expect_errno(
        fs::set_permissions(m.m("f"), fs::Permissions::from_mode(0o600)),
        e,
        "chmod",
    );
    expect_errno(truncate_path(&m.m("f"), 0), e, "truncate");
    expect_errno(utimens_path(&m.m("f"), 1, 2), e, "utimens");
    expect_errno(std::os::unix::fs::symlink("f", m.m("sym")), e, "symlink");
    expect_errno(fs::hard_link(m.m("f"), m.m("hl")), e, "link");
    expect_errno(mkfifo(&m.m("fifo"), 0o644), e, "mkfifo");

    // reads still work
    assert_eq!(fs::read(m.m("f")).unwrap(), b"data");
    assert_eq!(fs::read(m.m("d/inner")).unwrap(), b"inner");
    assert_eq!(fs::read_dir(m.mnt()).unwrap().count(), 3);

    // and nothing changed in the backing dir
    assert_eq!(
        snapshot(m.backing()),
        before,
        "backing dir changed on a read-only mount"
    );
    assert!(all_temp_files(m.backing()).is_empty());
}

#[test]
fn rmdir_non_empty_gives_enotempty() {
    let m = Mount::with_prepare(&[], |b| {
        fs::create_dir(b.join("full")).unwrap();
        fs::write(b.join("full/child"), b"c").unwrap();
    });
    expect_errno(
        fs::remove_dir(m.m("full")),
        libc::ENOTEMPTY,
        "rmdir of a dir with a file",
    );
    assert_eq!(fs::read(m.b("full/child")).unwrap(), b"c");

    // non-empty because of a file created through the mount
    fs::create_dir(m.m("d2")).unwrap();
    fs::write(m.m("d2/x"), b"x").unwrap();
    expect_errno(
        fs::remove_dir(m.m("d2")),
        libc::ENOTEMPTY,
        "rmdir of a dir with a file made via the mount",
    );
    assert!(m.b("d2/x").exists());

    // non-empty because of a sub directory
    fs::create_dir_all(m.m("d3/sub")).unwrap();
    expect_errno(
        fs::remove_dir(m.m("d3")),
        libc::ENOTEMPTY,
        "rmdir of a dir with a subdir",
    );
    assert!(m.b("d3/sub").is_dir());

    // rename of a dir onto a non-empty dir
    fs::create_dir(m.m("d4")).unwrap();
    let err = fs::rename(m.m("d4"), m.m("full")).unwrap_err();
    assert!(
        matches!(
            err.raw_os_error(),
            Some(libc::ENOTEMPTY) | Some(libc::EEXIST)
        ),
        "rename onto a non-empty dir: {err:?}"
    );
    assert_eq!(fs::read(m.b("full/child")).unwrap(), b"c");
}

#[test]
fn create_exclusive_of_existing_file_gives_eexist() {
    let m = Mount::with_prepare(&[], |b| {
        fs::write(b.join("there"), b"original").unwrap();
        fs::create_dir(b.join("dir")).unwrap();
    });
    // never looked up through the mount before
    expect_errno(
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(m.m("there")),
        libc::EEXIST,
        "O_CREAT|O_EXCL on a backing file",
    );
    assert_eq!(fs::read(m.b("there")).unwrap(), b"original");

    // after a lookup
    assert!(m.m("there").exists());
    expect_errno(
        open_raw(
            &m.m("there"),
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
            0o644,
        ),
        libc::EEXIST,
        "O_CREAT|O_EXCL after lookup",
    );
    // a file created through the mount
    fs::write(m.m("mine"), b"m").unwrap();
    expect_errno(
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(m.m("mine")),
        libc::EEXIST,
        "O_CREAT|O_EXCL on a file made via the mount",
    );
    assert_eq!(fs::read(m.b("mine")).unwrap(), b"m");

    expect_errno(fs::create_dir(m.m("dir")), libc::EEXIST, "mkdir existing");
    expect_errno(
        fs::create_dir(m.m("there")),
        libc::EEXIST,
        "mkdir over a file",
    );
    expect_errno(
        std::os::unix::fs::symlink("x", m.m("there")),
        libc::EEXIST,
        "symlink over a file",
    );
    expect_errno(
        fs::hard_link(m.m("mine"), m.m("there")),
        libc::EEXIST,
        "link over a file",
    );
    expect_errno(
        mkfifo(&m.m("there"), 0o644),
        libc::EEXIST,
        "mkfifo over a file",
    );
    assert_eq!(fs::read(m.b("there")).unwrap(), b"original");
    assert!(all_temp_files(m.backing()).is_empty());
}

#[test]
fn missing_names_give_enoent() {
    let m = Mount::with_prepare(&[], |b| fs::create_dir(b.join("d")).unwrap());
    let e = libc::ENOENT;
    expect_errno(fs::File::open(m.m("nope")), e, "open missing");
    expect_errno(fs::metadata(m.m("nope")), e, "stat missing");
    expect_errno(fs::remove_file(m.m("nope")), e, "unlink missing");
    expect_errno(fs::remove_dir(m.m("nope")), e, "rmdir missing");
    expect_errno(fs::rename(m.m("nope"), m.m("d/x")), e, "rename missing");
    expect_errno(fs::read_link(m.m("nope")), e, "readlink missing");
    expect_errno(
        fs::File::create(m.m("no-dir/f")),
        e,
        "create in a missing dir",
    );
    expect_errno(
        fs::create_dir(m.m("no-dir/sub")),
        e,
        "mkdir in a missing dir",
    );
    expect_errno(fs::read_dir(m.m("d/nope")), e, "opendir missing");
    assert_eq!(
        fs::read_dir(m.backing()).unwrap().count(),
        1,
        "backing changed"
    );
}

#[test]
fn wrong_file_type_errors() {
    let m = Mount::with_prepare(&[], |b| {
        fs::write(b.join("file"), b"f").unwrap();
        fs::create_dir(b.join("dir")).unwrap();
    });
    expect_errno(
        fs::remove_dir(m.m("file")),
        libc::ENOTDIR,
        "rmdir of a file",
    );
    expect_errno(fs::remove_file(m.m("dir")), libc::EISDIR, "unlink of a dir");
    expect_errno(
        OpenOptions::new().write(true).open(m.m("dir")),
        libc::EISDIR,
        "open dir for write",
    );
    expect_errno(
        fs::File::open(m.m("file/child")),
        libc::ENOTDIR,
        "path through a file",
    );
    expect_errno(
        fs::read_dir(m.m("file")),
        libc::ENOTDIR,
        "opendir of a file",
    );
    expect_errno(
        fs::read_link(m.m("file")),
        libc::EINVAL,
        "readlink of a regular file",
    );
    assert!(m.b("dir").is_dir());
    assert_eq!(fs::read(m.b("file")).unwrap(), b"f");
}

/// Run open/write/fsync/close (always closing explicitly) and return the first error,
/// tagged with the step that failed.
fn write_file_steps(
    path: &Path,
    data: &[u8],
    truncate: bool,
) -> Result<(), (&'static str, std::io::Error)> {
    use std::io::Write;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(truncate)
        .open(path)
        .map_err(|e| ("open", e))?;
    let mut first = f.write_all(data).map_err(|e| ("write", e)).err();
    if first.is_none() {
        first = f.sync_all().map_err(|e| ("fsync", e)).err();
    }
    let closed = close_checked(f).map_err(|e| ("close", e));
    if let Some((step, _)) = &first {
        eprintln!("(after the failed {step}: close returned {closed:?})");
    }
    match (first, closed) {
        (Some(e), _) => Err(e),
        (None, Err(e)) => Err(e),
        (None, Ok(())) => Ok(()),
    }
}

fn small_backend_mount() -> Mount {
    let mut m = Mount::unmounted(&[]);
    mount_small_tmpfs(m.backing(), "1m");
    fs::write(m.b("existing"), b"old content that must survive").unwrap();
    m.start();
    m
}

#[test]
fn backend_full_rewrite_gives_enospc_and_keeps_the_old_file() {
    let m = small_backend_mount();
    let big = pattern(3 << 20, 30);
    let nofork = no_fork_guard(); // see common/mod.rs: FORK_LOCK
    let (step, err) = write_file_steps(&m.m("existing"), &big, true)
        .expect_err("writing 3 MiB into a 1 MiB backend succeeded");
    eprintln!("rewrite of existing file failed at {step}: {err}");
    drop(nofork);
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOSPC),
        "expected ENOSPC, got {err:?}"
    );
    // design guide: any failure removes the temp object; the final name is untouched
    assert_bytes_eq(
        &fs::read(m.b("existing")).unwrap(),
        b"old content that must survive",
        "a failed write (ENOSPC) damaged the final name",
    );
    assert!(
        all_temp_files(m.backing()).is_empty(),
        "temp file not removed after a failed write: {:?}",
        all_temp_files(m.backing())
    );
    // the space is free again: a small write works
    fs::write(m.m("small"), b"fits").unwrap();
    assert_eq!(fs::read(m.b("small")).unwrap(), b"fits");
}

#[test]
fn backend_full_new_file_gives_enospc_and_is_not_published() {
    let m = small_backend_mount();
    let big = pattern(3 << 20, 31);
    let nofork = no_fork_guard(); // see common/mod.rs: FORK_LOCK
    let (step, err) = write_file_steps(&m.m("newfile"), &big, false)
        .expect_err("writing 3 MiB into a 1 MiB backend succeeded");
    eprintln!("new file failed at {step}: {err}");
    drop(nofork);
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOSPC),
        "expected ENOSPC, got {err:?}"
    );
    let published = fs::symlink_metadata(m.b("newfile")).map(|md| md.len());
    assert!(
        published.is_err(),
        "a failed new file was published ({published:?} bytes)"
    );
    assert!(
        all_temp_files(m.backing()).is_empty(),
        "{:?}",
        all_temp_files(m.backing())
    );
    assert_eq!(
        fs::read(m.b("existing")).unwrap(),
        b"old content that must survive"
    );
}

#[test]
fn full_cache_disk_never_fails_reads() {
    let data = pattern(4 << 20, 31);
    let mut m = Mount::unmounted(&["--page-size", "256KiB"]);
    fs::write(m.b("f"), &data).unwrap();
    mount_small_tmpfs(m.cache_dir(), "512k");
    m.start();
    assert_bytes_eq(
        &read_all(&m.m("f")).unwrap(),
        &data,
        "read with a full cache disk",
    );
    drop_caches();
    assert_bytes_eq(
        &read_all(&m.m("f")).unwrap(),
        &data,
        "second read with a full cache disk",
    );
    // writes through the mount are not affected by the cache disk either
    fs::write(m.m("w"), &data[..1 << 20]).unwrap();
    assert_bytes_eq(
        &fs::read(m.b("w")).unwrap(),
        &data[..1 << 20],
        "write with a full cache disk",
    );
}

fn df(path: &Path) -> (u64, u64) {
    let st = nix::sys::statvfs::statvfs(path).expect("statvfs");
    let block = st.fragment_size() as u64;
    (
        st.blocks() as u64 * block,
        st.blocks_available() as u64 * block,
    )
}

/// `--capacity`: the files already there count; a write, an extending
/// truncate or a fallocate past the capacity fails with EDQUOT and leaves
/// the file as it was; deleting frees room; df shows the capacity; a new
/// capacity set on the root (what NodeExpandVolume does) applies live.
#[test]
fn capacity_is_a_quota_with_edquot() {
    const MIB: usize = 1 << 20;
    let m = Mount::with_prepare(&["--capacity", "4MiB"], |b| {
        fs::create_dir(b.join("d")).unwrap();
        fs::write(b.join("d/old"), pattern(2 * MIB, 1)).unwrap();
    });
    // The walk at mount counts the 2 MiB already there.
    assert!(
        wait_until(Duration::from_secs(10), || df(m.mnt()).1
            <= (2 * MIB) as u64),
        "df: {:?}\n{}",
        df(m.mnt()),
        m.log_text()
    );
    assert_eq!(df(m.mnt()).0, (4 * MIB) as u64);
    fs::write(m.m("fits"), pattern(MIB, 2)).unwrap();
    let err = fs::write(m.m("too-big"), pattern(2 * MIB, 3)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err:?}");
    assert!(!m.b("too-big").exists());
    // The failed new file left no name behind: a retry creates it.
    fs::write(m.m("too-big"), b"small").unwrap();
    assert_eq!(fs::read(m.b("too-big")).unwrap(), b"small");
    assert_eq!(fs::read(m.m("d/old")).unwrap(), pattern(2 * MIB, 1));
    // Growing a file past it: the file keeps its content.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.m("fits"))
        .unwrap();
    let err = f.set_len(3 * MIB as u64).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err:?}");
    drop(f);
    assert_eq!(fs::read(m.m("fits")).unwrap(), pattern(MIB, 2));
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.m("fits"))
        .unwrap();
    let r = nix::fcntl::fallocate(
        std::os::fd::AsRawFd::as_raw_fd(&f),
        nix::fcntl::FallocateFlags::empty(),
        0,
        4 * MIB as i64,
    );
    assert_eq!(r, Err(nix::errno::Errno::EDQUOT));
    drop(f);
    // Deleting makes room at once.
    fs::remove_file(m.m("d/old")).unwrap();
    fs::write(m.m("now-fits"), pattern(2 * MIB, 4)).unwrap();
    assert_eq!(fs::read(m.m("now-fits")).unwrap(), pattern(2 * MIB, 4));
    // Expansion, live: only root may set it, and a number is required.
    let set = |value: &str| setxattr(m.mnt(), "user.cachalot.capacity", value.as_bytes());
    assert_eq!(set("lots").unwrap_err().raw_os_error(), Some(libc::EINVAL));
    set(&(16 * MIB).to_string()).unwrap();
    assert_eq!(df(m.mnt()).0, (16 * MIB) as u64);
    fs::write(m.m("after-expansion"), pattern(8 * MIB, 5)).unwrap();
}

/// Two mounts of one volume with one capacity (two nodes of an RWX
/// volume): each counts the other's writes within a few seconds, through
/// the usage reports they keep in the volume, not only at its next walk
/// (30 s or more away); the reports never show in the volume.
#[test]
fn two_mounts_of_a_volume_share_its_capacity() {
    const MIB: usize = 1 << 20;
    let args = ["--capacity", "10MiB"];
    let a = Mount::with_args(&args);
    let mut b = Mount::unmounted(&args);
    b.use_backing(a.backing());
    b.start();
    let walked = |m: &Mount| m.log_text().contains("measured the volume's usage");
    assert!(wait_until(Duration::from_secs(10), || walked(&a) && walked(&b)));

    fs::write(a.m("from-a"), pattern(6 * MIB, 1)).unwrap();
    let seen = wait_until(Duration::from_secs(20), || {
        df(b.mnt()).1 <= (4 * MIB) as u64
    });
    assert!(
        seen,
        "b never counted a's 6 MiB: df {:?}\n{}",
        df(b.mnt()),
        b.log_text()
    );
    let err = fs::write(b.m("from-b"), pattern(6 * MIB, 2)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err:?}");
    assert_eq!(fs::read(b.m("from-a")).unwrap(), pattern(6 * MIB, 1));

    // a frees the room; b sees it and may write.
    fs::remove_file(a.m("from-a")).unwrap();
    let freed = wait_until(Duration::from_secs(20), || {
        df(b.mnt()).1 >= (9 * MIB) as u64
    });
    assert!(freed, "b never saw the room a freed: df {:?}", df(b.mnt()));
    fs::write(b.m("from-b"), pattern(6 * MIB, 2)).unwrap();
    let names: Vec<_> = fs::read_dir(a.mnt())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["from-b"], "the usage reports show in the volume");

    // A process of this host that is gone leaves no report behind: the
    // other removes it at its next read.
    let reports = a.backing().join(".usage.cachalot-shared");
    let count = || fs::read_dir(&reports).map(|d| d.count()).unwrap_or(0);
    assert!(
        wait_until(Duration::from_secs(20), || count() == 2),
        "{}",
        count()
    );
    b.stop();
    assert!(
        wait_until(Duration::from_secs(20), || count() == 1),
        "the report of a process that is gone stays: {}",
        count()
    );
}
