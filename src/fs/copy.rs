//! Data operations beyond read and write: fallocate(2) and
//! copy_file_range(2). Both go through the file's write session like any
//! write, so they are published with it, atomically.

use std::sync::Arc;

use crate::backend::WriteStart;

use super::{CachalotFs, Caller, FsError, FsResult};

/// The fallocate modes served: reserve (0), KEEP_SIZE, PUNCH_HOLE (always
/// with KEEP_SIZE, a kernel rule) and ZERO_RANGE. The others
/// (COLLAPSE_RANGE, INSERT_RANGE, UNSHARE_RANGE) shift or unshare data in
/// place: EOPNOTSUPP, as on filesystems without them.
const SERVED_MODES: i32 =
    libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;

/// copy_file_range moves this much per step (read from the page store or
/// backend, written into the target's temporary object).
const COPY_STEP: u64 = 1 << 20;

impl CachalotFs {
    /// fallocate(2) on an open file: into its write session, published at
    /// close like a write. Where the backend cannot reserve space (NFSv3),
    /// mode 0 only extends the size and the other modes are EOPNOTSUPP.
    pub async fn fallocate(
        &self,
        caller: Caller,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> FsResult<()> {
        self.check_writable()?;
        let handle = self.file_handle(fh)?;
        if !handle.writable {
            return Err(FsError::new(libc::EBADF));
        }
        if mode & !SERVED_MODES != 0 {
            return Err(FsError::new(libc::EOPNOTSUPP));
        }
        if length == 0 {
            return Err(FsError::new(libc::EINVAL));
        }
        offset
            .checked_add(length)
            .filter(|end| *end <= i64::MAX as u64)
            .ok_or(FsError::new(libc::EFBIG))?;
        loop {
            let session = self
                .write_session(caller, handle.ino, WriteStart::CopyExisting)
                .await?;
            if session.allocate(offset, length, mode).await? {
                break;
            }
        }
        // The kernel keeps pages of a range that now reads as zeros.
        if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
            self.invalidate_kernel(handle.ino);
        }
        Ok(())
    }

    /// copy_file_range(2): one request instead of the kernel's read/write
    /// fallback through the mount. The data is read as any read of
    /// `fh_in` (page store first) and written into `fh_out`'s write
    /// session. Returns the bytes copied (fewer at the end of the input).
    pub async fn copy_file_range(
        self: &Arc<Self>,
        caller: Caller,
        (fh_in, offset_in): (u64, u64),
        (fh_out, offset_out): (u64, u64),
        len: u64,
    ) -> FsResult<u64> {
        let mut copied = 0u64;
        while copied < len {
            let step = (len - copied).min(COPY_STEP) as u32;
            let data = self.read(fh_in, offset_in + copied, step).await?;
            if data.is_empty() {
                break;
            }
            self.write(caller, fh_out, offset_out + copied, &data)
                .await?;
            copied += data.len() as u64;
        }
        Ok(copied)
    }
}
