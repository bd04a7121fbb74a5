//! nfs-ganesha killed (SIGKILL) and restarted in the middle of a sequential
//! read and of a write through a real mount: reads complete with correct
//! data; a write publishes the whole file or fails, never a partial file
//! under the final name. These tests restart the shared server, so they run
//! one at a time.

mod common;
mod support_nfs;

use std::fs;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support_nfs::mount::mount;
use support_nfs::{ganesha, PreparedRestart};

static SERIAL: Mutex<()> = Mutex::new(());
const MIB: usize = 1 << 20;
const SIZE: usize = 64 * MIB;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            ((i / 7) as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed as u32)
                .to_le_bytes()[1]
        })
        .collect()
}

/// Wait until `progress` reaches `at`, then kill the server (SIGKILL), keep
/// it down for a second, and start it again. The restart is prepared before
/// the application opens its file (see `prepare_restart`).
fn bounce_server_at(restart: PreparedRestart, progress: &AtomicUsize, at: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while progress.load(Ordering::Acquire) < at {
        assert!(
            Instant::now() < deadline,
            "no progress before the restart point"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    restart.kill_and_restart(Duration::from_secs(1));
}

#[test]
fn a_sequential_read_survives_a_server_restart() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = ganesha();
    let (disk, url) = server.area("restart-read");
    let data = pattern(SIZE, 1);
    fs::write(disk.join("data.bin"), &data).unwrap();
    let m = mount(&url, &[]).unwrap_or_else(|f| panic!("{f:?}"));
    let restart = server.prepare_restart();
    let progress = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (path, progress) = (m.path("data.bin"), Arc::clone(&progress));
        std::thread::spawn(move || {
            let mut f = fs::File::open(path)?;
            let mut out = Vec::with_capacity(SIZE);
            let mut buf = vec![0u8; MIB];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
                progress.store(out.len(), Ordering::Release);
                std::thread::sleep(Duration::from_millis(3));
            }
            Ok::<_, std::io::Error>(out)
        })
    };
    bounce_server_at(restart, &progress, 16 * MIB);
    let read = reader
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("read failed: {e}\n{}", m.stderr()));
    assert_eq!(read.len(), SIZE);
    assert!(read == data, "data read across the restart differs");
    assert!(
        m.stderr().contains("retrying"),
        "the restart was not noticed:\n{}",
        m.stderr()
    );
}

#[test]
fn a_write_during_a_server_restart_publishes_all_or_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = ganesha();
    let (disk, url) = server.area("restart-write");
    let data = Arc::new(pattern(SIZE, 2));
    let m = mount(&url, &[]).unwrap_or_else(|f| panic!("{f:?}"));
    let restart = server.prepare_restart();
    let progress = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (path, progress, data) = (m.path("out.bin"), Arc::clone(&progress), Arc::clone(&data));
        std::thread::spawn(move || {
            let mut f = fs::File::create(path)?;
            for (i, chunk) in data.chunks(MIB).enumerate() {
                f.write_all(chunk)?;
                progress.store((i + 1) * MIB, Ordering::Release);
                std::thread::sleep(Duration::from_millis(3));
            }
            f.sync_all()?;
            drop(f);
            Ok::<_, std::io::Error>(())
        })
    };
    bounce_server_at(restart, &progress, 16 * MIB);
    let result = writer.join().unwrap();
    let on_disk = fs::read(disk.join("out.bin")).ok();
    match &result {
        Ok(()) => {
            let on_disk = on_disk.expect("write succeeded but nothing was published");
            assert_eq!(on_disk.len(), SIZE);
            assert!(
                on_disk == *data,
                "published file differs from what was written"
            );
        }
        Err(e) => {
            assert!(
                on_disk.is_none(),
                "write failed ({e}) but a file was published"
            );
        }
    }
    // The outcome we designed for: the unstable writes lost with the old
    // server instance are re-sent, and the write succeeds.
    assert!(
        result.is_ok(),
        "write failed: {result:?}\n{}\nserver log:\n{}\nserver running: {}",
        m.stderr(),
        server.log_tail(),
        server.is_running()
    );
    assert!(
        m.stderr().contains("write verifier changed"),
        "{}",
        m.stderr()
    );
    let leftovers: Vec<_> = fs::read_dir(&disk)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "temp files left behind: {leftovers:?}");
}
