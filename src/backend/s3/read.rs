//! Ranged reads pinned to one version: every GET carries `If-Match: <ETag>`,
//! so an object replaced while open fails with ESTALE instead of mixing
//! pages of two versions.

use std::sync::Arc;

use async_trait::async_trait;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use crate::backend::{
    BackendPath, BackendResult, ErrorKind, FileKind, Identity, ObjectReader, VersionToken,
};

use super::{namespace, Inner};

pub async fn open(
    inner: &Arc<Inner>,
    id: Identity,
    path: &BackendPath,
) -> BackendResult<Box<dyn ObjectReader>> {
    let key = inner.keys.object(path);
    let location = inner.store_path(&key, "open for reading", path, id)?;
    let head = match inner.store.head(&location).await {
        Ok(m) => m,
        Err(object_store::Error::NotFound { .. }) => {
            let kind = match namespace::find_dir(inner, id, path).await? {
                Some(m) if m.kind == FileKind::Directory => ErrorKind::IsADirectory,
                _ => ErrorKind::NotFound,
            };
            return Err(inner.error(kind, "open for reading", path, id, "no such object"));
        }
        Err(e) => return Err(inner.s3_err(&e, "open for reading", path, &key, id)),
    };
    let etag = head.e_tag.clone().unwrap_or_default();
    Ok(Box::new(S3Reader {
        inner: Arc::clone(inner),
        location,
        key,
        path: path.clone(),
        id,
        version: super::meta::version(&etag, head.size),
        etag,
        size: head.size,
    }))
}

/// Read `[offset, offset+len)` of the object version `etag` (empty etag:
/// any version). Shared by readers and by copy-on-write fills.
pub async fn get_range(
    inner: &Inner,
    location: &object_store::path::Path,
    etag: &str,
    offset: u64,
    end: u64,
    ctx: (&'static str, &BackendPath, &str, Identity),
) -> BackendResult<bytes::Bytes> {
    let (op, path, key, id) = ctx;
    if end <= offset {
        return Ok(bytes::Bytes::new());
    }
    let options = GetOptions {
        range: Some(GetRange::Bounded(offset..end)),
        if_match: (!etag.is_empty()).then(|| etag.to_string()),
        ..GetOptions::default()
    };
    let result = inner
        .store
        .get_opts(location, options)
        .await
        .map_err(|e| inner.s3_err(&e, op, path, key, id))?;
    let data = result
        .bytes()
        .await
        .map_err(|e| inner.s3_err(&e, op, path, key, id))?;
    if (data.len() as u64) != end - offset {
        return Err(inner.error(
            ErrorKind::Stale,
            op,
            path,
            id,
            format!(
                "asked for {} bytes at {offset} of '{key}', got {}: the object changed",
                end - offset,
                data.len()
            ),
        ));
    }
    Ok(data)
}

struct S3Reader {
    inner: Arc<Inner>,
    location: object_store::path::Path,
    key: String,
    path: BackendPath,
    id: Identity,
    etag: String,
    version: VersionToken,
    size: u64,
}

#[async_trait]
impl ObjectReader for S3Reader {
    fn version(&self) -> &VersionToken {
        &self.version
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn read_at(&self, offset: u64, len: usize) -> BackendResult<bytes::Bytes> {
        let end = offset.saturating_add(len as u64).min(self.size);
        get_range(
            &self.inner,
            &self.location,
            &self.etag,
            offset,
            end,
            ("read", &self.path, &self.key, self.id),
        )
        .await
    }
}
