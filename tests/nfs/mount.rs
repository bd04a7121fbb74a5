//! cachalot on NFS through a real FUSE mount, checked against the exported
//! directory on disk (ground truth).

use crate::support_nfs;
use crate::support_posix;

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use support_nfs::mount::mount;
use support_nfs::{ganesha, SQUASHED_OWNER};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(131).wrapping_add(seed as u32) as u8)
        .collect()
}

#[test]
fn file_operations_reach_the_export() {
    let server = ganesha();
    let (disk, url) = server.area("mount-ops");
    let big = pattern(3 * 1024 * 1024 + 333, 3);
    fs::write(disk.join("big.bin"), &big).unwrap();
    let m = mount(&url, &[]).unwrap_or_else(|f| panic!("mount failed: {f:?}"));

    // read of a file written on the server
    assert_eq!(fs::read(m.path("big.bin")).unwrap(), big);
    // Its pages went to the page store with O_DIRECT (v3, data aligned).
    let pages = m.cache.join("pages");
    assert!(
        crate::common::wait_until(std::time::Duration::from_secs(5), || {
            crate::common::page_magics(&pages)
                .iter()
                .any(|m| m == "CCHLPG03")
        }),
        "{:?}",
        crate::common::page_magics(&pages)
    );

    // create
    fs::write(m.path("a.txt"), b"hello").unwrap();
    assert_eq!(fs::read(disk.join("a.txt")).unwrap(), b"hello");
    // overwrite
    fs::write(m.path("a.txt"), b"bye").unwrap();
    assert_eq!(fs::read(disk.join("a.txt")).unwrap(), b"bye");
    // append
    OpenOptions::new()
        .append(true)
        .open(m.path("a.txt"))
        .unwrap()
        .write_all(b"++")
        .unwrap();
    assert_eq!(fs::read(disk.join("a.txt")).unwrap(), b"bye++");
    // random write in the middle of a big file (copy-on-write keeps the rest)
    {
        let mut f = OpenOptions::new()
            .write(true)
            .open(m.path("big.bin"))
            .unwrap();
        f.seek(SeekFrom::Start(1_048_581)).unwrap();
        f.write_all(b"XYZ").unwrap();
    }
    let mut expect = big.clone();
    expect[1_048_581..1_048_584].copy_from_slice(b"XYZ");
    assert!(fs::read(disk.join("big.bin")).unwrap() == expect);
    // truncate
    OpenOptions::new()
        .write(true)
        .open(m.path("big.bin"))
        .unwrap()
        .set_len(100)
        .unwrap();
    assert_eq!(fs::read(disk.join("big.bin")).unwrap(), &expect[..100]);
    let mut back = Vec::new();
    fs::File::open(m.path("big.bin"))
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, &expect[..100]);
    // mode of a new file is what the application asked for
    {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(m.path("moded"))
            .unwrap();
    }
    assert_eq!(
        fs::metadata(disk.join("moded"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    let err = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.path("moded"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
    // mkdir / rename / rmdir / unlink
    fs::create_dir(m.path("d")).unwrap();
    assert!(disk.join("d").is_dir());
    fs::rename(m.path("a.txt"), m.path("d/renamed.txt")).unwrap();
    assert!(!disk.join("a.txt").exists());
    assert_eq!(fs::read(disk.join("d/renamed.txt")).unwrap(), b"bye++");
    let err = fs::remove_dir(m.path("d")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY));
    fs::remove_file(m.path("d/renamed.txt")).unwrap();
    assert!(!disk.join("d/renamed.txt").exists());
    fs::remove_dir(m.path("d")).unwrap();
    assert!(!disk.join("d").exists());
    // symlink / link
    std::os::unix::fs::symlink("big.bin", m.path("sym")).unwrap();
    assert_eq!(
        fs::read_link(disk.join("sym")).unwrap().to_str(),
        Some("big.bin")
    );
    assert_eq!(
        fs::read_link(m.path("sym")).unwrap().to_str(),
        Some("big.bin")
    );
    fs::hard_link(m.path("big.bin"), m.path("hard")).unwrap();
    assert_eq!(
        fs::metadata(disk.join("hard")).unwrap().ino(),
        fs::metadata(disk.join("big.bin")).unwrap().ino()
    );
    assert_eq!(fs::metadata(m.path("big.bin")).unwrap().nlink(), 2);
    // listing matches, no temp files anywhere
    let mut through: Vec<String> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut on_disk: Vec<String> = fs::read_dir(&disk)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    through.sort();
    on_disk.sort();
    assert_eq!(through, on_disk);
    assert_eq!(on_disk, vec!["big.bin", "hard", "moded", "sym"]);
    // changes made on the server are seen (metadata TTL 0 in these tests)
    fs::write(disk.join("server-side"), b"from the server").unwrap();
    assert_eq!(fs::read(m.path("server-side")).unwrap(), b"from the server");
    drop(m);
}

#[test]
fn root_squash_is_eacces_and_preflight_explains_it() {
    let server = ganesha();
    // the mount-time check refuses, naming identity, path and fix
    let failure = mount("nfs://127.0.0.1/squashed", &[])
        .err()
        .expect("mount must fail");
    assert!(!failure.status.success());
    assert!(failure.stderr.contains("root_squash"), "{}", failure.stderr);
    assert!(failure.stderr.contains("uid 0"), "{}", failure.stderr);
    assert!(failure.stderr.contains("/squashed"), "{}", failure.stderr);

    // mounted anyway, a write as root gets EACCES (not EIO)
    let m = mount("nfs://127.0.0.1/squashed", &["--skip-preflight"]).unwrap();
    let err = fs::File::create(m.path("x")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    let err = fs::create_dir(m.path("d")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    drop(m);

    // with the owner's identity the preflight passes and files get that owner
    let owner = SQUASHED_OWNER.to_string();
    let m = mount(
        "nfs://127.0.0.1/squashed",
        &["--uid", &owner, "--gid", &owner],
    )
    .unwrap_or_else(|f| panic!("{f:?}"));
    fs::write(m.path("mine"), b"ok").unwrap();
    let meta = fs::metadata(server.squashed_dir().join("mine")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (SQUASHED_OWNER, SQUASHED_OWNER));
    fs::remove_file(m.path("mine")).unwrap();
    assert!(!server.squashed_dir().join("mine").exists());
}

#[test]
fn a_wrong_export_fails_the_mount_with_the_export_list() {
    let _server = ganesha();
    let failure = mount("nfs://127.0.0.1/", &[])
        .err()
        .expect("mount must fail");
    assert!(!failure.status.success());
    assert!(
        failure
            .stderr
            .contains(r#"share "/" is not exported by 127.0.0.1"#),
        "{}",
        failure.stderr
    );
    assert!(
        failure.stderr.contains("/export") && failure.stderr.contains("/squashed"),
        "{}",
        failure.stderr
    );
}

#[test]
fn hard_links_are_one_inode() {
    let (disk, m) = posix_area("posix-links");
    support_posix::hard_links_are_one_inode(&m.path(""), &disk);
}

#[test]
fn inode_numbers_stay_under_churn_and_forget() {
    let (_disk, m) = posix_area("posix-stable");
    support_posix::inode_numbers_stay(&m.path(""));
}

#[test]
fn directory_link_counts_follow_moves() {
    let (_disk, m) = posix_area("posix-dirlinks");
    support_posix::directory_link_counts_follow_moves(&m.path(""));
}

#[test]
fn device_nodes_and_sockets_are_stored() {
    let (disk, m) = posix_area("posix-special");
    support_posix::special_files_are_stored(&m.path(""), &disk);
}

#[test]
fn fallocate_extends_and_refuses_what_nfs_cannot() {
    let (disk, m) = posix_area("posix-fallocate");
    support_posix::fallocate_modes(&m.path(""), &disk, false);
}

#[test]
fn copy_file_range_is_served() {
    let (disk, m) = posix_area("posix-copy");
    support_posix::copy_file_range_copies(&m.path(""), Some(&disk));
    let log = m.stderr();
    assert!(
        !log.contains("Not Implemented"),
        "the kernel fell back: {log}"
    );
}

#[test]
fn in_place_rewrite_behind_the_mount_gives_estale() {
    let (disk, m) = posix_area("posix-inplace");
    support_posix::in_place_rewrite_gives_estale(&m.path(""), &disk);
}

/// Run `script` with `sh` as `uid`, primary group `groups[0]` and all of
/// `groups` as supplementary groups.
fn as_user(uid: u32, groups: &[u32], script: &str) -> std::process::Output {
    let list: Vec<String> = groups.iter().map(u32::to_string).collect();
    std::process::Command::new("setpriv")
        .args(["--reuid", &uid.to_string(), "--regid", &list[0]])
        .args(["--groups", &list.join(","), "sh", "-c", script])
        .output()
        .unwrap()
}

fn assert_ran(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the kernel does for ownership and times, on NFS: a write by a
/// user other than the owner clears setuid/setgid and keeps the owner; a
/// chgrp to one of the caller's supplementary groups works; utimensat of a
/// symlink acts on the symlink, not its target; UTIME_NOW by a non-owner with
/// write permission works.
#[test]
fn owners_groups_and_times_as_the_kernel_keeps_them() {
    use std::os::unix::fs::chown;
    let server = ganesha();
    let (disk, url) = server.area("posix-ids");
    fs::set_permissions(&disk, fs::Permissions::from_mode(0o777)).unwrap();
    let m = mount(&url, &["--allow-other"]).unwrap_or_else(|f| panic!("mount failed: {f:?}"));
    let mnt = |name: &str| m.path(name).display().to_string();

    fs::write(disk.join("suid"), b"x").unwrap();
    chown(disk.join("suid"), Some(1000), Some(2000)).unwrap();
    fs::set_permissions(disk.join("suid"), fs::Permissions::from_mode(0o6775)).unwrap();
    let out = as_user(
        1001,
        &[1001, 2000],
        &format!("printf more >> {}", mnt("suid")),
    );
    assert_ran(
        &format!("a group member appends to a setuid file ({})", m.stderr()),
        &out,
    );
    let st = fs::metadata(disk.join("suid")).unwrap();
    assert_eq!(
        st.mode() & 0o7777,
        0o775,
        "setuid/setgid cleared: {}",
        m.stderr()
    );
    assert_eq!((st.uid(), st.gid()), (1000, 2000), "owner kept");
    assert_eq!(fs::read(disk.join("suid")).unwrap(), b"xmore");

    let out = as_user(
        1001,
        &[1001, 2000],
        &format!("touch {0} && chgrp 2000 {0}", mnt("mine")),
    );
    assert_ran("chgrp to a supplementary group", &out);
    assert_eq!(fs::metadata(disk.join("mine")).unwrap().gid(), 2000);

    // utimensat(AT_SYMLINK_NOFOLLOW) acts on the symlink itself, never on
    // its target. (nfs-ganesha's VFS backend accepts a symlink's times and
    // keeps them unchanged, so only the target is checked here; the local
    // backend test checks the symlink's own times.)
    fs::write(disk.join("target"), b"t").unwrap();
    let target_before = filetime_of(&disk.join("target"));
    std::os::unix::fs::symlink("target", disk.join("link")).unwrap();
    let out = std::process::Command::new("touch")
        .args(["-h", "-d", "@1500000000", &mnt("link")])
        .output()
        .unwrap();
    assert_ran("touch -h of a symlink", &out);
    assert_eq!(
        filetime_of(&disk.join("target")),
        target_before,
        "target untouched"
    );

    fs::write(disk.join("shared"), b"s").unwrap();
    chown(disk.join("shared"), Some(1000), Some(1000)).unwrap();
    fs::set_permissions(disk.join("shared"), fs::Permissions::from_mode(0o666)).unwrap();
    let old = filetime_of(&disk.join("shared"));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = as_user(1001, &[1001], &format!("touch {}", mnt("shared")));
    assert_ran("UTIME_NOW by a non-owner with write permission", &out);
    assert!(
        filetime_of(&disk.join("shared")) > old,
        "mtime moved to now"
    );
}

fn filetime_of(p: &std::path::Path) -> (i64, i64) {
    let m = fs::metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec())
}

/// A background mount that fails quotes the lines it logged itself, not
/// older lines other mounts left in the shared log file.
#[test]
fn a_failed_background_mount_quotes_only_its_own_log_lines() {
    let _server = ganesha();
    let dirs = tempfile::tempdir().unwrap();
    let (cache, mnt) = (dirs.path().join("cache"), dirs.path().join("mnt"));
    fs::create_dir_all(&cache).unwrap();
    fs::create_dir_all(&mnt).unwrap();
    fs::write(
        cache.join("cachalot-mount.log"),
        "OLD UNRELATED ERROR LINE\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cachalot"))
        .args(["mount", "nfs://127.0.0.1/squashed"])
        .arg(&mnt)
        .arg("--cache-dir")
        .arg(&cache)
        .output()
        .unwrap();
    if out.status.success() {
        let _ = std::process::Command::new("umount").arg(&mnt).status();
        panic!("the mount of a squashed export as root should fail its preflight");
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("squash"), "the daemon's own reason: {err}");
    assert!(
        !err.contains("OLD UNRELATED"),
        "an older line quoted: {err}"
    );
}

/// A fresh area of the export and a mount of it (the POSIX checks).
fn posix_area(name: &str) -> (std::path::PathBuf, support_nfs::mount::Mounted) {
    let (disk, url) = ganesha().area(name);
    let m = mount(&url, &[]).unwrap_or_else(|f| panic!("mount failed: {f:?}"));
    (disk, m)
}

#[test]
fn capacity_is_a_quota_on_nfs() {
    let server = ganesha();
    let (disk, url) = server.area("quota");
    fs::write(disk.join("old"), vec![1u8; 2 << 20]).unwrap();
    let m = mount(&url, &["--capacity", "3MiB"]).unwrap_or_else(|f| panic!("mount failed: {f:?}"));
    support_posix::capacity_is_enforced(&m.path(""));
    assert_eq!(fs::metadata(disk.join("new")).unwrap().len(), 2 << 20);
}
