//! POSIX metadata for objects and prefixes. S3 stores size, Last-Modified
//! and an ETag; mode and owner are fixed per mount.

use std::time::SystemTime;

use crate::backend::{
    AttrChanges, BackendPath, BackendResult, ErrorKind, FileKind, Identity, Metadata, VersionToken,
};

use super::Inner;

/// ETags arrive quoted from HEAD and XML alike; compare them unquoted.
pub fn bare_etag(etag: &str) -> &str {
    etag.trim().trim_matches('"')
}

/// The version token: ETag plus size (an ETag alone is not unique across
/// sizes for some servers' multipart ETags).
pub fn version(etag: &str, size: u64) -> VersionToken {
    VersionToken(format!("{}-{size:x}", bare_etag(etag)))
}

/// The object number of a key (or a directory's prefix): FNV-1a, fixed by
/// definition, so a successor process built by another compiler gives the
/// same `st_ino`. A key is the object, so renaming it (copy + delete) makes
/// a new one, as it does on S3.
pub fn key_id(key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

pub fn file(inner: &Inner, key: &str, size: u64, mtime: SystemTime, etag: &str) -> Metadata {
    Metadata {
        kind: FileKind::File,
        size,
        mode: inner.cfg.options.file_mode & 0o7777,
        uid: inner.cfg.uid,
        gid: inner.cfg.gid,
        nlink: 1,
        atime: mtime,
        mtime,
        ctime: mtime,
        version: version(etag, size),
        object_id: Some(key_id(key)),
        rdev: 0,
    }
}

/// A directory, from its prefix (`dir/`, or empty for the root).
pub fn dir(inner: &Inner, prefix: &str, mtime: SystemTime) -> Metadata {
    Metadata {
        kind: FileKind::Directory,
        size: 0,
        mode: inner.cfg.options.dir_mode & 0o7777,
        uid: inner.cfg.uid,
        gid: inner.cfg.gid,
        nlink: 2,
        atime: mtime,
        mtime,
        ctime: mtime,
        version: VersionToken("dir".into()),
        object_id: Some(key_id(prefix)),
        rdev: 0,
    }
}

pub fn from_object_meta(inner: &Inner, m: &object_store::ObjectMeta) -> Metadata {
    file(
        inner,
        m.location.as_ref(),
        m.size,
        SystemTime::from(m.last_modified),
        m.e_tag.as_deref().unwrap_or(""),
    )
}

/// chmod/chown cannot be stored: accepted when they change nothing, EPERM
/// otherwise (silently ignoring a chmod 600 would mislead about who can
/// read a file).
pub fn check_fixed_attrs(
    inner: &Inner,
    current: &Metadata,
    changes: &AttrChanges,
    id: Identity,
    path: &BackendPath,
) -> BackendResult<()> {
    let mode_changes = changes.mode.is_some_and(|m| m & 0o7777 != current.mode);
    let owner_changes = changes.uid.is_some_and(|u| u != current.uid)
        || changes.gid.is_some_and(|g| g != current.gid);
    if mode_changes || owner_changes {
        return Err(inner.error(
            ErrorKind::NotPermitted,
            "set attributes",
            path,
            id,
            format!(
                "S3 stores no permissions or owners: every file is {:o} and every directory \
                 {:o}, owned by {}:{} (set with --file-mode, --dir-mode, --uid/--gid at mount)",
                inner.cfg.options.file_mode,
                inner.cfg.options.dir_mode,
                inner.cfg.uid,
                inner.cfg.gid
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_compare_unquoted() {
        assert_eq!(bare_etag("\"abc\""), "abc");
        assert_eq!(version("\"abc\"", 16), version("abc", 16));
        assert_ne!(version("abc", 16), version("abc", 17));
    }
}
