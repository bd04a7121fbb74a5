//! Mount children: each staged volume is served by its own
//! `cachalot mount SOURCE STAGING --foreground ...` process, so a crash in
//! one FUSE session cannot take down other volumes or the gRPC server.
//!
//! Children run in their own session (setsid) and without a parent-death
//! signal: a plugin restart (crash, upgrade, SIGKILL) leaves them and their
//! mounts alone, and the restarted plugin adopts them from the records in
//! the state dir. Secrets reach a child through its environment, never its
//! command line. A child reports "mounted" on stdout (the same handshake
//! `cachalot mount` uses for background mode); its stderr goes to a
//! per-volume log file whose tail is quoted when a mount fails.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use parking_lot::Mutex;

use super::params::S3Credentials;
use crate::mount::daemon::{spawn_reporting, READY_LINE};
pub use crate::mount::spec::MountSpec;

struct Child {
    pid: u32,
    /// Set by the waiter thread of a child we spawned; adopted children
    /// (from a previous plugin process) are polled with kill(pid, 0).
    exited: Option<Arc<AtomicBool>>,
}

pub struct Supervisor {
    exe: PathBuf,
    ready_timeout: Duration,
    children: Mutex<HashMap<PathBuf, Child>>,
}

pub fn pid_alive(pid: u32) -> bool {
    pid != 0 && kill(Pid::from_raw(pid as i32), None).is_ok() && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Is `pid` a cachalot mount child serving `staging`? Guards against
/// signalling a recycled pid after a restart.
pub fn is_mount_child(pid: u32, staging: &Path) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    let staging = staging.as_os_str().as_encoded_bytes();
    args.contains(&&b"mount"[..]) && args.contains(&staging)
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Supervisor {
    pub fn new(exe: PathBuf, ready_timeout: Duration) -> Supervisor {
        Supervisor {
            exe,
            ready_timeout,
            children: Mutex::new(HashMap::new()),
        }
    }

    /// Start a mount child and wait until its mount is ready. Blocking.
    pub fn start(
        &self,
        spec: &MountSpec,
        creds: Option<&S3Credentials>,
        log_file: &Path,
    ) -> Result<u32, String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_file)
            .map_err(|e| format!("opening mount log {}: {e}", log_file.display()))?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(spec.args());
        for (k, v) in creds.map(|c| c.env()).unwrap_or_default() {
            cmd.env(k, v);
        }
        let mut child = spawn_reporting(cmd, log)
            .map_err(|e| format!("starting {}: {e}", self.exe.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or("mount child has no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let verdict = rx.recv_timeout(self.ready_timeout);
        if matches!(&verdict, Ok(line) if line.trim() == READY_LINE) {
            let exited = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&exited);
            let staging = spec.staging.clone();
            // Reap the child when it ends so a dead session is visible (and
            // no zombie stays behind).
            std::thread::spawn(move || {
                let status = child.wait();
                flag.store(true, Ordering::SeqCst);
                tracing::info!(pid, staging = %staging.display(), status = ?status, "mount child exited");
            });
            self.children.lock().insert(
                spec.staging.clone(),
                Child {
                    pid,
                    exited: Some(exited),
                },
            );
            tracing::info!(pid, source = %spec.source, staging = %spec.staging.display(), "mount child ready");
            return Ok(pid);
        }
        let why = match verdict {
            Err(_) => {
                let _ = child.kill();
                format!("not mounted after {:?}", self.ready_timeout)
            }
            Ok(_) => "exited before mounting".to_string(),
        };
        let status = child
            .wait()
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        Err(format!(
            "mount child for {} {why} ({status}); last lines of {}:\n{}",
            spec.staging.display(),
            log_file.display(),
            log_tail(log_file, 8)
        ))
    }

    /// Take over a child started by a previous plugin process.
    pub fn adopt(&self, staging: &Path, pid: u32) {
        self.children
            .lock()
            .insert(staging.to_path_buf(), Child { pid, exited: None });
    }

    /// Is the child serving `staging` running?
    pub fn running(&self, staging: &Path) -> Option<u32> {
        let children = self.children.lock();
        let c = children.get(staging)?;
        let alive = match &c.exited {
            Some(flag) => !flag.load(Ordering::SeqCst),
            None => pid_alive(c.pid) && is_mount_child(c.pid, staging),
        };
        alive.then_some(c.pid)
    }

    /// Stop the child serving `staging`: SIGTERM makes it unmount and exit
    /// (a child whose mount was already removed has exited by itself). Also
    /// handles a pid from a record that was never adopted. Blocking;
    /// SIGKILL when SIGTERM did not end it.
    pub fn stop(&self, staging: &Path, recorded_pid: u32) {
        let entry = self.children.lock().remove(staging);
        let pid = entry.as_ref().map(|c| c.pid).unwrap_or(recorded_pid);
        if pid == 0 {
            return;
        }
        let alive = || match entry.as_ref().and_then(|c| c.exited.as_ref()) {
            Some(flag) => !flag.load(Ordering::SeqCst),
            None => pid_alive(pid) && is_mount_child(pid, staging),
        };
        // A child waits up to 10 s for its session to end after unmounting.
        for (signal, wait) in [
            (Signal::SIGTERM, Duration::from_secs(12)),
            (Signal::SIGKILL, Duration::from_secs(2)),
        ] {
            if !alive() {
                return;
            }
            tracing::info!(pid, ?signal, staging = %staging.display(), "stopping mount child");
            let _ = kill(Pid::from_raw(pid as i32), signal);
            let deadline = Instant::now() + wait;
            while alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if alive() {
            tracing::warn!(pid, staging = %staging.display(), "mount child did not exit");
        }
    }
}
