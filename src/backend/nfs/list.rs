//! Directory listing with READDIRPLUS, page by page, so a directory of any
//! size is listed completely with names and attributes in few round trips.

use nfs3_types::nfs3::{
    cookieverf3, fattr3, ftype3, nfs_fh3, nfsstat3, Nfs3Option, Nfs3Result, READDIRPLUS3args,
    READDIRPLUS3res, NFS_PROGRAM,
};

use super::attrs;
use super::errors::Ctx;
use super::volume::Volume;
use crate::backend::{is_temp_name, BackendResult, DirEntry, ErrorKind};

/// Bytes of names+cookies per reply (dircount) and of the whole reply
/// (maxcount). Large pages keep a 20 000-entry listing to a few dozen calls.
const DIRCOUNT: u32 = 64 * 1024;
const MAXCOUNT: u32 = 512 * 1024;
/// A directory changing under a long listing can invalidate our cookie;
/// we restart from the beginning this many times.
const MAX_RESTARTS: usize = 3;

/// One raw directory entry (our temp files included).
pub struct RawEntry {
    pub name: String,
    pub attrs: Option<fattr3>,
    pub fh: Option<nfs_fh3>,
}

/// Every entry of `dir` except `.` and `..`, page by page.
pub async fn read_dir(vol: &Volume, ctx: &Ctx<'_>, dir: &nfs_fh3) -> BackendResult<Vec<RawEntry>> {
    let maxcount = MAXCOUNT.min(vol.limits.rtmax.max(DIRCOUNT));
    let mut restarts = 0;
    'restart: loop {
        let mut out = Vec::new();
        let mut cookie = 0;
        let mut verf = cookieverf3::default();
        loop {
            let args = READDIRPLUS3args {
                dir: dir.clone(),
                cookie,
                cookieverf: verf,
                dircount: DIRCOUNT,
                maxcount,
            };
            let res: READDIRPLUS3res = vol
                .rpc(ctx, NFS_PROGRAM::NFSPROC3_READDIRPLUS, &args)
                .await?
                .res;
            let ok = match res {
                Nfs3Result::Ok(ok) => ok,
                Nfs3Result::Err((nfsstat3::NFS3ERR_BAD_COOKIE, _)) if restarts < MAX_RESTARTS => {
                    restarts += 1;
                    tracing::debug!(dir = %ctx.path, "directory changed during listing; restarting");
                    continue 'restart;
                }
                Nfs3Result::Err((stat, _)) => return Err(ctx.status(stat)),
            };
            verf = ok.cookieverf;
            let entries = ok.reply.entries.into_inner();
            let eof = ok.reply.eof;
            if entries.is_empty() && !eof {
                return Err(ctx.err(
                    ErrorKind::Other,
                    "server returned an empty READDIRPLUS page before the end of the directory",
                ));
            }
            for entry in entries {
                cookie = entry.cookie;
                let Ok(name) = String::from_utf8(entry.name.0.to_vec()) else {
                    tracing::warn!(dir = %ctx.path, name = ?entry.name.0,
                        "skipping a file name that is not valid UTF-8");
                    continue;
                };
                if name == "." || name == ".." {
                    continue;
                }
                out.push(RawEntry {
                    name,
                    attrs: match entry.name_attributes {
                        Nfs3Option::Some(a) => Some(a),
                        Nfs3Option::None => None,
                    },
                    fh: match entry.name_handle {
                        Nfs3Option::Some(fh) => Some(fh),
                        Nfs3Option::None => None,
                    },
                });
            }
            if eof {
                return Ok(out);
            }
        }
    }
}

/// The visible entries of the directory `ctx.path`, with attributes.
pub async fn list(vol: &Volume, ctx: &Ctx<'_>) -> BackendResult<Vec<DirEntry>> {
    let dir = vol.dir_fh(ctx, ctx.path).await?;
    let raw = read_dir(vol, ctx, &dir).await?;
    let mut out = Vec::with_capacity(raw.len());
    for entry in raw {
        if is_temp_name(&entry.name) {
            continue;
        }
        let a = match entry.attrs {
            Some(a) => a,
            // Servers may omit attributes for some entries: ask for those.
            None => match vol.lookup_in(ctx, &dir, &entry.name).await? {
                Some((_, a)) => a,
                None => continue, // removed meanwhile
            },
        };
        if let (ftype3::NF3DIR, Some(fh), Ok(child)) =
            (a.type_, entry.fh, ctx.path.join(&entry.name))
        {
            vol.handles.put(&child, fh);
        }
        out.push(DirEntry {
            name: entry.name,
            meta: attrs::metadata(&a),
        });
    }
    Ok(out)
}
