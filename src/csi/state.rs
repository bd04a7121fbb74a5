//! The plugin's own records in `--state-dir`, as small JSON files written
//! atomically (temp + fsync + rename), so a crash never leaves a torn one.
//!
//! ```text
//! <state-dir>/staged/<key>.json      one per volume staged on this node
//! <state-dir>/controller/<key>.json  one per CreateVolume name (idempotency,
//!                                    ListVolumes)
//! <state-dir>/logs/<key>.log         stderr of the volume's mount child
//! ```
//! `<key>` is a hash of the volume ID (or name): IDs contain `/` and `#`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::supervisor::MountSpec;

/// What NodeStage did for a volume; enough to re-establish it after a
/// restart (secrets are not stored: see docs/csi.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StagedRecord {
    pub volume_id: String,
    pub staging_path: PathBuf,
    pub spec: MountSpec,
    /// Mount child of the staging mount (maybe of a previous plugin process).
    pub pid: u32,
    /// An inline (ephemeral) volume: staged by NodePublish at a private
    /// path, unstaged when its last target is unpublished.
    #[serde(default)]
    pub ephemeral: bool,
    /// Published targets and whether each is read-only.
    #[serde(default)]
    pub targets: BTreeMap<PathBuf, bool>,
    /// `namespace/name` of the service account whose token this session
    /// signs with (`authenticationSource: pod`: one session per volume and
    /// service account); none for the volume's own session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

impl StagedRecord {
    /// What the record is saved, loaded and locked under.
    pub fn key(&self) -> String {
        stage_key(&self.volume_id, self.service_account.as_deref())
    }
}

/// The record key of a volume's session (the volume ID), or of its session
/// for one service account. A newline joins them: no volume ID of ours has
/// one (controls are escaped) and no Kubernetes name can.
pub fn stage_key(volume_id: &str, service_account: Option<&str>) -> String {
    match service_account {
        None => volume_id.to_string(),
        Some(sa) => format!("{volume_id}\n{sa}"),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ControllerRecord {
    pub name: String,
    pub volume_id: String,
    pub capacity_bytes: i64,
    /// Hash of the request's parameters: same name + other parameters is
    /// an incompatible request (ALREADY_EXISTS).
    pub params_digest: String,
}

/// A snapshot this controller took (ListSnapshots answers from these).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub snapshot_id: String,
    pub source_volume_id: String,
    pub size_bytes: i64,
    pub creation_unix: i64,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

pub fn key(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex()[..32].to_string()
}

impl StateDir {
    pub fn open(root: &Path) -> io::Result<StateDir> {
        for sub in ["staged", "controller", "logs", "snapshots"] {
            fs::create_dir_all(root.join(sub))?;
        }
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The log of a session, by its record key (see `stage_key`).
    pub fn log_path(&self, stage_key: &str) -> PathBuf {
        self.root
            .join("logs")
            .join(format!("{}.log", key(stage_key)))
    }

    fn staged_path(&self, stage_key: &str) -> PathBuf {
        self.root
            .join("staged")
            .join(format!("{}.json", key(stage_key)))
    }

    fn controller_path(&self, name: &str) -> PathBuf {
        self.root
            .join("controller")
            .join(format!("{}.json", key(name)))
    }

    pub fn save_staged(&self, rec: &StagedRecord) -> io::Result<()> {
        write_json(&self.staged_path(&rec.key()), rec)
    }

    /// The record under `stage_key`: a volume ID, or see `stage_key`.
    pub fn load_staged(&self, stage_key: &str) -> io::Result<Option<StagedRecord>> {
        read_json(&self.staged_path(stage_key))
    }

    pub fn remove_staged(&self, stage_key: &str) -> io::Result<()> {
        remove(&self.staged_path(stage_key))
    }

    /// The volume's sessions for service accounts (`authenticationSource:
    /// pod`); unreadable records are skipped (`all_staged` reports them).
    pub fn pod_sessions(&self, volume_id: &str) -> Vec<StagedRecord> {
        self.all_staged()
            .into_iter()
            .flatten()
            .filter(|r| r.volume_id == volume_id && r.service_account.is_some())
            .collect()
    }

    /// Every staged record; unreadable files are reported, not fatal.
    pub fn all_staged(&self) -> Vec<Result<StagedRecord, String>> {
        list_json(&self.root.join("staged"))
    }

    pub fn save_snapshot(&self, rec: &SnapshotRecord) -> io::Result<()> {
        write_json(&self.snapshot_path(&rec.snapshot_id), rec)
    }

    pub fn remove_snapshot(&self, snapshot_id: &str) -> io::Result<()> {
        remove(&self.snapshot_path(snapshot_id))
    }

    /// Every snapshot record, ordered by ID; unreadable files are skipped.
    pub fn all_snapshots(&self) -> Vec<SnapshotRecord> {
        readable_sorted(&self.root.join("snapshots"), |r: &SnapshotRecord| {
            r.snapshot_id.clone()
        })
    }

    fn snapshot_path(&self, snapshot_id: &str) -> PathBuf {
        self.root
            .join("snapshots")
            .join(format!("{}.json", key(snapshot_id)))
    }

    pub fn save_controller(&self, rec: &ControllerRecord) -> io::Result<()> {
        write_json(&self.controller_path(&rec.name), rec)
    }

    pub fn load_controller(&self, name: &str) -> io::Result<Option<ControllerRecord>> {
        read_json(&self.controller_path(name))
    }

    /// Every volume CreateVolume made here, once per volume ID, ordered by
    /// it; unreadable files are skipped.
    pub fn all_controller(&self) -> Vec<ControllerRecord> {
        let mut all = readable_sorted(&self.root.join("controller"), |r: &ControllerRecord| {
            r.volume_id.clone()
        });
        all.dedup_by(|a, b| a.volume_id == b.volume_id);
        all
    }

    /// Forget every CreateVolume name that produced `volume_id`.
    pub fn remove_controller_by_id(&self, volume_id: &str) -> io::Result<()> {
        let dir = self.root.join("controller");
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if let Ok(Some(rec)) = read_json::<ControllerRecord>(&path) {
                if rec.volume_id == volume_id {
                    remove(&path)?;
                }
            }
        }
        Ok(())
    }

    /// Can we create, write and remove a file here? (Probe)
    pub fn check_writable(dir: &Path) -> io::Result<()> {
        let probe = dir.join(format!(".cachalot-probe-{}", std::process::id()));
        fs::write(&probe, b"ok")?;
        fs::remove_file(&probe)
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let data = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(data) => serde_json::from_slice(&data).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn list_json<T: for<'de> Deserialize<'de>>(dir: &Path) -> Vec<Result<T, String>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| match read_json(&p) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(format!("{}: vanished", p.display())),
            Err(e) => Err(e.to_string()),
        })
        .collect()
}

/// The readable records in `dir`, ordered by `key`.
fn readable_sorted<T: for<'de> Deserialize<'de>>(dir: &Path, key: impl Fn(&T) -> String) -> Vec<T> {
    let mut all: Vec<T> = list_json(dir).into_iter().flatten().collect();
    all.sort_by_cached_key(|r| key(r));
    all
}

fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
