//! The page cache: a second read is served from the cache dir, pages live in
//! `<cache-dir>/pages/*.page`, stats come from the `user.cachalot.stats` xattr,
//! and the metadata TTL lets changes made directly in the backing dir show through.

use crate::common;

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::*;

const MIB: usize = 1 << 20;

fn read_through(m: &Mount, rel: &str) -> Vec<u8> {
    let mut f = fs::File::open(m.m(rel)).unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    drop(f); // close between reads
    v
}

#[test]
fn stats_xattr_has_all_counters() {
    let m = Mount::new();
    let s = m.stats();
    assert!(s.is_object(), "stats is not a JSON object: {s}");
    for k in [
        "backend_reads",
        "backend_read_bytes",
        "cache_hits",
        "cache_misses",
        "cache_pages",
        "cache_bytes",
        "evictions",
        "corrupt_pages",
    ] {
        stat_u64(&s, k);
    }
    // nothing has been read yet
    assert_eq!(stat_u64(&s, "backend_reads"), 0, "{s}");
    assert_eq!(stat_u64(&s, "cache_hits"), 0, "{s}");
}

#[test]
fn second_read_is_served_from_cache() {
    let data = pattern(3 * MIB, 20);
    let d2 = data.clone();
    let m = Mount::with_prepare(&[], move |b| fs::write(b.join("big.bin"), &d2).unwrap());

    let s0 = m.stats();
    assert_bytes_eq(&read_through(&m, "big.bin"), &data, "first read");
    let s1 = m.stats();
    assert!(
        stat_u64(&s1, "backend_reads") > stat_u64(&s0, "backend_reads"),
        "first (cold) read did not reach the backend: before {s0} after {s1}"
    );
    assert!(
        stat_u64(&s1, "backend_read_bytes") >= 3 * MIB as u64,
        "cold read fetched fewer bytes than the file size: {s1}"
    );
    // every one of the 3 pages was looked up (read-ahead may turn later misses into hits)
    assert!(
        stat_u64(&s1, "cache_misses") >= 1,
        "cold read counted no miss: {s1}"
    );
    assert!(
        stat_u64(&s1, "cache_misses") + stat_u64(&s1, "cache_hits") >= 3,
        "3 MiB with 1 MiB pages = at least 3 page lookups: {s1}"
    );

    // pages were written to <cache-dir>/pages/*.page (possibly in the background)
    let pages_dir = m.cache_dir().join("pages");
    assert!(
        wait_until(Duration::from_secs(5), || page_files(&pages_dir).len() >= 3),
        "expected >= 3 *.page files under {}, found {:?}",
        pages_dir.display(),
        page_files(&pages_dir)
    );
    // A file:// volume's pages go through the page cache, not O_DIRECT
    // (v3): its reads share the disk with them.
    let magics = page_magics(&pages_dir);
    assert!(magics.iter().all(|m| m == "CCHLPG02"), "{magics:?}");

    drop_caches(); // the kernel page cache must not hide our cache
    assert_bytes_eq(&read_through(&m, "big.bin"), &data, "second read");
    let s2 = m.stats();
    assert_eq!(
        stat_u64(&s2, "backend_reads"),
        stat_u64(&s1, "backend_reads"),
        "second read went to the backend again: after first {s1}, after second {s2}"
    );
    assert_eq!(stat_u64(&s2, "corrupt_pages"), 0, "{s2}");
    // the page store accounts for the 3 pages (stored in the background: poll)
    assert!(
        wait_until(Duration::from_secs(5), || {
            let s = m.stats();
            stat_u64(&s, "cache_pages") >= 3 && stat_u64(&s, "cache_bytes") >= 3 * MIB as u64
        }),
        "cache_pages / cache_bytes do not account for 3 pages: {}",
        m.stats()
    );
    // served from the cache (disk or memory), so counted as hits
    assert!(
        stat_u64(&s2, "cache_hits") > stat_u64(&s1, "cache_hits"),
        "second read did not count cache hits: after first {s1}, after second {s2}"
    );
}

#[test]
fn cached_read_after_ttl_expiry_does_not_refetch_unchanged_file() {
    let data = pattern(2 * MIB + 100, 21);
    let d2 = data.clone();
    let m = Mount::with_prepare(&["--metadata-ttl", "1s"], move |b| {
        fs::write(b.join("f"), &d2).unwrap()
    });
    assert_bytes_eq(&read_through(&m, "f"), &data, "first read");
    let s1 = m.stats();
    std::thread::sleep(Duration::from_secs(2)); // metadata TTL expires; file unchanged
    drop_caches();
    assert_bytes_eq(&read_through(&m, "f"), &data, "read after TTL");
    let s2 = m.stats();
    assert_eq!(
        stat_u64(&s2, "backend_reads"),
        stat_u64(&s1, "backend_reads"),
        "unchanged file re-read from the backend after the TTL: {s1} -> {s2}"
    );
    assert!(
        stat_u64(&s2, "cache_hits") > stat_u64(&s1, "cache_hits"),
        "{s1} -> {s2}"
    );
}

#[test]
fn page_size_option_controls_page_count() {
    let data = pattern(MIB, 22);
    let d2 = data.clone();
    let m = Mount::with_prepare(&["--page-size", "64KiB"], move |b| {
        fs::write(b.join("f"), &d2).unwrap()
    });
    assert_bytes_eq(&read_through(&m, "f"), &data, "read");
    let pages_dir = m.cache_dir().join("pages");
    assert!(
        wait_until(Duration::from_secs(5), || page_files(&pages_dir).len()
            >= 16),
        "1 MiB with 64 KiB pages should give >= 16 page files, found {}",
        page_files(&pages_dir).len()
    );
    let s = m.stats();
    assert!(
        stat_u64(&s, "cache_misses") + stat_u64(&s, "cache_hits") >= 16,
        "1 MiB with 64 KiB pages = at least 16 page lookups: {s}"
    );
}

#[test]
fn partial_reads_fill_and_hit_the_cache() {
    let data = pattern(4 * MIB, 23);
    let d2 = data.clone();
    let m = Mount::with_prepare(&[], move |b| fs::write(b.join("f"), &d2).unwrap());
    let off = 2 * MIB + 12_345;
    let mut buf = vec![0u8; 4096];
    {
        let f = fs::File::open(m.m("f")).unwrap();
        f.read_exact_at(&mut buf, off as u64).unwrap();
    }
    assert_bytes_eq(&buf, &data[off..off + 4096], "cold pread");
    let s1 = m.stats();
    assert!(stat_u64(&s1, "backend_reads") >= 1, "{s1}");
    drop_caches();
    {
        let f = fs::File::open(m.m("f")).unwrap();
        f.read_exact_at(&mut buf, off as u64 + 100).unwrap();
    }
    assert_bytes_eq(&buf, &data[off + 100..off + 4196], "warm pread");
    let s2 = m.stats();
    assert_eq!(
        stat_u64(&s2, "backend_reads"),
        stat_u64(&s1, "backend_reads"),
        "{s1} -> {s2}"
    );
}

#[test]
fn corrupted_page_files_are_never_served() {
    let data = pattern(3 * MIB, 24);
    let d2 = data.clone();
    let mut m = Mount::with_prepare(&[], move |b| fs::write(b.join("f"), &d2).unwrap());
    assert_bytes_eq(&read_through(&m, "f"), &data, "first read");
    let pages_dir = m.cache_dir().join("pages");
    assert!(wait_until(Duration::from_secs(5), || {
        page_files(&pages_dir).len() >= 3
    }));
    // stop the daemon, so that no in-memory copy of the pages exists any more
    m.stop();
    // flip bytes in the data area of every page file
    for p in page_files(&pages_dir) {
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let len = f.metadata().unwrap().len();
        for off in [len / 2, len.saturating_sub(10)] {
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, off).unwrap();
            b[0] ^= 0xff;
            f.write_all_at(&b, off).unwrap();
        }
    }
    m.start();
    let s1 = m.stats();
    drop_caches();
    assert_bytes_eq(&read_through(&m, "f"), &data, "read after page corruption");
    let s2 = m.stats();
    // pages carry a checksum: the mismatch is detected (when the index is rebuilt or at
    // read time) and the data re-fetched from the backend
    assert!(
        stat_u64(&s2, "corrupt_pages") > 0,
        "corrupted page files were not detected: {s1} -> {s2}"
    );
    assert!(
        stat_u64(&s2, "backend_reads") > stat_u64(&s1, "backend_reads"),
        "corrupted pages were not re-fetched from the backend: {s1} -> {s2}"
    );
}

#[test]
fn backing_change_is_seen_after_metadata_ttl() {
    let m = Mount::with_prepare(&["--metadata-ttl", "1s"], |b| {
        fs::write(b.join("conf"), b"version one").unwrap();
        fs::write(b.join("same-size"), b"AAAAAAAA").unwrap();
        fs::write(b.join("doomed"), b"x").unwrap();
    });
    assert_eq!(fs::read(m.m("conf")).unwrap(), b"version one");
    assert_eq!(fs::read(m.m("same-size")).unwrap(), b"AAAAAAAA");
    assert_eq!(fs::read(m.m("doomed")).unwrap(), b"x");

    // change behind the mount's back
    fs::write(m.b("conf"), b"version two is longer").unwrap();
    {
        // same size, same inode, only content + mtime change
        let f = OpenOptions::new()
            .write(true)
            .open(m.b("same-size"))
            .unwrap();
        f.write_all_at(b"BBBBBBBB", 0).unwrap();
        f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
            .unwrap();
    }
    fs::remove_file(m.b("doomed")).unwrap();
    std::thread::sleep(Duration::from_secs(2));

    assert_eq!(fs::metadata(m.m("conf")).unwrap().len(), 21);
    assert_eq!(fs::read(m.m("conf")).unwrap(), b"version two is longer");
    assert_eq!(
        fs::read(m.m("same-size")).unwrap(),
        b"BBBBBBBB",
        "stale cached page served after change"
    );
    expect_errno(
        fs::metadata(m.m("doomed")),
        libc::ENOENT,
        "file removed in backing",
    );
}

#[test]
fn backing_creation_is_seen_after_metadata_ttl() {
    let m = Mount::with_args(&["--metadata-ttl", "1s"]);
    // negative lookup and a listing first, so both may be cached
    expect_errno(fs::metadata(m.m("late")), libc::ENOENT, "before creation");
    assert_eq!(fs::read_dir(m.mnt()).unwrap().count(), 0);
    fs::write(m.b("late"), b"arrived").unwrap();
    fs::create_dir(m.b("late-dir")).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(fs::read(m.m("late")).unwrap(), b"arrived");
    let names: Vec<String> = fs::read_dir(m.mnt())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"late".to_string()) && names.contains(&"late-dir".to_string()),
        "{names:?}"
    );
}

/// The kernel keeps a directory's entries across opens (FOPEN_KEEP_CACHE)
/// only while the listing they came from is kept: a name added behind the
/// mount shows after the TTL even when the directory's mtime does not
/// change (set back here; S3 directories have no mtime at all), which the
/// kernel would otherwise take for "unchanged".
#[test]
fn the_kernel_keeps_listed_entries_no_longer_than_the_ttl() {
    let m = Mount::with_prepare(&["--metadata-ttl", "1s"], |b| {
        fs::create_dir(b.join("d")).unwrap();
        fs::write(b.join("d/a"), b"1").unwrap();
    });
    let names = || -> Vec<String> {
        let mut n: Vec<String> = fs::read_dir(m.m("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(), ["a"]);
    assert_eq!(names(), ["a"], "listed again from the kernel's cache");
    // The kernel lost its cached entries (they live in the page cache;
    // the open directory keeps its inode, and so the kept listing): it
    // reads them from the handle, listed only now.
    let pinned = fs::File::open(m.m("d")).unwrap();
    drop_caches();
    assert_eq!(
        names(),
        ["a"],
        "listed after the kernel's cache was dropped"
    );
    drop(pinned);
    let mtime = fs::metadata(m.b("d")).unwrap().modified().unwrap();
    fs::write(m.b("d/b"), b"2").unwrap();
    fs::File::open(m.b("d"))
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(names(), ["a", "b"], "a name added behind the mount");
    assert_eq!(names(), ["a", "b"]);
}

#[test]
fn a_listing_is_kept_for_the_ttl_and_own_changes_show_at_once() {
    use std::os::unix::fs::MetadataExt;
    let m = Mount::with_prepare(&["--metadata-ttl", "60s"], |b| {
        fs::create_dir(b.join("d")).unwrap();
        fs::create_dir(b.join("e")).unwrap();
        fs::write(b.join("d/old"), b"1").unwrap();
        fs::write(b.join("d/grows"), b"1").unwrap();
        fs::write(b.join("d/linked"), b"1").unwrap();
        fs::hard_link(b.join("d/linked"), b.join("e/link")).unwrap();
    });
    let names = |dir: &str| -> Vec<String> {
        let mut n: Vec<String> = fs::read_dir(m.m(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names("d"), ["grows", "linked", "old"]);
    // Kept: a name created behind the mount waits for the TTL.
    fs::write(m.b("d/behind"), b"x").unwrap();
    assert_eq!(names("d"), ["grows", "linked", "old"], "listing not kept");

    // This mount's own changes show at once.
    fs::write(m.m("d/new"), b"n").unwrap();
    assert!(names("d").contains(&"new".to_string()));
    fs::remove_file(m.m("d/old")).unwrap();
    assert!(!names("d").contains(&"old".to_string()));
    assert!(names("e").contains(&"link".to_string()));
    fs::rename(m.m("d/new"), m.m("e/moved")).unwrap();
    assert!(!names("d").contains(&"new".to_string()));
    assert!(names("e").contains(&"moved".to_string()));
    // A new file is listed from its write session while open, and from
    // the backend once its close published it.
    let open = fs::File::create(m.m("d/open")).unwrap();
    assert!(names("d").contains(&"open".to_string()));
    drop(open);
    assert!(names("d").contains(&"open".to_string()), "lost at publish");

    // So do attributes: a listing replayed after a write, or after
    // another link went in another directory, tells the kernel the new
    // size and link count (readdirplus), not what the backend said then.
    assert_eq!(fs::metadata(m.m("d/linked")).unwrap().nlink(), 2);
    names("d");
    OpenOptions::new()
        .append(true)
        .open(m.m("d/grows"))
        .unwrap()
        .write_all(&[7u8; 100])
        .unwrap();
    names("d");
    assert_eq!(fs::metadata(m.m("d/grows")).unwrap().len(), 101);
    fs::remove_file(m.m("e/link")).unwrap();
    names("d");
    assert_eq!(fs::metadata(m.m("d/linked")).unwrap().nlink(), 1);
}

#[test]
fn write_then_read_uses_cache() {
    // "The written pages are put in the cache, so a read after write is local" (design guide);
    // at least: reading back a file written through the mount gives the right bytes, twice.
    let m = Mount::new();
    let data = pattern(2 * MIB, 25);
    {
        let mut f = fs::File::create(m.m("w")).unwrap();
        f.write_all(&data).unwrap();
    }
    drop_caches();
    assert_bytes_eq(&read_through(&m, "w"), &data, "first read after write");
    let s1 = m.stats();
    drop_caches();
    assert_bytes_eq(&read_through(&m, "w"), &data, "second read after write");
    let s2 = m.stats();
    assert_eq!(
        stat_u64(&s2, "backend_reads"),
        stat_u64(&s1, "backend_reads"),
        "{s1} -> {s2}"
    );
}

#[test]
fn cache_size_quota_evicts_pages() {
    let data = pattern(6 * MIB, 26);
    let d2 = data.clone();
    let m = Mount::with_prepare(
        &["--cache-size", "2MiB", "--page-size", "256KiB"],
        move |b| fs::write(b.join("f"), &d2).unwrap(),
    );
    assert_bytes_eq(
        &read_through(&m, "f"),
        &data,
        "read of a file 3x the cache size",
    );
    let quota = 2 * MIB as u64;
    let pages_dir = m.cache_dir().join("pages");
    let on_disk = || -> u64 {
        page_files(&pages_dir)
            .iter()
            .filter_map(|p| fs::metadata(p).ok())
            .map(|md| md.len())
            .sum()
    };
    // eviction may run in the background: give it a moment
    let within = wait_until(Duration::from_secs(5), || {
        stat_u64(&m.stats(), "cache_bytes") <= quota
    });
    let s = m.stats();
    assert!(within, "cache_bytes above the 2 MiB quota: {s}");
    assert!(stat_u64(&s, "evictions") > 0, "no evictions counted: {s}");
    // page files on disk: at most the quota plus per-page headers (allow 10 %)
    assert!(
        on_disk() <= quota + quota / 10,
        "page files take {} bytes on disk, quota {quota}",
        on_disk()
    );
    // the cache still works after evicting: a re-read gives the right bytes
    drop_caches();
    assert_bytes_eq(&read_through(&m, "f"), &data, "re-read after eviction");
}

#[test]
fn metadata_ttl_zero_sees_changes_immediately() {
    let m = Mount::with_prepare(&["--metadata-ttl", "0s"], |b| {
        fs::write(b.join("f"), b"one").unwrap()
    });
    assert_eq!(fs::read(m.m("f")).unwrap(), b"one");
    fs::write(m.b("f"), b"second").unwrap();
    assert_eq!(
        fs::read(m.m("f")).unwrap(),
        b"second",
        "--metadata-ttl 0s served stale data"
    );
    fs::write(m.b("g"), b"new").unwrap();
    assert_eq!(fs::read(m.m("g")).unwrap(), b"new");
    fs::remove_file(m.b("g")).unwrap();
    expect_errno(fs::metadata(m.m("g")), libc::ENOENT, "removed with ttl 0");
}

#[test]
fn concurrent_readers_get_correct_data() {
    let data = std::sync::Arc::new(pattern(4 * MIB + 333, 27));
    let d2 = data.clone();
    let m = Mount::with_prepare(&[], move |b| fs::write(b.join("shared"), &*d2).unwrap());
    let path = m.m("shared");
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let path = path.clone();
            let data = data.clone();
            std::thread::spawn(move || {
                let f = fs::File::open(&path).unwrap();
                // each thread reads in a different chunk size / order
                let chunk = 4096 * (i + 1) + 17 * i;
                let mut offs: Vec<usize> = (0..data.len()).step_by(chunk).collect();
                if i % 2 == 1 {
                    offs.reverse();
                }
                for off in offs {
                    let len = chunk.min(data.len() - off);
                    let mut buf = vec![0u8; len];
                    f.read_exact_at(&mut buf, off as u64).unwrap();
                    assert!(
                        buf == data[off..off + len],
                        "thread {i}: wrong bytes at {off}"
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("reader thread failed");
    }
    let s = m.stats();
    // every page was fetched at least once, and not wildly more than once
    assert!(
        stat_u64(&s, "backend_read_bytes") >= data.len() as u64,
        "{s}"
    );
    assert!(
        stat_u64(&s, "backend_read_bytes") <= 4 * data.len() as u64,
        "concurrent readers caused excessive backend traffic: {s}"
    );
}

#[test]
fn two_volumes_sharing_a_cache_dir_do_not_mix_pages() {
    // one cache directory per node, shared by every volume: same relative path, same size,
    // same mtime in two backends must still give each volume its own bytes
    let a = pattern(2 * MIB, 60);
    let b = pattern(2 * MIB, 61);
    let when = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let (a2, b2) = (a.clone(), b.clone());
    let m1 = Mount::with_prepare(&[], move |d| {
        fs::write(d.join("same.bin"), &a2).unwrap();
        fs::File::options()
            .write(true)
            .open(d.join("same.bin"))
            .unwrap()
            .set_modified(when)
            .unwrap();
    });
    let mut m2 = Mount::unmounted(&[]);
    fs::write(m2.b("same.bin"), &b2).unwrap();
    fs::File::options()
        .write(true)
        .open(m2.b("same.bin"))
        .unwrap()
        .set_modified(when)
        .unwrap();
    m2.use_cache_dir(m1.cache_dir());
    m2.start();

    assert_bytes_eq(&read_through(&m1, "same.bin"), &a, "volume 1 first read");
    assert_bytes_eq(
        &read_through(&m2, "same.bin"),
        &b,
        "volume 2 first read (shared cache)",
    );
    drop_caches();
    assert_bytes_eq(&read_through(&m1, "same.bin"), &a, "volume 1 second read");
    assert_bytes_eq(&read_through(&m2, "same.bin"), &b, "volume 2 second read");
}

#[test]
fn change_while_unmounted_is_seen_after_remount() {
    let v1 = pattern(MIB, 62);
    let v2 = pattern(MIB, 63); // same size
    let v1c = v1.clone();
    let mut m = Mount::with_prepare(&[], move |b| fs::write(b.join("f"), &v1c).unwrap());
    assert_bytes_eq(&read_through(&m, "f"), &v1, "before");
    let pages_dir = m.cache_dir().join("pages");
    assert!(wait_until(Duration::from_secs(5), || !page_files(
        &pages_dir
    )
    .is_empty()));
    m.stop();
    {
        // rewrite in place: same inode, same size, new mtime
        let f = OpenOptions::new().write(true).open(m.b("f")).unwrap();
        f.write_all_at(&v2, 0).unwrap();
        f.set_modified(std::time::SystemTime::now() + Duration::from_secs(10))
            .unwrap();
    }
    m.start();
    assert_bytes_eq(
        &read_through(&m, "f"),
        &v2,
        "after remount: stale cached pages served",
    );
}

#[test]
fn cache_is_reused_after_remount() {
    let data = pattern(2 * MIB, 64);
    let d2 = data.clone();
    let mut m = Mount::with_prepare(&[], move |b| fs::write(b.join("f"), &d2).unwrap());
    assert_bytes_eq(&read_through(&m, "f"), &data, "first mount");
    let pages_dir = m.cache_dir().join("pages");
    assert!(wait_until(Duration::from_secs(5), || page_files(
        &pages_dir
    )
    .len()
        >= 2));
    m.remount();
    // the index is rebuilt in the background: wait until it knows the pages, then read
    assert!(
        wait_until(Duration::from_secs(10), || stat_u64(
            &m.stats(),
            "cache_pages"
        ) >= 2),
        "cache index not rebuilt from {} after remount: {}",
        pages_dir.display(),
        m.stats()
    );
    assert_bytes_eq(&read_through(&m, "f"), &data, "after remount");
    let s = m.stats();
    assert_eq!(
        stat_u64(&s, "backend_reads"),
        0,
        "pages on disk were not reused after remount: {s}"
    );
    assert!(stat_u64(&s, "cache_hits") >= 2, "{s}");
}

#[test]
fn a_sequential_reader_of_stored_pages_is_read_ahead_from_the_page_store() {
    let data = pattern(32 * MIB, 65);
    let d2 = data.clone();
    let mut m = Mount::with_prepare(&[], move |b| fs::write(b.join("f"), &d2).unwrap());
    assert_bytes_eq(&read_through(&m, "f"), &data, "first mount");
    let pages_dir = m.cache_dir().join("pages");
    assert!(wait_until(Duration::from_secs(10), || page_files(
        &pages_dir
    )
    .len()
        >= 32));
    m.remount();
    assert!(
        wait_until(Duration::from_secs(10), || stat_u64(
            &m.stats(),
            "cache_pages"
        ) >= 32),
        "cache index not rebuilt after remount: {}",
        m.stats()
    );
    // Read the first 4 MiB in small sequential requests, then stop: the
    // read-ahead window has grown and loaded later pages from the page
    // store before anyone asked for them (without it, about one page file
    // per page read).
    let f = fs::File::open(m.m("f")).unwrap();
    const REQUEST: usize = 128 << 10;
    let mut buf = vec![0u8; REQUEST];
    for i in 0..32 {
        f.read_exact_at(&mut buf, (i * REQUEST) as u64).unwrap();
    }
    let from_page_files =
        |s: &serde_json::Value| stat_u64(s, "cache_hits") - stat_u64(s, "cache_memory_hits");
    assert!(
        wait_until(Duration::from_secs(5), || from_page_files(&m.stats()) >= 12),
        "read-ahead did not load pages beyond the reader from the page store: {}",
        m.stats()
    );
    let s = m.stats();
    assert_eq!(stat_u64(&s, "backend_reads"), 0, "{s}");
}
