//! Page buffers: page-sized blocks in anonymous mappings of their own,
//! reused through a bounded free list, handed out as `Bytes`.
//!
//! Why not the heap: the page store and the local backend read one page
//! (1 MiB by default) per request, on many threads. Once glibc's adaptive
//! mmap threshold has risen past that size it serves such blocks from its
//! arenas and keeps tens of MiB of freed ones resident: a mount with its
//! 64 MiB memory tier peaked at 175-190 MiB. Mapping every block instead (a
//! fixed, lower threshold) kept memory close to use but cost a third of the
//! read throughput in page faults. Here a buffer is mapped (prefaulted) once
//! and comes back to the free list when the last `Bytes` of it is dropped;
//! beyond the list's bound it is unmapped, so memory no read holds goes back
//! to the system.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use memmap2::{MmapMut, MmapOptions};

/// Freed buffers kept for reuse, in bytes over all sizes.
const FREE_MAX_BYTES: usize = 32 << 20;

/// Mapped sizes are rounded up to a multiple of this after adding
/// [`HEADROOM`], so that a page (read from the backend) and a page file (a
/// page plus its header) share one size class: a free list filled with one
/// class while the other is asked for would map and unmap at every read.
const SIZE_CLASS: usize = 256 << 10;

/// Room for a page file's header (36 bytes, the object id, 4 bytes per
/// checksum block).
const HEADROOM: usize = 16 << 10;

/// The mapped size of a buffer of `len` bytes.
fn size_class(len: usize) -> usize {
    (len + HEADROOM).div_ceil(SIZE_CLASS) * SIZE_CLASS
}

/// Smaller buffers come from the heap, which serves them well.
const MIN_MAPPED: usize = 128 << 10;

/// What O_DIRECT needs offsets, lengths and memory aligned to (a page:
/// mapped buffers are page-aligned).
pub const DIRECT_ALIGN: usize = 4096;

/// Writes from this size on go to the disk with O_DIRECT where they can
/// (the S3 staging file, page files): below it, the system calls around a
/// write cost more than the copy into the page cache they spare. Buffers
/// this big are mapped, so aligned.
pub const DIRECT_MIN: usize = MIN_MAPPED;

/// Freed buffers of write parts kept for reuse, in bytes: five parts of the
/// default 16 MiB (four uploading, one filling), so that a streaming
/// writer maps no new memory. Without them every part (mapped afresh) cost
/// a third of the daemon's CPU in page faults on a VM.
const PART_FREE_MAX_BYTES: usize = 5 * (16 << 20) + 5 * SIZE_CLASS;

/// A freed part buffer not reused for this long goes back to the system.
const PART_IDLE: Duration = Duration::from_secs(2);

/// Mappings given back, by size, for reuse; at most `max_bytes` of them,
/// and with `idle`, none unused for longer than that.
struct Pool {
    free: parking_lot::Mutex<FreeList>,
    max_bytes: usize,
    idle: Option<Duration>,
}

#[derive(Default)]
struct FreeList {
    /// Mappings by size, each with when it was given back (oldest first).
    by_size: HashMap<usize, Vec<(MmapMut, Instant)>>,
    bytes: usize,
    /// A thread is unmapping idle mappings (pools with `idle`).
    trimming: bool,
}

/// The process's pool, shared by its mounts.
static POOL: LazyLock<Pool> = LazyLock::new(|| Pool::new(FREE_MAX_BYTES));

/// Buffers of the parts streaming writers send (see [`PageBuffer::for_part`]).
static PART_POOL: LazyLock<Pool> = LazyLock::new(|| Pool {
    idle: Some(PART_IDLE),
    ..Pool::new(PART_FREE_MAX_BYTES)
});

impl Pool {
    fn new(max_bytes: usize) -> Pool {
        Pool {
            free: Default::default(),
            max_bytes,
            idle: None,
        }
    }

    fn take(&self, size: usize) -> Option<MmapMut> {
        {
            let mut free = self.free.lock();
            if let Some((map, _)) = free.by_size.get_mut(&size).and_then(Vec::pop) {
                free.bytes -= size;
                return Some(map);
            }
        }
        // Not prefaulted: only the pages a buffer's uses touch become
        // resident (the headroom mostly stays untouched), and they stay so
        // while it is reused.
        match MmapOptions::new().len(size).map_anon() {
            Ok(map) => Some(map),
            Err(e) => {
                tracing::debug!(error = %e, size, "mapping a page buffer failed; using the heap");
                None
            }
        }
    }

    fn give_back(&'static self, map: MmapMut) {
        let size = map.len();
        let mut free = self.free.lock();
        if free.bytes + size <= self.max_bytes {
            free.bytes += size;
            free.by_size
                .entry(size)
                .or_default()
                .push((map, Instant::now()));
            if let (Some(idle), false) = (self.idle, free.trimming) {
                free.trimming = self.start_trimming(idle);
            }
        }
        // else: dropped here, unmapped.
    }

    /// Unmap what was not reused for `idle`, every half of it, until the
    /// free list is empty. False if no thread could be started (the
    /// mappings then wait for the next one given back).
    fn start_trimming(&'static self, idle: Duration) -> bool {
        let started = std::thread::Builder::new()
            .name("buffer-trim".into())
            .spawn(move || loop {
                std::thread::sleep(idle / 2);
                if !self.unmap_idle(idle) {
                    return;
                }
            });
        started.is_ok()
    }

    /// Unmap the mappings given back more than `idle` ago; false (and the
    /// trimming ends) once none are left.
    fn unmap_idle(&self, idle: Duration) -> bool {
        let mut unmapped = Vec::new();
        let mut free = self.free.lock();
        let mut bytes = free.bytes;
        for maps in free.by_size.values_mut() {
            let stale = maps.partition_point(|(_, freed)| freed.elapsed() >= idle);
            for (map, _) in maps.drain(..stale) {
                bytes -= map.len();
                unmapped.push(map);
            }
        }
        free.bytes = bytes;
        free.trimming = bytes > 0;
        let trimming = free.trimming;
        drop(free);
        // (The munmaps happen here, outside the lock.)
        drop(unmapped);
        trimming
    }
}

enum Storage {
    Mapped(MmapMut, &'static Pool),
    Heap(Vec<u8>),
}

/// A buffer of `len` bytes to read into. Its contents are not cleared
/// between uses: fill all of it, or `truncate` it to what was filled.
pub struct PageBuffer {
    storage: Storage,
    len: usize,
}

impl PageBuffer {
    pub fn new(len: usize) -> PageBuffer {
        PageBuffer::from_pool(&POOL, len)
    }

    /// A buffer for a part of a streaming write: from a pool that keeps a
    /// writer's few part buffers mapped between parts (they are far bigger
    /// than pages, and mapping each afresh costs its page faults).
    pub fn for_part(len: usize) -> PageBuffer {
        PageBuffer::from_pool(&PART_POOL, len)
    }

    fn from_pool(pool: &'static Pool, len: usize) -> PageBuffer {
        let storage = match len >= MIN_MAPPED {
            true => pool
                .take(size_class(len))
                .map(|map| Storage::Mapped(map, pool)),
            false => None,
        };
        PageBuffer {
            storage: storage.unwrap_or_else(|| Storage::Heap(vec![0; len])),
            len,
        }
    }

    /// Up to `len` bytes of `file` from `offset` (fewer at its end).
    pub fn read_at(file: &File, offset: u64, len: usize) -> io::Result<PageBuffer> {
        let mut buf = PageBuffer::new(len);
        let mut filled = 0;
        while filled < len {
            match file.read_at(&mut buf.as_mut_slice()[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub fn as_slice(&self) -> &[u8] {
        match &self.storage {
            Storage::Mapped(map, _) => &map[..self.len],
            Storage::Heap(vec) => &vec[..self.len],
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.storage {
            Storage::Mapped(map, _) => &mut map[..self.len],
            Storage::Heap(vec) => &mut vec[..self.len],
        }
    }

    /// The buffer as `Bytes`, without a copy; it returns to the free list
    /// when the last of them (and their slices) is dropped.
    pub fn freeze(self) -> Bytes {
        match self.storage {
            Storage::Heap(mut vec) => {
                vec.truncate(self.len);
                Bytes::from(vec)
            }
            Storage::Mapped(map, pool) => Bytes::from_owner(Returning {
                map: Some(map),
                len: self.len,
                pool,
            }),
        }
    }
}

/// Owner of a frozen mapped buffer (see `PageBuffer::freeze`).
struct Returning {
    map: Option<MmapMut>,
    len: usize,
    pool: &'static Pool,
}

impl AsRef<[u8]> for Returning {
    fn as_ref(&self) -> &[u8] {
        self.map.as_ref().map_or(&[], |map| &map[..self.len])
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let Some(map) = self.map.take() {
            self.pool.give_back(map);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of the test's own (the process's is shared by other tests).
    fn pool(max_bytes: usize) -> &'static Pool {
        Box::leak(Box::new(Pool::new(max_bytes)))
    }

    fn free_of(pool: &Pool, size: usize) -> usize {
        pool.free.lock().by_size.get(&size).map_or(0, Vec::len)
    }

    #[test]
    fn a_frozen_buffer_returns_to_the_free_list_when_its_last_slice_drops() {
        let pool = pool(FREE_MAX_BYTES);
        let len = 3 * SIZE_CLASS + 5;
        let size = size_class(len);
        assert_eq!(size, 4 * SIZE_CLASS);
        let mut buf = PageBuffer::from_pool(pool, len);
        buf.as_mut_slice().fill(7);
        buf.truncate(len - 5);
        let bytes = buf.freeze();
        assert_eq!(bytes.len(), len - 5);
        assert!(bytes.iter().all(|&b| b == 7));
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(free_of(pool, size), 0, "a slice still holds it");
        assert_eq!(&slice[..], &[7; 10]);
        drop(slice);
        assert_eq!(free_of(pool, size), 1);
        // Reused: same size class, stale contents until filled.
        let again = PageBuffer::from_pool(pool, len);
        assert_eq!(free_of(pool, size), 0);
        assert_eq!(again.len(), len);
        assert!(again.as_slice().iter().all(|&b| b == 7));
    }

    #[test]
    fn a_page_and_its_page_file_share_a_size_class() {
        for page in [256 << 10, 1 << 20, 4 << 20, 64 << 20] {
            assert_eq!(size_class(page), size_class(page + 36 + 200 + 4 * 64));
            assert!(size_class(page) - page <= SIZE_CLASS + HEADROOM);
        }
    }

    #[test]
    fn small_buffers_come_from_the_heap_and_the_free_list_is_bounded() {
        let pool = pool(4 * size_class(1 << 20));
        let small = PageBuffer::from_pool(pool, 4096);
        assert!(matches!(small.storage, Storage::Heap(_)));
        assert_eq!(small.freeze().len(), 4096);
        let held: Vec<Bytes> = (0..6)
            .map(|_| PageBuffer::from_pool(pool, 1 << 20).freeze())
            .collect();
        drop(held);
        assert_eq!(free_of(pool, size_class(1 << 20)), 4, "bounded");
        assert_eq!(pool.free.lock().bytes, 4 * size_class(1 << 20));
    }

    #[test]
    fn the_part_pool_keeps_five_default_parts() {
        let part = 16 << 20; // the S3 default part size
        assert!(5 * size_class(part) <= PART_FREE_MAX_BYTES);
        assert!(6 * size_class(part) > PART_FREE_MAX_BYTES);
    }

    /// Buffers given back are reused while fresh and unmapped once idle.
    #[test]
    fn a_pool_with_an_idle_time_unmaps_what_is_not_reused() {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            idle: Some(Duration::from_millis(200)),
            ..Pool::new(64 << 20)
        }));
        let len = 4 << 20;
        let held: Vec<Bytes> = (0..3)
            .map(|_| PageBuffer::from_pool(pool, len).freeze())
            .collect();
        drop(held);
        assert_eq!(free_of(pool, size_class(len)), 3);
        let again = PageBuffer::from_pool(pool, len).freeze();
        assert_eq!(free_of(pool, size_class(len)), 2, "reused, not mapped");
        drop(again);
        assert_eq!(free_of(pool, size_class(len)), 3);
        let start = Instant::now();
        while pool.free.lock().bytes > 0 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(pool.free.lock().bytes, 0);
        assert_eq!(free_of(pool, size_class(len)), 0);
        // Given back again later: trimmed again (a new trimming thread).
        drop(PageBuffer::from_pool(pool, len).freeze());
        assert_eq!(free_of(pool, size_class(len)), 1);
        let start = Instant::now();
        while pool.free.lock().bytes > 0 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(pool.free.lock().bytes, 0);
    }
}
