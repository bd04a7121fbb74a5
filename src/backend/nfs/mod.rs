//! `nfs://server[:port]/export/path` backend: NFSv3 spoken from user space,
//! so nodes need no nfs-utils and no kernel NFS mount, and every request
//! carries the identity we choose (AUTH_SYS).
//!
//! Identity: with `--uid/--gid` every request carries that identity (plus
//! `--groups`); otherwise the identity of the calling process as FUSE reports
//! it, so the server enforces permissions as it would for a kernel client.
//!
//! Layout: `client/` (RPC connections, pools per identity, retries, MOUNT),
//! `volume` (shared state, path → handle resolution), `list`, `read`,
//! `write` (temp file + COMMIT + RENAME), `namespace`, `preflight`,
//! `cleanup`, `attrs`, `errors`, `handles`.

mod attrs;
mod cleanup;
pub mod client;
mod errors;
mod handles;
mod list;
mod namespace;
mod preflight;
mod read;
mod volume;
mod write;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nfs3_types::nfs3::{
    ftype3, nfs_fh3, FSINFO3args, FSINFO3res, Nfs3Result, PATHCONF3args, PATHCONF3res, NFS_PROGRAM,
};

use self::client::mount::{self as mountproto, split_export};
use self::client::pool::Credential;
use self::client::{NfsClient, RetryPolicy};
use self::handles::HandleCache;
use self::read::NfsReader;
use self::volume::{machine_name, Limits, Volume};
use super::{
    AttrChanges, Backend, BackendError, BackendPath, BackendResult, Capabilities, DirEntry,
    ErrorKind, FsStats, Identity, Metadata, ObjectReader, PendingWrite, Source, SpecialFile,
    WriteStart,
};

/// How long a directory's handle is trusted for path walks (see `handles`).
const DIR_HANDLE_TTL: Duration = Duration::from_secs(2);
/// Bounds on transfer sizes, whatever FSINFO says.
const MAX_TRANSFER: u32 = 1 << 20;
const MIN_TRANSFER: u32 = 4096;

#[derive(Debug, Clone, Default)]
pub struct NfsOptions {
    /// Fixed identity for every request (`--uid/--gid`); `None` = the caller's.
    pub identity: Option<Identity>,
    /// Supplementary groups sent with the fixed identity.
    pub groups: Vec<u32>,
    pub retry: RetryPolicy,
    /// FILE_SYNC every write instead of UNSTABLE + COMMIT.
    pub stable_writes: bool,
    /// Local directory for the data of WRITEs answered before the server
    /// replied, so a successor after a crash can re-send it (see
    /// `write::spill`). `None`: nobody resumes after a crash, no spill.
    pub spill_dir: Option<std::path::PathBuf>,
}

pub struct NfsBackend {
    vol: Arc<Volume>,
}

/// The identity of this process, used where no caller exists (MOUNT,
/// preflight and cleanup without `--uid/--gid`).
pub fn process_identity() -> Identity {
    Identity::new(
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    )
}

/// See `Backend::cache_identity`. Frozen: `nfs://host[:port]/path`, an
/// IPv6 host in brackets.
fn cache_identity(host: &str, port: Option<u16>, path: &str) -> String {
    let host = match host.contains(':') {
        true => format!("[{host}]"),
        false => host.to_string(),
    };
    match port {
        Some(p) => format!("nfs://{host}:{p}{path}"),
        None => format!("nfs://{host}{path}"),
    }
}

fn connect_error(describe: &str, kind: ErrorKind, cause: String) -> BackendError {
    BackendError::new(kind, "mount NFS export", "")
        .with_backend(describe)
        .with_cause(cause)
}

async fn resolve(host: &str) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{host} has no address"))
}

/// The error of a share outside every export (mount, CSI and doctor say
/// the same; the CSI driver recognises it by "is not exported by").
pub fn not_exported(share: &str, host: &str, listing: &str) -> String {
    format!("share \"{share}\" is not exported by {host}; exports: {listing}")
}

/// The export list of the server whose MOUNT service is at `mount_addr`,
/// asked as `id` (for `cachalot doctor`; a mount asks in `connect`).
pub async fn export_list(mount_addr: SocketAddr, id: Identity) -> Result<Vec<String>, String> {
    let cred = Credential {
        uid: id.uid,
        gid: id.gid,
        gids: Vec::new(),
    };
    mountproto::exports(mount_addr, &cred, &machine_name()).await
}

impl NfsBackend {
    /// Mount `source` (which must be `Source::Nfs`): find the export that
    /// holds the path, get its root handle, walk to the path below it, and
    /// learn the server's transfer sizes. A wrong export path fails with the
    /// list of what the server does export.
    pub async fn connect(source: &Source, opts: NfsOptions) -> BackendResult<NfsBackend> {
        let describe = source.to_string();
        let Source::Nfs { host, port, path } = source else {
            return Err(connect_error(
                &describe,
                ErrorKind::InvalidArgument,
                "not an nfs:// source".into(),
            ));
        };
        let unavailable = |cause: String| connect_error(&describe, ErrorKind::Unavailable, cause);
        let server = resolve(host).await.map_err(unavailable)?;
        let (nfs_port, mount_port) = mountproto::resolve_ports(server, *port)
            .await
            .map_err(|e| unavailable(format!("{host}: {e}")))?;
        let mount_addr = SocketAddr::new(server.ip(), mount_port);
        let machine = machine_name();
        let id = opts.identity.unwrap_or_else(process_identity);
        let cred = Credential {
            uid: id.uid,
            gid: id.gid,
            gids: if opts.identity.is_some() {
                opts.groups.clone()
            } else {
                Vec::new()
            },
        };

        let exports = mountproto::exports(mount_addr, &cred, &machine).await;
        let listing = match &exports {
            Ok(list) if list.is_empty() => "(none)".to_string(),
            Ok(list) => list.join(", "),
            Err(e) => format!("(unknown: {e})"),
        };
        let (export, rest) = match exports.as_deref().ok().and_then(|l| split_export(l, path)) {
            Some((e, rest)) => (e.to_string(), rest),
            // Not in the list (or no list): some servers still allow it.
            None => (path.clone(), String::new()),
        };
        let export_fh = match mountproto::mnt(mount_addr, &cred, &machine, &export).await {
            Ok(fh) => fh,
            Err((Some(_), why)) => {
                let listed = matches!(&exports, Ok(l) if l.contains(&export));
                return Err(if listed {
                    connect_error(
                        &describe,
                        ErrorKind::PermissionDenied,
                        format!("{host} refused to mount {export}: {why} (is this client allowed by the export's client list?)"),
                    )
                } else {
                    connect_error(
                        &describe,
                        ErrorKind::NotFound,
                        not_exported(path, host, &listing),
                    )
                });
            }
            Err((None, why)) => return Err(unavailable(format!("{host}: {why}"))),
        };

        let client = NfsClient::new(SocketAddr::new(server.ip(), nfs_port), machine, opts.retry);
        let root_path = BackendPath::root();
        let mut vol = Volume::new(
            client,
            (describe.clone(), cache_identity(host, *port, path)),
            host.clone(),
            path.clone(),
            export_fh,
            HandleCache::new(DIR_HANDLE_TTL),
            Limits {
                rtmax: 64 * 1024,
                wtmax: 64 * 1024,
                name_max: 255,
            },
            opts.identity,
            opts.groups.clone(),
            opts.stable_writes,
        );
        let ctx = vol.ctx("mount NFS export", &root_path, id);
        // Walk from the export root to the path below it.
        let mut fh = vol.root_fh.clone();
        let mut walked = export.trim_end_matches('/').to_string();
        for name in rest.split('/').filter(|c| !c.is_empty()) {
            walked = format!("{walked}/{name}");
            match vol.lookup_in(&ctx, &fh, name).await? {
                Some((child, a)) if a.type_ == ftype3::NF3DIR => fh = child,
                Some(_) => {
                    return Err(connect_error(
                        &describe,
                        ErrorKind::NotADirectory,
                        format!("{walked} on {host} is not a directory (export {export})"),
                    ))
                }
                None => {
                    return Err(connect_error(
                        &describe,
                        ErrorKind::NotFound,
                        format!("{walked} does not exist on {host} (export {export})"),
                    ))
                }
            }
        }
        vol.root_fh = fh;
        vol.spill_dir = opts.spill_dir;
        vol.limits = fetch_limits(&vol, id).await?;
        tracing::info!(source = %describe, export = %export, rtmax = vol.limits.rtmax,
            wtmax = vol.limits.wtmax, "NFS export mounted");
        Ok(NfsBackend { vol: Arc::new(vol) })
    }

    /// Root handle of the volume (tests use it to check handle recovery).
    pub fn root_handle(&self) -> nfs_fh3 {
        self.vol.root_fh.clone()
    }
}

async fn fetch_limits(vol: &Volume, id: Identity) -> BackendResult<Limits> {
    let root = BackendPath::root();
    let ctx = vol.ctx("mount NFS export (FSINFO)", &root, id);
    let args = FSINFO3args {
        fsroot: vol.root_fh.clone(),
    };
    let info: FSINFO3res = vol
        .rpc(&ctx, NFS_PROGRAM::NFSPROC3_FSINFO, &args)
        .await?
        .res;
    let clamp = |v: u32| v.clamp(MIN_TRANSFER, MAX_TRANSFER);
    let mut limits = match info {
        Nfs3Result::Ok(ok) => Limits {
            rtmax: clamp(ok.rtmax),
            wtmax: clamp(ok.wtmax),
            name_max: 255,
        },
        Nfs3Result::Err((stat, _)) => return Err(ctx.status(stat)),
    };
    let args = PATHCONF3args {
        object: vol.root_fh.clone(),
    };
    let pc: PATHCONF3res = vol
        .rpc(&ctx, NFS_PROGRAM::NFSPROC3_PATHCONF, &args)
        .await?
        .res;
    if let Nfs3Result::Ok(ok) = pc {
        limits.name_max = ok.name_max.clamp(1, 255);
    }
    Ok(limits)
}

#[async_trait]
impl Backend for NfsBackend {
    fn describe(&self) -> &str {
        &self.vol.describe
    }

    fn cache_identity(&self) -> &str {
        &self.vol.cache_identity
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            hard_links: true,
            symlinks: true,
            special_files: true,
            caller_groups: true,
            cheap_rename: true,
            inline_io: false,
            // READs are pipelined on one connection and capped by the
            // server's rtmax: bigger requests would only be split again.
            inline_writes: false,
            large_reads: false,
        }
    }

    async fn stat(&self, id: Identity, path: &BackendPath) -> BackendResult<Metadata> {
        let vol = &self.vol;
        vol.stale_retry(|| async move {
            let ctx = vol.ctx("stat", path, id);
            let (_, a) = vol.lookup(&ctx, path).await?;
            Ok(attrs::metadata(&a))
        })
        .await
    }

    async fn list(&self, id: Identity, path: &BackendPath) -> BackendResult<Vec<DirEntry>> {
        let vol = &self.vol;
        vol.stale_retry(|| async move {
            let ctx = vol.ctx("list directory", path, id);
            list::list(vol, &ctx).await
        })
        .await
    }

    async fn open_read(
        &self,
        id: Identity,
        path: &BackendPath,
    ) -> BackendResult<Box<dyn ObjectReader>> {
        let vol = &self.vol;
        let (fh, a) = vol
            .stale_retry(|| async move {
                let ctx = vol.ctx("open for reading", path, id);
                vol.lookup(&ctx, path).await
            })
            .await?;
        if a.type_ == ftype3::NF3DIR {
            let ctx = vol.ctx("open for reading", path, id);
            return Err(ctx.err(ErrorKind::IsADirectory, "is a directory"));
        }
        Ok(Box::new(NfsReader::new(
            Arc::clone(vol),
            id,
            path.clone(),
            fh,
            &a,
        )))
    }

    async fn begin_write(
        &self,
        id: Identity,
        path: &BackendPath,
        start: WriteStart,
        create_mode: u32,
    ) -> BackendResult<Box<dyn PendingWrite>> {
        let vol = &self.vol;
        let w = vol
            .stale_retry(|| write::begin(vol, id, path, start, create_mode))
            .await?;
        Ok(Box::new(w))
    }

    async fn resume_write(
        &self,
        id: Identity,
        target: &BackendPath,
        state: crate::backend::SuspendedWrite,
    ) -> BackendResult<crate::backend::Resumed> {
        write::resume(&self.vol, id, target, state).await
    }

    async fn mkdir(&self, id: Identity, path: &BackendPath, mode: u32) -> BackendResult<Metadata> {
        let vol = &self.vol;
        vol.stale_retry(|| namespace::mkdir(vol, id, path, mode))
            .await
    }

    async fn rmdir(&self, id: Identity, path: &BackendPath) -> BackendResult<()> {
        let vol = &self.vol;
        vol.stale_retry(|| namespace::rmdir(vol, id, path)).await
    }

    async fn unlink(&self, id: Identity, path: &BackendPath) -> BackendResult<()> {
        let vol = &self.vol;
        vol.stale_retry(|| namespace::unlink(vol, id, path)).await
    }

    async fn rename(
        &self,
        id: Identity,
        from: &BackendPath,
        to: &BackendPath,
        no_replace: bool,
    ) -> BackendResult<()> {
        let vol = &self.vol;
        vol.stale_retry(|| namespace::rename(vol, id, from, to, no_replace))
            .await
    }

    async fn symlink(
        &self,
        id: Identity,
        path: &BackendPath,
        target: &str,
    ) -> BackendResult<Metadata> {
        let vol = &self.vol;
        vol.stale_retry(|| namespace::symlink(vol, id, path, target))
            .await
    }

    async fn readlink(&self, id: Identity, path: &BackendPath) -> BackendResult<String> {
        let vol = &self.vol;
        vol.stale_retry(|| namespace::readlink(vol, id, path)).await
    }

    async fn link(
        &self,
        id: Identity,
        existing: &BackendPath,
        new: &BackendPath,
    ) -> BackendResult<Metadata> {
        let vol = &self.vol;
        vol.stale_retry(|| namespace::link(vol, id, existing, new))
            .await
    }

    async fn mknod(
        &self,
        id: Identity,
        path: &BackendPath,
        node: SpecialFile,
        mode: u32,
    ) -> BackendResult<Metadata> {
        let vol = &self.vol;
        vol.stale_retry(|| namespace::mknod(vol, id, path, node, mode))
            .await
    }

    async fn set_attr(
        &self,
        id: Identity,
        path: &BackendPath,
        changes: &AttrChanges,
    ) -> BackendResult<Metadata> {
        let vol = &self.vol;
        vol.stale_retry(|| namespace::set_attr(vol, id, path, changes))
            .await
    }

    async fn statfs(&self, id: Identity) -> BackendResult<FsStats> {
        namespace::statfs(&self.vol, id).await
    }

    /// Nothing to do: every publish was COMMITted (as an NFS client commits
    /// on close), so the data is on the server's stable storage.
    async fn sync(&self, _id: Identity, _path: &BackendPath) -> BackendResult<()> {
        Ok(())
    }

    async fn cleanup_stale_temps(&self) -> BackendResult<usize> {
        let id = self.vol.fixed.unwrap_or_else(process_identity);
        cleanup::run(&self.vol, id).await
    }

    async fn preflight(&self, id: Identity) -> BackendResult<()> {
        preflight::run(&self.vol, id).await
    }
}

#[cfg(test)]
mod identity_tests {
    use super::cache_identity;

    /// Frozen: caches written by earlier versions are keyed by these.
    #[test]
    fn the_cache_identity_keeps_its_form() {
        assert_eq!(
            cache_identity("10.0.0.5", None, "/export/a"),
            "nfs://10.0.0.5/export/a"
        );
        assert_eq!(
            cache_identity("::1", Some(2049), "/e"),
            "nfs://[::1]:2049/e"
        );
    }
}
