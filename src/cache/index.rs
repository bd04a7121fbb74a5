//! The in-memory index of a cache directory: every page file and whole file
//! this process knows of, in one least-recently-used order across volumes,
//! with each volume's usage, so eviction can be fair between volumes.
//!
//! Other processes sharing the directory write pages this index does not
//! know of; a rescan of the directory (`merge`) adds them, ordered by the
//! access times on disk (page hits refresh those, see `PageStore::touch`).

use std::collections::HashMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use lru::LruCache;

/// The cache's name for a volume: a hash of its backend identity and page
/// size (pages of one object cut at another size are other pages), shown
/// as 16 hex digits and used as the volume's directory name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeTag(pub u64);

impl VolumeTag {
    pub fn of(identity: &str, page_size: u64) -> VolumeTag {
        let mut hasher = blake3::Hasher::new();
        hasher.update(identity.as_bytes());
        hasher.update(&page_size.to_le_bytes());
        let bytes = hasher.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&bytes.as_bytes()[..8]);
        VolumeTag(u64::from_be_bytes(first))
    }

    /// The directory name (16 lowercase hex digits) back to a tag.
    pub fn parse(name: &str) -> Option<VolumeTag> {
        if name.len() != 16 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(name, 16).ok().map(VolumeTag)
    }
}

impl fmt::Display for VolumeTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Bytes on disk.
    pub size: u64,
    pub volume: VolumeTag,
    /// Last use, milliseconds since the epoch.
    pub used: u64,
}

/// Bytes and entries of one volume.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub entries: u64,
}

/// One page file or whole file found on disk by a scan.
#[derive(Debug, Clone)]
pub struct Found {
    pub name: String,
    pub entry: Entry,
}

pub fn now_millis() -> u64 {
    millis(SystemTime::now())
}

pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub struct Index {
    /// Name (page stem, or `w:` + object stem) → entry, most recent first.
    lru: LruCache<String, Entry>,
    usage: HashMap<VolumeTag, Usage>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            lru: LruCache::unbounded(),
            usage: HashMap::new(),
        }
    }
}

impl Index {
    pub fn len(&self) -> usize {
        self.lru.len()
    }

    /// Bytes of everything indexed.
    pub fn bytes(&self) -> u64 {
        self.usage.values().map(|u| u.bytes).sum()
    }

    pub fn usage(&self, volume: VolumeTag) -> Usage {
        self.usage.get(&volume).copied().unwrap_or_default()
    }

    /// Volumes with at least one entry.
    pub fn volumes(&self) -> usize {
        self.usage.values().filter(|u| u.entries > 0).count()
    }

    fn add_usage(&mut self, e: &Entry) {
        let u = self.usage.entry(e.volume).or_default();
        u.bytes += e.size;
        u.entries += 1;
    }

    fn sub_usage(&mut self, e: &Entry) {
        if let Some(u) = self.usage.get_mut(&e.volume) {
            u.bytes = u.bytes.saturating_sub(e.size);
            u.entries = u.entries.saturating_sub(1);
            if u.entries == 0 {
                self.usage.remove(&e.volume);
            }
        }
    }

    /// Insert or replace `name` as the most recently used entry.
    pub fn put(&mut self, name: String, entry: Entry) {
        if let Some(old) = self.lru.put(name, entry) {
            self.sub_usage(&old);
        }
        self.add_usage(&entry);
    }

    /// Mark `name` used now; false if it is not indexed.
    pub fn touch(&mut self, name: &str) -> bool {
        match self.lru.get_mut(name) {
            Some(e) => {
                e.used = now_millis();
                true
            }
            None => false,
        }
    }

    #[cfg(test)]
    pub fn contains(&self, name: &str) -> bool {
        self.lru.contains(name)
    }

    pub fn pop(&mut self, name: &str) -> Option<Entry> {
        let e = self.lru.pop(name)?;
        self.sub_usage(&e);
        Some(e)
    }

    /// Take entries out, least recently used first, until `need` bytes are
    /// chosen. With `fair_share`, entries of a volume that uses no more
    /// than its share are left alone, so a volume streaming through the
    /// cache cannot push out a small volume's working set (it makes room
    /// from its own pages, being the one over its share).
    pub fn take_victims(&mut self, need: u64, fair_share: Option<u64>) -> Vec<(String, Entry)> {
        let mut usage = self.usage.clone();
        let mut chosen = Vec::new();
        let mut bytes = 0;
        for (name, e) in self.lru.iter().rev() {
            if bytes >= need {
                break;
            }
            let used = usage.get(&e.volume).map_or(0, |u| u.bytes);
            let evictable = fair_share.is_none_or(|share| used > share);
            if evictable {
                bytes += e.size;
                if let Some(u) = usage.get_mut(&e.volume) {
                    u.bytes = u.bytes.saturating_sub(e.size);
                }
                chosen.push(name.clone());
            }
        }
        chosen
            .into_iter()
            .filter_map(|name| self.pop(&name).map(|e| (name, e)))
            .collect()
    }

    /// Replace the index with what a scan found on disk, keeping what this
    /// process knows better (its own, more precise, last-use times), in
    /// one order by last use.
    pub fn merge(&mut self, found: Vec<Found>) {
        let mut all: HashMap<String, Entry> =
            found.into_iter().map(|f| (f.name, f.entry)).collect();
        for (name, ours) in self.lru.iter() {
            // Gone from disk (evicted by another process): drop it.
            if let Some(on_disk) = all.get_mut(name) {
                on_disk.used = on_disk.used.max(ours.used);
            }
        }
        let mut ordered: Vec<(String, Entry)> = all.into_iter().collect();
        ordered.sort_by(|a, b| a.1.used.cmp(&b.1.used).then_with(|| a.0.cmp(&b.0)));
        *self = Index::default();
        for (name, entry) in ordered {
            self.put(name, entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(volume: u64, size: u64, used: u64) -> Entry {
        Entry {
            size,
            volume: VolumeTag(volume),
            used,
        }
    }

    #[test]
    fn tags_are_16_hex_digits_and_parse_back() {
        let t = VolumeTag::of("nfs://server/export", 1 << 20);
        assert_eq!(VolumeTag::parse(&t.to_string()), Some(t));
        assert_ne!(t, VolumeTag::of("nfs://server/export", 1 << 16));
        assert_eq!(VolumeTag::parse("ab"), None);
    }

    #[test]
    fn victims_spare_a_volume_within_its_fair_share() {
        let mut index = Index::default();
        // volume 2's two pages are the oldest; volume 1 streams 8 pages.
        index.put("b0".into(), entry(2, 10, 1));
        index.put("b1".into(), entry(2, 10, 2));
        for i in 0..8 {
            index.put(format!("a{i}"), entry(1, 10, 10 + i));
        }
        let names = |v: &[(String, Entry)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        let taken = index.take_victims(30, Some(50));
        assert_eq!(names(&taken), ["a0", "a1", "a2"]);
        assert_eq!(index.usage(VolumeTag(2)).bytes, 20);
        // Without fairness, plain LRU order.
        let taken = index.take_victims(10, None);
        assert_eq!(names(&taken), ["b0"]);
    }

    #[test]
    fn merge_orders_by_last_use_and_drops_what_is_gone() {
        let mut index = Index::default();
        index.put("mine".into(), entry(1, 10, 100));
        index.put("gone".into(), entry(1, 10, 50));
        index.merge(vec![
            Found {
                name: "mine".into(),
                entry: entry(1, 10, 5),
            },
            Found {
                name: "theirs".into(),
                entry: entry(2, 10, 60),
            },
        ]);
        assert!(!index.contains("gone"));
        assert_eq!(index.usage(VolumeTag(1)).entries, 1);
        // theirs (60) is older than mine (100): evicted first.
        let taken = index.take_victims(10, None);
        assert_eq!(taken[0].0, "theirs");
    }
}
