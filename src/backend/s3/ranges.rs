//! A set of byte ranges: which parts of a staged copy-on-write file already
//! hold their content (written by the application or fetched from S3).

use std::ops::Range;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RangeSet {
    /// Sorted, non-overlapping, non-adjacent, non-empty.
    ranges: Vec<Range<u64>>,
}

impl RangeSet {
    /// The ranges, in order (for handing a write session to another process).
    pub fn to_pairs(&self) -> Vec<(u64, u64)> {
        self.ranges.iter().map(|r| (r.start, r.end)).collect()
    }

    /// A set from pairs, normalised like any insert.
    pub fn from_pairs(pairs: &[(u64, u64)]) -> RangeSet {
        let mut set = RangeSet::default();
        for (start, end) in pairs {
            if start < end {
                set.insert(*start..*end);
            }
        }
        set
    }

    pub fn insert(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        let (mut start, mut end) = (r.start, r.end);
        let mut merged = Vec::with_capacity(self.ranges.len() + 1);
        let mut placed = false;
        for cur in self.ranges.drain(..) {
            if cur.end < start {
                merged.push(cur);
            } else if cur.start > end {
                if !placed {
                    merged.push(start..end);
                    placed = true;
                }
                merged.push(cur);
            } else {
                start = start.min(cur.start);
                end = end.max(cur.end);
            }
        }
        if !placed {
            merged.push(start..end);
        }
        self.ranges = merged;
    }

    /// Parts of `r` not in the set, in order.
    pub fn missing(&self, r: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut pos = r.start;
        for cur in &self.ranges {
            if cur.end <= pos {
                continue;
            }
            if cur.start >= r.end {
                break;
            }
            if cur.start > pos {
                out.push(pos..cur.start.min(r.end));
            }
            pos = pos.max(cur.end);
            if pos >= r.end {
                break;
            }
        }
        if pos < r.end {
            out.push(pos..r.end);
        }
        out
    }

    /// Forget everything at or beyond `limit`.
    pub fn truncate(&mut self, limit: u64) {
        self.ranges.retain(|r| r.start < limit);
        if let Some(last) = self.ranges.last_mut() {
            last.end = last.end.min(limit);
        }
    }

    /// True if `[0, end)` is one covered range.
    pub fn covers_prefix(&self, end: u64) -> bool {
        end == 0
            || self
                .ranges
                .first()
                .is_some_and(|r| r.start == 0 && r.end >= end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_merges_and_missing_finds_gaps() {
        let mut s = RangeSet::default();
        s.insert(10..20);
        s.insert(30..40);
        assert_eq!(s.missing(0..50), vec![0..10, 20..30, 40..50]);
        s.insert(20..30); // adjacent on both sides
        assert_eq!(s.missing(0..50), vec![0..10, 40..50]);
        s.insert(5..12);
        assert_eq!(s.missing(0..50), vec![0..5, 40..50]);
        assert_eq!(s.missing(12..38), Vec::<Range<u64>>::new());
        s.insert(0..100);
        assert!(s.covers_prefix(100));
        assert!(!s.covers_prefix(101));
    }

    #[test]
    fn truncate_cuts() {
        let mut s = RangeSet::default();
        s.insert(0..10);
        s.insert(20..30);
        s.truncate(25);
        assert_eq!(s.missing(0..30), vec![10..20, 25..30]);
        s.truncate(5);
        assert_eq!(s.missing(0..30), vec![5..30]);
    }
}
