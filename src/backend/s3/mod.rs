//! `s3://bucket/prefix` backend (see docs/s3.md for the user-facing rules).
//!
//! Mapping: a file is an object; a directory is a key prefix ending in '/',
//! made to exist while empty by an empty marker object `dir/`. Metadata S3
//! cannot store (mode, owner) is fixed per mount. Writes are staged in a
//! local file and published by one PUT or a multipart upload, so the object
//! under its final key only ever holds complete content.
//!
//! Most requests go through object_store; `raw.rs` signs the few it cannot
//! make (marker objects, tolerant listings, ListMultipartUploads).

mod cleanup;
mod client;
mod config;
mod copy;
mod credentials;
mod errors;
mod keys;
mod meta;
mod namespace;
mod preflight;
mod ranges;
mod raw;
mod read;
mod rename;
mod resume;
mod staging;
mod stream;
mod tail;
mod upload;
mod write;
mod xml;

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use object_store::aws::AmazonS3;

use super::{
    AttrChanges, Backend, BackendError, BackendPath, BackendResult, Capabilities, DirEntry,
    ErrorKind, FsStats, Identity, Metadata, ObjectReader, PendingWrite, SpecialFile, WriteStart,
};

pub use client::install_tls_provider;
pub use config::{
    parse_endpoint, parse_region, EndpointError, S3Config, S3Options, DEFAULT_DIR_MODE,
    DEFAULT_FILE_MODE,
};
pub use credentials::{CredentialSource, Credentials, CredentialsError, WebIdentity};
pub use errors::{classify, is_certificate_refused, is_credential_failure, ErrorSite, S3Failure};
pub use preflight::{PreflightError, Probe};

use errors::backend_error;
use keys::KeyMap;
use raw::RawClient;
use staging::Staging;

/// State shared by the backend and its readers and pending writes.
pub(crate) struct Inner {
    pub cfg: S3Config,
    pub keys: KeyMap,
    pub store: AmazonS3,
    pub raw: RawClient,
    pub describe: String,
    /// See `Backend::cache_identity`.
    pub cache_identity: String,
    /// Endpoint as shown in messages.
    pub endpoint: String,
    pub staging: Staging,
    /// Reported as the mtime of directories without a marker object.
    pub started: SystemTime,
}

impl Inner {
    pub fn site(&self) -> ErrorSite<'_> {
        ErrorSite {
            backend: &self.describe,
            bucket: &self.cfg.bucket,
            endpoint: &self.endpoint,
            access_key_id: &self.cfg.credentials.access_key_id,
            cloud_origin: self
                .cfg
                .credentials
                .cloud
                .is_some()
                .then_some(self.cfg.credentials.origin.as_str()),
        }
    }

    /// An S3 failure (object_store's or a raw call's) as the backend error
    /// the file system maps to an errno.
    pub fn s3_err<'e, E>(
        &self,
        e: &'e E,
        op: &'static str,
        path: &BackendPath,
        key: &str,
        id: Identity,
    ) -> BackendError
    where
        S3Failure: From<&'e E>,
    {
        backend_error(
            &S3Failure::from(e),
            &self.site(),
            op,
            path.as_str(),
            key,
            id,
        )
    }

    pub fn error(
        &self,
        kind: ErrorKind,
        op: &'static str,
        path: &BackendPath,
        id: Identity,
        cause: impl Into<String>,
    ) -> BackendError {
        BackendError::new(kind, op, path.as_str())
            .with_backend(&self.describe)
            .with_identity(id)
            .with_cause(cause)
    }

    /// A local I/O failure (staging file): ENOSPC stays ENOSPC.
    pub fn io_error(
        &self,
        e: &std::io::Error,
        op: &'static str,
        path: &BackendPath,
        id: Identity,
    ) -> BackendError {
        BackendError::from_io(e, op, path.as_str())
            .with_backend(&self.describe)
            .with_identity(id)
    }

    /// object_store's path for a key we built from a `BackendPath`. Names
    /// with control characters cannot be expressed (EINVAL).
    pub fn store_path(
        &self,
        key: &str,
        op: &'static str,
        path: &BackendPath,
        id: Identity,
    ) -> BackendResult<object_store::path::Path> {
        object_store::path::Path::parse(key).map_err(|e| {
            self.error(
                ErrorKind::InvalidArgument,
                op,
                path,
                id,
                format!("name not usable as an S3 key: {e}"),
            )
        })
    }
}

/// The S3 backend. Cheap to clone handles are kept by readers and writes.
pub struct S3Backend {
    inner: Arc<Inner>,
}

impl S3Backend {
    /// Build the clients. Nothing is sent yet: the mount's root stat and
    /// the preflight check talk to the server.
    pub fn new(cfg: S3Config) -> Result<S3Backend, String> {
        Ok(S3Backend {
            inner: Arc::new(client::build(cfg)?),
        })
    }

    /// Multipart uploads in progress under the volume's prefix, as
    /// `(key, upload id)`: for diagnostics and tests.
    pub async fn pending_uploads(&self) -> BackendResult<Vec<(String, String)>> {
        let root = BackendPath::root();
        let prefix = self.inner.keys.dir(&root);
        let uploads = self.inner.raw.list_uploads(&prefix).await.map_err(|e| {
            let id = Identity::new(0, 0);
            self.inner
                .s3_err(&e, "list multipart uploads", &root, &prefix, id)
        })?;
        Ok(uploads.into_iter().map(|u| (u.key, u.upload_id)).collect())
    }

    /// The access key id in use (never the secret), for messages.
    pub fn access_key_id(&self) -> &str {
        &self.inner.cfg.credentials.access_key_id
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn describe(&self) -> &str {
        &self.inner.describe
    }

    fn cache_identity(&self) -> &str {
        &self.inner.cache_identity
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            hard_links: false,
            symlinks: false,
            special_files: false,
            caller_groups: false,
            cheap_rename: false,
            inline_io: false,
            inline_writes: true,
            large_reads: true,
        }
    }

    async fn stat(&self, id: Identity, path: &BackendPath) -> BackendResult<Metadata> {
        namespace::stat(&self.inner, id, path).await
    }

    async fn list(&self, id: Identity, path: &BackendPath) -> BackendResult<Vec<DirEntry>> {
        namespace::list(&self.inner, id, path).await
    }

    async fn open_read(
        &self,
        id: Identity,
        path: &BackendPath,
    ) -> BackendResult<Box<dyn ObjectReader>> {
        read::open(&self.inner, id, path).await
    }

    async fn begin_write(
        &self,
        id: Identity,
        path: &BackendPath,
        start: WriteStart,
        _create_mode: u32,
    ) -> BackendResult<Box<dyn PendingWrite>> {
        write::begin(&self.inner, id, path, start).await
    }

    async fn resume_write(
        &self,
        id: Identity,
        target: &BackendPath,
        state: crate::backend::SuspendedWrite,
    ) -> BackendResult<crate::backend::Resumed> {
        resume::resume(&self.inner, id, target, state).await
    }

    async fn mkdir(&self, id: Identity, path: &BackendPath, _mode: u32) -> BackendResult<Metadata> {
        namespace::mkdir(&self.inner, id, path).await
    }

    async fn rmdir(&self, id: Identity, path: &BackendPath) -> BackendResult<()> {
        namespace::rmdir(&self.inner, id, path).await
    }

    async fn unlink(&self, id: Identity, path: &BackendPath) -> BackendResult<()> {
        namespace::unlink(&self.inner, id, path).await
    }

    async fn rename(
        &self,
        id: Identity,
        from: &BackendPath,
        to: &BackendPath,
        no_replace: bool,
    ) -> BackendResult<()> {
        rename::rename(&self.inner, id, from, to, no_replace).await
    }

    /// CopyObject (UploadPartCopy parts above 5 GiB): the data stays in
    /// the bucket.
    async fn copy_file(
        &self,
        id: Identity,
        from: &BackendPath,
        to: &BackendPath,
    ) -> BackendResult<bool> {
        rename::copy_object(&self.inner, id, from, to).await
    }

    async fn symlink(
        &self,
        id: Identity,
        path: &BackendPath,
        _target: &str,
    ) -> BackendResult<Metadata> {
        Err(self.inner.error(
            ErrorKind::NotPermitted,
            "symlink",
            path,
            id,
            "S3 has no symbolic links",
        ))
    }

    async fn readlink(&self, id: Identity, path: &BackendPath) -> BackendResult<String> {
        Err(self.inner.error(
            ErrorKind::InvalidArgument,
            "readlink",
            path,
            id,
            "S3 has no symbolic links",
        ))
    }

    async fn link(
        &self,
        id: Identity,
        _existing: &BackendPath,
        new: &BackendPath,
    ) -> BackendResult<Metadata> {
        Err(self.inner.error(
            ErrorKind::NotPermitted,
            "link",
            new,
            id,
            "S3 has no hard links",
        ))
    }

    async fn mknod(
        &self,
        id: Identity,
        path: &BackendPath,
        _node: SpecialFile,
        _mode: u32,
    ) -> BackendResult<Metadata> {
        Err(self.inner.error(
            ErrorKind::NotPermitted,
            "mknod",
            path,
            id,
            "S3 cannot store FIFOs, device nodes or sockets",
        ))
    }

    async fn set_attr(
        &self,
        id: Identity,
        path: &BackendPath,
        changes: &AttrChanges,
    ) -> BackendResult<Metadata> {
        let meta = namespace::stat(&self.inner, id, path).await?;
        meta::check_fixed_attrs(&self.inner, &meta, changes, id, path)?;
        // Timestamps: S3 sets Last-Modified itself; utimens is a no-op.
        Ok(meta)
    }

    /// A completed upload is durable: nothing to flush.
    async fn sync(&self, _id: Identity, _path: &BackendPath) -> BackendResult<()> {
        Ok(())
    }

    async fn statfs(&self, _id: Identity) -> BackendResult<FsStats> {
        // A bucket has no capacity; report a large, constant, plausible one
        // so tools that check free space before writing proceed.
        const BLOCKS: u64 = 1 << 40;
        Ok(FsStats {
            block_size: 4096,
            blocks: BLOCKS,
            blocks_free: BLOCKS,
            blocks_available: BLOCKS,
            files: BLOCKS,
            files_free: BLOCKS,
            name_max: super::path::NAME_MAX as u32,
        })
    }

    async fn cleanup_stale_temps(&self) -> BackendResult<usize> {
        cleanup::run(&self.inner).await
    }
}
