//! A write session handed to another process (live takeover) or found
//! after a crash: what `suspend` and `describe` record, and `resume`, which
//! continues from the staging file alone.

use std::sync::Arc;

use crate::backend::{BackendPath, BackendResult, ErrorKind, Identity, SuspendedWrite};

use super::ranges::RangeSet;
use super::write::{Base, S3PendingWrite, State};
use super::Inner;

/// What `suspend` hands to another process.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Suspended {
    staging_id: String,
    /// Absent when described at begin (after a crash): measured, and only
    /// for a write without a copy-on-write base (whose filled ranges are
    /// not known then).
    size: Option<u64>,
    base: Option<SuspendedBase>,
    base_limit: u64,
    present: Option<Vec<(u64, u64)>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SuspendedBase {
    key: String,
    etag: String,
    size: u64,
}

impl SuspendedBase {
    fn of(base: &Base) -> SuspendedBase {
        SuspendedBase {
            key: base.key.clone(),
            etag: base.etag.clone(),
            size: base.size,
        }
    }
}

impl Suspended {
    /// A session suspended by its process: everything is known.
    pub(super) fn of_session(staging_id: &str, state: &State) -> Suspended {
        Suspended {
            staging_id: staging_id.to_string(),
            size: Some(state.size),
            base: state.base.as_ref().map(SuspendedBase::of),
            base_limit: state.base_limit,
            present: Some(state.present.to_pairs()),
        }
    }

    /// A session described for a crash (`state` when not busy): the size
    /// and filled ranges are left to the staging file.
    pub(super) fn described(staging_id: &str, state: Option<&State>) -> Suspended {
        Suspended {
            staging_id: staging_id.to_string(),
            size: None,
            base: state.and_then(|s| s.base.as_ref().map(SuspendedBase::of)),
            base_limit: state.map_or(0, |s| s.base_limit),
            present: None,
        }
    }
}

/// Continue a suspended session (see `Backend::resume_write`): the staging
/// file is renamed to an id of ours; a streamed upload was abandoned by the
/// suspending process, so publish uploads the staging file.
pub async fn resume(
    inner: &Arc<Inner>,
    id: Identity,
    target: &BackendPath,
    state: SuspendedWrite,
) -> BackendResult<crate::backend::Resumed> {
    let bad = |why: String| inner.error(ErrorKind::Other, "resume write", target, id, &why);
    let s: Suspended =
        serde_json::from_value(state).map_err(|e| bad(format!("bad suspended write: {e}")))?;
    let base = match s.base {
        Some(b) => Some(Base {
            location: inner.store_path(&b.key, "resume write", target, id)?,
            key: b.key,
            etag: b.etag,
            size: b.size,
        }),
        None => None,
    };
    if s.present.is_none() && base.is_some() {
        return Err(bad(
            "a partial overwrite of an existing object cannot be recovered after a crash".into(),
        ));
    }
    // The staging file is private: only a publish or an abort of ours
    // removes it, so gone means the other process finished it.
    let (file, file_path, staging_id) = match inner.staging.adopt(&s.staging_id) {
        Ok(adopted) => adopted,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(crate::backend::Resumed::Published)
        }
        Err(e) => return Err(inner.io_error(&e, "resume staging file", target, id)),
    };
    let size = match s.size {
        Some(size) => size,
        None => file
            .metadata()
            .map_err(|e| inner.io_error(&e, "resume staging file", target, id))?
            .len(),
    };
    let present = match &s.present {
        Some(pairs) => RangeSet::from_pairs(pairs),
        None => RangeSet::from_pairs(&[(0, size)]),
    };
    let mut state = State::new(inner, size, base, s.base_limit, present);
    state.stream_off = true;
    let staging = (file, file_path, staging_id);
    Ok(crate::backend::Resumed::Pending(Box::new(
        S3PendingWrite::new(inner, id, target, staging, state),
    )))
}
