//! Directory handles: a listing is snapshotted at opendir so that offsets
//! stay valid while the directory changes.

use std::sync::Arc;

use crate::backend::Metadata;

use super::types::{Caller, FsResult, ListedEntry};
use super::{CachalotFs, Handle};

pub struct DirHandle {
    pub ino: u64,
    pub entries: Vec<ListedEntry>,
}

impl CachalotFs {
    pub async fn opendir(&self, caller: Caller, ino: u64) -> FsResult<u64> {
        let path = self.path_of(ino)?;
        let listed = self.backend.list(self.identity(caller), &path).await?;
        let self_attr = self.getattr(caller, ino).await?;
        let parent_ino = self.inodes.lock().get(ino)?.parent;
        let parent_attr = match self.getattr(caller, parent_ino).await {
            Ok(a) => a,
            Err(_) => self_attr.clone(),
        };
        let mut entries = vec![
            ListedEntry {
                name: ".".into(),
                attr: self_attr,
            },
            ListedEntry {
                name: "..".into(),
                attr: parent_attr,
            },
        ];
        {
            let mut table = self.inodes.lock();
            let mut seen = std::collections::HashSet::new();
            for entry in listed {
                let child = table.upsert(ino, &entry.name, entry.meta.clone());
                // A file being rewritten reports its in-progress attributes.
                let meta: Metadata = table
                    .get(child)
                    .ok()
                    .and_then(|i| i.write.as_ref().map(|w| w.attributes()))
                    .unwrap_or(entry.meta);
                seen.insert(entry.name.clone());
                entries.push(ListedEntry {
                    name: entry.name,
                    attr: self.attr_of(child, &meta),
                });
            }
            for (name, child) in table.pending_children(ino) {
                if seen.contains(&name) {
                    continue;
                }
                if let Some(session) = table.get(child).ok().and_then(|i| i.write.clone()) {
                    entries.push(ListedEntry {
                        name,
                        attr: self.attr_of(child, &session.attributes()),
                    });
                }
            }
        }
        let fh = self.new_fh();
        self.handles
            .lock()
            .insert(fh, Handle::Dir(Arc::new(DirHandle { ino, entries })));
        Ok(fh)
    }

    /// Entries from `offset` on (offset = index into the snapshot).
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<(u64, ListedEntry)>> {
        let handle = self.dir_handle(fh)?;
        Ok(handle
            .entries
            .iter()
            .enumerate()
            .skip(offset as usize)
            .map(|(i, e)| (i as u64 + 1, e.clone()))
            .collect())
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.lock().remove(&fh);
    }
}
