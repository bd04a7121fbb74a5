//! A sequential writer's current part, held in memory as well as in the
//! staging file.
//!
//! Every write reaches the staging file before it is acknowledged: a
//! successor process (upgrade, crash) continues from that file alone. But
//! reading a part back from it to upload it costs a copy into fresh memory,
//! and writing it through the page cache costs fresh page-cache pages; on a
//! VM that hands freed memory back to its host each fresh page is a fault
//! (measured here: 1 GiB written through the page cache took 2.3 s of
//! system time, with O_DIRECT 0.2 s). So a sequential writer's bytes are
//! also copied into a page-aligned buffer of one part: large aligned writes
//! go to the staging file from there with O_DIRECT, and the full part is
//! uploaded from it. The buffers come from the page-buffer pool, so their
//! pages stay resident from one part to the next.
//!
//! The memory is a copy of what the staging file holds for its range;
//! anything that could make the two differ (a write overlapping it, a
//! truncate below its end) drops it, and that part is read back from the
//! file instead.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use super::ranges::RangeSet;
use crate::buffers::{PageBuffer, DIRECT_ALIGN, DIRECT_MIN};

/// Files shorter than this never take a part buffer (a small file costs
/// what it did before); a writer reaching it catches up by reading back the
/// part's start.
const MIN_END: u64 = 1 << 20;

/// Most bytes read back from the staging file to start a part in memory.
const MAX_CATCH_UP: u64 = 4 << 20;

/// Part buffers the process holds at once (filling, full, uploading); a
/// streaming writer holds at most two plus its uploads in flight. Beyond
/// that writers upload from the staging file.
const MAX_BUFFERS: usize = 12;

static BUFFERS_HELD: AtomicUsize = AtomicUsize::new(0);

/// One of the `MAX_BUFFERS`, given back when dropped.
struct Slot;

impl Slot {
    fn acquire() -> Option<Slot> {
        BUFFERS_HELD
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < MAX_BUFFERS).then_some(held + 1)
            })
            .ok()
            .map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        BUFFERS_HELD.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A full part's bytes and the slot they hold until the upload drops them.
struct Held {
    data: Bytes,
    _slot: Slot,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

struct Filling {
    start: u64,
    buf: PageBuffer,
    filled: usize,
    slot: Slot,
}

impl Filling {
    fn range(&self) -> Range<u64> {
        self.start..self.start + self.filled as u64
    }

    fn freeze(self) -> (u64, Bytes) {
        let Filling {
            start,
            mut buf,
            filled,
            slot,
        } = self;
        buf.truncate(filled);
        let data = Bytes::from_owner(Held {
            data: buf.freeze(),
            _slot: slot,
        });
        (start, data)
    }
}

pub struct Tail {
    part_size: u64,
    filling: Option<Filling>,
    /// A full part not handed to its upload yet.
    full: Option<(u64, Bytes)>,
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

impl Tail {
    pub fn new(part_size: u64) -> Tail {
        Tail {
            part_size,
            filling: None,
            full: None,
        }
    }

    /// `[offset, offset + len)` cut at part boundaries: (offset, range of
    /// the data) per piece.
    pub fn split(&self, offset: u64, len: usize) -> Vec<(u64, Range<usize>)> {
        let mut pieces = Vec::new();
        let mut done = 0usize;
        while done < len {
            let at = offset + done as u64;
            let to_boundary = self.part_size - at % self.part_size;
            let n = (len - done).min(usize::try_from(to_boundary).unwrap_or(usize::MAX));
            pieces.push((at, done..done + n));
            done += n;
        }
        pieces
    }

    /// Copy `data` (at `offset`, within one part) into memory if it
    /// continues the part being filled or can start one, and return where
    /// it is there; `commit` once the staging file holds it too. A write
    /// that cannot be held drops whatever memory it overlaps.
    pub fn stage(
        &mut self,
        offset: u64,
        data: &[u8],
        present: &RangeSet,
        file: &File,
    ) -> Option<&[u8]> {
        let written = offset..offset + data.len() as u64;
        let continues = self
            .filling
            .as_ref()
            .is_some_and(|f| f.range().end == offset && written.end <= f.start + self.part_size);
        if !continues {
            self.forget(&written);
            self.filling = self.start_at(offset, written.end, present, file);
        }
        let f = self.filling.as_mut()?;
        let at = f.filled;
        let place = &mut f.buf.as_mut_slice()[at..at + data.len()];
        place.copy_from_slice(data);
        Some(place)
    }

    /// A new part in memory for a write at `offset` up to `end`, when the
    /// part's bytes before it are written and few enough to read back.
    fn start_at(
        &mut self,
        offset: u64,
        end: u64,
        present: &RangeSet,
        file: &File,
    ) -> Option<Filling> {
        let start = offset - offset % self.part_size;
        let catch_up = offset - start;
        if end < MIN_END || catch_up > MAX_CATCH_UP {
            return None;
        }
        if !present.missing(start..offset).is_empty() {
            return None;
        }
        let slot = Slot::acquire()?;
        let mut buf = PageBuffer::for_part(usize::try_from(self.part_size).ok()?);
        let catch_up = catch_up as usize;
        if catch_up > 0 {
            match file.read_exact_at(&mut buf.as_mut_slice()[..catch_up], start) {
                Ok(()) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "not holding this part in memory");
                    return None;
                }
            }
        }
        Some(Filling {
            start,
            buf,
            filled: catch_up,
            slot,
        })
    }

    /// The staged bytes (`len` of them) are in the staging file too.
    pub fn commit(&mut self, len: usize) {
        let Some(f) = self.filling.as_mut() else {
            return;
        };
        f.filled += len;
        if f.filled as u64 >= self.part_size {
            self.full = self.filling.take().map(Filling::freeze);
        }
    }

    /// Drop the memory of anything in `range` (it is being changed).
    pub fn forget(&mut self, range: &Range<u64>) {
        if self
            .filling
            .as_ref()
            .is_some_and(|f| overlaps(&f.range(), range))
        {
            self.filling = None;
        }
        let part = self.part_size;
        if self
            .full
            .as_ref()
            .is_some_and(|(start, _)| overlaps(&(*start..*start + part), range))
        {
            self.full = None;
        }
    }

    /// Drop the memory of everything at or beyond `size` (a truncate).
    pub fn truncate(&mut self, size: u64) {
        self.forget(&(size..u64::MAX));
    }

    pub fn clear(&mut self) {
        self.filling = None;
        self.full = None;
    }

    /// The bytes `[start, start + len)` if memory holds exactly them: a
    /// full part, or the part being filled (the last one, at publish).
    pub fn take(&mut self, start: u64, len: u64) -> Option<Bytes> {
        if self
            .full
            .as_ref()
            .is_some_and(|(s, data)| *s == start && data.len() as u64 == len)
        {
            return self.full.take().map(|(_, data)| data);
        }
        if self
            .filling
            .as_ref()
            .is_some_and(|f| f.range() == (start..start + len))
        {
            return self.filling.take().map(|f| f.freeze().1);
        }
        None
    }
}

/// Whether a write of `data` at `offset` may go to the staging file with
/// O_DIRECT: large, and aligned in the file and in memory.
pub fn direct_fits(offset: u64, data: &[u8]) -> bool {
    data.len() >= DIRECT_MIN
        && data.len().is_multiple_of(DIRECT_ALIGN)
        && offset.is_multiple_of(DIRECT_ALIGN as u64)
        && (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PART: u64 = 8 << 20;

    fn staging() -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("s"))
            .unwrap();
        (dir, file)
    }

    /// Write like write_at does: the file, then memory.
    fn write(tail: &mut Tail, present: &mut RangeSet, file: &File, offset: u64, data: &[u8]) {
        for (at, range) in tail.split(offset, data.len()) {
            let piece = &data[range];
            file.write_all_at(piece, at).unwrap();
            let staged = tail.stage(at, piece, present, file).is_some();
            if staged {
                tail.commit(piece.len());
            }
            present.insert(at..at + piece.len() as u64);
        }
    }

    fn pattern(offset: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| ((offset + i) % 251) as u8)
            .collect()
    }

    #[test]
    fn a_sequential_writer_gets_each_full_part_from_memory_equal_to_the_file() {
        let (_dir, file) = staging();
        let mut tail = Tail::new(PART);
        let mut present = RangeSet::default();
        // Writes of an odd size: pieces straddle the part boundaries.
        let step = 700_001usize;
        let mut offset = 0u64;
        while offset < 2 * PART + 5 {
            write(
                &mut tail,
                &mut present,
                &file,
                offset,
                &pattern(offset, step),
            );
            offset += step as u64;
        }
        for start in [0, PART] {
            let part = tail.take(start, PART);
            if start == 0 {
                // Part 0 was full before part 1 started: only the latest
                // full part waits for its upload.
                assert!(part.is_none());
                continue;
            }
            let part = part.expect("the second part in memory");
            assert_eq!(&part[..], &pattern(PART, PART as usize)[..]);
        }
        let end = offset;
        let last = tail.take(2 * PART, end - 2 * PART).expect("the last part");
        assert_eq!(&last[..], &pattern(2 * PART, (end - 2 * PART) as usize)[..]);
    }

    #[test]
    fn a_write_overlapping_the_memory_drops_it_and_small_files_take_none() {
        let (_dir, file) = staging();
        let mut tail = Tail::new(PART);
        let mut present = RangeSet::default();
        write(&mut tail, &mut present, &file, 0, &pattern(0, 4096));
        assert!(
            tail.take(0, 4096).is_none(),
            "a small file stays out of memory"
        );
        let mb = 1 << 20;
        write(&mut tail, &mut present, &file, 4096, &pattern(4096, mb));
        assert!(
            tail.filling.is_some(),
            "past 1 MiB the part is held, caught up"
        );
        write(&mut tail, &mut present, &file, 10, b"rewritten");
        assert!(tail.filling.is_none() && tail.full.is_none());
        // A writer appending again starts over from the file's bytes.
        let at = 4096 + mb as u64;
        write(&mut tail, &mut present, &file, at, &pattern(at, 4096));
        let held = tail.take(0, at + 4096).expect("held again");
        let mut want = pattern(0, (at + 4096) as usize);
        want[10..19].copy_from_slice(b"rewritten");
        assert_eq!(&held[..], &want[..]);
    }

    #[test]
    fn a_truncate_below_the_memory_drops_it() {
        let (_dir, file) = staging();
        let mut tail = Tail::new(PART);
        let mut present = RangeSet::default();
        write(&mut tail, &mut present, &file, 0, &pattern(0, 2 << 20));
        tail.truncate(3 << 20);
        assert!(
            tail.filling.is_some(),
            "a truncate beyond it changes nothing held"
        );
        tail.truncate(1 << 20);
        assert!(tail.take(0, 1 << 20).is_none() && tail.filling.is_none());
    }

    #[test]
    fn a_gap_before_the_write_keeps_it_out_of_memory() {
        let (_dir, file) = staging();
        let mut tail = Tail::new(PART);
        let present = RangeSet::default();
        let at = 2 << 20;
        assert!(tail
            .stage(at, &pattern(at, 4096), &present, &file)
            .is_none());
    }

    #[test]
    fn direct_writes_need_large_aligned_pieces() {
        let buf = PageBuffer::new(1 << 20);
        let data = buf.as_slice();
        assert!(direct_fits(4096, data));
        assert!(!direct_fits(100, data));
        assert!(!direct_fits(0, &data[..4096]));
        assert!(!direct_fits(0, &data[1..(256 << 10) + 1]));
    }
}
