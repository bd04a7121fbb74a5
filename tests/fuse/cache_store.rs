//! The page store under a real mount: corruption everywhere, a cache with
//! 100 000 pages, concurrent cold readers, and the `cachalot cache` commands.

use crate::common;

use std::fs;
use std::io::Write;
use std::time::Duration;

use common::*;

const MIB: usize = 1 << 20;

#[test]
fn every_page_file_corrupted_still_reads_correctly_and_pages_are_rewritten() {
    let data = pattern(5 * MIB + 123, 11);
    let d2 = data.clone();
    let mut m = Mount::with_prepare(&[], move |b| fs::write(b.join("f"), &d2).unwrap());
    assert_bytes_eq(&read_all(&m.m("f")).unwrap(), &data, "first read");
    assert!(wait_until(Duration::from_secs(10), || page_files(
        m.cache_dir()
    )
    .len()
        >= 6));
    m.stop();
    // Flip one byte in the data area of every page file.
    let pages = page_files(m.cache_dir());
    for p in &pages {
        let mut bytes = fs::read(p).unwrap();
        let at = bytes.len() - 1;
        bytes[at] ^= 0xff;
        fs::write(p, bytes).unwrap();
    }
    m.start();
    drop_caches();
    assert_bytes_eq(
        &read_all(&m.m("f")).unwrap(),
        &data,
        "read over corrupt pages",
    );
    let s = m.stats();
    assert!(stat_u64(&s, "corrupt_pages") >= pages.len() as u64, "{s}");
    assert!(stat_u64(&s, "backend_reads") >= pages.len() as u64, "{s}");
    // Rewritten: the next read comes from the cache again.
    assert!(wait_until(Duration::from_secs(10), || page_files(
        m.cache_dir()
    )
    .len()
        >= 6));
    let before = stat_u64(&m.stats(), "backend_reads");
    m.stop();
    m.start();
    drop_caches();
    assert_bytes_eq(
        &read_all(&m.m("f")).unwrap(),
        &data,
        "read of rewritten pages",
    );
    let s = m.stats();
    assert_eq!(
        stat_u64(&s, "backend_reads"),
        0,
        "rewritten pages served: {s} (before {before})"
    );
    assert_eq!(stat_u64(&s, "corrupt_pages"), 0, "{s}");
}

#[test]
fn a_mount_with_100k_cached_pages_is_usable_at_once() {
    let mut m = Mount::unmounted(&[]);
    fs::write(m.b("hello"), b"hello").unwrap();
    // 100 000 page files (names and sizes are all the index scan looks at).
    // Another volume's pages (any volume's count for the node-wide index).
    let pages = m.cache_dir().join("pages").join("0123456789abcdef");
    for i in 0..100_000u64 {
        let stem = format!("{:064x}", (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let dir = pages.join(&stem[..2]);
        if i < 256 {
            fs::create_dir_all(&dir).unwrap();
        }
        let _ = fs::create_dir_all(&dir);
        fs::File::create(dir.join(format!("{stem}.page")))
            .and_then(|mut f| f.write_all(b"x"))
            .unwrap();
    }
    m.start();
    assert_eq!(read_all(&m.m("hello")).unwrap(), b"hello");
    // The index loads in the background and eventually knows every page.
    assert!(
        wait_until(Duration::from_secs(120), || {
            m.stats()["cache_index_ready"].as_bool() == Some(true)
        }),
        "index never finished loading"
    );
    assert!(stat_u64(&m.stats(), "cache_bytes") >= 100_000);
}

#[test]
fn concurrent_readers_of_one_cold_page_cause_one_backend_read() {
    let data = pattern(64 * 1024, 5);
    let d2 = data.clone();
    let m = Mount::with_prepare(&[], move |b| fs::write(b.join("hot"), &d2).unwrap());
    let path = m.m("hot");
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let p = path.clone();
            std::thread::spawn(move || fs::read(p).unwrap())
        })
        .collect();
    for r in readers {
        assert_bytes_eq(&r.join().unwrap(), &data, "concurrent read");
    }
    assert_eq!(stat_u64(&m.stats(), "backend_reads"), 1);
}

#[test]
fn cache_stats_and_clear_commands() {
    let data = pattern(3 * MIB, 2);
    let d2 = data.clone();
    let mut m = Mount::with_prepare(&[], move |b| fs::write(b.join("f"), &d2).unwrap());
    read_all(&m.m("f")).unwrap();
    drop_caches();
    read_all(&m.m("f")).unwrap();
    assert!(wait_until(Duration::from_secs(10), || page_files(
        m.cache_dir()
    )
    .len()
        == 3));
    m.stop(); // clean stop folds the counters into the directory's totals
    let dir = m.cache_dir().display().to_string();
    let (status, out, err) = run_cli(
        &["cache", "stats", "--cache-dir", &dir, "--json"],
        Duration::from_secs(30),
    );
    assert!(status.is_some_and(|s| s.success()), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["pages"], 3, "{v}");
    assert!(v["counters"]["hits"].as_u64().unwrap() >= 3, "{v}");
    assert!(v["counters"]["misses"].as_u64().unwrap() >= 3, "{v}");
    let (status, out, err) = run_cli(
        &["cache", "clear", "--cache-dir", &dir],
        Duration::from_secs(30),
    );
    assert!(status.is_some_and(|s| s.success()), "{err}");
    assert!(out.contains("removed 3 pages"), "{out}");
    assert!(page_files(m.cache_dir()).is_empty());
    let (status, _, err) = run_cli(
        &["cache", "stats", "--cache-dir", "/definitely/not/a/cache"],
        Duration::from_secs(30),
    );
    assert!(!status.unwrap().success());
    assert!(err.contains("not a cache directory"), "{err}");
}

#[test]
fn kernel_page_cache_is_kept_while_unchanged_and_dropped_when_changed() {
    let m = Mount::with_prepare(&["--metadata-ttl", "1s"], |b| {
        fs::write(b.join("f"), pattern(2 * MIB, 1)).unwrap()
    });
    read_all(&m.m("f")).unwrap();
    let first = m.stats();
    // Same version: the kernel keeps its pages, cachalot is not even asked.
    assert_bytes_eq(
        &read_all(&m.m("f")).unwrap(),
        &pattern(2 * MIB, 1),
        "reread",
    );
    let second = m.stats();
    assert_eq!(
        stat_u64(&first, "cache_hits") + stat_u64(&first, "backend_reads"),
        stat_u64(&second, "cache_hits") + stat_u64(&second, "backend_reads"),
        "an unchanged file must be served from the kernel page cache: {first} vs {second}"
    );
    // Changed behind the mount: after the TTL the new content is read.
    fs::write(m.b("f.new"), pattern(2 * MIB, 2)).unwrap();
    fs::rename(m.b("f.new"), m.b("f")).unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    assert_bytes_eq(
        &read_all(&m.m("f")).unwrap(),
        &pattern(2 * MIB, 2),
        "changed file",
    );
}

/// The whole files' parts (`meta` or `data`) under the cache dir.
fn whole_file_parts(cache: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![cache.join("files")];
    while let Some(dir) = stack.pop() {
        for f in fs::read_dir(dir).into_iter().flatten().flatten() {
            if f.path().is_dir() {
                stack.push(f.path());
            } else if f.path().extension().is_some_and(|e| e == ext) {
                found.push(f.path());
            }
        }
    }
    found
}

fn whole_files(cache: &std::path::Path) -> usize {
    whole_file_parts(cache, "meta").len()
}

#[test]
fn read_only_mounts_serve_fully_cached_files_by_passthrough() {
    let data = pattern(3 * MIB + 77, 9);
    let d2 = data.clone();
    let m = Mount::with_prepare(&["--read-only"], move |b| {
        fs::write(b.join("model.bin"), &d2).unwrap()
    });
    assert_bytes_eq(&read_all(&m.m("model.bin")).unwrap(), &data, "first read");
    assert!(
        wait_until(Duration::from_secs(30), || whole_files(m.cache_dir()) == 1),
        "the fully read file was not assembled into a whole file"
    );
    assert!(
        page_files(m.cache_dir()).is_empty(),
        "pages are replaced by the whole file"
    );
    drop_caches();
    let before = m.stats();
    // Two concurrent opens: both must work (the second reuses the backing file).
    let first = fs::File::open(m.m("model.bin")).unwrap();
    assert_bytes_eq(
        &read_all(&m.m("model.bin")).unwrap(),
        &data,
        "passthrough read",
    );
    drop(first);
    let after = m.stats();
    let served = |s: &serde_json::Value| stat_u64(s, "cache_hits") + stat_u64(s, "backend_reads");
    assert_eq!(
        served(&before),
        served(&after),
        "the kernel read the whole file directly: {before} vs {after}"
    );
}

/// A whole file checked once (here: assembled from checked pages) is
/// trusted by the next daemon while it is still exactly that file: the
/// first open after a remount is already served by passthrough. One
/// changed behind the cache is checked again, found damaged and not used.
#[test]
fn a_checked_whole_file_serves_the_first_open_after_a_remount_by_passthrough() {
    let data = pattern(3 * MIB + 5, 3);
    let d2 = data.clone();
    let mut m = Mount::with_prepare(&["--read-only"], move |b| {
        fs::write(b.join("weights"), &d2).unwrap()
    });
    let served = |s: &serde_json::Value| stat_u64(s, "cache_hits") + stat_u64(s, "backend_reads");
    assert_bytes_eq(&read_all(&m.m("weights")).unwrap(), &data, "first read");
    assert!(
        wait_until(Duration::from_secs(30), || whole_files(m.cache_dir()) == 1),
        "the fully read file was not assembled into a whole file"
    );
    // Remount, read it all: the stats before and after the read.
    let reread = |m: &mut Mount, what: &str| {
        m.remount();
        drop_caches();
        let before = m.stats();
        assert_bytes_eq(&read_all(&m.m("weights")).unwrap(), &data, what);
        (before, m.stats())
    };
    let (before, after) = reread(&mut m, "first open after the remount");
    assert_eq!(
        served(&before),
        served(&after),
        "the first open after a remount read through cachalot: {before} vs {after}"
    );

    // Same size, other bytes: the stamp no longer holds.
    let files = whole_file_parts(m.cache_dir(), "data");
    assert_eq!(files.len(), 1, "{files:?}");
    let mut f = fs::OpenOptions::new().write(true).open(&files[0]).unwrap();
    f.write_all(b"rotten").unwrap();
    drop(f);
    let (before, after) = reread(&mut m, "a whole file changed behind the cache");
    assert!(
        served(&after) > served(&before),
        "a changed whole file was handed to the kernel: {before} vs {after}"
    );
}

#[test]
fn read_write_mounts_use_no_passthrough_by_default() {
    let data = pattern(2 * MIB, 4);
    let d2 = data.clone();
    let m = Mount::with_prepare(&[], move |b| fs::write(b.join("f"), &d2).unwrap());
    read_all(&m.m("f")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(whole_files(m.cache_dir()), 0);
}

/// With `--passthrough-read-write` a fully read file is served by
/// passthrough on a read-write mount too. A writer of a file that
/// passthrough readers hold (which the kernel would refuse) gets a new
/// inode for the name: the readers keep the version they opened, as with a
/// file replaced by a rename, and later opens see the writer's.
#[test]
fn passthrough_on_a_read_write_mount_moves_the_name_on_for_a_writer() {
    let data = pattern(2 * MIB, 4);
    let d2 = data.clone();
    let m = Mount::with_prepare(&["--passthrough-read-write"], move |b| {
        fs::write(b.join("f"), &d2).unwrap()
    });
    let served = |s: &serde_json::Value| stat_u64(s, "cache_hits") + stat_u64(s, "backend_reads");
    read_all(&m.m("f")).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || whole_files(m.cache_dir()) == 1),
        "the fully read file was not assembled into a whole file"
    );
    drop_caches();
    let before = m.stats();
    let mut reader = fs::File::open(m.m("f")).unwrap();
    let mut head = vec![0u8; 4096];
    std::io::Read::read_exact(&mut reader, &mut head).unwrap();
    assert_eq!(
        served(&before),
        served(&m.stats()),
        "a fully cached file on a read-write mount was read through cachalot"
    );
    // The writer's open must work while the passthrough reader holds the file.
    fs::write(m.m("f"), b"rewritten").unwrap();
    assert_eq!(fs::read(m.b("f")).unwrap(), b"rewritten");
    assert_eq!(fs::read(m.m("f")).unwrap(), b"rewritten", "a later open");
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut rest).unwrap();
    head.extend(rest);
    assert_bytes_eq(&head, &data, "the reader keeps the version it opened");
    drop(reader);
    // And the new version is a file like any other: appended to, read back.
    let mut appender = fs::OpenOptions::new().append(true).open(m.m("f")).unwrap();
    appender.write_all(b" again").unwrap();
    drop(appender);
    assert_eq!(fs::read(m.m("f")).unwrap(), b"rewritten again");
}

/// One cache directory is one cache: two mounts (two processes) share its
/// recorded quota, and a mount streaming through it cannot starve the
/// other of the few pages it uses.
#[test]
fn two_mounts_on_one_cache_dir_share_its_quota_and_the_small_one_is_not_starved() {
    let mut a = Mount::with_prepare(&["--cache-size", "24MiB"], |b| {
        fs::write(b.join("big1"), pattern(40 * MIB, 1)).unwrap();
        fs::write(b.join("big2"), pattern(40 * MIB, 2)).unwrap();
    });
    let mut b = Mount::unmounted(&["--cache-size", "100MiB"]);
    b.use_cache_dir(a.cache_dir());
    let small = pattern(4 * MIB, 3);
    fs::write(b.b("small"), &small).unwrap();
    b.start();
    assert_eq!(
        stat_u64(&b.stats(), "cache_quota_bytes"),
        24 * MIB as u64,
        "the second mount must use the directory's recorded quota"
    );
    read_all(&a.m("big1")).unwrap();
    // Its read-ahead may still be fetching and storing pages: let it end
    // (nothing in flight, its cache usage steady),
    // so what follows measures what stays, not a race with pages b stored
    // a moment ago that a's index has not learned of yet.
    let quiet = || {
        let before = a.stats();
        std::thread::sleep(Duration::from_millis(300));
        let after = a.stats();
        stat_u64(&after, "prefetch_in_flight") == 0
            && stat_u64(&before, "cache_volume_bytes") == stat_u64(&after, "cache_volume_bytes")
    };
    assert!(
        wait_until(Duration::from_secs(10), quiet),
        "mount a's read-ahead did not settle: {}",
        a.stats()
    );
    assert_bytes_eq(
        &read_all(&b.m("small")).unwrap(),
        &small,
        "small, first read",
    );
    // Not starved: the small volume keeps all of its 4 pages (with
    // evictors that raced each other it lost one or two under CPU load).
    assert!(
        wait_until(Duration::from_secs(10), || stat_u64(
            &b.stats(),
            "cache_volume_bytes"
        ) >= 4 * MIB as u64),
        "the small volume's pages were not cached: {}",
        b.stats()
    );
    read_all(&a.m("big2")).unwrap();
    // A fresh process for b: only pages on disk can spare the backend.
    b.stop();
    b.start();
    drop_caches();
    assert_bytes_eq(&read_all(&b.m("small")).unwrap(), &small, "small, again");
    let s = b.stats();
    assert!(
        stat_u64(&s, "backend_reads") <= 1,
        "the small volume was starved: {s}"
    );
    assert!(stat_u64(&s, "cache_bytes") <= 24 * MIB as u64, "{s}");
    a.stop();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cachalot"))
        .args(["cache", "stats", "--json", "--cache-dir"])
        .arg(a.cache_dir())
        .output()
        .unwrap();
    let sum: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(sum["quota_bytes"], 24 * MIB as u64, "{sum}");
    assert_eq!(sum["volumes"].as_array().map(Vec::len), Some(2), "{sum}");
}

/// `--metrics-addr`: the counters move with the work and agree with the
/// stats attribute (one source): a second read is all hits and no backend
/// bytes; errors are counted by errno; backend requests by operation.
#[test]
fn metrics_move_with_the_work_and_agree_with_the_stats_attribute() {
    let port = free_port();
    let data = pattern(3 * MIB, 4);
    let d2 = data.clone();
    let addr = format!("127.0.0.1:{port}");
    let m = Mount::with_prepare(&["--metrics-addr", &addr], move |b| {
        fs::write(b.join("f"), &d2).unwrap()
    });
    let volume = format!("volume=\"{}\"", m.mnt().display());
    assert_bytes_eq(&read_all(&m.m("f")).unwrap(), &data, "first read");
    let _ = fs::read(m.m("missing"));
    let first = scrape(port);
    let backend_bytes = sample(&first, "cachalot_backend_read_bytes_total", &volume);
    assert_eq!(backend_bytes, 3 * MIB as u64, "{first}");
    assert!(sample(&first, "cachalot_errors_total", "errno=\"ENOENT\"") >= 1);
    assert!(sample(&first, "cachalot_backend_requests_total", "op=\"read\"") >= 1);
    assert!(
        first.contains("cachalot_backend_request_duration_seconds_bucket{"),
        "{first}"
    );
    drop_caches();
    assert_bytes_eq(&read_all(&m.m("f")).unwrap(), &data, "second read");
    let second = scrape(port);
    assert_eq!(
        sample(&second, "cachalot_backend_read_bytes_total", &volume),
        backend_bytes,
        "the second read went to the backend"
    );
    let hits = sample(&second, "cachalot_cache_hits_total", &volume);
    assert!(hits > sample(&first, "cachalot_cache_hits_total", &volume));
    assert!(sample(&second, "cachalot_read_bytes_total", &volume) >= 6 * MIB as u64);
    let stats = m.stats();
    assert_eq!(
        stat_u64(&stats, "backend_read_bytes"),
        backend_bytes,
        "{stats}"
    );
    assert_eq!(stat_u64(&stats, "cache_hits"), hits, "{stats}");
}

/// `cachalot warm`: loads 8 files with a progress bar on a terminal (a
/// pseudo-terminal from `script`), resumes after a partial run (here: one
/// limited by --include) without loading again what is cached, and after
/// it a fresh mount reads everything without touching the backend.
#[test]
fn warm_loads_a_tree_resumes_and_later_reads_never_touch_the_backend() {
    let files: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| {
            (
                format!("d{}/f{i}.bin", i % 2),
                pattern(MIB + i * 1000, i as u64),
            )
        })
        .collect();
    let to_write = files.clone();
    let mut m = Mount::with_prepare(&[], move |b| {
        for (name, data) in &to_write {
            fs::create_dir_all(b.join(name).parent().unwrap()).unwrap();
            fs::write(b.join(name), data).unwrap();
        }
    });
    let warm = |extra: &str| {
        let cmd = format!(
            "{} warm --jobs 3 {extra} {}",
            env!("CARGO_BIN_EXE_cachalot"),
            m.mnt().display()
        );
        let out = std::process::Command::new("script")
            .args(["-qfec", &cmd, "/dev/null"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "warm failed: {text}");
        text
    };
    let first = warm("--include 'd0/*'");
    assert!(first.contains("warmed 4 files"), "{first}");
    assert!(
        first.contains("files") && first.contains("ETA"),
        "no progress bar on a terminal: {first}"
    );
    // Page writes land in the background: wait until the daemon has them.
    assert!(wait_until(Duration::from_secs(10), || {
        files[..].iter().step_by(2).all(|(name, _)| {
            let v = getxattr(&m.m(name), "user.cachalot.cached").unwrap_or_default();
            let v = String::from_utf8_lossy(&v).into_owned();
            let mut p = v.split(' ').map(|x| x.parse::<u64>().unwrap_or(0));
            matches!((p.next(), p.next()), (Some(a), Some(b)) if a == b && b > 0)
        })
    }));
    let second = warm("");
    assert!(second.contains("warmed 8 files"), "{second}");
    assert!(
        second.contains("4 already cached"),
        "the second run loaded again: {second}"
    );
    std::thread::sleep(Duration::from_millis(500));
    m.stop();
    m.start();
    drop_caches();
    for (name, data) in &files {
        assert_bytes_eq(&read_all(&m.m(name)).unwrap(), data, name);
    }
    let s = m.stats();
    assert_eq!(
        stat_u64(&s, "backend_reads"),
        0,
        "reads after warm-up went to the backend: {s}"
    );
}
