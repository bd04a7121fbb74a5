//! The state handed to a successor (snapshot, restore) and the journal
//! that rebuilds it after a crash, against the live filesystem.

use std::collections::BTreeSet;
use std::sync::Arc;

use parking_lot::Mutex;

use super::journal::{replay, Event, JournalSink};
use super::snapshot::HandleState;
use super::tests::{fixture, me, RW};
use super::*;

/// Events as the file journal stores them (JSON lines).
#[derive(Default)]
struct MemoryJournal(Mutex<Vec<String>>);

impl JournalSink for MemoryJournal {
    fn record(&self, event: &Event) {
        self.0.lock().push(serde_json::to_string(event).unwrap());
    }
}

impl MemoryJournal {
    fn events(&self) -> Vec<Event> {
        self.0
            .lock()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// (ino, parent, name) of every attached inode; (fh, ino) of every handle.
type KernelView = (BTreeSet<(u64, u64, String)>, BTreeSet<(u64, u64)>);

/// Attached names and open handles of a state: what the kernel knows.
fn kernel_view(s: &snapshot::FsSnapshot) -> KernelView {
    let names = s
        .inodes
        .iter()
        .filter(|i| i.attached && i.ino != ROOT_INO)
        .flat_map(|i| {
            let first = std::iter::once((i.ino, i.parent, i.name.clone()));
            first.chain(i.links.iter().map(|(p, n)| (i.ino, *p, n.clone())))
        })
        .collect();
    let handles = s
        .handles
        .iter()
        .map(|h| match h {
            HandleState::File { fh, ino, .. } | HandleState::Dir { fh, ino, .. } => (*fh, *ino),
        })
        .collect();
    (names, handles)
}

#[tokio::test]
async fn the_journal_replays_to_what_the_kernel_knows() {
    let f = fixture(false).await;
    let journal = Arc::new(MemoryJournal::default());
    f.fs.set_journal(journal.clone());
    let d = f.fs.mkdir(me(), ROOT_INO, "d", 0o755).await.unwrap();
    let (_, open_a) =
        f.fs.create(me(), d.ino, "a", 0o644, true, RW)
            .await
            .unwrap();
    f.fs.write(me(), open_a.fh, 0, b"kept open").await.unwrap();
    let (_, b) =
        f.fs.create(me(), ROOT_INO, "b", 0o644, true, RW)
            .await
            .unwrap();
    f.fs.write(me(), b.fh, 0, b"closed").await.unwrap();
    f.fs.flush(me(), b.fh).await.unwrap();
    f.fs.release(b.fh).await.unwrap();
    f.fs.rename(me(), ROOT_INO, "b", d.ino, "c", false)
        .await
        .unwrap();
    let dir_fh = f.fs.opendir(me(), d.ino).await.unwrap().fh;
    let (_, gone) =
        f.fs.create(me(), ROOT_INO, "gone", 0o644, true, RW)
            .await
            .unwrap();
    f.fs.flush(me(), gone.fh).await.unwrap();
    f.fs.release(gone.fh).await.unwrap();
    f.fs.unlink(me(), ROOT_INO, "gone").await.unwrap();
    // Hard links: three names of one inode, the first one removed.
    let c = f.fs.lookup(me(), d.ino, "c").await.unwrap();
    f.fs.link(me(), c.ino, ROOT_INO, "c2").await.unwrap();
    f.fs.link(me(), c.ino, d.ino, "c3").await.unwrap();
    f.fs.unlink(me(), d.ino, "c").await.unwrap();

    let replayed = replay(None, journal.events());
    let live = f.fs.journal_base();
    assert_eq!(kernel_view(&replayed), kernel_view(&live));
    let a = replayed.inodes.iter().find(|i| i.name == "a").unwrap();
    assert!(a.write.is_some(), "the open writer's session is journaled");
    assert!(replayed
        .handles
        .iter()
        .any(|h| matches!(h, HandleState::Dir { fh, .. } if *fh == dir_fh)));
}

#[tokio::test]
async fn a_restored_filesystem_goes_on_with_the_same_inodes_handles_and_writes() {
    let f = fixture(false).await;
    let d = f.fs.mkdir(me(), ROOT_INO, "d", 0o755).await.unwrap();
    let (a, open_a) =
        f.fs.create(me(), d.ino, "a", 0o644, true, RW)
            .await
            .unwrap();
    f.fs.write(me(), open_a.fh, 0, b"first half, ")
        .await
        .unwrap();
    let (l, open_l) =
        f.fs.create(me(), d.ino, "l1", 0o644, true, RW)
            .await
            .unwrap();
    f.fs.release(open_l.fh).await.unwrap();
    f.fs.link(me(), l.ino, ROOT_INO, "l2").await.unwrap();
    let snapshot = f.fs.snapshot().await.unwrap();
    // Through JSON, as it travels to the successor.
    let snapshot: snapshot::FsSnapshot =
        serde_json::from_str(&serde_json::to_string(&snapshot).unwrap()).unwrap();
    let backend: Arc<dyn crate::backend::Backend> =
        Arc::new(crate::backend::local::LocalBackend::new(
            f.backing.clone(),
            crate::backend::local::IdentityMode::Caller,
        ));
    let restored =
        CachalotFs::restore(backend, Arc::clone(&f.fs.cache), f.fs.cfg.clone(), snapshot)
            .await
            .unwrap();
    assert_eq!(
        restored.lookup(me(), ROOT_INO, "d").await.unwrap().ino,
        d.ino
    );
    assert_eq!(restored.lookup(me(), d.ino, "a").await.unwrap().ino, a.ino);
    // Both names of a hard-linked file still lead to one inode.
    assert_eq!(
        restored.lookup(me(), ROOT_INO, "l2").await.unwrap().ino,
        l.ino
    );
    assert_eq!(restored.lookup(me(), d.ino, "l1").await.unwrap().ino, l.ino);
    restored
        .write(me(), open_a.fh, 12, b"second half")
        .await
        .unwrap();
    assert!(
        !f.backing.join("d/a").exists(),
        "nothing published before the close"
    );
    restored.flush(me(), open_a.fh).await.unwrap();
    restored.release(open_a.fh).await.unwrap();
    assert_eq!(
        std::fs::read(f.backing.join("d/a")).unwrap(),
        b"first half, second half"
    );
    // New inode numbers differ, handles continue after the old ones.
    let (b, open_b) = restored
        .create(me(), ROOT_INO, "b", 0o644, true, RW)
        .await
        .unwrap();
    assert!(b.ino != a.ino && open_b.fh > open_a.fh);
}

#[tokio::test]
async fn a_damaged_state_is_refused_not_served() {
    let f = fixture(false).await;
    let mut snapshot = f.fs.snapshot().await.unwrap();
    snapshot.inodes.retain(|i| i.ino != ROOT_INO);
    let backend: Arc<dyn crate::backend::Backend> =
        Arc::new(crate::backend::local::LocalBackend::new(
            f.backing.clone(),
            crate::backend::local::IdentityMode::Caller,
        ));
    let e = CachalotFs::restore(backend, Arc::clone(&f.fs.cache), f.fs.cfg.clone(), snapshot)
        .await
        .err()
        .expect("a state without a root is refused");
    assert!(e.to_string().contains("root"), "{e}");
}
