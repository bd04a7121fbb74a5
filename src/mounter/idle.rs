//! What an old mounter becomes after handing its sessions over with
//! `--idle-after-handover`: a process that holds the container up and does
//! nothing else.
//!
//! Idling inside the old process is not enough: its FUSE reader threads
//! still sit in `read(/dev/fuse)` on the descriptors it shared with the
//! successor, and the kernel gives each new request to whichever reader
//! comes first. A request the old process reads is held by its closed gate
//! and never answered, so the pod's call hangs. `execve` ends every other
//! thread before it closes the control socket (which is what tells the
//! successor to send FUSE_NOTIFY_RESEND), so no request can be taken after
//! the resend, and the ones held so far are re-queued by it.

use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicI32, Ordering};

/// The hidden subcommand the process re-executes itself as.
pub const IDLE_COMMAND: &str = "mounter-idle";

/// The main thread's parent-death signal (`PR_SET_PDEATHSIG`, e.g. set by
/// `unshare --kill-child`): the exec happens on another thread, which has
/// none, and would drop it.
static PARENT_DEATH_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Call on the main thread, before the mounter starts its threads.
pub fn remember_parent_death_signal() {
    let mut sig: libc::c_int = 0;
    // SAFETY: PR_GET_PDEATHSIG writes one int at the given address.
    if unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut sig as *mut libc::c_int) } == 0 {
        PARENT_DEATH_SIGNAL.store(sig, Ordering::Relaxed);
    }
}

/// Replace this process by `cachalot mounter-idle` (same PID, same
/// container). Returns only if that failed; the caller then exits, which
/// costs a container restart but hangs nothing.
pub fn become_idle() -> std::io::Error {
    std::process::Command::new("/proc/self/exe")
        .arg0("cachalot")
        .arg(IDLE_COMMAND)
        .arg(format!(
            "--parent-death-signal={}",
            PARENT_DEATH_SIGNAL.load(Ordering::Relaxed)
        ))
        .exec()
}

/// `cachalot mounter-idle`: wait for SIGTERM or SIGINT (blocked by the
/// mounter before the exec; the mask survives it), then exit 0; dies with
/// its parent as the mounter did.
pub fn run(parent_death_signal: i32) -> std::io::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    if parent_death_signal != 0 {
        // SAFETY: plain prctl with an integer argument.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, parent_death_signal) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().map_err(std::io::Error::from)?;
    tracing::info!(
        pid = std::process::id(),
        "handed over to a successor; idling until the pod is deleted"
    );
    let signal = signals.wait().map_err(std::io::Error::from)?;
    tracing::info!(%signal, "stopping the idle predecessor");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_idle_command_exists_and_is_hidden() {
        let cli = crate::cli::Cli::command();
        let idle = cli
            .find_subcommand(super::IDLE_COMMAND)
            .expect("the re-executed command must parse");
        assert!(idle.is_hide_set());
    }
}
