use super::*;

fn key(path: &str, index: u64) -> PageKey {
    PageKey {
        source: "file:///srv".into(),
        path: path.into(),
        version: "v1".into(),
        index,
    }
}

fn store(dir: &Path, quota: u64) -> Arc<VolumeCache> {
    let s = VolumeCache::open(
        PageStoreConfig::new(dir.to_path_buf(), quota, 4096),
        "file:///srv",
    )
    .unwrap();
    assert!(s.wait_index_ready(Duration::from_secs(10)));
    s
}

/// Drop a volume's handle and wait until its store is gone, so the next
/// `store()` opens the directory afresh, as a new process would.
fn close(s: Arc<VolumeCache>) {
    let weak = Arc::downgrade(s.store());
    drop(s);
    let start = std::time::Instant::now();
    while weak.strong_count() > 0 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn page_bytes(data_len: usize) -> u64 {
    page::encode(&key("a", 0), &vec![0u8; data_len]).len() as u64
}

#[test]
fn put_then_get_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 1 << 20);
    s.put(&key("a", 0), b"page zero");
    assert_eq!(s.get(&key("a", 0)).unwrap(), b"page zero");
    assert!(s.get(&key("a", 1)).is_none());
    close(s);
    let s = store(dir.path(), 1 << 20);
    assert_eq!(s.stats().pages, 1);
    assert_eq!(s.get(&key("a", 0)).unwrap(), b"page zero");
    assert_eq!(s.stats().counters.hits, 1);
}

/// A page stored twice is counted once; a fan-out directory removed
/// behind the store (a `cache clear` by another process) is made again.
#[test]
fn a_page_stored_twice_is_counted_once_and_a_missing_directory_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 1 << 20);
    s.put(&key("a", 0), &[1u8; 4096]);
    let one = s.stats().bytes;
    assert_eq!(one, page_bytes(4096));
    s.put(&key("a", 0), &[2u8; 4096]);
    assert_eq!(s.stats().bytes, one, "the replaced page is still counted");
    assert_eq!(s.get(&key("a", 0)).unwrap(), vec![2u8; 4096]);
    let fan_out = s.path_of(&key("b", 0).file_stem());
    let fan_out = fan_out.parent().unwrap();
    let _ = fs::remove_dir_all(fan_out);
    s.put(&key("b", 0), b"page b");
    assert_eq!(s.get(&key("b", 0)).unwrap(), b"page b");
}

#[test]
fn corrupt_page_is_dropped_counted_and_released() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 1 << 20);
    s.put(&key("a", 0), &[1u8; 4096]);
    let used = s.stats().bytes;
    assert!(used > 4096);
    let path = s.path_of(&key("a", 0).file_stem());
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&path, bytes).unwrap();
    assert!(s.get(&key("a", 0)).is_none());
    assert!(!path.exists());
    let st = s.stats();
    assert_eq!((st.counters.corrupt_pages, st.pages, st.bytes), (1, 0, 0));
}

#[test]
fn an_oversized_page_file_is_dropped_without_being_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 1 << 20);
    s.put(&key("a", 0), &[1u8; 4096]);
    let path = s.path_of(&key("a", 0).file_stem());
    // Sparse: long, but no disk space (nor, if it were read, memory).
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    assert!(s.get(&key("a", 0)).is_none());
    assert!(!path.exists());
    assert_eq!(s.stats().counters.corrupt_pages, 1);
}

#[test]
fn eviction_goes_from_high_to_low_watermark_in_lru_order() {
    let dir = tempfile::tempdir().unwrap();
    let one = page_bytes(1000);
    // Quota of 10 pages: high = 9.5 pages, low = 7 pages.
    let s = store(dir.path(), one * 10);
    let page = vec![0u8; 1000];
    for i in 0..9 {
        s.put(&key("a", i), &page);
    }
    assert_eq!(s.stats().counters.evictions, 0);
    assert!(s.get(&key("a", 0)).is_some()); // a/0 becomes most recent
    s.put(&key("a", 9), &page); // 10 pages > high watermark
    let st = s.stats();
    assert!(st.bytes <= one * 7, "{st:?}");
    assert_eq!(st.counters.evictions, 3);
    for i in 1..4 {
        assert!(s.get(&key("a", i)).is_none(), "LRU page {i} should be gone");
    }
    assert!(s.get(&key("a", 0)).is_some(), "recently used page survives");
    assert!(s.get(&key("a", 9)).is_some());
}

#[test]
fn two_stores_on_one_directory_share_pages_and_quota() {
    let dir = tempfile::tempdir().unwrap();
    let one = page_bytes(1000);
    let a = store(dir.path(), one * 4);
    let b = store(dir.path(), one * 4);
    let page = vec![7u8; 1000];
    a.put(&key("x", 0), &page);
    assert_eq!(b.get(&key("x", 0)).unwrap(), page, "b sees a's page");
    for i in 1..8 {
        b.put(&key("y", i), &page);
        a.put(&key("z", i), &page);
    }
    let on_disk = scan::scan_dir(dir.path(), false).total;
    assert!(
        on_disk <= one * 4,
        "together within quota: {on_disk} > {}",
        one * 4
    );
    assert_eq!(a.stats().bytes, on_disk, "ledger matches the disk");
}

#[test]
fn index_rebuild_finds_many_pages_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store(dir.path(), 1 << 30);
        for i in 0..2000 {
            s.put(&key("many", i), b"x");
        }
    }
    let s = VolumeCache::open(
        PageStoreConfig::new(dir.path().to_path_buf(), 1 << 30, 4096),
        "file:///srv",
    )
    .unwrap();
    // Usable before the index is loaded: pages are found on disk directly.
    assert_eq!(s.get(&key("many", 1999)).unwrap(), b"x");
    assert!(s.wait_index_ready(Duration::from_secs(30)));
    assert_eq!(s.stats().pages, 2000);
}

#[test]
fn unwritable_cache_steps_aside() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 1 << 20);
    // Replace the pages directory by a file: every write now fails.
    fs::remove_dir_all(dir.path().join("pages")).unwrap();
    fs::write(dir.path().join("pages"), b"not a dir").unwrap();
    s.put(&key("a", 0), b"data");
    assert!(s.get(&key("a", 0)).is_none());
    let st = s.stats();
    assert_eq!(st.counters.write_errors, 1);
    assert_eq!(st.bytes, 0, "a failed write releases its reservation");
}

#[test]
fn summary_and_clear() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 1 << 20);
    s.put(&key("a", 0), b"one");
    s.put(&key("a", 1), b"two");
    s.get(&key("a", 0));
    s.persist_counters();
    let sum = summarize(dir.path()).unwrap();
    assert_eq!(
        (sum.pages, sum.counters.hits, sum.quota_bytes),
        (2, 1, Some(1 << 20))
    );
    assert_eq!(clear(dir.path()).unwrap(), 2);
    assert_eq!(summarize(dir.path()).unwrap().pages, 0);
    assert_eq!(s.stats().bytes, 0);
    assert!(s.get(&key("a", 0)).is_none());
}

#[test]
fn whole_files_replace_pages_serve_reads_and_detect_damage() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 1 << 20);
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 241) as u8).collect();
    for (i, chunk) in data.chunks(4096).enumerate() {
        s.put(&key("w", i as u64), chunk);
    }
    assert!(
        !s.assemble_whole(&key("other", 0), 10),
        "nothing cached for it"
    );
    let before = s.stats().bytes;
    assert!(s.assemble_whole(&key("w", 0), data.len() as u64));
    let st = s.stats();
    assert_eq!(st.pages, 1, "three pages became one whole file: {st:?}");
    assert!(
        st.bytes < before + 1024,
        "pages were released: {} vs {before}",
        st.bytes
    );
    // Page reads are served from the whole file, verified per page.
    assert_eq!(s.get(&key("w", 2)).unwrap(), &data[8192..]);
    let file = s
        .verified_whole_file(&key("w", 0))
        .expect("assembled files are verified");
    assert_eq!(file.metadata().unwrap().len(), data.len() as u64);
    // A new process must verify before passthrough; damage is detected.
    close(s);
    let s = store(dir.path(), 1 << 20);
    assert!(s.verified_whole_file(&key("w", 0)).is_none());
    let stem = key("w", 0).object_stem();
    let path = whole::data_path(&dir.path().join("files").join(s.tag().to_string()), &stem);
    let mut bytes = fs::read(&path).unwrap();
    bytes[5000] ^= 1;
    fs::write(&path, bytes).unwrap();
    assert!(!s.verify_whole(&key("w", 0)));
    assert!(!path.exists(), "damaged whole file removed");
    assert!(s.get(&key("w", 1)).is_none());
}

#[test]
fn whole_files_are_evicted_like_pages() {
    let dir = tempfile::tempdir().unwrap();
    let one = page_bytes(4096);
    let s = store(dir.path(), one * 6);
    for i in 0..3 {
        s.put(&key("w", i), &[1u8; 4096]);
    }
    assert!(s.assemble_whole(&key("w", 0), 3 * 4096));
    for i in 0..6 {
        s.put(&key("p", i), &[2u8; 4096]);
    }
    assert!(
        !s.has_whole(&key("w", 0)),
        "the least recently used whole file goes first"
    );
    assert!(s.stats().bytes <= one * 6);
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 253) as u8).collect()
}

#[test]
fn get_range_serves_part_of_a_page_and_counts_a_hit() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 1 << 22);
    let data = pattern(3 * page::BLOCK_SIZE as usize + 77);
    s.put(&key("r", 0), &data);
    let bs = page::BLOCK_SIZE as usize;
    for (off, len) in [(0, 4096), (bs - 10, 20), (2 * bs, bs + 77), (3 * bs, 4096)] {
        let end = (off + len).min(data.len());
        assert_eq!(
            s.get_range(&key("r", 0), off as u64, len).unwrap(),
            &data[off..end],
            "offset {off}"
        );
    }
    assert_eq!(
        s.get_range(&key("r", 0), data.len() as u64, 10).unwrap(),
        b""
    );
    assert!(s.get_range(&key("r", 1), 0, 10).is_none());
    let st = s.stats();
    assert_eq!(
        (
            st.counters.hits,
            st.counters.misses,
            st.counters.corrupt_pages
        ),
        (5, 1, 0)
    );
}

/// `put` writes the header and the page's own buffer with one writev: the
/// file must be byte for byte the encoded page, empty pages included.
#[test]
fn a_stored_page_file_is_its_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 1 << 22);
    for (i, len) in [0, 5, 2 * page::BLOCK_SIZE as usize + 3]
        .into_iter()
        .enumerate()
    {
        let k = key("w", i as u64);
        let data = pattern(len);
        s.put(&k, &data);
        let file = fs::read(s.path_of(&k.file_stem())).unwrap();
        assert!(file == page::encode(&k, &data), "page of {len} bytes");
    }
}

#[test]
fn get_range_drops_a_page_with_a_damaged_block_or_header() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 1 << 22);
    let data = pattern(2 * page::BLOCK_SIZE as usize);
    let path = s.path_of(&key("d", 0).file_stem());
    // (byte to flip counted from the end of the file: data; from the start: header)
    for (at_end, flip) in [(true, 1usize), (false, 20)] {
        s.put(&key("d", 0), &data);
        let mut bytes = fs::read(&path).unwrap();
        let at = if at_end { bytes.len() - flip } else { flip };
        bytes[at] ^= 0x10;
        fs::write(&path, bytes).unwrap();
        // Read the damaged block (the last one) or, for the header, any.
        assert!(s
            .get_range(&key("d", 0), data.len() as u64 - 100, 50)
            .is_none());
        assert!(!path.exists(), "damaged page not removed");
    }
    let st = s.stats();
    assert_eq!((st.counters.corrupt_pages, st.pages, st.bytes), (2, 0, 0));
    // The refetched page is stored again and served.
    s.put(&key("d", 0), &data);
    assert_eq!(s.get_range(&key("d", 0), 5, 5).unwrap(), &data[5..10]);
}

/// Pages written before the v2 format are served, verified whole, by both
/// `get` and `get_range`: an upgrade keeps the warm cache.
#[test]
fn v1_page_files_are_still_served_verified() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(5000);
    let path = {
        let s = store(dir.path(), 1 << 22);
        s.put(&key("old", 0), &data); // create the directories and ledger entry
        let path = s.path_of(&key("old", 0).file_stem());
        fs::write(&path, page::encode_v1(&key("old", 0), &data)).unwrap();
        path
    };
    let s = store(dir.path(), 1 << 22);
    assert_eq!(s.get(&key("old", 0)).unwrap(), data);
    assert_eq!(
        s.get_range(&key("old", 0), 4000, 4096).unwrap(),
        &data[4000..]
    );
    let mut bytes = fs::read(&path).unwrap();
    bytes[100] ^= 1;
    fs::write(&path, bytes).unwrap();
    assert!(s.get_range(&key("old", 0), 0, 10).is_none());
    assert!(!path.exists());
    assert_eq!(s.stats().counters.corrupt_pages, 1);
}

#[test]
fn get_range_reads_from_whole_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 1 << 22);
    let data = pattern(4096 * 2 + 500);
    for (i, chunk) in data.chunks(4096).enumerate() {
        s.put(&key("wr", i as u64), chunk);
    }
    assert!(s.assemble_whole(&key("wr", 0), data.len() as u64));
    assert_eq!(
        s.get_range(&key("wr", 1), 100, 50).unwrap(),
        &data[4196..4246]
    );
    assert_eq!(
        s.get_range(&key("wr", 2), 400, 4096).unwrap(),
        &data[8592..]
    );
}

fn volume_key(source: &str, path: &str, index: u64) -> PageKey {
    PageKey {
        source: source.into(),
        path: path.into(),
        version: "v1".into(),
        index,
    }
}

/// A store opened as another process would (its own index, ledger handle
/// and lock), bypassing this process's registry.
fn other_process(dir: &Path, quota: u64, identity: &str) -> Arc<VolumeCache> {
    let store = PageStore::open_dir(PageStoreConfig::new(dir.to_path_buf(), quota, 4096)).unwrap();
    assert!(store.wait_index_ready(Duration::from_secs(10)));
    VolumeCache::new(store, identity, 4096)
}

#[test]
fn a_volume_streaming_through_the_cache_leaves_a_small_volume_its_pages() {
    let dir = tempfile::tempdir().unwrap();
    let one = page_bytes(4096);
    let big = store(dir.path(), one * 20);
    let small = VolumeCache::new(Arc::clone(big.store()), "nfs://server/small", 4096);
    for i in 0..3 {
        small.put(&volume_key("nfs://server/small", "s", i), &[1u8; 4096]);
    }
    for i in 0..100 {
        big.put(&key("stream", i), &[2u8; 4096]);
    }
    assert_eq!(small.stats().counters.skipped_pages, 0);
    for i in 0..3 {
        assert!(
            small
                .get(&volume_key("nfs://server/small", "s", i))
                .is_some(),
            "the small volume's page {i} was evicted by the streaming one"
        );
    }
    assert!(big.stats().volume_bytes <= one * 20);
    assert_eq!(small.stats().pages, 3);
}

#[test]
fn a_process_whose_index_knows_nothing_evicts_another_process_pages() {
    let dir = tempfile::tempdir().unwrap();
    let one = page_bytes(4096);
    // Both processes start on an empty directory; the first fills it.
    let first = other_process(dir.path(), one * 10, "file:///first");
    let second = other_process(dir.path(), one * 10, "file:///second");
    for i in 0..10 {
        first.put(&volume_key("file:///first", "f", i), &[1u8; 4096]);
    }
    for i in 0..3 {
        second.put(&volume_key("file:///second", "g", i), &[2u8; 4096]);
    }
    assert_eq!(
        second.stats().counters.skipped_pages,
        0,
        "the second process cached nothing: it could not make room"
    );
    for i in 0..3 {
        assert!(second.get(&volume_key("file:///second", "g", i)).is_some());
    }
    assert!(scan::scan_dir(dir.path(), false).total <= one * 10);
}

/// Many writers in two processes filling one directory: each eviction
/// stops at the low watermark. Evictors that each computed their share of
/// the work from the same total took the directory far below it (and then
/// the small volume's pages, its share being "exceeded" by the shrink).
#[test]
fn concurrent_writers_never_evict_below_the_low_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let one = page_bytes(4096);
    let quota = one * 40;
    let processes = [
        other_process(dir.path(), quota, "file:///first"),
        other_process(dir.path(), quota, "file:///second"),
    ];
    let cfg = PageStoreConfig::new(dir.path().to_path_buf(), quota, 4096);
    let ledger = Ledger::open(dir.path()).unwrap();
    let done = AtomicBool::new(false);
    let lowest = std::thread::scope(|s| {
        let monitor = s.spawn(|| {
            let (mut full, mut lowest) = (false, u64::MAX);
            while !done.load(Ordering::Relaxed) {
                let total = ledger.total().unwrap();
                full |= total >= cfg.high();
                if full {
                    lowest = lowest.min(total);
                }
            }
            lowest
        });
        let writers: Vec<_> = (0..16)
            .map(|t| {
                let volume = &processes[t % 2];
                s.spawn(move || {
                    for i in 0..100 {
                        volume.put(&key(&format!("w{t}"), i), &[t as u8; 4096]);
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        monitor.join().unwrap()
    });
    assert!(
        lowest + 2 * one >= cfg.low(),
        "evicted down to {} pages; the low watermark is {}",
        lowest / one,
        cfg.low() / one
    );
}

#[test]
fn the_quota_is_the_directory_s_while_another_process_uses_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = other_process(dir.path(), 1 << 20, "file:///a");
    let second = other_process(dir.path(), 5 << 20, "file:///b");
    assert_eq!(
        second.stats().quota_bytes,
        1 << 20,
        "the recorded quota wins"
    );
    drop(second);
    close(first);
    let third = other_process(dir.path(), 7 << 20, "file:///c");
    assert_eq!(
        third.stats().quota_bytes,
        7 << 20,
        "alone on the directory, a process sets a new quota"
    );
    assert_eq!(summarize(dir.path()).unwrap().quota_bytes, Some(7 << 20));
}

#[test]
fn pages_of_the_layout_before_volume_directories_are_removed_and_summarized_by_volume() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = dir.path().join("pages/ab");
    fs::create_dir_all(&legacy).unwrap();
    fs::write(legacy.join(format!("{}.page", "ab".repeat(32))), b"old").unwrap();
    assert_eq!(summarize(dir.path()).unwrap().legacy_bytes, 3);
    let s = store(dir.path(), 1 << 20);
    s.put(&key("a", 0), b"one");
    let sum = summarize(dir.path()).unwrap();
    assert_eq!(sum.legacy_bytes, 0);
    assert!(!legacy.exists());
    assert_eq!(sum.volumes.len(), 1);
    assert_eq!(sum.volumes[0].pages, 1);
    assert!(
        sum.volumes[0].name.starts_with("file:///srv"),
        "{:?}",
        sum.volumes
    );
}

/// Descriptors of this process on page files under `dir`: (present,
/// removed from the directory).
fn open_page_files(dir: &Path) -> (usize, usize) {
    let (mut present, mut removed) = (0, 0);
    for fd in fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if !target.starts_with(&*dir.to_string_lossy()) || !target.contains(".page") {
            continue;
        }
        match target.ends_with(" (deleted)") {
            true => removed += 1,
            false => present += 1,
        }
    }
    (present, removed)
}

#[test]
fn range_reads_keep_page_files_open_until_they_are_replaced_or_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(2 * page::BLOCK_SIZE as usize);
    let one = page::encode(&key("o", 0), &data).len() as u64;
    // Quota of 10 pages: the 10th evicts down to 7.
    let s = store(dir.path(), one * 10);
    for i in 0..9 {
        s.put(&key("o", i), &data);
    }
    for i in 0..9 {
        assert_eq!(s.get_range(&key("o", i), 7, 9).unwrap(), &data[7..16]);
    }
    assert_eq!(
        open_page_files(dir.path()),
        (9, 0),
        "one descriptor per page read"
    );
    // A second read of the same page uses the open file.
    assert_eq!(s.get_range(&key("o", 0), 100, 4).unwrap(), &data[100..104]);
    assert_eq!(open_page_files(dir.path()), (9, 0));
    // Rewritten (a refetch after damage elsewhere): the old file is closed.
    s.put(&key("o", 8), &data);
    assert_eq!(open_page_files(dir.path()), (8, 0));
    // Evicted: closed too, so its space is really freed.
    s.put(&key("o", 9), &data);
    let (present, removed) = open_page_files(dir.path());
    assert_eq!(removed, 0, "evicted page files held open");
    assert!(present <= 7, "{present}");
    // Removed by another process: noticed at the next read, and closed.
    let survivor = (0..9)
        .find(|i| s.get_range(&key("o", *i), 0, 1).is_some())
        .unwrap();
    fs::remove_file(s.path_of(&key("o", survivor).file_stem())).unwrap();
    assert!(s.get_range(&key("o", survivor), 0, 1).is_none());
    assert_eq!(open_page_files(dir.path()).1, 0);
}
