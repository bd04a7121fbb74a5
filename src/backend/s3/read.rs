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
        version: super::meta::version(&etag, head.size),
        size: head.size,
        target: Arc::new(Target {
            inner: Arc::clone(inner),
            location,
            key,
            path: path.clone(),
            id,
            etag,
        }),
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
/// still to be received. object_store resumes a body cut by a network
/// error with another GET carrying the same `If-Match` (and checks the
/// ETag it answers with), so a resumed body is of the same version too.
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

/// The error for a body of another length than asked: a short one means
/// the object changed under the read (the range was within the version's
/// size, ESTALE); a longer one is a server answering another range than
/// asked (EIO). Names the version the read was pinned to.
fn wrong_length(
    inner: &Inner,
    ctx: &RangeCtx<'_>,
    offset: u64,
    end: u64,
    got: u64,
) -> BackendError {
    let want = end - offset;
    let version = if ctx.etag.is_empty() {
        "any version".to_string()
    } else {
        format!("ETag {}", ctx.etag)
    };
    let (kind, why) = if got < want {
        (ErrorKind::Stale, "the object changed")
    } else {
        (ErrorKind::Other, "more than the range asked for")
    };
    inner.error(
        kind,
        ctx.op,
        ctx.path,
        ctx.id,
        format!(
            "asked for {want} bytes at {offset} of '{}' ({version}), got {got}: {why}",
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
        return Err(wrong_length(inner, &ctx, offset, end, data.len() as u64));
    }
    Ok(data)
}

/// The object version one reader reads, and what its errors name; shared
/// with the bodies of its streamed reads, which outlive the call.
struct Target {
    inner: Arc<Inner>,
    location: object_store::path::Path,
    key: String,
    path: BackendPath,
    id: Identity,
    etag: String,
}

impl Target {
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
}

struct S3Reader {
    target: Arc<Target>,
    version: VersionToken,
    size: u64,
}

impl S3Reader {
    /// `[offset, offset+len)` clipped to the version's size.
    fn range(&self, offset: u64, len: usize) -> (u64, u64) {
        (offset, offset.saturating_add(len as u64).min(self.size))
    }
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
        let (offset, end) = self.range(offset, len);
        let t = &self.target;
        get_range(
            &t.inner,
            &t.location,
            &t.etag,
            offset,
            end,
            ("read", &t.path, &t.key, t.id),
        )
        .await
    }

    /// One GET, its body handed on buffer by buffer as it arrives. Its
    /// length is checked as it comes: a body that ends short (the version
    /// changed mid-read) ends in ESTALE, one that runs long in EIO, and the
    /// stream ends after its first error.
    async fn read_stream(&self, offset: u64, len: usize) -> BackendResult<ByteStream> {
        let (offset, end) = self.range(offset, len);
        if end <= offset {
            return Ok(Box::pin(futures::stream::empty()));
        }
        let t = &self.target;
        let body = start_range(&t.inner, &t.ctx(), offset, end)
            .await?
            .into_stream();
        let counted = Counted {
            target: Arc::clone(t),
            offset,
            end,
            got: 0,
        };
        Ok(Box::pin(futures::stream::unfold(
            (body, Some(counted)),
            |(mut body, counted)| async move {
                let mut counted = counted?;
                let item = match body.next().await {
                    Some(Ok(chunk)) => counted.take(chunk),
                    Some(Err(e)) => Err(counted.failed(&e)),
                    None if counted.got == counted.end - counted.offset => return None,
                    None => Err(counted.wrong_length()),
                };
                let next = item.is_ok().then_some(counted);
                Some((item, (body, next)))
            },
        )))
    }
}

/// A streamed GET's body being received: how much of `[offset, end)` came.
struct Counted {
    target: Arc<Target>,
    offset: u64,
    end: u64,
    got: u64,
}

impl Counted {
    /// A buffer of the body, unless it runs past the range asked for.
    fn take(&mut self, chunk: bytes::Bytes) -> BackendResult<bytes::Bytes> {
        self.got += chunk.len() as u64;
        if self.got > self.end - self.offset {
            return Err(self.wrong_length());
        }
        Ok(chunk)
    }

    fn failed(&self, e: &object_store::Error) -> BackendError {
        let t = &self.target;
        t.inner.s3_err(e, "read", &t.path, &t.key, t.id)
    }

    fn wrong_length(&self) -> BackendError {
        let t = &self.target;
        wrong_length(&t.inner, &t.ctx(), self.offset, self.end, self.got)
    }
}
