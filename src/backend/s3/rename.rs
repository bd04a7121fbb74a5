//! Rename. S3 has none: a file is copied server-side (in parts above S3's
//! 5 GiB copy limit, see `copy`), and the source is deleted only after the
//! copy succeeded. A directory is every key under its
//! prefix, copied then deleted one by one: NOT atomic (a crash in between
//! leaves both trees; a reader meanwhile may see a partial tree), and capped
//! at `rename_dir_max_objects`; beyond the cap rename fails with EXDEV, which
//! makes `mv` fall back to copying file by file itself.

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;

use crate::backend::{BackendPath, BackendResult, ErrorKind, FileKind, Identity};

use super::copy::{copy_key, CopyContext};
use super::{namespace, Inner};

/// Copies/deletes in flight during a directory rename.
const PARALLEL: usize = 16;

pub async fn rename(
    inner: &Inner,
    id: Identity,
    from: &BackendPath,
    to: &BackendPath,
    no_replace: bool,
) -> BackendResult<()> {
    if from == to {
        return Ok(());
    }
    let source = namespace::stat(inner, id, from).await?;
    let target = match namespace::stat(inner, id, to).await {
        Ok(m) => Some(m),
        Err(e) if e.kind == ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if target.is_some() && no_replace {
        return Err(inner.error(ErrorKind::AlreadyExists, "rename", to, id, "target exists"));
    }
    match source.kind {
        FileKind::Directory => {
            rename_dir(inner, id, from, to, target.map(|t| t.kind)).await?;
        }
        _ => {
            if target
                .as_ref()
                .is_some_and(|t| t.kind == FileKind::Directory)
            {
                return Err(inner.error(
                    ErrorKind::IsADirectory,
                    "rename",
                    to,
                    id,
                    "cannot replace a directory with a file",
                ));
            }
            rename_file(inner, id, from, to).await?;
        }
    }
    if from.parent() != to.parent() {
        namespace::keep_dir(inner, id, &from.parent()).await;
    }
    Ok(())
}

/// Server-side copy of one file, of any size (see `copy`).
pub async fn copy_object(
    inner: &Inner,
    id: Identity,
    from: &BackendPath,
    to: &BackendPath,
) -> BackendResult<bool> {
    let (from_key, to_key) = (inner.keys.object(from), inner.keys.object(to));
    let cx = CopyContext {
        op: "copy",
        path: from,
        id,
    };
    copy_key(inner, &from_key, &to_key, &cx).await?;
    Ok(true)
}

async fn rename_file(
    inner: &Inner,
    id: Identity,
    from: &BackendPath,
    to: &BackendPath,
) -> BackendResult<()> {
    let (from_key, to_key) = (inner.keys.object(from), inner.keys.object(to));
    let src = inner.store_path(&from_key, "rename", from, id)?;
    let cx = CopyContext {
        op: "rename (copy)",
        path: from,
        id,
    };
    copy_key(inner, &from_key, &to_key, &cx).await?;
    inner
        .store
        .delete(&src)
        .await
        .map_err(|e| inner.s3_err(&e, "rename (delete source)", from, &from_key, id))
}

async fn rename_dir(
    inner: &Inner,
    id: Identity,
    from: &BackendPath,
    to: &BackendPath,
    target: Option<FileKind>,
) -> BackendResult<()> {
    let to_prefix = inner.keys.dir(to);
    let from_prefix = inner.keys.dir(from);
    if to_prefix.starts_with(&from_prefix) {
        return Err(inner.error(
            ErrorKind::InvalidArgument,
            "rename",
            to,
            id,
            "cannot move a directory into itself",
        ));
    }
    match target {
        Some(FileKind::Directory) => {
            let keys = inner
                .raw
                .first_keys(&to_prefix, 2)
                .await
                .map_err(|e| inner.s3_err(&e, "rename", to, &to_prefix, id))?;
            if keys.iter().any(|o| o.key != to_prefix) {
                return Err(inner.error(
                    ErrorKind::NotEmpty,
                    "rename",
                    to,
                    id,
                    "target directory not empty",
                ));
            }
        }
        Some(_) => {
            return Err(inner.error(
                ErrorKind::NotADirectory,
                "rename",
                to,
                id,
                "cannot replace a file with a directory",
            ))
        }
        None => {}
    }
    let cap = inner.cfg.options.rename_dir_max_objects;
    let objects = inner
        .raw
        .list_recursive(&from_prefix, cap)
        .await
        .map_err(|e| inner.s3_err(&e, "rename (list)", from, &from_prefix, id))?;
    if objects.len() > cap {
        return Err(inner.error(
            ErrorKind::CrossDevice,
            "rename",
            from,
            id,
            format!(
                "directory has more than {cap} objects (--rename-dir-max-objects); S3 has no \
                 directory rename and copying them one by one is refused (mv falls back to a \
                 copy on EXDEV)"
            ),
        ));
    }
    let pairs: Vec<(String, String)> = objects
        .into_iter()
        .map(|o| {
            let dst = format!("{to_prefix}{}", &o.key[from_prefix.len()..]);
            (o.key, dst)
        })
        .collect();
    tracing::info!(from = %from, to = %to, objects = pairs.len(),
        "renaming a directory object by object (not atomic)");
    // Owned items: borrowed ones trip the compiler's higher-ranked
    // lifetime check inside async_trait futures.
    let copied = futures::stream::iter(pairs.clone())
        .map(|(src, dst)| async move {
            // Markers are empty by definition: write a new one rather than
            // copy (some servers, SeaweedFS among them, cannot copy them).
            if src.ends_with('/') {
                inner
                    .raw
                    .put_empty(&dst)
                    .await
                    .map_err(|e| inner.s3_err(&e, "rename directory (copy)", from, &src, id))?;
            } else {
                let cx = CopyContext {
                    op: "rename directory (copy)",
                    path: from,
                    id,
                };
                copy_key(inner, &src, &dst, &cx).await?;
            }
            Ok::<_, crate::backend::BackendError>(dst)
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<_>>()
        .await;
    if let Err(e) = copied {
        // Undo: remove whatever copies exist; the source tree is intact.
        let _ = futures::stream::iter(pairs.clone())
            .map(|(_, dst)| async move { inner.raw.delete(&dst).await })
            .buffer_unordered(PARALLEL)
            .collect::<Vec<_>>()
            .await;
        return Err(e);
    }
    futures::stream::iter(pairs)
        .map(|(src, _)| async move {
            inner
                .raw
                .delete(&src)
                .await
                .map_err(|e| inner.s3_err(&e, "rename directory (delete source)", from, &src, id))
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}
