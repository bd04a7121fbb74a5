//! A crash must not lose a write the application was told succeeded.
//!
//! The kernel's WRITE is answered while its NFS WRITE may still be in
//! flight (see `pipeline`): until the server replies, the data lives only
//! in this process. So before answering, each piece is appended to a
//! spill file on local disk (the page cache survives the process). A
//! successor that takes the write over after a crash re-sends what the
//! spill holds, in order, before anything else; a piece the server had
//! already applied is simply written again with the same bytes.
//!
//! The spill is emptied whenever no WRITE is in flight (every piece in it
//! is then on the server), which also comes before any truncate or
//! overlapping rewrite: a re-send can never undo a later change.
//! Graceful hand-overs (`suspend`) commit first and need no spill.
//!
//! Record: magic, crc32c (of offset, length and data), offset (u64),
//! length (u32), 4 bytes reserved, all little-endian; then the data. A
//! torn or corrupt record ends the replay: it was never acknowledged.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

const MAGIC: [u8; 4] = *b"CSP1";
const HEADER: usize = 24;
/// A record longer than this is corrupt: no WRITE is that large.
const MAX_RECORD: u32 = 64 << 20;

/// The spill file of one write; created at its first record.
pub(super) struct Spill {
    path: PathBuf,
    file: Option<Arc<File>>,
    /// Bytes of whole records in the file.
    len: u64,
}

/// Where the spill of the temp file `temp_name` lives in `dir`: named
/// after the temp file, so the description journaled at begin needs
/// nothing more for a successor to find it.
pub(super) fn path_for(dir: &Path, temp_name: &str) -> PathBuf {
    let hash = blake3::hash(temp_name.as_bytes()).to_hex();
    dir.join(format!("{}.spill", &hash.as_str()[..32]))
}

impl Spill {
    pub(super) fn at(path: PathBuf) -> Spill {
        Spill {
            path,
            file: None,
            len: 0,
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Append `data` written at `offset`; once this returns, the piece
    /// outlives the process.
    pub(super) async fn record(&mut self, offset: u64, data: Bytes) -> io::Result<()> {
        let file = match &self.file {
            Some(f) => Arc::clone(f),
            None => {
                let f = Arc::new(create(&self.path)?);
                self.file = Some(Arc::clone(&f));
                f
            }
        };
        if data.len() > MAX_RECORD as usize {
            return Err(io::Error::other("a spilled piece larger than a WRITE"));
        }
        let (at, len) = (self.len, data.len());
        crate::backend::blocking::run(move || {
            file.write_all_at(&header(offset, &data), at)?;
            file.write_all_at(&data, at + HEADER as u64)
        })
        .await
        .map_err(io::Error::other)??;
        self.len += (HEADER + len) as u64;
        Ok(())
    }

    /// Every piece is on the server: forget them (the file stays for the
    /// next ones). Never left undone: a file that cannot be emptied is
    /// removed (the next record creates it again).
    pub(super) async fn clear(&mut self) {
        let Some(file) = self.file.clone().filter(|_| self.len > 0) else {
            return;
        };
        let emptied = crate::backend::blocking::run(move || file.set_len(0)).await;
        if !matches!(emptied, Ok(Ok(()))) {
            self.remove();
        }
        self.len = 0;
    }

    /// The write is over (published, aborted or handed over committed).
    pub(super) fn remove(&mut self) {
        if self.file.take().is_some() {
            remove_file(&self.path);
        }
        self.len = 0;
    }
}

fn create(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn header(offset: u64, data: &[u8]) -> [u8; HEADER] {
    let len = data.len() as u32;
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&checksum(offset, len, data).to_le_bytes());
    h[8..16].copy_from_slice(&offset.to_le_bytes());
    h[16..20].copy_from_slice(&len.to_le_bytes());
    h
}

fn checksum(offset: u64, len: u32, data: &[u8]) -> u32 {
    let c = crc32c::crc32c(&offset.to_le_bytes());
    let c = crc32c::crc32c_append(c, &len.to_le_bytes());
    crc32c::crc32c_append(c, data)
}

/// The pieces a spill file holds, in the order they were written (none if
/// there is no file). Reading stops at the first torn or corrupt record.
pub(super) fn replay(path: &Path) -> io::Result<Vec<(u64, Vec<u8>)>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    let mut pieces = Vec::new();
    let mut at = 0u64;
    while at + HEADER as u64 <= size {
        let mut h = [0u8; HEADER];
        file.read_exact_at(&mut h, at)?;
        let crc = u32::from_le_bytes(bytes_at(&h, 4));
        let offset = u64::from_le_bytes(bytes_at(&h, 8));
        let len = u32::from_le_bytes(bytes_at(&h, 16));
        let end = at + HEADER as u64 + len as u64;
        if h[..4] != MAGIC || len > MAX_RECORD || end > size {
            break;
        }
        let mut data = vec![0u8; len as usize];
        file.read_exact_at(&mut data, at + HEADER as u64)?;
        if checksum(offset, len, &data) != crc {
            break;
        }
        pieces.push((offset, data));
        at = end;
    }
    Ok(pieces)
}

fn bytes_at<const N: usize>(h: &[u8; HEADER], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&h[at..at + N]);
    out
}

pub(super) fn remove_file(path: &Path) {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            tracing::warn!(error = %e, path = %path.display(), "could not remove a spill file");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pieces_replay_in_order_and_a_torn_tail_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("spill"), ".f.cachalot-x1");
        assert!(replay(&path).unwrap().is_empty(), "no file, nothing");
        let mut s = Spill::at(path.clone());
        s.record(4096, Bytes::from_static(b"first")).await.unwrap();
        s.record(0, Bytes::from_static(b"second")).await.unwrap();
        let pieces = replay(&path).unwrap();
        assert_eq!(pieces, [(4096, b"first".to_vec()), (0, b"second".to_vec())]);
        // A record cut short (the machine went down while appending).
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        let size = file.metadata().unwrap().len();
        file.set_len(size - 1).unwrap();
        assert_eq!(replay(&path).unwrap(), [(4096, b"first".to_vec())]);
        // A flipped byte in the data.
        file.write_all_at(b"F", HEADER as u64).unwrap();
        assert!(replay(&path).unwrap().is_empty());
        s.clear().await;
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        s.record(7, Bytes::from_static(b"third")).await.unwrap();
        assert_eq!(replay(&path).unwrap(), [(7, b"third".to_vec())]);
        s.remove();
        assert!(!path.exists());
    }
}
