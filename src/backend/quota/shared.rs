//! Usage shared between the processes serving one volume (several nodes
//! writing an RWX volume, each with its own quota count): every process
//! writes a small report of its own changes into the volume, under a name
//! listings and lookups never show, and adds the others' to its usage.
//!
//! ```text
//! <volume>/.usage.cachalot-shared/<host tag><pid>   {"published":…,"writing":…,"at_ms":…}
//! ```
//!
//! `published` is the sum of the sizes this process's changes added
//! (negative: removed) since it started, never reset; `writing` the growth
//! of its files being written now. A process counts another's `published`
//! above what it was when its own last walk of the volume began (the walk
//! counted what came before), plus its `writing`. Reports are written
//! every [`SHARE_EVERY`] when they changed (else every [`HEARTBEAT`]; not
//! at all before the first change), and read as often. One older than
//! [`STALE_AFTER`] is of a process gone (its changes are in the files by
//! then) and is ignored, and removed once it is an hour old; one of a
//! process of this host that is gone (a mounter that handed its sessions
//! over) is removed at once.
//!
//! So the slack of several writers together is what the others write in
//! one [`SHARE_EVERY`] (their reports lag by that much), instead of what
//! they write between two walks (at least 30 s). A report written just
//! before another's walk began is counted by both until that process's
//! next walk: usage errs on the full side by as much.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::QuotaState;
use crate::backend::{Backend, BackendPath, ErrorKind, Identity, VersionToken, WriteStart};

/// A temp-like name: hidden from listings, lookups and quota walks on every
/// backend, and never taken for a dead writer's temp (it has no owner id).
pub const REPORTS_DIR: &str = ".usage.cachalot-shared";

pub const SHARE_EVERY: Duration = Duration::from_secs(5);
const HEARTBEAT: Duration = Duration::from_secs(60);
const STALE_AFTER: Duration = Duration::from_secs(300);
const REMOVE_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub published: i64,
    pub writing: u64,
    pub at_ms: u64,
    /// When the process first changed the volume: a walk that began later
    /// counted what it published before (0: taken as before any walk).
    #[serde(default)]
    pub first_change_ms: u64,
}

/// What this process knows of the others' reports.
#[derive(Debug, Default)]
pub struct Others {
    /// The latest report of each other process, by its name.
    latest: HashMap<String, Report>,
    /// Each one's `published` when the current walk result began: what
    /// the walk counted already.
    baseline: HashMap<String, i64>,
    /// When the walk in progress began, and the `published` values then
    /// (the baseline once its result is taken).
    next_baseline: Option<(u64, HashMap<String, i64>)>,
    /// When the walk whose result is used began; none before the first.
    walked_at_ms: Option<u64>,
}

impl Others {
    /// The others' usage on top of this process's walk.
    pub(super) fn usage(&self, now_ms: u64) -> i64 {
        self.latest
            .iter()
            .filter(|(_, r)| now_ms.saturating_sub(r.at_ms) < STALE_AFTER.as_millis() as u64)
            .map(|(name, r)| {
                let base = self.baseline.get(name).copied().unwrap_or(r.published);
                (r.published - base) + r.writing as i64
            })
            .sum()
    }

    /// Take in a round of reports. A process not seen before counts from
    /// zero if its first change came after the walk began (or there was no
    /// walk), else from now: its changes so far may be in the walk.
    fn update(&mut self, reports: HashMap<String, Report>) {
        let walked_at = self.walked_at_ms;
        for (name, r) in &reports {
            self.baseline
                .entry(name.clone())
                .or_insert_with(|| match walked_at {
                    Some(w) if r.first_change_ms < w => r.published,
                    _ => 0,
                });
        }
        self.baseline.retain(|name, _| reports.contains_key(name));
        self.latest = reports;
    }

    /// A walk begins at `at_ms`: it will count everything published so far.
    pub fn walk_started(&mut self, at_ms: u64) {
        let now: HashMap<String, i64> = self
            .latest
            .iter()
            .map(|(n, r)| (n.clone(), r.published))
            .collect();
        self.next_baseline = Some((at_ms, now));
    }

    /// The walk's result replaces the previous one. A process first seen
    /// during the walk that had changed the volume before it began counts
    /// from its latest report (the walk may have counted any of it).
    pub fn walk_taken(&mut self) {
        let Some((at_ms, next)) = self.next_baseline.take() else {
            return;
        };
        for (name, r) in &self.latest {
            if !next.contains_key(name) && r.first_change_ms < at_ms {
                self.baseline.insert(name.clone(), r.published);
            }
        }
        self.baseline.extend(next);
        self.walked_at_ms = Some(at_ms);
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Write this process's report and read the others', now and again, for as
/// long as the volume is mounted. `backend` is the one below the quota (a
/// report is not the volume's data).
pub async fn keep_sharing(
    backend: std::sync::Weak<dyn Backend>,
    state: std::sync::Weak<QuotaState>,
    id: Identity,
) {
    let me = crate::backend::owner::own_tag();
    let mut written: Option<(Report, SystemTime)> = None;
    let mut dir_made = false;
    let mut known = HashMap::new();
    // What fails now, so that a lasting failure is logged once.
    let mut failing = std::collections::HashSet::new();
    loop {
        let (Some(b), Some(s)) = (backend.upgrade(), state.upgrade()) else {
            return;
        };
        let mine = Report {
            published: s.published.load(Ordering::Relaxed),
            writing: s.writing.load(Ordering::Relaxed),
            at_ms: now_ms(),
            first_change_ms: s.first_change_ms.load(Ordering::Relaxed),
        };
        let due = match written {
            // Nothing to tell before the first change (a read-only mount
            // never writes a report).
            None => (mine.published, mine.writing) != (0, 0),
            Some((w, at)) => {
                (w.published, w.writing) != (mine.published, mine.writing)
                    || at.elapsed().unwrap_or(HEARTBEAT) >= HEARTBEAT
            }
        };
        if due {
            match write_report(b.as_ref(), id, &me, &mine, &mut dir_made).await {
                Ok(()) => {
                    written = Some((mine, SystemTime::now()));
                    failing.remove("write");
                }
                Err(e) => {
                    // Made again next time, should it be gone.
                    dir_made = false;
                    if failing.insert("write") {
                        tracing::warn!(error = %e, "could not share this node's usage of the volume; other nodes see it at their next walk (said once until it works again)")
                    }
                }
            }
        }
        match read_reports(b.as_ref(), id, &me, &mut known).await {
            Ok(reports) => {
                failing.remove("read");
                let mut others = s.others.lock();
                others.update(reports);
                s.others_usage
                    .store(others.usage(now_ms()), Ordering::Relaxed);
            }
            Err(e) => {
                if failing.insert("read") {
                    tracing::warn!(error = %e, "could not read the other nodes' usage of the volume (said once until it works again)")
                }
            }
        }
        drop((b, s));
        tokio::time::sleep(SHARE_EVERY).await;
    }
}

fn reports_dir() -> BackendPath {
    BackendPath::root()
        .join(REPORTS_DIR)
        .unwrap_or_else(|_| BackendPath::root())
}

async fn write_report(
    b: &dyn Backend,
    id: Identity,
    me: &str,
    report: &Report,
    dir_made: &mut bool,
) -> crate::backend::BackendResult<()> {
    let dir = reports_dir();
    if !*dir_made {
        match b.mkdir(id, &dir, 0o755).await {
            Ok(_) => {}
            Err(e) if e.kind == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        *dir_made = true;
    }
    let path = dir.join(me)?;
    let text = serde_json::to_vec(report).unwrap_or_default();
    let w = b.begin_write(id, &path, WriteStart::Empty, 0o644).await?;
    if let Err(e) = w.write_at(0, &text).await {
        w.abort(&path).await;
        return Err(e);
    }
    w.publish(&path).await.map(|_| ())
}

/// The others' reports. `known`: the reports read before, by the version
/// they had; one whose version did not change is not read again (every
/// process lists the reports every few seconds).
async fn read_reports(
    b: &dyn Backend,
    id: Identity,
    me: &str,
    known: &mut HashMap<String, (VersionToken, Report)>,
) -> crate::backend::BackendResult<HashMap<String, Report>> {
    let dir = reports_dir();
    let entries = match b.list(id, &dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind == ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e),
    };
    let now = now_ms();
    let host = crate::backend::owner::host_tag();
    let mut out = HashMap::new();
    known.retain(|name, _| entries.iter().any(|e| &e.name == name));
    for entry in entries.into_iter().filter(|e| e.name != me) {
        let path = dir.join(&entry.name)?;
        let report = match known.get(&entry.name) {
            Some((version, report)) if *version == entry.meta.version => *report,
            _ => {
                let Some(report) = read_report(b, id, &path, entry.meta.size).await else {
                    continue;
                };
                known.insert(entry.name.clone(), (entry.meta.version.clone(), report));
                report
            }
        };
        // A process of this host that is gone (a mounter that handed its
        // sessions over or crashed): its changes are in the files, and its
        // writes in progress are its successor's now.
        let gone_here = crate::backend::owner::is_dead(&entry.name, &host);
        if gone_here || now.saturating_sub(report.at_ms) > REMOVE_AFTER.as_millis() as u64 {
            let _ = b.unlink(id, &path).await;
            known.remove(&entry.name);
            continue;
        }
        out.insert(entry.name, report);
    }
    Ok(out)
}

/// One report; `None` for one that cannot be read or is not a report
/// (written by a newer version, damaged): skipped, not trusted.
async fn read_report(
    b: &dyn Backend,
    id: Identity,
    path: &BackendPath,
    size: u64,
) -> Option<Report> {
    let reader = b.open_read(id, path).await.ok()?;
    let bytes = reader.read_at(0, (size as usize).min(4096)).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(published: i64, writing: u64, at_ms: u64, first: u64) -> Report {
        Report {
            published,
            writing,
            at_ms,
            first_change_ms: first,
        }
    }

    #[test]
    fn others_count_from_the_walk_that_counted_what_came_before() {
        let now = now_ms();
        let mut o = Others::default();
        // Changed before the walk whose result is used: taken as walked.
        o.walk_started(now - 10_000);
        o.walk_taken();
        o.update(HashMap::from([(
            "b".into(),
            report(1000, 0, now, now - 20_000),
        )]));
        assert_eq!(o.usage(now), 0);
        o.update(HashMap::from([(
            "b".into(),
            report(1500, 200, now, now - 20_000),
        )]));
        assert_eq!(o.usage(now), 700);
        // First changed after the walk began: all of it counts.
        o.update(HashMap::from([
            ("b".into(), report(1500, 200, now, now - 20_000)),
            ("c".into(), report(400, 0, now, now - 5_000)),
        ]));
        assert_eq!(o.usage(now), 1100);
        // A walk begins: until its result is taken, the old baseline holds.
        o.walk_started(now);
        o.update(HashMap::from([
            ("b".into(), report(1800, 0, now, now - 20_000)),
            ("c".into(), report(400, 0, now, now - 5_000)),
        ]));
        assert_eq!(o.usage(now), 1200);
        o.walk_taken();
        // What b published since the walk began (which the walk may have
        // counted too: usage errs on the full side).
        assert_eq!(o.usage(now), 300);
        // Removals count down; a stale report counts nothing.
        o.update(HashMap::from([(
            "b".into(),
            report(1000, 0, now, now - 20_000),
        )]));
        assert_eq!(o.usage(now), -500);
        let old = now - STALE_AFTER.as_millis() as u64 - 1;
        o.update(HashMap::from([("b".into(), report(9000, 9000, old, 1))]));
        assert_eq!(o.usage(now), 0);
    }

    #[test]
    fn the_reports_dir_is_hidden_like_our_temps_but_has_no_owner() {
        assert!(crate::backend::is_temp_name(REPORTS_DIR));
        assert_eq!(crate::backend::path::temp_owner(REPORTS_DIR), None);
    }
}
