//! Read-ahead through a real mount, one GET per run of pages: each page
//! reaches its readers as it arrives, a body cut part-way resumes on the
//! same version, a GET that finds its object replaced fails exactly the
//! readers of the pages it had not delivered (ESTALE, none left waiting),
//! and no reader ever gets a byte of another version. A proxy in front of
//! SeaweedFS (`support_s3::proxy`) holds every big GET after the first
//! pages of its body, so "before the rest arrived" is a fact, not a race.

use crate::support_s3;

use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::mounts::put;
use support_s3::mount::Mounted;
use support_s3::proxy::HoldingProxy;
use support_s3::S3Server;

const MIB: usize = 1 << 20;

/// Bytes that differ from page to page (and from seed to seed), so that a
/// page served at the wrong offset or of the wrong version shows.
fn distinct(len: usize, seed: u64) -> Vec<u8> {
    crate::backend::pseudo_random(len, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// `f` of 24 MiB (`data`) behind a holding proxy, mounted, opened, and its
/// first page read: read-ahead has asked for the rest in runs of 8 pages
/// (one GET each: pages 1-8, 9-16, 17-23), and the proxy holds all three
/// after the first pages of their bodies. The kernel's own readahead is
/// off for the descriptor, so every page after the first is read-ahead's.
fn reading_ahead(proxy: &HoldingProxy, m: &Mounted, data: &[u8]) -> Arc<fs::File> {
    let f = fs::File::open(m.path("f")).unwrap();
    // SAFETY: an advice on a descriptor we own; no memory involved.
    let advised = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    assert_eq!(advised, 0, "posix_fadvise");
    let mut first = vec![0u8; MIB];
    f.read_exact_at(&mut first, 0).unwrap();
    assert!(first == data[..MIB], "page 0 differs");
    proxy.wait_held(3, Duration::from_secs(30));
    Arc::new(f)
}

/// `len` bytes at `offset` of `f`, read on another thread: `None` if that
/// takes longer than `within` (the read goes on).
fn read_within(
    f: &Arc<fs::File>,
    offset: usize,
    len: usize,
    within: Duration,
) -> Option<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel();
    let f = Arc::clone(f);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; len];
        let _ = tx.send(f.read_exact_at(&mut buf, offset as u64).map(|_| buf));
    });
    rx.recv_timeout(within).ok()
}

/// A reader of the first pages of a GET is served while the rest of the
/// body is still held back (it used to wait for all 8 MiB). Then the held
/// bodies are cut: they resume on the same version (object_store asks
/// again for the rest with the same If-Match), and the whole file reads
/// back as it is.
#[test]
fn a_reader_gets_its_page_before_the_rest_of_the_get_arrives() {
    let server = S3Server::seaweed();
    let store = server.store();
    let data = distinct(24 * MIB, 1);
    put(&store, "held/f", data.clone());
    let proxy = HoldingProxy::start(server.port);
    let cache = tempfile::tempdir().unwrap();
    let m = Mounted::start_at(&proxy.endpoint(), "held", cache.path(), |_| {});
    let f = reading_ahead(&proxy, &m, &data);

    // Pages 1 and 2: the first two of the GET of pages 1-8.
    let early = read_within(&f, MIB, 2 * MIB, Duration::from_secs(10));
    let held = proxy.held();
    proxy.cut();
    let early = early
        .expect("pages 1-2 waited for the rest of their GET's body")
        .unwrap();
    assert!(early == data[MIB..3 * MIB], "pages 1-2 differ");
    assert_eq!(held, 3, "a GET's body was let through before the read");

    let mut all = Vec::new();
    fs::File::open(m.path("f"))
        .unwrap()
        .read_to_end(&mut all)
        .unwrap();
    assert!(all == data, "the file read after its GETs were cut differs");
}

/// The object is replaced while read-ahead's GETs are held, then their
/// bodies are cut: the rest can't be had on the version the file was
/// opened at (If-Match fails). Readers already waiting for pages of those
/// GETs, one per GET, each get ESTALE; none hangs, none gets a byte of the
/// new object.
#[test]
fn readers_waiting_on_a_get_cut_after_its_object_changed_get_estale() {
    let server = S3Server::seaweed();
    let store = server.store();
    let data = distinct(24 * MIB, 2);
    put(&store, "cut/f", data.clone());
    let proxy = HoldingProxy::start(server.port);
    let cache = tempfile::tempdir().unwrap();
    let m = Mounted::start_at(&proxy.endpoint(), "cut", cache.path(), |_| {});
    let f = reading_ahead(&proxy, &m, &data);

    let early = read_within(&f, MIB, MIB, Duration::from_secs(10))
        .expect("page 1 waited for the rest of its GET's body")
        .unwrap();
    assert!(early == data[MIB..2 * MIB], "page 1 differs");
    // Pages past what the proxy let through, one in each held GET.
    let (tx, rx) = mpsc::channel();
    for page in [6, 13, 21] {
        let (f, tx) = (Arc::clone(&f), tx.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; MIB];
            let r = f.read_exact_at(&mut buf, (page * MIB) as u64);
            let _ = tx.send((page, r.map(|_| buf)));
        });
    }
    drop(tx);
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "a page of a held GET was read"
    );
    put(&store, "cut/f", distinct(24 * MIB, 3));
    proxy.cut();
    for _ in 0..3 {
        let (page, r) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a reader of a cut GET was left waiting");
        match r {
            Ok(buf) => panic!(
                "page {page} read after its object was replaced (its own bytes: {})",
                buf == data[page * MIB..(page + 1) * MIB]
            ),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "page {page}: {e}"),
        }
    }
}

/// Several GETs streaming at once, each pinned to the version the file was
/// opened at: an object replaced behind the mount while a reader is
/// half-way through gives that reader the old bytes up to some point and
/// then ESTALE, never a byte of the new object.
#[test]
fn a_streamed_read_stays_on_its_version_and_ends_in_estale_when_replaced() {
    let server = S3Server::seaweed();
    let store = server.store();
    let cache = tempfile::tempdir().unwrap();
    let old = distinct(96 * MIB, 3);
    put(&store, "pinned/f", old.clone());
    let m = Mounted::start(&server, "pinned", cache.path(), &[]);
    let mut f = fs::File::open(m.path("f")).unwrap();
    let mut buf = vec![0u8; MIB];
    let mut pos = 0usize;
    // Sequential reads of the first 8 MiB open the read-ahead window.
    while pos < 8 * MIB {
        let n = f.read(&mut buf).unwrap();
        assert!(
            buf[..n] == old[pos..pos + n],
            "old content differs at {pos}"
        );
        pos += n;
    }
    put(&store, "pinned/f", distinct(96 * MIB, 250));
    let err = loop {
        match f.read(&mut buf) {
            Ok(0) => panic!("read the whole file after its object was replaced"),
            Ok(n) => {
                assert!(
                    buf[..n] == old[pos..pos + n],
                    "bytes at {pos} are not the version the file was opened at"
                );
                pos += n;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
    assert!(pos < old.len());
}

/// S3 volumes answer WRITEs on the FUSE workers, and a writer whose
/// uploads are in flight waits there for one to finish (backpressure).
/// Those waits take half the workers at most: with more writers waiting
/// than there are workers (their parts held by the proxy), a stat and a
/// listing are still answered at once; released, every file is whole.
#[test]
fn writers_waiting_for_their_uploads_leave_the_mount_answering() {
    let server = S3Server::seaweed();
    let proxy = HoldingProxy::start_holding_uploads(server.port);
    let cache = tempfile::tempdir().unwrap();
    let m = Mounted::start_at(&proxy.endpoint(), "busy", cache.path(), |cmd| {
        cmd.args(["--part-size", "5MiB"]);
    });
    fs::write(m.path("small"), b"small").unwrap();
    let writers = 10;
    let len = 30 * MIB;
    let threads: Vec<_> = (0..writers)
        .map(|i| {
            let path = m.path(&format!("w{i}"));
            std::thread::spawn(move || {
                let data = distinct(len, 100 + i as u64);
                let f = fs::File::create(&path)?;
                for (n, chunk) in data.chunks(MIB).enumerate() {
                    f.write_all_at(chunk, (n * MIB) as u64)?;
                }
                drop(f);
                Ok::<_, std::io::Error>(data)
            })
        })
        .collect();
    // Four parts in flight per writer, then each waits.
    proxy.wait_held(4 * writers, Duration::from_secs(60));
    let (tx, rx) = mpsc::channel();
    let (small, dir) = (m.path("small"), m.path(""));
    std::thread::spawn(move || {
        let stat = fs::metadata(&small).map(|s| s.len());
        let listed = fs::read_dir(&dir).map(|d| d.count());
        let _ = tx.send((stat, listed));
    });
    let answered = rx.recv_timeout(Duration::from_secs(5));
    proxy.release();
    let (stat, listed) = answered.expect("stat and listing waited for the writers' uploads");
    assert_eq!(stat.unwrap(), 5);
    assert!(listed.unwrap() > writers);
    for (i, t) in threads.into_iter().enumerate() {
        let data = t.join().unwrap().unwrap();
        assert!(
            fs::read(m.path(&format!("w{i}"))).unwrap() == data,
            "w{i} differs"
        );
    }
}
