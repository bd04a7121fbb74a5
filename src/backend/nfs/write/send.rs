//! One WRITE. Its data goes to the connection from the caller's buffer
//! (`RpcClient::call_with_payload`): packing a whole `WRITE3args` copied
//! every WRITE's data (1 MiB) into a fresh buffer first.

use std::io::Write;

use futures::future::BoxFuture;
use nfs3_types::nfs3::{WRITE3resfail, WRITE3resok, PROGRAM, VERSION};
use nfs3_types::xdr_codec::{self, Pack};

use super::*;
use crate::backend::nfs::client::pool::Conn;
use crate::backend::nfs::client::{CallFailed, Exchange};

/// One WRITE to `file` (the temp file, or the target of an in-place
/// publish): how much the server took, how stable, its verifier.
pub(super) async fn write_once(
    vol: &Volume,
    ctx: &Ctx<'_>,
    file: &nfs_fh3,
    offset: u64,
    data: &[u8],
    stable: stable_how,
) -> BackendResult<(usize, stable_how, writeverf3)> {
    let mut write = WriteFrom {
        head: WriteHead {
            file,
            offset,
            stable,
            len: u32::try_from(data.len())
                .map_err(|_| ctx.err(ErrorKind::InvalidArgument, "a WRITE of 4 GiB or more"))?,
        },
        data,
    };
    let res = vol
        .rpc_with(ctx, NFS_PROGRAM::NFSPROC3_WRITE, &mut write)
        .await?
        .res;
    match res {
        Nfs3Result::Ok(ok) => {
            let written = (ok.count as usize).min(data.len());
            if written == 0 {
                return Err(ctx.err(
                    ErrorKind::Other,
                    "the server accepted no data (WRITE count 0)",
                ));
            }
            Ok((written, ok.committed, ok.verf))
        }
        Nfs3Result::Err((stat, _)) => Err(ctx.status(stat)),
    }
}

/// A WRITE call: `WRITE3args` up to the length of its data, then the data.
struct WriteFrom<'a> {
    head: WriteHead<'a>,
    data: &'a [u8],
}

/// `WRITE3args` (RFC 1813) up to and including the length of its data.
struct WriteHead<'a> {
    file: &'a nfs_fh3,
    offset: u64,
    stable: stable_how,
    len: u32,
}

impl Pack for WriteHead<'_> {
    fn packed_size(&self) -> usize {
        self.file.packed_size()
            + self.offset.packed_size()
            + self.len.packed_size() // count
            + self.stable.packed_size()
            + self.len.packed_size() // the data's length
    }

    fn pack(&self, out: &mut impl Write) -> xdr_codec::Result<usize> {
        Ok(self.file.pack(out)?
            + self.offset.pack(out)?
            + self.len.pack(out)?
            + self.stable.pack(out)?
            + self.len.pack(out)?)
    }
}

impl Exchange<WRITE3resok, WRITE3resfail> for WriteFrom<'_> {
    fn exchange<'c>(
        &'c mut self,
        conn: &'c mut Conn,
    ) -> BoxFuture<'c, Result<WRITE3res, CallFailed>> {
        Box::pin(async move {
            let proc = NFS_PROGRAM::NFSPROC3_WRITE as u32;
            conn.call_with_payload(PROGRAM, VERSION, proc, &self.head, self.data)
                .await
                .map_err(CallFailed::from)
        })
    }
}

#[cfg(test)]
mod tests {
    use nfs3_types::nfs3::WRITE3args;
    use nfs3_types::xdr_codec::Opaque;

    use super::*;
    use crate::backend::nfs::client::scripted::{accepted, scripted_recording, words, SUCCESS};

    fn whole_args(file: &nfs_fh3, data: &[u8]) -> Vec<u8> {
        let whole = WRITE3args {
            file: file.clone(),
            offset: 1 << 40 | 3,
            count: data.len() as u32,
            stable: stable_how::FILE_SYNC,
            data: Opaque::borrowed(data),
        };
        let mut packed = Vec::new();
        whole.pack(&mut packed).unwrap();
        packed
    }

    /// On the wire, a call with its data sent from the caller's buffer ends
    /// in exactly the bytes of the whole `WRITE3args`, padding included,
    /// and the reply (WRITE3resok) is decoded.
    #[tokio::test]
    async fn a_write_call_carries_the_whole_args() {
        let file = nfs_fh3 {
            data: Opaque::owned(vec![9, 8, 7, 6, 5]),
        };
        let datas = [&b"abcde"[..], b"", b"abcdefgh"];
        // NFS3_OK, no wcc attributes, count, FILE_SYNC, verifier
        let ok = |n: usize| accepted(0, SUCCESS, &words(&[0, 0, 0, n as u32, 2, 1, 2]));
        let (mut conn, mut calls) =
            scripted_recording(datas.iter().map(|d| ok(d.len())).collect()).await;
        for data in datas {
            let mut write = WriteFrom {
                head: WriteHead {
                    file: &file,
                    offset: 1 << 40 | 3,
                    stable: stable_how::FILE_SYNC,
                    len: data.len() as u32,
                },
                data,
            };
            let sent = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                write.exchange(&mut conn),
            );
            let Ok(Ok(Nfs3Result::Ok(res))) = sent.await else {
                panic!("the WRITE of {} bytes failed", data.len());
            };
            assert_eq!(res.count as usize, data.len());
            let call = calls.recv().await.unwrap();
            let expected = whole_args(&file, data);
            assert!(call.ends_with(&expected), "{} bytes of data", data.len());
            assert_eq!(call.len() % 4, 0);
        }
    }
}
