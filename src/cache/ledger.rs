//! The usage ledger: one small file per cache directory holding the bytes
//! used by all page files, updated under an exclusive file lock. Every
//! process sharing the directory (one per mounted volume on a node) reserves
//! space here before writing a page, so together they never overshoot the
//! quota by more than one page per concurrent writer.
//!
//! Eviction is serialized across the same processes and their threads
//! ([`Ledger::evicting`]): evictors that each computed "total minus target"
//! from the same total would together remove several times what was needed,
//! and a volume pushed below its fair share that way makes the next round
//! take another volume's pages.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

pub struct Ledger {
    file: File,
    /// `evict.lock`: held (with this mutex) by the one evictor of the
    /// directory. A file lock belongs to the open file, so it cannot also
    /// keep this process's threads apart: the mutex does.
    evict: Mutex<File>,
}

/// The right to evict, in this process and the directory; released on drop.
pub struct EvictGuard<'a> {
    file: MutexGuard<'a, File>,
}

impl Drop for EvictGuard<'_> {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
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
        let evict = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("evict.lock"))?;
        Ok(Ledger {
            file,
            evict: Mutex::new(evict),
        })
    }

    /// Become the directory's one evictor, waiting up to `wait` for another
    /// (in this or another process) to finish; `None` if it did not. The
    /// caller must read the total again afterwards: the other evictor may
    /// have made the room already.
    pub fn evicting(&self, wait: Duration) -> Option<EvictGuard<'_>> {
        let deadline = Instant::now() + wait;
        let file = self.evict.try_lock_until(deadline)?;
        loop {
            match file.try_lock() {
                Ok(()) => return Some(EvictGuard { file }),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                // Cannot lock (or waited long enough): evicting without the
                // lock only risks evicting more than needed, never a wrong
                // total, but waiting for ever would stall a reader.
                Err(TryLockError::WouldBlock) => return None,
                Err(TryLockError::Error(_)) => return Some(EvictGuard { file }),
            }
        }
    }

    pub fn lock(&self) -> io::Result<LedgerGuard<'_>> {
        self.file.lock()?;
        Ok(LedgerGuard { file: &self.file })
    }

    /// Reserve `bytes` if the total stays within `limit`: the total with
    /// them, or `None` if there is no room.
    pub fn reserve(&self, bytes: u64, limit: u64) -> io::Result<Option<u64>> {
        let guard = self.lock()?;
        let total = guard.total()?;
        if total.saturating_add(bytes) > limit {
            return Ok(None);
        }
        guard.set(total + bytes)?;
        Ok(Some(total + bytes))
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
        assert_eq!(a.reserve(60, 100).unwrap(), Some(60));
        assert_eq!(
            b.reserve(60, 100).unwrap(),
            None,
            "second process must see the first's usage"
        );
        assert_eq!(b.reserve(40, 100).unwrap(), Some(100));
        a.release(60).unwrap();
        assert_eq!(b.total().unwrap(), 40);
    }

    #[test]
    fn one_evictor_at_a_time_across_handles_and_threads() {
        let dir = tempfile::tempdir().unwrap();
        let a = Ledger::open(dir.path()).unwrap();
        let b = Ledger::open(dir.path()).unwrap();
        let held = a.evicting(Duration::ZERO).expect("free at first");
        assert!(
            b.evicting(Duration::from_millis(20)).is_none(),
            "other process"
        );
        assert!(
            a.evicting(Duration::from_millis(20)).is_none(),
            "other thread"
        );
        drop(held);
        assert!(b.evicting(Duration::ZERO).is_some());
    }
}
