//! Thin fuser adapter: translates kernel requests into calls on the
//! filesystem core and its results into replies. Every request runs as a task
//! on the tokio runtime, so a slow backend call never blocks the FUSE worker
//! threads that read further requests; except on a volume on the local disk,
//! where every request is answered on the worker that read it (a hand-off to
//! another thread and back costs more than the system calls behind most
//! requests), and a few answers from memory on any volume (`answer_now`).
//!
//! Every request that may change the core's state passes the session's
//! `Gate` (gate.rs): a takeover closes it, waits until nothing is being
//! answered, and from then on requests are left unanswered (their replies
//! dropped without a word), so that the successor, which gets the core's
//! state as it is now, has the kernel re-send them.
//!
//! This module holds the adapter and its `Filesystem` implementation,
//! which decodes names (UTF-8, or the request fails with EINVAL) and
//! setattr's changes, and hands each request to the part that answers it:
//! - `init`: INIT, what is asked of the kernel;
//! - `attr`: lookup, forget, getattr, setattr, readlink, statfs;
//! - `namespace`: mknod, mkdir, unlink, rmdir, symlink, rename, link,
//!   create;
//! - `file`: open, read, write, flush, release, fsync, fallocate,
//!   copy_file_range, ioctl;
//! - `dir`: opendir, readdir, readdirplus, releasedir, fsyncdir;
//! - `xattr`: getxattr, listxattr, setxattr, removexattr;
//!
//! with what they share: `convert` (between fuser's types and the core's),
//! `resent` (re-sent requests), `backing` (passthrough backing files and
//! the state a successor inherits), `gate` (takeovers).

mod attr;
mod backing;
mod convert;
mod dir;
mod file;
mod gate;
mod init;
mod namespace;
mod resent;
mod xattr;

use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    CopyFileRangeFlags, FileHandle, Filesystem, INodeNo, KernelConfig, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use backing::BackingIds;
pub use backing::{AdapterState, AdapterStateReader};
pub use convert::KernelNotifier;
use convert::{time, utf8};
pub use gate::Gate;
pub(crate) use init::MAX_IO;

use crate::backend::AttrChanges;
use crate::fs::CachalotFs;

pub(crate) const BLOCK_SIZE: u32 = 128 * 1024;

pub struct FuseAdapter {
    fs: Arc<CachalotFs>,
    rt: tokio::runtime::Handle,
    ttl: Duration,
    backing: Arc<BackingIds>,
    gate: Arc<Gate>,
    /// The kernel's FUSE ABI from INIT (or from the predecessor process).
    abi: Arc<parking_lot::Mutex<Option<(u32, u32)>>>,
    /// Answer every request on the FUSE worker that read it (a backend on
    /// the local disk): no hand-off to the runtime and back.
    inline: bool,
    /// Answer WRITE requests there, borrowing their data.
    inline_writes: bool,
    /// WRITEs being answered inline now (see `write_pass`).
    writing_inline: AtomicUsize,
}

/// WRITEs answered on FUSE workers at once, at most, where only writes are
/// (`inline_writes` without `inline`): such a write may wait for an upload
/// slot, and the other workers must stay free for every other request.
const INLINE_WRITES_MAX: usize = crate::mount::FUSE_THREADS / 2;

/// A WRITE answered inline: the gate's pass and its place among
/// [`INLINE_WRITES_MAX`].
pub(super) struct WritePass<'a> {
    _pass: gate::Pass,
    slot: Option<&'a AtomicUsize>,
}

impl Drop for WritePass<'_> {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            slot.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl FuseAdapter {
    pub fn new(fs: Arc<CachalotFs>, rt: tokio::runtime::Handle) -> FuseAdapter {
        let ttl = fs.config().metadata_ttl;
        FuseAdapter {
            inline: fs.answers_inline(),
            inline_writes: fs.answers_writes_inline(),
            writing_inline: AtomicUsize::new(0),
            fs,
            rt,
            ttl,
            backing: Arc::new(BackingIds::default()),
            gate: Arc::new(Gate::default()),
            abi: Arc::new(parking_lot::Mutex::new(None)),
        }
    }

    /// An adapter for a session another process initialized: INIT will
    /// not come again.
    pub fn resumed(
        fs: Arc<CachalotFs>,
        rt: tokio::runtime::Handle,
        state: &AdapterState,
    ) -> FuseAdapter {
        let adapter = FuseAdapter::new(fs, rt);
        *adapter.abi.lock() = Some(state.abi);
        adapter
            .backing
            .inherited
            .lock()
            .extend(state.backing_ids.iter().copied());
        adapter
    }

    pub fn gate(&self) -> Arc<Gate> {
        Arc::clone(&self.gate)
    }

    /// Reads the adapter's state for a successor (after the gate drained).
    pub fn state_reader(&self) -> AdapterStateReader {
        AdapterStateReader {
            abi: Arc::clone(&self.abi),
            backing: Arc::clone(&self.backing),
        }
    }

    /// Try to answer on this thread (the FUSE worker that read the
    /// request) with `work`, which must not wait for the backend or the
    /// disk (memory only):
    /// `None` if it could not, or the gate is closed (the request then
    /// goes to `spawn`, which holds it). Inside the runtime's context, so
    /// `work` may start background tasks. Keep the pass until the reply
    /// is sent.
    fn answer_now<T>(
        &self,
        work: impl FnOnce(&Arc<CachalotFs>) -> Option<T>,
    ) -> Option<(T, gate::Pass)> {
        let pass = self.gate.enter()?;
        let _runtime = self.rt.enter();
        Some((work(&self.fs)?, pass))
    }

    /// A pass to answer a WRITE on this thread, borrowing its data (not
    /// copied): where writes are answered inline and the gate is open;
    /// else the request goes to `spawn`.
    fn write_pass(&self) -> Option<WritePass<'_>> {
        if !self.inline_writes {
            return None;
        }
        let pass = self.gate.enter()?;
        // Where every request is answered inline, spawning would too.
        let slot = match self.inline {
            true => None,
            false => {
                let busy = &self.writing_inline;
                busy.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < INLINE_WRITES_MAX).then_some(n + 1)
                })
                .ok()?;
                Some(busy)
            }
        };
        Some(WritePass { _pass: pass, slot })
    }

    /// Run `work` to its end on this thread (with a `write_pass`, or where
    /// every request is answered inline).
    fn answer_here(&self, work: impl std::future::Future<Output = ()>) {
        crate::backend::blocking::allow_inline(|| self.rt.block_on(work));
    }

    /// Run `work` on the runtime with a clone of the filesystem (or on this
    /// thread, see `inline`), if the gate is open; else the request stays
    /// unanswered (see `Gate`).
    fn spawn<F, Fut>(&self, work: F)
    where
        F: FnOnce(Arc<CachalotFs>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let Some(pass) = self.gate.enter() else {
            Gate::hold(work);
            return;
        };
        let fs = Arc::clone(&self.fs);
        if self.inline {
            self.answer_here(work(fs));
            drop(pass);
            return;
        }
        self.rt.spawn(async move {
            work(fs).await;
            drop(pass);
        });
    }
}

macro_rules! name_or_reply {
    ($name:expr, $reply:expr) => {
        match utf8($name) {
            Ok(n) => n,
            Err(e) => {
                $reply.error(e);
                return;
            }
        }
    };
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        init::init(self, config)
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name_or_reply!(name, reply);
        attr::lookup(self, req, parent, name, reply)
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        attr::getattr(self, req, ino, reply)
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let changes = AttrChanges {
            mode,
            uid,
            gid,
            atime: atime.map(time),
            mtime: mtime.map(time),
            atime_now: matches!(atime, Some(TimeOrNow::Now)),
            mtime_now: matches!(mtime, Some(TimeOrNow::Now)),
        };
        attr::setattr(self, req, ino, size, changes, reply)
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        attr::readlink(self, req, ino, reply)
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let name = name_or_reply!(name, reply);
        namespace::mknod(self, req, parent, name, mode, umask, rdev, reply)
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = name_or_reply!(name, reply);
        namespace::mkdir(self, req, parent, name, mode, umask, reply)
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        namespace::remove(self, req, parent, name, false, reply)
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        namespace::remove(self, req, parent, name, true, reply)
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let name = name_or_reply!(link_name, reply);
        let target = name_or_reply!(target.as_os_str(), reply);
        namespace::symlink(self, req, parent, name, target, reply)
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let name = name_or_reply!(name, reply);
        let newname = name_or_reply!(newname, reply);
        namespace::rename(self, req, parent, name, newparent, newname, flags, reply)
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let name = name_or_reply!(newname, reply);
        namespace::link(self, req, ino, newparent, name, reply)
    }

    // batch_forget: fuser's default calls this per inode.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        attr::forget(self, ino, nlookup)
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        file::open(self, req, ino, flags, reply)
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        file::read(self, fh, offset, size, reply)
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        file::write(self, req, fh, offset, data, reply)
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        file::flush(self, req, fh, reply)
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        file::release(self, fh, reply)
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        file::fallocate(self, req, fh, offset, length, mode, reply)
    }

    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        file::copy_file_range(self, req, fh_in, offset_in, fh_out, offset_out, len, reply)
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        file::fsync(self, fh, reply)
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        dir::opendir(self, req, ino, reply)
    }

    fn readdir(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        dir::readdir(self, req, fh, offset, reply)
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        dir::readdirplus(self, req, ino, fh, offset, reply)
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        dir::releasedir(self, fh, reply)
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        dir::fsyncdir(reply)
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        attr::statfs(self, req, reply)
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        xattr::getxattr(self, req, ino, name, size, reply)
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        xattr::listxattr(size, reply)
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        xattr::setxattr(self, req, ino, name, value, reply)
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        xattr::removexattr(reply)
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name_or_reply!(name, reply);
        namespace::create(self, req, parent, name, mode, umask, flags, reply)
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        file::ioctl(reply)
    }
}
