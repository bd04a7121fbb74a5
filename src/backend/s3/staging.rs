//! Local staging: every file being written lives in a local file until it is
//! uploaded, and every multipart upload in flight is recorded in a small
//! journal file next to it. Names carry the writer's owner tag (host + pid),
//! so the next mount can tell a crashed writer's leftovers from a live one's
//! and abort its dangling upload.
//!
//! Layout: `<staging_dir>/<hash of the volume>/<owner><seq>.data` and, per
//! multipart upload of that file, `.../<owner><seq>-<upload tag>.upload`
//! (two lines: key, upload id).

use crate::backend::owner;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::path::{temp_name_for, TEMP_OWNER_LEN};

pub struct Staging {
    dir: PathBuf,
    owner: String,
    host: String,
    seq: AtomicU64,
}

/// A multipart upload recorded by a writer that is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadUpload {
    pub journal: PathBuf,
    pub key: String,
    pub upload_id: String,
}

/// Leftovers of dead writers.
#[derive(Debug, Default)]
pub struct Leftovers {
    pub uploads: Vec<DeadUpload>,
    pub data_files: Vec<PathBuf>,
}

impl Staging {
    pub fn new(root: &Path, volume: &str) -> io::Result<Staging> {
        let hash = blake3::hash(volume.as_bytes()).to_hex();
        let dir = root.join(&hash.as_str()[..16]);
        fs::create_dir_all(&dir)?;
        let host = owner::host_tag();
        Ok(Staging {
            owner: format!("{host}{:08x}", std::process::id()),
            host,
            dir,
            seq: AtomicU64::new(crate::backend::first_seq()),
        })
    }

    #[cfg(test)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn next_id(&self) -> String {
        format!(
            "{}{:x}",
            self.owner,
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A fresh, private staging file; returns it, its path and its id.
    pub fn create(&self) -> io::Result<(File, PathBuf, String)> {
        let id = self.next_id();
        let path = self.dir.join(format!("{id}.data"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok((file, path, id))
    }

    /// A second descriptor of a staging file, opened with O_DIRECT, for
    /// large aligned writes (see `tail`); `None` where the filesystem
    /// refuses direct I/O (then every write goes through the page cache).
    pub fn open_direct(path: &Path) -> Option<File> {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(file) => Some(file),
            Err(e) => {
                tracing::debug!(error = %e, path = %path.display(),
                    "staging directory without O_DIRECT; writes go through the page cache");
                None
            }
        }
    }

    /// Take over the staging file `id` of another process (live takeover,
    /// crash recovery): renamed to an id of ours, so the cleanup of dead
    /// writers' leftovers never removes it. `id` must be a bare staging id.
    pub fn adopt(&self, id: &str) -> io::Result<(File, PathBuf, String)> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{id:?} is not a staging id"),
            ));
        }
        // In a container every mounter is pid 1: an id of ours may be the
        // very id (then it stays) or another live staging file's (then the
        // next one is tried; rename would replace it).
        let mut new_id = self.next_id();
        for _ in 0..64 {
            if new_id == id || !self.dir.join(format!("{new_id}.data")).exists() {
                break;
            }
            new_id = self.next_id();
        }
        let path = self.dir.join(format!("{new_id}.data"));
        if new_id != id {
            fs::rename(self.dir.join(format!("{id}.data")), &path)?;
        }
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        Ok((file, path, new_id))
    }

    /// Hidden object name for probes (`.preflight.cachalot-<owner><seq>`).
    pub fn probe_name(&self) -> String {
        temp_name_for(
            "preflight",
            &self.owner,
            self.seq.fetch_add(1, Ordering::Relaxed),
        )
    }

    /// One record per upload, not per staging file: a write whose streamed
    /// upload could not be aborted (the server was down) uploads again under
    /// the same staging id, and the first upload's record must survive that
    /// for the next mount to abort it.
    fn journal_path(&self, id: &str, upload_id: &str) -> PathBuf {
        let tag = blake3::hash(upload_id.as_bytes()).to_hex();
        self.dir
            .join(format!("{id}-{}.upload", &tag.as_str()[..16]))
    }

    /// Record an upload before its first part is sent (write + rename, so a
    /// crash never leaves a half-written record).
    pub fn record_upload(&self, id: &str, key: &str, upload_id: &str) -> io::Result<()> {
        let path = self.journal_path(id, upload_id);
        let tmp = path.with_extension("upload.tmp");
        fs::write(&tmp, format!("{key}\n{upload_id}\n"))?;
        fs::rename(&tmp, path)
    }

    /// The upload is completed or aborted: forget it.
    pub fn clear_upload(&self, id: &str, upload_id: &str) {
        let _ = fs::remove_file(self.journal_path(id, upload_id));
    }

    /// Journal records and staging files whose writer process is gone.
    pub fn leftovers(&self) -> Leftovers {
        let mut out = Leftovers::default();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((id, ext)) = name.split_once('.') else {
                continue;
            };
            if id.len() <= TEMP_OWNER_LEN || !self.is_dead(&id[..TEMP_OWNER_LEN]) {
                continue;
            }
            match ext {
                "upload" => {
                    let text = fs::read_to_string(entry.path()).unwrap_or_default();
                    let mut lines = text.lines();
                    match (lines.next(), lines.next()) {
                        (Some(key), Some(upload_id)) if !upload_id.is_empty() => {
                            out.uploads.push(DeadUpload {
                                journal: entry.path(),
                                key: key.to_string(),
                                upload_id: upload_id.to_string(),
                            })
                        }
                        _ => out.data_files.push(entry.path()),
                    }
                }
                _ => out.data_files.push(entry.path()),
            }
        }
        out
    }

    /// The staging dir is local to this host, but may sit on a shared
    /// volume: only owners from this host with a dead pid are dead.
    fn is_dead(&self, writer: &str) -> bool {
        owner::is_dead(writer, &self.host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_of_dead_writers_only() {
        let root = tempfile::tempdir().unwrap();
        let s = Staging::new(root.path(), "s3://b/p").unwrap();
        let (_f, live_path, live_id) = s.create().unwrap();
        s.record_upload(&live_id, "p/live", "u-live").unwrap();
        // A writer on this host whose pid cannot exist.
        let dead = format!("{}{:08x}7", s.host, u32::MAX - 1);
        fs::write(s.dir().join(format!("{dead}.data")), b"x").unwrap();
        // Its first upload could not be aborted, its second was running.
        s.record_upload(&dead, "p/big", "u-1").unwrap();
        s.record_upload(&dead, "p/big", "u-2").unwrap();
        // A record in the format of earlier versions.
        let old = format!("{}{:08x}9", s.host, u32::MAX - 1);
        fs::write(s.dir().join(format!("{old}.upload")), "p/old\nu-0\n").unwrap();
        // Another host's writer: not ours to judge.
        fs::write(s.dir().join("ffffffff000000011.data"), b"x").unwrap();
        let left = s.leftovers();
        let mut uploads: Vec<_> = left
            .uploads
            .iter()
            .map(|u| (u.key.as_str(), u.upload_id.as_str()))
            .collect();
        uploads.sort();
        assert_eq!(
            uploads,
            [("p/big", "u-1"), ("p/big", "u-2"), ("p/old", "u-0")],
            "{left:?}"
        );
        assert_eq!(left.data_files.len(), 1, "{left:?}");
        assert!(live_path.exists());
        s.clear_upload(&live_id, "u-live");
        assert!(!s.journal_path(&live_id, "u-live").exists());
    }
}
