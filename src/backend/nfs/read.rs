//! Ranged reads of one object version. NFS cannot pin a version, so every
//! READ reply's attributes are compared with the version the reader was
//! opened at: a file changed in place by another client makes the read fail
//! (ESTALE) instead of mixing two versions in the cache. Only content changes
//! count (fileid, size, mtime: see `attrs::version`); a chmod/chown of the open
//! file leaves its readers working.
//!
//! A READ reply's data goes from the connection straight into the buffer it
//! is served and cached from (`RpcClient::call_streamed`): a pooled page
//! buffer, page-aligned, so that the page store can write it with O_DIRECT.
//! Decoding whole replies cost a zeroed buffer and two copies per READ.

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use nfs3_client::RpcError;
use nfs3_types::nfs3::{
    fattr3, nfs_fh3, nfsstat3, post_op_attr, Nfs3Option, Nfs3Result, READ3args, NFS_PROGRAM,
    PROGRAM, VERSION,
};
use nfs3_types::xdr_codec::Error as XdrError;
use parking_lot::Mutex;

use super::attrs;
use super::client::pool::Conn;
use super::client::{CallFailed, Exchange};
use super::volume::Volume;
use crate::backend::{
    BackendPath, BackendResult, ByteStream, ErrorKind, Identity, ObjectReader, VersionToken,
};
use crate::buffers::PageBuffer;

/// Bytes of an XDR `fattr3` (RFC 1813: five 4-byte and eight 8-byte fields).
const FATTR3_BYTES: usize = 84;

#[derive(Clone)]
pub struct NfsReader {
    vol: Arc<Volume>,
    id: Identity,
    path: BackendPath,
    /// Shared by the streams of this reader: a handle refreshed after
    /// ESTALE serves them all.
    fh: Arc<Mutex<nfs_fh3>>,
    version: VersionToken,
    size: u64,
}

/// What one READ put into the caller's buffer.
struct Got {
    len: usize,
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
    /// A reader of the version `a` describes, through handle `fh`.
    pub fn new(vol: Arc<Volume>, id: Identity, path: BackendPath, fh: nfs_fh3, a: &fattr3) -> Self {
        NfsReader {
            vol,
            id,
            path,
            fh: Arc::new(Mutex::new(fh)),
            version: attrs::version(a),
            size: a.size,
        }
    }

    /// One READ of up to `dst.len()` bytes at `offset` into `dst`.
    async fn read_once(&self, offset: u64, dst: &mut [u8]) -> Result<Got, ReadFail> {
        let ctx = self.vol.ctx("read", &self.path, self.id);
        let args = READ3args {
            file: self.fh.lock().clone(),
            offset,
            count: u32::try_from(dst.len()).unwrap_or(u32::MAX),
        };
        let mut exchange = ReadInto { args: &args, dst };
        let res = self
            .vol
            .rpc_with(&ctx, NFS_PROGRAM::NFSPROC3_READ, &mut exchange)
            .await?
            .res;
        match res {
            Nfs3Result::Ok((attributes, got)) => {
                if let Nfs3Option::Some(a) = &attributes {
                    if attrs::version(a) != self.version {
                        return Err(ReadFail::Other(ctx.err(
                            ErrorKind::Stale,
                            "the file was changed by another client while being read",
                        )));
                    }
                }
                Ok(got)
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

    /// Fill `dst` from `offset` with as many READs (of at most the server's
    /// rtmax) as it takes: the bytes read, fewer only at the end of the file.
    async fn fill(&self, offset: u64, dst: &mut [u8]) -> BackendResult<usize> {
        let mut filled = 0;
        let mut refreshed = false;
        while filled < dst.len() {
            let end = (filled + self.vol.limits.rtmax as usize).min(dst.len());
            let got = match self
                .read_once(offset + filled as u64, &mut dst[filled..end])
                .await
            {
                Ok(got) => got,
                Err(ReadFail::StaleHandle(_)) if !refreshed => {
                    refreshed = true;
                    self.refresh_handle().await?;
                    continue;
                }
                Err(ReadFail::StaleHandle(e) | ReadFail::Other(e)) => return Err(e),
            };
            filled += got.len;
            if got.eof || got.len == 0 {
                break;
            }
        }
        Ok(filled)
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

/// A READ whose reply's data goes into `dst` (which `args.count` fits).
struct ReadInto<'a> {
    args: &'a READ3args,
    dst: &'a mut [u8],
}

type ReadResult = Nfs3Result<(post_op_attr, Got), post_op_attr>;

impl Exchange<(post_op_attr, Got), post_op_attr> for ReadInto<'_> {
    fn exchange<'c>(
        &'c mut self,
        conn: &'c mut Conn,
    ) -> BoxFuture<'c, Result<ReadResult, CallFailed>> {
        Box::pin(read_reply_into(conn, self.args, self.dst))
    }
}

/// Send a READ on `conn` and read its reply: the file's attributes, and
/// the data straight into `dst`. A reply that does not parse, or carries
/// more than was asked for, fails the call and closes the connection.
async fn read_reply_into(
    conn: &mut Conn,
    args: &READ3args,
    dst: &mut [u8],
) -> Result<ReadResult, CallFailed> {
    let proc = NFS_PROGRAM::NFSPROC3_READ as u32;
    let mut body = conn.call_streamed(PROGRAM, VERSION, proc, args).await?;
    let mid = CallFailed::mid_reply;
    let status: nfsstat3 = body.unpack(4).await.map_err(mid)?;
    let attributes = match body.unpack::<bool>(4).await.map_err(mid)? {
        true => Nfs3Option::Some(body.unpack::<fattr3>(FATTR3_BYTES).await.map_err(mid)?),
        false => Nfs3Option::None,
    };
    let result = if status == nfsstat3::NFS3_OK {
        let count: u32 = body.unpack(4).await.map_err(mid)?;
        let eof: bool = body.unpack(4).await.map_err(mid)?;
        let len = body.unpack::<u32>(4).await.map_err(mid)? as usize;
        if len > dst.len() {
            return Err(mid(RpcError::Xdr(XdrError::InvalidLength(len))));
        }
        body.read_exact(&mut dst[..len]).await.map_err(mid)?;
        let mut pad = [0u8; 4];
        body.read_exact(&mut pad[..(4 - len % 4) % 4])
            .await
            .map_err(mid)?;
        let len = len.min(count as usize);
        Nfs3Result::Ok((attributes, Got { len, eof }))
    } else {
        Nfs3Result::Err((status, attributes))
    };
    if body.remaining() != 0 {
        let left = body.remaining();
        return Err(mid(RpcError::Xdr(XdrError::InvalidLength(left))));
    }
    Ok(result)
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
        let mut buf = PageBuffer::new(len);
        let n = self.fill(offset, buf.as_mut_slice()).await?;
        buf.truncate(n);
        Ok(buf.freeze())
    }

    /// One buffer per rtmax (a page of the default size), each filled
    /// before it is handed on.
    async fn read_stream(&self, offset: u64, len: usize) -> BackendResult<ByteStream> {
        let reader = self.clone();
        let chunk = (self.vol.limits.rtmax as usize).max(1);
        let stream = futures::stream::try_unfold(
            (reader, offset, len),
            move |(reader, offset, left)| async move {
                if left == 0 {
                    return Ok(None);
                }
                let mut buf = PageBuffer::new(left.min(chunk));
                let n = reader.fill(offset, buf.as_mut_slice()).await?;
                // Short: the end of the file; nothing more to ask for.
                let left = if n < buf.len() { 0 } else { left - n };
                buf.truncate(n);
                Ok(Some((buf.freeze(), (reader, offset + n as u64, left))))
            },
        );
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
#[path = "read_tests.rs"]
mod tests;
