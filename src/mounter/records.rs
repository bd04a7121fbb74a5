//! The mounter's records of its sessions in `--state-dir`, one small JSON
//! file each, written atomically: what a successor needs to serve a
//! session again after this process died (its descriptor comes back from
//! the keeper). They hold the volume's S3 secret, so the directory is 0700
//! and the files 0600: only root on the node reads them (docs/csi.md,
//! "Credentials").
//!
//! ```text
//! <state-dir>/sessions/<key>.json   one per session (key: hash of the staging path)
//! <state-dir>/journal/<key>/        the session's filesystem journal (see `journal`)
//! ```

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::protocol::{S3Secret, StageRequest, VolumeNames};
use crate::mount::spec::MountSpec;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub volume_id: String,
    #[serde(default)]
    pub names: VolumeNames,
    pub spec: MountSpec,
    #[serde(default)]
    pub secret: Option<S3Secret>,
    pub started_unix: u64,
}

impl SessionRecord {
    pub fn new(req: &StageRequest) -> SessionRecord {
        SessionRecord {
            volume_id: req.volume_id.clone(),
            names: req.names.clone(),
            spec: req.spec.clone(),
            secret: req.secret.clone(),
            started_unix: super::server::unix_secs(std::time::SystemTime::now()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Records {
    root: PathBuf,
}

/// A file name for a staging path.
pub fn key(staging: &Path) -> String {
    let hash = blake3::hash(staging.as_os_str().as_encoded_bytes());
    hash.to_hex()[..32].to_string()
}

fn private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

impl Records {
    pub fn open(state_dir: &Path) -> io::Result<Records> {
        private_dir(state_dir)?;
        let root = state_dir.join("sessions");
        private_dir(&root)?;
        private_dir(&state_dir.join("journal"))?;
        Ok(Records {
            root: state_dir.to_path_buf(),
        })
    }

    fn path(&self, staging: &Path) -> PathBuf {
        self.root
            .join("sessions")
            .join(format!("{}.json", key(staging)))
    }

    /// Where the journal of the session at `staging` lives.
    pub fn journal_dir(&self, staging: &Path) -> PathBuf {
        self.root.join("journal").join(key(staging))
    }

    pub fn save(&self, record: &SessionRecord) -> io::Result<()> {
        let path = self.path(&record.spec.staging);
        let tmp = path.with_extension("tmp");
        let body = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        if let Ok(dir) = fs::File::open(path.parent().unwrap_or(&self.root)) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    pub fn load(&self, staging: &Path) -> io::Result<Option<SessionRecord>> {
        match fs::read(self.path(staging)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn remove(&self, staging: &Path) {
        for path in [self.path(staging)] {
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(error = %e, path = %path.display(), "removing a session record failed");
                }
            }
        }
        let journal = self.journal_dir(staging);
        if let Err(e) = fs::remove_dir_all(&journal) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(error = %e, path = %journal.display(), "removing a session journal failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn record(staging: &str) -> SessionRecord {
        SessionRecord {
            volume_id: "v1".into(),
            names: VolumeNames::default(),
            spec: MountSpec::new(
                &crate::backend::Source::parse("file:///x").unwrap(),
                staging.into(),
                "/c".into(),
                &Default::default(),
                false,
                None,
                None,
            ),
            secret: Some(S3Secret {
                access_key_id: "AK".into(),
                secret_access_key: "very-secret".into(),
                session_token: None,
            }),
            started_unix: 1,
        }
    }

    #[test]
    fn records_are_private_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let records = Records::open(&state).unwrap();
        let rec = record("/k/a/globalmount");
        records.save(&rec).unwrap();
        let file = records.path(Path::new("/k/a/globalmount"));
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
        assert_eq!(
            records.load(Path::new("/k/a/globalmount")).unwrap(),
            Some(rec)
        );
        assert!(
            !format!("{:?}", records.load(Path::new("/k/a/globalmount")).unwrap())
                .contains("very-secret")
        );
        records.remove(Path::new("/k/a/globalmount"));
        assert_eq!(records.load(Path::new("/k/a/globalmount")).unwrap(), None);
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::open(dir.path()).unwrap();
        fs::write(records.path(Path::new("/s")), b"{not json").unwrap();
        assert!(records.load(Path::new("/s")).is_err());
    }
}
