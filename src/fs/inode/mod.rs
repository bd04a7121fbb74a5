//! The inode table: stable inode numbers for paths, for the life of a mount.
//!
//! Inodes are stored as (parent, name) so renaming a directory moves its
//! whole subtree in O(1); a path is rebuilt by walking up to the root.
//!
//! Lifetimes follow the kernel's: every entry we hand to the kernel (lookup,
//! create, mkdir, readdirplus, ...) counts one reference, FORGET drops them,
//! and an inode is only dropped once the kernel holds no reference, no handle
//! is open and no write is in progress. An inode removed from the namespace
//! (unlink, rename-over) therefore stays known while the kernel may still
//! open it: such an open gets ESTALE (the kernel then looks the name up again)
//! instead of ENOENT for a path that exists.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::backend::{BackendPath, FileKind, Metadata, ObjectReader, VersionToken};

use super::journal::{Event, JournalSink};
use super::types::{FsError, FsResult, ROOT_INO};
use super::write::WriteSession;

mod children;
mod listings;
use children::Children;
pub use listings::{KeptListing, Listings};
mod names;
mod state;

/// Inode numbers for objects without a number of their own (or whose
/// number is taken) start here, away from the small numbers filesystems
/// hand out.
const FALLBACK_INO_BASE: u64 = 1 << 62;

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
    /// Opens in progress: an unlink or rename-over must keep the object for
    /// them too.
    pub opening: u32,
    /// Handles whose opener already closed them (release pending).
    pub closing: u32,
    /// Open handles served by FUSE passthrough: while there are any, every
    /// open of this inode must be passthrough too (a kernel rule). Counted
    /// down only once the kernel got the RELEASE reply, like `kernel_opens`.
    pub passthrough_opens: u32,
    /// Opens the kernel may still count in the inode's I/O mode (cached or
    /// passthrough): from the open until the reply to their RELEASE was
    /// sent, which is when the kernel ends a file's mode. Until then an
    /// open of the other mode fails in the kernel (EIO), so a first
    /// passthrough open needs this at 0 where `open_handles` (counted down
    /// while the RELEASE is handled) is not enough.
    pub kernel_opens: u32,
    /// The version the passthrough opens read (their backing file's): an
    /// open that must see another version, or write, cannot share the
    /// inode with them (see `CachalotFs::open`). `None` while there are no
    /// passthrough opens, or when a predecessor did not say.
    pub passthrough_version: Option<VersionToken>,
    /// Version seen at the previous open: if unchanged, the kernel may keep
    /// its page cache (FOPEN_KEEP_CACHE).
    pub last_open_version: Option<VersionToken>,
    /// Removed from the user-visible namespace (nlink 0 for the kernel).
    pub unlinked: bool,
    /// Still has a backend name: in the children map under (parent, name).
    /// An open file that was unlinked or replaced keeps one under a hidden
    /// name until its last handle closes.
    pub attached: bool,
    /// The backend object was moved to a hidden name to keep it readable
    /// for open handles; removed at the last close.
    pub hidden: bool,
    /// Hidden for the kernel's opens too (see `fs/unlinked.rs`): the
    /// object goes once the kernel forgot the inode, not at the last
    /// close. Not handed to a successor, which removes it at the last
    /// close or when the kernel forgets it, whichever comes last it sees.
    pub kept_for_kernel: bool,
    /// Replaced behind the mount while open (see `InodeTable::refresh`):
    /// detached, but still opened by the kernel for lookups that saw it.
    pub superseded: bool,
    /// Superseded, and a read found its version gone from the backend:
    /// opens answer ESTALE, so the kernel looks the name up again and
    /// opens the new version (see `CachalotFs::open`). Not carried to a
    /// successor, which finds the version gone at its first read again.
    pub version_gone: bool,
    /// When this mount last renamed the inode to its current name: a
    /// backend answer asked for before then describes what the name held
    /// before (see `refresh`).
    pub named_at: Option<Instant>,
    /// Backend reader of the version the open descriptors read, shared by
    /// them: once one descriptor opened it, the others read that version
    /// even if the name was republished since (a local or NFS reader keeps
    /// the old file). Dropped with the last descriptor.
    pub reader: Option<Arc<dyn ObjectReader>>,
    /// Unlinks or renames over this file in progress that will not keep
    /// its object: opens wait for them to finish.
    pub replacing: u32,
    /// References the kernel holds (entries replied minus forgotten).
    pub nlookup: u64,
    /// Attached children: a directory with known children is never dropped,
    /// their paths go through it.
    children: u32,
    /// The object's other names (hard links) besides `parent`/`name`, which
    /// is the one its path is built from. When that name goes, one of
    /// these takes its place.
    pub links: Vec<(u64, String)>,
}

/// What `InodeTable::refresh` did with new metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    Updated,
    /// Older than what is recorded: ignored.
    Outdated,
    /// The file changed behind the mount while open: the inode keeps its
    /// version and left the namespace.
    Superseded,
}

impl Inode {
    /// Whether `meta` is another version of this file than the one its open
    /// descriptors read, and they must keep reading theirs. Not for a file
    /// being written through this mount (its publish decides).
    pub(in crate::fs) fn replaced_behind_open_descriptors(&self, meta: &Metadata) -> bool {
        let open = self.open_handles.saturating_sub(self.closing) > 0;
        let known = self.meta.as_ref().map(|(m, _)| &m.version);
        self.kind == FileKind::File
            && self.write.is_none()
            && open
            && known.is_some_and(|v| !v.0.is_empty() && *v != meta.version)
    }

    /// Whether the object kept under a hidden name can go: nothing holds
    /// it open or is opening it, no write is in progress, and the kernel
    /// forgot the inode if it was kept for the kernel's opens too.
    pub(in crate::fs) fn hidden_object_removable(&self) -> bool {
        self.hidden
            && self.open_handles == 0
            && self.opening == 0
            && self.write.is_none()
            && (self.nlookup == 0 || !self.kept_for_kernel)
    }

    /// Make the metadata due for a refetch while keeping it as the last
    /// thing known (all there is once the inode loses its name).
    fn expire_meta(&mut self) {
        if let Some((_, fetched)) = &mut self.meta {
            let long_ago = Instant::now().checked_sub(std::time::Duration::from_secs(365 * 86400));
            *fetched = long_ago.unwrap_or(*fetched);
        }
    }

    fn new(parent: u64, name: &str, kind: FileKind, meta: Option<(Metadata, Instant)>) -> Inode {
        Inode {
            parent,
            name: name.to_string(),
            kind,
            meta,
            write: None,
            writers: 0,
            open_handles: 0,
            kernel_opens: 0,
            opening: 0,
            closing: 0,
            passthrough_opens: 0,
            passthrough_version: None,
            last_open_version: None,
            unlinked: false,
            attached: true,
            hidden: false,
            kept_for_kernel: false,
            replacing: 0,
            reader: None,
            superseded: false,
            version_gone: false,
            named_at: None,
            nlookup: 0,
            children: 0,
            links: Vec::new(),
        }
    }

    /// The backend object this inode serves, as far as known.
    pub fn object_id(&self) -> Option<u64> {
        self.meta.as_ref().and_then(|(m, _)| m.object_id)
    }

    /// Whether `parent/name` is its first name (the one paths are built
    /// from).
    pub fn is_named(&self, parent: u64, name: &str) -> bool {
        self.parent == parent && self.name == name
    }
}

pub struct InodeTable {
    inodes: HashMap<u64, Inode, foldhash::fast::RandomState>,
    children: Children,
    /// Backend object → the inode serving it: a name found to be another
    /// link of a known object joins its inode.
    by_object: HashMap<u64, u64>,
    /// Where numbers for inodes without a usable object number of their
    /// own are taken from (see `number_for`).
    next_ino: u64,
    /// Names taken off an inode because its object changed under another
    /// of its names: the kernel must look them up again (`take_split`).
    split: Vec<(u64, String)>,
    /// Bumped whenever a name is attached or removed: a handle rebuilds its
    /// path only when this moved since it last looked (not on every read).
    moves: u64,
    /// Told of every name given or taken and every inode dropped (see
    /// `journal`).
    journal: Option<Arc<dyn JournalSink>>,
    /// Directory listings kept for the metadata TTL (see `listings`).
    pub listings: Listings,
}

impl InodeTable {
    pub fn new(root_meta: Metadata) -> InodeTable {
        let mut inodes = HashMap::default();
        let mut root = Inode::new(
            ROOT_INO,
            "",
            FileKind::Directory,
            Some((root_meta, Instant::now())),
        );
        // The kernel's root reference is implicit and never forgotten.
        root.nlookup = 1;
        inodes.insert(ROOT_INO, root);
        InodeTable {
            inodes,
            children: Children::default(),
            by_object: HashMap::new(),
            next_ino: FALLBACK_INO_BASE,
            split: Vec::new(),
            moves: 0,
            journal: None,
            listings: Listings::default(),
        }
    }

    /// The number for a new inode of `meta`'s object: the object's own
    /// number (so `st_ino` is the same for every name of it, and the same
    /// again when the kernel looks it up after forgetting it), unless that
    /// number is free of meaning (0, the root's) or still taken by another
    /// inode the kernel knows (a rewritten file keeps its number while the
    /// backend may hand the old object's number to a new one). Then one
    /// from a range apart, never one in use.
    fn number_for(&mut self, meta: &Metadata) -> u64 {
        if let Some(id) = meta.object_id {
            if id > ROOT_INO && !self.inodes.contains_key(&id) {
                return id;
            }
        }
        loop {
            let ino = self.next_ino;
            self.next_ino = match self.next_ino.checked_add(1) {
                Some(next) => next,
                None => FALLBACK_INO_BASE,
            };
            if ino > ROOT_INO && !self.inodes.contains_key(&ino) {
                return ino;
            }
        }
    }

    /// Record `ino`'s current metadata (a publish, a setattr), keeping the
    /// object index right: if the object changed (a file rewritten through
    /// this mount is a new object under the name it was written through),
    /// the inode's other names still lead to the old object and leave it.
    pub fn set_meta(&mut self, ino: u64, meta: Metadata, fetched: Instant) {
        let Some(inode) = self.inodes.get_mut(&ino) else {
            return;
        };
        let old = inode.object_id();
        let new = meta.object_id;
        inode.meta = Some((meta, fetched));
        if old == new {
            return;
        }
        if let Some(old) = old {
            if self.by_object.get(&old) == Some(&ino) {
                self.by_object.remove(&old);
            }
        }
        if let Some(new) = new {
            self.by_object.insert(new, ino);
        }
        if old.is_none() || new.is_none() {
            return;
        }
        let links = self
            .inodes
            .get(&ino)
            .map(|i| i.links.clone())
            .unwrap_or_default();
        for (parent, name) in links {
            self.unattach(parent, &name);
            self.split.push((parent, name));
        }
    }

    /// Names split off by `set_meta` since the last call.
    pub fn take_split(&mut self) -> Vec<(u64, String)> {
        std::mem::take(&mut self.split)
    }

    pub fn set_journal(&mut self, journal: Arc<dyn JournalSink>) {
        self.journal = Some(journal);
    }

    fn log(&self, event: Event) {
        if let Some(j) = &self.journal {
            j.record(&event);
        }
    }

    pub fn get(&self, ino: u64) -> FsResult<&Inode> {
        self.inodes.get(&ino).ok_or(FsError::new(libc::ENOENT))
    }

    pub fn get_mut(&mut self, ino: u64) -> FsResult<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(FsError::new(libc::ENOENT))
    }

    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        self.children.get(parent, name)
    }

    /// Backend path of an inode (its hidden name for an open file that was
    /// unlinked). Names were validated on insert, so parsing cannot fail.
    pub fn path_of(&self, ino: u64) -> FsResult<BackendPath> {
        let mut names = Vec::new();
        let mut at = ino;
        while at != ROOT_INO {
            let inode = self.get(at)?;
            if !inode.attached {
                return Err(FsError::new(libc::ENOENT));
            }
            names.push(inode.name.as_str());
            at = inode.parent;
            if names.len() > 4096 {
                return Err(FsError::new(libc::ELOOP));
            }
        }
        names.reverse();
        BackendPath::parse(&names.join("/")).map_err(|_| FsError::new(libc::EIO))
    }

    /// Where the inode's objects live: its path, or for an inode that lost
    /// its name, its old name in its directory's current path (the
    /// temporary object of an unlinked file being written stays there).
    pub fn last_path(&self, ino: u64) -> FsResult<BackendPath> {
        let inode = self.get(ino)?;
        if inode.attached {
            return self.path_of(ino);
        }
        let dir = self.path_of(inode.parent)?;
        dir.join(&inode.name).map_err(|_| FsError::new(libc::EIO))
    }

    /// Unlinked inodes with a write in progress whose temporary object
    /// lives in `dir`.
    pub fn orphans_in(&self, dir: u64) -> Vec<u64> {
        self.inodes
            .iter()
            .filter(|(_, i)| !i.attached && i.parent == dir && i.write.is_some())
            .map(|(ino, _)| *ino)
            .collect()
    }

    /// Record that an unlinked inode's objects moved to `dir`.
    pub fn set_orphan_parent(&mut self, ino: u64, dir: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            if !inode.attached {
                inode.parent = dir;
            }
        }
    }

    /// The inode for `parent/name`, created if new, with metadata fetched
    /// at `fetched`. A name whose kind changed (file replaced by a
    /// directory) gets a new inode so the kernel never sees an inode change
    /// type; so does a file replaced behind the mount while open (see
    /// `refresh`).
    pub fn upsert(&mut self, parent: u64, name: &str, meta: Metadata, fetched: Instant) -> u64 {
        if let Some(ino) = self.child(parent, name) {
            let (same_kind, other_link) = match self.inodes.get(&ino) {
                Some(i) => (
                    i.kind == meta.kind,
                    // One of several names of an inode now leads to
                    // another object: that name alone leaves it.
                    !i.links.is_empty()
                        && meta.object_id.is_some()
                        && i.object_id().is_some()
                        && i.object_id() != meta.object_id,
                ),
                None => (false, false),
            };
            if !same_kind {
                self.detach(parent, name);
            } else if other_link {
                self.unattach(parent, name);
            } else if self.refresh(ino, meta.clone(), fetched) != Ok(Refreshed::Superseded) {
                return ino;
            }
        }
        if let Some(ino) = self.known_link(&meta) {
            self.attach(parent, name, ino);
            let _ = self.refresh(ino, meta, fetched);
            return ino;
        }
        let ino = self.number_for(&meta);
        let object = meta.object_id;
        self.inodes.insert(
            ino,
            Inode::new(parent, name, meta.kind, Some((meta, fetched))),
        );
        if let Some(id) = object {
            self.by_object.insert(id, ino);
        }
        self.attach(parent, name, ino);
        ino
    }

    /// The inode already serving the object `meta` describes, when that
    /// object has several names (hard links): the new name joins it, so
    /// the kernel sees one inode with one link count.
    fn known_link(&self, meta: &Metadata) -> Option<u64> {
        if meta.nlink < 2 || meta.kind == FileKind::Directory {
            return None;
        }
        let ino = *self.by_object.get(&meta.object_id?)?;
        let inode = self.inodes.get(&ino)?;
        let usable = inode.attached && !inode.unlinked && !inode.superseded;
        (usable && inode.kind == meta.kind && inode.object_id() == meta.object_id).then_some(ino)
    }

    /// A new name `parent/name` for `ino` (after the backend linked it),
    /// with the object's metadata after the link; counts the kernel
    /// reference the reply creates.
    pub fn add_link(
        &mut self,
        ino: u64,
        parent: u64,
        name: &str,
        meta: Metadata,
        fetched: Instant,
    ) {
        if self.child(parent, name).is_some() {
            self.detach(parent, name);
        }
        self.attach(parent, name, ino);
        self.set_meta(ino, meta, fetched);
        self.remember(ino);
    }

    /// As `upsert`, and count the kernel reference the reply will create.
    pub fn upsert_entry(
        &mut self,
        parent: u64,
        name: &str,
        meta: Metadata,
        fetched: Instant,
    ) -> u64 {
        let ino = self.upsert(parent, name, meta, fetched);
        self.remember(ino);
        ino
    }

    /// Record metadata of `ino` fetched from the backend at `fetched`.
    ///
    /// A file whose content was replaced behind the mount (another mount or
    /// node published a new version) while descriptors of it are open here
    /// is superseded: it keeps the version those descriptors read and
    /// leaves the namespace, like a file renamed over; the name gets a new
    /// inode at its next lookup. So each descriptor reads one version
    /// (close-to-open, as on NFS), and the kernel keeps the pages and size
    /// of the two versions apart.
    pub fn refresh(&mut self, ino: u64, meta: Metadata, fetched: Instant) -> FsResult<Refreshed> {
        let inode = self.get_mut(ino)?;
        let renamed_since = inode.named_at.is_some_and(|at| at > fetched);
        if renamed_since || inode.meta.as_ref().is_some_and(|(_, at)| *at > fetched) {
            // Something newer was recorded meanwhile (a publish or a
            // rename through this mount finished while the backend was
            // asked).
            return Ok(Refreshed::Outdated);
        }
        if !inode.replaced_behind_open_descriptors(&meta) {
            self.set_meta(ino, meta, fetched);
            return Ok(Refreshed::Updated);
        }
        self.supersede(ino);
        Ok(Refreshed::Superseded)
    }

    /// Take a file replaced behind the mount out of the namespace; it keeps
    /// its metadata for its open descriptors.
    pub fn supersede(&mut self, ino: u64) {
        let Some(inode) = self.inodes.get_mut(&ino) else {
            return;
        };
        inode.superseded = true;
        // Every name leads to the new version now.
        let mut names = std::mem::take(&mut inode.links);
        if inode.attached {
            names.push((inode.parent, inode.name.clone()));
        }
        for (parent, name) in names {
            if self.child(parent, &name) == Some(ino) {
                self.detach(parent, &name);
            }
        }
    }

    /// One more kernel reference; false if the inode is gone.
    pub fn remember(&mut self, ino: u64) -> bool {
        match self.inodes.get_mut(&ino) {
            Some(inode) => {
                inode.nlookup += 1;
                true
            }
            None => false,
        }
    }

    /// FORGET: the kernel dropped `n` references to `ino`. True if it is
    /// a hidden file nothing refers to any more, whose object can go (one
    /// kept for the kernel; or, in a successor after a live upgrade, which
    /// does not know that, any hidden file nobody has open).
    pub fn forget(&mut self, ino: u64, n: u64) -> bool {
        if ino == ROOT_INO {
            return false;
        }
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.nlookup = inode.nlookup.saturating_sub(n);
        }
        self.maybe_drop(ino);
        self.inodes
            .get(&ino)
            .is_some_and(|i| i.nlookup == 0 && i.hidden_object_removable())
    }

    pub fn moves(&self) -> u64 {
        self.moves
    }

    /// Drop an inode nobody can reach any more: no kernel reference, no
    /// handle, no write in progress, no attached child. Its metadata is
    /// refetched at the next lookup.
    pub fn maybe_drop(&mut self, ino: u64) {
        let droppable = ino != ROOT_INO
            && self.inodes.get(&ino).is_some_and(|i| {
                i.nlookup == 0
                    && i.open_handles == 0
                    && i.opening == 0
                    && i.write.is_none()
                    && i.children == 0
                    && !i.hidden
            });
        if !droppable {
            return;
        }
        if let Some(inode) = self.inodes.remove(&ino) {
            self.log(Event::Drop { ino });
            self.listings.changed(ino);
            if let Some(id) = inode.object_id() {
                if self.by_object.get(&id) == Some(&ino) {
                    self.by_object.remove(&id);
                }
            }
            if inode.attached {
                let known_at = inode.meta.as_ref().map(|(_, at)| *at);
                let mut names = inode.links;
                names.push((inode.parent, inode.name));
                for (parent, name) in names {
                    self.listings.dropped(parent, known_at);
                    self.children.remove(parent, &name);
                    if let Some(p) = self.inodes.get_mut(&parent) {
                        p.children = p.children.saturating_sub(1);
                    }
                    self.maybe_drop(parent);
                }
            }
        }
    }

    /// Children known to exist only locally (files being created): listings
    /// must show them although the backend does not have them yet.
    pub fn pending_children(&self, parent: u64) -> Vec<(String, u64)> {
        self.children
            .of(parent)
            .filter(|(_, ino)| {
                self.inodes
                    .get(ino)
                    .and_then(|i| i.write.as_ref())
                    .is_some_and(|w| w.is_new())
            })
            .map(|(name, ino)| (name.to_string(), ino))
            .collect()
    }
}
