//! Namespace operations: one or two NFS calls each, with the reconciliation
//! a re-sent non-idempotent request needs (a lost reply to MKDIR must not
//! turn into EEXIST for the application).

use nfs3_types::nfs3::{
    devicedata3, ftype3, mknoddata3, nfspath3, nfsstat3, sattr3, specdata3, symlinkdata3,
    FSSTAT3args, FSSTAT3res, LINK3args, LINK3res, MKDIR3args, MKDIR3res, MKNOD3args, MKNOD3res,
    Nfs3Option, Nfs3Result, READLINK3args, READLINK3res, RENAME3args, RENAME3res, RMDIR3args,
    RMDIR3res, SYMLINK3args, SYMLINK3res, NFS_PROGRAM,
};
use nfs3_types::xdr_codec::Opaque;

use super::attrs;
use super::volume::{dir_removed, dirop, stale_dir, Volume};
use super::write::{remove_name, setattr};
use crate::backend::{
    AttrChanges, BackendPath, BackendResult, ErrorKind, FsStats, Identity, Metadata, SpecialFile,
};

/// What a create-type reply carries.
struct Created {
    fh: Nfs3Option<nfs3_types::nfs3::nfs_fh3>,
    attrs: Nfs3Option<nfs3_types::nfs3::fattr3>,
}

/// Metadata of a freshly created `path`; `expect` is the type a re-sent
/// request that answered EXIST must find to count as our own success.
async fn finish_create(
    vol: &Volume,
    ctx: &super::errors::Ctx<'_>,
    path: &BackendPath,
    result: Nfs3Result<Created, Nfs3Option<nfs3_types::nfs3::fattr3>>,
    resent: bool,
    expect: ftype3,
) -> BackendResult<Metadata> {
    let dir = vol.dir_fh(ctx, &path.parent()).await?;
    match result {
        Nfs3Result::Ok(Created {
            fh: Nfs3Option::Some(fh),
            attrs: a,
        }) => {
            let a = vol.attrs_or_getattr(ctx, &fh, a).await?;
            if a.type_ == ftype3::NF3DIR {
                vol.handles.put(path, fh);
            }
            Ok(attrs::metadata(&a))
        }
        Nfs3Result::Ok(_) => match vol.lookup_in(ctx, &dir, path.name()).await? {
            Some((_, a)) => Ok(attrs::metadata(&a)),
            None => Err(ctx.err(ErrorKind::Other, "created object vanished")),
        },
        Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, _)) if resent => {
            match vol.lookup_in(ctx, &dir, path.name()).await? {
                Some((_, a)) if a.type_ == expect => Ok(attrs::metadata(&a)),
                _ => Err(ctx.status(nfsstat3::NFS3ERR_EXIST)),
            }
        }
        Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, dir_after)) if dir_removed(&dir_after) => {
            Err(stale_dir(ctx))
        }
        Nfs3Result::Err((stat, _)) => Err(ctx.status(stat)),
    }
}

pub async fn mkdir(
    vol: &Volume,
    id: Identity,
    path: &BackendPath,
    mode: u32,
) -> BackendResult<Metadata> {
    let ctx = vol.ctx("mkdir", path, id);
    let dir = vol.dir_fh(&ctx, &path.parent()).await?;
    let args = MKDIR3args {
        where_: dirop(&dir, path.name()),
        attributes: attrs::mode_only(mode),
    };
    let reply = vol
        .rpc::<_, _, _>(&ctx, NFS_PROGRAM::NFSPROC3_MKDIR, &args)
        .await?;
    let res: MKDIR3res = reply.res;
    let created = match res {
        Nfs3Result::Ok(ok) => Nfs3Result::Ok(Created {
            fh: ok.obj,
            attrs: ok.obj_attributes,
        }),
        Nfs3Result::Err((s, fail)) => Nfs3Result::Err((s, fail.dir_wcc.after)),
    };
    finish_create(vol, &ctx, path, created, reply.resent, ftype3::NF3DIR).await
}

pub async fn mknod(
    vol: &Volume,
    id: Identity,
    path: &BackendPath,
    node: SpecialFile,
    mode: u32,
) -> BackendResult<Metadata> {
    let ctx = vol.ctx("mknod", path, id);
    let dir = vol.dir_fh(&ctx, &path.parent()).await?;
    let attributes = attrs::mode_only(mode);
    let device = |rdev: u64| devicedata3 {
        dev_attributes: attrs::mode_only(mode),
        spec: specdata3 {
            specdata1: libc::major(rdev),
            specdata2: libc::minor(rdev),
        },
    };
    let (what, type_) = match node {
        SpecialFile::Fifo => (mknoddata3::NF3FIFO(attributes), ftype3::NF3FIFO),
        SpecialFile::Socket => (mknoddata3::NF3SOCK(attributes), ftype3::NF3SOCK),
        SpecialFile::CharDevice(rdev) => (mknoddata3::NF3CHR(device(rdev)), ftype3::NF3CHR),
        SpecialFile::BlockDevice(rdev) => (mknoddata3::NF3BLK(device(rdev)), ftype3::NF3BLK),
    };
    let args = MKNOD3args {
        where_: dirop(&dir, path.name()),
        what,
    };
    let reply = vol
        .rpc::<_, _, _>(&ctx, NFS_PROGRAM::NFSPROC3_MKNOD, &args)
        .await?;
    let res: MKNOD3res = reply.res;
    let created = match res {
        Nfs3Result::Ok(ok) => Nfs3Result::Ok(Created {
            fh: ok.obj,
            attrs: ok.obj_attributes,
        }),
        Nfs3Result::Err((s, fail)) => Nfs3Result::Err((s, fail.dir_wcc.after)),
    };
    finish_create(vol, &ctx, path, created, reply.resent, type_).await
}

pub async fn symlink(
    vol: &Volume,
    id: Identity,
    path: &BackendPath,
    target: &str,
) -> BackendResult<Metadata> {
    let ctx = vol.ctx("symlink", path, id);
    let dir = vol.dir_fh(&ctx, &path.parent()).await?;
    let args = SYMLINK3args {
        where_: dirop(&dir, path.name()),
        symlink: symlinkdata3 {
            symlink_attributes: sattr3::default(),
            symlink_data: nfspath3(Opaque::owned(target.as_bytes().to_vec())),
        },
    };
    let reply = vol
        .rpc::<_, _, _>(&ctx, NFS_PROGRAM::NFSPROC3_SYMLINK, &args)
        .await?;
    let res: SYMLINK3res = reply.res;
    let created = match res {
        Nfs3Result::Ok(ok) => Nfs3Result::Ok(Created {
            fh: ok.obj,
            attrs: ok.obj_attributes,
        }),
        Nfs3Result::Err((s, fail)) => Nfs3Result::Err((s, fail.dir_wcc.after)),
    };
    finish_create(vol, &ctx, path, created, reply.resent, ftype3::NF3LNK).await
}

pub async fn readlink(vol: &Volume, id: Identity, path: &BackendPath) -> BackendResult<String> {
    let ctx = vol.ctx("readlink", path, id);
    let (fh, a) = vol.lookup(&ctx, path).await?;
    if a.type_ != ftype3::NF3LNK {
        return Err(ctx.err(ErrorKind::InvalidArgument, "not a symbolic link"));
    }
    let args = READLINK3args { symlink: fh };
    let res: READLINK3res = vol
        .rpc(&ctx, NFS_PROGRAM::NFSPROC3_READLINK, &args)
        .await?
        .res;
    match res {
        Nfs3Result::Ok(ok) => String::from_utf8(ok.data.0.into_owned())
            .map_err(|_| ctx.err(ErrorKind::InvalidArgument, "link target is not valid UTF-8")),
        Nfs3Result::Err((stat, _)) => Err(ctx.status(stat)),
    }
}

pub async fn rmdir(vol: &Volume, id: Identity, path: &BackendPath) -> BackendResult<()> {
    let ctx = vol.ctx("rmdir", path, id);
    if path.is_root() {
        return Err(ctx.err(ErrorKind::NotPermitted, "cannot remove the volume root"));
    }
    let dir = vol.dir_fh(&ctx, &path.parent()).await?;
    let args = RMDIR3args {
        object: dirop(&dir, path.name()),
    };
    let reply = vol
        .rpc::<_, _, _>(&ctx, NFS_PROGRAM::NFSPROC3_RMDIR, &args)
        .await?;
    let res: RMDIR3res = reply.res;
    vol.handles.forget_tree(path);
    match res {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, _)) if reply.resent => Ok(()),
        Nfs3Result::Err((stat, _)) => Err(ctx.status(stat)),
    }
}

pub async fn unlink(vol: &Volume, id: Identity, path: &BackendPath) -> BackendResult<()> {
    let ctx = vol.ctx("unlink", path, id);
    let dir = vol.dir_fh(&ctx, &path.parent()).await?;
    // Some servers let REMOVE take an empty directory; unlink(2) must not.
    match vol.lookup_in(&ctx, &dir, path.name()).await? {
        None => return Err(ctx.status(nfsstat3::NFS3ERR_NOENT)),
        Some((_, a)) if a.type_ == ftype3::NF3DIR => {
            return Err(ctx.err(ErrorKind::IsADirectory, "unlink of a directory"))
        }
        Some(_) => {}
    }
    remove_name(vol, &ctx, &dir, path.name()).await
}

pub async fn rename(
    vol: &Volume,
    id: Identity,
    from: &BackendPath,
    to: &BackendPath,
    no_replace: bool,
) -> BackendResult<()> {
    let ctx = vol.ctx("rename", from, id);
    let from_dir = vol.dir_fh(&ctx, &from.parent()).await?;
    let to_dir = vol.dir_fh(&ctx, &to.parent()).await?;
    let Some((_, source)) = vol.lookup_in(&ctx, &from_dir, from.name()).await? else {
        return Err(ctx.status(nfsstat3::NFS3ERR_NOENT));
    };
    // NFSv3 has no RENAME_NOREPLACE: check, then rename (racy, as the local
    // backend's fallback).
    if no_replace && vol.lookup_in(&ctx, &to_dir, to.name()).await?.is_some() {
        return Err(ctx.status(nfsstat3::NFS3ERR_EXIST));
    }
    let args = RENAME3args {
        from: dirop(&from_dir, from.name()),
        to: dirop(&to_dir, to.name()),
    };
    let reply = vol
        .rpc::<_, _, _>(&ctx, NFS_PROGRAM::NFSPROC3_RENAME, &args)
        .await?;
    let res: RENAME3res = reply.res;
    vol.handles.forget_tree(from);
    vol.handles.forget_tree(to);
    match res {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, _)) if reply.resent => {
            match vol.lookup_in(&ctx, &to_dir, to.name()).await? {
                Some((_, a)) if a.fileid == source.fileid => Ok(()),
                _ => Err(ctx.status(nfsstat3::NFS3ERR_NOENT)),
            }
        }
        Nfs3Result::Err((stat, _)) => Err(ctx.status(stat)),
    }
}

pub async fn link(
    vol: &Volume,
    id: Identity,
    existing: &BackendPath,
    new: &BackendPath,
) -> BackendResult<Metadata> {
    let ctx = vol.ctx("link", new, id);
    let (fh, source) = vol.lookup(&ctx, existing).await?;
    let dir = vol.dir_fh(&ctx, &new.parent()).await?;
    let args = LINK3args {
        file: fh,
        link: dirop(&dir, new.name()),
    };
    let reply = vol
        .rpc::<_, _, _>(&ctx, NFS_PROGRAM::NFSPROC3_LINK, &args)
        .await?;
    let res: LINK3res = reply.res;
    match res {
        Nfs3Result::Ok(_) => {}
        Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, _)) if reply.resent => {}
        Nfs3Result::Err((stat, _)) => return Err(ctx.status(stat)),
    }
    match vol.lookup_in(&ctx, &dir, new.name()).await? {
        Some((_, a)) if a.fileid == source.fileid => Ok(attrs::metadata(&a)),
        Some(_) => Err(ctx.status(nfsstat3::NFS3ERR_EXIST)),
        None => Err(ctx.err(ErrorKind::Other, "new link vanished")),
    }
}

pub async fn set_attr(
    vol: &Volume,
    id: Identity,
    path: &BackendPath,
    changes: &AttrChanges,
) -> BackendResult<Metadata> {
    let ctx = vol.ctx("set attributes", path, id);
    let (fh, a) = vol.lookup(&ctx, path).await?;
    let is_symlink = a.type_ == ftype3::NF3LNK;
    let after = setattr(vol, &ctx, &fh, attrs::sattr(changes, is_symlink)).await?;
    let a = match after {
        Some(a) => a,
        None => vol.getattr(&ctx, &fh).await?,
    };
    Ok(attrs::metadata(&a))
}

pub async fn statfs(vol: &Volume, id: Identity) -> BackendResult<FsStats> {
    let root = BackendPath::root();
    let ctx = vol.ctx("statfs", &root, id);
    let args = FSSTAT3args {
        fsroot: vol.root_fh.clone(),
    };
    let res: FSSTAT3res = vol
        .rpc(&ctx, NFS_PROGRAM::NFSPROC3_FSSTAT, &args)
        .await?
        .res;
    match res {
        Nfs3Result::Ok(ok) => {
            const BLOCK: u64 = 4096;
            Ok(FsStats {
                block_size: BLOCK as u32,
                blocks: ok.tbytes / BLOCK,
                blocks_free: ok.fbytes / BLOCK,
                blocks_available: ok.abytes / BLOCK,
                files: ok.tfiles,
                files_free: ok.afiles,
                name_max: vol.limits.name_max,
            })
        }
        Nfs3Result::Err((stat, _)) => Err(ctx.status(stat)),
    }
}
