//! Which process a request comes from. FUSE reports the calling *thread*;
//! a close by another thread of the writer is the writer's close, a close by
//! a forked child (inheriting the descriptor and closing it at exec) is not.

/// Thread-group id (the process id) of a thread id, from /proc.
fn tgid_of(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The process of a calling thread (the thread id itself if it is gone).
pub fn process_of(tid: u32) -> u32 {
    tgid_of(tid).unwrap_or(tid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_belongs_to_its_process() {
        let me = std::process::id();
        let tid = std::thread::spawn(|| nix::unistd::gettid().as_raw() as u32)
            .join()
            .unwrap();
        // The spawned thread has exited: fall back to its id...
        assert!(process_of(tid) == me || process_of(tid) == tid);
        // ...while the current thread resolves to this process.
        let current = nix::unistd::gettid().as_raw() as u32;
        assert_eq!(process_of(current), me);
    }
}
