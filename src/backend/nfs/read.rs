//! Ranged reads of one object version. NFS cannot pin a version, so every
//! READ reply's attributes are compared with the version the reader was
//! opened at: a file changed in place by another client makes the read fail
//! (ESTALE) instead of mixing two versions in the cache. Only content changes
//! count (fileid, size, mtime: see `attrs::version`); a chmod/chown of the open
//! file leaves its readers working.

use std::sync::Arc;

use async_trait::async_trait;
use nfs3_types::nfs3::{nfs_fh3, Nfs3Option, Nfs3Result, READ3args, READ3res, NFS_PROGRAM};
use parking_lot::Mutex;

use super::attrs;
use super::volume::Volume;
use crate::backend::{BackendPath, BackendResult, ErrorKind, Identity, ObjectReader, VersionToken};

pub struct NfsReader {
    pub vol: Arc<Volume>,
    pub id: Identity,
    pub path: BackendPath,
    pub fh: Mutex<nfs_fh3>,
    pub version: VersionToken,
    pub size: u64,
}

/// Outcome of one READ call.
struct Chunk {
    data: Vec<u8>,
    eof: bool,
}

enum ReadFail {
    /// NFS3ERR_STALE / BADHANDLE: the handle, not the data, is the problem.
    StaleHandle(crate::backend::BackendError),
    Other(crate::backend::BackendError),
}

impl From<crate::backend::BackendError> for ReadFail {
    fn from(e: crate::backend::BackendError) -> Self {
        ReadFail::Other(e)
    }
}

impl NfsReader {
    async fn read_chunk(&self, offset: u64, count: u32) -> Result<Chunk, ReadFail> {
        let ctx = self.vol.ctx("read", &self.path, self.id);
        let fh = self.fh.lock().clone();
        let args = READ3args {
            file: fh,
            offset,
            count,
        };
        let res: READ3res = self
            .vol
            .rpc(&ctx, NFS_PROGRAM::NFSPROC3_READ, &args)
            .await?
            .res;
        match res {
            Nfs3Result::Ok(ok) => {
                if let Nfs3Option::Some(a) = &ok.file_attributes {
                    if attrs::version(a) != self.version {
                        return Err(ReadFail::Other(ctx.err(
                            ErrorKind::Stale,
                            "the file was changed by another client while being read",
                        )));
                    }
                }
                let mut data = ok.data.into_owned();
                data.truncate(ok.count as usize);
                Ok(Chunk { data, eof: ok.eof })
            }
            Nfs3Result::Err((stat, _)) => {
                let err = ctx.status(stat);
                if err.kind == ErrorKind::Stale {
                    Err(ReadFail::StaleHandle(err))
                } else {
                    Err(ReadFail::Other(err))
                }
            }
        }
    }

    /// The handle went STALE: look the path up once more. Only the very same
    /// version may be read through the new handle.
    async fn refresh_handle(&self) -> BackendResult<()> {
        let ctx = self
            .vol
            .ctx("read (re-lookup after stale handle)", &self.path, self.id);
        self.vol.handles.clear();
        let (fh, a) = self.vol.lookup(&ctx, &self.path).await?;
        if attrs::version(&a) != self.version {
            return Err(ctx.err(
                ErrorKind::Stale,
                "the file was replaced or changed while open",
            ));
        }
        *self.fh.lock() = fh;
        Ok(())
    }
}

#[async_trait]
impl ObjectReader for NfsReader {
    fn version(&self) -> &VersionToken {
        &self.version
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn read_at(&self, offset: u64, len: usize) -> BackendResult<bytes::Bytes> {
        let mut out = Vec::with_capacity(len);
        let mut refreshed = false;
        while out.len() < len {
            let want = (len - out.len()).min(self.vol.limits.rtmax as usize) as u32;
            let at = offset + out.len() as u64;
            let chunk = match self.read_chunk(at, want).await {
                Ok(chunk) => chunk,
                Err(ReadFail::StaleHandle(_)) if !refreshed => {
                    refreshed = true;
                    self.refresh_handle().await?;
                    continue;
                }
                Err(ReadFail::StaleHandle(e) | ReadFail::Other(e)) => return Err(e),
            };
            let got = chunk.data.len();
            out.extend_from_slice(&chunk.data);
            if chunk.eof || got == 0 {
                break;
            }
        }
        Ok(bytes::Bytes::from(out))
    }
}
