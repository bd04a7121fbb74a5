//! Tests' RPC server: on one real TCP connection it answers each call
//! with the next scripted reply and hands the call's record to the test,
//! to check what exactly an exchange sent and read.

use nfs3_client::rpc::RpcClient;
use nfs3_client::tokio::TokioIo;
use nfs3_types::rpc::opaque_auth;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::pool::Conn;

pub const REPLY: u32 = 1;
pub const MSG_ACCEPTED: u32 = 0;
pub const SUCCESS: u32 = 0;
pub const PROC_UNAVAIL: u32 = 3;

pub fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_be_bytes()).collect()
}

/// An accepted reply (after the xid) with a verifier of `verf` bytes.
pub fn accepted(verf: usize, stat: u32, body: &[u8]) -> Vec<u8> {
    let mut r = words(&[REPLY, MSG_ACCEPTED, 1, verf as u32]);
    r.extend(vec![7u8; verf.div_ceil(4) * 4]);
    r.extend(words(&[stat]));
    r.extend_from_slice(body);
    r
}

/// A server answering the calls on one connection with `replies`, in
/// order (each after the call's xid), and a client connected to it.
pub async fn scripted(replies: Vec<Vec<u8>>) -> Conn {
    scripted_recording(replies).await.0
}

/// `scripted`, and the records of the calls as they arrive (without
/// their fragment header, which the server checks: one last fragment).
pub async fn scripted_recording(replies: Vec<Vec<u8>>) -> (Conn, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (calls, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        for reply in replies {
            let mut head = [0u8; 4];
            if s.read_exact(&mut head).await.is_err() {
                return;
            }
            let head = u32::from_be_bytes(head);
            assert!(head & 0x8000_0000 != 0, "a call in several fragments");
            let mut call = vec![0u8; (head & 0x7fff_ffff) as usize];
            s.read_exact(&mut call).await.unwrap();
            let mut out = ((reply.len() as u32 + 4) | 0x8000_0000)
                .to_be_bytes()
                .to_vec();
            out.extend_from_slice(&call[..4]); // the xid
            out.extend(reply);
            let _ = calls.send(call);
            s.write_all(&out).await.unwrap();
        }
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    let conn = RpcClient::new_with_auth(
        TokioIo::new(stream),
        opaque_auth::default(),
        opaque_auth::default(),
    );
    (conn, received)
}
