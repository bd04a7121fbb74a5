//! The warm-up a mount starts by itself when asked (`cachalot mount
//! --warm GLOB`, the CSI volume attribute `warm`): the loading of
//! `cachalot warm`, from a thread of the process serving the volume, with
//! its progress in the log and in the volume's metrics. It reads through
//! the mountpoint like any application, so what it loads is exactly what a
//! pod's reads would have fetched.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::warm::{warm, WarmOptions, WarmProgress};

/// Files loaded at the same time: enough to keep a backend busy, few
/// enough to leave the pods' own reads room.
const JOBS: usize = 4;
/// How often the log says how far it got.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// A running warm-up; stopping (or dropping) it waits for its reads to end,
/// so an unmount after it finds no file of it open.
pub struct BackgroundWarm {
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl BackgroundWarm {
    pub fn start(
        mountpoint: &Path,
        globs: Vec<glob::Pattern>,
        progress: Arc<WarmProgress>,
    ) -> std::io::Result<BackgroundWarm> {
        let cancel = Arc::new(AtomicBool::new(false));
        let opts = WarmOptions {
            paths: vec![mountpoint.to_path_buf()],
            jobs: JOBS,
            include: globs,
            exclude: Vec::new(),
            cancel: Arc::clone(&cancel),
        };
        progress.running.store(true, Ordering::Relaxed);
        let thread = std::thread::Builder::new()
            .name("warm-up".into())
            .spawn(move || {
                run(&opts, &progress);
                progress.running.store(false, Ordering::Relaxed);
            })?;
        Ok(BackgroundWarm {
            cancel,
            thread: Some(thread),
        })
    }

    /// Stop loading and wait for the reads in progress.
    pub fn stop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the warm-up thread panicked");
            }
        }
    }
}

impl Drop for BackgroundWarm {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(opts: &WarmOptions, progress: &WarmProgress) {
    let root = opts.paths.first().cloned().unwrap_or_default();
    let globs: Vec<&str> = opts.include.iter().map(glob::Pattern::as_str).collect();
    let globs = globs.join(",");
    let started = Instant::now();
    tracing::info!(mountpoint = %root.display(), %globs, "warm-up started");
    let last_log = parking_lot::Mutex::new(Instant::now());
    let result = warm(opts, |bytes, total_bytes, files, total_files| {
        progress.update(bytes, total_bytes, files, total_files);
        let mut last = last_log.lock();
        if last.elapsed() >= LOG_EVERY && files < total_files {
            *last = Instant::now();
            tracing::info!(
                mountpoint = %root.display(),
                done_bytes = bytes,
                wanted_bytes = total_bytes,
                done_files = files,
                wanted_files = total_files,
                "warm-up in progress"
            );
        }
    });
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            progress.failed_files.store(1, Ordering::Relaxed);
            tracing::warn!(mountpoint = %root.display(), error = %e, "warm-up failed: the volume could not be listed");
            return;
        }
    };
    progress
        .failed_files
        .store(report.failed.len() as u64, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    if opts.cancel.load(Ordering::Relaxed) {
        tracing::info!(mountpoint = %root.display(), seconds, "warm-up stopped (unmounting)");
        return;
    }
    for (path, why) in report.failed.iter().take(20) {
        tracing::warn!(path = %relative(&root, path), error = %why, "warm-up could not load a file");
    }
    if report.failed.is_empty() {
        tracing::info!(
            mountpoint = %root.display(),
            files = report.files,
            bytes = report.bytes,
            already_cached = report.skipped,
            seconds,
            "warm-up finished"
        );
    } else {
        tracing::warn!(
            mountpoint = %root.display(),
            files = report.files,
            failed = report.failed.len(),
            seconds,
            "warm-up finished; some files could not be loaded"
        );
    }
}

/// The path as the pod sees it inside the volume.
fn relative(root: &Path, path: &Path) -> String {
    let rel: PathBuf = path.strip_prefix(root).unwrap_or(path).to_path_buf();
    format!("/{}", rel.display())
}
