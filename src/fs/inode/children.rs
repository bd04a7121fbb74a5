//! The children map: every name of every directory, grouped by directory,
//! so a name is found without building a key (a listing looks up each of
//! its entries) and one directory's names are walked without the others'.

use std::collections::HashMap;

use foldhash::fast::RandomState;

#[derive(Default)]
pub struct Children {
    by_dir: HashMap<u64, HashMap<String, u64, RandomState>, RandomState>,
}

impl Children {
    pub fn get(&self, dir: u64, name: &str) -> Option<u64> {
        self.by_dir.get(&dir)?.get(name).copied()
    }

    pub fn contains(&self, dir: u64, name: &str) -> bool {
        self.get(dir, name).is_some()
    }

    pub fn insert(&mut self, dir: u64, name: &str, ino: u64) {
        self.by_dir
            .entry(dir)
            .or_default()
            .insert(name.to_string(), ino);
    }

    pub fn remove(&mut self, dir: u64, name: &str) -> Option<u64> {
        let names = self.by_dir.get_mut(&dir)?;
        let ino = names.remove(name)?;
        if names.is_empty() {
            self.by_dir.remove(&dir);
        }
        Some(ino)
    }

    /// The names in `dir` and their inodes.
    pub fn of(&self, dir: u64) -> impl Iterator<Item = (&str, u64)> {
        self.by_dir
            .get(&dir)
            .into_iter()
            .flat_map(|names| names.iter().map(|(n, ino)| (n.as_str(), *ino)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_per_directory_and_empty_directories_go() {
        let mut c = Children::default();
        c.insert(1, "a", 10);
        c.insert(1, "b", 11);
        c.insert(2, "a", 20);
        assert_eq!(c.get(1, "a"), Some(10));
        assert_eq!(c.get(2, "a"), Some(20));
        assert!(!c.contains(3, "a"));
        let mut in_one: Vec<_> = c.of(1).collect();
        in_one.sort();
        assert_eq!(in_one, [("a", 10), ("b", 11)]);
        assert_eq!(c.remove(2, "a"), Some(20));
        assert_eq!(c.remove(2, "a"), None);
        assert!(!c.by_dir.contains_key(&2), "an empty directory is dropped");
        assert_eq!(c.of(2).count(), 0);
    }
}
