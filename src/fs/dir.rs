//! Directory handles: a listing is snapshotted at opendir so that offsets
//! stay valid while the directory changes. Where the kernel may read the
//! entries from its own cache (see `inode::listings`), the listing waits
//! for the first readdir, which only comes if that cache is gone or
//! incomplete.

use std::sync::Arc;
use std::time::Instant;

use super::inode::KeptListing;
use super::types::{Attr, Caller, FsResult, ListedEntry};
use super::{CachalotFs, Handle};

pub struct DirHandle {
    pub ino: u64,
    /// Set once: at opendir, or at the first readdir (see `list_handle`).
    entries: tokio::sync::OnceCell<Vec<ListedEntry>>,
}

impl DirHandle {
    /// A handle with its listing, or (None) one listed at its first readdir.
    pub fn new(ino: u64, entries: Option<Vec<ListedEntry>>) -> DirHandle {
        DirHandle {
            ino,
            entries: tokio::sync::OnceCell::new_with(entries),
        }
    }

    /// The listing, if taken yet.
    pub fn entries(&self) -> Option<&[ListedEntry]> {
        self.entries.get().map(Vec::as_slice)
    }

    /// Entries from `offset` on (an index into the snapshot), each with the
    /// offset of the one after it. Borrowed: a big directory is read in
    /// many requests, and copying the rest of it for each was quadratic.
    /// Nothing before the listing is taken (see `list_handle`).
    pub fn from(&self, offset: u64) -> impl Iterator<Item = (u64, &ListedEntry)> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        self.entries()
            .unwrap_or_default()
            .iter()
            .enumerate()
            .skip(start)
            .map(|(i, e)| (i as u64 + 1, e))
    }
}

/// An open directory.
pub struct OpenedDir {
    pub fh: u64,
    /// The entries are the ones the kernel was given at the last opendir
    /// of this directory: it may serve them from its own cache.
    pub kernel_cache_valid: bool,
}

impl CachalotFs {
    pub async fn opendir(&self, caller: Caller, ino: u64) -> FsResult<OpenedDir> {
        let kernel_cache_valid = {
            let table = self.inodes.lock();
            let parent = table.get(ino)?.parent;
            table
                .listings
                .kernel_may_keep(ino, self.cfg.metadata_ttl, parent)
        };
        let entries = match kernel_cache_valid {
            true => None,
            false => Some(self.listing(caller, ino).await?),
        };
        let fh = self.new_fh();
        self.add_handle(fh, Handle::Dir(Arc::new(DirHandle::new(ino, entries))));
        Ok(OpenedDir {
            fh,
            kernel_cache_valid,
        })
    }

    /// Take the listing of a handle opened without one (once; concurrent
    /// readdirs of the handle wait for the same listing).
    pub async fn list_handle(&self, caller: Caller, handle: &DirHandle) -> FsResult<()> {
        handle
            .entries
            .get_or_try_init(|| self.listing(caller, handle.ino))
            .await?;
        Ok(())
    }

    /// The entries of directory `ino`, `.` and `..` first: from a listing
    /// kept for the metadata TTL if there is one (see `inode::listings`),
    /// else from the backend.
    pub(super) async fn listing(&self, caller: Caller, ino: u64) -> FsResult<Vec<ListedEntry>> {
        let path = self.path_of(ino)?;
        let ttl = self.cfg.metadata_ttl;
        let (kept, token) = self.inodes.lock().listings.begin(ino, ttl);
        let listing = match kept {
            Some(kept) => kept,
            None => self.list_settled(caller, ino, &path).await?,
        };
        let self_attr = self.getattr(caller, ino).await?;
        let parent_ino = self.inodes.lock().get(ino)?.parent;
        let parent_attr = match self.getattr(caller, parent_ino).await {
            Ok(a) => a,
            Err(_) => self_attr.clone(),
        };
        let mut entries = Vec::with_capacity(listing.entries.len() + 2);
        entries.push(ListedEntry {
            name: ".".into(),
            attr: self_attr,
            meta: None,
        });
        entries.push(ListedEntry {
            name: "..".into(),
            attr: parent_attr,
            meta: None,
        });
        let mut table = self.inodes.lock();
        // Decided before the replay, which attaches names itself.
        let keep = table.listings.unchanged(ino, token);
        for entry in listing.entries.iter() {
            // Recorded since the listing (a kept one replayed): nothing to
            // record. A file being rewritten reports its in-progress
            // attributes; anything recorded since the listing wins over it.
            let local = match table.known_since(ino, &entry.name, listing.listed_at) {
                Some((child, inode)) => {
                    // Renamed here since: what it last recorded is at least
                    // the right object's, unlike the listing's entry.
                    let recorded = inode.meta.as_ref().map(|(m, _)| self.attr_of(child, m));
                    (
                        child,
                        self.local_attr_of(child, inode).map(|a| a.or(recorded)),
                    )
                }
                None => {
                    let child =
                        table.upsert(ino, &entry.name, entry.meta.clone(), listing.listed_at);
                    (child, self.local_attr_in(&table, child))
                }
            };
            let attr = match local {
                (_, Ok(Some(attr))) => attr,
                (child, _) => self.attr_of(child, &entry.meta),
            };
            entries.push(ListedEntry {
                name: entry.name.clone(),
                attr,
                meta: Some(entry.meta.clone()),
            });
        }
        let pending = table.pending_children(ino);
        if !pending.is_empty() {
            let listed: std::collections::HashSet<&str> =
                listing.entries.iter().map(|e| e.name.as_str()).collect();
            for (name, child) in pending {
                if listed.contains(name.as_str()) {
                    continue;
                }
                if let Some(session) = table.get(child).ok().and_then(|i| i.write.clone()) {
                    entries.push(ListedEntry {
                        name,
                        attr: self.attr_of(child, &session.attributes()),
                        meta: None,
                    });
                }
            }
        }
        if keep {
            table.listings.keep(ino, listing, ttl);
            table.listings.serve(ino, parent_ino);
        }
        Ok(entries)
    }

    /// List directory `ino` in the backend. A listing that would supersede
    /// an open file (another version under its name) may have met a rename
    /// through this mount halfway: it is taken again once such moves are
    /// recorded (see `moves_recorded`).
    async fn list_settled(
        &self,
        caller: Caller,
        ino: u64,
        path: &crate::backend::BackendPath,
    ) -> FsResult<KeptListing> {
        let mut waited = false;
        loop {
            let listed_at = Instant::now();
            let listed = self.backend.list(self.identity(caller), path).await?;
            let supersedes = !waited && {
                let table = self.inodes.lock();
                listed.iter().any(|entry| {
                    Self::would_supersede(&table, table.child(ino, &entry.name), &entry.meta)
                })
            };
            if !supersedes {
                return Ok(KeptListing {
                    entries: Arc::new(listed),
                    listed_at,
                });
            }
            self.moves_recorded().await;
            waited = true;
        }
    }

    /// An open directory, whose listing the kernel reads in pieces (see
    /// `DirHandle::from`); taken first if it is not yet (`list_handle`).
    pub fn readdir(&self, fh: u64) -> FsResult<Arc<DirHandle>> {
        self.dir_handle(fh)
    }

    /// A readdirplus entry is about to reach the kernel, which makes a
    /// dentry of it: the attributes to send (their `ino` the inode the name
    /// leads to now, whose reference is counted), or None to skip it.
    ///
    /// The listing was taken when the directory was opened; the kernel
    /// reads it in pieces, later. A name renamed or removed through this
    /// mount since then must not come back as a dentry of the inode it
    /// left: a writer's `open(tmp, O_CREAT|O_TRUNC)` would then truncate
    /// the file `tmp` was renamed to, and its later `rename(tmp, ...)`
    /// fail with ENOENT. So the entry follows the table: the inode the name
    /// has now (with its own attributes), or nothing if the name is gone.
    pub fn remember_listed(&self, dir: u64, entry: &ListedEntry) -> Option<Attr> {
        if entry.name == "." || entry.name == ".." {
            // The kernel takes no reference for these.
            return Some(entry.attr.clone());
        }
        let mut table = self.inodes.lock();
        match table.child(dir, &entry.name) {
            Some(ino) => {
                let attr = match self.local_attr_in(&table, ino) {
                    Ok(Some(attr)) => attr,
                    _ if ino == entry.attr.ino => entry.attr.clone(),
                    // Another inode whose attributes we do not know now.
                    _ => return None,
                };
                table.remember(ino).then_some(attr)
            }
            // The listed inode still exists but left this name.
            None if table.get(entry.attr.ino).is_ok() => None,
            // Forgotten since the listing: the name gets a live inode.
            None => {
                let meta = entry.meta.clone()?;
                let ino = table.upsert_entry(dir, &entry.name, meta.clone(), Instant::now());
                let attr = self.local_attr_in(&table, ino).ok().flatten();
                Some(attr.unwrap_or_else(|| self.attr_of(ino, &meta)))
            }
        }
    }

    /// The kernel did not take an entry it was offered (reply buffer full).
    pub fn unremember(&self, ino: u64) {
        self.inodes.lock().forget(ino, 1);
    }

    pub fn releasedir(&self, fh: u64) {
        self.remove_handle(fh);
    }
}
