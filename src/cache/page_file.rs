//! Writing one page file's bytes: a new temporary file (renamed into place
//! by `VolumeCache::put`), its data with O_DIRECT where that pays.
//!
//! Why O_DIRECT: a page written through the page cache is copied into
//! fresh kernel pages, and on a VM that hands freed memory back to its host
//! every fresh page costs a fault. A cold 1 GiB S3 read spent a quarter of
//! all CPU time (0.9 s) in that copy (`copy_folio_from_iter_atomic` on the
//! store threads). With O_DIRECT the disk reads the page straight from its
//! buffer. The price: a page just stored is read back from the disk, not
//! from the page cache (the memory tier above the store still has it), and
//! its write is not deferred behind the reads that share the disk, which is
//! why volumes whose backend is on the node's disks do not use it
//! (`PageStoreConfig::direct_writes`, set by the mount).

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::buffers::{DIRECT_ALIGN, DIRECT_MIN};

/// Whether `data` can go to the disk with O_DIRECT: big enough, and in
/// memory aligned as O_DIRECT asks (page buffers are).
pub fn wants_direct(data: &[u8]) -> bool {
    data.len() >= DIRECT_MIN && (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
}

/// Create `temp` (in `dir`, made if missing) holding `header` then `data`.
/// With `direct` (on while the cache filesystem takes O_DIRECT), `header`
/// is a multiple of [`DIRECT_ALIGN`] long (a v3 header) and the whole
/// blocks of `data` are written with O_DIRECT; a filesystem refusing it
/// turns `direct` off and gets the rest through the page cache.
pub fn write_new(
    dir: &Path,
    temp: &Path,
    header: &[u8],
    data: &[u8],
    direct: Option<&AtomicBool>,
) -> io::Result<()> {
    let mut f = match File::create(temp) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            File::create(temp)?
        }
        created => created?,
    };
    let Some(direct) = direct else {
        return write_all_vectored(&mut f, &mut [IoSlice::new(header), IoSlice::new(data)]);
    };
    f.write_all_at(header, 0)?;
    let at = header.len() as u64;
    let done = match write_blocks_direct(&f, at, data) {
        Ok(done) => done,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            if direct.swap(false, Ordering::Relaxed) {
                tracing::info!(error = %e, path = %temp.display(),
                    "cache filesystem refuses O_DIRECT; pages go through the page cache");
            }
            0
        }
        Err(e) => return Err(e),
    };
    f.write_all_at(&data[done..], at + done as u64)
}

/// Write the whole [`DIRECT_ALIGN`] blocks of `data` at `at` with O_DIRECT;
/// returns how many bytes were written (the rest goes through the page
/// cache). EINVAL before any: the filesystem does not take O_DIRECT here.
fn write_blocks_direct(f: &File, at: u64, data: &[u8]) -> io::Result<usize> {
    let blocks = data.len() - data.len() % DIRECT_ALIGN;
    let fd = f.as_raw_fd();
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_DIRECT))?;
    let mut done = 0;
    let written = loop {
        if done == blocks {
            break Ok(done);
        }
        match f.write_at(&data[done..blocks], at + done as u64) {
            Ok(n) => {
                done += n;
                // A short write ending inside a block: the rest is unaligned.
                if n == 0 || !done.is_multiple_of(DIRECT_ALIGN) {
                    break Ok(done);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // After some data: not a refusal of O_DIRECT, a write error.
            Err(e) if done > 0 && e.raw_os_error() == Some(libc::EINVAL) => {
                break Err(io::Error::other(e));
            }
            Err(e) => break Err(e),
        }
    };
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    written
}

/// Rename `from` to `to` unless `to` exists (EEXIST then).
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    nix::fcntl::renameat2(
        None,
        from,
        None,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(io::Error::from)
}

/// Write all of `bufs` with `writev` (the page straight from its buffer,
/// no copy next to its header); std's `write_all_vectored` is unstable.
fn write_all_vectored(f: &mut File, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match f.write_vectored(bufs) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "page file: the disk took no more bytes",
                ))
            }
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::buffers::PageBuffer;
    use crate::cache::page::DATA_ALIGN;

    fn aligned_page(len: usize) -> PageBuffer {
        let mut page = PageBuffer::new(len);
        for (i, b) in page.as_mut_slice().iter_mut().enumerate() {
            *b = (i * 7 + i / 4093) as u8;
        }
        page
    }

    #[test]
    fn only_big_pages_in_aligned_memory_go_direct() {
        let page = aligned_page(DIRECT_MIN + 5);
        assert!(wants_direct(page.as_slice()));
        assert!(!wants_direct(&page.as_slice()[1..]));
        assert!(!wants_direct(&page.as_slice()[..DIRECT_MIN - 1]));
    }

    /// A page whose length is not a whole number of blocks: the blocks go
    /// direct, the tail through the page cache; the file is header + data.
    #[test]
    fn a_direct_write_leaves_header_then_data() {
        let dir = tempfile::tempdir().unwrap();
        let temp = dir.path().join("fan/out/.x.tmp");
        let page = aligned_page(DIRECT_MIN + 1000);
        let header = vec![9u8; DATA_ALIGN];
        let direct = AtomicBool::new(true);
        write_new(
            &dir.path().join("fan/out"),
            &temp,
            &header,
            page.as_slice(),
            Some(&direct),
        )
        .unwrap();
        let file = fs::read(&temp).unwrap();
        assert_eq!(&file[..DATA_ALIGN], &header[..]);
        assert!(&file[DATA_ALIGN..] == page.as_slice());
        // /tmp here is a disk filesystem: the blocks went direct.
        assert!(direct.load(Ordering::Relaxed));
    }

    /// The O_DIRECT half alone, as a refusing filesystem would see it: an
    /// unaligned file offset is EINVAL before any byte, which `write_new`
    /// takes as "no O_DIRECT here".
    #[test]
    fn einval_before_any_byte_is_a_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("p")).unwrap();
        let page = aligned_page(DIRECT_MIN);
        let e = write_blocks_direct(&f, 100, page.as_slice()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        // The descriptor is back to buffered writes afterwards.
        f.write_all_at(&page.as_slice()[..10], 3).unwrap();
        assert_eq!(fs::read(dir.path().join("p")).unwrap().len(), 13);
    }

    /// Through the store: a big page in a page buffer is stored as a v3
    /// file and served whole and in ranges; the same bytes from unaligned
    /// memory are stored as v2.
    #[test]
    fn the_store_writes_big_aligned_pages_as_v3() {
        use crate::cache::page::PageKey;
        use crate::cache::{PageStoreConfig, VolumeCache};
        let dir = tempfile::tempdir().unwrap();
        let cfg = PageStoreConfig::new(dir.path().to_path_buf(), 64 << 20, 1 << 20);
        let s = VolumeCache::open(cfg, "file:///srv").unwrap();
        let key = |index| PageKey {
            source: "file:///srv".into(),
            path: "big".into(),
            version: "v1".into(),
            index,
        };
        let page = aligned_page(DIRECT_MIN * 2 + 300);
        s.put(&key(0), page.as_slice());
        let copy = page.as_slice().to_vec();
        let start = 1 + usize::from((copy.as_ptr() as usize + 1).is_multiple_of(DIRECT_ALIGN));
        let unaligned = &copy[start..];
        s.put(&key(1), unaligned);
        let magic = |index| fs::read(s.path_of(&key(index).file_stem())).unwrap()[..8].to_vec();
        assert_eq!(magic(0), b"CCHLPG03");
        assert_eq!(magic(1), b"CCHLPG02");
        assert!(s.get(&key(0)).unwrap() == page.as_slice());
        assert!(s.get_range(&key(0), 200_000, 70_000).unwrap() == page.as_slice()[200_000..]);
        assert!(s.get(&key(1)).unwrap() == unaligned);
        // A volume configured without O_DIRECT writes v2 files.
        let mut cfg = PageStoreConfig::new(dir.path().to_path_buf(), 64 << 20, 1 << 20);
        cfg.direct_writes = false;
        let s = VolumeCache::open(cfg, "file:///other").unwrap();
        let mut other = key(0);
        other.source = "file:///other".into();
        s.put(&other, page.as_slice());
        let file = fs::read(s.path_of(&other.file_stem())).unwrap();
        assert_eq!(&file[..8], b"CCHLPG02");
        assert!(s.get(&other).unwrap() == page.as_slice());
    }
}
