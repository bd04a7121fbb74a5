//! Mounting: build backend + cache + filesystem, start the FUSE session, and
//! tear it down cleanly (signals, external umount, busy mountpoints).
//! Parts: backend.rs (the backend: open, checks, quota), warmup.rs (the
//! background warm-up), spec.rs (what a session is started with),
//! journal.rs, table.rs, daemon.rs.

mod backend;
pub mod daemon;
mod error;
mod handover;
pub mod journal;
mod readahead;
pub mod spec;
pub mod table;
mod warmup;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};

use crate::backend::s3::S3Options;
use crate::backend::timed::Timed;
use crate::backend::{Backend, Identity, Source};
use crate::cache::{PageStoreConfig, VolumeCache};
use crate::fs::{CachalotFs, FsConfig};
use crate::fuse::FuseAdapter;
use crate::metrics;
use backend::{backend_for, forget_stale_spill, preflight, with_capacity};
pub use error::{chain, MountError, MountResult, SourceFailure};
use handover::Handover;
pub use handover::SessionState;

/// FUSE worker threads reading requests. The work runs on tokio, except
/// for a volume on the local disk, whose requests are answered on these
/// threads (see `FuseAdapter`): then they are also how many requests are
/// answered at once. S3 volumes answer WRITEs on them too, on at most half
/// of them (see `fuse::INLINE_WRITES_MAX`).
pub(crate) const FUSE_THREADS: usize = 8;
const COUNTER_PERSIST_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct MountOptions {
    pub source: Source,
    /// The volume's name in metrics (the CSI volume ID; the mountpoint
    /// when absent).
    pub volume: Option<String>,
    pub mountpoint: PathBuf,
    pub cache_dir: PathBuf,
    pub cache_size: u64,
    pub page_size: u64,
    pub metadata_ttl: Duration,
    pub read_only: bool,
    pub allow_other: bool,
    pub identity: Option<Identity>,
    /// FUSE passthrough for fully cached files (read-only mounts, unless
    /// `passthrough_read_write`).
    pub passthrough: bool,
    /// Passthrough on a read-write mount too, for files no writer holds:
    /// descriptors opened that way keep their version when this mount
    /// publishes another (see README, "Open files").
    pub passthrough_read_write: bool,
    /// See [`FsConfig::mount_group`].
    pub mount_group: Option<u32>,
    /// Supplementary groups sent with `identity` (NFS AUTH_SYS).
    pub groups: Vec<u32>,
    /// Options of `s3://` sources (ignored for others).
    pub s3: S3Options,
    /// Skip the mount-time write check of read-write mounts.
    pub skip_preflight: bool,
    /// Files to load into the cache in the background once mounted.
    pub warm: Vec<glob::Pattern>,
    /// The volume's byte quota (see `backend::quota`); `None`: unlimited.
    pub capacity: Option<u64>,
    /// The session may be handed to another process (the mounter's live
    /// takeover and crash recovery): it reads from one `/dev/fuse`
    /// descriptor, no clones (a clone's unanswered requests die with the
    /// process that held it), and keeps a duplicate to hand over.
    pub keepable: bool,
    /// Journal what the kernel depends on in this directory (mounter
    /// sessions), so a successor can rebuild it after a crash.
    pub journal_dir: Option<PathBuf>,
}

/// A live mount. Dropping it unmounts.
pub struct MountedFs {
    pub fs: Arc<CachalotFs>,
    cache: Arc<VolumeCache>,
    companions: Companions,
    mountpoint: PathBuf,
    unmounter: Option<fuser::SessionUnmounter>,
    session: Option<JoinHandle<std::io::Result<()>>>,
    ended: tokio::sync::watch::Receiver<bool>,
    runtime: Arc<tokio::runtime::Runtime>,
    /// A duplicate of the session's `/dev/fuse` descriptor (keepable
    /// sessions): what a successor process or a keeper receives.
    fuse_fd: Option<std::os::fd::OwnedFd>,
    /// What a takeover needs to stop this session and describe it.
    handover: Option<Handover>,
}

impl MountOptions {
    /// A plain read-write mount of `source` on `mountpoint` as the caller:
    /// a 1 GiB cache quota, 1 MiB pages, a 1 s metadata TTL, nothing else
    /// (the demo's; tests start from it).
    pub fn new(source: Source, mountpoint: PathBuf, cache_dir: PathBuf) -> MountOptions {
        MountOptions {
            source,
            volume: None,
            mountpoint,
            cache_dir,
            cache_size: 1 << 30,
            page_size: 1 << 20,
            metadata_ttl: Duration::from_secs(1),
            read_only: false,
            allow_other: false,
            identity: None,
            passthrough: false,
            passthrough_read_write: false,
            mount_group: None,
            groups: Vec::new(),
            s3: Default::default(),
            skip_preflight: false,
            warm: Vec::new(),
            capacity: None,
            keepable: false,
            journal_dir: None,
        }
    }
}

fn fuse_config(opts: &MountOptions) -> Config {
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName(format!("cachalot:{}", opts.source)),
        MountOption::CUSTOM("subtype=cachalot".into()),
        // The kernel checks mode bits against the attributes we report, for
        // every caller: one pod user cannot read another's 0600 file.
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
    ];
    if opts.read_only {
        cfg.mount_options.push(MountOption::RO);
    }
    cfg.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    cfg.n_threads = Some(FUSE_THREADS);
    cfg.clone_fd = !opts.keepable;
    cfg
}

fn new_runtime() -> MountResult<Arc<tokio::runtime::Runtime>> {
    Ok(Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("cachalot-worker")
            .build()
            .map_err(MountError::io("starting the async runtime"))?,
    ))
}

/// The node's cache directory, for this volume (named by its backend's
/// cache identity, so a remount finds its pages).
fn open_cache(opts: &MountOptions, backend: &dyn Backend) -> MountResult<Arc<VolumeCache>> {
    let mut cfg = PageStoreConfig::new(opts.cache_dir.clone(), opts.cache_size, opts.page_size);
    // A backend on this node's disks reads from the disks the pages go to:
    // through the page cache, a page reaches the disk after the reads that
    // fetched it instead of between them (cold random 4 KiB reads of a
    // file:// volume: 7.4-8.3k IOPS with O_DIRECT, 20-21k without).
    cfg.direct_writes = !backend.capabilities().inline_io;
    VolumeCache::open(cfg, backend.cache_identity()).map_err(MountError::Cache)
}

fn fs_config(opts: &MountOptions) -> FsConfig {
    FsConfig {
        metadata_ttl: opts.metadata_ttl,
        read_only: opts.read_only,
        fixed_identity: opts.identity,
        passthrough: opts.passthrough && (opts.read_only || opts.passthrough_read_write),
        mount_group: opts.mount_group,
    }
}

/// Counters for `cachalot cache stats`, readable while we run.
fn persist_counters(runtime: &tokio::runtime::Runtime, cache: &Arc<VolumeCache>) {
    let persisted = Arc::clone(cache);
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(COUNTER_PERSIST_INTERVAL).await;
            let store = Arc::clone(&persisted);
            let _ = tokio::task::spawn_blocking(move || store.persist_counters()).await;
        }
    });
}

/// Run the session's request loop on its own thread.
fn run_session(
    session: fuser::Session<FuseAdapter>,
) -> MountResult<(
    JoinHandle<std::io::Result<()>>,
    tokio::sync::watch::Receiver<bool>,
)> {
    let (ended_tx, ended) = tokio::sync::watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let result = session.run();
            let _ = ended_tx.send(true);
            result
        })
        .map_err(MountError::io("starting the FUSE session thread"))?;
    Ok((thread, ended))
}

/// `cachalot doctor`'s `space` check as a warning, in the background (it
/// measures the cache, which must not delay the mount).
fn warn_if_quota_exceeds_disk(runtime: &tokio::runtime::Runtime, cache: &VolumeCache) {
    // The directory's quota, which may be another mount's (recorded).
    let (dir, quota) = (cache.dir().to_path_buf(), cache.store().quota_bytes());
    runtime.spawn_blocking(move || {
        if let Err(problem) = crate::doctor::cache_space(&dir, quota) {
            tracing::warn!("{problem}");
        }
    });
}

/// What runs beside a serving session, started (again, after a takeover)
/// once it serves.
struct Companions {
    /// Serves the volume's counters at `/metrics` while it lives.
    _metrics: metrics::VolumeRegistration,
    warmup: Option<warmup::BackgroundWarm>,
}

/// Serve the volume's counters at `/metrics` (named by its CSI volume ID,
/// or its mountpoint) and start its warm-up if asked (resumable: a rerun
/// skips what is cached).
fn start_companions(
    opts: &MountOptions,
    fs: &Arc<CachalotFs>,
    backend: Arc<crate::backend::timed::BackendStats>,
) -> Companions {
    let volume = match &opts.volume {
        Some(id) => id.clone(),
        None => opts.mountpoint.display().to_string(),
    };
    let progress = (!opts.warm.is_empty()).then(Default::default);
    let registration =
        metrics::register_volume(&volume, opts.source.kind(), fs, backend, progress.clone());
    let warmup = progress.and_then(|progress| {
        warmup::BackgroundWarm::start(&opts.mountpoint, opts.warm.clone(), progress)
            .inspect_err(|e| tracing::error!(error = %e, "cannot start the warm-up"))
            .ok()
    });
    Companions {
        _metrics: registration,
        warmup,
    }
}

/// Mount and return once the kernel handshake is done (the mount is usable).
pub fn start(opts: MountOptions) -> MountResult<MountedFs> {
    let runtime = new_runtime()?;
    forget_stale_spill(&opts);
    let backend = runtime
        .block_on(async {
            let backend = backend_for(&opts).await?;
            preflight(backend.as_ref(), &opts).await?;
            Ok::<_, SourceFailure>(backend)
        })
        .map_err(MountError::source(format!("mounting {}", opts.source)))?;
    let (backend, backend_stats) = Timed::wrap(backend);
    let backend = with_capacity(&runtime, backend, &opts);
    let cache = open_cache(&opts, backend.as_ref())?;
    warn_if_quota_exceeds_disk(&runtime, &cache);
    let fs = runtime.block_on(CachalotFs::new(
        Arc::clone(&backend),
        Arc::clone(&cache),
        fs_config(&opts),
    ));
    let fs = Arc::new(fs.map_err(MountError::source(format!(
        "checking the source {}",
        opts.source
    )))?);
    if !opts.read_only {
        // In the background: walking a large tree must not delay the mount,
        // and temp files of live writers are never touched.
        let cleaner = Arc::clone(&backend);
        runtime.spawn(async move {
            match cleaner.cleanup_stale_temps().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "cleaned up temp files of crashed writers"),
                Err(e) => tracing::warn!(error = %e, "could not clean up stale temp files"),
            }
        });
    }
    let adapter = FuseAdapter::new(Arc::clone(&fs), runtime.handle().clone());
    let (gate, adapter_state) = (adapter.gate(), adapter.state_reader());
    persist_counters(&runtime, &cache);
    let mut session = fuser::Session::new(adapter, &opts.mountpoint, &fuse_config(&opts)).map_err(
        MountError::io(format!("mounting on {}", opts.mountpoint.display())),
    )?;
    fs.set_kernel_cache(Arc::new(crate::fuse::KernelNotifier(session.notifier())));
    readahead::raise_kernel_readahead(&opts.mountpoint);
    let notifier = session.notifier();
    let fuse_fd = if opts.keepable {
        use std::os::fd::AsFd;
        Some(
            session
                .as_fd()
                .try_clone_to_owned()
                .map_err(MountError::io("duplicating the /dev/fuse descriptor"))?,
        )
    } else {
        None
    };
    let unmounter = session.unmount_callable();
    let quiescer = session.quiescer();
    if let Some(dir) = &opts.journal_dir {
        let abi = adapter_state.read().map(|s| s.abi).ok_or_else(|| {
            MountError::Refused("INIT did not record the kernel's FUSE version".into())
        })?;
        let journal = journal::FileJournal::create(dir, None, abi).map_err(MountError::io(
            format!("starting the session journal in {}", dir.display()),
        ))?;
        fs.set_journal(Arc::new(journal));
    }
    let (thread, ended) = run_session(session)?;
    tracing::info!(source = %opts.source, mountpoint = %opts.mountpoint.display(), "mounted");
    let companions = start_companions(&opts, &fs, backend_stats);
    Ok(MountedFs {
        fs,
        cache,
        companions,
        mountpoint: opts.mountpoint,
        unmounter: Some(unmounter),
        session: Some(thread),
        ended,
        runtime,
        fuse_fd,
        handover: Some(Handover {
            gate,
            adapter: adapter_state,
            notifier,
            quiescer,
        }),
    })
}

fn stop_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Hold SIGTERM and SIGINT until `run_until_signal` handles them (call on
/// the main thread before `start`, so every thread it starts inherits
/// it). Delivered while mounting, their default action killed the daemon
/// and left the mountpoint dead (ENOTCONN) instead of unmounted.
pub fn hold_stop_signals() -> MountResult<()> {
    stop_signals()
        .thread_block()
        .map_err(std::io::Error::from)
        .map_err(MountError::io("holding SIGTERM/SIGINT while mounting"))
}

/// Serve a session another process initialized and handed over: its
/// `/dev/fuse` descriptor, the adapter's and the core's state. No INIT, no
/// preflight and no cleanup of temp files (the predecessor's writes are
/// ours now); the kernel is asked to re-send what the predecessor read and
/// left unanswered.
pub fn resume(
    opts: MountOptions,
    fd: std::os::fd::OwnedFd,
    adapter_state: crate::fuse::AdapterState,
    snapshot: crate::fs::snapshot::FsSnapshot,
) -> MountResult<MountedFs> {
    let runtime = new_runtime()?;
    let backend = runtime
        .block_on(backend_for(&opts))
        .map_err(MountError::source(format!("connecting to {}", opts.source)))?;
    let (backend, backend_stats) = Timed::wrap(backend);
    let backend = with_capacity(&runtime, backend, &opts);
    let cache = open_cache(&opts, backend.as_ref())?;
    let fs = runtime
        .block_on(CachalotFs::restore(
            Arc::clone(&backend),
            Arc::clone(&cache),
            fs_config(&opts),
            snapshot,
        ))
        .map_err(MountError::source(format!(
            "restoring the session of {}",
            opts.source
        )))?;
    let fs = Arc::new(fs);
    // The journal starts from the state as restored (temp objects under
    // their new names), before the first request can change it.
    if let Some(dir) = &opts.journal_dir {
        let journal =
            journal::FileJournal::create(dir, Some(&fs.journal_base()), adapter_state.abi)
                .map_err(MountError::io(format!(
                    "starting the session journal in {}",
                    dir.display()
                )))?;
        fs.set_journal(Arc::new(journal));
    }
    let keep = fd
        .try_clone()
        .map_err(MountError::io("duplicating the /dev/fuse descriptor"))?;
    let adapter = FuseAdapter::resumed(Arc::clone(&fs), runtime.handle().clone(), &adapter_state);
    let (gate, reader) = (adapter.gate(), adapter.state_reader());
    persist_counters(&runtime, &cache);
    let config = fuse_config(&opts);
    let abi = fuser::Version(adapter_state.abi.0, adapter_state.abi.1);
    let session = fuser::Session::resume_from_fd(adapter, fd, config.acl, config, abi);
    fs.set_kernel_cache(Arc::new(crate::fuse::KernelNotifier(session.notifier())));
    let notifier = session.notifier();
    let quiescer = session.quiescer();
    let (thread, ended) = run_session(session)?;
    if let Err(e) = notifier.resend() {
        tracing::warn!(error = %e, "the kernel refused FUSE_NOTIFY_RESEND (Linux < 6.9?): requests the previous process had read stay unanswered");
    }
    tracing::info!(source = %opts.source, mountpoint = %opts.mountpoint.display(), "session resumed");
    let companions = start_companions(&opts, &fs, backend_stats);
    Ok(MountedFs {
        fs,
        cache,
        companions,
        mountpoint: opts.mountpoint,
        unmounter: None,
        session: Some(thread),
        ended,
        runtime,
        fuse_fd: Some(keep),
        handover: Some(Handover {
            gate,
            adapter: reader,
            notifier,
            quiescer,
        }),
    })
}

impl MountedFs {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The session's `/dev/fuse` descriptor (keepable sessions only).
    pub fn fuse_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.fuse_fd.as_ref().map(|fd| fd.as_fd())
    }

    /// Whether the FUSE session still runs (not unmounted from outside).
    pub fn is_serving(&self) -> bool {
        !*self.ended.borrow()
    }

    /// Block until SIGTERM/SIGINT (then unmount) or until someone unmounted
    /// us externally. Call `hold_stop_signals` before `start`.
    pub fn run_until_signal(mut self) -> MountResult<()> {
        let mut ended = self.ended.clone();
        let runtime = Arc::clone(&self.runtime);
        let signalled = runtime
            .block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let mut term = signal(SignalKind::terminate())?;
                let mut int = signal(SignalKind::interrupt())?;
                // Handlers in place: a signal held since `hold_stop_signals`
                // is delivered now, to them.
                stop_signals().thread_unblock()?;
                tokio::select! {
                    _ = term.recv() => Ok::<bool, std::io::Error>(true),
                    _ = int.recv() => Ok(true),
                    _ = ended.wait_for(|e| *e) => Ok(false),
                }
            })
            .map_err(MountError::io("waiting for SIGTERM/SIGINT"))?;
        if signalled {
            tracing::info!(mountpoint = %self.mountpoint.display(), "signal received, unmounting");
        } else {
            tracing::info!(mountpoint = %self.mountpoint.display(), "unmounted externally");
        }
        self.unmount()
    }

    /// Unmount (lazily if the mountpoint is busy) and wait for the session.
    pub fn unmount(&mut self) -> MountResult<()> {
        // Its open files would make the mountpoint busy.
        if let Some(warmup) = &mut self.companions.warmup {
            warmup.stop();
        }
        let unmounted = match self.unmounter.take() {
            Some(mut u) => u.unmount(),
            // Resumed from another process: fuser holds no mount guard.
            None if self.session.is_some() && self.is_serving() => {
                nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::empty())
                    .map_err(std::io::Error::from)
            }
            None => Ok(()),
        };
        match unmounted {
            Ok(()) => {}
            // Not a mount point any more: someone else unmounted or detached
            // it (the node plugin cleaning up after a dead host). The session
            // still ends once the kernel lets go of it.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::info!(mountpoint = %self.mountpoint.display(), "already unmounted");
            }
            Err(e) => {
                tracing::warn!(error = %e, "unmount failed (busy?); detaching lazily");
                nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH)
                    .map_err(std::io::Error::from)
                    .map_err(MountError::io(format!(
                        "lazy unmount of {}",
                        self.mountpoint.display()
                    )))?;
            }
        }
        if let Some(thread) = self.session.take() {
            // After a lazy unmount the kernel keeps the session until the last
            // open file is closed; don't hang forever on it.
            let mut ended = self.ended.clone();
            let done = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), ended.wait_for(|e| *e))
                    .await
                    .is_ok()
            });
            if done {
                match thread.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "FUSE session ended with an error"),
                    Err(_) => tracing::error!("FUSE session thread panicked"),
                }
            } else {
                tracing::warn!("files still open after unmount; exiting anyway");
            }
            self.cache.retire_counters();
        }
        Ok(())
    }
}

impl Drop for MountedFs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::warn!(error = %chain(&e), "unmount on drop failed");
        }
    }
}
