//! `cachalot demo`: builds a sample backing dir in a temp dir, mounts it, shows cold vs
//! cached read timing and unmounts. The demo runs with TMPDIR pointing at our own temp
//! dir, so any mount it leaves behind is found under that dir (and only those are cleaned).

use crate::common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

fn mounts_under(dir: &std::path::Path) -> Vec<PathBuf> {
    mount_entries()
        .into_iter()
        .map(|e| e.mountpoint)
        .filter(|p| p.starts_with(dir))
        .collect()
}

#[test]
fn demo_runs_and_cleans_up() {
    require_root_and_fuse();
    let tmp = tempfile::Builder::new()
        .prefix("cachalot-demo-test-")
        .tempdir()
        .unwrap();
    let tmpdir = std::fs::canonicalize(tmp.path()).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("demo").env("TMPDIR", &tmpdir);
    let (st, out, err) = run_with_timeout(cmd, Duration::from_secs(120));
    let leaked = mounts_under(&tmpdir);
    for p in &leaked {
        force_unmount(p);
    }
    let st = st.unwrap_or_else(|| {
        panic!("`cachalot demo` did not finish within 120 s\nstdout: {out}\nstderr: {err}")
    });
    assert!(
        st.success(),
        "`cachalot demo` failed: {st}\nstdout: {out}\nstderr: {err}"
    );
    assert!(
        !out.trim().is_empty(),
        "`cachalot demo` printed nothing on stdout\nstderr: {err}"
    );
    assert!(
        leaked.is_empty(),
        "`cachalot demo` left mounts behind: {leaked:?}"
    );
    // it cleans up its temp dir too
    let left: Vec<_> = std::fs::read_dir(&tmpdir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        left.is_empty(),
        "`cachalot demo` left files in TMPDIR: {left:?}"
    );
}
