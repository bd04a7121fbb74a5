//! Mount-time check that the chosen identity can do what the write path
//! needs in the volume root: create a temp file, write it, rename it, remove
//! it. A failure names the identity, the path and the likely fix, so a
//! squashed root or a wrong uid is found at mount time, not at the first
//! application write.

use nfs3_types::nfs3::{stable_how, Nfs3Result, WRITE3args, WRITE3res, NFS_PROGRAM};
use nfs3_types::xdr_codec::Opaque;

use super::errors::Ctx;
use super::volume::Volume;
use super::write::{create_file, remove_name, rename_known};
use crate::backend::{BackendError, BackendPath, BackendResult, ErrorKind, Identity};

const SKIP_HINT: &str = "pass --skip-preflight to mount anyway";

pub async fn run(vol: &Volume, id: Identity) -> BackendResult<()> {
    let root = BackendPath::root();
    let ctx = vol.ctx("mount-time write check (preflight)", &root, id);
    let root_attrs = vol.getattr(&ctx, &vol.root_fh).await?;
    let place = format!("{} on {}", vol.path, vol.host);
    let owner = format!(
        "owned by uid {} gid {}, mode {:04o}",
        root_attrs.uid,
        root_attrs.gid,
        root_attrs.mode & 0o7777
    );
    let first = vol.next_temp_name("preflight");
    let (fh, created) = match create_file(vol, &ctx, &vol.root_fh, &first, 0o600).await {
        Ok(v) => v,
        Err(e) => {
            let why = match e.kind {
                ErrorKind::PermissionDenied if id.uid == 0 => format!(
                    "uid 0 may not create files in {place} ({owner}): uid 0 is most likely squashed \
                     to an anonymous user (root_squash): set uid/gid to the owner of {} \
                     (--uid {} --gid {}), or export with no_root_squash/anonuid",
                    vol.path, root_attrs.uid, root_attrs.gid
                ),
                ErrorKind::PermissionDenied | ErrorKind::NotPermitted => format!(
                    "uid {} gid {} may not create files in {place} ({owner}): set uid/gid to the \
                     owner of {} (--uid {} --gid {}) or give that identity write permission",
                    id.uid, id.gid, vol.path, root_attrs.uid, root_attrs.gid
                ),
                ErrorKind::ReadOnly => {
                    format!("{place} is exported read-only: mount with --read-only")
                }
                _ => format!("cannot create a file in {place}: {}", e.cause),
            };
            return Err(explain(&ctx, e.kind, why));
        }
    };
    if created.uid != id.uid {
        tracing::warn!(
            "preflight: files created as uid {} in {place} are owned by uid {} (the server squashes \
             this identity, e.g. root_squash/all_squash with anonuid); ownership of written files \
             will not be the sent uid",
            id.uid,
            created.uid
        );
    }
    let second = vol.next_temp_name("preflight");
    let result = match write_probe(vol, &ctx, &fh).await {
        Err(e) => Err(("write", e)),
        Ok(()) => match rename_known(
            vol,
            &ctx,
            (&vol.root_fh, &first),
            (&vol.root_fh, &second),
            created.fileid,
        )
        .await
        {
            Err(e) => Err(("rename", e)),
            Ok(()) => remove_name(vol, &ctx, &vol.root_fh, &second)
                .await
                .map_err(|e| ("remove", e)),
        },
    };
    if let Err((step, e)) = result {
        for name in [&first, &second] {
            let _ = remove_name(vol, &ctx, &vol.root_fh, name).await;
        }
        let why = format!(
            "uid {} gid {} could create but not {step} a file in {place} ({owner}): {}",
            id.uid, id.gid, e.cause
        );
        return Err(explain(&ctx, e.kind, why));
    }
    tracing::info!(uid = id.uid, gid = id.gid, path = %place, "preflight passed: create, write, rename and remove work");
    Ok(())
}

fn explain(ctx: &Ctx<'_>, kind: ErrorKind, why: String) -> BackendError {
    ctx.err(kind, format!("{why}; or {SKIP_HINT}"))
}

async fn write_probe(
    vol: &Volume,
    ctx: &Ctx<'_>,
    fh: &nfs3_types::nfs3::nfs_fh3,
) -> BackendResult<()> {
    let data = b"cachalot preflight\n";
    let args = WRITE3args {
        file: fh.clone(),
        offset: 0,
        count: data.len() as u32,
        stable: stable_how::FILE_SYNC,
        data: Opaque::borrowed(data),
    };
    let res: WRITE3res = vol.rpc(ctx, NFS_PROGRAM::NFSPROC3_WRITE, &args).await?.res;
    match res {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((stat, _)) => Err(ctx.status(stat)),
    }
}
