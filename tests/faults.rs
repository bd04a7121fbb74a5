//! Fault injection, with assertions on what is visible afterwards:
//! - kill -9 of the daemon at random points of a write / fsync / rename loop (run by a
//!   separate process): no partial file under a final name, no acknowledged write lost,
//!   temp files cleaned at the next mount, and the new daemon serves everything;
//! - page files damaged on disk between mounts (truncated, garbage, swapped, emptied):
//!   correct data is served;
//! - the cache directory becomes read-only under a running daemon: reads still succeed;
//! - the backend refuses with permission errors in the middle of a write: precise EACCES
//!   and nothing half-written.
//!
//! Seeds: `CACHALOT_SEED` (printed). `CACHALOT_LONG=1` runs more kill cycles.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use common::*;

const ROLE_ENV: &str = "CACHALOT_FAULTS_ROLE";

fn long() -> bool {
    std::env::var("CACHALOT_LONG").is_ok_and(|v| v == "1")
}

fn seed(test: &str) -> u64 {
    let s = std::env::var("CACHALOT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("{test}: CACHALOT_SEED={s}");
    s
}

// ---------------------------------------------------------------------------------------
// Versioned contents: `<name>:<k>\n` then a uniform fill, length a function of k.
// ---------------------------------------------------------------------------------------

fn content(name: &str, k: u64) -> Vec<u8> {
    let mut v = format!("{name}:{k:08}\n").into_bytes();
    let fill = b'a' + (k % 26) as u8;
    let len = 20_000 + (k as usize * 7919) % 50_000;
    v.resize(len, fill);
    v
}

/// The version k of a complete content, or why it is not one.
fn parse_content(name: &str, data: &[u8]) -> Result<u64, String> {
    let nl = data
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| format!("no header ({} bytes)", data.len()))?;
    let header = String::from_utf8_lossy(&data[..nl]);
    let k: u64 = header
        .strip_prefix(&format!("{name}:"))
        .and_then(|k| k.parse().ok())
        .ok_or_else(|| format!("bad header {header:?}"))?;
    let want = content(name, k);
    if data != want.as_slice() {
        let first = data.iter().zip(&want).position(|(a, b)| a != b);
        return Err(format!(
            "version {k} incomplete or mixed: {} bytes (want {}), first difference at {first:?}",
            data.len(),
            want.len()
        ));
    }
    Ok(k)
}

// ---------------------------------------------------------------------------------------
// The writer process
// ---------------------------------------------------------------------------------------

#[test]
fn child_role() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    match role.as_str() {
        "writer" => writer_main(),
        other => panic!("unknown role {other}"),
    }
}

fn spawn_child(role: &str, env: &[(&str, String)]) -> Child {
    spawn_child_role(ROLE_ENV, role, env, false)
}

/// Files the writer rewrites (existing from the start) ...
const FILES: &[&str] = &["a", "b", "sub/c"];

/// Append one journal line and flush it to the kernel (the writer process is not the
/// one being killed; its journal survives).
fn journal(j: &mut File, line: &str) {
    j.write_all(format!("{line}\n").as_bytes()).unwrap();
}

/// Rewrites FILES and creates new files `new/n<k>` in a loop, until an error (the
/// daemon was killed). Journal lines: `START name k` before a version is written, `ACK
/// name k` once close/fsync/rename returned success.
fn writer_main() {
    // Every path goes through a descriptor of the mount root: once the dead mount is
    // detached, operations fail (ENOTCONN) instead of landing in the empty directory
    // underneath the mountpoint.
    let root_dir = File::open(std::env::var("CHILD_ROOT").unwrap()).unwrap();
    let root = PathBuf::from(format!("/proc/self/fd/{}", root_dir.as_raw_fd()));
    let mut j = OpenOptions::new()
        .append(true)
        .create(true)
        .open(std::env::var("CHILD_JOURNAL").unwrap())
        .unwrap();
    let mut k: u64 = std::env::var("CHILD_FIRST").unwrap().parse().unwrap();
    let mut rng = SmallRng::seed_from_u64(std::env::var("CHILD_SEED").unwrap().parse().unwrap());
    // Started after the kill (slow start under load)? Then do nothing at all.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let on_fuse =
        unsafe { libc::fstatfs(root_dir.as_raw_fd(), &mut st) } == 0 && st.f_type == 0x6573_5546; // FUSE_SUPER_MAGIC
    journal(&mut j, if on_fuse { "READY" } else { "NOT-ON-FUSE" });
    if !on_fuse {
        return;
    }
    let result = (|| -> std::io::Result<()> {
        loop {
            k += 1;
            let name = if rng.random_bool(0.2) {
                format!("new/n{k}")
            } else {
                FILES[rng.random_range(0..FILES.len())].to_string()
            };
            let data = content(&name, k);
            let path = root.join(&name);
            journal(&mut j, &format!("START {name} {k}"));
            match rng.random_range(0..3) {
                // in place: O_TRUNC, writes, maybe fsync, close
                0 => {
                    let mut f = OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&path)?;
                    for c in data.chunks(8192) {
                        f.write_all(c)?;
                    }
                    if rng.random_bool(0.5) {
                        f.sync_all()?;
                        journal(&mut j, &format!("ACK {name} {k}"));
                    }
                    close_checked(f)?;
                }
                // temp name, maybe fsync, close, rename over
                1 => {
                    let tmp = root.join(format!("{name}.tmp"));
                    let mut f = File::create(&tmp)?;
                    f.write_all(&data)?;
                    if rng.random_bool(0.5) {
                        f.sync_all()?;
                    }
                    close_checked(f)?;
                    fs::rename(&tmp, &path)?;
                }
                // copy-on-write: no O_TRUNC, set the length, pwrite the chunks in random
                // order (intermediate states are mixes and must never be published)
                _ => {
                    let f = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&path)?;
                    f.set_len(data.len() as u64)?;
                    let mut chunks: Vec<(usize, &[u8])> = data
                        .chunks(4096)
                        .enumerate()
                        .map(|(i, c)| (i * 4096, c))
                        .collect();
                    for i in (1..chunks.len()).rev() {
                        chunks.swap(i, rng.random_range(0..=i));
                    }
                    for (off, c) in chunks {
                        f.write_all_at(c, off as u64)?;
                    }
                    close_checked(f)?;
                }
            }
            journal(&mut j, &format!("ACK {name} {k}"));
            if rng.random_bool(0.3) {
                std::thread::sleep(Duration::from_millis(rng.random_range(0..5)));
            }
        }
    })();
    // Expected end: the daemon was killed (ENOTCONN / ECONNABORTED).
    let e = result.unwrap_err();
    journal(&mut j, &format!("END {e}"));
}

#[derive(Default, Debug)]
struct History {
    /// name -> every version started
    started: std::collections::BTreeMap<String, Vec<u64>>,
    /// name -> newest acknowledged version
    acked: std::collections::BTreeMap<String, u64>,
    last_k: u64,
}

fn read_journal(p: &Path) -> History {
    let mut h = History::default();
    for line in fs::read_to_string(p).unwrap().lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["START", name, k] => {
                let k = k.parse().unwrap();
                h.started.entry(name.to_string()).or_default().push(k);
                h.last_k = h.last_k.max(k);
            }
            ["ACK", name, k] => {
                let k: u64 = k.parse().unwrap();
                let e = h.acked.entry(name.to_string()).or_default();
                *e = (*e).max(k);
            }
            _ => {}
        }
    }
    h
}

/// Every final file in the backing dir is a complete version that was written (or the
/// original), never older than the newest acknowledged one; unacknowledged new files
/// may be missing.
fn check_backing(backing: &Path, h: &History) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut names: Vec<String> = FILES.iter().map(|s| s.to_string()).collect();
    names.extend(h.started.keys().filter(|n| n.starts_with("new/")).cloned());
    names.sort();
    names.dedup();
    for name in &names {
        let p = backing.join(name);
        let acked = h.acked.get(name).copied();
        match fs::read(&p) {
            Err(e) => {
                if FILES.contains(&name.as_str()) || acked.is_some() {
                    problems.push(format!("{name}: missing ({e}), acknowledged {acked:?}"));
                }
            }
            Ok(data) => match parse_content(name, &data) {
                Err(e) => problems.push(format!("{name}: {e}")),
                Ok(k) => {
                    let known = k == 0 || h.started.get(name).is_some_and(|v| v.contains(&k));
                    if !known {
                        problems.push(format!("{name}: version {k} was never written"));
                    }
                    if let Some(a) = acked {
                        if k < a {
                            problems
                                .push(format!("{name}: acknowledged version {a} lost, found {k}"));
                        }
                    }
                }
            },
        }
    }
    // the `.tmp` names of rename-publishing may stay behind (the writer died between
    // close and rename): they must be complete versions too
    for dir in [
        backing.to_path_buf(),
        backing.join("sub"),
        backing.join("new"),
    ] {
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(base) = n.strip_suffix(".tmp") {
                let rel = dir.strip_prefix(backing).unwrap().join(base);
                let rel = rel.to_string_lossy().into_owned();
                let data = fs::read(e.path()).unwrap();
                if let Err(why) = parse_content(&rel, &data) {
                    problems.push(format!("{n}: {why}"));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

#[test]
fn kill9_during_write_fsync_rename_loop_loses_nothing_acknowledged() {
    let seed = seed("kill9_during_write_fsync_rename_loop_loses_nothing_acknowledged");
    let mut rng = SmallRng::seed_from_u64(seed);
    let cycles = if long() { 40 } else { 5 };
    let mut m = Mount::with_prepare(&["--page-size", "16KiB"], |b| {
        fs::create_dir(b.join("sub")).unwrap();
        fs::create_dir(b.join("new")).unwrap();
        for f in FILES {
            fs::write(b.join(f), content(f, 0)).unwrap();
        }
    });
    let scratch = tempfile::tempdir().unwrap();
    let jpath = scratch.path().join("journal");
    let mut total_versions = 0;
    let mut temps_seen = 0;
    for cycle in 0..cycles {
        let first = read_journal(&jpath_or_empty(&jpath)).last_k;
        let child = spawn_child(
            "writer",
            &[
                ("CHILD_ROOT", m.mnt().display().to_string()),
                ("CHILD_JOURNAL", jpath.display().to_string()),
                ("CHILD_FIRST", first.to_string()),
                ("CHILD_SEED", rng.random::<u64>().to_string()),
            ],
        );
        // the delay counts from the moment the writer is running on the mount
        let started = wait_until(Duration::from_secs(20), || {
            fs::read_to_string(&jpath).is_ok_and(|t| {
                t.lines()
                    .filter(|l| *l == "READY" || *l == "NOT-ON-FUSE")
                    .count()
                    > cycle
            })
        });
        assert!(started, "the writer did not start");
        let delay = Duration::from_millis(rng.random_range(30..800));
        std::thread::sleep(delay);
        m.kill9();
        let mut child = child;
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "writer did not stop after the daemon died"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let underneath: Vec<_> = fs::read_dir(m.mnt()).unwrap().flatten().collect();
        assert!(
            underneath.is_empty(),
            "the writer wrote below the detached mountpoint: {underneath:?}"
        );
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).ok();
        let h = read_journal(&jpath);
        total_versions = h.last_k;
        let ctx = format!(
            "seed {seed}, cycle {cycle}, killed after {delay:?}, versions so far {}",
            h.last_k
        );
        if let Err(e) = check_backing(m.backing(), &h) {
            panic!("after kill -9 ({ctx}):\n{e}\nwriter stderr: {err}");
        }
        let temps = all_temp_files(m.backing()).len();
        temps_seen += temps;
        eprintln!(
            "cycle {cycle}: killed after {delay:?}, {} versions, {temps} temp files left",
            h.last_k - first
        );
        // the next daemon cleans the leftovers and serves everything
        m.start();
        let cleaned = wait_until(Duration::from_secs(10), || {
            all_temp_files(m.backing()).is_empty()
        });
        assert!(
            cleaned,
            "temp files not cleaned by the next mount ({ctx}): {:?}",
            all_temp_files(m.backing())
        );
        for name in FILES
            .iter()
            .map(|s| s.to_string())
            .chain(h.started.keys().cloned())
        {
            let via_backing = fs::read(m.b(&name)).ok();
            let via_mount = fs::read(m.m(&name)).ok();
            assert!(
                via_backing == via_mount,
                "{name}: the new mount serves something else than the backing dir ({ctx})"
            );
        }
    }
    eprintln!("{cycles} kill cycles, {total_versions} versions written, {temps_seen} temp files left by the kills");
    // the writers make progress: the test is not vacuous
    assert!(
        total_versions >= cycles as u64,
        "only {total_versions} versions written"
    );
}

fn jpath_or_empty(p: &Path) -> PathBuf {
    if !p.exists() {
        fs::write(p, b"").unwrap();
    }
    p.to_path_buf()
}

// ---------------------------------------------------------------------------------------
// Damaged page files
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Damage {
    Empty,
    Truncate,
    HeaderOnly,
    FlipBytes,
    Garbage,
    AppendGarbage,
    /// The bytes of another (valid) page file: a valid page of the wrong key.
    Swap,
}

#[test]
fn damaged_page_files_between_mounts_are_never_served() {
    let seed = seed("damaged_page_files_between_mounts_are_never_served");
    let mut rng = SmallRng::seed_from_u64(seed);
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                format!("f{i}"),
                pattern(3 * 4096 * (i + 1) + 123 * i, 900 + i as u64),
            )
        })
        .collect();
    let f2 = files.clone();
    let mut m = Mount::with_prepare(&["--page-size", "4KiB"], move |b| {
        for (n, d) in &f2 {
            fs::write(b.join(n), d).unwrap();
        }
    });
    for (n, d) in &files {
        assert_bytes_eq(&read_all(&m.m(n)).unwrap(), d, n);
    }
    let pages_dir = m.cache_dir().join("pages");
    let expected_pages: usize = files.iter().map(|(_, d)| d.len().div_ceil(4096)).sum();
    assert!(
        wait_until(Duration::from_secs(10), || page_files(&pages_dir).len()
            >= expected_pages),
        "pages not written: {} of {expected_pages}",
        page_files(&pages_dir).len()
    );
    m.stop();
    let pages = page_files(&pages_dir);
    let originals: Vec<Vec<u8>> = pages.iter().map(|p| fs::read(p).unwrap()).collect();
    let kinds = [
        Damage::Empty,
        Damage::Truncate,
        Damage::HeaderOnly,
        Damage::FlipBytes,
        Damage::Garbage,
        Damage::AppendGarbage,
        Damage::Swap,
    ];
    let mut applied = Vec::new();
    for (i, p) in pages.iter().enumerate() {
        // most pages damaged, every kind at least once
        let kind = if i < kinds.len() {
            kinds[i]
        } else if rng.random_bool(0.2) {
            continue;
        } else {
            kinds[rng.random_range(0..kinds.len())]
        };
        let orig = &originals[i];
        let new: Vec<u8> = match kind {
            Damage::Empty => Vec::new(),
            Damage::Truncate => orig[..rng.random_range(1..orig.len())].to_vec(),
            Damage::HeaderOnly => orig[..orig.len().min(64).min(orig.len() - 1)].to_vec(),
            Damage::FlipBytes => {
                let mut v = orig.clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..v.len());
                    v[at] ^= 1 << rng.random_range(0..8);
                }
                v
            }
            Damage::Garbage => (0..orig.len()).map(|_| rng.random()).collect(),
            Damage::AppendGarbage => {
                let mut v = orig.clone();
                v.extend((0..rng.random_range(1..100)).map(|_| rng.random::<u8>()));
                v
            }
            Damage::Swap => {
                let other = (i + 1 + rng.random_range(0..pages.len() - 1)) % pages.len();
                originals[other].clone()
            }
        };
        fs::write(p, &new).unwrap();
        applied.push(kind);
    }
    m.start();
    drop_caches();
    for (n, d) in &files {
        assert_bytes_eq(
            &read_all(&m.m(n)).unwrap(),
            d,
            &format!("{n} after damaging page files ({applied:?}, seed {seed})"),
        );
    }
    let s = m.stats();
    assert!(
        stat_u64(&s, "corrupt_pages") > 0,
        "damage not detected: {s}"
    );
    // the damaged pages were replaced by good ones (written in the background): a second
    // daemon reads them from disk
    assert!(
        wait_until(Duration::from_secs(10), || page_files(&pages_dir).len()
            >= expected_pages),
        "re-fetched pages not written back"
    );
    m.remount();
    drop_caches();
    let before = stat_u64(&m.stats(), "backend_reads");
    for (n, d) in &files {
        assert_bytes_eq(&read_all(&m.m(n)).unwrap(), d, &format!("{n} after repair"));
    }
    let s = m.stats();
    assert_eq!(
        stat_u64(&s, "backend_reads"),
        before,
        "repaired pages were not re-cached: {s}"
    );
}

/// Whole files (read-only mounts assemble fully cached files for passthrough) damaged
/// between mounts: never served.
#[test]
fn damaged_whole_files_between_mounts_are_never_served() {
    let data = pattern(200_000, 77);
    let d2 = data.clone();
    let mut m = Mount::with_prepare(&["--read-only", "--page-size", "4KiB"], move |b| {
        fs::write(b.join("f"), &d2).unwrap()
    });
    assert_bytes_eq(&read_all(&m.m("f")).unwrap(), &data, "first read");
    let files_dir = m.cache_dir().join("files");
    // files/<volume>/<xx>/<stem>.data and <stem>.meta
    let whole = || -> Vec<PathBuf> {
        let mut v = Vec::new();
        for vol in fs::read_dir(&files_dir).into_iter().flatten().flatten() {
            for sub in fs::read_dir(vol.path()).into_iter().flatten().flatten() {
                for f in fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                    if f.path().is_file() {
                        v.push(f.path());
                    }
                }
            }
        }
        v
    };
    // Each round: the whole file is assembled in the background after the reading handle
    // closed (read-only mounts, kernel with FUSE passthrough), the daemon stops, one
    // kind of damage is applied, and the next daemon must serve the right bytes.
    let kinds = [
        "flip a data byte",
        "truncate the data",
        "garbage meta",
        "empty data",
    ];
    for kind in kinds {
        // (assembly needs every page on disk when a reading handle closes; page files
        // are written in the background, so under load a read may have to be repeated)
        let assembled = wait_until(Duration::from_secs(10), || {
            if whole().len() >= 2 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
            let _ = read_all(&m.m("f"));
            whole().len() >= 2
        });
        assert!(
            assembled,
            "no whole file assembled before '{kind}' (needs FUSE passthrough): {:?}",
            whole()
        );
        m.stop();
        for p in whole() {
            let is_meta = p.extension().is_some_and(|e| e == "meta");
            let mut v = fs::read(&p).unwrap();
            match (kind, is_meta) {
                ("flip a data byte", false) => {
                    let mid = v.len() / 2;
                    v[mid] ^= 0x01;
                }
                ("truncate the data", false) => v.truncate(v.len() - 1000),
                ("garbage meta", true) => v.iter_mut().for_each(|b| *b = b.wrapping_mul(7) ^ 0x5a),
                ("empty data", false) => v.clear(),
                _ => continue,
            }
            fs::write(&p, v).unwrap();
        }
        m.start();
        for round in 0..2 {
            drop_caches();
            assert_bytes_eq(
                &read_all(&m.m("f")).unwrap(),
                &data,
                &format!("read {round} after '{kind}' of the whole file"),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Cache directory becomes read-only
// ---------------------------------------------------------------------------------------

/// Bind-mount `dir` onto itself read-only (root ignores mode bits, not a read-only
/// mount). The [`Mount`] guard unmounts it when `dir` is its cache dir.
fn make_read_only(dir: &Path) {
    use nix::mount::{mount, MsFlags};
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .unwrap_or_else(|e| panic!("bind mount {}: {e}", dir.display()));
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .unwrap_or_else(|e| panic!("remount {} read-only: {e}", dir.display()));
    assert!(
        fs::write(dir.join("probe"), b"x").is_err(),
        "cache dir still writable"
    );
}

#[test]
fn cache_dir_turning_read_only_never_fails_reads() {
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("f{i}"), pattern(300_000 + i * 1000, 40 + i as u64)))
        .collect();
    let f2 = files.clone();
    let m = Mount::with_prepare(&["--page-size", "16KiB"], move |b| {
        for (n, d) in &f2 {
            fs::write(b.join(n), d).unwrap();
        }
    });
    // f0 is cached before, the others are not
    assert_bytes_eq(&read_all(&m.m("f0")).unwrap(), &files[0].1, "f0 warm-up");
    std::thread::sleep(Duration::from_millis(300));
    make_read_only(m.cache_dir());
    drop_caches();
    for _ in 0..2 {
        for (n, d) in &files {
            assert_bytes_eq(
                &read_all(&m.m(n)).unwrap(),
                d,
                &format!("{n} with a read-only cache"),
            );
        }
        drop_caches();
    }
    // writes go to the backend, not the cache: unaffected
    let w = pattern(100_000, 5);
    fs::write(m.m("written"), &w).unwrap();
    assert_bytes_eq(
        &fs::read(m.b("written")).unwrap(),
        &w,
        "write with a read-only cache",
    );
    assert_bytes_eq(&read_all(&m.m("written")).unwrap(), &w, "read back");
    let s = m.stats();
    assert!(
        stat_u64(&s, "cache_write_errors") > 0,
        "the cache did not notice it cannot write: {s}"
    );
}

/// A daemon started on a read-only cache dir either refuses to mount with a message
/// naming the cache dir, or serves reads from the backend.
#[test]
fn mount_on_a_read_only_cache_dir_fails_clearly_or_serves() {
    let mut m = Mount::unmounted(&[]);
    fs::write(m.b("f"), b"content").unwrap();
    make_read_only(m.cache_dir());
    let mut cmd = Command::new(BIN);
    cmd.args(m.args());
    let (st, out, err) = run_with_timeout(cmd, Duration::from_secs(5));
    eprintln!("daemon on a read-only cache dir: {st:?} {out} {err}");
    match st {
        // still running after 5 s: it mounted (run_with_timeout killed it); start it
        // again under the guard and read
        None => {
            force_unmount(m.mnt());
            m.start();
            assert_eq!(fs::read(m.m("f")).unwrap(), b"content");
        }
        Some(st) => {
            assert!(!st.success(), "exited 0 without mounting");
            let text = format!("{out}{err}");
            assert!(
                text.contains(&m.cache_dir().display().to_string()),
                "the error does not name the cache dir: {text}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Backend permission errors in the middle of a write
// ---------------------------------------------------------------------------------------

fn prepare_nobody(b: &Path) {
    fs::create_dir(b.join("d")).unwrap();
    fs::write(b.join("d/keep"), b"original content").unwrap();
    for p in [b.join("d"), b.join("d/keep")] {
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    }
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn backend_permission_lost_before_a_write_gives_eacces_and_changes_nothing() {
    let m = Mount::with_prepare(
        &["--uid", "65534", "--gid", "65534", "--metadata-ttl", "60s"],
        prepare_nobody,
    );
    // the mount has seen the directory writable
    fs::write(m.m("d/probe"), b"ok").unwrap();
    fs::remove_file(m.m("d/probe")).unwrap();
    assert_eq!(fs::read(m.m("d/keep")).unwrap(), b"original content");

    chmod(&m.b("d"), 0o555); // behind the mount's back (another NFS client, an admin)
    expect_errno(
        File::create(m.m("d/new")),
        libc::EACCES,
        "create in a 0555 dir",
    );
    let rewrite = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(m.m("d/keep"))?;
        f.write_all(b"new content")?;
        close_checked(f)
    })();
    expect_errno(rewrite, libc::EACCES, "rewrite (temp file in a 0555 dir)");
    expect_errno(
        fs::remove_file(m.m("d/keep")),
        libc::EACCES,
        "unlink in a 0555 dir",
    );
    expect_errno(
        fs::create_dir(m.m("d/sub")),
        libc::EACCES,
        "mkdir in a 0555 dir",
    );
    chmod(&m.b("d"), 0o755);
    assert_eq!(fs::read(m.b("d/keep")).unwrap(), b"original content");
    let names: Vec<String> = fs::read_dir(m.b("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["keep"], "something was left behind");
}

#[test]
fn backend_permission_lost_during_a_write_gives_eacces_at_close_and_changes_nothing() {
    let mut m = Mount::with_prepare(
        &["--uid", "65534", "--gid", "65534", "--metadata-ttl", "60s"],
        prepare_nobody,
    );
    let guard = no_fork_guard();
    // a rewrite and a new file are in progress (their temp files exist) ...
    let mut rewrite = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.m("d/keep"))
        .unwrap();
    rewrite.write_all(b"half of the new").unwrap();
    let mut created = File::create(m.m("d/created")).unwrap();
    created.write_all(b"half of a new file").unwrap();
    assert_eq!(all_temp_files(&m.b("d")).len(), 2);
    // ... when the directory stops being writable for the volume's identity
    chmod(&m.b("d"), 0o555);
    rewrite.write_all(b" content").unwrap(); // the temp file itself is still writable
    let r1 = close_checked(rewrite);
    let r2 = close_checked(created);
    drop(guard);
    expect_errno(r1, libc::EACCES, "close (publish) of the rewrite");
    expect_errno(r2, libc::EACCES, "close (publish) of the new file");
    assert_eq!(fs::read(m.b("d/keep")).unwrap(), b"original content");
    assert!(
        !m.b("d/created").exists(),
        "half-written new file published"
    );
    assert_eq!(
        fs::read(m.m("d/keep")).unwrap(),
        b"original content",
        "through the mount"
    );
    expect_errno(
        fs::metadata(m.m("d/created")),
        libc::ENOENT,
        "the failed new file",
    );
    // the temp files could not be removed either (0555): hidden, and removed by the next
    // mount once the directory is writable again
    chmod(&m.b("d"), 0o755);
    m.remount();
    assert!(
        wait_until(Duration::from_secs(5), || all_temp_files(m.backing())
            .is_empty()),
        "{:?}",
        all_temp_files(m.backing())
    );
}

#[test]
fn backend_read_permission_lost_gives_eacces_not_eio() {
    let m = Mount::with_prepare(
        &[
            "--uid",
            "65534",
            "--gid",
            "65534",
            "--metadata-ttl",
            "60s",
            "--page-size",
            "4KiB",
        ],
        |b| {
            prepare_nobody(b);
            fs::write(b.join("d/big"), pattern(100_000, 3)).unwrap();
            std::os::unix::fs::chown(b.join("d/big"), Some(65534), Some(65534)).unwrap();
        },
    );
    let f = File::open(m.m("d/big")).unwrap();
    chmod(&m.b("d/big"), 0o000);
    let mut buf = vec![0u8; 100];
    // the first read opens the backend file as uid 65534: refused
    let e = f.read_at(&mut buf, 50_000).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e:?}");
    chmod(&m.b("d/big"), 0o644);
    drop(f);
    assert_bytes_eq(
        &read_all(&m.m("d/big")).unwrap(),
        &pattern(100_000, 3),
        "after chmod back",
    );
}
