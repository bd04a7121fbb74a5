//! Files replaced by renames through the mount while other threads list,
//! open, read and stat the same names, all through one `file://` mount. On
//! a local filesystem none of these ever fails, and nothing is left behind.
//! Each race below failed on an earlier version of the daemon:
//! - a listing taken before a rename, handed to the kernel after it, gave
//!   the kernel a dentry of the renamed file under its old name: the next
//!   `open(tmp, O_CREAT|O_TRUNC)` truncated the file it was renamed to and
//!   the `rename(tmp, name)` after it failed with ENOENT;
//! - a lookup, getattr or listing that met a rename halfway (objects moved,
//!   table not yet) took the file for one replaced behind the mount, and
//!   its readers got ESTALE;
//! - a publish of a truncated file racing a rename over it landed under the
//!   name after the object was linked to its hidden name;
//! - an open whose path walk found the file just before a rename over it
//!   got ESTALE twice and failed.

use crate::common::*;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NAMES: u64 = 6;
const RUN: Duration = Duration::from_secs(4);

type Failures = Arc<Mutex<BTreeMap<String, u64>>>;

fn note(failures: &Failures, what: &str, e: &std::io::Error) {
    *failures
        .lock()
        .unwrap()
        .entry(format!("{what}: {e}"))
        .or_default() += 1;
}

/// A cheap pseudo-random sequence per thread (xorshift).
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn renames_over_names_that_others_list_read_truncate_and_stat_never_fail() {
    let m = Mount::new();
    for i in 0..NAMES {
        fs::write(m.b(&format!("f{i}")), b"first version").unwrap();
    }
    let failures: Failures = Arc::default();
    let renames = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let deadline = Instant::now() + RUN;
    let mut threads = Vec::new();
    for k in 1..=3u64 {
        let (dir, failures, renames) = (m.mnt().to_path_buf(), failures.clone(), renames.clone());
        threads.push(std::thread::spawn(move || {
            let mut seed = 0x9e37_79b9_7f4a_7c15 ^ k;
            while Instant::now() < deadline {
                let i = next(&mut seed) % NAMES;
                let tmp = dir.join(format!("f{i}.tmp{k}"));
                let len = [100, 70_000, 1 << 20][(next(&mut seed) % 3) as usize];
                if let Err(e) = fs::write(&tmp, vec![b'w'; len]) {
                    note(&failures, "write tmp", &e);
                    continue;
                }
                match fs::rename(&tmp, dir.join(format!("f{i}"))) {
                    Ok(()) => drop(renames.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
                    Err(e) => note(&failures, "rename over", &e),
                }
            }
        }));
    }
    for k in 1..=3u64 {
        let (dir, failures) = (m.mnt().to_path_buf(), failures.clone());
        threads.push(std::thread::spawn(move || {
            let mut seed = 0x2545_f491_4f6c_dd1d ^ k;
            let mut buf = vec![0u8; 1 << 16];
            while Instant::now() < deadline {
                let name = dir.join(format!("f{}", next(&mut seed) % NAMES));
                match fs::File::open(&name) {
                    Ok(mut f) => loop {
                        match f.read(&mut buf) {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e) => {
                                note(&failures, "read", &e);
                                break;
                            }
                        }
                    },
                    Err(e) => note(&failures, "open", &e),
                }
                if let Err(e) = fs::metadata(&name) {
                    note(&failures, "stat", &e);
                }
                if let Err(e) = fs::read_dir(&dir).and_then(|d| d.collect::<Result<Vec<_>, _>>()) {
                    note(&failures, "list", &e);
                }
            }
        }));
    }
    // One thread rewrites the files in place: truncate and write through
    // an open descriptor, published at its close.
    {
        let (dir, failures) = (m.mnt().to_path_buf(), failures.clone());
        threads.push(std::thread::spawn(move || {
            let mut seed = 0x1234_5678_9abc_def1;
            while Instant::now() < deadline {
                let name = dir.join(format!("f{}", next(&mut seed) % NAMES));
                let rewrite = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&name)
                    .and_then(|mut f| {
                        f.set_len(next(&mut seed) % (1 << 20))?;
                        f.write_all(&[b't'; 5000])
                    });
                if let Err(e) = rewrite {
                    note(&failures, "truncate and write", &e);
                }
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "failed operations: {failures:#?}");
    let renames = renames.load(std::sync::atomic::Ordering::Relaxed);
    assert!(renames > 50, "only {renames} renames in {RUN:?}");
    // Every replaced file's object goes once nothing holds it: after the
    // last close, or when the kernel forgets the inode.
    let hidden = || {
        fs::read_dir(m.backing())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".cachalot-"))
            .collect::<Vec<_>>()
    };
    let until = Instant::now() + Duration::from_secs(5);
    while !hidden().is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        hidden(),
        Vec::<String>::new(),
        "objects left under hidden names"
    );
}
