//! Core tests: drive the filesystem without a FUSE mount, against a real
//! local directory backend.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::local::{IdentityMode, LocalBackend};
use crate::backend::{AttrChanges, Backend};
use crate::cache::{PageStoreConfig, VolumeCache};

use super::*;

pub(super) const RO: OpenMode = OpenMode {
    writable: false,
    truncate: false,
    append: false,
};
pub(super) const RW: OpenMode = OpenMode {
    writable: true,
    truncate: false,
    append: false,
};
const RW_TRUNC: OpenMode = OpenMode {
    writable: true,
    truncate: true,
    append: false,
};

pub(super) struct Fixture {
    pub(super) _dir: tempfile::TempDir,
    pub(super) backing: std::path::PathBuf,
    pub(super) fs: Arc<CachalotFs>,
}

const ROOT: Caller = Caller {
    uid: 0,
    gid: 0,
    pid: 1,
};

/// Root, as this test process (so the opener check sees the same process).
pub(super) fn me() -> Caller {
    Caller {
        pid: std::process::id(),
        ..ROOT
    }
}

pub(super) async fn fixture(read_only: bool) -> Fixture {
    fixture_with_pages(read_only, 4096).await
}

pub(super) async fn fixture_with_pages(read_only: bool, page_size: u64) -> Fixture {
    fixture_on(read_only, page_size, Duration::from_secs(60), |b| b).await
}

/// A fixture whose local backend is wrapped (a test's own behaviour in
/// front of it), with the given metadata TTL.
pub(super) async fn fixture_on(
    read_only: bool,
    page_size: u64,
    metadata_ttl: Duration,
    wrap: impl FnOnce(Arc<dyn Backend>) -> Arc<dyn Backend>,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    fs::create_dir(&backing).unwrap();
    let backend = wrap(Arc::new(LocalBackend::new(
        backing.clone(),
        IdentityMode::Caller,
    )));
    let cache = VolumeCache::open(
        PageStoreConfig::new(dir.path().join("cache"), 64 << 20, page_size),
        backend.cache_identity(),
    )
    .unwrap();
    let fs = CachalotFs::new(
        backend,
        cache,
        FsConfig {
            metadata_ttl,
            read_only,
            fixed_identity: None,
            passthrough: false,
            mount_group: None,
        },
    )
    .await
    .unwrap();
    Fixture {
        _dir: dir,
        backing,
        fs: Arc::new(fs),
    }
}

pub(super) fn visible(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn created_file_appears_only_when_closed() {
    let f = fixture(false).await;
    let (attr, o) =
        f.fs.create(me(), ROOT_INO, "a.txt", 0o644, true, RW)
            .await
            .unwrap();
    f.fs.write(ROOT, o.fh, 0, b"hello ").await.unwrap();
    f.fs.write(ROOT, o.fh, 6, b"world").await.unwrap();
    assert!(!f.backing.join("a.txt").exists());
    // Visible through the filesystem, with its in-progress size.
    let seen = f.fs.lookup(ROOT, ROOT_INO, "a.txt").await.unwrap();
    assert_eq!((seen.ino, seen.size), (attr.ino, 11));
    assert_eq!(
        f.fs.read(o.fh, 0, 100).await.unwrap(),
        b"hello world".as_slice()
    );
    f.fs.flush(me(), o.fh).await.unwrap();
    f.fs.release(o.fh).await.unwrap();
    assert_eq!(fs::read(f.backing.join("a.txt")).unwrap(), b"hello world");
    assert_eq!(visible(&f.backing), vec!["a.txt"]);
}

#[tokio::test]
async fn partial_overwrite_is_copy_on_write() {
    let f = fixture(false).await;
    fs::write(f.backing.join("f"), b"0123456789").unwrap();
    let ino = f.fs.lookup(ROOT, ROOT_INO, "f").await.unwrap().ino;
    let o = f.fs.open(me(), ino, RW).await.unwrap();
    f.fs.write(ROOT, o.fh, 3, b"abc").await.unwrap();
    assert_eq!(fs::read(f.backing.join("f")).unwrap(), b"0123456789");
    f.fs.flush(me(), o.fh).await.unwrap();
    f.fs.release(o.fh).await.unwrap();
    assert_eq!(fs::read(f.backing.join("f")).unwrap(), b"012abc6789");
}

#[tokio::test]
async fn o_trunc_is_atomic_with_the_rewrite() {
    let f = fixture(false).await;
    fs::write(f.backing.join("f"), b"old content").unwrap();
    let ino = f.fs.lookup(ROOT, ROOT_INO, "f").await.unwrap().ino;
    let o = f.fs.open(me(), ino, RW_TRUNC).await.unwrap();
    // Until close, readers of the backend still see the old content.
    assert_eq!(fs::read(f.backing.join("f")).unwrap(), b"old content");
    assert_eq!(f.fs.getattr(ROOT, ino).await.unwrap().size, 0);
    f.fs.write(ROOT, o.fh, 0, b"new").await.unwrap();
    f.fs.release(o.fh).await.unwrap();
    assert_eq!(fs::read(f.backing.join("f")).unwrap(), b"new");
}

#[tokio::test]
async fn truncate_without_open_handle_publishes_at_once() {
    let f = fixture(false).await;
    fs::write(f.backing.join("f"), b"0123456789").unwrap();
    let ino = f.fs.lookup(ROOT, ROOT_INO, "f").await.unwrap().ino;
    let a =
        f.fs.setattr(ROOT, ino, Some(4), AttrChanges::default())
            .await
            .unwrap();
    assert_eq!(a.size, 4);
    assert_eq!(fs::read(f.backing.join("f")).unwrap(), b"0123");
    assert_eq!(visible(&f.backing), vec!["f"]);
}

#[tokio::test]
async fn unlinked_while_writing_is_never_published() {
    let f = fixture(false).await;
    let (_, o) =
        f.fs.create(me(), ROOT_INO, "gone", 0o644, true, RW)
            .await
            .unwrap();
    f.fs.write(ROOT, o.fh, 0, b"data").await.unwrap();
    f.fs.unlink(ROOT, ROOT_INO, "gone").await.unwrap();
    assert_eq!(
        f.fs.lookup(ROOT, ROOT_INO, "gone")
            .await
            .unwrap_err()
            .errno(),
        libc::ENOENT
    );
    f.fs.flush(me(), o.fh).await.unwrap();
    f.fs.release(o.fh).await.unwrap();
    assert!(visible(&f.backing).is_empty(), "{:?}", visible(&f.backing));
}

#[tokio::test]
async fn renaming_a_file_being_written_publishes_under_the_new_name() {
    let f = fixture(false).await;
    let d = f.fs.mkdir(ROOT, ROOT_INO, "sub", 0o755).await.unwrap();
    let (_, o) =
        f.fs.create(me(), ROOT_INO, "draft", 0o644, true, RW)
            .await
            .unwrap();
    f.fs.write(ROOT, o.fh, 0, b"report").await.unwrap();
    f.fs.rename(ROOT, ROOT_INO, "draft", d.ino, "final", false)
        .await
        .unwrap();
    f.fs.release(o.fh).await.unwrap();
    assert_eq!(fs::read(f.backing.join("sub/final")).unwrap(), b"report");
    assert_eq!(visible(&f.backing), vec!["sub"]);
    assert_eq!(visible(&f.backing.join("sub")), vec!["final"]);
}

#[tokio::test]
async fn second_read_comes_from_the_page_store() {
    let f = fixture(false).await;
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(f.backing.join("big"), &data).unwrap();
    let ino = f.fs.lookup(ROOT, ROOT_INO, "big").await.unwrap().ino;
    for round in 0..2 {
        let o = f.fs.open(me(), ino, RO).await.unwrap();
        let got = f.fs.read(o.fh, 0, 30_000).await.unwrap();
        assert_eq!(got, data, "round {round}");
        f.fs.release(o.fh).await.unwrap();
        // Give the background cache writes time to land.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reads =
        f.fs.counters
            .backend_reads
            .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        reads, 5,
        "20 000 bytes = 5 pages of 4 KiB, each fetched once"
    );
}

#[tokio::test]
async fn listing_hides_temp_files_and_shows_files_being_created() {
    let f = fixture(false).await;
    fs::write(f.backing.join(".x.cachalot-00000000000000011"), b"leftover").unwrap();
    fs::write(f.backing.join("plain"), b"p").unwrap();
    let (_, o) =
        f.fs.create(me(), ROOT_INO, "new", 0o644, true, RW)
            .await
            .unwrap();
    let dh = f.fs.opendir(ROOT, ROOT_INO).await.unwrap().fh;
    let mut names: Vec<String> =
        f.fs.readdir(dh)
            .unwrap()
            .from(0)
            .map(|(_, e)| e.name.clone())
            .collect();
    names.sort();
    assert_eq!(names, vec![".", "..", "new", "plain"]);
    f.fs.releasedir(dh);
    f.fs.release(o.fh).await.unwrap();
    let err =
        f.fs.lookup(ROOT, ROOT_INO, ".x.cachalot-00000000000000011")
            .await
            .unwrap_err();
    assert_eq!(err.errno(), libc::ENOENT);
}

#[tokio::test]
async fn read_only_refuses_every_mutation_with_erofs() {
    let f = fixture(true).await;
    fs::write(f.backing.join("f"), b"x").unwrap();
    let ino = f.fs.lookup(ROOT, ROOT_INO, "f").await.unwrap().ino;
    let erofs = |r: Result<(), FsError>| assert_eq!(r.unwrap_err().errno(), libc::EROFS);
    erofs(
        f.fs.create(me(), ROOT_INO, "n", 0o644, false, RW)
            .await
            .map(|_| ()),
    );
    erofs(f.fs.mkdir(ROOT, ROOT_INO, "d", 0o755).await.map(|_| ()));
    erofs(f.fs.unlink(ROOT, ROOT_INO, "f").await);
    erofs(f.fs.rename(ROOT, ROOT_INO, "f", ROOT_INO, "g", false).await);
    erofs(f.fs.open(me(), ino, RW).await.map(|_| ()));
    erofs(
        f.fs.setattr(ROOT, ino, Some(0), AttrChanges::default())
            .await
            .map(|_| ()),
    );
    erofs(f.fs.symlink(ROOT, ROOT_INO, "l", "f").await.map(|_| ()));
    assert_eq!(fs::read(f.backing.join("f")).unwrap(), b"x");
}

/// The errno of an O_EXCL create of `name` in the root, if it fails.
async fn create_exclusive_errno(f: &Fixture, name: &str) -> Option<i32> {
    let created = f.fs.create(me(), ROOT_INO, name, 0o644, true, RW).await;
    created.err().map(|e| e.errno())
}

#[tokio::test]
async fn exclusive_create_of_existing_name_is_eexist() {
    let f = fixture(false).await;
    fs::write(f.backing.join("f"), b"x").unwrap();
    assert_eq!(create_exclusive_errno(&f, "f").await, Some(libc::EEXIST));
}

#[tokio::test]
async fn create_over_a_known_name_opens_it() {
    let f = fixture(false).await;
    fs::write(f.backing.join("f"), b"abc").unwrap();
    f.fs.lookup(ROOT, ROOT_INO, "f").await.unwrap();
    let (attr, o) =
        f.fs.create(me(), ROOT_INO, "f", 0o644, false, RW)
            .await
            .unwrap();
    assert_eq!(attr.size, 3);
    f.fs.release(o.fh).await.unwrap();
    assert_eq!(create_exclusive_errno(&f, "f").await, Some(libc::EEXIST));
}

#[tokio::test]
async fn sequential_reads_trigger_read_ahead_and_random_reads_do_not() {
    let f = fixture(false).await;
    let data: Vec<u8> = (0..400_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(f.backing.join("seq"), &data).unwrap();
    fs::write(f.backing.join("rnd"), &data).unwrap();
    let reads = || {
        f.fs.counters
            .backend_reads
            .load(std::sync::atomic::Ordering::Relaxed)
    };

    let ino = f.fs.lookup(ROOT, ROOT_INO, "seq").await.unwrap().ino;
    let o = f.fs.open(me(), ino, RO).await.unwrap();
    for i in 0..4u64 {
        let got = f.fs.read(o.fh, i * 4096, 4096).await.unwrap();
        assert_eq!(got, &data[(i * 4096) as usize..((i + 1) * 4096) as usize]);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        reads() > 4,
        "read-ahead should have fetched pages beyond the 4 read: {}",
        reads()
    );
    f.fs.release(o.fh).await.unwrap();

    let before = reads();
    let ino = f.fs.lookup(ROOT, ROOT_INO, "rnd").await.unwrap().ino;
    let o = f.fs.open(me(), ino, RO).await.unwrap();
    for page in [50u64, 7, 81, 23] {
        let got = f.fs.read(o.fh, page * 4096, 4096).await.unwrap();
        assert_eq!(
            got,
            &data[(page * 4096) as usize..((page + 1) * 4096) as usize]
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        reads() - before,
        4,
        "random reads fetch only what they read"
    );
    f.fs.release(o.fh).await.unwrap();
}

#[tokio::test]
async fn concurrent_readers_of_one_cold_page_fetch_it_once() {
    let f = fixture(false).await;
    fs::write(f.backing.join("hot"), vec![9u8; 4096]).unwrap();
    let ino = f.fs.lookup(ROOT, ROOT_INO, "hot").await.unwrap().ino;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let fs = Arc::clone(&f.fs);
        tasks.push(tokio::spawn(async move {
            let o = fs.open(ROOT, ino, RO).await.unwrap();
            let got = fs.read(o.fh, 0, 4096).await.unwrap();
            fs.release(o.fh).await.unwrap();
            got
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), vec![9u8; 4096]);
    }
    assert_eq!(
        f.fs.counters
            .backend_reads
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_changed_backend_file_never_serves_stale_pages() {
    let f = fixture(false).await;
    fs::write(f.backing.join("f"), b"version one").unwrap();
    let ino = f.fs.lookup(ROOT, ROOT_INO, "f").await.unwrap().ino;
    let o = f.fs.open(me(), ino, RO).await.unwrap();
    assert_eq!(
        f.fs.read(o.fh, 0, 100).await.unwrap(),
        b"version one".as_slice()
    );
    f.fs.release(o.fh).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Replace behind the mount's back; mtime+size+inode change the version.
    fs::write(f.backing.join("f.new"), b"version two!").unwrap();
    fs::rename(f.backing.join("f.new"), f.backing.join("f")).unwrap();
    // Within the metadata TTL the old attributes are trusted, but the reader
    // opened on a miss pins the new version; after the TTL a fresh stat does.
    let fresh = Arc::new(
        CachalotFs::new(
            Arc::new(LocalBackend::new(f.backing.clone(), IdentityMode::Caller)),
            Arc::clone(&f.fs.cache),
            FsConfig {
                metadata_ttl: Duration::ZERO,
                read_only: false,
                fixed_identity: None,
                passthrough: false,
                mount_group: None,
            },
        )
        .await
        .unwrap(),
    );
    let ino = fresh.lookup(ROOT, ROOT_INO, "f").await.unwrap().ino;
    let o = fresh.open(ROOT, ino, RO).await.unwrap();
    assert_eq!(
        fresh.read(o.fh, 0, 100).await.unwrap(),
        b"version two!".as_slice()
    );
    fresh.release(o.fh).await.unwrap();
}

#[tokio::test]
async fn a_flush_from_another_process_does_not_publish() {
    let f = fixture(false).await;
    let (_, o) =
        f.fs.create(me(), ROOT_INO, "ckpt", 0o644, true, RW)
            .await
            .unwrap();
    f.fs.write(me(), o.fh, 0, b"half").await.unwrap();
    // A forked child closing its inherited descriptor (pid 1 is not us).
    f.fs.flush(ROOT, o.fh).await.unwrap();
    assert!(
        !f.backing.join("ckpt").exists(),
        "published by a foreign flush"
    );
    f.fs.write(me(), o.fh, 4, b" and the rest").await.unwrap();
    f.fs.flush(me(), o.fh).await.unwrap();
    f.fs.release(o.fh).await.unwrap();
    assert_eq!(
        fs::read(f.backing.join("ckpt")).unwrap(),
        b"half and the rest"
    );
}

#[tokio::test]
async fn a_failed_write_is_never_published() {
    let f = fixture(false).await;
    fs::write(f.backing.join("f"), b"precious").unwrap();
    let ino = f.fs.lookup(ROOT, ROOT_INO, "f").await.unwrap().ino;
    let o = f.fs.open(me(), ino, RW).await.unwrap();
    f.fs.write(me(), o.fh, 0, b"new start").await.unwrap();
    // An offset past the maximum file size makes the temp file write fail.
    let err =
        f.fs.write(me(), o.fh, u64::MAX - 10, b"boom")
            .await
            .unwrap_err();
    assert_ne!(err.errno(), libc::EIO, "a precise errno, not EIO");
    let at_close = f.fs.flush(me(), o.fh).await.unwrap_err();
    assert_eq!(at_close, err, "close reports the write error");
    f.fs.release(o.fh).await.unwrap();
    assert_eq!(fs::read(f.backing.join("f")).unwrap(), b"precious");
    assert_eq!(visible(&f.backing), vec!["f"]);
}

/// Page files of the fixture's cache directory.
fn page_files(f: &Fixture) -> Vec<std::path::PathBuf> {
    let pages = f
        ._dir
        .path()
        .join("cache/pages")
        .join(f.fs.cache.tag().to_string());
    let mut out = Vec::new();
    for sub in fs::read_dir(pages).unwrap().flatten() {
        if !sub.path().is_dir() {
            continue; // the volume's name file
        }
        for file in fs::read_dir(sub.path()).unwrap().flatten() {
            if file.path().extension().is_some_and(|e| e == "page") {
                out.push(file.path());
            }
        }
    }
    out
}

/// Small random reads of stored pages read only the needed range (no whole
/// page into memory), across page boundaries and at end of file; a damaged
/// block is never served: the page is refetched from the backend.
#[tokio::test]
async fn random_small_reads_of_stored_pages_read_only_their_range() {
    const PS: u64 = 256 << 10;
    let f = fixture_with_pages(false, PS).await;
    let data: Vec<u8> = (0..600_000u32)
        .map(|i| (i % 251 + i / 7919) as u8)
        .collect();
    fs::write(f.backing.join("big"), &data).unwrap();
    let ino = f.fs.lookup(ROOT, ROOT_INO, "big").await.unwrap().ino;
    let o = f.fs.open(me(), ino, RO).await.unwrap();
    assert_eq!(f.fs.read(o.fh, 0, 700_000).await.unwrap(), data);
    f.fs.release(o.fh).await.unwrap();
    for _ in 0..500 {
        if f.fs.cache.stats().pages == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(f.fs.cache.stats().pages, 3, "pages not stored");
    f.fs.hot.clear();
    let backend_reads = || {
        f.fs.counters
            .backend_reads
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let reads_before = backend_reads();
    let hits_before = f.fs.cache.stats().counters.hits;

    let o = f.fs.open(me(), ino, RO).await.unwrap();
    let mut expect_hits = hits_before;
    // (offset, len, page-store range reads it takes)
    for (off, len, ranges) in [
        (300_000usize, 4096usize, 1),
        (300_000, 4096, 1), // again: still from the store, not memory
        (PS as usize - 100, 4096, 2),
        (599_000, 4096, 1), // past end of file: shorter
        (2 * PS as usize + 10, 8192, 1),
    ] {
        let got = f.fs.read(o.fh, off as u64, len as u32).await.unwrap();
        assert_eq!(got, &data[off..(off + len).min(data.len())], "offset {off}");
        expect_hits += ranges;
    }
    let st = f.fs.cache.stats();
    assert_eq!(st.counters.hits, expect_hits, "{st:?}");
    assert_eq!(st.counters.memory_hits, 0, "{st:?}");
    assert_eq!(backend_reads(), reads_before, "served from the page store");
    assert_eq!(f.fs.hot.len(), 0, "no partial pages in memory");

    // Damage the last block of both full pages: the damaged block is not
    // served, the page is refetched whole.
    for p in page_files(&f) {
        let mut bytes = fs::read(&p).unwrap();
        if bytes.len() as u64 > PS {
            let last = bytes.len() - 1;
            bytes[last] ^= 0x08;
            fs::write(&p, bytes).unwrap();
        }
    }
    let off = PS as usize - 50;
    let got = f.fs.read(o.fh, off as u64, 10).await.unwrap();
    assert_eq!(got, &data[off..off + 10]);
    assert_eq!(f.fs.cache.stats().counters.corrupt_pages, 1);
    assert_eq!(backend_reads(), reads_before + 1, "refetched once");
    f.fs.release(o.fh).await.unwrap();
}
