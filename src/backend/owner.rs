//! Who wrote a temporary object and whether that writer is gone: the rule
//! every backend's cleanup applies. A temp name carries its writer as
//! `<owner>` = 8 hex digits of a host tag and 8 of the writer's pid (see
//! `path::temp_name_for`); the S3 staging files use the same owner.

use std::time::Duration;

/// Temp objects older than this are stale whoever wrote them (a writer on
/// another host cannot be asked whether it still runs).
pub const FOREIGN_TEMP_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// This host's tag: crc32c of its hostname, as 8 hex digits.
pub fn host_tag() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{:08x}", crc32c::crc32c(host.trim().as_bytes()))
}

/// This process's owner part of temp names: host tag and pid.
pub fn own_tag() -> String {
    format!("{}{:08x}", host_tag(), std::process::id())
}

/// Whether a cachalot process with this pid runs on this host.
pub fn writer_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => comm.trim() == "cachalot",
        Err(_) => false,
    }
}

/// Whether a writer `owner` (16 hex digits) of this host (`host`, see
/// `host_tag`) is gone. Writers of other hosts are not ours to judge.
pub fn is_dead(owner: &str, host: &str) -> bool {
    let Some((their_host, pid)) = owner.split_at_checked(8) else {
        return false;
    };
    if their_host != host {
        return false;
    }
    match u32::from_str_radix(pid, 16) {
        Ok(pid) => !writer_alive(pid),
        Err(_) => false,
    }
}

/// A temp object (owner `owner`, if its name has one, last changed `age`
/// ago) is stale: older than a day, or written on this host by a process
/// that is gone.
pub fn is_stale(owner: Option<&str>, host: &str, age: Duration) -> bool {
    age > FOREIGN_TEMP_MAX_AGE || owner.is_some_and(|o| is_dead(o, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_when_old_or_left_by_a_dead_writer_of_this_host() {
        let host = host_tag();
        let me = own_tag();
        let dead = format!("{host}{:08x}", u32::MAX - 1);
        let elsewhere = format!("ffffffff{:08x}", u32::MAX - 1);
        let fresh = Duration::from_secs(5);
        assert!(!is_stale(Some(&me), &host, fresh), "our own");
        assert!(is_stale(Some(&dead), &host, fresh), "a dead writer here");
        assert!(!is_stale(Some(&elsewhere), &host, fresh), "another host's");
        assert!(!is_stale(None, &host, fresh), "no owner in the name");
        let old = FOREIGN_TEMP_MAX_AGE + Duration::from_secs(1);
        assert!(is_stale(Some(&elsewhere), &host, old), "older than a day");
        assert!(!is_dead("short", &host), "a malformed owner");
    }
}
