//! Command line: parsed and validated at the edge, so a bad argument is one
//! clear line and exit code 2 (clap's usage-error code) before anything runs.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::backend::Source;

#[derive(Debug, Parser)]
#[command(
    name = "cachalot",
    version,
    about = "A cached POSIX view of shared storage: local directories, NFS exports and S3 buckets"
)]
pub struct Cli {
    /// Log line format on stderr (and in a background mount's log file):
    /// `text` for people, `json` (one object per line) for log pipelines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "CACHALOT_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

// Parsed once per process: the size of the biggest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount SOURCE at MOUNTPOINT with a local page cache and atomic writes.
    Mount(MountArgs),
    /// Build a sample directory, mount it, show a cold and a cached read, unmount.
    Demo(DemoArgs),
    /// Inspect or empty a cache directory.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Run the Kubernetes CSI plugin (identity + controller and/or node).
    Csi(CsiArgs),
    /// Serve every FUSE session of the node in one long-lived process (CSI
    /// volumes); a second one started on the same socket takes over live.
    Mounter(MounterArgs),
    /// What a mounter re-executes itself as after a handover with
    /// `--idle-after-handover` (internal).
    #[command(hide = true)]
    MounterIdle {
        /// The parent-death signal the mounter had (0: none), set again:
        /// an execve from another thread than the main one loses it.
        #[arg(long, default_value_t = 0)]
        parent_death_signal: i32,
    },
    /// List the FUSE sessions a mounter serves.
    Sessions(SessionsArgs),
    /// Load files of a mounted volume into its cache (resumable).
    Warm(WarmArgs),
    /// Check what mounting SOURCE needs, in order, with the cause and the fix of each failure.
    Doctor(DoctorArgs),
}

#[derive(Debug, Args)]
pub struct CsiArgs {
    /// gRPC endpoint: unix:///path/to/csi.sock
    #[arg(long, default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// This node's name (NodeGetInfo), usually the Kubernetes node name.
    #[arg(long, env = "NODE_ID")]
    pub node_id: String,
    /// Serve the controller service (default: both roles when neither is given).
    #[arg(long)]
    pub controller: bool,
    /// Serve the node service (default: both roles when neither is given).
    #[arg(long)]
    pub node: bool,
    /// The node's page cache directory, shared by every volume on the node.
    #[arg(long)]
    pub cache_dir: PathBuf,
    /// Where the plugin records staged volumes and controller state.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// How long NodeStageVolume waits for a volume's FUSE session to be ready.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub mount_timeout: Duration,
    /// Unix socket of the node's `cachalot mounter`: NodeStage asks it to
    /// serve the volume, so FUSE sessions outlive this plugin. Without it
    /// every volume runs in a `cachalot mount` child of this plugin and dies
    /// with the plugin's container (for trying things out only).
    #[arg(long, value_name = "PATH")]
    pub mounter_socket: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9810).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct MounterArgs {
    /// Unix socket the CSI node plugin (and a successor mounter) talks to.
    #[arg(
        long,
        default_value = "/run/cachalot/mounter.sock",
        value_name = "PATH"
    )]
    pub socket: PathBuf,
    /// Where the mounter keeps what a successor needs after a crash
    /// (root-only files).
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// The node's page cache directory, shared by every session.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: PathBuf,
    /// Byte quota of the node's page cache (sessions that do not set their own).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub cache_size: Option<u64>,
    /// How long a successor waits for the running mounter to hand over.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub takeover_timeout: Duration,
    /// After handing the sessions to a successor, stay alive doing nothing
    /// until stopped, instead of exiting 0 (in a DaemonSet, whose pods
    /// restart exited containers).
    #[arg(long)]
    pub idle_after_handover: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9810).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct WarmArgs {
    /// Files or directories (recursively) on a cachalot mount.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Files loaded at the same time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Only files matching this glob (path below PATH, or file name); repeatable.
    #[arg(long, value_name = "GLOB", value_parser = parse_glob)]
    pub include: Vec<glob::Pattern>,
    /// Skip files matching this glob; repeatable.
    #[arg(long, value_name = "GLOB", value_parser = parse_glob)]
    pub exclude: Vec<glob::Pattern>,
}

pub fn parse_glob(text: &str) -> Result<glob::Pattern, String> {
    glob::Pattern::new(text).map_err(|e| format!("'{text}' is not a glob: {e}"))
}

#[derive(Debug, Args)]
pub struct SessionsArgs {
    /// The mounter's unix socket.
    #[arg(
        long,
        default_value = "/run/cachalot/mounter.sock",
        value_name = "PATH"
    )]
    pub socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Print nothing; exit 0 when a mounter of this cachalot version
    /// answers (the DaemonSet's probes).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Size, page count, quota and hit/miss/eviction counters of all mounts using DIR.
    Stats {
        #[arg(long)]
        cache_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove every cached page (running mounts refetch on demand).
    Clear {
        #[arg(long)]
        cache_dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Where the data lives: file:///absolute/path, nfs://server[:port]/export/path or s3://bucket[/prefix]
    // Kept as text and parsed by `source()`, not by a clap value parser: clap's
    // "invalid value" error would echo the raw argument, password and all.
    #[arg(value_name = "SOURCE")]
    pub source: String,
    /// An existing, empty directory to mount on.
    #[arg(value_parser = parse_mountpoint)]
    pub mountpoint: PathBuf,
    /// Directory for cached pages (shared by all mounts of the node).
    #[arg(long)]
    pub cache_dir: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9810).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Upper bound for the cache's disk usage, e.g. 512MiB, 10GiB.
    #[arg(long, default_value = "10GiB", value_parser = parse_size)]
    pub cache_size: u64,
    /// Size of one cached page: a power of two from 4KiB to 64MiB.
    #[arg(long, default_value = "1MiB", value_parser = parse_page_size)]
    pub page_size: u64,
    /// How long metadata is trusted before asking the backend, e.g. 1s, 500ms, 0s.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub metadata_ttl: Duration,
    /// Refuse every change with EROFS.
    #[arg(long)]
    pub read_only: bool,
    /// Let users other than the mounting user in (permissions still enforced).
    #[arg(long)]
    pub allow_other: bool,
    /// Stay in the foreground until unmounted (default: return once mounted).
    #[arg(long)]
    pub foreground: bool,
    /// Perform every backend operation as this uid (default: the caller's).
    #[arg(long, requires = "gid")]
    pub uid: Option<u32>,
    /// Perform every backend operation as this gid (default: the caller's).
    #[arg(long, requires = "uid")]
    pub gid: Option<u32>,
    /// Never hand fully cached files to the kernel for direct reads (FUSE
    /// passthrough is otherwise used on --read-only mounts where the kernel
    /// supports it).
    #[arg(long)]
    pub no_passthrough: bool,
    /// Use passthrough on a read-write mount too, for fully cached files no
    /// writer holds. Descriptors opened that way keep the version they
    /// opened when a writer of this mount publishes another (close-to-open,
    /// as for changes from elsewhere): no `tail -f` of a file written here.
    #[arg(long, conflicts_with = "no_passthrough")]
    pub passthrough_read_write: bool,
    /// Report every file with this group and create new files with it
    /// (CSI volume_mount_group / Kubernetes fsGroup).
    #[arg(long)]
    pub mount_group: Option<u32>,
    /// Supplementary groups sent with --uid/--gid (NFS AUTH_SYS), e.g. 10,20.
    #[arg(long, requires = "uid", value_delimiter = ',')]
    pub groups: Vec<u32>,
    /// Log file when running in the background (default: <cache-dir>/cachalot-mount.log).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Skip the check at mount that the identity can create, write, rename
    /// and remove in the source (read-write NFS and S3 mounts).
    #[arg(long)]
    pub skip_preflight: bool,
    /// Once mounted, load the files matching this glob (path below the
    /// mountpoint, or file name) into the cache in the background, as
    /// `cachalot warm` would; repeatable or comma-separated.
    #[arg(long, value_name = "GLOB", value_delimiter = ',', value_parser = parse_glob)]
    pub warm: Vec<glob::Pattern>,
    /// Byte quota of the volume (e.g. 10GiB): writes that would take the
    /// files' total size past it fail with EDQUOT; df shows it.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub capacity: Option<u64>,
    #[command(flatten)]
    pub s3: S3Args,
}

impl MountArgs {
    /// The options of the mount these arguments ask for (`source` parsed
    /// and checked by `source()` and `validate()`).
    pub fn options(self, source: Source) -> crate::mount::MountOptions {
        let identity = match (self.uid, self.gid) {
            (Some(uid), Some(gid)) => Some(crate::backend::Identity::new(uid, gid)),
            _ => None,
        };
        crate::mount::MountOptions {
            source,
            volume: None,
            mountpoint: self.mountpoint,
            cache_dir: self.cache_dir,
            cache_size: self.cache_size,
            page_size: self.page_size,
            metadata_ttl: self.metadata_ttl,
            read_only: self.read_only,
            allow_other: self.allow_other,
            identity,
            passthrough: !self.no_passthrough,
            passthrough_read_write: self.passthrough_read_write,
            mount_group: self.mount_group,
            groups: self.groups,
            s3: self.s3.to_options(),
            skip_preflight: self.skip_preflight,
            warm: self.warm,
            capacity: self.capacity,
            keepable: false,
            journal_dir: None,
        }
    }

    /// SOURCE, parsed and checked, with --endpoint and --region; the
    /// message (a usage error, exit 2) never shows credentials given in the
    /// URL.
    pub fn source(&self) -> Result<Source, String> {
        Ok(parse_source(&self.source)?
            .with_s3_site(self.s3.endpoint.clone(), self.s3.region.clone()))
    }

    /// Cross-option checks clap cannot express; the message becomes a usage
    /// error (exit 2).
    pub fn validate(&self, source: &Source) -> Result<(), String> {
        let given = self.s3.given();
        if !source.is_s3() && !given.is_empty() {
            return Err(format!(
                "{} only apply to s3:// sources, not {source}",
                given.join(", "),
            ));
        }
        if self.cache_dir.exists() && !self.cache_dir.is_dir() {
            return Err(format!(
                "--cache-dir {} is not a directory; give a directory (created if missing)",
                self.cache_dir.display()
            ));
        }
        if self.s3.part_size.is_some_and(|p| p < 5 << 20) {
            return Err("--part-size must be at least 5MiB (an S3 limit)".into());
        }
        // A second mount there would stack on the first, and one umount
        // would then take both down.
        let stacked = crate::mount::table::mount_table()
            .unwrap_or_default()
            .into_iter()
            .any(|m| m.mount_point == self.mountpoint && m.fs_type == "fuse.cachalot");
        if stacked {
            return Err(format!(
                "{} is already a cachalot mount; unmount it first (`umount {0}`)",
                self.mountpoint.display()
            ));
        }
        Ok(())
    }
}

/// `cachalot doctor`: the source and the options of the mount to check.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The source to check, as for `cachalot mount`.
    // Text, parsed by `source()`: see MountArgs::source.
    #[arg(value_name = "SOURCE")]
    pub source: String,
    /// Check as this uid (default: the caller's), as `mount --uid`.
    #[arg(long, requires = "gid")]
    pub uid: Option<u32>,
    /// Check as this gid (default: the caller's), as `mount --gid`.
    #[arg(long, requires = "uid")]
    pub gid: Option<u32>,
    /// Supplementary groups sent with --uid/--gid (NFS AUTH_SYS), e.g. 10,20.
    #[arg(long, requires = "uid", value_delimiter = ',')]
    pub groups: Vec<u32>,
    /// Cache directory to check (created if missing, as a mount does).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Cache quota to check against the cache disk's free space.
    #[arg(long, default_value = "10GiB", value_parser = parse_size)]
    pub cache_size: u64,
    /// Print the checks as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub s3: S3Args,
}

impl DoctorArgs {
    /// SOURCE parsed, S3 options checked against it (a usage error, exit 2).
    pub fn request(&self) -> Result<crate::doctor::Request, String> {
        let source = parse_source(&self.source)?
            .with_s3_site(self.s3.endpoint.clone(), self.s3.region.clone());
        let given = self.s3.given();
        if !source.is_s3() && !given.is_empty() {
            return Err(format!(
                "{} only apply to s3:// sources, not {source}",
                given.join(", "),
            ));
        }
        let identity = match (self.uid, self.gid) {
            (Some(uid), Some(gid)) => Some(crate::backend::Identity::new(uid, gid)),
            _ => None,
        };
        Ok(crate::doctor::Request {
            source,
            identity,
            groups: self.groups.clone(),
            cache_dir: self.cache_dir.clone(),
            cache_size: self.cache_size,
            s3: self.s3.to_options(),
        })
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Size of the sample file, e.g. 64MiB.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub size: u64,
}

/// Parse SOURCE (a local one must be a directory); errors show the URL
/// with any userinfo redacted.
pub fn parse_source(text: &str) -> Result<Source, String> {
    let source = Source::parse(text).map_err(|e| format!("invalid value for <SOURCE>: {e}"))?;
    source
        .check_local_directory()
        .map_err(|e| format!("invalid value for <SOURCE>: {e}"))?;
    Ok(source)
}

fn parse_mountpoint(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => Ok(path),
        Ok(_) => Err(format!("mountpoint {text} is not a directory")),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)) => {
            Err(format!(
                "mountpoint {text}: {e}: a dead FUSE mount is there (its daemon is gone); \
             `fusermount3 -u {text}` (or `umount -l {text}`) removes it"
            ))
        }
        Err(e) => Err(format!("mountpoint {text}: {e}")),
    }
}

/// `4096`, `512KiB`, `10GiB` (powers of 1024), `1MB` (powers of 1000).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || {
        format!("invalid size '{text}': use a number with an optional unit B, KiB, MiB, GiB, TiB, KB, MB, GB, TB")
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size '{text}': too large"))
}

pub fn parse_page_size(text: &str) -> Result<u64, String> {
    let n = parse_size(text)?;
    if !n.is_power_of_two() || !(4096..=64 << 20).contains(&n) {
        return Err(format!(
            "invalid page size '{text}': must be a power of two from 4KiB to 64MiB"
        ));
    }
    Ok(n)
}

/// `1s`, `500ms`, `2m`, `0s`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("invalid duration '{text}': {e} (examples: 1s, 500ms, 2m)"))
}

mod s3_args;
pub(crate) use s3_args::parse_role_arn;
pub use s3_args::S3Args;

#[cfg(test)]
mod tests;
