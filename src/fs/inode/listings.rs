//! Directory listings kept for the metadata TTL, as attributes are: `ls -l`
//! then `find` of one directory asks the backend once, not twice (a listing
//! of a big directory costs a stat per entry on file:// and NFS, and a LIST
//! per 1 000 keys on S3).
//!
//! A kept listing is the backend's names and metadata at one instant. It is
//! dropped the moment this mount changes what it would say: a name in its
//! directory added or taken (`attach`, `take_name`), a file under one of
//! its names published (`relist_dirs_naming`; a new file was listed from
//! its write session alone), an entry's metadata expired by our own change
//! (`expire`: a link count, a directory's mtime), or an inode dropped that
//! knew more than the listing (`dropped`). So our own changes show at
//! once; others' show after the TTL, like their attribute changes.
//! Attributes are not served from it: a replayed listing records its
//! metadata in the inode table, where anything newer (a publish, a setattr
//! since) wins, and takes each entry's attributes from there.
//!
//! The kernel caches a directory's entries too (FOPEN_CACHE_DIR) and may
//! keep them at the next opendir (FOPEN_KEEP_CACHE). It may exactly when
//! that opendir replays, unchanged, the kept listing the kernel was last
//! given (`served`), with the same parent for `..`: any change of the
//! names drops the kept listing first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::DirEntry;

/// At most this many entries are kept over all directories: a listing
/// of a million names is not held past its handle.
const MAX_KEPT_ENTRIES: usize = 200_000;

#[derive(Default)]
pub struct Listings {
    kept: HashMap<u64, KeptListing>,
    entries: usize,
    /// Directories being listed or replayed, each with its token: a change
    /// in the directory meanwhile takes the token away, and the listing is
    /// then used once but not kept.
    pending: HashMap<u64, u64>,
    next_token: u64,
    /// Per directory with a kept listing: the listing the kernel was last
    /// given at an opendir (when it was listed) and the parent of `..`.
    served: HashMap<u64, (Instant, u64)>,
}

#[derive(Clone)]
pub struct KeptListing {
    pub entries: Arc<Vec<DirEntry>>,
    /// When the backend was asked (before its answer).
    pub listed_at: Instant,
}

impl Listings {
    /// Start listing `dir`: its kept listing if younger than `ttl`, and a
    /// token for `unchanged`. A token never asked about stays until the
    /// directory next changes or is listed again (one per directory).
    pub fn begin(&mut self, dir: u64, ttl: Duration) -> (Option<KeptListing>, u64) {
        let kept = match self.kept.get(&dir) {
            Some(k) if k.listed_at.elapsed() < ttl => Some(k.clone()),
            Some(_) => {
                self.remove(dir);
                None
            }
            None => None,
        };
        self.next_token += 1;
        self.pending.insert(dir, self.next_token);
        (kept, self.next_token)
    }

    /// Whether `dir` is unchanged since `begin` gave `token` (once).
    pub fn unchanged(&mut self, dir: u64, token: u64) -> bool {
        match self.pending.get(&dir) {
            Some(t) if *t == token => {
                self.pending.remove(&dir);
                true
            }
            _ => false,
        }
    }

    /// Keep `listing` for `dir`, dropping expired ones first; not kept if
    /// that would pass the bound.
    pub fn keep(&mut self, dir: u64, listing: KeptListing, ttl: Duration) {
        self.remove(dir);
        if ttl.is_zero() {
            return;
        }
        if self.entries + listing.entries.len() > MAX_KEPT_ENTRIES {
            let expired: Vec<u64> = self
                .kept
                .iter()
                .filter(|(_, l)| l.listed_at.elapsed() >= ttl)
                .map(|(d, _)| *d)
                .collect();
            for d in expired {
                self.remove(d);
            }
            if self.entries + listing.entries.len() > MAX_KEPT_ENTRIES {
                return;
            }
        }
        self.entries += listing.entries.len();
        self.kept.insert(dir, listing);
    }

    /// Whether the kernel's own cached entries of `dir` are still right
    /// for an opendir now, with `parent` as `..`: the kept listing it was
    /// last given is still kept and younger than `ttl`.
    pub fn kernel_may_keep(&self, dir: u64, ttl: Duration, parent: u64) -> bool {
        match (self.kept.get(&dir), self.served.get(&dir)) {
            (Some(kept), Some(served)) => {
                kept.listed_at.elapsed() < ttl && *served == (kept.listed_at, parent)
            }
            _ => false,
        }
    }

    /// The kernel is given `dir`'s kept listing (if it is kept) at an
    /// opendir, with `parent` as `..`.
    pub fn serve(&mut self, dir: u64, parent: u64) {
        if let Some(kept) = self.kept.get(&dir) {
            self.served.insert(dir, (kept.listed_at, parent));
        }
    }

    /// A name in `dir` was added or taken, an entry's metadata was
    /// expired by our own change, or `dir` itself went away.
    pub fn changed(&mut self, dir: u64) {
        self.remove(dir);
        self.pending.remove(&dir);
    }

    /// An inode named in `dir` was dropped (the kernel forgot it) knowing
    /// metadata fetched at `known_at` (None: none, or a write's). A kept
    /// listing as new as that recreates it as it was; an older one would
    /// bring back what it knew before, so it goes.
    pub fn dropped(&mut self, dir: u64, known_at: Option<Instant>) {
        let stale = self
            .kept
            .get(&dir)
            .is_some_and(|kept| known_at.is_none_or(|at| at > kept.listed_at));
        if stale {
            self.remove(dir);
        }
    }

    fn remove(&mut self, dir: u64) -> Option<KeptListing> {
        self.served.remove(&dir);
        let kept = self.kept.remove(&dir)?;
        self.entries -= kept.entries.len();
        Some(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{FileKind, Metadata, VersionToken};
    use std::time::SystemTime;

    fn listing(n: usize, listed_at: Instant) -> KeptListing {
        let meta = Metadata {
            kind: FileKind::File,
            size: 1,
            mode: 0o644,
            uid: 0,
            gid: 0,
            nlink: 1,
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            version: VersionToken("v".into()),
            object_id: None,
            rdev: 0,
        };
        KeptListing {
            entries: Arc::new(
                (0..n)
                    .map(|i| DirEntry {
                        name: format!("f{i}"),
                        meta: meta.clone(),
                    })
                    .collect(),
            ),
            listed_at,
        }
    }

    #[test]
    fn a_listing_is_served_within_its_ttl_until_its_directory_changes() {
        let ttl = Duration::from_secs(60);
        let mut l = Listings::default();
        let (none, token) = l.begin(7, ttl);
        assert!(none.is_none());
        assert!(l.unchanged(7, token));
        l.keep(7, listing(3, Instant::now()), ttl);
        let (kept, token) = l.begin(7, ttl);
        assert!(kept.is_some());
        l.changed(8);
        assert!(l.unchanged(7, token), "another directory changed");
        let (_, token) = l.begin(7, ttl);
        l.changed(7);
        assert!(!l.unchanged(7, token), "changed while listed");
        assert!(l.begin(7, ttl).0.is_none());
        assert_eq!(l.entries, 0);
    }

    #[test]
    fn a_dropped_inode_knowing_more_than_the_listing_drops_it() {
        let ttl = Duration::from_secs(60);
        let mut l = Listings::default();
        let listed_at = Instant::now();
        l.keep(7, listing(3, listed_at), ttl);
        l.dropped(7, Some(listed_at - Duration::from_secs(1)));
        assert!(l.begin(7, ttl).0.is_some(), "the listing knows as much");
        l.dropped(7, Some(listed_at + Duration::from_millis(1)));
        assert!(l.begin(7, ttl).0.is_none(), "newer metadata was dropped");
        l.keep(7, listing(3, listed_at), ttl);
        l.dropped(7, None);
        assert!(
            l.begin(7, ttl).0.is_none(),
            "a write's attributes were dropped"
        );
    }

    #[test]
    fn a_later_listing_of_the_same_directory_takes_the_token() {
        let ttl = Duration::from_secs(60);
        let mut l = Listings::default();
        let (_, first) = l.begin(7, ttl);
        let (_, second) = l.begin(7, ttl);
        assert!(!l.unchanged(7, first));
        assert!(l.unchanged(7, second));
        assert!(!l.unchanged(7, second), "a token is good once");
    }

    #[test]
    fn an_old_listing_is_not_served_and_none_is_kept_without_a_ttl() {
        let ttl = Duration::from_millis(50);
        let mut l = Listings::default();
        let old = Instant::now() - Duration::from_secs(1);
        l.keep(7, listing(3, old), ttl);
        assert!(l.begin(7, ttl).0.is_none());
        l.keep(7, listing(3, Instant::now()), Duration::ZERO);
        assert!(l.begin(7, Duration::ZERO).0.is_none());
        assert_eq!(l.entries, 0);
    }

    #[test]
    fn the_bound_drops_expired_listings_and_refuses_past_it() {
        let ttl = Duration::from_secs(60);
        let mut l = Listings::default();
        let old = Instant::now() - Duration::from_secs(120);
        l.keep(1, listing(MAX_KEPT_ENTRIES - 10, old), ttl);
        l.keep(2, listing(20, Instant::now()), ttl);
        assert_eq!(l.entries, 20, "the expired listing made room");
        l.keep(3, listing(MAX_KEPT_ENTRIES, Instant::now()), ttl);
        assert!(l.begin(3, ttl).0.is_none(), "past the bound");
        assert!(l.begin(2, ttl).0.is_some());
    }
}
