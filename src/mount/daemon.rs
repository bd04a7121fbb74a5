//! Background mode: `cachalot mount` without `--foreground` re-executes
//! itself in the foreground as a detached child and returns once that child
//! reports the mount ready (or failed). Re-exec instead of fork(): forking a
//! process with runtime threads is unsafe.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::{MountError, MountResult};

/// Set in the child so it knows to report readiness on stdout.
pub const READY_ENV: &str = "CACHALOT_REPORT_READY";
pub const READY_LINE: &str = "CACHALOT-READY";

/// Start `cmd` as a detached child that reports readiness as a line on
/// its stdout (see `READY_LINE`); its stderr goes to `log`.
pub fn spawn_reporting(mut cmd: Command, log: File) -> std::io::Result<Child> {
    cmd.env(READY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    // SAFETY: setsid is async-signal-safe. A session of its own detaches
    // the child from our terminal, so it outlives this process, and keeps
    // it out of signals aimed at our process group.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    cmd.spawn()
}

/// In the parent: start the child and wait for its verdict.
pub fn spawn_background(args: &[String], log_file: &Path) -> MountResult<u32> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .map_err(MountError::io(format!(
            "opening log file {}",
            log_file.display()
        )))?;
    // Several mounts may share the log file: a failure quotes only what
    // was written after this one started.
    let start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let exe = std::env::current_exe().map_err(MountError::io("locating the cachalot binary"))?;
    let mut cmd = Command::new(exe);
    cmd.args(args).arg("--foreground");
    let mut child =
        spawn_reporting(cmd, log).map_err(MountError::io("starting the mount daemon"))?;
    let pid = child.id();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| MountError::Refused("the mount daemon has no stdout".into()))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).ok();
    if line.trim() == READY_LINE {
        return Ok(pid);
    }
    let status = child.wait().ok();
    let tail = std::fs::read(log_file)
        .map(|bytes| {
            let ours = bytes.get(start as usize..).unwrap_or_default();
            String::from_utf8_lossy(ours)
                .lines()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    Err(MountError::Refused(format!(
        "mount daemon failed ({}); its log lines from {}:\n{}",
        status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown status".into()),
        log_file.display(),
        tail
    )))
}

/// In the child: tell the parent the mount is ready, then let go of stdout.
pub fn report_ready() {
    if std::env::var_os(READY_ENV).is_none() {
        return;
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{READY_LINE}");
    let _ = out.flush();
    // Point stdout at /dev/null so the parent's pipe can close.
    if let Ok(devnull) = OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto fd 1 with a valid open descriptor.
        unsafe {
            libc::dup2(devnull.as_raw_fd(), 1);
        }
    }
}
