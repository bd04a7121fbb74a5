//! The names of inodes: attaching, taking off, hiding and moving them. An
//! inode has one name its path is built from and any number of other
//! links (hard links); the children map knows every name.

use std::time::Instant;

use crate::backend::FileKind;

use super::{Event, Inode, InodeTable};

impl InodeTable {
    /// Give `ino` the name `parent/name`: its first (paths are built from
    /// it), or one more link to it.
    pub(super) fn attach(&mut self, parent: u64, name: &str, ino: u64) {
        self.moves += 1;
        self.listings.changed(parent);
        self.children.insert(parent, name, ino);
        if let Some(p) = self.inodes.get_mut(&parent) {
            p.children += 1;
        }
        // Its mtime/ctime changed (or a listing just found a name): our
        // own changes show at once, the TTL is for others'.
        self.expire(parent);
        if let Some(inode) = self.inodes.get_mut(&ino) {
            let link = inode.attached && !inode.is_named(parent, name);
            if link {
                inode.links.push((parent, name.to_string()));
            } else {
                inode.parent = parent;
                inode.name = name.to_string();
                inode.attached = true;
            }
            let kind = inode.kind;
            self.log(Event::Attach {
                ino,
                parent,
                name: name.to_string(),
                kind,
                link,
            });
        }
    }

    /// Take the name `parent/name` off its inode (without dropping
    /// anything): another of its links becomes the name its path is built
    /// from; with none left it is no longer attached (and keeps its last
    /// parent and name for where its objects are and for diagnostics).
    pub(super) fn take_name(&mut self, parent: u64, name: &str) -> Option<u64> {
        let ino = self.children.remove(parent, name)?;
        self.moves += 1;
        self.listings.changed(parent);
        self.log(Event::Detach {
            ino,
            at: Some((parent, name.to_string())),
        });
        if let Some(p) = self.inodes.get_mut(&parent) {
            p.children = p.children.saturating_sub(1);
        }
        self.expire(parent);
        if let Some(inode) = self.inodes.get_mut(&ino) {
            if inode.is_named(parent, name) {
                match inode.links.pop() {
                    Some((p, n)) => (inode.parent, inode.name) = (p, n),
                    None => inode.attached = false,
                }
            } else {
                inode.links.retain(|(p, n)| !(*p == parent && n == name));
            }
        }
        // Its link count and ctime changed.
        self.expire(ino);
        Some(ino)
    }

    /// Our own change made `ino`'s metadata stale: it is fetched again,
    /// and no kept listing of a directory naming it replays the old one.
    pub fn expire(&mut self, ino: u64) {
        let Some(inode) = self.inodes.get_mut(&ino) else {
            return;
        };
        inode.expire_meta();
        self.relist_dirs_naming(ino);
    }

    /// What the backend lists under `ino`'s names changed (its object was
    /// published, a new file's for the first time): no kept listing of
    /// them is replayed.
    pub fn relist_dirs_naming(&mut self, ino: u64) {
        let Some(inode) = self.inodes.get(&ino) else {
            return;
        };
        let mut dirs: Vec<u64> = inode.links.iter().map(|(p, _)| *p).collect();
        if inode.attached {
            dirs.push(inode.parent);
        }
        for dir in dirs {
            self.listings.changed(dir);
        }
    }

    /// The inode named `parent/name` if what it knows was recorded at
    /// `at` or later: a listing from `at` has nothing to tell it.
    pub fn known_since(&self, parent: u64, name: &str, at: Instant) -> Option<(u64, &Inode)> {
        let ino = self.children.get(parent, name)?;
        let inode = self.inodes.get(&ino)?;
        let fetched = inode
            .meta
            .as_ref()
            .is_some_and(|(_, fetched)| *fetched >= at);
        let renamed = inode.named_at.is_some_and(|named| named >= at);
        (fetched || renamed).then_some((ino, inode))
    }

    /// `take_name`, then drop the directory if nothing holds it any more.
    pub(super) fn unattach(&mut self, parent: u64, name: &str) -> Option<u64> {
        let ino = self.take_name(parent, name)?;
        self.maybe_drop(parent);
        Some(ino)
    }

    /// Remove `parent/name` from the namespace. The inode lives on while
    /// it has other names, the kernel references it or handles are open;
    /// returns it.
    pub fn detach(&mut self, parent: u64, name: &str) -> Option<u64> {
        let ino = self.unattach(parent, name)?;
        if let Some(inode) = self.inodes.get_mut(&ino) {
            if !inode.attached {
                inode.unlinked = true;
            }
            // The object has one link less: known at once, also while a
            // write in progress keeps it from being fetched.
            if inode.kind != FileKind::Directory {
                if let Some((meta, _)) = &mut inode.meta {
                    meta.nlink = meta.nlink.saturating_sub(1);
                }
            }
        }
        self.maybe_drop(ino);
        Some(ino)
    }

    /// Keep an open file's backend object under a hidden name in the same
    /// directory: unlinked for users, still readable for its handles.
    pub fn hide(&mut self, ino: u64, hidden_name: &str) {
        let Some((parent, name)) = self.inodes.get(&ino).map(|i| (i.parent, i.name.clone())) else {
            return;
        };
        self.unattach(parent, &name);
        self.attach(parent, hidden_name, ino);
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.unlinked = true;
            inode.hidden = true;
        }
    }

    /// Hidden inodes (unlinked open files) whose object lives in `dir`.
    pub fn hidden_children(&self, dir: u64) -> Vec<(String, u64)> {
        self.children
            .of(dir)
            .filter(|(_, ino)| self.inodes.get(ino).is_some_and(|i| i.hidden))
            .map(|(name, ino)| (name.to_string(), ino))
            .collect()
    }

    /// Move a hidden inode's entry to another directory (after the backend
    /// moved its object).
    pub fn move_hidden(&mut self, ino: u64, new_parent: u64) {
        let Some((parent, name)) = self.inodes.get(&ino).map(|i| (i.parent, i.name.clone())) else {
            return;
        };
        self.unattach(parent, &name);
        self.attach(new_parent, &name, ino);
    }

    /// Move an inode to a new name (after the backend renamed it). Whatever
    /// was at the target is detached first.
    pub fn rename(&mut self, parent: u64, name: &str, new_parent: u64, new_name: &str) {
        let Some(ino) = self.child(parent, name) else {
            return;
        };
        if self.child(new_parent, new_name) == Some(ino) {
            return;
        }
        // Neither the moving inode nor the directory it leaves may be
        // dropped in between.
        let first = self
            .inodes
            .get(&ino)
            .is_some_and(|i| i.is_named(parent, name));
        self.detach(new_parent, new_name);
        self.take_name(parent, name);
        self.attach(new_parent, new_name, ino);
        if let Some(inode) = self.inodes.get_mut(&ino).filter(|_| first) {
            // The first name stays first under its new name (a write's
            // temporary object is next to it and moved along).
            let new = (new_parent, new_name.to_string());
            if let Some(at) = inode.links.iter().position(|l| *l == new) {
                let old_first = (inode.parent, std::mem::take(&mut inode.name));
                inode.links[at] = old_first;
                (inode.parent, inode.name) = new;
            }
        }
        self.expire(ino); // ctime changed; refetch
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.named_at = Some(Instant::now());
        }
        self.maybe_drop(parent);
    }
}
