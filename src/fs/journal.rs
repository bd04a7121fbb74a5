//! What the kernel may depend on, as a log of events: every inode number
//! handed out with its name, every handle opened or released, every write
//! session begun or ended. The mounter writes it to its state dir (before
//! the reply that tells the kernel), so that after a crash of the mounter
//! a successor rebuilds a state that answers the kernel's node ids and
//! file handles (`replay`). Lookup counts are not logged (one event per
//! lookup would cost too much): a recovered inode is kept until unmount.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::backend::{is_temp_name, BackendPath, FileKind, Identity, VersionToken};

use super::snapshot::{FsSnapshot, HandleState, InodeState, WriteState, SNAPSHOT_VERSION};
use super::types::ROOT_INO;

/// Lookup count of an inode rebuilt from the journal: high enough that
/// the kernel's FORGETs never drop it while the kernel may still use it.
pub const NLOOKUP_PINNED: u64 = 1 << 40;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "e", rename_all = "snake_case")]
pub enum Event {
    /// `ino` has the name `parent/name` (new, renamed, or hidden); with
    /// `link`, as one more name besides those it has (a hard link).
    Attach {
        ino: u64,
        parent: u64,
        name: String,
        kind: FileKind,
        #[serde(default)]
        link: bool,
    },
    /// `ino` lost the name `at` (unlinked, replaced, renamed away); without
    /// `at` (journals of versions before hard links), its only name.
    Detach {
        ino: u64,
        #[serde(default)]
        at: Option<(u64, String)>,
    },
    /// `ino` is gone from the table.
    Drop {
        ino: u64,
    },
    Open {
        fh: u64,
        ino: u64,
        dir: bool,
        writable: bool,
        append: bool,
        opener: u32,
        identity: Identity,
    },
    Release {
        fh: u64,
    },
    WriteBegin {
        ino: u64,
        write: Box<WriteState>,
    },
    WriteEnd {
        ino: u64,
    },
}

/// Where events go (the mounter's journal file). Called with table locks
/// held: must not call back into the filesystem.
pub trait JournalSink: Send + Sync {
    fn record(&self, event: &Event);
}

/// A state from a base snapshot (or nothing: a fresh mount) and the events
/// logged after it. Damaged input (events about unknown inodes) is skipped,
/// never a panic; the restore checks the table's consistency.
pub fn replay(base: Option<FsSnapshot>, events: impl IntoIterator<Item = Event>) -> FsSnapshot {
    let base = base.unwrap_or_else(|| FsSnapshot {
        version: SNAPSHOT_VERSION,
        next_ino: ROOT_INO + 1,
        next_fh: 1,
        passthrough_active: false,
        inodes: Vec::new(),
        handles: Vec::new(),
    });
    let mut inodes: BTreeMap<u64, InodeState> =
        base.inodes.into_iter().map(|i| (i.ino, i)).collect();
    inodes
        .entry(ROOT_INO)
        .or_insert_with(|| blank(ROOT_INO, ROOT_INO, "", FileKind::Directory));
    let mut handles: BTreeMap<u64, HandleState> = base
        .handles
        .into_iter()
        .map(|h| (handle_fh(&h), h))
        .collect();
    let mut next_ino = base.next_ino;
    let mut next_fh = base.next_fh;
    for event in events {
        match event {
            Event::Attach {
                ino,
                parent,
                name,
                kind,
                link,
            } => {
                let inode = inodes
                    .entry(ino)
                    .or_insert_with(|| blank(ino, parent, &name, kind));
                if link && inode.attached {
                    inode.links.push((parent, name));
                } else {
                    // A hidden name keeps the file unlinked for users.
                    inode.unlinked = inode.unlinked && is_temp_name(&name);
                    inode.parent = parent;
                    inode.name = name;
                    inode.attached = true;
                }
                next_ino = next_ino.max(ino.saturating_add(1));
            }
            Event::Detach { ino, at } => {
                if let Some(i) = inodes.get_mut(&ino) {
                    let primary = at
                        .as_ref()
                        .is_none_or(|(p, n)| i.parent == *p && i.name == *n);
                    match (primary, at) {
                        (false, Some(name)) => i.links.retain(|l| *l != name),
                        _ => match i.links.pop() {
                            Some((p, n)) => (i.parent, i.name) = (p, n),
                            None => {
                                i.attached = false;
                                i.unlinked = true;
                            }
                        },
                    }
                }
            }
            Event::Drop { ino } => {
                inodes.remove(&ino);
            }
            Event::Open {
                fh,
                ino,
                dir,
                writable,
                append,
                opener,
                identity,
            } => {
                let state = if dir {
                    HandleState::Dir {
                        fh,
                        ino,
                        entries: Vec::new(),
                    }
                } else {
                    HandleState::File {
                        fh,
                        ino,
                        writable,
                        append,
                        opener,
                        passthrough: false,
                        closed_by_opener: false,
                        identity,
                        path: BackendPath::root(),
                        version: VersionToken(String::new()),
                        followed: None,
                        size: 0,
                    }
                };
                handles.insert(fh, state);
                next_fh = next_fh.max(fh + 1);
            }
            Event::Release { fh } => {
                handles.remove(&fh);
            }
            Event::WriteBegin { ino, write } => {
                if let Some(i) = inodes.get_mut(&ino) {
                    i.write = Some(*write);
                }
            }
            Event::WriteEnd { ino } => {
                if let Some(i) = inodes.get_mut(&ino) {
                    i.write = None;
                }
            }
        }
    }
    // Counters follow from the handles; every inode stays known.
    let mut opens: HashMap<u64, (u32, u32)> = HashMap::new();
    for h in handles.values() {
        if let HandleState::File { ino, writable, .. } = h {
            let e = opens.entry(*ino).or_default();
            e.0 += 1;
            e.1 += u32::from(*writable);
        }
    }
    for inode in inodes.values_mut() {
        let (open, writers) = opens.get(&inode.ino).copied().unwrap_or_default();
        inode.open_handles = open;
        inode.writers = writers;
        inode.closing = 0;
        inode.passthrough_opens = 0;
        inode.passthrough_version = None;
        inode.nlookup = NLOOKUP_PINNED;
    }
    // A file handle reads its inode's path (rebuilt now) at its next read.
    let paths: HashMap<u64, BackendPath> = inodes
        .keys()
        .filter_map(|ino| path_of(&inodes, *ino).map(|p| (*ino, p)))
        .collect();
    let handles = handles
        .into_values()
        .filter(|h| inodes.contains_key(&handle_ino(h)))
        .map(|mut h| {
            if let HandleState::File { ino, path, .. } = &mut h {
                if let Some(p) = paths.get(ino) {
                    *path = p.clone();
                }
            }
            h
        })
        .collect();
    FsSnapshot {
        version: SNAPSHOT_VERSION,
        next_ino,
        next_fh,
        passthrough_active: base.passthrough_active,
        inodes: inodes.into_values().collect(),
        handles,
    }
}

fn blank(ino: u64, parent: u64, name: &str, kind: FileKind) -> InodeState {
    InodeState {
        ino,
        parent,
        name: name.to_string(),
        kind,
        meta: None,
        nlookup: 0,
        writers: 0,
        open_handles: 0,
        closing: 0,
        passthrough_opens: 0,
        passthrough_version: None,
        last_open_version: None,
        unlinked: false,
        attached: true,
        hidden: false,
        superseded: false,
        write: None,
        links: Vec::new(),
    }
}

fn handle_fh(h: &HandleState) -> u64 {
    match h {
        HandleState::File { fh, .. } | HandleState::Dir { fh, .. } => *fh,
    }
}

fn handle_ino(h: &HandleState) -> u64 {
    match h {
        HandleState::File { ino, .. } | HandleState::Dir { ino, .. } => *ino,
    }
}

fn path_of(inodes: &BTreeMap<u64, InodeState>, ino: u64) -> Option<BackendPath> {
    let mut names = Vec::new();
    let mut at = ino;
    while at != ROOT_INO {
        let i = inodes.get(&at)?;
        names.push(i.name.as_str());
        at = i.parent;
        if names.len() > 4096 {
            return None;
        }
    }
    names.reverse();
    BackendPath::parse(&names.join("/")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attach(ino: u64, parent: u64, name: &str, kind: FileKind) -> Event {
        Event::Attach {
            ino,
            parent,
            name: name.into(),
            kind,
            link: false,
        }
    }

    #[test]
    fn replay_rebuilds_names_handles_and_counters() {
        let id = Identity::new(1, 2);
        let events = vec![
            attach(2, 1, "d", FileKind::Directory),
            attach(3, 2, "a", FileKind::File),
            attach(4, 2, "b", FileKind::File),
            Event::Open {
                fh: 7,
                ino: 3,
                dir: false,
                writable: true,
                append: false,
                opener: 9,
                identity: id,
            },
            Event::Open {
                fh: 8,
                ino: 2,
                dir: true,
                writable: false,
                append: false,
                opener: 9,
                identity: id,
            },
            Event::Detach { ino: 4, at: None },
            Event::Drop { ino: 4 },
            attach(3, 1, "moved", FileKind::File),
            Event::Open {
                fh: 9,
                ino: 3,
                dir: false,
                writable: false,
                append: false,
                opener: 9,
                identity: id,
            },
            Event::Release { fh: 9 },
        ];
        let snap = replay(None, events);
        assert_eq!(snap.next_ino, 5);
        assert_eq!(snap.next_fh, 10);
        let a = snap.inodes.iter().find(|i| i.ino == 3).unwrap();
        assert_eq!(
            (a.parent, a.name.as_str(), a.open_handles, a.writers),
            (1, "moved", 1, 1)
        );
        assert_eq!(a.nlookup, NLOOKUP_PINNED);
        assert!(snap.inodes.iter().all(|i| i.ino != 4));
        let paths: Vec<String> = snap
            .handles
            .iter()
            .filter_map(|h| match h {
                HandleState::File { path, .. } => Some(path.as_str().to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(paths, vec!["moved".to_string()]);
        assert_eq!(snap.handles.len(), 2);
    }

    #[test]
    fn events_about_unknown_inodes_are_skipped() {
        let snap = replay(
            None,
            vec![
                Event::Detach { ino: 99, at: None },
                Event::WriteEnd { ino: 42 },
                Event::Drop { ino: 1000 },
            ],
        );
        assert_eq!(snap.inodes.len(), 1, "only the root");
    }
}
