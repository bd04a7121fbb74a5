//! Reading: a directory's entries, and a file (one version, checked after
//! each read).

use super::*;
use crate::buffers::PageBuffer;

pub(super) struct LocalReader {
    pub(super) file: Arc<File>,
    pub(super) version: VersionToken,
    pub(super) size: u64,
    pub(super) path: BackendPath,
    pub(super) shared: Arc<Shared>,
    pub(super) id: Identity,
}

#[async_trait]
impl ObjectReader for LocalReader {
    fn version(&self) -> &VersionToken {
        &self.version
    }

    fn size(&self) -> u64 {
        self.size
    }

    /// The descriptor reads the file as it is now: if it was changed in
    /// place behind the mount (its version moved on), what was read may
    /// mix two versions, so the read fails with ESTALE (as the NFS reader
    /// does) instead of returning it.
    async fn read_at(&self, offset: u64, len: usize) -> BackendResult<bytes::Bytes> {
        // The version pins the size: reading past it could only meet a
        // change, which the check below refuses anyway. So a small file
        // gets a buffer of its own size (not a page's) and no read at EOF.
        let len = len.min(usize::try_from(self.size.saturating_sub(offset)).unwrap_or(len));
        let file = Arc::clone(&self.file);
        let version = self.version.clone();
        self.shared
            .run(self.id, "read", &self.path, move |_| {
                let data = PageBuffer::read_at(&file, offset, len)?;
                if metadata_of(&sys_fstat(file.as_raw_fd())?).version != version {
                    return Err(io::Error::from_raw_os_error(libc::ESTALE));
                }
                Ok(data.freeze())
            })
            .await
    }
}

/// The entries of the directory `p` (blocking; see `Backend::list`),
/// without temp files and names that are not UTF-8.
pub(super) fn list_dir(s: &Shared, p: &BackendPath) -> io::Result<Vec<DirEntry>> {
    let fd = s.locate(p)?.open(libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let mut dir = nix::dir::Dir::from(fd).map_err(io::Error::from)?;
    let dir_fd = dir.as_raw_fd();
    let mut out = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(io::Error::from)?;
        let raw = entry.file_name();
        if matches!(raw.to_bytes(), b"." | b"..") {
            continue;
        }
        let Ok(name) = std::str::from_utf8(raw.to_bytes()) else {
            tracing::warn!(dir = %s.shown(p.as_str().as_bytes()).display(),
                name = ?OsStr::from_bytes(raw.to_bytes()),
                "skipping a file name that is not valid UTF-8");
            continue;
        };
        if is_temp_name(name) {
            continue;
        }
        match sys_fstatat(dir_fd, raw, libc::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => out.push(DirEntry {
                name: name.to_string(),
                meta: metadata_of(&st),
            }),
            // Removed between readdir and stat: not an error.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}
