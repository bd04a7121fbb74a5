//! Test harness for the cachalot FUSE integration tests.
//!
//! Every test builds its own [`Mount`]: a private temp dir holding a backing
//! directory (the `file://` source, ground truth), a cache directory, a
//! mountpoint and the daemon's log. The daemon runs `--foreground` as a child
//! of the test; dropping the guard always stops it and unmounts, also when the
//! test panicked (the daemon's log is then printed to help debugging).
//!
//! The tests need root and `/dev/fuse`; without them the harness panics with a
//! clear message instead of silently skipping.
#![allow(dead_code)]

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_cachalot");

/// How long a mount may take to appear in /proc/self/mountinfo.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a daemon may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Fail loudly (never skip) when the environment cannot run FUSE tests.
pub fn require_root_and_fuse() {
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        panic!(
            "cachalot integration tests must run as root (euid is {euid}): they mount FUSE \
             filesystems and switch uids. Run `sudo -E cargo test` (CI runs as root)."
        );
    }
    if !Path::new("/dev/fuse").exists() {
        panic!(
            "cachalot integration tests need /dev/fuse (modprobe fuse, or run the container \
             with --device /dev/fuse --cap-add SYS_ADMIN)."
        );
    }
}

// ---------------------------------------------------------------------------------------
// fork/exec vs. open files
//
// A fork+exec in ANY thread of the test process duplicates every open descriptor, and the
// exec closes the O_CLOEXEC copies: the kernel sends FUSE FLUSH for each of them, exactly
// as for a close(2) by the writer. Tests run in parallel threads, so a daemon spawned by
// one test could make another test's half-written file publish early. Every spawn in the
// harness therefore takes FORK_LOCK exclusively, and tests that assert "not published
// before close" hold a `no_fork_guard()` while their descriptor is open. (The
// fork-while-writing behaviour itself is tested deterministically in fuse/write_atomic.rs.)
// Never call a spawning helper (Mount::start, run_with_timeout, force_unmount, ...) while
// holding a guard: that would deadlock.
// ---------------------------------------------------------------------------------------

static FORK_LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Hold while a write descriptor is open and the test asserts it is not yet published.
pub fn no_fork_guard() -> std::sync::RwLockReadGuard<'static, ()> {
    FORK_LOCK.read().unwrap_or_else(|e| e.into_inner())
}

/// Exclusive: no other thread of this process forks while it is held.
pub fn exclusive_fork_guard() -> std::sync::RwLockWriteGuard<'static, ()> {
    FORK_LOCK.write().unwrap_or_else(|e| e.into_inner())
}

/// `cmd.spawn()` while no test holds a `no_fork_guard()`.
pub fn spawn_locked(cmd: &mut Command) -> io::Result<Child> {
    let _w = exclusive_fork_guard();
    cmd.spawn()
}

/// `cmd.status()` with the spawn under FORK_LOCK.
pub fn status_locked(cmd: &mut Command) -> io::Result<ExitStatus> {
    spawn_locked(cmd)?.wait()
}

/// One entry of /proc/self/mountinfo that matters to us.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes ' ', '\t', '\n' and '\\' as \ooo (octal).
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x"), 8)
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse /proc/self/mountinfo.
pub fn mount_entries() -> Vec<MountEntry> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let lf: Vec<&str> = left.split(' ').collect();
        let rf: Vec<&str> = right.split(' ').collect();
        if lf.len() < 5 || rf.len() < 2 {
            continue;
        }
        v.push(MountEntry {
            mountpoint: PathBuf::from(unescape_mountinfo(lf[4])),
            fstype: rf[0].to_string(),
            source: unescape_mountinfo(rf[1]),
        });
    }
    v
}

/// The mountinfo entry (last one wins: the top of the stack) for `path`.
pub fn mount_entry(path: &Path) -> Option<MountEntry> {
    mount_entries()
        .into_iter()
        .rev()
        .find(|e| e.mountpoint == path)
}

pub fn is_mounted(path: &Path) -> bool {
    mount_entry(path).is_some()
}

pub fn is_cachalot_mounted(path: &Path) -> bool {
    mount_entry(path).is_some_and(|e| e.fstype == "fuse.cachalot")
}

/// Unmount `path` by any means (fusermount3 -u, umount, lazy umount); errors ignored.
pub fn force_unmount(path: &Path) {
    for _ in 0..3 {
        if !is_mounted(path) {
            return;
        }
        // fusermount3 may not be installed; ignore spawn errors.
        let _ = status_locked(
            Command::new("fusermount3")
                .arg("-u")
                .arg(path)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        if !is_mounted(path) {
            return;
        }
        let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
        if !is_mounted(path) {
            return;
        }
        let _ = status_locked(
            Command::new("umount")
                .arg("-l")
                .arg(path)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
    }
}

/// Lazy-unmount `path` (used after the daemon was killed: the mount is dead).
pub fn lazy_unmount(path: &Path) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    if is_mounted(path) {
        force_unmount(path);
    }
}

/// Evict the kernel page cache so that reads reach the FUSE daemon.
pub fn drop_caches() {
    // No global sync(2): a hung mount of a parallel test must not block us. Our tests
    // close files before dropping caches, so their pages are clean.
    if let Err(e) = fs::write("/proc/sys/vm/drop_caches", "3") {
        eprintln!("warning: cannot write /proc/sys/vm/drop_caches: {e}");
    }
}

/// Read `user.cachalot.stats` (or any xattr) of `path` through libc.
pub fn getxattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    loop {
        let r = unsafe {
            libc::getxattr(
                p.as_ptr(),
                n.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && buf.len() < (1 << 20) {
            let need = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
            let new_len = if need > 0 {
                need as usize + 64
            } else {
                buf.len() * 4
            };
            buf = vec![0u8; new_len.max(buf.len() * 2)];
            continue;
        }
        return Err(err);
    }
}

/// Get one counter from a stats JSON object; panics with the JSON if absent.
pub fn setxattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: NUL-terminated strings and a buffer of the given length.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    match r {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

pub fn stat_u64(stats: &serde_json::Value, key: &str) -> u64 {
    stats
        .get(key)
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("stats has no unsigned counter {key:?}: {stats}"))
}

/// Expect `r` to be an error with errno `expected`; return the error for more checks.
#[track_caller]
pub fn expect_errno<T: std::fmt::Debug>(r: io::Result<T>, expected: i32, what: &str) -> io::Error {
    match r {
        Ok(v) => panic!(
            "{what}: expected errno {expected} ({}), but it succeeded: {v:?}",
            errno_name(expected)
        ),
        Err(e) => {
            assert_eq!(
                e.raw_os_error(),
                Some(expected),
                "{what}: expected errno {expected} ({}), got {e:?}",
                errno_name(expected)
            );
            e
        }
    }
}

pub fn errno_name(e: i32) -> &'static str {
    match e {
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EROFS => "EROFS",
        libc::EEXIST => "EEXIST",
        libc::ENOENT => "ENOENT",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EIO => "EIO",
        libc::ENOSPC => "ENOSPC",
        _ => "?",
    }
}

/// Deterministic pseudo-random content (xorshift), so mismatches are not hidden by patterns.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for b in x.to_le_bytes() {
            if v.len() < len {
                v.push(b);
            }
        }
    }
    v
}

/// Compare two byte slices and report the first differing offset instead of dumping megabytes.
#[track_caller]
pub fn assert_bytes_eq(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let first = actual.iter().zip(expected).position(|(a, b)| a != b);
    panic!(
        "{what}: content differs: actual len {}, expected len {}, first difference at {:?}",
        actual.len(),
        expected.len(),
        first
    );
}

/// Names in `dir` that look like cachalot write temp files for `name` (`.<name>.cachalot-<hex>`).
pub fn temp_files_for(dir: &Path, name: &str) -> Vec<String> {
    let prefix = format!(".{name}.cachalot-");
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    v.sort();
    v
}

/// All names under `dir` (recursively) that contain `.cachalot-` (any write temp file).
pub fn all_temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().contains(".cachalot-") {
                out.push(p.clone());
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Files (recursively) under `dir` whose name ends with `.page`.
pub fn page_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let ft = e.file_type().ok();
            if ft.is_some_and(|t| t.is_dir()) {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "page") {
                out.push(p);
            }
        }
    }
    out
}

/// The format magic ("CCHLPG0N") of each page file under `dir`.
pub fn page_magics(dir: &Path) -> Vec<String> {
    page_files(dir)
        .iter()
        .filter_map(|p| fs::read(p).ok())
        .map(|b| String::from_utf8_lossy(&b[..b.len().min(8)]).into_owned())
        .collect()
}

/// Poll `f` until it returns true or `timeout` passes; returns the last result.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `Command` that runs as uid/gid 65534 (nobody) with no supplementary groups.
pub fn command_as_nobody(program: &str) -> Command {
    let mut cmd = Command::new(program);
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setgid(65534) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setuid(65534) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Run a command with a timeout; the child is killed if it does not finish.
pub fn run_with_timeout(
    mut cmd: Command,
    timeout: Duration,
) -> (Option<ExitStatus>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out_p = dir.path().join("stdout");
    let err_p = dir.path().join("stderr");
    let mut child = spawn_locked(
        cmd.stdin(Stdio::null())
            .stdout(File::create(&out_p).unwrap())
            .stderr(File::create(&err_p).unwrap()),
    )
    .expect("spawn");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = fs::read_to_string(&out_p).unwrap_or_default();
    let err = fs::read_to_string(&err_p).unwrap_or_default();
    (status, out, err)
}

/// How long one daemon may live before the watchdog kills it (a hung daemon would
/// otherwise hang the test, and CI, forever). Override with CACHALOT_TEST_TIMEOUT_SECS.
fn watchdog_timeout() -> Duration {
    std::env::var("CACHALOT_TEST_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(180))
}

/// SIGKILLs the daemon if the test is still using it after `watchdog_timeout()`: the kernel
/// then aborts the FUSE connection and blocked file operations fail with ENOTCONN instead of
/// hanging. Dropping the watchdog disarms it (before the child is reaped, so the pid is
/// still ours when it fires).
struct Watchdog {
    disarm: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(pid: u32) -> Watchdog {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let timeout = watchdog_timeout();
        let thread = std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
                eprintln!(
                    "watchdog: cachalot daemon {pid} still running after {timeout:?}: \
                     killing it (a file operation is probably hung)"
                );
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        });
        Watchdog {
            disarm: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.disarm.take()); // wakes the thread: Disconnected
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A running `cachalot mount ... --foreground` with its own temp dirs.
pub struct Mount {
    // NB: `child` must be stopped before `tmp` is removed; Drop handles that.
    tmp: tempfile::TempDir,
    root: PathBuf,
    backing: PathBuf,
    cache: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
    watchdog: Option<Watchdog>,
    /// Extra environment of the daemon (applied after RUST_LOG, so it may override it).
    env: Vec<(String, String)>,
}

impl Mount {
    /// Mount with default options.
    pub fn new() -> Mount {
        Self::with_args(&[])
    }

    /// Mount with extra CLI arguments (e.g. `["--read-only"]`).
    pub fn with_args(extra: &[&str]) -> Mount {
        Self::with_prepare(extra, |_| {})
    }

    /// Mount with extra CLI arguments, after `prepare(backing)` populated the backing dir.
    pub fn with_prepare(extra: &[&str], prepare: impl FnOnce(&Path)) -> Mount {
        let mut m = Self::unmounted(extra);
        prepare(&m.backing);
        m.start();
        m
    }

    /// Create the directories but do not start the daemon yet (call [`Mount::start`]).
    pub fn unmounted(extra: &[&str]) -> Mount {
        require_root_and_fuse();
        let tmp = tempfile::Builder::new()
            .prefix("cachalot-test-")
            .tempdir()
            .expect("tempdir");
        let root = fs::canonicalize(tmp.path()).unwrap();
        // Other uids (the --allow-other / --uid tests) must be able to traverse to the
        // mountpoint and the backing directory.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let backing = root.join("backing");
        let cache = root.join("cache");
        let mnt = root.join("mnt");
        for d in [&backing, &cache, &mnt] {
            fs::create_dir(d).unwrap();
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let log = root.join("daemon.log");
        Mount {
            tmp,
            root,
            backing,
            cache,
            mnt,
            log,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            watchdog: None,
            env: Vec::new(),
        }
    }

    /// Use another cache dir (e.g. one shared with another mount); call before [`Mount::start`].
    pub fn use_cache_dir(&mut self, dir: &Path) {
        assert!(self.child.is_none(), "use_cache_dir after start");
        self.cache = dir.to_path_buf();
    }

    /// Serve another mount's backing dir (a second node of one volume);
    /// call before [`Mount::start`].
    pub fn use_backing(&mut self, dir: &Path) {
        assert!(self.child.is_none(), "use_backing after start");
        self.backing = dir.to_path_buf();
    }

    pub fn source_url(&self) -> String {
        format!("file://{}", self.backing.display())
    }

    /// The full argument list for `cachalot`.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "mount".to_string(),
            self.source_url(),
            self.mnt.display().to_string(),
            "--cache-dir".to_string(),
            self.cache.display().to_string(),
            "--foreground".to_string(),
        ];
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Spawn the daemon and wait until the mount is live.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        assert!(
            !is_mounted(&self.mnt),
            "{} is still mounted",
            self.mnt.display()
        );
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let log2 = log.try_clone().unwrap();
        let child = spawn_locked(
            Command::new(BIN)
                .args(self.args())
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                )
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2),
        )
        .unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
        self.watchdog = Some(Watchdog::start(child.id()));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if let Some(e) = mount_entry(&self.mnt) {
                if e.fstype == "fuse.cachalot" {
                    return;
                }
                if e.fstype.starts_with("fuse") {
                    panic!(
                        "{} is mounted with fs type {:?}, expected \"fuse.cachalot\"\n{}",
                        self.mnt.display(),
                        e.fstype,
                        self.log_text()
                    );
                }
            }
            let child = self.child.as_mut().unwrap();
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                panic!(
                    "cachalot exited before the mount was ready ({st}); args {:?}\n--- daemon log ---\n{}",
                    self.args(),
                    self.log_text()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not appear as fuse.cachalot in /proc/self/mountinfo within {:?}\n--- daemon log ---\n{}",
                    self.mnt.display(),
                    MOUNT_TIMEOUT,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn backing(&self) -> &Path {
        &self.backing
    }
    pub fn mnt(&self) -> &Path {
        &self.mnt
    }
    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }
    /// `backing/<rel>`
    pub fn b(&self, rel: &str) -> PathBuf {
        self.backing.join(rel)
    }
    /// `mnt/<rel>`
    pub fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("<no log: {e}>"))
    }

    /// Stats JSON from `getxattr(mnt, "user.cachalot.stats")`.
    pub fn stats(&self) -> serde_json::Value {
        let raw = getxattr(&self.mnt, "user.cachalot.stats").unwrap_or_else(|e| {
            panic!(
                "getxattr user.cachalot.stats on {}: {e}",
                self.mnt.display()
            )
        });
        serde_json::from_slice(&raw).unwrap_or_else(|e| {
            panic!(
                "user.cachalot.stats is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&raw)
            )
        })
    }

    /// SIGKILL the daemon, reap it and lazy-unmount the dead mountpoint.
    pub fn kill9(&mut self) {
        self.watchdog.take();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        lazy_unmount(&self.mnt);
        assert!(
            !is_mounted(&self.mnt),
            "mountpoint still mounted after kill -9 + lazy unmount"
        );
    }

    /// Send `sig` to the daemon and wait (up to STOP_TIMEOUT) for it to exit.
    /// Returns the exit status, or None if it did not exit in time (it is then SIGKILLed).
    pub fn signal_and_wait(&mut self, sig: Signal) -> Option<ExitStatus> {
        self.watchdog.take();
        let mut c = self.child.take()?;
        let _ = kill(Pid::from_raw(c.id() as i32), sig);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Stop the daemon (SIGTERM, then SIGKILL) and make sure nothing is mounted.
    pub fn stop(&mut self) {
        self.watchdog.take();
        if self.child.is_some() {
            let st = self.signal_and_wait(Signal::SIGTERM);
            if st.is_none() {
                eprintln!(
                    "warning: cachalot did not exit within {STOP_TIMEOUT:?} after SIGTERM; killed"
                );
            }
        }
        if is_mounted(&self.mnt) {
            force_unmount(&self.mnt);
        }
    }

    /// Start a new daemon on the same backing and cache dirs (stopping the old one if alive).
    pub fn remount(&mut self) {
        self.stop();
        self.start();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        self.stop();
        if is_mounted(&self.mnt) {
            eprintln!(
                "warning: {} still mounted after cleanup",
                self.mnt.display()
            );
        }
        if panicking {
            eprintln!(
                "--- cachalot daemon log ({}) ---\n{}--- end of log ---",
                self.log.display(),
                self.log_text()
            );
        }
        // tests may mount a small tmpfs on the backing or cache dir (ENOSPC tests)
        for d in [&self.backing, &self.cache] {
            if is_mounted(d) {
                let _ = nix::mount::umount2(d.as_path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _ = &self.tmp; // TempDir removes everything after this
    }
}

/// Mount a tmpfs of `size` (e.g. "1m") on `dir` (used to provoke ENOSPC).
/// The [`Mount`] guard unmounts it when `dir` is its backing or cache dir.
pub fn mount_small_tmpfs(dir: &Path, size: &str) {
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(format!("size={size},mode=0755").as_str()),
    )
    .unwrap_or_else(|e| panic!("mount tmpfs on {}: {e}", dir.display()));
}

/// Read a whole file.
pub fn read_all(p: &Path) -> io::Result<Vec<u8>> {
    let mut f = File::open(p)?;
    let mut v = Vec::new();
    f.read_to_end(&mut v)?;
    Ok(v)
}

/// Run the binary with `args` (no mount expected); kill after `timeout`.
pub fn run_cli(args: &[&str], timeout: Duration) -> (Option<ExitStatus>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    run_with_timeout(cmd, timeout)
}

/// Find pids of processes (other than us) whose command line contains `needle`.
pub fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut v = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd: Vec<u8> = cmd
            .into_iter()
            .map(|b| if b == 0 { b' ' } else { b })
            .collect();
        if String::from_utf8_lossy(&cmd).contains(needle) {
            // skip zombies
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(") ")
                .map(|(_, r)| r.chars().next().unwrap_or('?'));
            if state != Some('Z') {
                v.push(pid);
            }
        }
    }
    v
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// renameat2(old, new, RENAME_NOREPLACE)
pub fn rename_noreplace(old: &Path, new: &Path) -> io::Result<()> {
    let (o, n) = (cpath(old), cpath(new));
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            o.as_ptr(),
            libc::AT_FDCWD,
            n.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// mkfifo(path, mode)
pub fn mkfifo(p: &Path, mode: u32) -> io::Result<()> {
    let c = cpath(p);
    if unsafe { libc::mkfifo(c.as_ptr(), mode as libc::mode_t) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// truncate(path, len) (setattr size without an open file handle)
pub fn truncate_path(p: &Path, len: u64) -> io::Result<()> {
    let c = cpath(p);
    if unsafe { libc::truncate(c.as_ptr(), len as libc::off_t) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// open(2) with raw flags and mode, returning a File.
pub fn open_raw(p: &Path, flags: i32, mode: u32) -> io::Result<File> {
    use std::os::fd::FromRawFd;
    let c = cpath(p);
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(unsafe { File::from_raw_fd(fd) })
    }
}

/// utimensat(AT_FDCWD, path, [atime, mtime], 0) with whole seconds.
pub fn utimens_path(p: &Path, atime_s: i64, mtime_s: i64) -> io::Result<()> {
    let c = cpath(p);
    let ts = [
        libc::timespec {
            tv_sec: atime_s as libc::time_t,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: mtime_s as libc::time_t,
            tv_nsec: 0,
        },
    ];
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// close(2) a file explicitly and report its error (std's Drop ignores it).
pub fn close_checked(f: File) -> io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = f.into_raw_fd();
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Mount {
    /// Use another backing dir (e.g. the backing dir of another mount: two daemons on one
    /// volume); call before [`Mount::start`].
    pub fn use_backing_dir(&mut self, dir: &Path) {
        assert!(self.child.is_none(), "use_backing_dir after start");
        self.backing = dir.to_path_buf();
    }

    /// Set an environment variable of the daemon for the next [`Mount::start`] (applied
    /// after RUST_LOG, so it may override it).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }
}

/// Arguments that make the test binary run only its `child_role` tests
/// (a filter, not `--exact`: in a binary of several suites the test is
/// `<module>::child_role`; each one returns at once unless its own role
/// variable is set).
pub const CHILD_ROLE_ARGS: [&str; 5] = ["child_role", "--nocapture", "--test-threads", "1", "-q"];

/// Re-run the current test binary as a child process: it runs only the
/// test named `child_role`, which dispatches on `role` (passed in the
/// environment variable `role_env`). `capture_stdout`: pipe stdout (for a
/// RESULT line) or discard it; stderr is always piped.
pub fn spawn_child_role(
    role_env: &str,
    role: &str,
    env: &[(&str, String)],
    capture_stdout: bool,
) -> Child {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
    cmd.args(CHILD_ROLE_ARGS)
        .env(role_env, role)
        .stdin(Stdio::null())
        .stdout(if capture_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn_locked(&mut cmd).expect("spawn child")
}

// ---- metrics endpoints ----

/// `GET /metrics` from a local endpoint, the body as text.
pub fn scrape(port: u16) -> String {
    try_scrape(port).unwrap_or_else(|e| panic!("scraping 127.0.0.1:{port}: {e}"))
}

/// The same, an error when nothing answers (yet) or not with 200.
pub fn try_scrape(port: u16) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200")) {
        return Err(head.to_string());
    }
    Ok(body.to_string())
}

/// The value of the sample `name{labels...}` (labels given as a substring).
pub fn sample(body: &str, name: &str, labels: &str) -> u64 {
    body.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no sample {name} with {labels} in:\n{body}"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
