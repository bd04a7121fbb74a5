//! The single NFS calls of the write path, each safe against a re-sent
//! request (a lost reply): CREATE GUARDED, REMOVE, RENAME of an object
//! whose fileid we know, SETATTR. Namespace changes, the preflight and the
//! cleanup use them too.

use super::*;

/// CREATE GUARDED: fails if the name exists, except when our own earlier
/// attempt (lost reply, re-sent request) created it.
pub async fn create_file(
    vol: &Volume,
    ctx: &Ctx<'_>,
    dir: &nfs_fh3,
    name: &str,
    mode: u32,
) -> BackendResult<(nfs_fh3, fattr3)> {
    let args = CREATE3args {
        where_: dirop(dir, name),
        how: createhow3::GUARDED(attrs::mode_only(mode)),
    };
    let reply = vol
        .rpc::<_, _, _>(ctx, NFS_PROGRAM::NFSPROC3_CREATE, &args)
        .await?;
    let res: CREATE3res = reply.res;
    match res {
        Nfs3Result::Ok(ok) => match ok.obj {
            Nfs3Option::Some(fh) => {
                let a = vol.attrs_or_getattr(ctx, &fh, ok.obj_attributes).await?;
                Ok((fh, a))
            }
            Nfs3Option::None => vol
                .lookup_in(ctx, dir, name)
                .await?
                .ok_or_else(|| ctx.err(ErrorKind::Other, "created file vanished")),
        },
        Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, _)) if reply.resent => vol
            .lookup_in(ctx, dir, name)
            .await?
            .ok_or_else(|| ctx.err(ErrorKind::AlreadyExists, "NFS3ERR_EXIST")),
        Nfs3Result::Err((stat, _)) => Err(ctx.status(stat)),
    }
}

/// REMOVE; NOENT on a re-sent request means our first attempt did it.
pub async fn remove_name(
    vol: &Volume,
    ctx: &Ctx<'_>,
    dir: &nfs_fh3,
    name: &str,
) -> BackendResult<()> {
    let args = REMOVE3args {
        object: dirop(dir, name),
    };
    let reply = vol
        .rpc::<_, _, _>(ctx, NFS_PROGRAM::NFSPROC3_REMOVE, &args)
        .await?;
    let res: REMOVE3res = reply.res;
    match res {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, _)) if reply.resent => Ok(()),
        Nfs3Result::Err((stat, _)) => Err(ctx.status(stat)),
    }
}

/// RENAME of an object whose fileid we know: a re-sent request answered
/// NOENT succeeded if the new name now holds that object.
pub async fn rename_known(
    vol: &Volume,
    ctx: &Ctx<'_>,
    (from_dir, from_name): (&nfs_fh3, &str),
    (to_dir, to_name): (&nfs_fh3, &str),
    fileid: u64,
) -> BackendResult<()> {
    let args = RENAME3args {
        from: dirop(from_dir, from_name),
        to: dirop(to_dir, to_name),
    };
    let reply = vol
        .rpc::<_, _, _>(ctx, NFS_PROGRAM::NFSPROC3_RENAME, &args)
        .await?;
    let res: RENAME3res = reply.res;
    match res {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, _)) if reply.resent => {
            match vol.lookup_in(ctx, to_dir, to_name).await? {
                Some((_, a)) if a.fileid == fileid => Ok(()),
                _ => Err(ctx.status(nfsstat3::NFS3ERR_NOENT)),
            }
        }
        Nfs3Result::Err((stat, _)) => Err(ctx.status(stat)),
    }
}

pub async fn setattr(
    vol: &Volume,
    ctx: &Ctx<'_>,
    fh: &nfs_fh3,
    new_attributes: sattr3,
) -> BackendResult<Option<fattr3>> {
    let args = SETATTR3args {
        object: fh.clone(),
        new_attributes,
        guard: Nfs3Option::None,
    };
    let res: SETATTR3res = vol
        .rpc(ctx, NFS_PROGRAM::NFSPROC3_SETATTR, &args)
        .await?
        .res;
    match res {
        Nfs3Result::Ok(ok) => Ok(match ok.obj_wcc.after {
            Nfs3Option::Some(a) => Some(a),
            Nfs3Option::None => None,
        }),
        Nfs3Result::Err((stat, _)) => Err(ctx.status(stat)),
    }
}
