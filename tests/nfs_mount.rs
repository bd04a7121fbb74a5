//! cachalot on NFS through a real FUSE mount, checked against the exported
//! directory on disk (ground truth).

mod support_nfs;
mod support_posix;

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
    let server = ganesha();
    let (disk, url) = server.area("posix-links");
    let m = mount(&url, &[]).unwrap_or_else(|f| panic!("mount failed: {f:?}"));
    support_posix::hard_links_are_one_inode(&m.path(""), &disk);
}

#[test]
fn inode_numbers_stay_under_churn_and_forget() {
    let server = ganesha();
    let (_disk, url) = server.area("posix-stable");
    let m = mount(&url, &[]).unwrap_or_else(|f| panic!("mount failed: {f:?}"));
    support_posix::inode_numbers_stay(&m.path(""));
}

#[test]
fn directory_link_counts_follow_moves() {
    let server = ganesha();
    let (_disk, url) = server.area("posix-dirlinks");
    let m = mount(&url, &[]).unwrap_or_else(|f| panic!("mount failed: {f:?}"));
    support_posix::directory_link_counts_follow_moves(&m.path(""));
}

#[test]
fn device_nodes_and_sockets_are_stored() {
    let server = ganesha();
    let (disk, url) = server.area("posix-special");
    let m = mount(&url, &[]).unwrap_or_else(|f| panic!("mount failed: {f:?}"));
    support_posix::special_files_are_stored(&m.path(""), &disk);
}

#[test]
fn fallocate_extends_and_refuses_what_nfs_cannot() {
    let server = ganesha();
    let (disk, url) = server.area("posix-fallocate");
    let m = mount(&url, &[]).unwrap_or_else(|f| panic!("mount failed: {f:?}"));
    support_posix::fallocate_modes(&m.path(""), &disk, false);
}

#[test]
fn copy_file_range_is_served() {
    let server = ganesha();
    let (disk, url) = server.area("posix-copy");
    let m = mount(&url, &[]).unwrap_or_else(|f| panic!("mount failed: {f:?}"));
    support_posix::copy_file_range_copies(&m.path(""), &disk);
}

#[test]
fn in_place_rewrite_behind_the_mount_gives_estale() {
    let server = ganesha();
    let (disk, url) = server.area("posix-inplace");
    let m = mount(&url, &[]).unwrap_or_else(|f| panic!("mount failed: {f:?}"));
    support_posix::in_place_rewrite_gives_estale(&m.path(""), &disk);
}
