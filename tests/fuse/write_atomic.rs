//! Atomic publication of writes: data goes to a hidden `.<name>.cachalot-<hex>` temp file
//! in the same backing directory; the final name is created/replaced only at close/fsync.
//! Also: crash (kill -9) in the middle of a write, and cleanup of leftovers at the next mount.

use crate::common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::*;

const KIB: usize = 1024;

/// Assert there is exactly one well-formed temp file for `name` in `dir`; return its name.
#[track_caller]
fn one_temp(dir: &Path, name: &str) -> String {
    let temps = temp_files_for(dir, name);
    let all: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        temps.len(),
        1,
        "expected one `.{name}.cachalot-<hex>` temp file in {}, dir has {all:?}",
        dir.display()
    );
    let id = temps[0]
        .strip_prefix(&format!(".{name}.cachalot-"))
        .unwrap();
    assert!(!id.is_empty(), "temp file without an id: {:?}", temps[0]);
    temps[0].clone()
}

#[test]
fn temp_file_name_is_dot_name_cachalot_hex() {
    // contract: `.<name>.cachalot-<id>` with id = hex
    let m = Mount::new();
    let _nofork = no_fork_guard(); // see common/mod.rs: FORK_LOCK
    let mut f = File::create(m.m("report.pdf")).unwrap();
    f.write_all(b"%PDF").unwrap();
    let t = one_temp(m.backing(), "report.pdf");
    drop(f);
    let id = t.strip_prefix(".report.pdf.cachalot-").unwrap();
    assert!(
        id.chars().all(|c| c.is_ascii_hexdigit()),
        "temp file id should be hex, got {t:?}"
    );
    assert_eq!(fs::read(m.b("report.pdf")).unwrap(), b"%PDF");
}

#[test]
fn new_file_is_published_only_at_close() {
    let m = Mount::new();
    let data = pattern(256 * KIB + 7, 10);
    let _nofork = no_fork_guard(); // see common/mod.rs: FORK_LOCK
    let mut f = File::create(m.m("new.bin")).unwrap();
    f.write_all(&data).unwrap();

    // open, data written, not closed: the final name does not exist in the backing dir ...
    assert!(
        fs::symlink_metadata(m.b("new.bin")).is_err(),
        "final name exists in the backing dir before close"
    );
    // ... but a hidden temp file in the same directory does
    one_temp(m.backing(), "new.bin");
    // through the mount the new file exists (POSIX: visible right after open(O_CREAT))
    assert!(
        fs::metadata(m.m("new.bin")).is_ok(),
        "new file not visible through the mount while open"
    );

    drop(f); // close(2)
    assert_bytes_eq(
        &fs::read(m.b("new.bin")).unwrap(),
        &data,
        "backing after close",
    );
    assert!(
        temp_files_for(m.backing(), "new.bin").is_empty(),
        "temp file left after close"
    );
    assert_bytes_eq(
        &fs::read(m.m("new.bin")).unwrap(),
        &data,
        "mount after close",
    );
}

#[test]
fn existing_file_keeps_old_content_until_close() {
    let m = Mount::with_prepare(&[], |b| {
        fs::write(b.join("doc.txt"), b"old content").unwrap()
    });
    assert_eq!(fs::read(m.m("doc.txt")).unwrap(), b"old content");
    let new = pattern(100 * KIB, 11);
    let _nofork = no_fork_guard(); // see common/mod.rs: FORK_LOCK
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.m("doc.txt"))
        .unwrap();
    f.write_all(&new).unwrap();

    assert_eq!(
        fs::read(m.b("doc.txt")).unwrap(),
        b"old content",
        "backing changed before close"
    );
    one_temp(m.backing(), "doc.txt");

    close_checked(f).expect("close must succeed (publish)");
    assert_bytes_eq(
        &fs::read(m.b("doc.txt")).unwrap(),
        &new,
        "backing after close",
    );
    assert!(temp_files_for(m.backing(), "doc.txt").is_empty());
    assert_bytes_eq(
        &fs::read(m.m("doc.txt")).unwrap(),
        &new,
        "mount after close",
    );
}

#[test]
fn partial_overwrite_is_atomic_and_complete() {
    let orig = pattern(2 * 1024 * KIB + 5, 12);
    let o2 = orig.clone();
    let m = Mount::with_prepare(&[], move |b| fs::write(b.join("img"), &o2).unwrap());
    let _nofork = no_fork_guard(); // see common/mod.rs: FORK_LOCK
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.m("img"))
        .unwrap();
    f.write_all_at(b"PATCH", 1024 * KIB as u64 - 2).unwrap();

    assert_bytes_eq(
        &fs::read(m.b("img")).unwrap(),
        &orig,
        "backing changed before close",
    );
    one_temp(m.backing(), "img");

    drop(f);
    let mut exp = orig.clone();
    exp[1024 * KIB - 2..1024 * KIB + 3].copy_from_slice(b"PATCH");
    // the published file is complete: untouched ranges were copied (copy-on-write)
    assert_bytes_eq(&fs::read(m.b("img")).unwrap(), &exp, "backing after close");
    assert!(temp_files_for(m.backing(), "img").is_empty());
}

#[test]
fn temp_file_lives_in_the_same_directory() {
    let m = Mount::with_prepare(&[], |b| fs::create_dir_all(b.join("sub/dir")).unwrap());
    let _nofork = no_fork_guard(); // see common/mod.rs: FORK_LOCK
    let mut f = File::create(m.m("sub/dir/x.dat")).unwrap();
    f.write_all(b"some bytes").unwrap();
    one_temp(&m.b("sub/dir"), "x.dat");
    assert!(
        temp_files_for(m.backing(), "x.dat").is_empty(),
        "temp must not be at the root"
    );
    assert!(!m.b("sub/dir/x.dat").exists());
    drop(f);
    assert_eq!(fs::read(m.b("sub/dir/x.dat")).unwrap(), b"some bytes");
    assert!(temp_files_for(&m.b("sub/dir"), "x.dat").is_empty());
}

#[test]
fn fsync_publishes() {
    let m = Mount::with_prepare(&[], |b| fs::write(b.join("journal"), b"v0").unwrap());
    let _nofork = no_fork_guard(); // see common/mod.rs: FORK_LOCK
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.m("journal"))
        .unwrap();
    f.write_all(b"first part;").unwrap();
    assert_eq!(fs::read(m.b("journal")).unwrap(), b"v0");
    f.sync_all().expect("fsync");
    assert_eq!(
        fs::read(m.b("journal")).unwrap(),
        b"first part;",
        "fsync did not publish"
    );

    f.write_all(b"second part").unwrap();
    f.sync_data().expect("fdatasync");
    assert_eq!(
        fs::read(m.b("journal")).unwrap(),
        b"first part;second part",
        "fdatasync did not publish"
    );

    f.write_all(b"!").unwrap();
    close_checked(f).unwrap();
    assert_eq!(
        fs::read(m.b("journal")).unwrap(),
        b"first part;second part!"
    );
    assert!(temp_files_for(m.backing(), "journal").is_empty());

    // fsync on a brand-new file makes the final name appear
    let mut g = File::create(m.m("fresh")).unwrap();
    g.write_all(b"fresh").unwrap();
    assert!(!m.b("fresh").exists());
    g.sync_all().unwrap();
    assert_eq!(fs::read(m.b("fresh")).unwrap(), b"fresh");
    drop(g);
    assert_eq!(fs::read(m.b("fresh")).unwrap(), b"fresh");
    assert!(temp_files_for(m.backing(), "fresh").is_empty());
}

#[test]
fn kill9_mid_write_keeps_old_content_and_next_mount_cleans_up() {
    let mut m = Mount::with_prepare(&[], |b| {
        fs::write(b.join("precious"), b"old and safe").unwrap();
        fs::create_dir_all(b.join("a/b")).unwrap();
        fs::write(b.join(".hidden-user-file"), b"keep me").unwrap();
        fs::write(b.join("a/b/normal"), b"keep me too").unwrap();
    });
    // a rewrite of an existing file and a brand-new file (nested), both mid-write
    let _nofork = no_fork_guard(); // see common/mod.rs: FORK_LOCK
    let mut f1 = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.m("precious"))
        .unwrap();
    f1.write_all(&pattern(300 * KIB, 13)).unwrap();
    let mut f2 = File::create(m.m("a/b/brand-new")).unwrap();
    f2.write_all(&pattern(50 * KIB, 14)).unwrap();
    one_temp(m.backing(), "precious");
    one_temp(&m.b("a/b"), "brand-new");

    // SIGKILL while still holding the guard; release it (kill9 may spawn umount helpers)
    // only once the daemon is dead and cannot publish anything any more
    let pid = m.pid().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(") ")
            .is_none_or(|(_, r)| r.starts_with('Z'))
    }));
    drop(_nofork);
    m.kill9();
    drop(f1); // close on a dead connection; errors ignored
    drop(f2);

    assert_eq!(
        fs::read(m.b("precious")).unwrap(),
        b"old and safe",
        "final name changed by a crash"
    );
    assert!(
        fs::symlink_metadata(m.b("a/b/brand-new")).is_err(),
        "unpublished new file appeared"
    );
    let t1 = one_temp(m.backing(), "precious");
    let t2 = one_temp(&m.b("a/b"), "brand-new");

    m.start();
    let gone = wait_until(Duration::from_secs(5), || {
        !m.b(&t1).exists() && !m.b("a/b").join(&t2).exists()
    });
    assert!(
        gone,
        "leftover temp files not cleaned at the next mount: {:?}",
        all_temp_files(m.backing())
    );
    assert!(all_temp_files(m.backing()).is_empty());
    // user files are not touched by the cleanup
    assert_eq!(fs::read(m.b(".hidden-user-file")).unwrap(), b"keep me");
    assert_eq!(fs::read(m.b("a/b/normal")).unwrap(), b"keep me too");
    assert_eq!(fs::read(m.b("precious")).unwrap(), b"old and safe");

    // and the new mount works
    assert_eq!(fs::read(m.m("precious")).unwrap(), b"old and safe");
    fs::write(m.m("a/b/brand-new"), b"second try").unwrap();
    assert_eq!(fs::read(m.b("a/b/brand-new")).unwrap(), b"second try");
    assert_eq!(fs::read(m.m("a/b/brand-new")).unwrap(), b"second try");
}

#[test]
fn kill9_dead_mount_reports_enotconn_until_unmounted() {
    let mut m = Mount::with_prepare(&[], |b| fs::write(b.join("f"), b"x").unwrap());
    assert_eq!(fs::read(m.m("f")).unwrap(), b"x");
    let pid = m.pid().unwrap();
    // kill the daemon but do not unmount yet: the mount is dead
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || {
            fs::metadata(m.m("f")).err().and_then(|e| e.raw_os_error()) == Some(libc::ENOTCONN)
        }),
        "dead mount should answer ENOTCONN, got {:?}",
        fs::metadata(m.m("f"))
    );
    m.kill9(); // reap + lazy unmount
    m.start();
    assert_eq!(fs::read(m.m("f")).unwrap(), b"x");
}

#[test]
fn open_without_writing_changes_nothing_and_leaves_no_temp() {
    let m = Mount::with_prepare(&[], |b| fs::write(b.join("f"), b"unchanged").unwrap());
    let _nofork = no_fork_guard(); // see common/mod.rs: FORK_LOCK
    {
        let _r = File::open(m.m("f")).unwrap();
        assert!(
            temp_files_for(m.backing(), "f").is_empty(),
            "a read-only open created a temp file"
        );
    }
    {
        let _w = OpenOptions::new().write(true).open(m.m("f")).unwrap();
    }
    assert_eq!(fs::read(m.b("f")).unwrap(), b"unchanged");
    assert!(all_temp_files(m.backing()).is_empty());
}

#[test]
fn empty_create_and_truncating_open_publish_empty_files() {
    let m = Mount::with_prepare(&[], |b| fs::write(b.join("full"), b"some content").unwrap());
    // touch: create and close without writing
    drop(File::create(m.m("touched")).unwrap());
    let md = fs::metadata(m.b("touched")).expect("created empty file not published");
    assert_eq!(md.len(), 0);
    // `: > full`: O_TRUNC and close
    drop(File::create(m.m("full")).unwrap());
    assert_eq!(
        fs::read(m.b("full")).unwrap(),
        b"",
        "O_TRUNC open+close did not truncate"
    );
    assert_eq!(fs::metadata(m.m("full")).unwrap().len(), 0);
    assert!(all_temp_files(m.backing()).is_empty());
}

#[test]
fn unlink_while_open_for_write_does_not_resurrect_the_file() {
    let m = Mount::with_prepare(&[], |b| fs::write(b.join("victim"), b"old").unwrap());
    let _nofork = no_fork_guard(); // see common/mod.rs: FORK_LOCK
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.m("victim"))
        .unwrap();
    f.write_all(b"new data").unwrap();
    fs::remove_file(m.m("victim")).unwrap();
    assert!(
        !m.b("victim").exists(),
        "unlink did not remove the backing file"
    );
    drop(f);
    assert!(
        !m.b("victim").exists(),
        "the unlinked file reappeared at close"
    );
    assert!(!m.m("victim").exists());
    // The old content was kept under a hidden name for the open handle; it
    // goes at the handle's RELEASE, which the kernel sends asynchronously
    // after close(2) returns (under load, some milliseconds later).
    assert!(
        wait_until(Duration::from_secs(5), || all_temp_files(m.backing())
            .is_empty()),
        "{:?}",
        all_temp_files(m.backing())
    );

    // same for a brand-new file
    let mut g = File::create(m.m("scratch")).unwrap();
    g.write_all(b"scratch").unwrap();
    fs::remove_file(m.m("scratch")).unwrap();
    drop(g);
    assert!(
        !m.b("scratch").exists(),
        "the unlinked new file appeared at close"
    );
    assert!(
        all_temp_files(m.backing()).is_empty(),
        "{:?}",
        all_temp_files(m.backing())
    );
}

#[test]
fn rename_while_open_for_write_publishes_under_the_new_name() {
    let m = Mount::new();
    let _nofork = no_fork_guard(); // see common/mod.rs: FORK_LOCK
    let mut f = File::create(m.m("draft")).unwrap();
    f.write_all(b"part one;").unwrap();
    fs::rename(m.m("draft"), m.m("final")).unwrap();
    f.write_all(b"part two").unwrap();
    drop(f);
    assert_eq!(fs::read(m.b("final")).unwrap(), b"part one;part two");
    assert!(!m.b("draft").exists(), "file published under its old name");
    assert_eq!(fs::read(m.m("final")).unwrap(), b"part one;part two");
    assert!(
        all_temp_files(m.backing()).is_empty(),
        "{:?}",
        all_temp_files(m.backing())
    );
}

#[test]
fn two_writers_on_different_files_in_parallel() {
    let m = Mount::new();
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let p = m.m(&format!("par-{i}"));
            std::thread::spawn(move || {
                let data = pattern(700 * KIB + i, 100 + i as u64);
                let mut f = File::create(&p).unwrap();
                for c in data.chunks(64 * KIB + 3) {
                    f.write_all(c).unwrap();
                }
                close_checked(f).unwrap();
                data
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let data = h.join().unwrap();
        assert_bytes_eq(
            &fs::read(m.b(&format!("par-{i}"))).unwrap(),
            &data,
            "parallel writer",
        );
    }
    assert!(all_temp_files(m.backing()).is_empty());
}

#[test]
fn fork_exec_while_writing_does_not_publish() {
    // A multi-threaded program that spawns a child while a file is open for writing: the
    // child inherits the descriptor and exec closes it (O_CLOEXEC), which the kernel reports
    // to the daemon as FLUSH with another pid / lock owner. That is not the writer's close:
    // the half-written data must not be published (mountpoint-s3 ignores such flushes).
    let m = Mount::with_prepare(&[], |b| fs::write(b.join("doc"), b"old").unwrap());
    let _only_us = exclusive_fork_guard();
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.m("doc"))
        .unwrap();
    f.write_all(b"half-").unwrap();
    let st = std::process::Command::new("true").status().unwrap();
    assert!(st.success());
    assert_eq!(
        fs::read(m.b("doc")).unwrap(),
        b"old",
        "a child's exec (closing an inherited O_CLOEXEC copy) published the half-written file"
    );
    f.write_all(b"written").unwrap();
    drop(f);
    drop(_only_us);
    assert_eq!(fs::read(m.b("doc")).unwrap(), b"half-written");
    assert!(
        all_temp_files(m.backing()).is_empty(),
        "{:?}",
        all_temp_files(m.backing())
    );
}
