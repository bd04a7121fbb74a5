//! READ replies read into the caller's buffer, against a scripted server
//! on a real TCP connection: the bytes land where they should, the
//! connection is reusable exactly when the reply was read to its end, and
//! malformed replies fail instead of filling the page wrongly.

use nfs3_types::nfs3::{nfs_fh3, nfsstat3, Nfs3Option, Nfs3Result, READ3args};
use nfs3_types::xdr_codec::Opaque;

use super::*;
use crate::backend::nfs::client::scripted::{accepted, scripted, words, PROC_UNAVAIL, SUCCESS};

/// A READ3res body: NFS3_OK, attributes if `attrs`, then `data`.
fn read_ok(attrs: bool, eof: bool, data: &[u8]) -> Vec<u8> {
    let mut b = words(&[0, attrs as u32]);
    if attrs {
        b.extend(words(&[1])); // NF3REG, then the rest of fattr3 zero
        b.extend(vec![0u8; FATTR3_BYTES - 4]);
    }
    b.extend(words(&[data.len() as u32, eof as u32, data.len() as u32]));
    b.extend_from_slice(data);
    b.extend(vec![0u8; (4 - data.len() % 4) % 4]);
    b
}

fn args(count: u32) -> READ3args {
    READ3args {
        file: nfs_fh3 {
            data: Opaque::owned(vec![1, 2, 3, 4]),
        },
        offset: 0,
        count,
    }
}

#[tokio::test]
async fn data_lands_in_the_buffer_and_the_connection_serves_the_next_call() {
    let mut conn = scripted(vec![
        accepted(0, SUCCESS, &read_ok(true, true, b"hello")),
        // a verifier with a body, and no attributes
        accepted(6, SUCCESS, &read_ok(false, false, b"abc")),
    ])
    .await;
    let mut dst = [0u8; 16];
    let Ok(Nfs3Result::Ok((attrs, got))) = read_reply_into(&mut conn, &args(16), &mut dst).await
    else {
        panic!("first READ failed");
    };
    assert!(matches!(attrs, Nfs3Option::Some(_)));
    assert_eq!((got.len, got.eof), (5, true));
    assert_eq!(&dst[..5], b"hello");
    // The padding after "hello" was read too: the next reply parses.
    let mut dst = [0u8; 8];
    let Ok(Nfs3Result::Ok((attrs, got))) = read_reply_into(&mut conn, &args(8), &mut dst).await
    else {
        panic!("second READ failed");
    };
    assert!(matches!(attrs, Nfs3Option::None));
    assert_eq!((got.len, got.eof), (3, false));
    assert_eq!(&dst[..3], b"abc");
}

#[tokio::test]
async fn more_data_than_the_buffer_holds_fails_and_drops_the_connection() {
    let mut conn = scripted(vec![accepted(
        0,
        SUCCESS,
        &read_ok(false, false, b"12345678"),
    )])
    .await;
    let mut dst = [0u8; 4];
    let Err(failed) = read_reply_into(&mut conn, &args(4), &mut dst).await else {
        panic!("an oversized reply was taken");
    };
    assert!(!failed.reusable, "{}", failed.error);
}

#[tokio::test]
async fn bytes_after_the_result_fail_the_reply() {
    let mut body = read_ok(false, true, b"abcd");
    body.extend(words(&[9]));
    let mut conn = scripted(vec![accepted(0, SUCCESS, &body)]).await;
    let mut dst = [0u8; 4];
    let Err(failed) = read_reply_into(&mut conn, &args(4), &mut dst).await else {
        panic!("a reply with trailing bytes was taken");
    };
    assert!(!failed.reusable, "{}", failed.error);
}

#[tokio::test]
async fn an_nfs_error_is_a_result_and_an_rpc_error_is_reported_as_call_does() {
    let stale = words(&[nfsstat3::NFS3ERR_STALE as u32, 0]);
    let mut conn = scripted(vec![
        accepted(0, SUCCESS, &stale),
        accepted(0, PROC_UNAVAIL, &[]),
        accepted(0, SUCCESS, &read_ok(false, true, b"ok")),
    ])
    .await;
    let mut dst = [0u8; 4];
    let res = read_reply_into(&mut conn, &args(4), &mut dst).await;
    assert!(
        matches!(
            res,
            Ok(Nfs3Result::Err((nfsstat3::NFS3ERR_STALE, Nfs3Option::None)))
        ),
        "STALE was not a result"
    );
    let Err(failed) = read_reply_into(&mut conn, &args(4), &mut dst).await else {
        panic!("PROC_UNAVAIL was taken");
    };
    assert!(
        matches!(failed.error, RpcError::ProcUnavail),
        "{}",
        failed.error
    );
    assert!(failed.reusable);
    // It was read whole: the connection goes on.
    let res = read_reply_into(&mut conn, &args(4), &mut dst).await;
    assert!(matches!(res, Ok(Nfs3Result::Ok(_))), "the next call failed");
    assert_eq!(&dst[..2], b"ok");
}
