//! `cachalot warm PATH...`: load files of a mounted volume into its page
//! store before a job needs them, with bounded parallelism and progress.
//!
//! It reads through the mount (so the daemon fetches and stores every
//! page) after dropping the kernel's cached pages of the file, skips files
//! the cache already holds whole (the `user.cachalot.cached` attribute),
//! and so resumes where an interrupted run stopped.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::fs::CACHED_XATTR;

pub struct WarmOptions {
    pub paths: Vec<PathBuf>,
    pub jobs: usize,
    pub include: Vec<glob::Pattern>,
    pub exclude: Vec<glob::Pattern>,
    /// Set to stop early (an unmount must not wait for a whole dataset):
    /// files not loaded yet count as neither loaded nor failed.
    pub cancel: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
pub struct WarmReport {
    pub files: u64,
    pub bytes: u64,
    /// Files the cache already held whole.
    pub skipped: u64,
    pub failed: Vec<(PathBuf, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("{path}: {source}")]
    Walk { path: PathBuf, source: io::Error },
}

/// The files to load: every regular file under `paths`, filtered by the
/// globs (matched against the path relative to the argument it was found
/// under, and against its file name).
fn collect(opts: &WarmOptions) -> Result<Vec<(PathBuf, u64)>, WarmError> {
    let mut out = Vec::new();
    for root in &opts.paths {
        let mut stack = vec![root.clone()];
        while let Some(path) = stack.pop() {
            let meta = std::fs::symlink_metadata(&path).map_err(|source| WarmError::Walk {
                path: path.clone(),
                source,
            })?;
            if meta.is_dir() {
                let entries = std::fs::read_dir(&path).map_err(|source| WarmError::Walk {
                    path: path.clone(),
                    source,
                })?;
                for entry in entries.flatten() {
                    stack.push(entry.path());
                }
            } else if meta.is_file() && wanted(opts, root, &path) {
                out.push((path, meta.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn wanted(opts: &WarmOptions, root: &Path, path: &Path) -> bool {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let name = Path::new(path.file_name().unwrap_or_default());
    let hits = |p: &glob::Pattern| p.matches_path(rel) || p.matches_path(name);
    (opts.include.is_empty() || opts.include.iter().any(hits)) && !opts.exclude.iter().any(hits)
}

/// `(cached, size)` from the file's attribute; None off a cachalot mount.
fn cached(path: &Path) -> Option<(u64, u64)> {
    let value = xattr_get(path, CACHED_XATTR)?;
    let mut parts = value.split_whitespace().map(|p| p.parse::<u64>().ok());
    Some((parts.next()??, parts.next()??))
}

fn xattr_get(path: &Path, name: &str) -> Option<String> {
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 64];
    // SAFETY: both strings are NUL-terminated, the buffer is as long as said.
    let n = unsafe {
        libc::getxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).ok()?;
    String::from_utf8(buf[..n].to_vec()).ok()
}

/// Read the file through the mount, from the daemon (not the kernel's
/// page cache), counting bytes as they arrive.
fn load(path: &Path, bytes: &AtomicU64, cancel: &AtomicBool) -> io::Result<()> {
    let mut file = File::open(path)?;
    // SAFETY: a valid descriptor; advice only.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut buf = vec![0u8; 1 << 20];
    while !cancel.load(Ordering::Relaxed) {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Load every file; `progress` is called about twice a second with the
/// bytes and files done so far (and once at the end).
pub fn warm(
    opts: &WarmOptions,
    progress: impl Fn(u64, u64, u64, u64) + Sync,
) -> Result<WarmReport, WarmError> {
    let files = collect(opts)?;
    let total_bytes: u64 = files.iter().map(|(_, s)| s).sum();
    let total_files = files.len() as u64;
    let queue = Mutex::new(files.into_iter());
    let bytes = Arc::new(AtomicU64::new(0));
    let done = AtomicU64::new(0);
    let skipped = AtomicU64::new(0);
    let failed = Mutex::new(Vec::new());
    let finished = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1) {
            scope.spawn(|| {
                while let Some((path, size)) = queue.lock().next() {
                    if opts.cancel.load(Ordering::Relaxed) {
                        break;
                    }
                    match cached(&path) {
                        Some((have, whole)) if have >= whole => {
                            skipped.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(size, Ordering::Relaxed);
                        }
                        _ => {
                            if let Err(e) = load(&path, &bytes, &opts.cancel) {
                                failed.lock().push((path, e.to_string()));
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                finished.fetch_add(1, Ordering::Release);
            });
        }
        let jobs = opts.jobs.max(1) as u64;
        while finished.load(Ordering::Acquire) < jobs {
            progress(
                bytes.load(Ordering::Relaxed),
                total_bytes,
                done.load(Ordering::Relaxed),
                total_files,
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    progress(
        bytes.load(Ordering::Relaxed),
        total_bytes,
        total_files,
        total_files,
    );
    let mut failed = failed.into_inner();
    failed.sort();
    Ok(WarmReport {
        files: total_files,
        bytes: total_bytes,
        skipped: skipped.into_inner(),
        failed,
    })
}

/// A progress display: a bar with bytes, files, rate and ETA on a
/// terminal, a plain line every few seconds otherwise.
pub fn progress_printer(terminal: bool) -> impl Fn(u64, u64, u64, u64) + Sync {
    let started = Instant::now();
    let last_line = Mutex::new(None::<Instant>);
    let bar = terminal.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        let style = indicatif::ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {msg} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar
    });
    move |bytes, total, files, total_files| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(bytes);
            bar.set_message(format!("{files}/{total_files} files"));
            if files == total_files && bytes >= total {
                bar.finish();
            }
            return;
        }
        let mut last = last_line.lock();
        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(2));
        if due || files == total_files {
            *last = Some(Instant::now());
            let secs = started.elapsed().as_secs_f64().max(0.001);
            eprintln!(
                "warm: {} of {} MiB, {files}/{total_files} files, {:.1} MiB/s",
                bytes >> 20,
                total >> 20,
                bytes as f64 / secs / (1 << 20) as f64
            );
        }
    }
}

/// How far a warm-up got, for the metrics of the volume it loads.
#[derive(Debug, Default)]
pub struct WarmProgress {
    /// Bytes of the wanted files loaded or found cached so far.
    pub done_bytes: AtomicU64,
    pub wanted_bytes: AtomicU64,
    /// Files done: loaded, found cached, or failed.
    pub done_files: AtomicU64,
    pub wanted_files: AtomicU64,
    pub failed_files: AtomicU64,
    pub running: AtomicBool,
}

impl WarmProgress {
    /// Record a progress report of [`warm`].
    pub fn update(&self, bytes: u64, total_bytes: u64, files: u64, total_files: u64) {
        self.done_bytes.store(bytes, Ordering::Relaxed);
        self.wanted_bytes.store(total_bytes, Ordering::Relaxed);
        self.done_files.store(files, Ordering::Relaxed);
        self.wanted_files.store(total_files, Ordering::Relaxed);
    }
}
