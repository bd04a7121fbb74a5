//! This node: the cache directory (there or creatable, writable, temp +
//! rename within it, room for the quota) and the kernel (/dev/fuse, FUSE
//! features by version).

use std::io::Write;
use std::path::Path;

use super::{human_bytes, Doctor, Found, Problem};

pub async fn cache_checks(doc: &mut Doctor<'_>, dir: Option<&Path>, quota: u64) {
    let Some(dir) = dir else {
        doc.skip("cache", "no --cache-dir given");
        doc.skip("space", "no --cache-dir given");
        return;
    };
    doc.step("cache", async { cache_dir(dir).map(|m| ((), m)) })
        .await;
    doc.step("space", async {
        cache_space(dir, quota).map(|m| ((), Found::from(m)))
    })
    .await;
}

/// The cache directory exists (or is created, as a mount would), and a
/// page can be written to a temporary file and renamed into place.
pub fn cache_dir(dir: &Path) -> Result<Found, Problem> {
    let shown = dir.display();
    if dir.exists() && !dir.is_dir() {
        return Err(Problem::new(
            format!("{shown} is not a directory"),
            "give --cache-dir a directory (created if missing)",
        ));
    }
    let created = !dir.exists();
    std::fs::create_dir_all(dir).map_err(|e| {
        Problem::new(
            format!("cannot create {shown}: {e}"),
            "give --cache-dir a path whose parent is writable",
        )
    })?;
    let pid = std::process::id();
    let temp = dir.join(format!(".doctor-{pid}.tmp"));
    let target = dir.join(format!(".doctor-{pid}"));
    let step = |what: &str, e: std::io::Error| {
        let _ = std::fs::remove_file(&temp);
        let _ = std::fs::remove_file(&target);
        Problem::new(
            format!("cannot {what} in {shown}: {e}"),
            "make the cache directory writable by the mounting user, on a local disk that \
             supports rename",
        )
    };
    let mut file = std::fs::File::create(&temp).map_err(|e| step("create a file", e))?;
    file.write_all(b"cachalot doctor\n")
        .and_then(|()| file.sync_all())
        .map_err(|e| step("write a file", e))?;
    std::fs::rename(&temp, &target).map_err(|e| step("rename a file", e))?;
    std::fs::remove_file(&target).map_err(|e| step("remove a file", e))?;
    let was = if created { "created" } else { "exists" };
    Ok(format!("{shown} {was}; a page file can be written and renamed in place").into())
}

/// Room on the cache's disk for the quota: the free space plus what the
/// cache already holds there. `mount` warns with the same message.
pub fn cache_space(dir: &Path, quota: u64) -> Result<String, Problem> {
    let st = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| Problem::explained(format!("statvfs {}: {e}", dir.display())))?;
    #[allow(clippy::unnecessary_cast)]
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    let held = crate::cache::summarize(dir).map(|s| s.bytes).unwrap_or(0);
    let room = free.saturating_add(held);
    let shown = dir.display();
    if quota > room {
        return Err(Problem::new(
            format!(
                "cache quota {} is more than the {} free on the disk of {shown} (plus {} \
                 already cached)",
                human_bytes(quota),
                human_bytes(free),
                human_bytes(held)
            ),
            format!(
                "lower --cache-size to at most {} or free space on that disk",
                human_bytes(room)
            ),
        ));
    }
    Ok(format!(
        "cache quota {} fits: {} free on the disk of {shown}",
        human_bytes(quota),
        human_bytes(free)
    ))
}

pub async fn kernel_checks(doc: &mut Doctor<'_>) {
    doc.step("fuse", async { fuse_device().map(|m| ((), m)) })
        .await;
    doc.next_group();
    doc.step("kernel", async { Ok(((), kernel())) }).await;
}

/// /dev/fuse is there and opens.
pub fn fuse_device() -> Result<Found, Problem> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => Ok("/dev/fuse opens for reading and writing".to_string().into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Problem::new(
            "/dev/fuse does not exist",
            "load the fuse module (modprobe fuse); in a container, give it /dev/fuse \
             (the chart's node plugin runs privileged)",
        )),
        Err(e) => Err(Problem::new(
            format!("/dev/fuse does not open: {e}"),
            "run as root or with CAP_SYS_ADMIN; in a container, allow the device \
             (privileged, or a device cgroup rule for c 10:229)",
        )),
    }
}

/// The running kernel's release (`6.9.0-...`).
pub fn kernel_release() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string())
}

/// `(major, minor)` of a kernel release string.
fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Optional FUSE features by kernel version: passthrough of fully cached
/// files and FUSE_NOTIFY_RESEND (mounter crash recovery) need Linux 6.9.
fn kernel() -> Found {
    let Some(release) = kernel_release() else {
        return Found {
            message: "kernel version unknown (/proc/sys/kernel/osrelease unreadable); \
                      passthrough and crash recovery need Linux ≥ 6.9"
                .into(),
            info: true,
        };
    };
    match version(&release) {
        Some(v) if v >= (6, 9) => Found::from(format!(
            "Linux {release}: FUSE passthrough and request resend (crash recovery) available"
        )),
        _ => Found {
            message: format!(
                "Linux {release}: FUSE passthrough and request resend need Linux ≥ 6.9 \
                 (optional: cached reads go through cachalot, a crashed mounter's requests \
                 fail instead of being re-sent)"
            ),
            info: true,
        },
    }
}

#[cfg(test)]
pub(super) fn parse_version(release: &str) -> Option<(u32, u32)> {
    version(release)
}
