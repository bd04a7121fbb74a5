//! A session's journal on disk (the mounter's `--state-dir`): a base state
//! and the events logged since (`fs::journal`), so a mounter started after
//! its predecessor died rebuilds what the kernel depends on.
//!
//! ```text
//! <dir>/session.json   the FUSE ABI the kernel negotiated at INIT
//! <dir>/base.json      the state when the log was last compacted
//! <dir>/log            one JSON event per line, appended before the reply
//! ```
//! Each event is one write(2) to the page cache (no fsync): it survives the
//! process, which is what it is for; a node crash ends the sessions anyway.
//! Past `COMPACT_AT` bytes the log is folded into a new base.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::fs::journal::{replay, Event, JournalSink};
use crate::fs::snapshot::FsSnapshot;

const COMPACT_AT: u64 = 16 << 20;

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct SessionFile {
    abi: (u32, u32),
}

pub struct FileJournal {
    dir: PathBuf,
    log: Mutex<Log>,
}

struct Log {
    file: File,
    bytes: u64,
    /// A write failed: logged once, the session goes on without a journal
    /// (a crash then loses it, as without a mounter).
    broken: bool,
}

fn write_atomic(path: &Path, body: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

fn open_log(dir: &Path, truncate: bool) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join("log"))
        .and_then(|f| {
            if truncate {
                f.set_len(0)?;
            }
            Ok(f)
        })
}

impl FileJournal {
    /// Start the journal of a session at `dir`: `base` is the state it
    /// starts from (None: a fresh mount), `abi` what INIT negotiated.
    pub fn create(
        dir: &Path,
        base: Option<&FsSnapshot>,
        abi: (u32, u32),
    ) -> io::Result<FileJournal> {
        fs::DirBuilder::new().recursive(true).create(dir)?;
        write_atomic(
            &dir.join("session.json"),
            &serde_json::to_vec(&SessionFile { abi }).map_err(io::Error::other)?,
        )?;
        match base {
            Some(b) => write_atomic(
                &dir.join("base.json"),
                &serde_json::to_vec(b).map_err(io::Error::other)?,
            )?,
            None => match fs::remove_file(dir.join("base.json")) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
        }
        let file = open_log(dir, true)?;
        Ok(FileJournal {
            dir: dir.to_path_buf(),
            log: Mutex::new(Log {
                file,
                bytes: 0,
                broken: false,
            }),
        })
    }

    /// The state a crashed session left and the ABI of its connection. A
    /// torn last line (the process died while writing it) is skipped.
    pub fn load(dir: &Path) -> io::Result<(FsSnapshot, (u32, u32))> {
        let session: SessionFile = serde_json::from_slice(&fs::read(dir.join("session.json"))?)
            .map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("session.json: {e}"))
            })?;
        Ok((fold(dir)?, session.abi))
    }

    /// Base + log, replayed.
    fn compact(&self, log: &mut Log) -> io::Result<()> {
        let state = fold(&self.dir)?;
        write_atomic(
            &self.dir.join("base.json"),
            &serde_json::to_vec(&state).map_err(io::Error::other)?,
        )?;
        log.file.set_len(0)?;
        log.bytes = 0;
        Ok(())
    }
}

fn fold(dir: &Path) -> io::Result<FsSnapshot> {
    let base: Option<FsSnapshot> =
        match fs::read(dir.join("base.json")) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("base.json: {e}"))
            })?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
    let mut events = Vec::new();
    match File::open(dir.join("log")) {
        Ok(f) => {
            for line in io::BufReader::new(f).lines() {
                let line = line?;
                match serde_json::from_str::<Event>(&line) {
                    Ok(e) => events.push(e),
                    Err(e) => {
                        tracing::warn!(error = %e, dir = %dir.display(), "skipping a damaged journal line")
                    }
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(replay(base, events))
}

impl JournalSink for FileJournal {
    fn record(&self, event: &Event) {
        let mut log = self.log.lock();
        if log.broken {
            return;
        }
        let mut line = match serde_json::to_vec(event) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a journal event");
                return;
            }
        };
        line.push(b'\n');
        let written = log.file.write_all(&line);
        if let Err(e) = written {
            log.broken = true;
            tracing::error!(error = %e, dir = %self.dir.display(), "writing the session journal failed: this session will not survive a crash of the mounter");
            return;
        }
        log.bytes += line.len() as u64;
        if log.bytes > COMPACT_AT {
            if let Err(e) = self.compact(&mut log) {
                tracing::warn!(error = %e, dir = %self.dir.display(), "compacting the session journal failed; it keeps growing");
                log.bytes = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FileKind;

    #[test]
    fn events_survive_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let j = FileJournal::create(dir.path(), None, (7, 41)).unwrap();
        j.record(&Event::Attach {
            ino: 2,
            parent: 1,
            name: "a".into(),
            kind: FileKind::File,
            link: false,
        });
        drop(j);
        let mut log = OpenOptions::new()
            .append(true)
            .open(dir.path().join("log"))
            .unwrap();
        log.write_all(b"{\"e\":\"attach\",\"ino\":3,\"par").unwrap();
        let (state, abi) = FileJournal::load(dir.path()).unwrap();
        assert_eq!(abi, (7, 41));
        assert!(state.inodes.iter().any(|i| i.ino == 2 && i.name == "a"));
        assert!(state.inodes.iter().all(|i| i.ino != 3));
    }

    #[test]
    fn compaction_keeps_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let j = FileJournal::create(dir.path(), None, (7, 41)).unwrap();
        for ino in 2..50 {
            j.record(&Event::Attach {
                ino,
                parent: 1,
                name: format!("f{ino}"),
                kind: FileKind::File,
                link: false,
            });
        }
        j.compact(&mut j.log.lock()).unwrap();
        j.record(&Event::Drop { ino: 2 });
        let (state, _) = FileJournal::load(dir.path()).unwrap();
        assert_eq!(state.inodes.len(), 48, "root + f3..f49");
        assert!(fs::metadata(dir.path().join("log")).unwrap().len() < 100);
    }

    #[test]
    fn a_missing_or_damaged_journal_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(FileJournal::load(dir.path()).is_err());
        fs::write(dir.path().join("session.json"), b"{\"abi\":[7,41]}").unwrap();
        fs::write(dir.path().join("base.json"), b"garbage").unwrap();
        assert!(FileJournal::load(dir.path()).is_err());
    }
}
