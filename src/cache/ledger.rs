//! The usage ledger: one small file per cache directory holding the bytes
//! used by all page files, updated under an exclusive file lock. Every
//! process sharing the directory (one per mounted volume on a node) reserves
//! space here before writing a page, so together they never overshoot the
//! quota by more than one page per concurrent writer.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub struct Ledger {
    file: File,
}

/// Holds the exclusive lock; released on drop.
pub struct LedgerGuard<'a> {
    file: &'a File,
}

impl Ledger {
    pub fn open(dir: &Path) -> io::Result<Ledger> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("usage"))?;
        Ok(Ledger { file })
    }

    pub fn lock(&self) -> io::Result<LedgerGuard<'_>> {
        self.file.lock()?;
        Ok(LedgerGuard { file: &self.file })
    }

    /// Reserve `bytes` if the total stays within `limit`.
    pub fn reserve(&self, bytes: u64, limit: u64) -> io::Result<bool> {
        let guard = self.lock()?;
        let total = guard.total()?;
        if total.saturating_add(bytes) > limit {
            return Ok(false);
        }
        guard.set(total + bytes)?;
        Ok(true)
    }

    pub fn release(&self, bytes: u64) -> io::Result<()> {
        let guard = self.lock()?;
        let total = guard.total()?;
        guard.set(total.saturating_sub(bytes))
    }

    pub fn total(&self) -> io::Result<u64> {
        self.lock()?.total()
    }
}

impl LedgerGuard<'_> {
    /// A missing or damaged ledger reads as 0; the next index rebuild
    /// rewrites it from the files on disk.
    pub fn total(&self) -> io::Result<u64> {
        let mut buf = [0u8; 8];
        match self.file.read_exact_at(&mut buf, 0) {
            Ok(()) => Ok(u64::from_le_bytes(buf)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
            Err(e) => Err(e),
        }
    }

    pub fn set(&self, total: u64) -> io::Result<()> {
        self.file.write_all_at(&total.to_le_bytes(), 0)
    }
}

impl Drop for LedgerGuard<'_> {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_respect_the_limit_across_handles() {
        let dir = tempfile::tempdir().unwrap();
        let a = Ledger::open(dir.path()).unwrap();
        let b = Ledger::open(dir.path()).unwrap();
        assert!(a.reserve(60, 100).unwrap());
        assert!(
            !b.reserve(60, 100).unwrap(),
            "second process must see the first's usage"
        );
        assert!(b.reserve(40, 100).unwrap());
        a.release(60).unwrap();
        assert_eq!(b.total().unwrap(), 40);
    }
}
