//! Thin fuser adapter: translates kernel requests into calls on the
//! filesystem core and its results into replies. Every request runs as a task
//! on the tokio runtime, so a slow backend call never blocks the FUSE worker
//! threads that read further requests.
//!
//! Every request that may change the core's state passes the session's
//! `Gate` (gate.rs): a takeover closes it, waits until nothing is being
//! answered, and from then on requests are left unanswered (their replies
//! dropped without a word), so that the successor, which gets the core's
//! state as it is now, has the kernel re-send them.

mod backing;
mod convert;
mod gate;
mod resent;

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use backing::BackingIds;
pub use backing::{AdapterState, AdapterStateReader};
pub use convert::KernelNotifier;
use convert::{
    caller, created_before, errno, file_attr, file_type, open_flags, removed_before, reply_attr,
    reply_empty, reply_entry, reply_value, time, utf8,
};
pub use gate::Gate;
use resent::{already_applied, is_resent, Change};

use crate::backend::AttrChanges;
use crate::fs::{CachalotFs, OpenMode, CACHED_XATTR, CAPACITY_XATTR, STATS_XATTR};

/// Largest read/write request we ask the kernel for.
const MAX_IO: u32 = 1024 * 1024;
/// Requests the kernel may keep in flight in the background (readahead,
/// async writes); fuser's default of 16 throttles parallel readers.
const MAX_BACKGROUND: u16 = 128;
pub(crate) const BLOCK_SIZE: u32 = 128 * 1024;

pub struct FuseAdapter {
    fs: Arc<CachalotFs>,
    rt: tokio::runtime::Handle,
    ttl: Duration,
    backing: Arc<BackingIds>,
    gate: Arc<Gate>,
    /// The kernel's FUSE ABI from INIT (or from the predecessor process).
    abi: Arc<parking_lot::Mutex<Option<(u32, u32)>>>,
}

impl FuseAdapter {
    pub fn new(fs: Arc<CachalotFs>, rt: tokio::runtime::Handle) -> FuseAdapter {
        let ttl = fs.config().metadata_ttl;
        FuseAdapter {
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

    /// Run `work` on the runtime with a clone of the filesystem, if the
    /// gate is open; else the request stays unanswered (see `Gate`).
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
        let abi = config.kernel_abi();
        *self.abi.lock() = Some((abi.0, abi.1));
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_congestion_threshold(MAX_BACKGROUND * 3 / 4);
        let _ = config.set_max_write(MAX_IO);
        if let Err(max) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(max);
        }
        // Each wanted capability on its own: an old kernel lacking one must
        // not cost us the others.
        for cap in [
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_BIG_WRITES,
            // We drop setuid/setgid ourselves when content changes (see
            // `CachalotFs::write_session`): the kernel would otherwise send
            // a chmod as the writer first, which a backend refuses to a
            // user who is not the owner.
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ] {
            if config.add_capabilities(cap).is_err() {
                tracing::debug!(?cap, "kernel lacks FUSE capability");
            }
        }
        if self.fs.config().passthrough {
            // Depth 2: the cache directory may itself be on overlayfs.
            let granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(2).is_ok();
            if granted {
                self.fs.activate_passthrough();
                tracing::info!("FUSE passthrough enabled for fully cached files");
            } else {
                tracing::info!("kernel without FUSE passthrough; all reads go through cachalot");
            }
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name_or_reply!(name, reply);
        let (c, ttl) = (caller(req), self.ttl);
        self.spawn(move |fs| async move {
            reply_entry(&fs, reply, &ttl, fs.lookup(c, parent.0, &name).await)
        });
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let (c, ttl) = (caller(req), self.ttl);
        self.spawn(
            move |fs| async move { reply_attr(&fs, reply, &ttl, fs.getattr(c, ino.0).await) },
        );
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
        let (c, ttl) = (caller(req), self.ttl);
        self.spawn(move |fs| async move {
            reply_attr(&fs, reply, &ttl, fs.setattr(c, ino.0, size, changes).await)
        });
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let c = caller(req);
        self.spawn(move |fs| async move {
            match fs.readlink(c, ino.0).await {
                Ok(t) => reply.data(t.as_bytes()),
                Err(e) => reply.error(errno(fs.count_error(e))),
            }
        });
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
        let (c, ttl, resent) = (caller(req), self.ttl, is_resent(req));
        self.spawn(move |fs| async move {
            let mode = (mode & libc::S_IFMT) | (mode & 0o7777 & !umask);
            let rdev = convert::dev_from_kernel(rdev);
            let made = fs.mknod(c, parent.0, &name, mode, rdev).await;
            let made = created_before(&fs, c, resent, parent.0, &name, made).await;
            reply_entry(&fs, reply, &ttl, made)
        });
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
        let (c, ttl, resent) = (caller(req), self.ttl, is_resent(req));
        self.spawn(move |fs| async move {
            let made = fs.mkdir(c, parent.0, &name, mode & 0o7777 & !umask).await;
            let made = created_before(&fs, c, resent, parent.0, &name, made).await;
            reply_entry(&fs, reply, &ttl, made)
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        let (c, resent) = (caller(req), is_resent(req));
        self.spawn(move |fs| async move {
            let done = fs.unlink(c, parent.0, &name).await;
            reply_empty(&fs, reply, removed_before(resent, Change::Remove, done))
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        let (c, resent) = (caller(req), is_resent(req));
        self.spawn(move |fs| async move {
            let done = fs.rmdir(c, parent.0, &name).await;
            reply_empty(&fs, reply, removed_before(resent, Change::Remove, done))
        });
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
        let (c, ttl, resent) = (caller(req), self.ttl, is_resent(req));
        self.spawn(move |fs| async move {
            let made = fs.symlink(c, parent.0, &name, &target).await;
            let made = created_before(&fs, c, resent, parent.0, &name, made).await;
            reply_entry(&fs, reply, &ttl, made)
        });
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
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            reply.error(Errno::from_i32(libc::EINVAL));
            return;
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let (c, resent) = (caller(req), is_resent(req));
        self.spawn(move |fs| async move {
            let mut done = fs
                .rename(c, parent.0, &name, newparent.0, &newname, no_replace)
                .await;
            // Re-sent after the first attempt moved it: the source is gone
            // and the target is there.
            if let Err(e) = done {
                if already_applied(resent, Change::Rename, e.errno())
                    && fs.lookup(c, newparent.0, &newname).await.is_ok()
                {
                    done = Ok(());
                }
            }
            reply_empty(&fs, reply, done)
        });
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
        let (c, ttl, resent) = (caller(req), self.ttl, is_resent(req));
        self.spawn(move |fs| async move {
            let made = fs.link(c, ino.0, newparent.0, &name).await;
            let made = created_before(&fs, c, resent, newparent.0, &name, made).await;
            reply_entry(&fs, reply, &ttl, made)
        });
    }

    // batch_forget: fuser's default calls this per inode.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        // Held at a takeover: the successor keeps the reference a little
        // longer (FORGET has no reply to re-send).
        if let Some(_pass) = self.gate.enter() {
            self.fs.forget(ino.0, nlookup);
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mode = OpenMode {
            writable: flags.acc_mode() != OpenAccMode::O_RDONLY,
            truncate: flags.0 & libc::O_TRUNC != 0,
            append: flags.0 & libc::O_APPEND != 0,
        };
        let c = caller(req);
        let backing = Arc::clone(&self.backing);
        self.spawn(move |fs| async move {
            match fs.open(c, ino.0, mode).await {
                Ok(o) => backing.reply(&fs, ino.0, o, reply),
                Err(e) => reply.error(errno(fs.count_error(e))),
            }
        });
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
        self.spawn(move |fs| async move {
            match fs.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(fs.count_error(e))),
            }
        });
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
        let c = caller(req);
        let data = data.to_vec();
        self.spawn(move |fs| async move {
            match fs.write(c, fh.0, offset, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(fs.count_error(e))),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let c = caller(req);
        self.spawn(move |fs| async move { reply_empty(&fs, reply, fs.flush(c, fh.0).await) });
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
        self.backing.release(fh.0);
        self.spawn(move |fs| async move { reply_empty(&fs, reply, fs.release(fh.0).await) });
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
        let c = caller(req);
        self.spawn(move |fs| async move {
            reply_empty(
                &fs,
                reply,
                fs.fallocate(c, fh.0, offset, length, mode).await,
            )
        });
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
        let c = caller(req);
        // The reply's count is 32 bits (the kernel asks for no more).
        let len = len.min(u64::from(u32::MAX) & !0xfff);
        self.spawn(move |fs| async move {
            let copied = fs
                .copy_file_range(c, (fh_in.0, offset_in), (fh_out.0, offset_out), len)
                .await;
            match copied {
                Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
                Err(e) => reply.error(errno(fs.count_error(e))),
            }
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(move |fs| async move { reply_empty(&fs, reply, fs.fsync(fh.0).await) });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let c = caller(req);
        self.spawn(move |fs| async move {
            match fs.opendir(c, ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(fs.count_error(e))),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(_pass) = self.gate.enter() else {
            return Gate::hold(reply);
        };
        match self.fs.readdir(fh.0, offset) {
            Ok(entries) => {
                for (next, e) in entries {
                    if reply.add(INodeNo(e.attr.ino), next, file_type(e.attr.kind), &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(self.fs.count_error(e))),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(_pass) = self.gate.enter() else {
            return Gate::hold(reply);
        };
        match self.fs.readdir(fh.0, offset) {
            Ok(entries) => {
                for (next, mut e) in entries {
                    // Each entry is a kernel reference (except . and ..).
                    let Some(entry_ino) = self.fs.remember_listed(ino.0, &e) else {
                        continue;
                    };
                    e.attr.ino = entry_ino;
                    let attr = file_attr(&e.attr);
                    if reply.add(
                        INodeNo(entry_ino),
                        next,
                        &e.name,
                        &self.ttl,
                        &attr,
                        Generation(0),
                    ) {
                        if e.name != "." && e.name != ".." {
                            self.fs.unremember(entry_ino);
                        }
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(self.fs.count_error(e))),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let Some(_pass) = self.gate.enter() else {
            return Gate::hold(reply);
        };
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory operations are synchronous on the backend already.
        reply.ok();
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let c = caller(req);
        self.spawn(move |fs| async move {
            match fs.statfs(c).await {
                Ok(s) => reply.statfs(
                    s.blocks,
                    s.blocks_free,
                    s.blocks_available,
                    s.files,
                    s.files_free,
                    s.block_size,
                    s.name_max,
                    s.block_size,
                ),
                Err(e) => reply.error(errno(fs.count_error(e))),
            }
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if name == CACHED_XATTR {
            let c = caller(req);
            self.spawn(move |fs| async move {
                match fs.cached_bytes(c, ino.0).await {
                    Ok((cached, total)) => reply_value(reply, size, &format!("{cached} {total}")),
                    Err(e) => reply.error(errno(e)),
                }
            });
            return;
        }
        if ino != INodeNo::ROOT || name != STATS_XATTR {
            reply.error(Errno::from_i32(libc::ENODATA));
            return;
        }
        reply_value(reply, size, &self.fs.stats_json());
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        // No user-visible xattrs (the stats attribute is fetched by name).
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
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
        if ino != INodeNo::ROOT || name != CAPACITY_XATTR {
            reply.error(Errno::from_i32(libc::EOPNOTSUPP));
            return;
        }
        let Some(bytes) = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        else {
            reply.error(Errno::from_i32(libc::EINVAL));
            return;
        };
        let c = caller(req);
        self.spawn(move |fs| async move {
            match fs.set_capacity(c, bytes).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(fs.count_error(e))),
            }
        });
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::from_i32(libc::EOPNOTSUPP));
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
        let exclusive = flags & libc::O_EXCL != 0;
        let open_mode = OpenMode {
            writable: flags & libc::O_ACCMODE != libc::O_RDONLY,
            truncate: flags & libc::O_TRUNC != 0,
            append: flags & libc::O_APPEND != 0,
        };
        let (c, ttl, resent) = (caller(req), self.ttl, is_resent(req));
        self.spawn(move |fs| async move {
            let mode = mode & 0o7777 & !umask;
            let mut made = fs
                .create(c, parent.0, &name, mode, exclusive, open_mode)
                .await;
            // Re-sent O_EXCL create that the first attempt made: open it.
            if matches!(&made, Err(e) if already_applied(resent, Change::Create, e.errno())) {
                made = fs.create(c, parent.0, &name, mode, false, open_mode).await;
            }
            match made {
                Ok((a, o)) => reply.created(
                    &ttl,
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(o.fh),
                    open_flags(o.keep_cache),
                ),
                Err(e) => reply.error(errno(fs.count_error(e))),
            }
        });
    }

    /// No ioctl is supported. ENOTTY is what the kernel answers for a file
    /// without them (Python's `open()` asks for TCGETS on every file), and
    /// it is answered quietly: one log line per call drowned the logs.
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
        reply.error(Errno::from_i32(libc::ENOTTY));
    }
}
