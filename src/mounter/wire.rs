//! Framing on the mounter's socket: a frame is a 4-byte big-endian length
//! and that many bytes of JSON. Descriptors travel as SCM_RIGHTS on small
//! marker messages sent right after the frame that announces them. Frames
//! are read with exact reads, never through a read-ahead buffer, which
//! would swallow a marker and drop its descriptors.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest frame accepted: a takeover state of a few million inodes.
pub const MAX_FRAME: usize = 1 << 30;
/// Descriptors per marker message (the kernel's SCM_MAX_FD is 253).
const FDS_PER_MESSAGE: usize = 200;
const MARKER: u8 = b'F';

pub fn write_frame<T: Serialize>(stream: &mut impl Write, value: &T) -> io::Result<()> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| (*l as usize) <= MAX_FRAME)
        .ok_or_else(|| io::Error::other(format!("frame of {} bytes is too large", body.len())))?;
    stream.write_all(&len.to_be_bytes())?;
    stream.write_all(&body)?;
    stream.flush()
}

/// The raw bytes of the next frame.
pub fn read_frame_bytes(stream: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes announced, more than the {MAX_FRAME} accepted (not a cachalot mounter peer?)"),
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok(body)
}

pub fn read_frame<T: DeserializeOwned>(stream: &mut impl Read) -> io::Result<T> {
    let body = read_frame_bytes(stream)?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Send `fds` (a frame announcing them was sent just before).
pub fn send_fds(stream: &UnixStream, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    for chunk in fds.chunks(FDS_PER_MESSAGE) {
        let raw: Vec<RawFd> = chunk.iter().map(|fd| fd.as_raw_fd()).collect();
        let marker = [MARKER, raw.len() as u8];
        let cmsg = [ControlMessage::ScmRights(&raw)];
        sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(&marker)],
            &cmsg,
            MsgFlags::empty(),
            None,
        )
        .map_err(io::Error::from)?;
    }
    Ok(())
}

/// Receive `count` descriptors sent by `send_fds`.
pub fn recv_fds(stream: &UnixStream, count: usize) -> io::Result<Vec<OwnedFd>> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let mut marker = [0u8; 2];
        let mut space = nix::cmsg_space!([RawFd; FDS_PER_MESSAGE]);
        let (bytes, received) = {
            let mut iov = [IoSliceMut::new(&mut marker)];
            let msg = recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(io::Error::from)?;
            let mut received = Vec::new();
            for cmsg in msg.cmsgs().map_err(io::Error::from)? {
                if let ControlMessageOwned::ScmRights(fds) = cmsg {
                    // SAFETY: the kernel just installed these descriptors
                    // in this process for us; nothing else owns them.
                    received.extend(
                        fds.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            (msg.bytes, received)
        };
        if bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("peer closed after {} of {count} descriptors", out.len()),
            ));
        }
        if bytes != 2 || marker[0] != MARKER || usize::from(marker[1]) != received.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "expected a descriptor message, got {bytes} bytes with {} descriptors",
                    received.len()
                ),
            ));
        }
        out.extend(received);
    }
    if out.len() != count {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected {count} descriptors, got {}", out.len()),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn frames_and_descriptors_round_trip() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let files: Vec<std::fs::File> = (0..3).map(|_| tempfile::tempfile().unwrap()).collect();
        write_frame(&mut a, &serde_json::json!({"v": 1, "op": "list"})).unwrap();
        let fds: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
        send_fds(&a, &fds).unwrap();
        write_frame(&mut a, &"after").unwrap();
        let v: serde_json::Value = read_frame(&mut b).unwrap();
        assert_eq!(v["op"], "list");
        let got = recv_fds(&b, 3).unwrap();
        assert_eq!(got.len(), 3);
        let after: String = read_frame(&mut b).unwrap();
        assert_eq!(after, "after");
    }

    #[test]
    fn oversized_or_truncated_frames_are_errors() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let e = read_frame_bytes(&mut b).unwrap_err();
        assert!(e.to_string().contains("not a cachalot mounter peer"), "{e}");
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&10u32.to_be_bytes()).unwrap();
        a.write_all(b"{}").unwrap();
        drop(a);
        assert!(read_frame_bytes(&mut b).is_err());
    }

    #[test]
    fn missing_descriptors_are_an_error_not_a_hang() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"xy").unwrap();
        drop(a);
        assert!(recv_fds(&b, 1).is_err());
    }
}
