//! Several UNSTABLE WRITEs of one file in flight at once (the backend's
//! write pipeline): what the application must still be able to count on.
//! - every byte lands where it was written, whatever order the server
//!   answers in: a rewrite of a range still in flight wins, a truncate
//!   comes after the writes before it, fsync returns once all is in;
//! - a WRITE the server refuses (the small tmpfs under the export is
//!   full) is reported with its errno, at the latest by fsync or close,
//!   and the temp file, missing data, is never published.

use crate::common::{assert_bytes_eq, no_fork_guard, pattern, wait_until};
use crate::support_nfs;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use cachalot::backend::nfs::{NfsBackend, NfsOptions};
use cachalot::backend::{Backend, BackendPath, ErrorKind, Identity, Resumed, Source, WriteStart};

use support_nfs::ganesha;
use support_nfs::mount::mount;

const MIB: usize = 1 << 20;

const FILLER: &str = "filler";

/// The tests that fill the small tmpfs take turns.
static SMALL_FS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn empty_dir(dir: &Path) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        fs::remove_file(e.path()).unwrap();
    }
}

/// Fill the tmpfs (with a file written on disk, so ganesha never holds
/// it open) until `bytes` are left. Sizes are set this way, not from the
/// tmpfs size: temp files removed over NFS keep their space while ganesha
/// keeps them open (for a while after the REMOVE).
fn leave_free(dir: &Path, bytes: usize) {
    let filler = dir.join(FILLER);
    let _ = fs::remove_file(&filler);
    let st = nix::sys::statvfs::statvfs(dir).unwrap();
    let avail = (st.blocks_available() * st.fragment_size()) as usize;
    assert!(avail >= bytes, "only {avail} bytes free on the tmpfs");
    fs::write(&filler, vec![1u8; avail - bytes]).unwrap();
}

/// Names in `dir` but the filler.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != FILLER)
        .collect();
    v.sort();
    v
}

#[test]
fn pipelined_writes_read_back_exact_through_a_second_client() {
    let server = ganesha();
    let (disk, url) = server.area("pipeline-exact");
    let m = mount(&url, &[]).unwrap_or_else(|f| panic!("{f:?}"));

    // Sequential 1 MiB writes (an odd tail), each followed at once by a
    // small rewrite inside it (answered first if sent alongside: a small
    // WRITE is quick), then a rewrite across the last MiBs.
    let size = 40 * MIB + 12_345;
    let mut expect = pattern(size, 1);
    let rewrite_at = size - 2 * MIB - 777;
    let rewrite = pattern(MIB + 1000, 2);
    {
        let mut f = File::create(m.path("big.bin")).unwrap();
        let small = pattern(4096, 10);
        for (i, chunk) in expect.clone().chunks(MIB).enumerate() {
            f.write_all(chunk).unwrap();
            let at = i * MIB + chunk.len() / 2;
            let small = &small[..small.len().min(chunk.len() / 2)];
            f.write_all_at(small, at as u64).unwrap();
            expect[at..at + small.len()].copy_from_slice(small);
        }
        f.write_all_at(&rewrite, rewrite_at as u64).unwrap();
        expect[rewrite_at..rewrite_at + rewrite.len()].copy_from_slice(&rewrite);
        f.sync_all().unwrap();
        // fsync published it: all of it is on the server now.
        assert_bytes_eq(
            &fs::read(disk.join("big.bin")).unwrap(),
            &expect,
            "after fsync",
        );
    }

    // A truncate right behind WRITEs in flight, then a write past a hole.
    let mut cut = pattern(8 * MIB, 3);
    {
        let f = File::create(m.path("cut.bin")).unwrap();
        (&f).write_all(&cut).unwrap();
        f.set_len((3 * MIB + 5) as u64).unwrap();
        let tail = pattern(MIB, 4);
        f.write_all_at(&tail, (5 * MIB) as u64).unwrap();
        cut.truncate(3 * MIB + 5);
        cut.resize(5 * MIB, 0);
        cut.extend_from_slice(&tail);
        f.sync_all().unwrap();
    }
    assert_bytes_eq(&fs::read(disk.join("cut.bin")).unwrap(), &cut, "cut.bin");

    // Copy-on-write: the 40 MiB go into the new temp file through the same
    // pipeline before the 10 bytes.
    {
        let f = OpenOptions::new()
            .write(true)
            .open(m.path("big.bin"))
            .unwrap();
        f.write_all_at(b"0123456789", 7).unwrap();
        expect[7..17].copy_from_slice(b"0123456789");
    }

    // Another client, with a cache of its own, reads what the server has.
    let other = mount(&url, &[]).unwrap_or_else(|f| panic!("{f:?}"));
    assert_bytes_eq(
        &fs::read(other.path("big.bin")).unwrap(),
        &expect,
        "big.bin read by a second client",
    );
    assert_bytes_eq(
        &fs::read(other.path("cut.bin")).unwrap(),
        &cut,
        "cut.bin read by a second client",
    );
    assert_eq!(names_in(&disk), ["big.bin", "cut.bin"], "temp files left");
}

/// Write `data` over `name` in 1 MiB writes, then fsync (`sync`) and close
/// with close(2) itself (std ignores its result). The first error and the
/// call that returned it.
fn write_then_close(path: &Path, data: &[u8], sync: bool) -> Option<(String, std::io::Error)> {
    // No FLUSH (a publish) from another test's fork while the file is open.
    let _no_fork = no_fork_guard();
    let mut failed = None;
    let mut f = File::create(path).unwrap();
    for (i, chunk) in data.chunks(MIB).enumerate() {
        if let Err(e) = f.write_all(chunk) {
            failed = Some((format!("write #{i}"), e));
            break;
        }
    }
    if failed.is_none() && sync {
        if let Err(e) = f.sync_all() {
            failed = Some(("fsync".to_string(), e));
        }
    }
    // SAFETY: closing the descriptor we own (taken out of the File).
    let rc = unsafe { libc::close(f.into_raw_fd()) };
    if rc != 0 && failed.is_none() {
        failed = Some(("close".to_string(), std::io::Error::last_os_error()));
    }
    failed
}

#[test]
fn a_write_refused_mid_pipeline_is_enospc_and_never_published() {
    let _small = SMALL_FS.blocking_lock();
    let server = ganesha();
    let (disk, url) = server.small_fs();
    empty_dir(&disk);
    let old = pattern(MIB, 5);
    fs::write(disk.join("keep.bin"), &old).unwrap();
    let m = mount(&url, &[]).unwrap_or_else(|f| panic!("{f:?}"));
    // Only the last half MiB does not fit: its WRITE is still in flight
    // when write(2) returns, so fsync (or close) is the call that must
    // report it.
    let data = pattern(8 * MIB + MIB / 2, 6);
    for sync in [true, false] {
        leave_free(&disk, 8 * MIB);
        let failed = write_then_close(&m.path("keep.bin"), &data, sync);
        let Some((call, e)) = failed else {
            panic!("sync={sync}: a write past the file system's end succeeded");
        };
        eprintln!("sync={sync}: {call} failed: {e}");
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ENOSPC),
            "sync={sync}: {call} failed with {e:?}, not ENOSPC"
        );
        assert_bytes_eq(
            &fs::read(disk.join("keep.bin")).unwrap(),
            &old,
            "the file replaced by a failed write",
        );
        assert_bytes_eq(
            &fs::read(m.path("keep.bin")).unwrap(),
            &old,
            "the file through the mount after a failed write",
        );
        // Removed at the release that follows close.
        assert!(
            wait_until(Duration::from_secs(10), || names_in(&disk) == ["keep.bin"]),
            "temp file left: {:?}",
            names_in(&disk)
        );
    }
    // The mount goes on: a write that fits succeeds. (Not the same size:
    // ganesha may hold the removed temp files open, and their space, for
    // a while.)
    let small = pattern(4 * MIB, 9);
    leave_free(&disk, 5 * MIB);
    if let Some((call, e)) = write_then_close(&m.path("keep.bin"), &small, true) {
        panic!("{call} of a write that fits failed: {e}");
    }
    assert_bytes_eq(
        &fs::read(disk.join("keep.bin")).unwrap(),
        &small,
        "rewritten",
    );
    fs::remove_file(disk.join("keep.bin")).unwrap();
    fs::remove_file(disk.join(FILLER)).unwrap();
}

/// Below FUSE: a caller that goes on after a refused WRITE. Space freed
/// meanwhile does not bring the lost data back: every later call on that
/// write fails, the publish too, and the target keeps its content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_fails_every_later_call_even_once_space_is_back() {
    let _small = SMALL_FS.lock().await;
    let server = ganesha();
    let (disk, url) = server.small_fs();
    empty_dir(&disk);
    let old = pattern(MIB, 7);
    fs::write(disk.join("t.bin"), &old).unwrap();
    leave_free(&disk, 3 * MIB);
    let b = NfsBackend::connect(&Source::parse(&url).unwrap(), NfsOptions::default())
        .await
        .unwrap();
    let target = BackendPath::parse("t.bin").unwrap();
    let w = b
        .begin_write(Identity::new(0, 0), &target, WriteStart::Empty, 0o644)
        .await
        .unwrap();
    let data = pattern(16 * MIB, 8);
    let mut first_error = None;
    for (i, chunk) in data.chunks(MIB).enumerate() {
        let result = w.write_at((i * MIB) as u64, chunk).await;
        match (&first_error, result) {
            (None, Err(e)) => {
                assert_eq!(e.kind, ErrorKind::NoSpace, "write #{i}: {e}");
                first_error = Some(i);
                fs::remove_file(disk.join(FILLER)).unwrap();
            }
            (None, Ok(())) => {}
            (Some(_), Err(e)) => assert_eq!(e.kind, ErrorKind::NoSpace, "write #{i}: {e}"),
            (Some(at), Ok(())) => {
                panic!("write #{i} succeeded after write #{at} failed: the file lacks data")
            }
        }
    }
    assert!(first_error.is_some(), "16 MiB fit into 3 MiB");
    let e = w
        .publish(&target)
        .await
        .expect_err("published a file missing data");
    assert_eq!(e.kind, ErrorKind::NoSpace, "{e}");
    assert_bytes_eq(&fs::read(disk.join("t.bin")).unwrap(), &old, "target");
    w.abort(&target).await;
    assert_eq!(names_in(&disk), ["t.bin"], "temp file left");
    fs::remove_file(disk.join("t.bin")).unwrap();
}

/// Below FUSE: the process dies right after a write was answered, its
/// WRITE still unsent (a current-thread runtime does not run the spawned
/// WRITE before the test awaits again; dropping the write aborts it, as
/// kill -9 would). The successor, resuming from the description journaled
/// at begin, re-sends it from the spill. A truncate after earlier writes
/// is not undone by that re-send.
#[tokio::test]
async fn a_write_answered_before_the_server_did_survives_a_crash() {
    let server = ganesha();
    let (disk, url) = server.area("pipeline-crash");
    let spill = tempfile::tempdir().unwrap();
    let connect = || async {
        let opts = NfsOptions {
            spill_dir: Some(spill.path().join("nfs-spill")),
            ..NfsOptions::default()
        };
        NfsBackend::connect(&Source::parse(&url).unwrap(), opts)
            .await
            .unwrap()
    };
    let id = Identity::new(0, 0);
    let data = pattern(40_960, 3);

    for truncated in [false, true] {
        let b = connect().await;
        let target = BackendPath::parse("a.bin").unwrap();
        let w = b
            .begin_write(id, &target, WriteStart::Empty, 0o644)
            .await
            .unwrap();
        let described = w.describe();
        w.write_at(0, &data).await.unwrap();
        let mut expect = data.clone();
        if truncated {
            w.truncate(1000).await.unwrap();
            w.write_at(0, b"0123456789").await.unwrap();
            expect.truncate(1000);
            expect[..10].copy_from_slice(b"0123456789");
        }
        drop(w);
        drop(b);
        let on_server = if truncated { 1000 } else { 0 };
        assert_eq!(
            temp_size(&disk, "a.bin"),
            on_server,
            "the last write was lost"
        );

        let b = connect().await;
        let Resumed::Pending(w) = b.resume_write(id, &target, described).await.unwrap() else {
            panic!("the temp file was taken for published");
        };
        assert_eq!(w.size(), expect.len() as u64, "size after the re-send");
        w.publish(&target).await.unwrap();
        let back = fs::read(disk.join("a.bin")).unwrap();
        assert_bytes_eq(&back, &expect, "published after the crash");
        let left: Vec<_> = fs::read_dir(spill.path().join("nfs-spill"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "spill files left: {left:?}");
    }
}

/// The spill cannot be written (its directory cannot be made): a write is
/// answered only once the server has it, so a crash right after the
/// answer loses nothing either.
#[tokio::test]
async fn without_a_spill_a_write_is_answered_once_the_server_has_it() {
    let server = ganesha();
    let (disk, url) = server.area("pipeline-no-spill");
    let not_a_dir = tempfile::NamedTempFile::new().unwrap();
    let opts = NfsOptions {
        spill_dir: Some(not_a_dir.path().join("nfs-spill")),
        ..NfsOptions::default()
    };
    let b = NfsBackend::connect(&Source::parse(&url).unwrap(), opts)
        .await
        .unwrap();
    let target = BackendPath::parse("n.bin").unwrap();
    let w = b
        .begin_write(Identity::new(0, 0), &target, WriteStart::Empty, 0o644)
        .await
        .unwrap();
    w.write_at(0, &pattern(40_960, 4)).await.unwrap();
    assert_eq!(
        temp_size(&disk, "n.bin"),
        40_960,
        "answered before the server had it"
    );
    w.abort(&target).await;
}

/// The size of the one temp file of `name` in `disk`.
fn temp_size(disk: &Path, name: &str) -> u64 {
    let prefix = format!(".{name}");
    let temps: Vec<u64> = fs::read_dir(disk)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.metadata().unwrap().len())
        .collect();
    assert_eq!(temps.len(), 1, "one temp file of {name}");
    temps[0]
}
