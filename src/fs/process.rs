//! Which process a request comes from. FUSE reports the calling *thread*;
//! a close by another thread of the writer is the writer's close, a close by
//! a forked child (inheriting the descriptor and closing it at exec) is not.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::backend::Groups;

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

/// Supplementary groups of calling threads: FUSE tells only uid and gid,
/// but a backend that checks permissions itself (NFS) must be sent the
/// groups the kernel checked. Read from /proc/<tid>/status, remembered for
/// a moment (one read per thread and second, not per request).
#[derive(Default)]
pub struct GroupCache {
    seen: parking_lot::Mutex<HashMap<(u32, u32), (Instant, Groups)>>,
}

/// How long a thread's groups are trusted (a process changing its groups
/// is rare; a thread id reused by another uid misses the key).
const GROUPS_TTL: Duration = Duration::from_secs(2);
/// Entries kept at most; all are dropped when the map is full.
const GROUPS_KEPT: usize = 4096;

impl GroupCache {
    pub fn groups_of(&self, tid: u32, uid: u32) -> Groups {
        if tid == 0 {
            return Groups::NONE; // not a process we can see
        }
        let key = (tid, uid);
        if let Some((at, groups)) = self.seen.lock().get(&key) {
            if at.elapsed() < GROUPS_TTL {
                return *groups;
            }
        }
        let groups = read_groups(tid, uid).unwrap_or(Groups::NONE);
        let mut seen = self.seen.lock();
        if seen.len() >= GROUPS_KEPT {
            seen.clear();
        }
        seen.insert(key, (Instant::now(), groups));
        groups
    }
}

/// The `Groups:` line of a thread acting as `uid` (FUSE reports the
/// filesystem uid); none if the thread id belongs to another user by now.
fn read_groups(tid: u32, uid: u32) -> Option<Groups> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name));
    // Uid: real, effective, saved, filesystem.
    let fs_uid: u32 = field("Uid:")?.split_whitespace().nth(3)?.parse().ok()?;
    if fs_uid != uid {
        return None;
    }
    let ids = field("Groups:")?
        .split_whitespace()
        .filter_map(|g| g.parse().ok());
    Some(Groups::from_ids(ids))
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
        let cache = GroupCache::default();
        assert_eq!(cache.groups_of(tid, uid).as_slice(), &mine[..]);
        assert_eq!(cache.groups_of(tid, uid + 1), Groups::NONE);
        assert_eq!(cache.groups_of(0, uid), Groups::NONE);
    }
}
