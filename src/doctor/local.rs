//! file:// sources: the directory is there and readable (the CSI node's
//! NodeStage check too), and the identity can create, write, rename and
//! remove in it through the local backend, as the write path does.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{Doctor, Found, Problem, Request};
use crate::backend::local::{IdentityMode, LocalBackend};
use crate::backend::{hidden_name_for, Backend, BackendPath, ErrorKind, Identity, WriteStart};

/// Why a file:// volume directory cannot be used. NodeStage maps each to
/// its CSI code; doctor prints the message.
#[derive(Debug, thiserror::Error)]
pub enum SourceDirError {
    #[error("{0} is not a directory — fix: remove what is in the way of the volume directory")]
    NotADirectory(String),
    #[error(
        "volume directory {0} does not exist (deleted, or the source is not mounted on this \
         node) — fix: create it, or mount the source's file system on this node"
    )]
    Missing(String),
    #[error(
        "volume directory {path}: {error} — fix: the mounting process (the CSI node plugin) \
         needs read access to the source"
    )]
    Denied { path: String, error: io::Error },
    #[error("volume directory {path}: {error}; the source is unreachable, retry later")]
    Unreachable { path: String, error: io::Error },
}

/// The volume directory of a file:// source exists and can be read.
pub fn source_dir(root: &Path) -> Result<String, SourceDirError> {
    let path = root.display().to_string();
    let meta = match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => m,
        Ok(_) => return Err(SourceDirError::NotADirectory(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SourceDirError::Missing(path)),
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
            return Err(SourceDirError::Denied { path, error })
        }
        Err(error) => return Err(SourceDirError::Unreachable { path, error }),
    };
    if let Err(error) = std::fs::read_dir(root) {
        return Err(match error.kind() {
            io::ErrorKind::PermissionDenied => SourceDirError::Denied { path, error },
            _ => SourceDirError::Unreachable { path, error },
        });
    }
    Ok(format!(
        "{path} is a directory (owned by uid {} gid {}, mode {:04o})",
        meta.uid(),
        meta.gid(),
        meta.mode() & 0o7777
    ))
}

pub async fn checks(doc: &mut Doctor<'_>, root: &Path, req: &Request) {
    let dir = async {
        source_dir(root)
            .map(|m| ((), Found::from(m)))
            .map_err(|e| Problem::explained(e.to_string()))
    };
    doc.step("source", dir).await;
    doc.step("identity", write_probe(root, req)).await;
}

/// Create, write, publish, rename and remove a hidden file through the
/// local backend, as the identity a mount with these options would use.
async fn write_probe(root: &Path, req: &Request) -> Result<((), Found), Problem> {
    let mode = match req.identity {
        Some(_) => IdentityMode::Fixed,
        None => IdentityMode::Caller,
    };
    let backend = LocalBackend::open(root.to_path_buf(), mode)
        .map_err(|e| Problem::explained(format!("opening {}: {e}", root.display())))?;
    let id = req.identity();
    let first = name(1)?;
    let second = name(2)?;
    let result = probe(&backend, id, &first, &second).await;
    if let Err((step, e)) = result {
        let _ = backend.unlink(id, &first).await;
        let _ = backend.unlink(id, &second).await;
        return Err(explain(root, id, step, e.kind, &e.to_string()));
    }
    Ok((
        (),
        format!(
            "uid {} gid {} can create, write, rename and remove files in {}",
            id.uid,
            id.gid,
            root.display()
        )
        .into(),
    ))
}

fn name(seq: u64) -> Result<BackendPath, Problem> {
    BackendPath::root()
        .join(&hidden_name_for("doctor", seq))
        .map_err(|e| Problem::explained(format!("naming the probe file: {e:?}")))
}

type StepError = (&'static str, crate::backend::BackendError);

async fn probe(
    backend: &LocalBackend,
    id: Identity,
    first: &BackendPath,
    second: &BackendPath,
) -> Result<(), StepError> {
    let pending = backend
        .begin_write(id, first, WriteStart::Empty, 0o600)
        .await
        .map_err(|e| ("create", e))?;
    let written = pending.write_at(0, b"cachalot doctor\n").await;
    let published = match written {
        Ok(()) => pending.publish(first).await.map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = published {
        pending.abort(first).await;
        return Err(("write", e));
    }
    backend
        .rename(id, first, second, false)
        .await
        .map_err(|e| ("rename", e))?;
    backend.unlink(id, second).await.map_err(|e| ("remove", e))
}

fn explain(root: &Path, id: Identity, step: &str, kind: ErrorKind, detail: &str) -> Problem {
    let owner = std::fs::metadata(root).ok();
    let (uid, gid) = owner.map(|m| (m.uid(), m.gid())).unwrap_or((0, 0));
    let cause = format!(
        "uid {} gid {} could not {step} a file in {}: {detail}",
        id.uid,
        id.gid,
        root.display()
    );
    match kind {
        ErrorKind::PermissionDenied | ErrorKind::NotPermitted => Problem::new(
            cause,
            format!(
                "set uid/gid to the owner of {} (--uid {uid} --gid {gid}) or give that identity \
                 write permission; or mount with --read-only",
                root.display()
            ),
        ),
        ErrorKind::ReadOnly => Problem::new(cause, "mount with --read-only"),
        _ => Problem::explained(cause),
    }
}
