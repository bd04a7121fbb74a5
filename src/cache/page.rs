//! Page identity and the on-disk page file format.
//!
//! Version 2 (written):
//! ```text
//! magic "CCHLPG02" | key_len u32 | key bytes | index u64 | data_len u32
//! | block_size u32 | crc u32 per block of data | header_crc u32 | data
//! ```
//! Version 3 (written for pages the store writes with O_DIRECT): version 2
//! with zeros after `header_crc` up to the next multiple of [`DATA_ALIGN`],
//! where the data starts, so that it can go to the disk straight from its
//! page-aligned buffer.
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
const MAGIC_V3: &[u8; 8] = b"CCHLPG03";

/// Where the data of a v3 page file starts: a multiple of this (the
/// alignment O_DIRECT asks of file offsets on common filesystems).
pub const DATA_ALIGN: usize = 4096;

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
    #[error("page file is longer than a page and its header can be")]
    TooLong,
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
#[cfg(test)]
pub fn encode(key: &PageKey, data: &[u8]) -> Vec<u8> {
    encode_with_block(key, data, BLOCK_SIZE)
}

/// Most bytes a page file of a page of `page_size` bytes can have: the
/// data, its header (fixed fields, an object id of at most 64 KiB, and up
/// to 4 bytes of block checksum per data byte, whatever block size wrote
/// it). Anything longer is not a page file.
pub fn max_file_len(page_size: u64) -> u64 {
    page_size.saturating_mul(5).saturating_add(64 << 10)
}

/// The header of the page file holding `data`: the file is this, then
/// `data` (written together without copying the page, see
/// `VolumeCache::put`).
pub fn encode_header(key: &PageKey, data: &[u8]) -> Vec<u8> {
    header_with_block(MAGIC_V2, key, data, BLOCK_SIZE, 0)
}

/// The v3 header of the page file holding `data`: a multiple of
/// [`DATA_ALIGN`] bytes long, so the data after it is aligned in the file.
pub fn encode_aligned_header(key: &PageKey, data: &[u8]) -> Vec<u8> {
    let mut header = header_with_block(MAGIC_V3, key, data, BLOCK_SIZE, DATA_ALIGN);
    header.resize(header.len().next_multiple_of(DATA_ALIGN), 0);
    header
}

#[cfg(test)]
pub(crate) fn encode_with_block(key: &PageKey, data: &[u8], block_size: u32) -> Vec<u8> {
    let mut out = header_with_block(MAGIC_V2, key, data, block_size, data.len());
    out.extend_from_slice(data);
    out
}

/// A whole v3 page file, as `VolumeCache::put` writes it with O_DIRECT.
#[cfg(test)]
pub(crate) fn encode_v3(key: &PageKey, data: &[u8]) -> Vec<u8> {
    let mut out = encode_aligned_header(key, data);
    out.extend_from_slice(data);
    out
}

/// The header (v2 fields under `magic`), in a buffer with `room` bytes to
/// spare (for the data, or the v3 padding).
fn header_with_block(
    magic: &[u8; 8],
    key: &PageKey,
    data: &[u8],
    block_size: u32,
    room: usize,
) -> Vec<u8> {
    let id = key.object_id();
    let blocks = data.chunks(block_size.max(1) as usize);
    let mut out = Vec::with_capacity(36 + id.len() + 4 * blocks.len() + room);
    out.extend_from_slice(magic);
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

/// A verified v2 or v3 header (the data is not verified yet): enough to
/// read and verify any range of the page file's data.
pub struct HeaderV2 {
    data_len: usize,
    block_size: usize,
    crcs: Vec<u8>,
    /// Where the data starts in the file.
    data_at: usize,
}

impl HeaderV2 {
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

/// Whether `magic` starts a v2 or v3 file (one header layout; v3 data is
/// aligned).
fn is_v2_or_v3(magic: &[u8]) -> bool {
    magic == MAGIC_V2 || magic == MAGIC_V3
}

/// Parse and verify the v2 or v3 header at the start of `buf` (magic
/// already checked). `Truncated` if `buf` ends inside the header: the
/// caller may retry with more of the file.
fn header_v2(key: &PageKey, buf: &[u8]) -> Result<HeaderV2, PageFormatError> {
    let mut r = Reader { buf, at: 0 };
    let aligned = r.take(MAGIC_V3.len())? == MAGIC_V3;
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
        crcs: crcs.to_vec(),
        data_at: match aligned {
            true => r.at.next_multiple_of(DATA_ALIGN),
            false => r.at,
        },
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
    if is_v2_or_v3(magic) {
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
    if let Some(header) = read_header(file, file_len, key)? {
        return header.read(file, offset, len);
    }
    let mut all = vec![0u8; usize::try_from(file_len).map_err(|_| PageFormatError::Truncated)?];
    read_exact_at(file, &mut all, 0)?;
    let data = decode_v1(key, &all)?;
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let end = start.saturating_add(len).min(data.len());
    Ok(data[start..end].to_vec())
}

/// The verified v2 header of the page file `file` of `file_len` bytes, or
/// `None` for a v1 file (no block checksums: see `read_range`).
pub fn read_header(
    file: &std::fs::File,
    file_len: u64,
    key: &PageKey,
) -> Result<Option<HeaderV2>, RangeError> {
    let file_len = usize::try_from(file_len).map_err(|_| PageFormatError::Truncated)?;
    let mut head = vec![0u8; HEADER_PREFETCH.min(file_len)];
    read_exact_at(file, &mut head, 0)?;
    let magic = head.get(..8).ok_or(PageFormatError::Truncated)?;
    if magic == MAGIC_V1 {
        return Ok(None);
    }
    if !is_v2_or_v3(magic) {
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
    Ok(Some(header))
}

impl HeaderV2 {
    /// `len` bytes of the data from `offset` (shorter at its end), read
    /// from `file` (the page file the header is of) and verified block by
    /// block.
    pub fn read(
        &self,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, RangeError> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.data_len);
        let end = start.saturating_add(len).min(self.data_len);
        if start == end {
            return Ok(Vec::new());
        }
        let bs = self.block_size;
        let first = start / bs;
        let blocks_start = first * bs;
        let blocks_end = (end.div_ceil(bs) * bs).min(self.data_len);
        let mut blocks = vec![0u8; blocks_end - blocks_start];
        read_exact_at(file, &mut blocks, (self.data_at + blocks_start) as u64)?;
        self.verify_blocks(first, &blocks)?;
        // Return the requested bytes without copying them again.
        blocks.truncate(end - blocks_start);
        blocks.drain(..start - blocks_start);
        Ok(blocks)
    }
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
#[path = "page_tests.rs"]
mod tests;
