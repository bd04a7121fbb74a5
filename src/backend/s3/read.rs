//! Ranged reads pinned to one version: every GET carries `If-Match: <ETag>`,
//! so an object replaced while open fails with ESTALE instead of mixing
//! pages of two versions.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use crate::backend::{
    BackendError, BackendPath, BackendResult, ByteStream, ErrorKind, FileKind, Identity,
    ObjectReader, VersionToken,
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

/// Where a ranged read goes and what it is for (messages).
pub struct RangeCtx<'a> {
    pub location: &'a object_store::path::Path,
    /// The version read: `If-Match` on it (empty: any version).
    pub etag: &'a str,
    pub op: &'static str,
    pub path: &'a BackendPath,
    pub key: &'a str,
    pub id: Identity,
}

/// Start a GET of `[offset, end)` of the version `ctx.etag`: the body is
/// still to be received.
async fn start_range(
    inner: &Inner,
    ctx: &RangeCtx<'_>,
    offset: u64,
    end: u64,
) -> BackendResult<object_store::GetResult> {
    let options = GetOptions {
        range: Some(GetRange::Bounded(offset..end)),
        if_match: (!ctx.etag.is_empty()).then(|| ctx.etag.to_string()),
        ..GetOptions::default()
    };
    inner
        .store
        .get_opts(ctx.location, options)
        .await
        .map_err(|e| inner.s3_err(&e, ctx.op, ctx.path, ctx.key, ctx.id))
}

/// The error for a body shorter than asked: the object changed under the
/// read (the range was within the version's size).
fn short_read(inner: &Inner, ctx: &RangeCtx<'_>, offset: u64, end: u64, got: u64) -> BackendError {
    inner.error(
        ErrorKind::Stale,
        ctx.op,
        ctx.path,
        ctx.id,
        format!(
            "asked for {} bytes at {offset} of '{}', got {got}: the object changed",
            end - offset,
            ctx.key
        ),
    )
}

/// Read `[offset, end)` of the object version `etag` (empty etag:
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
    let ctx = RangeCtx {
        location,
        etag,
        op,
        path,
        key,
        id,
    };
    let result = start_range(inner, &ctx, offset, end).await?;
    let data = result
        .bytes()
        .await
        .map_err(|e| inner.s3_err(&e, op, path, key, id))?;
    if (data.len() as u64) != end - offset {
        return Err(short_read(inner, &ctx, offset, end, data.len() as u64));
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

    /// One GET, its body handed on buffer by buffer as it arrives; a body
    /// that ends short (the version changed mid-read) ends with ESTALE.
    async fn read_stream(&self, offset: u64, len: usize) -> BackendResult<ByteStream> {
        let end = offset.saturating_add(len as u64).min(self.size);
        if end <= offset {
            return Ok(Box::pin(futures::stream::empty()));
        }
        let ctx = RangeCtx {
            location: &self.location,
            etag: &self.etag,
            op: "read",
            path: &self.path,
            key: &self.key,
            id: self.id,
        };
        let body = start_range(&self.inner, &ctx, offset, end)
            .await?
            .into_stream();
        let reader = Body {
            inner: Arc::clone(&self.inner),
            location: self.location.clone(),
            etag: self.etag.clone(),
            key: self.key.clone(),
            path: self.path.clone(),
            id: self.id,
            offset,
            end,
            got: 0,
        };
        Ok(Box::pin(futures::stream::unfold(
            (body, Some(reader)),
            |(mut body, reader)| async move {
                let mut reader = reader?;
                let item = match body.next().await {
                    Some(Ok(chunk)) => {
                        reader.got += chunk.len() as u64;
                        Ok(chunk)
                    }
                    Some(Err(e)) => Err(reader.fail(&e)),
                    None if reader.got == reader.end - reader.offset => return None,
                    None => Err(reader.short()),
                };
                // After an error the stream ends.
                let next = item.is_ok().then_some(reader);
                Some((item, (body, next)))
            },
        )))
    }
}

/// A streamed GET's body being received: what its errors need.
struct Body {
    inner: Arc<Inner>,
    location: object_store::path::Path,
    etag: String,
    key: String,
    path: BackendPath,
    id: Identity,
    offset: u64,
    end: u64,
    got: u64,
}

impl Body {
    fn ctx(&self) -> RangeCtx<'_> {
        RangeCtx {
            location: &self.location,
            etag: &self.etag,
            op: "read",
            path: &self.path,
            key: &self.key,
            id: self.id,
        }
    }

    fn fail(&self, e: &object_store::Error) -> BackendError {
        let ctx = self.ctx();
        self.inner.s3_err(e, ctx.op, ctx.path, ctx.key, ctx.id)
    }

    fn short(&self) -> BackendError {
        short_read(&self.inner, &self.ctx(), self.offset, self.end, self.got)
    }
}
