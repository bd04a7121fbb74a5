//! Page identity and the on-disk page file format.
//!
//! ```text
//! magic "CCHLPG01" | key_len u32 | key bytes | index u64 | data_len u32
//! | data_crc u32 | header_crc u32 | data
//! ```
//! All integers little endian. `header_crc` covers everything before it, so a
//! torn or foreign file is recognised before its data is trusted.

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

const MAGIC: &[u8; 8] = b"CCHLPG01";

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

pub fn encode(key: &PageKey, data: &[u8]) -> Vec<u8> {
    let id = key.object_id();
    let mut out = Vec::with_capacity(36 + id.len() + data.len());
    out.extend_from_slice(MAGIC);
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

/// Verify a page file against `key` and return its data.
pub fn decode<'a>(key: &PageKey, file: &'a [u8]) -> Result<&'a [u8], PageFormatError> {
    let mut r = Reader { buf: file, at: 0 };
    if r.take(MAGIC.len())? != MAGIC {
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

    #[test]
    fn stems_differ_per_version_and_index() {
        let mut other = key(1);
        other.version = "v2".into();
        assert_ne!(key(1).file_stem(), other.file_stem());
        assert_ne!(key(1).file_stem(), key(2).file_stem());
    }
}
