//! Which process a request comes from. FUSE reports the calling *thread*;
//! a close by another thread of the writer is the writer's close, a close by
//! a forked child (inheriting the descriptor and closing it at exec) is not.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::backend::Groups;

/// What a calling thread's /proc/<tid>/status tells: its process (thread
/// group), filesystem uid and supplementary groups.
#[derive(Clone, Copy)]
struct ThreadInfo {
    process: u32,
    fs_uid: u32,
    groups: Groups,
}

fn read_status(tid: u32) -> Option<ThreadInfo> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name));
    let process = field("Tgid:")?.trim().parse().ok()?;
    // Uid: real, effective, saved, filesystem.
    let fs_uid = field("Uid:")?.split_whitespace().nth(3)?.parse().ok()?;
    let ids = field("Groups:")?
        .split_whitespace()
        .filter_map(|g| g.parse().ok());
    Some(ThreadInfo {
        process,
        fs_uid,
        groups: Groups::from_ids(ids),
    })
}

/// The calling threads of recent requests, remembered for a moment: one
/// read of /proc per thread and two seconds, not one per request (the file
/// costs tens of microseconds to generate, more than the rest of an open).
#[derive(Default)]
pub struct Threads {
    seen: parking_lot::Mutex<HashMap<u32, (Instant, Option<ThreadInfo>)>>,
}

/// How long a thread's process and groups are trusted (a process changing
/// its groups is rare; a thread id is reused only after the whole pid
/// space went round).
const THREAD_TTL: Duration = Duration::from_secs(2);
/// Entries kept at most; all are dropped when the map is full.
const THREADS_KEPT: usize = 4096;

impl Threads {
    fn info(&self, tid: u32) -> Option<ThreadInfo> {
        if let Some((at, info)) = self.seen.lock().get(&tid) {
            if at.elapsed() < THREAD_TTL {
                return *info;
            }
        }
        let info = read_status(tid);
        let mut seen = self.seen.lock();
        if seen.len() >= THREADS_KEPT {
            seen.clear();
        }
        seen.insert(tid, (Instant::now(), info));
        info
    }

    /// The process of a calling thread (the thread id itself if it is gone).
    pub fn process_of(&self, tid: u32) -> u32 {
        self.info(tid).map_or(tid, |t| t.process)
    }

    /// Supplementary groups of a calling thread: FUSE tells only uid and
    /// gid, but a backend that checks permissions itself (NFS) must be sent
    /// the groups the kernel checked. None if the thread acts as another
    /// filesystem uid than the request's by now.
    pub fn groups_of(&self, tid: u32, uid: u32) -> Groups {
        if tid == 0 {
            return Groups::NONE; // not a process we can see
        }
        match self.info(tid) {
            Some(t) if t.fs_uid == uid => t.groups,
            _ => Groups::NONE,
        }
    }
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
        let threads = Threads::default();
        assert!(threads.process_of(tid) == me || threads.process_of(tid) == tid);
        // ...while the current thread resolves to this process.
        let current = nix::unistd::gettid().as_raw() as u32;
        assert_eq!(threads.process_of(current), me);
    }

    #[test]
    fn a_threads_supplementary_groups_are_read_for_its_uid_only() {
        let tid = nix::unistd::gettid().as_raw() as u32;
        let uid = nix::unistd::getuid().as_raw();
        let mine: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .take(Groups::MAX)
            .collect();
        let cache = Threads::default();
        assert_eq!(cache.groups_of(tid, uid).as_slice(), &mine[..]);
        assert_eq!(cache.groups_of(tid, uid + 1), Groups::NONE);
        assert_eq!(cache.groups_of(0, uid), Groups::NONE);
    }
}
