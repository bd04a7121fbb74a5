//! RPC client implementation

use std::fmt::Debug;

use nfs3_types::rpc::{
    RPC_VERSION_2, accept_stat_data, call_body, fragment_header, msg_body, opaque_auth, reply_body,
    rpc_msg,
};
use nfs3_types::xdr_codec::{Pack, Unpack};

use crate::RpcError;
use crate::io::{AsyncRead, AsyncWrite};

/// RPC client
pub struct RpcClient<IO> {
    io: IO,
    xid: u32,
    credential: opaque_auth<'static>,
    verifier: opaque_auth<'static>,
}

impl<IO> Debug for RpcClient<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> Result<(), std::fmt::Error> {
        f.debug_struct("RpcClient").finish()
    }
}

impl<IO> RpcClient<IO>
where
    IO: AsyncRead + AsyncWrite + Send,
{
    /// Create a new RPC client. XID is initialized to a random value.
    pub fn new(io: IO) -> Self {
        Self::new_with_auth(io, opaque_auth::default(), opaque_auth::default())
    }

    /// Create a new RPC client with custom credential and verifier.
    pub fn new_with_auth(
        io: IO,
        credential: opaque_auth<'static>,
        verifier: opaque_auth<'static>,
    ) -> Self {
        Self {
            io,
            xid: fastrand::u32(..),
            credential,
            verifier,
        }
    }

    /// Call an RPC procedure
    ///
    /// # Errors and connection state
    ///
    /// On a successful return the connection is in a clean state and may be
    /// reused for the next call. When an error is returned, use
    /// [`RpcError::is_connection_reusable`] to decide whether the
    /// connection can be kept.
    #[expect(
        clippy::similar_names,
        reason = "prog and proc are fields of call_body"
    )]
    pub async fn call<C, R>(
        &mut self,
        prog: u32,
        vers: u32,
        proc: u32,
        args: &C,
    ) -> Result<R, RpcError>
    where
        R: Unpack,
        C: Pack + Send + Sync,
    {
        let call = call_body {
            rpcvers: RPC_VERSION_2,
            prog,
            vers,
            proc,
            cred: self.credential.borrow(),
            verf: self.verifier.borrow(),
        };
        let msg = rpc_msg {
            xid: self.xid,
            body: msg_body::CALL(call),
        };
        self.xid = self.xid.wrapping_add(1);

        Self::send_call(&mut self.io, &msg, args).await?;
        Self::recv_reply::<R>(&mut self.io, msg.xid).await
    }

    /// Like [`call`](Self::call), with `payload` sent after `args` as the
    /// bytes of an XDR opaque whose length `args` ends with (the padding is
    /// added here): bulk data (an NFS WRITE's) goes to the connection from
    /// the caller's buffer instead of being copied into the call's.
    pub async fn call_with_payload<C, R>(
        &mut self,
        prog: u32,
        vers: u32,
        proc: u32,
        args: &C,
        payload: &[u8],
    ) -> Result<R, RpcError>
    where
        R: Unpack,
        C: Pack + Send + Sync,
    {
        let call = call_body {
            rpcvers: RPC_VERSION_2,
            prog,
            vers,
            proc,
            cred: self.credential.borrow(),
            verf: self.verifier.borrow(),
        };
        let msg = rpc_msg {
            xid: self.xid,
            body: msg_body::CALL(call),
        };
        self.xid = self.xid.wrapping_add(1);

        let pad = (4 - payload.len() % 4) % 4;
        let head_len = msg.packed_size() + args.packed_size();
        let total_len = head_len + payload.len() + pad;
        if !total_len.is_multiple_of(4) {
            return Err(RpcError::WrongLength);
        }
        let fragment_header = nfs3_types::rpc::fragment_header::new(
            u32::try_from(total_len).map_err(|_| RpcError::WrongLength)?,
            true,
        );
        let mut buf = Vec::with_capacity(head_len + 4);
        fragment_header.pack(&mut buf)?;
        msg.pack(&mut buf)?;
        args.pack(&mut buf)?;
        if buf.len() - 4 != head_len {
            return Err(RpcError::WrongLength);
        }
        self.io.async_write_all(&buf).await?;
        self.io.async_write_all(payload).await?;
        if pad > 0 {
            self.io.async_write_all(&[0u8; 4][..pad]).await?;
        }
        Self::recv_reply::<R>(&mut self.io, msg.xid).await
    }

    /// Call an RPC procedure and hand back the body of its reply (the
    /// procedure's result, after the RPC reply header) to be read by the
    /// caller, instead of reading the whole reply into one buffer and
    /// decoding it from there: for replies that carry bulk data (an NFS
    /// READ), whose bytes can then go straight into the caller's buffers.
    ///
    /// The errors are those of [`call`](Self::call) up to the end of the
    /// RPC header. The connection may be used for the next call only after
    /// the body was read to its end ([`ReplyBody::remaining`] is 0).
    pub async fn call_streamed<C>(
        &mut self,
        prog: u32,
        vers: u32,
        proc: u32,
        args: &C,
    ) -> Result<ReplyBody<'_, IO>, RpcError>
    where
        C: Pack + Send + Sync,
    {
        let call = call_body {
            rpcvers: RPC_VERSION_2,
            prog,
            vers,
            proc,
            cred: self.credential.borrow(),
            verf: self.verifier.borrow(),
        };
        let msg = rpc_msg {
            xid: self.xid,
            body: msg_body::CALL(call),
        };
        self.xid = self.xid.wrapping_add(1);

        Self::send_call(&mut self.io, &msg, args).await?;
        let (buffered, remaining) = Self::recv_reply_header(&mut self.io, msg.xid).await?;
        Ok(ReplyBody {
            io: &mut self.io,
            buffered,
            remaining,
        })
    }

    /// Read a reply's RPC header: the body bytes read with it (only when
    /// the header was not the common accepted-and-successful one) and how
    /// many body bytes are left on the stream after those.
    async fn recv_reply_header(io: &mut IO, xid: u32) -> Result<(Vec<u8>, usize), RpcError> {
        // xid, message type, reply status, verifier flavor and length
        const FIXED: usize = 20;
        // RFC 5531: an opaque_auth body holds at most 400 bytes.
        const MAX_AUTH_BYTES: usize = 400;
        const REPLY: u32 = 1;
        const MSG_ACCEPTED: u32 = 0;
        const SUCCESS: u32 = 0;

        let mut buf = [0u8; 4];
        io.async_read_exact(&mut buf).await?;
        let fragment_header: fragment_header = buf.into();
        if !fragment_header.eof() {
            return Err(RpcError::FragmentedReply);
        }
        let total_len = fragment_header.fragment_length() as usize;

        let mut head = vec![0u8; total_len.min(FIXED)];
        io.async_read_exact(&mut head).await?;
        let word = |b: &[u8], at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let mut plain_success = false;
        if head.len() == FIXED && word(&head, 4) == REPLY && word(&head, 8) == MSG_ACCEPTED {
            let verf_len = (word(&head, 16) as usize).div_ceil(4) * 4;
            let len = FIXED + verf_len + 4;
            if verf_len <= MAX_AUTH_BYTES && len <= total_len {
                head.resize(len, 0);
                io.async_read_exact(&mut head[FIXED..]).await?;
                plain_success = word(&head, len - 4) == SUCCESS;
            }
        }
        if !plain_success {
            // Denied, failed or odd: read all of it and decode it as `call`
            // does, to report the same errors.
            let at = head.len();
            head.resize(total_len, 0);
            io.async_read_exact(&mut head[at..]).await?;
        }

        let mut cursor = std::io::Cursor::new(head);
        let (resp_msg, _) = rpc_msg::unpack(&mut cursor)?;
        if resp_msg.xid != xid {
            return Err(RpcError::UnexpectedXid);
        }
        let reply = match resp_msg.body {
            msg_body::REPLY(reply_body::MSG_ACCEPTED(reply)) => reply,
            msg_body::REPLY(reply_body::MSG_DENIED(r)) => return Err(RpcError::from(r)),
            msg_body::CALL(_) => return Err(RpcError::UnexpectedCall),
        };
        if !matches!(reply.reply_data, accept_stat_data::SUCCESS) {
            return Err(RpcError::try_from(reply.reply_data)
                .expect("accept_stat_data::SUCCESS is not a valid error"));
        }
        let pos = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
        let head = cursor.into_inner();
        let buffered = head.get(pos..).unwrap_or_default().to_vec();
        Ok((buffered, total_len - head.len()))
    }

    async fn send_call<T>(io: &mut IO, msg: &rpc_msg<'_, '_>, args: &T) -> Result<(), RpcError>
    where
        T: Pack + Send + Sync,
    {
        let total_len = msg.packed_size() + args.packed_size();
        if !total_len.is_multiple_of(4) {
            return Err(RpcError::WrongLength);
        }

        let fragment_header = nfs3_types::rpc::fragment_header::new(
            u32::try_from(total_len).expect("message is too large"),
            true,
        );
        let mut buf = Vec::with_capacity(total_len + 4);
        fragment_header.pack(&mut buf)?;
        msg.pack(&mut buf)?;
        args.pack(&mut buf)?;
        if buf.len() - 4 != total_len {
            return Err(RpcError::WrongLength);
        }
        io.async_write_all(&buf).await?;
        Ok(())
    }

    async fn recv_reply<T>(io: &mut IO, xid: u32) -> Result<T, RpcError>
    where
        T: Unpack,
    {
        let mut buf = [0u8; 4];
        io.async_read_exact(&mut buf).await?;
        let fragment_header: fragment_header = buf.into();
        if !fragment_header.eof() {
            return Err(RpcError::FragmentedReply);
        }

        let total_len = fragment_header.fragment_length();
        let mut buf = vec![0u8; total_len as usize];
        io.async_read_exact(&mut buf).await?;

        let mut cursor = std::io::Cursor::new(buf);
        let (resp_msg, _) = rpc_msg::unpack(&mut cursor)?;

        if resp_msg.xid != xid {
            return Err(RpcError::UnexpectedXid);
        }

        let reply = match resp_msg.body {
            msg_body::REPLY(reply_body::MSG_ACCEPTED(reply)) => reply,
            msg_body::REPLY(reply_body::MSG_DENIED(r)) => return Err(RpcError::from(r)),
            msg_body::CALL(_) => return Err(RpcError::UnexpectedCall),
        };

        if !matches!(reply.reply_data, accept_stat_data::SUCCESS) {
            return Err(RpcError::try_from(reply.reply_data)
                .expect("accept_stat_data::SUCCESS is not a valid error"));
        }

        let (final_value, _) = T::unpack(&mut cursor)?;
        if cursor.position() != u64::from(total_len) {
            let pos = cursor.position();
            return Err(RpcError::NotFullyParsed {
                buf: cursor.into_inner(),
                pos,
            });
        }
        Ok(final_value)
    }
}

/// The body of a reply from [`RpcClient::call_streamed`], read by the caller
/// in order.
pub struct ReplyBody<'a, IO> {
    io: &'a mut IO,
    /// Body bytes read along with the header (rare; see `recv_reply_header`).
    buffered: Vec<u8>,
    /// Body bytes still on the stream, after `buffered`.
    remaining: usize,
}

impl<IO> Debug for ReplyBody<'_, IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> Result<(), std::fmt::Error> {
        f.debug_struct("ReplyBody")
            .field("remaining", &(self.buffered.len() + self.remaining))
            .finish()
    }
}

impl<IO> ReplyBody<'_, IO>
where
    IO: AsyncRead + Send,
{
    /// Bytes of the body not read yet.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.buffered.len() + self.remaining
    }

    /// Fill `buf` with the next bytes of the body. A body shorter than
    /// `buf` is an XDR error (`UnexpectedEof`), as decoding it would be.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), RpcError> {
        if buf.len() > self.remaining() {
            return Err(RpcError::Xdr(nfs3_types::xdr_codec::Error::Io(
                std::io::ErrorKind::UnexpectedEof.into(),
            )));
        }
        let from_buffer = buf.len().min(self.buffered.len());
        buf[..from_buffer].copy_from_slice(&self.buffered[..from_buffer]);
        self.buffered.drain(..from_buffer);
        let rest = &mut buf[from_buffer..];
        if !rest.is_empty() {
            self.io.async_read_exact(rest).await?;
            self.remaining -= rest.len();
        }
        Ok(())
    }

    /// Decode a value of `len` bytes from the body.
    pub async fn unpack<T: Unpack>(&mut self, len: usize) -> Result<T, RpcError> {
        let mut buf = vec![0u8; len];
        self.read_exact(&mut buf).await?;
        let mut cursor = std::io::Cursor::new(buf);
        let (value, _) = T::unpack(&mut cursor)?;
        if cursor.position() != len as u64 {
            let pos = cursor.position();
            return Err(RpcError::NotFullyParsed {
                buf: cursor.into_inner(),
                pos,
            });
        }
        Ok(value)
    }
}
