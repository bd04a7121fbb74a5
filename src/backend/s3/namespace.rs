//! stat, list, mkdir, rmdir, unlink: directories are key prefixes.

use std::collections::HashSet;
use std::time::SystemTime;

use crate::backend::{
    is_temp_name, BackendPath, BackendResult, DirEntry, ErrorKind, FileKind, Identity, Metadata,
};
use object_store::ObjectStoreExt;

use super::{meta, Inner};

/// HEAD of the object for `path`: `Ok(None)` when there is none.
pub async fn head_object(
    inner: &Inner,
    id: Identity,
    path: &BackendPath,
) -> BackendResult<Option<object_store::ObjectMeta>> {
    if path.is_root() {
        return Ok(None);
    }
    let key = inner.keys.object(path);
    let location = inner.store_path(&key, "stat", path, id)?;
    match inner.store.head(&location).await {
        Ok(m) => Ok(Some(m)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(inner.s3_err(&e, "stat", path, &key, id)),
    }
}

pub async fn head_file(
    inner: &Inner,
    id: Identity,
    path: &BackendPath,
) -> BackendResult<Option<Metadata>> {
    Ok(head_object(inner, id, path)
        .await?
        .map(|m| meta::from_object_meta(inner, &m)))
}

/// A directory exists when any key starts with its prefix (its marker or
/// anything below). One listing of at most one key.
pub async fn find_dir(
    inner: &Inner,
    id: Identity,
    path: &BackendPath,
) -> BackendResult<Option<Metadata>> {
    let prefix = inner.keys.dir(path);
    let first = inner
        .raw
        .first_keys(&prefix, 1)
        .await
        .map_err(|e| inner.s3_err(&e, "stat", path, &prefix, id))?;
    match first.first() {
        // The marker sorts first: it carries the directory's mtime.
        Some(o) if o.key == prefix => Ok(Some(meta::dir(inner, &prefix, o.modified()))),
        Some(_) => Ok(Some(meta::dir(inner, &prefix, inner.started))),
        None if path.is_root() => Ok(Some(meta::dir(inner, &prefix, inner.started))),
        None => Ok(None),
    }
}

/// A file wins over a directory of the same name (a key `a` and keys under
/// `a/` can coexist in S3; POSIX has one name).
pub async fn stat(inner: &Inner, id: Identity, path: &BackendPath) -> BackendResult<Metadata> {
    let (file, dir) = tokio::join!(head_file(inner, id, path), find_dir(inner, id, path));
    if let Some(m) = file? {
        return Ok(m);
    }
    match dir? {
        Some(m) => Ok(m),
        None => Err(inner.error(
            ErrorKind::NotFound,
            "stat",
            path,
            id,
            "no such object or prefix",
        )),
    }
}

pub async fn list(inner: &Inner, id: Identity, path: &BackendPath) -> BackendResult<Vec<DirEntry>> {
    let prefix = inner.keys.dir(path);
    let listing = inner
        .raw
        .list_dir(&prefix)
        .await
        .map_err(|e| inner.s3_err(&e, "list directory", path, &prefix, id))?;
    if listing.objects.is_empty() && listing.prefixes.is_empty() && !path.is_root() {
        // Nothing below: not a directory at all.
        let kind = match head_file(inner, id, path).await? {
            Some(_) => ErrorKind::NotADirectory,
            None => ErrorKind::NotFound,
        };
        return Err(inner.error(kind, "list directory", path, id, "no keys under prefix"));
    }
    let mut out = Vec::with_capacity(listing.objects.len() + listing.prefixes.len());
    let mut files = HashSet::new();
    for object in &listing.objects {
        let Some(name) = child_name(&prefix, &object.key) else {
            continue; // the directory's own marker, or an unusable key
        };
        files.insert(name.to_string());
        out.push(DirEntry {
            name: name.to_string(),
            meta: meta::file(
                inner,
                &object.key,
                object.size,
                object.modified(),
                object.e_tag.as_deref().unwrap_or(""),
            ),
        });
    }
    for sub in &listing.prefixes {
        let Some(name) = child_name(&prefix, sub) else {
            continue;
        };
        if files.contains(name) {
            tracing::debug!(dir = %path, name, "a file and a prefix share a name; showing the file");
            continue;
        }
        out.push(DirEntry {
            name: name.to_string(),
            meta: meta::dir(inner, sub, inner.started),
        });
    }
    Ok(out)
}

/// The child name of `key` in the directory listed as `prefix`, if it is a
/// name POSIX can show (no temp names, no empty or `.`/`..` names).
fn child_name<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let rest = key.strip_prefix(prefix)?;
    let name = rest.strip_suffix('/').unwrap_or(rest);
    let valid = !name.is_empty()
        && !name.contains('/')
        && BackendPath::root().join(name).is_ok()
        && !is_temp_name(name);
    if !valid && !name.is_empty() {
        tracing::debug!(key, "skipping a key that is not a valid file name");
    }
    valid.then_some(name)
}

pub async fn mkdir(inner: &Inner, id: Identity, path: &BackendPath) -> BackendResult<Metadata> {
    match stat(inner, id, path).await {
        Ok(_) => {
            return Err(inner.error(ErrorKind::AlreadyExists, "mkdir", path, id, "name exists"))
        }
        Err(e) if e.kind == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let marker = inner.keys.dir(path);
    inner
        .raw
        .put_empty(&marker)
        .await
        .map_err(|e| inner.s3_err(&e, "mkdir (put marker)", path, &marker, id))?;
    Ok(meta::dir(inner, &marker, SystemTime::now()))
}

pub async fn rmdir(inner: &Inner, id: Identity, path: &BackendPath) -> BackendResult<()> {
    if path.is_root() {
        return Err(inner.error(ErrorKind::NotPermitted, "rmdir", path, id, "volume root"));
    }
    let prefix = inner.keys.dir(path);
    let keys = inner
        .raw
        .first_keys(&prefix, 2)
        .await
        .map_err(|e| inner.s3_err(&e, "rmdir", path, &prefix, id))?;
    if keys.iter().any(|o| o.key != prefix) {
        return Err(inner.error(
            ErrorKind::NotEmpty,
            "rmdir",
            path,
            id,
            "keys remain under the prefix",
        ));
    }
    if keys.is_empty() {
        let kind = match head_file(inner, id, path).await? {
            Some(_) => ErrorKind::NotADirectory,
            None => ErrorKind::NotFound,
        };
        return Err(inner.error(kind, "rmdir", path, id, "no such prefix"));
    }
    inner
        .raw
        .delete(&prefix)
        .await
        .map_err(|e| inner.s3_err(&e, "rmdir (delete marker)", path, &prefix, id))?;
    keep_dir(inner, id, &path.parent()).await;
    Ok(())
}

pub async fn unlink(inner: &Inner, id: Identity, path: &BackendPath) -> BackendResult<()> {
    let Some(_) = head_file(inner, id, path).await? else {
        let kind = match find_dir(inner, id, path).await? {
            Some(m) if m.kind == FileKind::Directory => ErrorKind::IsADirectory,
            _ => ErrorKind::NotFound,
        };
        return Err(inner.error(kind, "unlink", path, id, "no such object"));
    };
    let key = inner.keys.object(path);
    let location = inner.store_path(&key, "unlink", path, id)?;
    inner
        .store
        .delete(&location)
        .await
        .map_err(|e| inner.s3_err(&e, "unlink", path, &key, id))?;
    keep_dir(inner, id, &path.parent()).await;
    Ok(())
}

/// POSIX directories outlive their last entry; S3 prefixes do not. After
/// removing something from `dir`, give it a marker if nothing is left.
/// Best effort: a failure only means the empty directory may vanish.
pub async fn keep_dir(inner: &Inner, id: Identity, dir: &BackendPath) {
    if dir.is_root() {
        return;
    }
    let prefix = inner.keys.dir(dir);
    match inner.raw.first_keys(&prefix, 1).await {
        Ok(keys) if keys.is_empty() => {
            if let Err(e) = inner.raw.put_empty(&prefix).await {
                let err = inner.s3_err(&e, "keep empty directory", dir, &prefix, id);
                tracing::warn!(error = %err, "could not keep an emptied directory");
            }
        }
        Ok(_) => {}
        Err(e) => {
            let err = inner.s3_err(&e, "keep empty directory", dir, &prefix, id);
            tracing::warn!(error = %err, "could not check an emptied directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_names() {
        assert_eq!(child_name("p/", "p/a"), Some("a"));
        assert_eq!(child_name("p/", "p/d/"), Some("d"));
        assert_eq!(child_name("p/", "p/"), None);
        assert_eq!(child_name("p/", "p//"), None);
        assert_eq!(child_name("p/", "p/../"), None);
        assert_eq!(child_name("p/", "p/.x.cachalot-0011223344556677a"), None);
        assert_eq!(child_name("", "top"), Some("top"));
    }
}
