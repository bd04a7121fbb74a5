//! Open files and their data: open, read, write, flush, release, fsync,
//! fallocate, copy_file_range; and ioctl, refused. (create, which opens
//! the file it makes, is with the namespace changes.)

use std::sync::Arc;

use fuser::{
    Errno, FileHandle, INodeNo, OpenAccMode, OpenFlags, ReplyData, ReplyEmpty, ReplyOpen,
    ReplyWrite, Request,
};

use super::convert::{caller, errno, reply_empty};
use super::FuseAdapter;
use crate::fs::{CachalotFs, Caller, OpenMode, WriteData};

pub(super) fn open(
    adapter: &FuseAdapter,
    req: &Request,
    ino: INodeNo,
    flags: OpenFlags,
    reply: ReplyOpen,
) {
    let mode = OpenMode {
        writable: flags.acc_mode() != OpenAccMode::O_RDONLY,
        truncate: flags.0 & libc::O_TRUNC != 0,
        append: flags.0 & libc::O_APPEND != 0,
    };
    let c = caller(req);
    let backing = Arc::clone(&adapter.backing);
    let work = move |fs: Arc<crate::fs::CachalotFs>| async move {
        match fs.open(c, ino.0, mode).await {
            Ok(o) => backing.reply(&fs, ino.0, o, reply),
            Err(e) => reply.error(errno(fs.count_error(e))),
        }
    };
    adapter.spawn(work);
}

pub(super) fn read(
    adapter: &FuseAdapter,
    fh: FileHandle,
    offset: u64,
    size: u32,
    reply: ReplyData,
) {
    let answered = adapter.answer_now(|fs| fs.read_from_memory(fh.0, offset, size));
    if let Some((data, _pass)) = answered {
        reply.data(&data);
        return;
    }
    adapter.spawn(move |fs| async move {
        match fs.read(fh.0, offset, size).await {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(fs.count_error(e))),
        }
    });
}

pub(super) fn write(
    adapter: &FuseAdapter,
    req: &Request,
    fh: FileHandle,
    offset: u64,
    data: &[u8],
    reply: ReplyWrite,
) {
    let c = caller(req);
    if let Some(pass) = adapter.write_pass() {
        let fs = Arc::clone(&adapter.fs);
        let data = WriteData::Lent(data);
        adapter.answer_here(answer_write(fs, c, fh, offset, data, reply));
        drop(pass);
        return;
    }
    // The request's buffer is fuser's to reuse: the one copy of the data,
    // which the backend may keep (see `WriteData`).
    let data = WriteData::Given(bytes::Bytes::copy_from_slice(data));
    adapter.spawn(move |fs| async move { answer_write(fs, c, fh, offset, data, reply).await });
}

async fn answer_write(
    fs: Arc<CachalotFs>,
    c: Caller,
    fh: FileHandle,
    offset: u64,
    data: WriteData<'_>,
    reply: ReplyWrite,
) {
    match fs.write_data(c, fh.0, offset, data).await {
        Ok(n) => reply.written(n),
        Err(e) => reply.error(errno(fs.count_error(e))),
    }
}

pub(super) fn flush(adapter: &FuseAdapter, req: &Request, fh: FileHandle, reply: ReplyEmpty) {
    let c = caller(req);
    adapter.spawn(move |fs| async move { reply_empty(&fs, reply, fs.flush(c, fh.0).await) });
}

pub(super) fn release(adapter: &FuseAdapter, fh: FileHandle, reply: ReplyEmpty) {
    let kernel_mode = adapter.fs.kernel_mode_of(fh.0);
    let backing = Arc::clone(&adapter.backing);
    adapter.spawn(move |fs| async move {
        reply_empty(&fs, reply, fs.release(fh.0).await);
        // The kernel ended the file's I/O mode while taking the reply:
        // until then, other opens of the inode must still be passthrough,
        // with its backing id.
        if let Some((ino, passthrough)) = kernel_mode {
            fs.kernel_released(ino, passthrough);
        }
        backing.release(fh.0);
    });
}

pub(super) fn fallocate(
    adapter: &FuseAdapter,
    req: &Request,
    fh: FileHandle,
    offset: u64,
    length: u64,
    mode: i32,
    reply: ReplyEmpty,
) {
    let c = caller(req);
    adapter.spawn(move |fs| async move {
        reply_empty(
            &fs,
            reply,
            fs.fallocate(c, fh.0, offset, length, mode).await,
        )
    });
}

#[allow(clippy::too_many_arguments)]
pub(super) fn copy_file_range(
    adapter: &FuseAdapter,
    req: &Request,
    fh_in: FileHandle,
    offset_in: u64,
    fh_out: FileHandle,
    offset_out: u64,
    len: u64,
    reply: ReplyWrite,
) {
    let c = caller(req);
    // The reply's count is 32 bits (the kernel asks for no more).
    let len = len.min(u64::from(u32::MAX) & !0xfff);
    adapter.spawn(move |fs| async move {
        let copied = fs
            .copy_file_range(c, (fh_in.0, offset_in), (fh_out.0, offset_out), len)
            .await;
        match copied {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(errno(fs.count_error(e))),
        }
    });
}

pub(super) fn fsync(adapter: &FuseAdapter, fh: FileHandle, reply: ReplyEmpty) {
    adapter.spawn(move |fs| async move { reply_empty(&fs, reply, fs.fsync(fh.0).await) });
}

/// No ioctl is supported. ENOTTY is what the kernel answers for a file
/// without them (Python's `open()` asks for TCGETS on every file), and
/// it is answered quietly: one log line per call drowned the logs.
pub(super) fn ioctl(reply: fuser::ReplyIoctl) {
    reply.error(Errno::from_i32(libc::ENOTTY));
}
