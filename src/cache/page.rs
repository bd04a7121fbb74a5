//! Page identity and the on-disk page file format.
//!
//! Version 2 (written):
//! ```text
//! magic "CCHLPG02" | key_len u32 | key bytes | index u64 | data_len u32
//! | block_size u32 | crc u32 per block of data | header_crc u32 | data
//! ```
//! Version 1 (still read):
//! ```text
//! magic "CCHLPG01" | key_len u32 | key bytes | index u64 | data_len u32
//! | data_crc u32 | header_crc u32 | data
//! ```
//! All integers little endian. `header_crc` covers everything before it
//! (in v2 including the block crcs), so a torn or foreign file is recognised
//! before its data is trusted. v2 checksums the data per block so that a
//! small read verifies (and reads from disk) only the blocks it touches
//! instead of the whole page.

use std::os::unix::fs::FileExt;

/// Identifies one page of one version of one object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageKey {
    /// Backend identity, e.g. `file:///srv/data`.
    pub source: String,
    /// Path relative to the volume root.
    pub path: String,
    /// Version token of the object the page was read from.
    pub version: String,
    pub index: u64,
}

impl PageKey {
    /// The key as stored in the page header (index stored separately).
    pub(crate) fn object_id(&self) -> String {
        format!("{}\0{}\0{}", self.source, self.path, self.version)
    }

    /// File name stem: hash of the full key, hex.
    pub fn file_stem(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(self.object_id().as_bytes());
        hasher.update(&self.index.to_le_bytes());
        hasher.finalize().to_hex().to_string()
    }

    /// File name stem of the whole object (all pages), for whole files.
    pub fn object_stem(&self) -> String {
        blake3::hash(self.object_id().as_bytes())
            .to_hex()
            .to_string()
    }

    /// The same object's page `index`.
    pub fn with_index(&self, index: u64) -> PageKey {
        PageKey {
            index,
            ..self.clone()
        }
    }
}

const MAGIC_V1: &[u8; 8] = b"CCHLPG01";
const MAGIC_V2: &[u8; 8] = b"CCHLPG02";

/// Data checksum granularity of pages written now. A 4 KiB read of a page
/// reads and verifies one block: small enough that random reads cost little
/// more than their own size, large enough that a 1 MiB page has a small
/// header (64 crcs).
pub const BLOCK_SIZE: u32 = 16 << 10;

/// First read of a page file in [`read_range`]: enough for the whole v2
/// header of usual pages (key + one crc per block), so it takes one pread.
const HEADER_PREFETCH: usize = 2048;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageFormatError {
    #[error("page file is truncated")]
    Truncated,
    #[error("page file has a bad magic number")]
    BadMagic,
    #[error("page header checksum mismatch")]
    HeaderChecksum,
    #[error("page belongs to another key (hash collision or foreign file)")]
    WrongKey,
    #[error("page data checksum mismatch")]
    DataChecksum,
}

/// Why [`read_range`] returned no data.
#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    /// The file is not an intact page of the key: drop it.
    #[error(transparent)]
    Format(#[from] PageFormatError),
    /// Reading failed (the file may be fine): read from the backend.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Encode a page file (always the current version, v2).
pub fn encode(key: &PageKey, data: &[u8]) -> Vec<u8> {
    encode_with_block(key, data, BLOCK_SIZE)
}

pub(crate) fn encode_with_block(key: &PageKey, data: &[u8], block_size: u32) -> Vec<u8> {
    let id = key.object_id();
    let blocks = data.chunks(block_size.max(1) as usize);
    let mut out = Vec::with_capacity(36 + id.len() + 4 * blocks.len() + data.len());
    out.extend_from_slice(MAGIC_V2);
    out.extend_from_slice(&(id.len() as u32).to_le_bytes());
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(&key.index.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&block_size.max(1).to_le_bytes());
    for block in blocks {
        out.extend_from_slice(&crc32c::crc32c(block).to_le_bytes());
    }
    let header_crc = crc32c::crc32c(&out);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// The v1 format, for tests of reading files written by older versions.
#[cfg(test)]
pub(crate) fn encode_v1(key: &PageKey, data: &[u8]) -> Vec<u8> {
    let id = key.object_id();
    let mut out = Vec::with_capacity(36 + id.len() + data.len());
    out.extend_from_slice(MAGIC_V1);
    out.extend_from_slice(&(id.len() as u32).to_le_bytes());
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(&key.index.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    let header_crc = crc32c::crc32c(&out);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(data);
    out
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PageFormatError> {
        let end = self.at.checked_add(n).ok_or(PageFormatError::Truncated)?;
        let slice = self
            .buf
            .get(self.at..end)
            .ok_or(PageFormatError::Truncated)?;
        self.at = end;
        Ok(slice)
    }

    fn u32(&mut self) -> Result<u32, PageFormatError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, PageFormatError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

/// A verified v2 header (the data is not verified yet).
struct HeaderV2<'a> {
    data_len: usize,
    block_size: usize,
    crcs: &'a [u8],
    /// Where the data starts in the file.
    data_at: usize,
}

impl HeaderV2<'_> {
    fn block_crc(&self, block: usize) -> u32 {
        let b = &self.crcs[block * 4..block * 4 + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Verify `data`, the file's data from the start of block `first`.
    fn verify_blocks(&self, first: usize, data: &[u8]) -> Result<(), PageFormatError> {
        for (i, block) in data.chunks(self.block_size).enumerate() {
            if crc32c::crc32c(block) != self.block_crc(first + i) {
                return Err(PageFormatError::DataChecksum);
            }
        }
        Ok(())
    }
}

/// Parse and verify the v2 header at the start of `buf` (magic already
/// checked). `Truncated` if `buf` ends inside the header: the caller may
/// retry with more of the file.
fn header_v2<'a>(key: &PageKey, buf: &'a [u8]) -> Result<HeaderV2<'a>, PageFormatError> {
    let mut r = Reader { buf, at: 0 };
    r.take(MAGIC_V2.len())?;
    let id_len = r.u32()? as usize;
    let id = r.take(id_len)?;
    let index = r.u64()?;
    let data_len = r.u32()? as usize;
    let block_size = r.u32()? as usize;
    if block_size == 0 {
        // Would divide by zero below; no writer produces it.
        return Err(PageFormatError::HeaderChecksum);
    }
    let blocks = data_len.div_ceil(block_size);
    let crcs = r.take(blocks.checked_mul(4).ok_or(PageFormatError::Truncated)?)?;
    let header_end = r.at;
    let header_crc = r.u32()?;
    if crc32c::crc32c(&buf[..header_end]) != header_crc {
        return Err(PageFormatError::HeaderChecksum);
    }
    if id != key.object_id().as_bytes() || index != key.index {
        return Err(PageFormatError::WrongKey);
    }
    Ok(HeaderV2 {
        data_len,
        block_size,
        crcs,
        data_at: r.at,
    })
}

/// How much of the file the v2 header starting `buf` needs, as far as its
/// fixed fields in `buf` tell (not verified): to read the rest of a header
/// longer than the first read. First the fields up to the block size (for a
/// long key), then the whole header. None if `buf` lacks the key length.
fn header_v2_needed(buf: &[u8]) -> Option<usize> {
    let field = |at: usize| -> Option<usize> {
        let b = buf.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let fixed = 12 + field(8)? + 16;
    if buf.len() < fixed {
        return Some(fixed);
    }
    let data_len = field(fixed - 8)?;
    let block_size = field(fixed - 4)?.max(1);
    fixed.checked_add(
        data_len
            .div_ceil(block_size)
            .checked_mul(4)?
            .checked_add(4)?,
    )
}

/// Verify a whole page file against `key` and return its data.
pub fn decode<'a>(key: &PageKey, file: &'a [u8]) -> Result<&'a [u8], PageFormatError> {
    let magic = file.get(..8).ok_or(PageFormatError::Truncated)?;
    if magic == MAGIC_V2 {
        let header = header_v2(key, file)?;
        let data = file
            .get(header.data_at..)
            .ok_or(PageFormatError::Truncated)?;
        if data.len() != header.data_len {
            return Err(PageFormatError::Truncated);
        }
        header.verify_blocks(0, data)?;
        return Ok(data);
    }
    if magic == MAGIC_V1 {
        return decode_v1(key, file);
    }
    Err(PageFormatError::BadMagic)
}

fn decode_v1<'a>(key: &PageKey, file: &'a [u8]) -> Result<&'a [u8], PageFormatError> {
    let mut r = Reader { buf: file, at: 0 };
    if r.take(MAGIC_V1.len())? != MAGIC_V1 {
        return Err(PageFormatError::BadMagic);
    }
    let id_len = r.u32()? as usize;
    let id = r.take(id_len)?;
    let index = r.u64()?;
    let data_len = r.u32()? as usize;
    let data_crc = r.u32()?;
    let header_end = r.at;
    let header_crc = r.u32()?;
    if crc32c::crc32c(&file[..header_end]) != header_crc {
        return Err(PageFormatError::HeaderChecksum);
    }
    if id != key.object_id().as_bytes() || index != key.index {
        return Err(PageFormatError::WrongKey);
    }
    let data = r.take(data_len)?;
    if r.at != file.len() {
        return Err(PageFormatError::Truncated);
    }
    if crc32c::crc32c(data) != data_crc {
        return Err(PageFormatError::DataChecksum);
    }
    Ok(data)
}

/// Read `len` bytes of the page's data from `offset` out of the open page
/// file `file` of `file_len` bytes, reading and verifying only the header
/// and the blocks the range touches. Shorter at the end of the data (empty
/// from there on).
///
/// v1 files have one checksum over all data: they are read and verified
/// whole, then sliced. They are still served (rather than dropped) so an
/// upgrade does not throw away a warm cache; they age out by LRU and every
/// page written now is v2.
pub fn read_range(
    file: &std::fs::File,
    file_len: u64,
    key: &PageKey,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, RangeError> {
    let file_len = usize::try_from(file_len).map_err(|_| PageFormatError::Truncated)?;
    let mut head = vec![0u8; HEADER_PREFETCH.min(file_len)];
    read_exact_at(file, &mut head, 0)?;
    let magic = head.get(..8).ok_or(PageFormatError::Truncated)?;
    if magic == MAGIC_V1 {
        let mut all = vec![0u8; file_len];
        read_exact_at(file, &mut all, 0)?;
        let data = decode_v1(key, &all)?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(len).min(data.len());
        return Ok(data[start..end].to_vec());
    }
    if magic != MAGIC_V2 {
        return Err(PageFormatError::BadMagic.into());
    }
    // A header longer than the prefetch (long key, many blocks): read the
    // rest. Its claimed length is bounded by the file's before allocating.
    while let Some(needed) = header_v2_needed(&head).filter(|n| *n > head.len()) {
        if needed > file_len {
            return Err(PageFormatError::Truncated.into());
        }
        let have = head.len();
        head.resize(needed, 0);
        read_exact_at(file, &mut head[have..], have as u64)?;
    }
    let header = header_v2(key, &head)?;
    // Same rule as `decode`: a file of another length (torn, or with
    // garbage appended) is not a page we wrote.
    if header.data_at.checked_add(header.data_len) != Some(file_len) {
        return Err(PageFormatError::Truncated.into());
    }
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(header.data_len);
    let end = start.saturating_add(len).min(header.data_len);
    if start == end {
        return Ok(Vec::new());
    }
    let bs = header.block_size;
    let first = start / bs;
    let blocks_start = first * bs;
    let blocks_end = (end.div_ceil(bs) * bs).min(header.data_len);
    let mut blocks = vec![0u8; blocks_end - blocks_start];
    read_exact_at(file, &mut blocks, (header.data_at + blocks_start) as u64)?;
    header.verify_blocks(first, &blocks)?;
    // Return the requested bytes without copying them again.
    blocks.truncate(end - blocks_start);
    blocks.drain(..start - blocks_start);
    Ok(blocks)
}

/// `read_exact_at`, with a short file (shrunk since its length was taken)
/// reported as a damaged page rather than an I/O problem.
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], at: u64) -> Result<(), RangeError> {
    file.read_exact_at(buf, at).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            RangeError::Format(PageFormatError::Truncated)
        } else {
            RangeError::Io(e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(index: u64) -> PageKey {
        PageKey {
            source: "file:///srv".into(),
            path: "a/b".into(),
            version: "v1".into(),
            index,
        }
    }

    #[test]
    fn round_trip() {
        let data = vec![7u8; 1000];
        let file = encode(&key(3), &data);
        assert_eq!(decode(&key(3), &file).unwrap(), &data[..]);
    }

    #[test]
    fn every_single_byte_corruption_is_detected() {
        let data: Vec<u8> = (0..64u8).collect();
        let file = encode(&key(1), &data);
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x40;
            assert!(
                decode(&key(1), &bad).is_err(),
                "flip at byte {i} not detected"
            );
        }
    }

    #[test]
    fn truncation_and_wrong_key_are_detected() {
        let file = encode(&key(1), b"hello");
        for len in 0..file.len() {
            assert!(decode(&key(1), &file[..len]).is_err(), "length {len}");
        }
        assert_eq!(decode(&key(2), &file), Err(PageFormatError::WrongKey));
    }

    /// A page file on disk, opened, for `read_range`.
    fn on_disk(bytes: &[u8]) -> (tempfile::NamedTempFile, std::fs::File, u64) {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut tmp, bytes).unwrap();
        let file = std::fs::File::open(tmp.path()).unwrap();
        (tmp, file, bytes.len() as u64)
    }

    fn range(bytes: &[u8], k: &PageKey, offset: u64, len: usize) -> Result<Vec<u8>, RangeError> {
        let (_tmp, file, file_len) = on_disk(bytes);
        read_range(&file, file_len, k, offset, len)
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    #[test]
    fn v2_is_written_with_one_crc_per_block() {
        let data = pattern(3 * BLOCK_SIZE as usize + 5);
        let file = encode(&key(0), &data);
        assert_eq!(&file[..8], MAGIC_V2);
        let id_len = key(0).object_id().len();
        // magic, key_len, key, index, data_len, block_size, 4 crcs, header crc
        assert_eq!(
            file.len(),
            8 + 4 + id_len + 8 + 4 + 4 + 4 * 4 + 4 + data.len()
        );
        assert_eq!(decode(&key(0), &file).unwrap(), &data[..]);
    }

    #[test]
    fn range_reads_at_block_boundaries_and_past_the_end() {
        let bs = 4096usize;
        let data = pattern(5 * bs + 100);
        let file = encode_with_block(&key(2), &data, bs as u32);
        let cases: &[(usize, usize)] = &[
            (0, 1),
            (0, bs),
            (bs - 1, 2),
            (bs, bs),
            (bs - 1, bs + 2),
            (2 * bs + 7, 4096),
            (0, data.len()),
            (5 * bs, 100),
            (5 * bs + 50, 4096), // past the end: shorter
            (data.len() - 1, 10),
            (data.len(), 10), // at the end: empty
            (data.len() + 4096, 10),
            (123, 0),
        ];
        for &(off, len) in cases {
            let start = off.min(data.len());
            let end = (off + len).min(data.len());
            let got = range(&file, &key(2), off as u64, len).unwrap();
            assert_eq!(got, &data[start..end], "offset {off} len {len}");
        }
        assert!(range(&file, &key(2), u64::MAX, 10).unwrap().is_empty());
        // An empty page.
        let empty = encode(&key(2), &[]);
        assert!(range(&empty, &key(2), 0, 10).unwrap().is_empty());
        assert_eq!(decode(&key(2), &empty).unwrap(), &[] as &[u8]);
    }

    #[test]
    fn a_flipped_data_byte_fails_ranges_over_its_block_only() {
        let bs = 4096usize;
        let data = pattern(4 * bs);
        let good = encode_with_block(&key(1), &data, bs as u32);
        let data_at = good.len() - data.len();
        let mut bad = good.clone();
        bad[data_at + 2 * bs + 10] ^= 0x04; // in block 2
        assert!(matches!(
            range(&bad, &key(1), (2 * bs) as u64, 1),
            Err(RangeError::Format(PageFormatError::DataChecksum))
        ));
        assert!(matches!(
            range(&bad, &key(1), (bs + 4000) as u64, 200), // spans blocks 1 and 2
            Err(RangeError::Format(PageFormatError::DataChecksum))
        ));
        // Other blocks verify on their own (the store drops the page anyway).
        assert_eq!(range(&bad, &key(1), 0, bs).unwrap(), &data[..bs]);
        assert_eq!(decode(&key(1), &bad), Err(PageFormatError::DataChecksum));
    }

    #[test]
    fn any_header_damage_fails_every_range() {
        let data = pattern(3 * 4096);
        let good = encode_with_block(&key(1), &data, 4096);
        let data_at = good.len() - data.len();
        for i in 0..data_at {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            assert!(
                matches!(range(&bad, &key(1), 0, 10), Err(RangeError::Format(_))),
                "flip at header byte {i} not detected"
            );
        }
        assert!(matches!(
            range(&good, &key(7), 0, 10),
            Err(RangeError::Format(PageFormatError::WrongKey))
        ));
        for len in 0..good.len() {
            assert!(range(&good[..len], &key(1), 0, 10).is_err(), "length {len}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(range(&longer, &key(1), 0, 10).is_err());
    }

    #[test]
    fn a_header_longer_than_the_prefetch_is_read_whole() {
        let mut k = key(9);
        k.path = "p".repeat(3 * HEADER_PREFETCH);
        let data = pattern(70_000);
        let file = encode_with_block(&k, &data, 512); // 137 crcs too
        assert_eq!(
            range(&file, &k, 65_000, 6000).unwrap(),
            &data[65_000..70_000]
        );
    }

    #[test]
    fn v1_files_are_still_read_and_verified_whole() {
        let data = pattern(10_000);
        let v1 = encode_v1(&key(4), &data);
        assert_eq!(decode(&key(4), &v1).unwrap(), &data[..]);
        assert_eq!(range(&v1, &key(4), 9000, 4096).unwrap(), &data[9000..]);
        // A flip anywhere in a v1 file fails every range, even far from it.
        let mut bad = v1.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(range(&bad, &key(4), 0, 1).is_err());
        assert!(decode(&key(4), &bad).is_err());
    }

    #[test]
    fn zero_block_size_is_rejected_not_a_panic() {
        let mut file = encode(&key(0), b"abc");
        let id_len = key(0).object_id().len();
        let at = 12 + id_len + 12;
        file[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
        assert!(decode(&key(0), &file).is_err());
        assert!(range(&file, &key(0), 0, 3).is_err());
    }

    #[test]
    fn stems_differ_per_version_and_index() {
        let mut other = key(1);
        other.version = "v2".into();
        assert_ne!(key(1).file_stem(), other.file_stem());
        assert_ne!(key(1).file_stem(), key(2).file_stem());
    }
}
