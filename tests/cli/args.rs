//! The `cachalot mount` command line: argument errors (exit code 2, one clear message),
//! help, foreground signal handling, background mode, the mount's fsname/type.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;

use common::*;

/// Temp dirs for a CLI invocation that is expected to fail before mounting.
struct Dirs {
    _tmp: tempfile::TempDir,
    backing: PathBuf,
    cache: PathBuf,
    mnt: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::Builder::new()
        .prefix("cachalot-cli-")
        .tempdir()
        .unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let (backing, cache, mnt) = (root.join("backing"), root.join("cache"), root.join("mnt"));
    for d in [&backing, &cache, &mnt] {
        fs::create_dir(d).unwrap();
    }
    Dirs {
        _tmp: tmp,
        backing,
        cache,
        mnt,
    }
}

/// Run `cachalot args...`; if it unexpectedly mounts, clean up. Returns (status, stdout, stderr).
fn run_expect_exit(args: &[&str], mnt: Option<&Path>) -> (ExitStatus, String, String) {
    let (st, out, err) = run_cli(args, Duration::from_secs(15));
    if let Some(mnt) = mnt {
        if is_mounted(mnt) {
            force_unmount(mnt);
            panic!(
                "cachalot {args:?} mounted {} although it should have failed",
                mnt.display()
            );
        }
    }
    let st =
        st.unwrap_or_else(|| panic!("cachalot {args:?} did not exit within 15 s\nstderr: {err}"));
    (st, out, err)
}

#[track_caller]
fn assert_usage_error(args: &[&str], mnt: Option<&Path>, must_mention: &str) {
    let (st, out, err) = run_expect_exit(args, mnt);
    assert_eq!(
        st.code(),
        Some(2),
        "cachalot {args:?}: expected exit code 2, got {st}\nstdout: {out}\nstderr: {err}"
    );
    let err_trim = err.trim();
    assert!(!err_trim.is_empty(), "cachalot {args:?}: empty stderr");
    assert!(
        err.contains(must_mention),
        "cachalot {args:?}: stderr should mention {must_mention:?}, got:\n{err}"
    );
    // no panic / backtrace for a user error
    assert!(
        !err.contains("panicked"),
        "cachalot {args:?} panicked:\n{err}"
    );
}

fn base_args(d: &Dirs) -> Vec<String> {
    vec![
        "mount".into(),
        format!("file://{}", d.backing.display()),
        d.mnt.display().to_string(),
        "--cache-dir".into(),
        d.cache.display().to_string(),
        "--foreground".into(),
    ]
}

fn with(base: &[String], extra: &[&str]) -> Vec<String> {
    let mut v = base.to_vec();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

#[test]
fn bad_cache_size_exits_2() {
    let d = dirs();
    let a = with(&base_args(&d), &["--cache-size", "12XB"]);
    assert_usage_error(&strs(&a), Some(&d.mnt), "12XB");
}

#[test]
fn bad_page_size_exits_2() {
    let d = dirs();
    let a = with(&base_args(&d), &["--page-size", "lots"]);
    assert_usage_error(&strs(&a), Some(&d.mnt), "lots");
}

#[test]
fn bad_metadata_ttl_exits_2() {
    let d = dirs();
    let a = with(&base_args(&d), &["--metadata-ttl", "5parsecs"]);
    assert_usage_error(&strs(&a), Some(&d.mnt), "5parsecs");
}

#[test]
fn unknown_flag_exits_2() {
    let d = dirs();
    let a = with(&base_args(&d), &["--frobnicate"]);
    assert_usage_error(&strs(&a), Some(&d.mnt), "--frobnicate");
}

#[test]
fn relative_source_exits_2() {
    let d = dirs();
    let mnt = d.mnt.display().to_string();
    let cache = d.cache.display().to_string();
    assert_usage_error(
        &[
            "mount",
            "relative/backing",
            &mnt,
            "--cache-dir",
            &cache,
            "--foreground",
        ],
        Some(&d.mnt),
        "relative/backing",
    );
}

#[test]
fn missing_backing_dir_exits_2() {
    let d = dirs();
    let missing = d.backing.join("does-not-exist");
    let src = format!("file://{}", missing.display());
    let mnt = d.mnt.display().to_string();
    let cache = d.cache.display().to_string();
    assert_usage_error(
        &["mount", &src, &mnt, "--cache-dir", &cache, "--foreground"],
        Some(&d.mnt),
        "does-not-exist",
    );
}

#[test]
fn missing_mountpoint_argument_exits_2() {
    let d = dirs();
    let src = format!("file://{}", d.backing.display());
    let cache = d.cache.display().to_string();
    let (st, _, err) = run_expect_exit(
        &["mount", &src, "--cache-dir", &cache, "--foreground"],
        None,
    );
    assert_eq!(st.code(), Some(2), "stderr: {err}");
    assert!(!err.trim().is_empty());
    assert!(
        err.to_lowercase().contains("mountpoint"),
        "stderr should name the missing argument: {err}"
    );
}

#[test]
fn mount_help_lists_options() {
    let (st, out, err) = run_expect_exit(&["mount", "--help"], None);
    assert_eq!(st.code(), Some(0), "stderr: {err}");
    for opt in [
        "--cache-dir",
        "--cache-size",
        "--page-size",
        "--metadata-ttl",
        "--read-only",
        "--allow-other",
        "--foreground",
        "--uid",
        "--gid",
    ] {
        assert!(
            out.contains(opt),
            "`cachalot mount --help` does not mention {opt}:\n{out}"
        );
    }
}

#[test]
fn mount_reports_fsname_and_type() {
    let m = Mount::new();
    let e = mount_entry(m.mnt()).expect("mounted");
    assert_eq!(e.fstype, "fuse.cachalot");
    assert_eq!(
        e.source,
        format!("cachalot:{}", m.source_url()),
        "fsname in mountinfo"
    );
}

#[test]
fn valid_sizes_and_durations_are_accepted() {
    let m = Mount::with_args(&[
        "--cache-size",
        "512MiB",
        "--page-size",
        "512KiB",
        "--metadata-ttl",
        "500ms",
    ]);
    fs::write(m.m("f"), b"ok").unwrap();
    assert_eq!(fs::read(m.b("f")).unwrap(), b"ok");
    drop(m);
    let m = Mount::with_args(&[
        "--cache-size",
        "1GB",
        "--page-size",
        "4096",
        "--metadata-ttl",
        "0s",
    ]);
    fs::write(m.m("g"), b"ok").unwrap();
    assert_eq!(fs::read(m.m("g")).unwrap(), b"ok");
}

#[test]
fn sigterm_unmounts_and_exits_0() {
    let mut m = Mount::new();
    fs::write(m.m("f"), b"before term").unwrap();
    let st = m
        .signal_and_wait(Signal::SIGTERM)
        .expect("daemon did not exit within 5 s of SIGTERM");
    assert!(
        st.success(),
        "exit status after SIGTERM: {st}\n{}",
        m.log_text()
    );
    assert!(!is_mounted(m.mnt()), "still mounted after SIGTERM");
    assert_eq!(fs::read(m.b("f")).unwrap(), b"before term");
}

#[test]
fn sigint_unmounts_and_exits_0() {
    let mut m = Mount::new();
    let st = m
        .signal_and_wait(Signal::SIGINT)
        .expect("daemon did not exit within 5 s of SIGINT");
    assert!(
        st.success(),
        "exit status after SIGINT: {st}\n{}",
        m.log_text()
    );
    assert!(!is_mounted(m.mnt()), "still mounted after SIGINT");
}

#[test]
fn background_mode_returns_once_mounted() {
    let mut m = Mount::unmounted(&[]);
    fs::write(m.b("pre"), b"pre-existing").unwrap();
    let src = m.source_url();
    let mnt = m.mnt().to_path_buf();
    let mnt_s = mnt.display().to_string();
    let cache = m.cache_dir().display().to_string();
    let (st, out, err) = run_cli(
        &["mount", &src, &mnt_s, "--cache-dir", &cache],
        Duration::from_secs(20),
    );
    // whatever happens, find the daemon by its (unique) mountpoint argument for cleanup
    let cleanup = |mnt: &Path| {
        if is_mounted(mnt) {
            let _ = nix::mount::umount2(mnt, nix::mount::MntFlags::empty());
        }
        if is_mounted(mnt) {
            force_unmount(mnt);
        }
        let exited = wait_until(Duration::from_secs(5), || {
            pids_with_cmdline(&mnt_s).is_empty()
        });
        let left = pids_with_cmdline(&mnt_s);
        for pid in &left {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGKILL);
        }
        exited
    };
    let st = match st {
        Some(st) => st,
        None => {
            cleanup(&mnt);
            panic!(
                "`cachalot mount` without --foreground did not return within 20 s\nstderr: {err}"
            );
        }
    };
    let mounted = is_cachalot_mounted(&mnt);
    let read = fs::read(mnt.join("pre"));
    let write = fs::write(mnt.join("post"), b"written");
    let backing_post = fs::read(m.b("post"));
    let exited = cleanup(&mnt);
    assert!(
        st.success(),
        "background mount exit status {st}\nstdout: {out}\nstderr: {err}"
    );
    assert!(mounted, "command returned before the mount was ready");
    assert_eq!(read.unwrap(), b"pre-existing");
    write.unwrap();
    assert_eq!(backing_post.unwrap(), b"written");
    assert!(
        exited,
        "background daemon did not exit after its mount was unmounted"
    );
    m.stop(); // nothing to stop; keeps the guard consistent
}

#[test]
fn remount_after_clean_stop_works_and_keeps_data() {
    let mut m = Mount::new();
    fs::write(m.m("persist"), b"across mounts").unwrap();
    m.remount();
    assert_eq!(fs::read(m.m("persist")).unwrap(), b"across mounts");
    let s = m.stats();
    assert!(s.get("backend_reads").is_some(), "{s}");
}

/// Mounting where a cachalot mount already is would stack a second mount
/// (one umount then takes down both): refused with exit 2, and the first
/// mount keeps serving. A dead one is named with the command that clears it.
#[test]
fn a_second_mount_on_a_cachalot_mount_is_refused() {
    let mut m = Mount::new();
    let mnt = m.mnt().to_string_lossy().into_owned();
    let source = format!("file://{}", m.backing().display());
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_string_lossy().into_owned();
    let args = [
        "mount",
        &source,
        &mnt,
        "--cache-dir",
        &cache_dir,
        "--foreground",
    ];
    let (status, _, err) = run_cli(&args, Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{err}");
    assert!(err.contains("already a cachalot mount"), "{err}");
    std::fs::write(m.m("still"), b"served").expect("the first mount still serves");

    // The daemon dies and leaves its mount dead (ENOTCONN).
    let pid = m.pid().expect("daemon pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(10), || std::fs::metadata(
        m.mnt()
    )
    .is_err()));
    let (status, _, err) = run_cli(&args, Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{err}");
    assert!(err.contains("fusermount3 -u"), "{err}");
    m.kill9();
}

/// The synopsis lines of `command` in the README: every line starting
/// with it, and the indented lines continuing each.
fn readme_synopsis(readme: &str, command: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in readme.lines() {
        let starts = line.trim_start().starts_with(command)
            && line.trim_start()[command.len()..]
                .chars()
                .next()
                .is_none_or(|c| c == ' ');
        if starts {
            inside = true;
        } else if !(inside && line.starts_with(' ')) {
            inside = false;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The README's synopsis of each subcommand names every flag its `--help`
/// shows: a new flag fails this test until the README mentions it.
#[test]
fn the_readme_synopsis_names_every_flag() {
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let commands: [&[&str]; 9] = [
        &["mount"],
        &["warm"],
        &["doctor"],
        &["demo"],
        &["cache", "stats"],
        &["cache", "clear"],
        &["csi"],
        &["mounter"],
        &["sessions"],
    ];
    let flags_of = |help: &str| -> Vec<String> {
        help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .filter(|w| !matches!(*w, "--help" | "--version"))
            .map(str::to_string)
            .collect()
    };
    // Flags of every command are in the synopsis `cachalot COMMAND ...`.
    let (st, top_help, err) = run_expect_exit(&["--help"], None);
    assert!(st.success(), "{err}");
    let global = flags_of(&top_help);
    let global_synopsis = readme_synopsis(&readme, "cachalot COMMAND");
    let mut missing: Vec<String> = global
        .iter()
        .filter(|f| !global_synopsis.contains(f.as_str()))
        .map(|f| format!("cachalot COMMAND {f}"))
        .collect();
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let (st, help, err) = run_expect_exit(&args, None);
        assert!(st.success(), "cachalot {args:?}: {err}");
        let synopsis = readme_synopsis(&readme, &format!("cachalot {}", command.join(" ")));
        assert!(
            !synopsis.is_empty(),
            "no synopsis of cachalot {command:?} in the README"
        );
        for flag in flags_of(&help).iter().filter(|f| !global.contains(f)) {
            if !synopsis.contains(flag.as_str()) {
                missing.push(format!("cachalot {} {flag}", command.join(" ")));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "flags the README's synopses omit: {missing:?}"
    );
}

#[test]
fn a_cache_dir_that_is_a_file_exits_2() {
    let d = dirs();
    let file = d.cache.join("a-file");
    fs::write(&file, b"x").unwrap();
    let args = vec![
        "mount".to_string(),
        format!("file://{}", d.backing.display()),
        d.mnt.display().to_string(),
        "--cache-dir".into(),
        file.display().to_string(),
    ];
    assert_usage_error(&strs(&args), Some(&d.mnt), "is not a directory");
}

/// `cache stats` and `cache clear` on a directory that holds other things
/// refuse (exit 2) and leave it as it was.
#[test]
fn cache_commands_refuse_a_directory_that_is_not_a_cache() {
    let d = dirs();
    fs::write(d.backing.join("notes.txt"), b"mine").unwrap();
    let dir = d.backing.display().to_string();
    for cmd in ["stats", "clear"] {
        assert_usage_error(
            &["cache", cmd, "--cache-dir", &dir],
            None,
            "is not a cache directory: it holds other files",
        );
    }
    let left: Vec<_> = fs::read_dir(&d.backing)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("notes.txt")]);
    assert_usage_error(
        &["cache", "clear", "--cache-dir", "/nonexistent/cachalot"],
        None,
        "does not exist",
    );
}
