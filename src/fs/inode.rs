//! The inode table: stable inode numbers for paths, for the life of a mount.
//!
//! Inodes are stored as (parent, name) so renaming a directory moves its
//! whole subtree in O(1); a path is rebuilt by walking up to the root.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::backend::{BackendPath, FileKind, Metadata, VersionToken};

use super::types::{FsError, FsResult, ROOT_INO};
use super::write::WriteSession;

pub struct Inode {
    pub parent: u64,
    pub name: String,
    pub kind: FileKind,
    /// Last metadata from the backend and when it was fetched.
    pub meta: Option<(Metadata, Instant)>,
    /// Open write session (temporary object) for this file, if any.
    pub write: Option<Arc<WriteSession>>,
    /// Open handles that may publish (writable, or the creating handle).
    pub writers: u32,
    /// Open handles of any kind.
    pub open_handles: u32,
    /// Open handles served by FUSE passthrough: while there are any, every
    /// open of this inode must be passthrough too (a kernel rule).
    pub passthrough_opens: u32,
    /// Version seen at the previous open: if unchanged, the kernel may keep
    /// its page cache (FOPEN_KEEP_CACHE).
    pub last_open_version: Option<VersionToken>,
    /// Removed from the namespace while still open.
    pub unlinked: bool,
}

pub struct InodeTable {
    inodes: HashMap<u64, Inode>,
    children: HashMap<(u64, String), u64>,
    next_ino: u64,
}

impl InodeTable {
    pub fn new(root_meta: Metadata) -> InodeTable {
        let mut inodes = HashMap::new();
        inodes.insert(
            ROOT_INO,
            Inode {
                parent: ROOT_INO,
                name: String::new(),
                kind: FileKind::Directory,
                meta: Some((root_meta, Instant::now())),
                write: None,
                writers: 0,
                open_handles: 0,
                passthrough_opens: 0,
                last_open_version: None,
                unlinked: false,
            },
        );
        InodeTable {
            inodes,
            children: HashMap::new(),
            next_ino: ROOT_INO + 1,
        }
    }

    pub fn get(&self, ino: u64) -> FsResult<&Inode> {
        self.inodes.get(&ino).ok_or(FsError(libc::ENOENT))
    }

    pub fn get_mut(&mut self, ino: u64) -> FsResult<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(FsError(libc::ENOENT))
    }

    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        self.children.get(&(parent, name.to_string())).copied()
    }

    /// Backend path of an inode. Names were validated on insert, so parsing
    /// cannot fail for a live inode.
    pub fn path_of(&self, ino: u64) -> FsResult<BackendPath> {
        let mut names = Vec::new();
        let mut at = ino;
        while at != ROOT_INO {
            let inode = self.get(at)?;
            if inode.unlinked {
                return Err(FsError(libc::ENOENT));
            }
            names.push(inode.name.as_str());
            at = inode.parent;
            if names.len() > 4096 {
                return Err(FsError(libc::ELOOP));
            }
        }
        names.reverse();
        BackendPath::parse(&names.join("/")).map_err(|_| FsError(libc::EIO))
    }

    /// The inode for `parent/name`, created if new, with fresh metadata. A
    /// name whose kind changed (file replaced by a directory) gets a new
    /// inode so the kernel never sees an inode change type.
    pub fn upsert(&mut self, parent: u64, name: &str, meta: Metadata) -> u64 {
        if let Some(ino) = self.child(parent, name) {
            if let Some(inode) = self.inodes.get_mut(&ino) {
                if inode.kind == meta.kind {
                    inode.meta = Some((meta, Instant::now()));
                    return ino;
                }
            }
            self.detach(parent, name);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(
            ino,
            Inode {
                parent,
                name: name.to_string(),
                kind: meta.kind,
                meta: Some((meta, Instant::now())),
                write: None,
                writers: 0,
                open_handles: 0,
                passthrough_opens: 0,
                last_open_version: None,
                unlinked: false,
            },
        );
        self.children.insert((parent, name.to_string()), ino);
        ino
    }

    /// Remove `parent/name` from the namespace. The inode itself lives on
    /// while handles are open; returns it.
    pub fn detach(&mut self, parent: u64, name: &str) -> Option<u64> {
        let ino = self.children.remove(&(parent, name.to_string()))?;
        let drop_now = match self.inodes.get_mut(&ino) {
            Some(inode) => {
                inode.unlinked = true;
                inode.open_handles == 0
            }
            None => false,
        };
        if drop_now {
            self.inodes.remove(&ino);
        }
        Some(ino)
    }

    /// Forget an unlinked inode once its last handle closed.
    pub fn reap(&mut self, ino: u64) {
        if self
            .inodes
            .get(&ino)
            .is_some_and(|i| i.unlinked && i.open_handles == 0)
        {
            self.inodes.remove(&ino);
        }
    }

    /// Move an inode to a new name (after the backend renamed it). Whatever
    /// was at the target is detached first.
    pub fn rename(&mut self, parent: u64, name: &str, new_parent: u64, new_name: &str) {
        if let Some(ino) = self.children.remove(&(parent, name.to_string())) {
            self.detach(new_parent, new_name);
            if let Some(inode) = self.inodes.get_mut(&ino) {
                inode.parent = new_parent;
                inode.name = new_name.to_string();
                inode.meta = None; // ctime changed; refetch
            }
            self.children
                .insert((new_parent, new_name.to_string()), ino);
        }
    }

    /// Children known to exist only locally (files being created): listings
    /// must show them although the backend does not have them yet.
    pub fn pending_children(&self, parent: u64) -> Vec<(String, u64)> {
        self.children
            .iter()
            .filter(|((p, _), _)| *p == parent)
            .filter(|(_, ino)| {
                self.inodes
                    .get(ino)
                    .and_then(|i| i.write.as_ref())
                    .is_some_and(|w| w.is_new())
            })
            .map(|((_, name), ino)| (name.clone(), *ino))
            .collect()
    }
}
