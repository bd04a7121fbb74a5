//! Removal of temp files left by crashed writers, with the same owner-tag
//! rule as the local backend: a temp whose writer process on this host is
//! gone is stale at once; anything older than a day is stale regardless.
//! The walk is bounded in time so a huge export cannot delay a mount.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nfs3_types::nfs3::{ftype3, nfs_fh3};

use super::list::read_dir;
use super::volume::Volume;
use super::write::remove_name;
use crate::backend::owner;
use crate::backend::path::temp_owner;
use crate::backend::{is_temp_name, BackendPath, BackendResult, Identity};

const WALK_BUDGET: Duration = Duration::from_secs(10);

fn is_stale(vol: &Volume, name: &str, mtime_secs: u32) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let age = Duration::from_secs(now.saturating_sub(u64::from(mtime_secs)));
    owner::is_stale(temp_owner(name), &vol.host_tag, age)
}

pub async fn run(vol: &Volume, id: Identity) -> BackendResult<usize> {
    let started = Instant::now();
    let mut removed = 0;
    let mut stack: Vec<(BackendPath, nfs_fh3)> = vec![(BackendPath::root(), vol.root_fh.clone())];
    while let Some((path, fh)) = stack.pop() {
        if started.elapsed() > WALK_BUDGET {
            tracing::info!("stale temp cleanup stopped after {WALK_BUDGET:?}; the rest waits for the next mount");
            break;
        }
        let ctx = vol.ctx("clean up stale temp files", &path, id);
        let Ok(entries) = read_dir(vol, &ctx, &fh).await else {
            continue;
        };
        for entry in entries {
            let Some(a) = entry.attrs else { continue };
            if a.type_ == ftype3::NF3DIR {
                if let (Some(child_fh), Ok(child)) = (entry.fh, path.join(&entry.name)) {
                    stack.push((child, child_fh));
                }
            } else if a.type_ == ftype3::NF3REG
                && is_temp_name(&entry.name)
                && is_stale(vol, &entry.name, a.mtime.seconds)
                && remove_name(vol, &ctx, &fh, &entry.name).await.is_ok()
            {
                tracing::info!(dir = %path, name = %entry.name, "removed temp file left by a crashed writer");
                removed += 1;
            }
        }
    }
    Ok(removed)
}
