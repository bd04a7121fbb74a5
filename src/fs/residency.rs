//! How much of a file the page store holds: what `cachalot warm` asks (the
//! `user.cachalot.cached` attribute) to skip files already loaded.

use std::sync::Arc;

use crate::backend::FileKind;
use crate::cache::PageKey;

use super::types::{Caller, FsError, FsResult};
use super::CachalotFs;

/// Extended attribute of a regular file: `"<cached bytes> <size>"` of its
/// current version.
pub const CACHED_XATTR: &str = "user.cachalot.cached";

impl CachalotFs {
    /// Bytes of the file's current version held by the page store (page
    /// files or a whole file), and its size.
    pub async fn cached_bytes(&self, caller: Caller, ino: u64) -> FsResult<(u64, u64)> {
        let attr = self.getattr(caller, ino).await?;
        if attr.kind != FileKind::File {
            return Err(FsError::new(libc::ENODATA));
        }
        let (path, version) = {
            let table = self.inodes.lock();
            let version = table
                .get(ino)?
                .meta
                .as_ref()
                .map(|(m, _)| m.version.0.clone())
                .ok_or(FsError::new(libc::ENODATA))?;
            (table.path_of(ino)?, version)
        };
        let key = PageKey {
            source: self.backend.cache_identity().to_string(),
            path: path.as_str().to_string(),
            version,
            index: 0,
        };
        let (cache, size) = (Arc::clone(&self.cache), attr.size);
        let cached = tokio::task::spawn_blocking(move || {
            if cache.has_whole(&key) {
                return size;
            }
            let ps = cache.page_size();
            (0..size.div_ceil(ps))
                .filter(|i| cache.contains(&key.with_index(*i)))
                .map(|i| ps.min(size - i * ps))
                .sum()
        })
        .await
        .map_err(|_| FsError::new(libc::EIO))?;
        Ok((cached, size))
    }
}
