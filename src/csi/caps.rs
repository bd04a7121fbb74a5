//! Volume capabilities: what this driver can serve. A shared filesystem
//! serves every access mode as a mount; raw block is impossible.

use super::params::InvalidArgument;
use super::proto::volume_capability::access_mode::Mode;
use super::proto::volume_capability::AccessType;
use super::proto::VolumeCapability;

/// Mount flags that can be applied to a bind mount of the volume.
const BIND_FLAGS: &[&str] = &[
    "ro",
    "rw",
    "nosuid",
    "nodev",
    "noexec",
    "noatime",
    "relatime",
    "nodiratime",
    "suid",
    "dev",
    "exec",
    "atime",
    "defaults",
];

/// A checked capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub mode: Mode,
    pub mount_flags: Vec<String>,
    pub mount_group: Option<u32>,
}

impl Checked {
    /// Reader modes are published (and staged) read-only.
    pub fn is_reader(&self) -> bool {
        matches!(
            self.mode,
            Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly
        )
    }

    pub fn wants_ro(&self) -> bool {
        self.is_reader() || self.mount_flags.iter().any(|f| f == "ro")
    }
}

pub fn check(cap: &VolumeCapability) -> Result<Checked, InvalidArgument> {
    let bad = |m: String| InvalidArgument(m);
    let mount = match &cap.access_type {
        Some(AccessType::Mount(m)) => m,
        Some(AccessType::Block(_)) => {
            return Err(bad(
                "block access is not supported: cachalot volumes are filesystems (use volumeMode: Filesystem)".into(),
            ))
        }
        None => return Err(bad("volume capability has no access type (mount or block)".into())),
    };
    let mode = cap
        .access_mode
        .as_ref()
        .map(|a| a.mode())
        .unwrap_or(Mode::Unknown);
    if mode == Mode::Unknown {
        return Err(bad(
            "volume capability has no (or an unknown) access mode".into()
        ));
    }
    // mount_flags MAY be sensitive: refer to a bad one by position only.
    for (i, flag) in mount.mount_flags.iter().enumerate() {
        if !BIND_FLAGS.contains(&flag.as_str()) {
            return Err(bad(format!(
                "mount flag #{} is not supported; supported: {}",
                i + 1,
                BIND_FLAGS.join(", ")
            )));
        }
    }
    let mount_group = match mount.volume_mount_group.as_str() {
        "" => None,
        g => Some(g.parse::<u32>().map_err(|_| {
            bad(format!(
                "volume_mount_group '{g}' is not a numeric group id"
            ))
        })?),
    };
    Ok(Checked {
        mode,
        mount_flags: mount.mount_flags.clone(),
        mount_group,
    })
}

/// Check every capability of a request (at least one required).
pub fn check_all(caps: &[VolumeCapability]) -> Result<Vec<Checked>, InvalidArgument> {
    if caps.is_empty() {
        return Err(InvalidArgument("volume_capabilities is required".into()));
    }
    caps.iter().map(check).collect()
}
