//! The table as data for a successor process (`snapshot`), and back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::{Inode, InodeTable};
use crate::fs::snapshot::InodeState;
use crate::fs::types::ROOT_INO;
use crate::fs::write::WriteSession;

impl InodeTable {
    /// Every inode as data, and the next inode number (see `snapshot`).
    /// Write sessions are exported separately (that needs the backend).
    pub fn export(&self) -> (Vec<InodeState>, u64) {
        let inodes = self
            .inodes
            .iter()
            .map(|(ino, i)| InodeState {
                ino: *ino,
                parent: i.parent,
                name: i.name.clone(),
                kind: i.kind,
                meta: i.meta.as_ref().map(|(m, _)| m.clone()),
                nlookup: i.nlookup,
                writers: i.writers,
                open_handles: i.open_handles,
                closing: i.closing,
                passthrough_opens: i.passthrough_opens,
                passthrough_version: i.passthrough_version.clone(),
                last_open_version: i.last_open_version.clone(),
                unlinked: i.unlinked,
                attached: i.attached,
                hidden: i.hidden,
                superseded: i.superseded,
                write: None,
                links: i.links.clone(),
            })
            .collect();
        (inodes, self.next_ino)
    }

    /// A table from exported inodes (their write sessions resumed by the
    /// caller). Metadata counts as expired: it is fetched again at first
    /// use. Inconsistent input (no root, a child of an unknown directory,
    /// two inodes under one name) is an error, never a panic.
    pub fn restore(
        states: Vec<(InodeState, Option<Arc<WriteSession>>)>,
        next_ino: u64,
    ) -> Result<InodeTable, String> {
        let long_ago = Instant::now()
            .checked_sub(std::time::Duration::from_secs(365 * 86400))
            .unwrap_or_else(Instant::now);
        let mut table = InodeTable {
            inodes: HashMap::default(),
            children: Default::default(),
            by_object: HashMap::new(),
            next_ino,
            split: Vec::new(),
            moves: 0,
            journal: None,
            listings: Default::default(),
        };
        let mut attached = Vec::new();
        for (s, write) in states {
            if s.ino == 0 {
                return Err("inode number 0".into());
            }
            let mut inode = Inode::new(s.parent, &s.name, s.kind, s.meta.map(|m| (m, long_ago)));
            inode.write = write;
            inode.nlookup = s.nlookup;
            inode.writers = s.writers;
            inode.open_handles = s.open_handles;
            inode.kernel_opens = s.open_handles;
            inode.closing = s.closing;
            inode.passthrough_opens = s.passthrough_opens;
            inode.passthrough_version = s.passthrough_version;
            inode.last_open_version = s.last_open_version;
            inode.unlinked = s.unlinked;
            inode.hidden = s.hidden;
            inode.superseded = s.superseded;
            inode.attached = false;
            if s.attached && s.ino != ROOT_INO {
                // The name paths are built from goes first.
                attached.push((s.parent, s.name.clone(), s.ino));
                attached.extend(s.links.iter().map(|(p, n)| (*p, n.clone(), s.ino)));
            }
            if table.inodes.insert(s.ino, inode).is_some() {
                return Err(format!("inode {} twice", s.ino));
            }
        }
        match table.inodes.get_mut(&ROOT_INO) {
            Some(root) => root.attached = true,
            None => return Err("no root inode".into()),
        }
        for (parent, name, ino) in attached {
            if !table.inodes.contains_key(&parent) {
                return Err(format!("inode {ino} in unknown directory {parent}"));
            }
            if table.children.contains(parent, &name) {
                return Err(format!("two inodes named {name:?} in directory {parent}"));
            }
            table.attach(parent, &name, ino);
        }
        let objects: Vec<(u64, u64)> = table
            .inodes
            .iter()
            .filter(|(_, i)| i.attached)
            .filter_map(|(ino, i)| i.object_id().map(|id| (id, *ino)))
            .collect();
        table.by_object.extend(objects);
        Ok(table)
    }
}
