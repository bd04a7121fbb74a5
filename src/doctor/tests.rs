use std::path::PathBuf;

use super::*;

fn request(source: Source, cache_dir: Option<PathBuf>, cache_size: u64) -> Request {
    Request {
        source,
        identity: None,
        groups: Vec::new(),
        cache_dir,
        cache_size,
        s3: S3Options::default(),
    }
}

fn run_quiet(req: &Request) -> Vec<Check> {
    run_blocking(req, &mut |_| {}).unwrap()
}

fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name} in {checks:?}"))
}

#[test]
fn lines_show_mark_name_cause_and_fix() {
    let c = Check {
        name: "export",
        status: Status::Fail,
        message: "x is not exported".into(),
        fix: Some("set share".into()),
    };
    assert_eq!(
        c.to_string(),
        "✗ export      x is not exported — fix: set share"
    );
    let s = Check {
        name: "identity",
        status: Status::Skipped,
        message: "export failed".into(),
        fix: None,
    };
    assert_eq!(s.to_string(), "– identity    skipped: export failed");
}

#[test]
fn a_failure_skips_the_rest_of_its_group_only() {
    let mut seen = Vec::new();
    let mut sink = |c: &Check| seen.push(c.name);
    let mut doc = Doctor::new(&mut sink);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let ok = doc.step("a", async { Ok((1, Found::from("fine".to_string()))) });
        assert_eq!(ok.await, Some(1));
        let bad = doc.step("b", async {
            Err::<((), Found), _>(Problem::new("broke", "mend"))
        });
        assert_eq!(bad.await, None);
        let skipped = doc.step("c", async { Ok(((), Found::from("never".to_string()))) });
        assert_eq!(skipped.await, None);
        doc.next_group();
        let again = doc.step("d", async { Ok(((), Found::from("runs".to_string()))) });
        assert_eq!(again.await, Some(()));
    });
    let checks = doc.finish();
    let statuses: Vec<Status> = checks.iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        [Status::Pass, Status::Fail, Status::Skipped, Status::Pass]
    );
    assert_eq!(checks[2].message, "b failed");
    assert!(!all_passed(&checks));
    assert_eq!(seen, ["a", "b", "c", "d"]);
}

#[test]
fn a_healthy_local_source_passes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir(&root).unwrap();
    let cache = dir.path().join("cache");
    let checks = run_quiet(&request(
        Source::Local { root: root.clone() },
        Some(cache.clone()),
        1 << 20,
    ));
    let names: Vec<&str> = checks.iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        ["source", "identity", "cache", "space", "fuse", "kernel"]
    );
    for name in ["source", "identity", "cache", "space"] {
        assert_eq!(find(&checks, name).status, Status::Pass, "{checks:?}");
    }
    assert!(
        cache.is_dir(),
        "the cache directory is created, as mount does"
    );
    // The probes leave nothing behind.
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
}

#[test]
fn a_missing_source_and_a_quota_beyond_the_disk_fail_with_fixes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("gone");
    let checks = run_quiet(&request(
        Source::Local { root: root.clone() },
        Some(dir.path().join("cache")),
        u64::MAX / 2,
    ));
    let source = find(&checks, "source");
    assert_eq!(source.status, Status::Fail);
    assert!(source.message.contains("does not exist"), "{source}");
    assert_eq!(find(&checks, "identity").status, Status::Skipped);
    // The cache group is independent of the source's failure.
    assert_eq!(find(&checks, "cache").status, Status::Pass);
    let space = find(&checks, "space");
    assert_eq!(space.status, Status::Fail);
    assert!(
        space.fix.as_deref().unwrap_or("").contains("--cache-size"),
        "{space}"
    );
}

#[test]
fn a_cache_dir_that_is_a_file_fails() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let problem = host_cache_dir(file.path()).unwrap_err();
    assert!(problem.cause.contains("is not a directory"), "{problem}");
}

fn host_cache_dir(p: &std::path::Path) -> Result<Found, Problem> {
    host::cache_dir(p)
}

#[test]
fn kernel_versions() {
    assert_eq!(host::parse_version("6.9.0-rc1"), Some((6, 9)));
    assert_eq!(host::parse_version("5.15.0-91-generic"), Some((5, 15)));
    assert_eq!(host::parse_version("junk"), None);
    assert!((6, 18) >= (6, 9) && (5, 15) < (6, 9));
}

#[test]
fn sizes_read_as_people_write_them() {
    assert_eq!(human_bytes(10 << 30), "10 GiB");
    assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
    assert_eq!(human_bytes(512), "512 B");
}
