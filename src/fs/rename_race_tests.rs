//! Renames through the mount that other requests meet halfway, made
//! deterministic: a backend that stops a call after doing it, until the
//! test lets it go on. (`tests/fuse/rename_races.rs` shows the same races
//! under load, where they only happen sometimes.)

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::tests::{fixture, fixture_on, me, visible, Fixture, RO, RW};
use super::*;
use crate::backend::{
    AttrChanges, Backend, BackendPath, BackendResult, Capabilities, DirEntry, FsStats, Identity,
    Metadata, ObjectReader, PendingWrite, Resumed, SpecialFile, SuspendedWrite, WriteStart,
};

const ROOT: Caller = Caller {
    uid: 0,
    gid: 0,
    pid: 1,
};

/// A stop in a backend call, armed by a test for the next such call: the
/// call does its work, tells the test it got there, and waits until the
/// test lets it go on.
#[derive(Default)]
struct Stop {
    armed: parking_lot::Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
}

impl Stop {
    /// (reached, go): the next call signals `reached` once done with the
    /// backend and returns when `go` is sent (or dropped).
    fn arm(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (reached_tx, reached) = oneshot::channel();
        let (go, go_rx) = oneshot::channel();
        *self.armed.lock() = Some((reached_tx, go_rx));
        (reached, go)
    }

    async fn here(&self) {
        let armed = self.armed.lock().take();
        if let Some((reached, go)) = armed {
            let _ = reached.send(());
            let _ = go.await;
        }
    }
}

/// The local backend with stops after `stat`, `rename` and `list`.
struct Stopping {
    inner: Arc<dyn Backend>,
    after_stat: Arc<Stop>,
    after_rename: Arc<Stop>,
    after_list: Arc<Stop>,
}

#[async_trait]
impl Backend for Stopping {
    fn describe(&self) -> &str {
        self.inner.describe()
    }
    fn cache_identity(&self) -> &str {
        self.inner.cache_identity()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn stat(&self, id: Identity, path: &BackendPath) -> BackendResult<Metadata> {
        let found = self.inner.stat(id, path).await;
        self.after_stat.here().await;
        found
    }
    async fn list(&self, id: Identity, path: &BackendPath) -> BackendResult<Vec<DirEntry>> {
        let listed = self.inner.list(id, path).await;
        self.after_list.here().await;
        listed
    }
    async fn open_read(
        &self,
        id: Identity,
        path: &BackendPath,
    ) -> BackendResult<Box<dyn ObjectReader>> {
        self.inner.open_read(id, path).await
    }
    async fn begin_write(
        &self,
        id: Identity,
        path: &BackendPath,
        start: WriteStart,
        create_mode: u32,
    ) -> BackendResult<Box<dyn PendingWrite>> {
        self.inner.begin_write(id, path, start, create_mode).await
    }
    async fn mkdir(&self, id: Identity, path: &BackendPath, mode: u32) -> BackendResult<Metadata> {
        self.inner.mkdir(id, path, mode).await
    }
    async fn rmdir(&self, id: Identity, path: &BackendPath) -> BackendResult<()> {
        self.inner.rmdir(id, path).await
    }
    async fn unlink(&self, id: Identity, path: &BackendPath) -> BackendResult<()> {
        self.inner.unlink(id, path).await
    }
    async fn rename(
        &self,
        id: Identity,
        from: &BackendPath,
        to: &BackendPath,
        no_replace: bool,
    ) -> BackendResult<()> {
        let renamed = self.inner.rename(id, from, to, no_replace).await;
        self.after_rename.here().await;
        renamed
    }
    async fn symlink(
        &self,
        id: Identity,
        path: &BackendPath,
        target: &str,
    ) -> BackendResult<Metadata> {
        self.inner.symlink(id, path, target).await
    }
    async fn readlink(&self, id: Identity, path: &BackendPath) -> BackendResult<String> {
        self.inner.readlink(id, path).await
    }
    async fn link(
        &self,
        id: Identity,
        existing: &BackendPath,
        new: &BackendPath,
    ) -> BackendResult<Metadata> {
        self.inner.link(id, existing, new).await
    }
    async fn mknod(
        &self,
        id: Identity,
        path: &BackendPath,
        node: SpecialFile,
        mode: u32,
    ) -> BackendResult<Metadata> {
        self.inner.mknod(id, path, node, mode).await
    }
    async fn set_attr(
        &self,
        id: Identity,
        path: &BackendPath,
        changes: &AttrChanges,
    ) -> BackendResult<Metadata> {
        self.inner.set_attr(id, path, changes).await
    }
    async fn statfs(&self, id: Identity) -> BackendResult<FsStats> {
        self.inner.statfs(id).await
    }
    async fn sync(&self, id: Identity, path: &BackendPath) -> BackendResult<()> {
        self.inner.sync(id, path).await
    }
    async fn cleanup_stale_temps(&self) -> BackendResult<usize> {
        self.inner.cleanup_stale_temps().await
    }
    async fn resume_write(
        &self,
        id: Identity,
        target: &BackendPath,
        state: SuspendedWrite,
    ) -> BackendResult<Resumed> {
        self.inner.resume_write(id, target, state).await
    }
}

#[derive(Default, Clone)]
struct Stops {
    after_stat: Arc<Stop>,
    after_rename: Arc<Stop>,
    after_list: Arc<Stop>,
}

async fn stopping_fixture(metadata_ttl: Duration) -> (Fixture, Stops) {
    let stops = Stops::default();
    let s = stops.clone();
    let f = fixture_on(false, 4096, metadata_ttl, move |inner| {
        Arc::new(Stopping {
            inner,
            after_stat: s.after_stat,
            after_rename: s.after_rename,
            after_list: s.after_list,
        })
    })
    .await;
    (f, stops)
}

/// Old file `f` (8 KiB of 'o') and new file `g` (4 KiB of 'n').
fn old_and_new(f: &Fixture) {
    std::fs::write(f.backing.join("f"), vec![b'o'; 8192]).unwrap();
    std::fs::write(f.backing.join("g"), vec![b'n'; 4096]).unwrap();
}

async fn settled<T>(task: tokio::task::JoinHandle<T>, what: &str) -> T {
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish"))
        .unwrap()
}

/// A rename over an open file moves the objects in the backend first and
/// records the move after. A stat in between (every stat reaches the
/// backend here: TTL 0) sees the new version under the open file's name;
/// it must not take that for a change behind the mount and supersede the
/// open file: the inode the lookup then answered (the kernel's new dentry)
/// failed to open with ESTALE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stat_meeting_a_rename_halfway_leaves_the_replaced_open_file_readable() {
    let (f, stops) = stopping_fixture(Duration::ZERO).await;
    old_and_new(&f);
    let old = f.fs.lookup(ROOT, ROOT_INO, "f").await.unwrap().ino;
    f.fs.lookup(ROOT, ROOT_INO, "g").await.unwrap();
    // Opened, not read yet: its first read opens the object.
    let o = f.fs.open(me(), old, RO).await.unwrap();

    let (reached, go) = stops.after_rename.arm();
    let fs = Arc::clone(&f.fs);
    let rename =
        tokio::spawn(async move { fs.rename(ROOT, ROOT_INO, "g", ROOT_INO, "f", false).await });
    reached.await.unwrap();
    // Halfway: `g`'s object is named `f` in the backend, the table does
    // not know yet. A stat of the open file and a lookup of its name meet
    // that, then the open file's first read.
    let fs = Arc::clone(&f.fs);
    let stat = tokio::spawn(async move { fs.getattr(ROOT, old).await });
    let fs = Arc::clone(&f.fs);
    let lookup = tokio::spawn(async move { fs.lookup(ROOT, ROOT_INO, "f").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fs = Arc::clone(&f.fs);
    let read = tokio::spawn(async move { fs.read(o.fh, 0, 8192).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = go.send(());
    settled(rename, "the rename").await.unwrap();
    let stat = settled(stat, "the stat").await;
    let found = settled(lookup, "the lookup").await.unwrap();
    let read = settled(read, "the read").await;

    assert_eq!(
        read.map_err(|e| e.errno()),
        Ok(vec![b'o'; 8192].into()),
        "the replaced file's reader"
    );
    assert_eq!(
        stat.map(|a| a.size).ok(),
        Some(8192),
        "the open file's stat"
    );
    assert_ne!(found.ino, old, "the name leads to the renamed file");
    assert_eq!(found.size, 4096);
    // The kernel made a dentry of the lookup's answer: it must lead to the
    // renamed file.
    let new = f.fs.open(me(), found.ino, RO).await.map_err(|e| e.errno());
    let new = new.expect("open of the inode the lookup answered");
    assert_eq!(f.fs.read(new.fh, 0, 8192).await.unwrap(), vec![b'n'; 4096]);
    f.fs.release(new.fh).await.unwrap();
    let renamed = f.fs.lookup(ROOT, ROOT_INO, "f").await.unwrap().ino;
    assert_eq!(renamed, found.ino, "one inode for the renamed file");
    // The kernel still holds the replaced inode (its reader's dentry, a
    // /proc/<pid>/fd path): opening it again reads the old version too.
    let again = f.fs.open(me(), old, RO).await.map_err(|e| e.errno());
    let again = again.expect("reopen of the replaced file");
    assert_eq!(
        f.fs.read(again.fh, 0, 8192).await.unwrap(),
        vec![b'o'; 8192]
    );
    f.fs.release(again.fh).await.unwrap();
    f.fs.release(o.fh).await.unwrap();
}

/// A listing taken before a rename and applied after it: its entry for
/// the target name describes the replaced file. The renamed file, which
/// has that name now, must not be given those attributes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_taken_before_a_rename_does_not_describe_the_renamed_file() {
    let (f, stops) = stopping_fixture(Duration::from_secs(60)).await;
    old_and_new(&f);
    f.fs.lookup(ROOT, ROOT_INO, "f").await.unwrap();
    let new = f.fs.lookup(ROOT, ROOT_INO, "g").await.unwrap().ino;

    let (reached, go) = stops.after_list.arm();
    let fs = Arc::clone(&f.fs);
    let listing = tokio::spawn(async move { fs.opendir(ROOT, ROOT_INO).await });
    reached.await.unwrap();
    f.fs.rename(ROOT, ROOT_INO, "g", ROOT_INO, "f", false)
        .await
        .unwrap();
    let _ = go.send(());
    let opened = settled(listing, "the listing").await.unwrap();
    f.fs.releasedir(opened.fh);

    let found = f.fs.lookup(ROOT, ROOT_INO, "f").await.unwrap();
    assert_eq!((found.ino, found.size), (new, 4096), "lookup of the name");
    let attr = f.fs.getattr(ROOT, new).await.unwrap();
    assert_eq!(attr.size, 4096, "stat of the renamed file");
}

/// The same for a lookup asked before the rename and answered after: the
/// backend's answer describes the replaced file; the renamed file, which
/// has the name now, keeps its own attributes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_asked_before_a_rename_does_not_describe_the_renamed_file() {
    let (f, stops) = stopping_fixture(Duration::from_secs(60)).await;
    old_and_new(&f);
    let new = f.fs.lookup(ROOT, ROOT_INO, "g").await.unwrap().ino;

    let (reached, go) = stops.after_stat.arm();
    let fs = Arc::clone(&f.fs);
    let lookup = tokio::spawn(async move { fs.lookup(ROOT, ROOT_INO, "f").await });
    reached.await.unwrap();
    f.fs.rename(ROOT, ROOT_INO, "g", ROOT_INO, "f", false)
        .await
        .unwrap();
    let _ = go.send(());
    settled(lookup, "the lookup").await.unwrap();

    let found = f.fs.lookup(ROOT, ROOT_INO, "f").await.unwrap();
    assert_eq!((found.ino, found.size), (new, 4096), "lookup of the name");
    let attr = f.fs.getattr(ROOT, new).await.unwrap();
    assert_eq!(attr.size, 4096, "stat of the renamed file");
}

/// Found by the long model run: a new file renamed over an open one (kept
/// under a hidden name by a link, so the old object stays under the name
/// until the new file publishes), then its directory renamed, then the new
/// file unlinked: the object under its name must go, not linger because the
/// replaced object was remembered by its path before the directory moved.
#[tokio::test]
async fn unlink_of_a_new_file_renamed_over_an_open_one_after_its_directory_moved() {
    let f = fixture(false).await;
    let d = f.fs.mkdir(ROOT, ROOT_INO, "d", 0o755).await.unwrap();
    std::fs::write(f.backing.join("d/old"), b"old").unwrap();
    let old = f.fs.lookup(ROOT, d.ino, "old").await.unwrap().ino;
    let reader = f.fs.open(me(), old, RO).await.unwrap();
    let (_, writer) =
        f.fs.create(me(), d.ino, "new", 0o644, true, RW)
            .await
            .unwrap();
    f.fs.write(ROOT, writer.fh, 0, b"new").await.unwrap();
    f.fs.rename(ROOT, d.ino, "new", d.ino, "old", false)
        .await
        .unwrap();
    f.fs.rename(ROOT, ROOT_INO, "d", ROOT_INO, "e", false)
        .await
        .unwrap();
    f.fs.unlink(ROOT, d.ino, "old").await.unwrap();
    let left = visible(&f.backing.join("e"));
    assert!(
        !left.contains(&"old".to_string()),
        "the unlinked name lingers in the backend: {left:?}"
    );
    assert_eq!(
        f.fs.read(reader.fh, 0, 10).await.unwrap(),
        b"old".as_slice()
    );
    f.fs.release(reader.fh).await.unwrap();
    f.fs.flush(me(), writer.fh).await.unwrap();
    f.fs.release(writer.fh).await.unwrap();
    // The replaced file is kept until the kernel forgets it (its lookup
    // above), as after a rename over it on a local disk.
    assert!(f.fs.forget(old, 1), "the kept file is left to remove");
    f.fs.remove_forgotten(old).await;
    assert!(
        visible(&f.backing.join("e")).is_empty(),
        "{:?}",
        visible(&f.backing.join("e"))
    );
}
