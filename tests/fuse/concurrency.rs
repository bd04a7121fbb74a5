//! Several processes at once on one mount, and two daemons on one volume.
//!
//! Readers and writers run as separate processes: this test binary re-executed with
//! `CACHALOT_CONC_ROLE=<role>` (see [`child_role`]), plus `sh -c` and `dd`. Every
//! process that writes closes its own descriptors, as real applications do.
//!
//! Versions written by the republishing writers are uniform: every byte of version k is
//! `fill(k)`, and the length is a function of that byte (`len_of`), so a reader that sees
//! two different bytes saw a mix of versions, and a length that does not match the byte
//! is a truncated (or extended) view.

use crate::common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const ROLE_ENV: &str = "CACHALOT_CONC_ROLE";

/// Byte of version `k` (printable, 90 distinct values).
fn fill(k: u64) -> u8 {
    0x21 + (k % 90) as u8
}

/// Length of every version whose bytes are `b`: several pages of 4 KiB, varying.
fn len_of(b: u8) -> usize {
    40_000 + (b as usize % 13) * 4_099
}

fn version(k: u64) -> Vec<u8> {
    let b = fill(k);
    vec![b; len_of(b)]
}

/// A whole-file view is one complete version.
fn check_view(data: &[u8]) -> Result<u8, String> {
    let Some(&b) = data.first() else {
        return Err("empty file".into());
    };
    if let Some(i) = data.iter().position(|&x| x != b) {
        return Err(format!(
            "mix of versions: byte {:?} at 0 but {:?} at {i} (len {})",
            b as char,
            data[i] as char,
            data.len()
        ));
    }
    if data.len() != len_of(b) {
        return Err(format!(
            "incomplete version {:?}: {} bytes, expected {}",
            b as char,
            data.len(),
            len_of(b)
        ));
    }
    Ok(b)
}

fn env_str(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("child: {k} not set"))
}

fn env_u64(k: &str) -> u64 {
    env_str(k).parse().unwrap()
}

// ---------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------

/// Entry point of the child processes; does nothing in a normal test run.
#[test]
fn child_role() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    match role.as_str() {
        "reader" => reader_main(),
        "writer" => writer_main(),
        other => panic!("unknown role {other}"),
    }
}

/// Re-run this test binary as a child process in `role`.
fn spawn_child(role: &str, env: &[(&str, String)]) -> Child {
    spawn_child_role(ROLE_ENV, role, env, true)
}

/// Wait for a child (killing it after `timeout`); returns (success, its RESULT line, stderr).
fn finish_child(mut c: Child, timeout: Duration, what: &str) -> (bool, String, String) {
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = c.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    c.stdout.take().unwrap().read_to_string(&mut out).ok();
    c.stderr.take().unwrap().read_to_string(&mut err).ok();
    let result = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or("")
        .to_string();
    if status.is_none() {
        eprintln!("{what}: killed after {timeout:?}");
    }
    (status.is_some_and(|s| s.success()), result, err)
}

/// Reader: until the stop file exists (and at least CHILD_MIN_READS times), read the
/// whole file in 4 KiB reads (dropping the kernel's page cache of it every other time, as
/// memory pressure would, so reads reach the daemon) and check it is one complete version.
fn reader_main() {
    let path = PathBuf::from(env_str("CHILD_PATH"));
    let stop = PathBuf::from(env_str("CHILD_STOP"));
    let min = env_u64("CHILD_MIN_READS");
    let mut reads = 0u64;
    let mut seen = std::collections::BTreeSet::new();
    let mut violations = Vec::new();
    // Another mount's descriptor reads the version it opened; if that version
    // is replaced behind the mount before it was read (and cached), reads fail
    // with ESTALE, as on NFS. Allowed (counted) only while the file changes.
    let estale_ok = std::env::var("CHILD_ESTALE_OK").is_ok();
    // Likewise an open, where the mount moves names on (passthrough).
    let open_estale_ok = std::env::var("CHILD_OPEN_ESTALE_OK").is_ok();
    let mut estale = 0u64;
    while reads < min || !stop.exists() {
        let stable = stop.exists();
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if open_estale_ok && !stable && e.raw_os_error() == Some(libc::ESTALE) => {
                estale += 1;
                continue;
            }
            Err(e) => {
                violations.push(format!("open: {e}"));
                continue;
            }
        };
        if reads % 2 == 1 {
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
        let mut data = Vec::new();
        let mut buf = vec![0u8; 4096];
        let r = loop {
            match f.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => data.extend_from_slice(&buf[..n]),
                Err(e) => break Err(e),
            }
        };
        drop(f);
        if let Err(e) = &r {
            if estale_ok && !stable && e.raw_os_error() == Some(libc::ESTALE) {
                estale += 1;
                continue;
            }
        }
        reads += 1;
        match r
            .map_err(|e| format!("read: {e}"))
            .and_then(|_| check_view(&data))
        {
            Ok(b) => {
                seen.insert(b);
            }
            Err(e) => violations.push(format!("read #{reads}: {e}")),
        }
        if violations.len() > 20 {
            break;
        }
    }
    println!(
        "RESULT reads={reads} versions_seen={} violations={} estale={estale}",
        seen.len(),
        violations.len()
    );
    for v in &violations {
        eprintln!("VIOLATION {v}");
    }
    assert!(violations.is_empty(), "{} violations", violations.len());
}

/// Writer: write versions CHILD_FIRST.. CHILD_FIRST+CHILD_VERSIONS-1 of CHILD_PATH in
/// 4 KiB writes. CHILD_MODE `trunc`: open(O_TRUNC) + write + close; `rename`: write a
/// temp name next to it, close, rename over; `mixed`: alternate. Touches CHILD_STOP at
/// the end (if set).
fn writer_main() {
    let path = PathBuf::from(env_str("CHILD_PATH"));
    let first = env_u64("CHILD_FIRST");
    let n = env_u64("CHILD_VERSIONS");
    let mode = env_str("CHILD_MODE");
    for k in first..first + n {
        let data = version(k);
        let by_rename = match mode.as_str() {
            "trunc" => false,
            "rename" => true,
            _ => k % 2 == 0,
        };
        let target = if by_rename {
            path.with_file_name(format!(
                "{}.tmp",
                path.file_name().unwrap().to_string_lossy()
            ))
        } else {
            path.clone()
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&target)
            .unwrap_or_else(|e| panic!("open {}: {e}", target.display()));
        for chunk in data.chunks(4096) {
            f.write_all(chunk).unwrap();
        }
        close_checked(f).unwrap_or_else(|e| panic!("close of version {k}: {e}"));
        if by_rename {
            fs::rename(&target, &path).unwrap();
        }
    }
    if let Ok(stop) = std::env::var("CHILD_STOP") {
        fs::write(stop, b"done").unwrap();
    }
    println!("RESULT versions={n}");
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// Violation lines of a child's stderr, grouped by kind (numbers blanked), with counts
/// and one example each.
fn summarize_violations(stderr: &str) -> String {
    let mut kinds: std::collections::BTreeMap<String, (usize, String)> = Default::default();
    for l in stderr.lines().filter_map(|l| l.strip_prefix("VIOLATION ")) {
        let kind: String = l
            .split(": ")
            .skip(1)
            .collect::<Vec<_>>()
            .join(": ")
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        let kind = if kind.is_empty() { l.to_string() } else { kind };
        let e = kinds.entry(kind).or_insert((0, l.to_string()));
        e.0 += 1;
    }
    if kinds.is_empty() {
        return format!("  (no violation lines; stderr: {stderr})");
    }
    kinds
        .values()
        .map(|(n, ex)| format!("  {n:3} x {ex}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn processes_writing_different_files_in_one_directory() {
    let m = Mount::with_args(&["--page-size", "16KiB"]);
    fs::create_dir(m.m("shared")).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    const WRITERS: u64 = 4;
    const VERSIONS: u64 = 12;

    // 4 republishing writers (child processes), one file each
    let writers: Vec<Child> = (0..WRITERS)
        .map(|w| {
            spawn_child(
                "writer",
                &[
                    (
                        "CHILD_PATH",
                        m.m(&format!("shared/w{w}")).display().to_string(),
                    ),
                    ("CHILD_FIRST", (w * 100).to_string()),
                    ("CHILD_VERSIONS", VERSIONS.to_string()),
                    (
                        "CHILD_MODE",
                        ["trunc", "rename", "mixed", "trunc"][w as usize].into(),
                    ),
                ],
            )
        })
        .collect();
    // 2 shells creating 40 small files each
    let shells: Vec<Child> = (0..2)
        .map(|s| {
            let script = format!(
                "for i in $(seq 1 40); do echo \"shell {s} file $i\" > {dir}/s{s}_$i || exit 1; done",
                dir = m.m("shared").display()
            );
            spawn_locked(Command::new("sh").arg("-c").arg(script)).unwrap()
        })
        .collect();
    // 2 dd processes copying a 1 MiB file each in 64 KiB blocks, 3 times over
    let dds: Vec<Child> = (0..2)
        .map(|d| {
            let src = scratch.path().join(format!("src{d}"));
            fs::write(&src, pattern(1 << 20, 500 + d)).unwrap();
            let script = format!(
                "for i in 1 2 3; do dd if={src} of={dst} bs=64k status=none || exit 1; done",
                src = src.display(),
                dst = m.m(&format!("shared/dd{d}")).display()
            );
            spawn_locked(Command::new("sh").arg("-c").arg(script)).unwrap()
        })
        .collect();

    for (i, c) in writers.into_iter().enumerate() {
        let (ok, result, err) = finish_child(c, Duration::from_secs(60), "writer");
        assert!(ok, "writer {i} failed: {result} {err}");
    }
    for mut c in shells.into_iter().chain(dds) {
        assert!(c.wait().unwrap().success(), "a shell/dd writer failed");
    }

    // Everything is there, complete, through the mount and in the backing dir
    let mut expected: Vec<String> = (0..WRITERS).map(|w| format!("w{w}")).collect();
    for s in 0..2 {
        expected.extend((1..=40).map(|i| format!("s{s}_{i}")));
    }
    expected.extend(["dd0".to_string(), "dd1".to_string()]);
    expected.sort();
    assert_eq!(
        listing(&m.m("shared")),
        expected,
        "listing through the mount"
    );
    assert_eq!(
        listing(&m.b("shared")),
        expected,
        "listing of the backing dir"
    );
    for w in 0..WRITERS {
        let last = version(w * 100 + VERSIONS - 1);
        for (what, p) in [
            ("mount", m.m(&format!("shared/w{w}"))),
            ("backing", m.b(&format!("shared/w{w}"))),
        ] {
            assert_bytes_eq(&fs::read(&p).unwrap(), &last, &format!("{what} w{w}"));
        }
    }
    for s in 0..2 {
        for i in 1..=40 {
            let want = format!("shell {s} file {i}\n");
            assert_eq!(
                fs::read_to_string(m.m(&format!("shared/s{s}_{i}"))).unwrap(),
                want
            );
            assert_eq!(
                fs::read_to_string(m.b(&format!("shared/s{s}_{i}"))).unwrap(),
                want
            );
        }
    }
    for d in 0..2 {
        let want = pattern(1 << 20, 500 + d);
        assert_bytes_eq(
            &fs::read(m.m(&format!("shared/dd{d}"))).unwrap(),
            &want,
            "dd via mount",
        );
        assert_bytes_eq(
            &fs::read(m.b(&format!("shared/dd{d}"))).unwrap(),
            &want,
            "dd backing",
        );
    }
    assert!(
        all_temp_files(m.backing()).is_empty(),
        "{:?}",
        all_temp_files(m.backing())
    );
}

/// Readers in a loop while a writer republishes the file with complete, distinct
/// versions: every read sees exactly one complete version. `other_mount`: the readers
/// use a second daemon on the same volume (metadata TTL 0s, so they follow at once).
fn readers_see_complete_versions(mode: &str, other_mount: bool) {
    readers_see_complete_versions_with(mode, other_mount, &[]);
}

fn readers_see_complete_versions_with(mode: &str, other_mount: bool, extra: &[&str]) {
    let args: Vec<&str> = ["--page-size", "4KiB"]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    let m = Mount::with_prepare(&args, |b| fs::write(b.join("v"), version(0)).unwrap());
    let reader_mount = other_mount.then(|| {
        let mut r = Mount::unmounted(&["--page-size", "4KiB", "--metadata-ttl", "0s"]);
        r.use_backing_dir(m.backing());
        r.use_cache_dir(m.cache_dir());
        r.start();
        r
    });
    let read_path = reader_mount.as_ref().unwrap_or(&m).m("v");
    let scratch = tempfile::tempdir().unwrap();
    let stop = scratch.path().join("stop");
    let readers: Vec<Child> = (0..3)
        .map(|_| {
            let mut env = vec![
                ("CHILD_PATH", read_path.display().to_string()),
                ("CHILD_STOP", stop.display().to_string()),
                ("CHILD_MIN_READS", "20".into()),
            ];
            // With passthrough, an open that races two moves of the name
            // (the writer's rename and a reader's move off a passthrough
            // inode) can get ESTALE after the kernel's one retry: the
            // documented price of --passthrough-read-write.
            if other_mount {
                env.push(("CHILD_ESTALE_OK", "1".into()));
            }
            if !extra.is_empty() {
                env.push(("CHILD_OPEN_ESTALE_OK", "1".into()));
            }
            spawn_child("reader", &env)
        })
        .collect();
    let writer = spawn_child(
        "writer",
        &[
            ("CHILD_PATH", m.m("v").display().to_string()),
            ("CHILD_FIRST", "1".into()),
            ("CHILD_VERSIONS", "150".into()),
            ("CHILD_MODE", mode.into()),
            ("CHILD_STOP", stop.display().to_string()),
        ],
    );
    // The backend itself must only ever hold complete versions.
    let writer_done = Arc::new(AtomicBool::new(false));
    let backend_watch = {
        let (file, done) = (m.b("v"), Arc::clone(&writer_done));
        std::thread::spawn(move || {
            let mut bad = Vec::new();
            while !done.load(Ordering::Acquire) {
                match fs::read(&file)
                    .map_err(|e| e.to_string())
                    .and_then(|d| check_view(&d))
                {
                    Ok(_) => {}
                    Err(e) => bad.push(e),
                }
            }
            bad
        })
    };
    let (ok, result, err) = finish_child(writer, Duration::from_secs(90), "writer");
    writer_done.store(true, Ordering::Release);
    assert!(ok, "writer failed: {result}\n{err}");
    let backend_bad = backend_watch.join().unwrap();
    assert!(
        backend_bad.is_empty(),
        "the backend held an incomplete version {} times, e.g. {}",
        backend_bad.len(),
        backend_bad[0]
    );
    let mut failures = Vec::new();
    for (i, r) in readers.into_iter().enumerate() {
        let (ok, result, err) = finish_child(r, Duration::from_secs(60), "reader");
        eprintln!("reader {i}: {result}");
        if !ok {
            failures.push(format!(
                "reader {i}: {result}\n{}",
                summarize_violations(&err)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "readers saw incomplete or mixed versions (writer mode {mode}):\n{}",
        failures.join("\n")
    );
    assert_bytes_eq(&fs::read(m.b("v")).unwrap(), &version(150), "final version");
    assert!(all_temp_files(m.backing()).is_empty());
}

// Reader/writer scenarios of the issue. Decision: on one mount, an in-place rewrite
// (O_TRUNC, writes, close) is visible to other processes while in progress, as on a
// local filesystem (one kernel inode, one page cache); the atomic guarantee is for
// everyone else (other mounts, other nodes, the backend), and for rename-over publishes.

#[test]
fn readers_see_complete_versions_during_rename_over() {
    readers_see_complete_versions("rename", false);
}

/// With passthrough on the read-write mount, each reader's open races the
/// writer's: some become the inode's first passthrough open, others share
/// it, others move the name on; none may fail (the kernel answers an open
/// in the wrong mode with EIO; seen before the opens were ordered).
#[test]
fn readers_see_complete_versions_during_rename_over_with_passthrough() {
    readers_see_complete_versions_with("rename", false, &["--passthrough-read-write"]);
}

#[test]
fn readers_on_another_mount_see_complete_versions_during_in_place_rewrites() {
    readers_see_complete_versions("trunc", true);
}

#[test]
fn readers_on_another_mount_see_complete_versions_during_rename_over() {
    readers_see_complete_versions("rename", true);
}

/// Two daemons on one backing directory (sharing the node's cache dir), metadata TTL 1s:
/// a change through A is visible through B once the TTL has passed.
#[test]
fn two_mounts_of_one_volume_see_each_others_changes_after_the_ttl() {
    let ttl = Duration::from_secs(1);
    let a = Mount::with_prepare(&["--metadata-ttl", "1s", "--page-size", "4KiB"], |b| {
        fs::write(b.join("same-size"), b"AAAAAAAAAAAAAAAA").unwrap();
        fs::write(b.join("grow"), b"short").unwrap();
        fs::write(b.join("doomed"), b"x").unwrap();
        fs::write(b.join("moving"), b"moving content").unwrap();
        fs::write(b.join("big"), pattern(100_000, 1)).unwrap();
    });
    let mut bm = Mount::unmounted(&["--metadata-ttl", "1s", "--page-size", "4KiB"]);
    bm.use_backing_dir(a.backing());
    bm.use_cache_dir(a.cache_dir());
    bm.start();

    // B reads everything first (fills its kernel caches, the inode table, the pages)
    for f in ["same-size", "grow", "doomed", "moving", "big"] {
        read_all(&bm.m(f)).unwrap();
    }
    assert_eq!(
        listing(bm.mnt()),
        ["big", "doomed", "grow", "moving", "same-size"]
    );

    // changes through A
    let t0 = Instant::now();
    {
        let f = OpenOptions::new()
            .write(true)
            .open(a.m("same-size"))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"BBBB", 4).unwrap();
        close_checked(f).unwrap();
    }
    let mut g = OpenOptions::new().append(true).open(a.m("grow")).unwrap();
    g.write_all(b" and longer").unwrap();
    close_checked(g).unwrap();
    fs::remove_file(a.m("doomed")).unwrap();
    fs::rename(a.m("moving"), a.m("moved")).unwrap();
    fs::create_dir(a.m("newdir")).unwrap();
    fs::write(a.m("newdir/new"), b"created through A").unwrap();
    let mut big = pattern(100_000, 1);
    big[50_000..50_010].copy_from_slice(b"0123456789");
    {
        let f = OpenOptions::new().write(true).open(a.m("big")).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"0123456789", 50_000).unwrap();
        close_checked(f).unwrap();
    }
    let changed = t0.elapsed();

    // B: everything visible within TTL + slack (kernel entry/attr TTL is also 1s)
    let deadline = ttl + changed + Duration::from_secs(2);
    let seen = wait_until(deadline, || {
        fs::read(bm.m("same-size")).ok().as_deref() == Some(b"AAAABBBBAAAAAAAA".as_slice())
            && fs::read(bm.m("grow")).ok().as_deref() == Some(b"short and longer".as_slice())
            && fs::symlink_metadata(bm.m("doomed")).is_err()
            && fs::symlink_metadata(bm.m("moving")).is_err()
            && fs::read(bm.m("moved")).ok().as_deref() == Some(b"moving content".as_slice())
            && fs::read(bm.m("newdir/new")).ok().as_deref() == Some(b"created through A".as_slice())
            && fs::read(bm.m("big")).ok().as_deref() == Some(big.as_slice())
    });
    let state = |p: &str| match fs::read(bm.m(p)) {
        Ok(d) if d.len() < 64 => format!("{p}: {:?}", String::from_utf8_lossy(&d)),
        Ok(d) => format!("{p}: {} bytes", d.len()),
        Err(e) => format!("{p}: {e}"),
    };
    assert!(
        seen,
        "B does not see A's changes {deadline:?} after them: {:?}",
        [
            "same-size",
            "grow",
            "doomed",
            "moving",
            "moved",
            "newdir/new",
            "big"
        ]
        .map(state)
    );
    assert_eq!(
        listing(bm.mnt()),
        ["big", "grow", "moved", "newdir", "same-size"],
        "listing through B"
    );
    // and the other way round: B writes, A sees it
    fs::write(bm.m("from-b"), b"written through B").unwrap();
    assert!(
        wait_until(ttl + Duration::from_secs(2), || {
            fs::read(a.m("from-b")).ok().as_deref() == Some(b"written through B".as_slice())
        }),
        "A does not see B's new file"
    );
}

/// Both mounts republish their own files in one directory at the same time; afterwards
/// each sees the other's final versions.
#[test]
fn two_mounts_writing_in_one_directory() {
    let a = Mount::with_args(&["--metadata-ttl", "1s"]);
    let mut b = Mount::unmounted(&["--metadata-ttl", "1s"]);
    b.use_backing_dir(a.backing());
    b.start();
    fs::create_dir(a.m("d")).unwrap();
    assert!(wait_until(Duration::from_secs(3), || b.m("d").is_dir()));
    let wa = spawn_child(
        "writer",
        &[
            ("CHILD_PATH", a.m("d/a").display().to_string()),
            ("CHILD_FIRST", "0".into()),
            ("CHILD_VERSIONS", "20".into()),
            ("CHILD_MODE", "mixed".into()),
        ],
    );
    let wb = spawn_child(
        "writer",
        &[
            ("CHILD_PATH", b.m("d/b").display().to_string()),
            ("CHILD_FIRST", "40".into()),
            ("CHILD_VERSIONS", "20".into()),
            ("CHILD_MODE", "mixed".into()),
        ],
    );
    for w in [wa, wb] {
        let (ok, r, e) = finish_child(w, Duration::from_secs(60), "writer");
        assert!(ok, "{r} {e}");
    }
    let (va, vb) = (version(19), version(59));
    assert!(
        wait_until(Duration::from_secs(4), || {
            [&a, &b].iter().all(|m| {
                fs::read(m.m("d/a")).ok().as_deref() == Some(va.as_slice())
                    && fs::read(m.m("d/b")).ok().as_deref() == Some(vb.as_slice())
                    && listing(&m.m("d")) == ["a", "b"]
            })
        }),
        "final versions not visible through both mounts: A {:?} B {:?}",
        listing(&a.m("d")),
        listing(&b.m("d"))
    );
    assert!(all_temp_files(a.backing()).is_empty());
}

// ---------------------------------------------------------------------------------------
// Deterministic reductions of the bugs the scenarios above run into
// ---------------------------------------------------------------------------------------

fn drop_pages(f: &File) {
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// An open(2) whose lookup found the file just before a rename through the
/// mount replaced it opens the old version, as on a local filesystem: the
/// object is kept under a hidden name until the kernel forgets the inode.
/// (ESTALE, answered before, makes the kernel look again only once: a
/// writer replacing the file twice in that time failed the reader's open.)
#[test]
fn open_of_an_inode_replaced_by_rename() {
    let m = Mount::with_prepare(&[], |b| fs::write(b.join("v"), b"version 1").unwrap());
    // the kernel holds the inode (like a racing open(2) between its lookup and its OPEN)
    let held = open_raw(&m.m("v"), libc::O_PATH, 0).unwrap();
    fs::write(m.m("v.tmp"), b"version 2").unwrap();
    fs::rename(m.m("v.tmp"), m.m("v")).unwrap();
    let reopen = format!("/proc/self/fd/{}", held.as_raw_fd());
    assert_eq!(
        read_all(Path::new(&reopen)).map_err(|e| e.raw_os_error()),
        Ok(b"version 1".to_vec()),
        "reopening the replaced inode"
    );
    assert_eq!(read_all(&m.m("v")).unwrap(), b"version 2");
    assert_eq!(
        all_temp_files(m.backing()).len(),
        1,
        "the old version is kept"
    );
    // Once the kernel lets go of the inode, its object goes.
    drop(held);
    assert!(
        wait_until(Duration::from_secs(10), || all_temp_files(m.backing())
            .is_empty()),
        "the replaced file's object stayed after the kernel forgot it: {:?}",
        all_temp_files(m.backing())
    );
    assert_eq!(fs::read(m.b("v")).unwrap(), b"version 2");
}

#[test]
fn one_descriptor_never_mixes_two_versions() {
    let m = Mount::with_prepare(&["--page-size", "4KiB"], |b| {
        fs::write(b.join("v"), vec![b'a'; 3 * 4096]).unwrap()
    });
    // another reader caches pages 0 and 1 of version 'a' (page 1 first: the daemon's
    // read-ahead only follows sequential reads, and the kernel's is switched off)
    let r1 = File::open(m.m("v")).unwrap();
    unsafe { libc::posix_fadvise(r1.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    let mut page = vec![0u8; 4096];
    for off in [4096, 0] {
        std::os::unix::fs::FileExt::read_exact_at(&r1, &mut page, off).unwrap();
    }
    drop(r1);
    assert!(wait_until(Duration::from_secs(5), || page_files(
        m.cache_dir()
    )
    .len()
        >= 2));
    // our descriptor is opened on version 'a'
    let r2 = File::open(m.m("v")).unwrap();
    unsafe { libc::posix_fadvise(r2.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    // a writer replaces the whole file (same size) and closes: published
    {
        let mut w = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(m.m("v"))
            .unwrap();
        w.write_all(&vec![b'b'; 3 * 4096]).unwrap();
        close_checked(w).unwrap();
    }
    // memory pressure drops our pages; we read the whole file again
    drop_pages(&r2);
    let mut all = vec![0u8; 3 * 4096];
    std::os::unix::fs::FileExt::read_exact_at(&r2, &mut all, 0).unwrap();
    let a = all.iter().filter(|&&b| b == b'a').count();
    let b = all.iter().filter(|&&b| b == b'b').count();
    assert!(
        a == all.len() || b == all.len(),
        "one read of one descriptor returned {a} bytes of the old and {b} bytes of the new version"
    );
}
