//! Why a mount could not start, resume, hand over or stop. One type for
//! the mount module (anyhow stays in main.rs): each variant says what was
//! being done, the cause is its `source()`, and [`chain`] prints both.

use std::io;

use crate::backend::s3::PreflightError;
use crate::backend::{BackendError, OpenError};
use crate::cache::CacheOpenError;

pub type MountResult<T> = Result<T, MountError>;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// An operating-system call of the mount itself: the runtime, threads,
    /// the kernel mount, descriptors, signals, the journal, a log file.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The source could not be opened, or failed a check before serving
    /// (boxed: its causes are large, and every result carries the size).
    #[error("{what}")]
    Source {
        what: String,
        #[source]
        source: Box<SourceFailure>,
    },
    #[error("opening the page cache")]
    Cache(#[source] CacheOpenError),
    /// Not possible in this state; the message says why.
    #[error("{0}")]
    Refused(String),
}

/// What went wrong with the source.
#[derive(Debug, thiserror::Error)]
pub enum SourceFailure {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// The bucket did not answer the mount's first request.
    #[error("reaching the bucket")]
    Bucket(#[source] BackendError),
    /// A check that reports its finding as text (S3 credentials).
    #[error("{0}")]
    Check(String),
}

impl MountError {
    /// For `map_err`: an OS error met while doing `what`.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> MountError {
        let what = what.into();
        move |source| MountError::Io { what, source }
    }

    /// For `map_err`: the source failed while doing `what`.
    pub(crate) fn source<E: Into<SourceFailure>>(
        what: impl Into<String>,
    ) -> impl FnOnce(E) -> MountError {
        let what = what.into();
        move |e| MountError::Source {
            what,
            source: Box::new(e.into()),
        }
    }
}

pub use crate::error_text::chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_names_what_failed_and_why_once() {
        let open = BackendError::new(crate::backend::ErrorKind::NotFound, "open the source", "")
            .with_backend("file:///srv/x");
        let e = MountError::source::<OpenError>("mounting file:///srv/x")(open.into());
        let text = chain(&e);
        assert!(
            text.starts_with("mounting file:///srv/x: open the source"),
            "{text}"
        );
        assert_eq!(text.matches("open the source").count(), 1, "{text}");
    }
}
