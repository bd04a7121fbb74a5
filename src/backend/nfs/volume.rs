//! The state of one mounted NFS volume and the primitives every operation is
//! built from: credentials, calls with error context, path resolution.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use nfs3_types::nfs3::{
    diropargs3, fattr3, filename3, ftype3, nfs_fh3, nfsstat3, GETATTR3args, GETATTR3res,
    LOOKUP3args, LOOKUP3res, Nfs3Option, Nfs3Result, NFS_PROGRAM,
};
use nfs3_types::xdr_codec::{Opaque, Pack, Unpack};

use super::client::pool::Credential;
use super::client::{Exchange, NfsClient, Reply};
use super::errors::Ctx;
use super::handles::HandleCache;
use crate::backend::path::temp_name_for;
use crate::backend::{BackendPath, BackendResult, ErrorKind, Identity};

/// Transfer sizes the server prefers (FSINFO), clamped to sane bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub rtmax: u32,
    pub wtmax: u32,
    pub name_max: u32,
}

pub struct Volume {
    pub client: NfsClient,
    /// `nfs://host/path`: cache keys and error messages.
    pub describe: String,
    /// See `Backend::cache_identity`.
    pub cache_identity: String,
    pub host: String,
    /// The URL path (the export or a directory below it).
    pub path: String,
    pub root_fh: nfs_fh3,
    pub handles: HandleCache,
    pub limits: Limits,
    /// `--uid/--gid`: every request carries this identity (with `groups`).
    pub fixed: Option<Identity>,
    pub groups: Vec<u32>,
    /// Write with FILE_SYNC instead of UNSTABLE + COMMIT.
    pub stable_writes: bool,
    /// Where WRITEs answered before the server did are spilled, for a
    /// successor after a crash (`write::spill`); none without a journal.
    pub spill_dir: Option<std::path::PathBuf>,
    /// `<host><pid>` tag in temp names, as in the local backend.
    pub owner_tag: String,
    pub host_tag: String,
    temp_seq: AtomicU64,
}

pub fn dirop(dir: &nfs_fh3, name: &str) -> diropargs3<'static> {
    diropargs3 {
        dir: dir.clone(),
        name: filename3(Opaque::owned(name.as_bytes().to_vec())),
    }
}

impl Volume {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: NfsClient,
        (describe, cache_identity): (String, String),
        host: String,
        path: String,
        root_fh: nfs_fh3,
        handles: HandleCache,
        limits: Limits,
        fixed: Option<Identity>,
        groups: Vec<u32>,
        stable_writes: bool,
    ) -> Volume {
        let host_tag = crate::backend::owner::host_tag();
        Volume {
            client,
            describe,
            cache_identity,
            host,
            path,
            root_fh,
            handles,
            limits,
            fixed,
            groups,
            stable_writes,
            spill_dir: None,
            owner_tag: crate::backend::owner::own_tag(),
            host_tag,
            temp_seq: AtomicU64::new(crate::backend::first_seq()),
        }
    }

    pub fn cred(&self, id: Identity) -> Credential {
        let gids = if Some(id) == self.fixed {
            self.groups.clone()
        } else {
            id.groups.as_slice().to_vec()
        };
        Credential {
            uid: id.uid,
            gid: id.gid,
            gids,
        }
    }

    pub fn ctx<'a>(&'a self, op: &'static str, path: &'a BackendPath, id: Identity) -> Ctx<'a> {
        Ctx {
            backend: &self.describe,
            op,
            path,
            id,
        }
    }

    pub fn next_temp_name(&self, final_name: &str) -> String {
        let seq = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        temp_name_for(final_name, &self.owner_tag, seq)
    }

    /// One NFS call as `ctx.id`, transport errors already mapped.
    pub async fn rpc<A, T, E>(
        &self,
        ctx: &Ctx<'_>,
        proc: NFS_PROGRAM,
        args: &A,
    ) -> BackendResult<Reply<Nfs3Result<T, E>>>
    where
        A: Pack + Send + Sync,
        Nfs3Result<T, E>: Unpack,
    {
        self.client
            .call(&self.cred(ctx.id), proc, args)
            .await
            .map_err(|e| ctx.call(e))
    }

    /// `rpc` with the request sent and its reply read by `exchange` (see
    /// `NfsClient::call_with`).
    pub async fn rpc_with<T, E>(
        &self,
        ctx: &Ctx<'_>,
        proc: NFS_PROGRAM,
        exchange: &mut impl Exchange<T, E>,
    ) -> BackendResult<Reply<Nfs3Result<T, E>>> {
        self.client
            .call_with(&self.cred(ctx.id), proc, exchange)
            .await
            .map_err(|e| ctx.call(e))
    }

    pub async fn getattr(&self, ctx: &Ctx<'_>, fh: &nfs_fh3) -> BackendResult<fattr3> {
        let args = GETATTR3args { object: fh.clone() };
        let res: GETATTR3res = self
            .rpc(ctx, NFS_PROGRAM::NFSPROC3_GETATTR, &args)
            .await?
            .res;
        match res {
            Nfs3Result::Ok(ok) => Ok(ok.obj_attributes),
            Nfs3Result::Err((stat, _)) => Err(ctx.status(stat)),
        }
    }

    /// Attributes from a reply, or from a GETATTR when the server left them out.
    pub async fn attrs_or_getattr(
        &self,
        ctx: &Ctx<'_>,
        fh: &nfs_fh3,
        attrs: Nfs3Option<fattr3>,
    ) -> BackendResult<fattr3> {
        match attrs {
            Nfs3Option::Some(a) => Ok(a),
            Nfs3Option::None => self.getattr(ctx, fh).await,
        }
    }

    /// LOOKUP `name` in `dir`; `None` if it does not exist.
    pub async fn lookup_in(
        &self,
        ctx: &Ctx<'_>,
        dir: &nfs_fh3,
        name: &str,
    ) -> BackendResult<Option<(nfs_fh3, fattr3)>> {
        let args = LOOKUP3args {
            what: dirop(dir, name),
        };
        let res: LOOKUP3res = self
            .rpc(ctx, NFS_PROGRAM::NFSPROC3_LOOKUP, &args)
            .await?
            .res;
        match res {
            Nfs3Result::Ok(ok) => {
                let attrs = self
                    .attrs_or_getattr(ctx, &ok.object, ok.obj_attributes)
                    .await?;
                Ok(Some((ok.object, attrs)))
            }
            Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, fail)) => {
                if dir_removed(&fail.dir_attributes) {
                    return Err(stale_dir(ctx));
                }
                Ok(None)
            }
            Nfs3Result::Err((stat, _)) => Err(ctx.status(stat)),
        }
    }

    /// Handle of the directory `dir`, from the cache or by walking down from
    /// the deepest cached ancestor.
    pub async fn dir_fh(&self, ctx: &Ctx<'_>, dir: &BackendPath) -> BackendResult<nfs_fh3> {
        if dir.is_root() {
            return Ok(self.root_fh.clone());
        }
        if let Some(fh) = self.handles.get(dir) {
            return Ok(fh);
        }
        let mut todo = Vec::new();
        let mut cur = dir.clone();
        let mut fh = loop {
            let parent = cur.parent();
            todo.push(cur);
            if parent.is_root() {
                break self.root_fh.clone();
            }
            if let Some(fh) = self.handles.get(&parent) {
                break fh;
            }
            cur = parent;
        };
        for p in todo.into_iter().rev() {
            match self.lookup_in(ctx, &fh, p.name()).await? {
                Some((child, attrs)) if attrs.type_ == ftype3::NF3DIR => {
                    self.handles.put(&p, child.clone());
                    fh = child;
                }
                Some(_) => {
                    return Err(ctx.err(ErrorKind::NotADirectory, format!("{p} is not a directory")))
                }
                None => return Err(ctx.err(ErrorKind::NotFound, format!("{p} does not exist"))),
            }
        }
        Ok(fh)
    }

    /// Handle and fresh attributes of `path` (always asks the server for the
    /// last component, so a replaced object is noticed at once).
    pub async fn lookup(
        &self,
        ctx: &Ctx<'_>,
        path: &BackendPath,
    ) -> BackendResult<(nfs_fh3, fattr3)> {
        if path.is_root() {
            let attrs = self.getattr(ctx, &self.root_fh).await?;
            return Ok((self.root_fh.clone(), attrs));
        }
        let dir = self.dir_fh(ctx, &path.parent()).await?;
        match self.lookup_in(ctx, &dir, path.name()).await? {
            Some((fh, attrs)) => {
                if attrs.type_ == ftype3::NF3DIR {
                    self.handles.put(path, fh.clone());
                }
                Ok((fh, attrs))
            }
            None => Err(ctx.err(ErrorKind::NotFound, "NFS3ERR_NOENT")),
        }
    }

    /// Run `attempt`; if the server said a handle is STALE (a directory was
    /// removed and recreated behind our back), forget cached handles and run
    /// it once more with paths looked up afresh.
    pub async fn stale_retry<T, F, Fut>(&self, attempt: F) -> BackendResult<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = BackendResult<T>>,
    {
        match attempt().await {
            Err(e) if e.kind == ErrorKind::Stale => {
                tracing::info!(error = %e, "stale NFS file handle; looking the path up again");
                self.handles.clear();
                attempt().await
            }
            other => other,
        }
    }
}

/// A directory with no links left was removed: a server may answer NOENT
/// for lookups in it (from its cache) instead of STALE. Either way the handle
/// is dead and the path must be looked up again.
pub fn dir_removed(attrs: &Nfs3Option<fattr3>) -> bool {
    matches!(attrs, Nfs3Option::Some(a) if a.type_ == ftype3::NF3DIR && a.nlink == 0)
}

pub fn stale_dir(ctx: &Ctx<'_>) -> crate::backend::BackendError {
    ctx.err(ErrorKind::Stale, "the directory was removed (link count 0)")
}

pub fn machine_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    if host.is_empty() {
        "cachalot".to_string()
    } else {
        host.chars().take(255).collect()
    }
}
