//! Directory handles by path. Handles of directories are cached so a path
//! walk is one LOOKUP (the last component) instead of one per component.
//!
//! The cache is short-lived because another client may rename a directory:
//! its handle stays valid but then names another path. Within the TTL we see
//! the same staleness a kernel client's dentry cache has; after it, the path
//! is looked up again. A STALE answer clears the cache (see `Volume::stale_retry`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nfs3_types::nfs3::nfs_fh3;
use parking_lot::Mutex;

use crate::backend::BackendPath;

/// Upper bound on cached directories; the cache is simply cleared when full.
const MAX_ENTRIES: usize = 100_000;

pub struct HandleCache {
    ttl: Duration,
    dirs: Mutex<HashMap<BackendPath, (nfs_fh3, Instant)>>,
}

impl HandleCache {
    pub fn new(ttl: Duration) -> HandleCache {
        HandleCache {
            ttl,
            dirs: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, path: &BackendPath) -> Option<nfs_fh3> {
        let dirs = self.dirs.lock();
        match dirs.get(path) {
            Some((fh, at)) if at.elapsed() < self.ttl => Some(fh.clone()),
            _ => None,
        }
    }

    pub fn put(&self, path: &BackendPath, fh: nfs_fh3) {
        if self.ttl.is_zero() {
            return;
        }
        let mut dirs = self.dirs.lock();
        if dirs.len() >= MAX_ENTRIES {
            dirs.clear();
        }
        dirs.insert(path.clone(), (fh, Instant::now()));
    }

    /// Forget `path` and everything below it (after rmdir or rename).
    pub fn forget_tree(&self, path: &BackendPath) {
        let prefix = format!("{}/", path.as_str());
        self.dirs
            .lock()
            .retain(|p, _| p != path && !p.as_str().starts_with(&prefix));
    }

    pub fn clear(&self) {
        self.dirs.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nfs3_types::xdr_codec::Opaque;

    fn fh(n: u8) -> nfs_fh3 {
        nfs_fh3 {
            data: Opaque::owned(vec![n]),
        }
    }

    #[test]
    fn forget_tree_drops_descendants_only() {
        let cache = HandleCache::new(Duration::from_secs(60));
        let p = |s: &str| BackendPath::parse(s).unwrap();
        cache.put(&p("a"), fh(1));
        cache.put(&p("a/b"), fh(2));
        cache.put(&p("ab"), fh(3));
        cache.forget_tree(&p("a"));
        assert!(cache.get(&p("a")).is_none());
        assert!(cache.get(&p("a/b")).is_none());
        assert_eq!(cache.get(&p("ab")), Some(fh(3)));
    }

    #[test]
    fn entries_expire() {
        let cache = HandleCache::new(Duration::ZERO);
        let p = BackendPath::parse("a").unwrap();
        cache.put(&p, fh(1));
        assert!(cache.get(&p).is_none());
    }
}
