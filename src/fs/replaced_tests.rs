//! A read of a version gone from the backend (replaced behind the mount):
//! ESTALE at once, and the reopen finds the new version.

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use super::tests::{fixture, me, RO};
use super::*;

const ROOT: Caller = Caller {
    uid: 0,
    gid: 0,
    pid: 1,
};

/// A kernel whose entry invalidations wait until the test lets them go:
/// the kernel takes the directory's lock for one, which a `getdents`
/// waiting for a page lock of a READ being answered may hold.
struct StuckKernel {
    entries: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl KernelCache for StuckKernel {
    fn invalidate_inode(&self, _ino: u64) {}
    fn invalidate_entry(&self, _parent: u64, _name: &str) {
        let _ = self.entries.lock().unwrap().recv();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_a_version_gone_answers_without_waiting_for_the_kernel() {
    use std::io::Write;
    let f = fixture(false).await;
    let (release, entries) = std::sync::mpsc::channel();
    f.fs.set_kernel_cache(Arc::new(StuckKernel {
        entries: std::sync::Mutex::new(entries),
    }));
    fs::write(f.backing.join("f"), vec![b'o'; 64 << 10]).unwrap();
    let ino = f.fs.lookup(ROOT, ROOT_INO, "f").await.unwrap().ino;
    let o = f.fs.open(me(), ino, RO).await.unwrap();
    assert_eq!(f.fs.read(o.fh, 0, 4096).await.unwrap()[0], b'o');
    // Rewritten in place behind the mount: the version the descriptor read
    // is gone.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut w = fs::OpenOptions::new()
        .write(true)
        .open(f.backing.join("f"))
        .unwrap();
    w.write_all(&vec![b'n'; 64 << 10]).unwrap();
    drop(w);
    let read = tokio::time::timeout(Duration::from_secs(5), f.fs.read(o.fh, 60 << 10, 4096))
        .await
        .expect("the READ waited for the kernel's entry invalidation");
    assert_eq!(read.unwrap_err().errno(), libc::ESTALE);
    // The application's reopen may meet the old inode in the kernel's entry
    // cache: ESTALE makes the kernel look the name up again...
    let reopened = f.fs.open(me(), ino, RO).await;
    assert_eq!(reopened.err().map(|e| e.errno()), Some(libc::ESTALE));
    // ...and find a new inode with the new version.
    let fresh = f.fs.lookup(ROOT, ROOT_INO, "f").await.unwrap().ino;
    assert_ne!(fresh, ino);
    let o2 = f.fs.open(me(), fresh, RO).await.unwrap();
    assert_eq!(f.fs.read(o2.fh, 60 << 10, 4096).await.unwrap()[0], b'n');
    f.fs.release(o2.fh).await.unwrap();
    f.fs.release(o.fh).await.unwrap();
    let _ = release.send(());
}
