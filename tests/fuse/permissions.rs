//! Identity and permissions: `--uid/--gid` (the local analog of NFS root_squash),
//! `--allow-other` with the kernel's `default_permissions`, and the default identity
//! (the calling process' uid/gid).

use crate::common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::*;

fn backing_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn prepare_squash(b: &Path) {
    // backing dir: owned by root, 0755 (the harness creates it so; make sure)
    fs::set_permissions(b, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(fs::metadata(b).unwrap().uid(), 0);
    fs::write(b.join("readable"), b"world readable").unwrap();
    fs::set_permissions(b.join("readable"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::create_dir(b.join("nobodys")).unwrap();
    std::os::unix::fs::chown(b.join("nobodys"), Some(65534), Some(65534)).unwrap();
}

#[test]
fn squashed_identity_create_gives_eacces_not_eio() {
    let m = Mount::with_prepare(&["--uid", "65534", "--gid", "65534"], prepare_squash);
    let before = backing_names(m.backing());

    let err = expect_errno(
        fs::File::create(m.m("newfile")),
        libc::EACCES,
        "create as squashed uid",
    );
    assert_ne!(err.raw_os_error(), Some(libc::EIO));
    expect_errno(
        fs::create_dir(m.m("newdir")),
        libc::EACCES,
        "mkdir as squashed uid",
    );
    expect_errno(
        std::os::unix::fs::symlink("readable", m.m("newlink")),
        libc::EACCES,
        "symlink as squashed uid",
    );
    expect_errno(
        fs::remove_file(m.m("readable")),
        libc::EACCES,
        "unlink as squashed uid",
    );
    expect_errno(
        fs::rename(m.m("readable"), m.m("renamed")),
        libc::EACCES,
        "rename as squashed uid",
    );
    expect_errno(
        fs::set_permissions(m.m("readable"), fs::Permissions::from_mode(0o600)),
        libc::EPERM,
        "chmod of a root-owned file as squashed uid",
    );

    // nothing left behind: no final name, no temp file
    assert_eq!(backing_names(m.backing()), before);
    assert!(
        all_temp_files(m.backing()).is_empty(),
        "{:?}",
        all_temp_files(m.backing())
    );

    // reading is still allowed (positive control: the mount itself works)
    assert_eq!(fs::read(m.m("readable")).unwrap(), b"world readable");
    assert_eq!(
        fs::metadata(m.b("readable")).unwrap().mode() & 0o7777,
        0o644
    );
}

#[test]
fn squashed_identity_rewrite_of_root_file_fails_with_eacces() {
    let m = Mount::with_prepare(&["--uid", "65534", "--gid", "65534"], prepare_squash);
    // root may open it for writing (default_permissions checks the caller, root), but the
    // backend identity 65534 may not write it: the error must be EACCES at open, write,
    // fsync or close -- and the file must be untouched.
    let nofork = no_fork_guard(); // see common/mod.rs: FORK_LOCK
    let first_err = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(m.m("readable"))?;
        f.write_all(b"overwritten!")?;
        f.sync_all()?;
        close_checked(f)
    })();
    drop(nofork);
    let err = first_err.expect_err("rewriting a root-owned 0644 file as uid 65534 succeeded");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EACCES),
        "expected EACCES, got {err:?}"
    );
    assert_eq!(fs::read(m.b("readable")).unwrap(), b"world readable");
    assert!(
        all_temp_files(m.backing()).is_empty(),
        "{:?}",
        all_temp_files(m.backing())
    );
}

#[test]
fn squashed_identity_owns_what_it_creates() {
    let m = Mount::with_prepare(&["--uid", "65534", "--gid", "65534"], prepare_squash);
    // in a directory the squashed identity may write to, creation works as that identity
    fs::write(m.m("nobodys/f"), b"by nobody").unwrap();
    let md = fs::metadata(m.b("nobodys/f")).unwrap();
    assert_eq!(fs::read(m.b("nobodys/f")).unwrap(), b"by nobody");
    assert_eq!(
        (md.uid(), md.gid()),
        (65534, 65534),
        "backing owner of a file created with --uid/--gid"
    );
    fs::create_dir(m.m("nobodys/sub")).unwrap();
    let md = fs::metadata(m.b("nobodys/sub")).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));
}

fn run_as_nobody(program: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = command_as_nobody(program);
    cmd.args(args);
    let (st, out, err) = run_with_timeout(cmd, Duration::from_secs(20));
    let st = st.unwrap_or_else(|| panic!("{program} {args:?} as uid 65534 timed out"));
    (st.success(), out, err)
}

fn prepare_allow_other(b: &Path) {
    fs::write(b.join("secret"), b"top secret").unwrap();
    fs::set_permissions(b.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(b.join("public"), b"public data").unwrap();
    fs::set_permissions(b.join("public"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::create_dir(b.join("nobodys")).unwrap();
    std::os::unix::fs::chown(b.join("nobodys"), Some(65534), Some(65534)).unwrap();
}

#[test]
fn allow_other_enforces_file_permissions_for_other_users() {
    let m = Mount::with_prepare(&["--allow-other"], prepare_allow_other);
    let public = m.m("public");
    let secret = m.m("secret");

    // another user can get in and read what the mode allows ...
    let (ok, out, err) = run_as_nobody("cat", &[public.to_str().unwrap()]);
    assert!(
        ok,
        "uid 65534 could not read a 0644 file with --allow-other: {err}"
    );
    assert_eq!(out, "public data");

    // ... but not a 0600 root file
    let (ok, out, err) = run_as_nobody("cat", &[secret.to_str().unwrap()]);
    assert!(!ok, "uid 65534 read a 0600 root-owned file: {out:?}");
    assert!(err.contains("Permission denied"), "stderr: {err:?}");
    assert!(!out.contains("top secret"));

    // nor create in a root-owned 0755 directory
    let newf = m.m("intruder");
    let (ok, _, err) = run_as_nobody("sh", &["-c", &format!("echo x > '{}'", newf.display())]);
    assert!(!ok, "uid 65534 created a file in a root-owned 0755 dir");
    assert!(err.contains("Permission denied"), "stderr: {err:?}");
    assert!(!m.b("intruder").exists());

    // root still reads the secret
    assert_eq!(fs::read(&secret).unwrap(), b"top secret");
}

#[test]
fn default_identity_is_the_caller() {
    let m = Mount::with_prepare(&["--allow-other"], prepare_allow_other);
    let target = m.m("nobodys/mine");
    let (ok, _, err) = run_as_nobody(
        "sh",
        &["-c", &format!("printf hello > '{}'", target.display())],
    );
    assert!(
        ok,
        "uid 65534 could not write into its own directory: {err}"
    );
    let md = fs::metadata(m.b("nobodys/mine")).unwrap();
    assert_eq!(fs::read(m.b("nobodys/mine")).unwrap(), b"hello");
    assert_eq!(
        (md.uid(), md.gid()),
        (65534, 65534),
        "file created by uid 65534 should be owned by it"
    );

    // root creating a file gets root ownership
    fs::write(m.m("by-root"), b"r").unwrap();
    let md = fs::metadata(m.b("by-root")).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0));
}

#[test]
fn without_allow_other_other_users_are_locked_out() {
    let m = Mount::with_prepare(&[], prepare_allow_other);
    let (ok, out, err) = run_as_nobody("cat", &[m.m("public").to_str().unwrap()]);
    assert!(
        !ok,
        "uid 65534 read through a mount without --allow-other: {out:?}"
    );
    assert!(err.contains("Permission denied"), "stderr: {err:?}");
    // root is fine
    assert_eq!(fs::read(m.m("public")).unwrap(), b"public data");
}
