//! Nothing escapes the volume root, read-only means read-only, and logs carry no secrets.
//!
//! - Symlinks are stored verbatim (whatever their target: `/etc`, `../../`) and followed
//!   by the client's kernel, never by the daemon: files created or read through paths
//!   that contain symlinks pointing outside never touch the backing dir's neighbours
//!   through the daemon (who runs as root).
//! - A read-only mount refuses every mutation with EROFS (completing errors.rs:
//!   xattrs, mknod of a regular file, utimens "now", chown, O_RDONLY|O_TRUNC, rename
//!   flags, fallocate-free paths).
//! - The daemon's whole log at RUST_LOG=trace never contains a secret passed in its
//!   environment (AWS_SECRET_ACCESS_KEY & co.).

use crate::common;
use crate::support_s3;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// Everything below `dir`: relative path -> (kind, content or link target, mode).
fn snapshot(dir: &Path) -> BTreeMap<String, (char, Vec<u8>, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let md = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let mode = md.mode() & 0o7777;
            if md.is_dir() {
                stack.push(p.clone());
                out.insert(rel, ('d', Vec::new(), mode));
            } else if md.file_type().is_symlink() {
                let t = fs::read_link(&p).unwrap();
                out.insert(rel, ('l', t.as_os_str().as_bytes().to_vec(), mode));
            } else {
                out.insert(rel, ('f', fs::read(&p).unwrap_or_default(), mode));
            }
        }
    }
    out
}

/// A directory next to the backing dir that only root may enter, with a secret file and
/// a file someone might try to delete: the daemon (root) could reach it, the client
/// user 65534 cannot.
fn make_neighbour(root: &Path) -> PathBuf {
    let n = root.join("neighbour");
    fs::create_dir(&n).unwrap();
    fs::write(n.join("secret"), b"neighbour's secret").unwrap();
    fs::write(n.join("victim"), b"must survive").unwrap();
    fs::set_permissions(&n, fs::Permissions::from_mode(0o700)).unwrap();
    n
}

fn run_as_nobody(script: &str) -> (bool, String, String) {
    let mut c = command_as_nobody("sh");
    c.arg("-c").arg(script);
    let (st, out, err) = run_with_timeout(c, Duration::from_secs(20));
    (st.is_some_and(|s| s.success()), out, err)
}

#[test]
fn symlinks_are_stored_verbatim_and_followed_by_the_client() {
    let m = Mount::with_args(&["--allow-other"]);
    let targets = [
        "/etc",
        "../../",
        "../neighbour/secret",
        "/",
        "a/../../b",
        ".",
    ];
    for (i, t) in targets.iter().enumerate() {
        std::os::unix::fs::symlink(t, m.m(&format!("l{i}"))).unwrap();
    }
    for (i, t) in targets.iter().enumerate() {
        let name = format!("l{i}");
        assert_eq!(
            fs::read_link(m.m(&name)).unwrap(),
            Path::new(t),
            "readlink through the mount"
        );
        assert_eq!(
            fs::read_link(m.b(&name)).unwrap(),
            Path::new(t),
            "stored as a symlink"
        );
        assert!(fs::symlink_metadata(m.m(&name))
            .unwrap()
            .file_type()
            .is_symlink());
    }
    // following a link resolves on the client side: l0 -> /etc is the client's /etc
    assert_eq!(
        fs::read(m.m("l0/hostname")).ok(),
        fs::read("/etc/hostname").ok(),
        "l0/hostname is the client's /etc/hostname"
    );
    // l1 -> ../../ from the mount root is the mount's grandparent, as for any directory
    let grand = m.mnt().parent().unwrap().parent().unwrap();
    assert_eq!(
        fs::canonicalize(m.m("l1")).unwrap(),
        fs::canonicalize(grand).unwrap()
    );
    // listing shows them as links, the daemon never resolved them
    let types: Vec<bool> = fs::read_dir(m.mnt())
        .unwrap()
        .map(|e| e.unwrap().file_type().unwrap().is_symlink())
        .collect();
    assert!(types.iter().all(|&s| s), "{types:?}");
}

#[test]
fn paths_through_symlinks_pointing_outside_never_make_the_daemon_leave_the_volume() {
    let m = Mount::with_prepare(&["--allow-other"], |b| {
        fs::set_permissions(b, fs::Permissions::from_mode(0o777)).unwrap()
    });
    let neighbour = make_neighbour(m.root());
    let before = snapshot(&neighbour);
    // links created by an unprivileged user of the volume
    let (ok, _, err) = run_as_nobody(&format!(
        "cd {mnt} && mkdir d && chmod 777 d && ln -s {n} abs && ln -s ../neighbour rel && ln -s ../../neighbour d/deep",
        mnt = m.mnt().display(),
        n = neighbour.display()
    ));
    assert!(ok, "setting up links as nobody: {err}");
    // the same user tries to create, write, read, delete through them
    let script = format!(
        "cd {mnt}; for l in abs rel d/deep; do \
           echo pwned > $l/created 2>/dev/null && echo ESCAPED-create-$l; \
           cat $l/secret 2>/dev/null && echo ESCAPED-read-$l; \
           rm $l/victim 2>/dev/null && echo ESCAPED-unlink-$l; \
           mkdir $l/newdir 2>/dev/null && echo ESCAPED-mkdir-$l; \
         done; true",
        mnt = m.mnt().display(),
    );
    let (_, out, _) = run_as_nobody(&script);
    assert!(!out.contains("ESCAPED"), "{out}");
    assert_eq!(
        snapshot(&neighbour),
        before,
        "the neighbour of the backing dir changed"
    );
    // the links themselves are inside the backing dir, as links
    assert!(fs::symlink_metadata(m.b("abs"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fs::symlink_metadata(m.b("d/deep"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(!m.b("created").exists() && !m.b("d/created").exists());
}

/// Another client of the share (or anyone with access to the backing dir) swaps a
/// directory the mount knows for a symlink to the outside. The daemon still believes it
/// is a directory (metadata TTL): it must not follow the link when it builds backend
/// paths below it.
#[test]
fn a_directory_swapped_for_a_symlink_in_the_backend_is_not_followed() {
    let m = Mount::with_args(&["--metadata-ttl", "60s"]);
    let neighbour = make_neighbour(m.root());
    fs::create_dir(m.m("d")).unwrap();
    fs::write(m.m("d/own"), b"own file").unwrap();
    // make the mount (and the kernel) know d and the names we will use
    for n in ["secret", "victim", "created", "sub"] {
        let _ = fs::symlink_metadata(m.m(&format!("d/{n}")));
    }
    let before = snapshot(&neighbour);
    // behind the mount's back: d becomes a link to the neighbour
    fs::rename(m.b("d"), m.b("d-moved")).unwrap();
    std::os::unix::fs::symlink(&neighbour, m.b("d")).unwrap();

    let read = fs::read(m.m("d/secret"));
    let created = fs::write(m.m("d/created"), b"pwned");
    let removed = fs::remove_file(m.m("d/victim"));
    let mkdir = fs::create_dir(m.m("d/sub"));
    let after = snapshot(&neighbour);
    let mut escapes = Vec::new();
    if read.as_deref().ok() == Some(b"neighbour's secret".as_slice()) {
        escapes.push("read neighbour/secret".to_string());
    }
    for (name, (kind, data, _)) in &after {
        if before.get(name) != Some(&(*kind, data.clone(), before.get(name).map_or(0, |b| b.2))) {
            escapes.push(format!("created or changed neighbour/{name} ({kind})"));
        }
    }
    for name in before.keys().filter(|n| !after.contains_key(*n)) {
        escapes.push(format!("deleted neighbour/{name}"));
    }
    // Seen once in CI and never since: say what the mount and the backing
    // dir looked like, should it happen again.
    let context = || {
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = m.root().display().to_string();
        let ours: Vec<&str> = mounts.lines().filter(|l| l.contains(&root)).collect();
        let backing: Vec<String> = fs::read_dir(m.b(""))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        format!(
            "mounts: {ours:?}; backing: {backing:?}; d -> {:?}",
            fs::read_link(m.b("d"))
        )
    };
    assert!(
        escapes.is_empty(),
        "the daemon left the volume through a directory swapped for a symlink: {escapes:?} \
         (results through the mount: read {:?}, create {created:?}, unlink {removed:?}, mkdir {mkdir:?}); {}",
        read.map(|d| String::from_utf8_lossy(&d).into_owned()),
        context()
    );
}

/// Names of our temporary objects cannot be addressed through the mount: nobody can
/// open, replace or delete another writer's temp file.
#[test]
fn temp_file_names_cannot_be_addressed_through_the_mount() {
    let m = Mount::with_prepare(&[], |b| fs::write(b.join("doc"), b"old").unwrap());
    let guard = no_fork_guard();
    let mut w = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.m("doc"))
        .unwrap();
    w.write_all(b"new content").unwrap();
    let temps = temp_files_for(m.backing(), "doc");
    assert_eq!(temps.len(), 1);
    let t = &temps[0];
    expect_errno(fs::read(m.m(t)), libc::ENOENT, "open of a temp name");
    expect_errno(
        fs::remove_file(m.m(t)),
        libc::ENOENT,
        "unlink of a temp name",
    );
    expect_errno(
        File::create(m.m(t)),
        libc::ENOENT,
        "create over a temp name",
    );
    expect_errno(
        fs::rename(m.m(t), m.m("stolen")),
        libc::ENOENT,
        "rename of a temp name",
    );
    // a made-up temp-like name cannot be created either (it would be hidden)
    expect_errno(
        File::create(m.m(".x.cachalot-0123456789abcdef0")),
        libc::ENOENT,
        "create of a temp-like name",
    );
    assert!(!fs::read_dir(m.mnt()).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(".cachalot-")));
    close_checked(w).unwrap();
    drop(guard);
    assert_eq!(fs::read(m.b("doc")).unwrap(), b"new content");
}

// ---------------------------------------------------------------------------------------
// Read-only mounts (errors.rs covers create, mkdir, unlink, rmdir, rename, open for
// writing/append/O_TRUNC, chmod, truncate, utimens with times, symlink, link, mkfifo)
// ---------------------------------------------------------------------------------------

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn last() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn res(r: libc::c_int) -> std::io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(last())
    }
}

#[test]
fn read_only_mount_refuses_the_remaining_mutations_with_erofs() {
    let m = Mount::with_prepare(&["--read-only"], |b| {
        fs::write(b.join("f"), b"data").unwrap();
        fs::create_dir(b.join("d")).unwrap();
        fs::write(b.join("d/g"), b"g").unwrap();
    });
    let before = snapshot(m.backing());
    let e = libc::EROFS;
    let (f, d, g) = (c(&m.m("f")), c(&m.m("d")), c(&m.m("d/g")));
    let name = CString::new("user.test").unwrap();
    unsafe {
        expect_errno(
            res(libc::setxattr(
                f.as_ptr(),
                name.as_ptr(),
                b"v".as_ptr() as *const _,
                1,
                0,
            )),
            e,
            "setxattr",
        );
        expect_errno(
            res(libc::setxattr(
                d.as_ptr(),
                name.as_ptr(),
                b"v".as_ptr() as *const _,
                1,
                0,
            )),
            e,
            "setxattr on a directory",
        );
        expect_errno(
            res(libc::removexattr(f.as_ptr(), name.as_ptr())),
            e,
            "removexattr",
        );
        let reg = c(&m.m("regular"));
        expect_errno(
            res(libc::mknod(reg.as_ptr(), libc::S_IFREG | 0o644, 0)),
            e,
            "mknod S_IFREG",
        );
        expect_errno(
            res(libc::utimensat(
                libc::AT_FDCWD,
                f.as_ptr(),
                std::ptr::null(),
                0,
            )),
            e,
            "utimens now (touch)",
        );
        expect_errno(res(libc::chown(f.as_ptr(), 65534, 65534)), e, "chown");
        expect_errno(
            res(libc::chown(d.as_ptr(), 0, 0)),
            e,
            "chown of a directory to itself",
        );
        expect_errno(
            res(libc::chmod(d.as_ptr(), 0o700)),
            e,
            "chmod of a directory",
        );
        let fd = libc::open(f.as_ptr(), libc::O_RDONLY | libc::O_TRUNC | libc::O_CLOEXEC);
        let r = if fd >= 0 {
            libc::close(fd);
            Ok(())
        } else {
            Err(last())
        };
        expect_errno(r, e, "open O_RDONLY|O_TRUNC");
        let g2 = c(&m.m("g2"));
        expect_errno(
            res(libc::renameat2(
                libc::AT_FDCWD,
                g.as_ptr(),
                libc::AT_FDCWD,
                g2.as_ptr(),
                libc::RENAME_NOREPLACE,
            )),
            e,
            "rename RENAME_NOREPLACE",
        );
        expect_errno(
            res(libc::renameat2(
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::AT_FDCWD,
                g.as_ptr(),
                libc::RENAME_EXCHANGE,
            )),
            e,
            "rename RENAME_EXCHANGE",
        );
        let newf = c(&m.m("d/new"));
        let fd = libc::open(
            newf.as_ptr(),
            libc::O_RDONLY | libc::O_CREAT | libc::O_CLOEXEC,
            0o644,
        );
        let r = if fd >= 0 {
            libc::close(fd);
            Ok(())
        } else {
            Err(last())
        };
        expect_errno(r, e, "open O_RDONLY|O_CREAT of a new file");
        let tmpf = libc::open(
            d.as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o600,
        );
        let r = if tmpf >= 0 {
            libc::close(tmpf);
            Ok(())
        } else {
            Err(last())
        };
        expect_errno(r, e, "O_TMPFILE");
    }
    // reads and the stats attribute still work
    assert_eq!(fs::read(m.m("f")).unwrap(), b"data");
    m.stats();
    assert_eq!(snapshot(m.backing()), before, "the backing dir changed");
    assert!(all_temp_files(m.backing()).is_empty());
}

// ---------------------------------------------------------------------------------------
// Secrets never reach the log
// ---------------------------------------------------------------------------------------

#[test]
fn trace_log_never_contains_secrets_from_the_environment() {
    for format in ["text", "json"] {
        let log = trace_log_of_a_busy_mount(format);
        if format == "json" {
            every_line_is_json_and_errors_carry_their_context(&log);
        }
    }
}

/// The whole trace log of a mount (log format `format`) whose environment
/// holds secrets, after successes and failures of all kinds; asserts that
/// no secret is in it.
fn trace_log_of_a_busy_mount(format: &str) -> String {
    let secret = format!("SECRET-{:016x}", rand_u64());
    let token = format!("TOKEN-{:016x}", rand_u64());
    let mut m = Mount::unmounted(&["--uid", "65534", "--gid", "65534", "--log-format", format]);
    fs::write(m.b("readable"), b"data").unwrap();
    fs::set_permissions(m.b("readable"), fs::Permissions::from_mode(0o644)).unwrap();
    m.set_env("RUST_LOG", "trace");
    m.set_env("AWS_SECRET_ACCESS_KEY", &secret);
    m.set_env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE");
    m.set_env("AWS_SESSION_TOKEN", &token);
    m.set_env("CACHALOT_S3_SECRET_KEY", &secret);
    m.start();
    // successes and failures of all kinds, so that every log path runs
    assert_eq!(fs::read(m.m("readable")).unwrap(), b"data");
    let _ = fs::write(m.m("denied"), b"x"); // EACCES: root-owned dir, identity 65534
    let _ = fs::read(m.m("missing"));
    let _ = fs::read_dir(m.mnt()).map(|rd| rd.count());
    let _ = fs::metadata(m.m("readable"));
    m.stats();
    m.stop();
    let log = m.log_text();
    assert!(
        log.lines().count() > 10,
        "{format} trace log suspiciously short:\n{log}"
    );
    for s in [&secret, &token] {
        assert!(
            !log.contains(s.as_str()),
            "the daemon's {format} log contains a secret from its environment:\n{}",
            log.lines()
                .filter(|l| l.contains(s.as_str()))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    log
}

/// `--log-format json`: one JSON object per line, and the refused write's
/// line names backend, operation, path and identity as fields of their own;
/// the refusal is logged once (where it is answered to the kernel).
fn every_line_is_json_and_errors_carry_their_context(log: &str) {
    let mut refused = None;
    let mut refusals = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        if v["message"] == "backend refused" && v["errno"] == libc::EACCES {
            refusals += 1;
            refused = Some(v);
        }
    }
    assert_eq!(refusals, 1, "the refused write is logged once:\n{log}");
    let v = refused.unwrap_or_else(|| panic!("no JSON line for the refused write:\n{log}"));
    assert!(
        v["backend"].as_str().unwrap_or("").starts_with("file://"),
        "{v}"
    );
    assert!(!v["operation"].as_str().unwrap_or("").is_empty(), "{v}");
    assert_eq!(v["path"], "/denied", "{v}");
    assert_eq!(v["identity"], "65534:65534", "{v}");
}

/// The same with a real S3 mount (SeaweedFS, SigV4): the secret key is used to sign
/// every request, and must still never be logged.
#[test]
fn trace_log_of_an_s3_mount_never_contains_the_secret_key() {
    let server = support_s3::S3Server::seaweed();
    let cache = tempfile::tempdir().unwrap();
    let m = support_s3::mount::Mounted::start_with_env(
        &server,
        "secrets",
        cache.path(),
        &[],
        &[("RUST_LOG", "trace")],
    );
    fs::write(m.path("f"), b"data").unwrap();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"data");
    let _ = fs::read(m.path("missing"));
    let _ = fs::read_dir(m.path("")).map(|rd| rd.count());
    fs::remove_file(m.path("f")).unwrap();
    let log_path = m.log.clone();
    drop(m); // stop the daemon: the log is complete
    let log = fs::read_to_string(&log_path).unwrap();
    eprintln!("S3 mount trace log: {} lines", log.lines().count());
    assert!(
        log.lines().count() > 10,
        "trace log suspiciously short:\n{log}"
    );
    assert!(
        !log.contains(support_s3::SECRET),
        "the S3 mount's log contains the secret key:\n{}",
        log.lines()
            .filter(|l| l.contains(support_s3::SECRET))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn source_errors_do_not_echo_credentials_in_the_url() {
    let secret = format!("SECRET-{:016x}", rand_u64());
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().display().to_string();
    let mut leaks = Vec::new();
    for url in [
        format!("file://user:{secret}@/tmp"),
        format!("file://user:{secret}@host/tmp"),
        format!("s3://AKID:{secret}@bucket/prefix"),
        format!("nfs://u:{secret}@server/export"),
    ] {
        let (st, out, err) = run_cli(
            &["mount", &url, &mnt, "--cache-dir", "/tmp/c"],
            Duration::from_secs(10),
        );
        assert!(!st.is_some_and(|s| s.success()), "{url} accepted");
        if out.contains(&secret) || err.contains(&secret) {
            leaks.push(format!("{url}:\n  {}", err.trim()));
        }
    }
    assert!(
        leaks.is_empty(),
        "errors that show the password:\n{}",
        leaks.join("\n")
    );
}

fn rand_u64() -> u64 {
    use rand::Rng;
    rand::rng().random()
}
