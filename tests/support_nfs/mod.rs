//! Test harness: one nfs-ganesha (plus rpcbind if none runs) on 127.0.0.1
//! per test binary, shared by its tests, stopped at process exit.
//!
//! Servers are spawned from one long-lived thread with PR_SET_PDEATHSIG, so
//! they die with the test process even if it is killed; a normal exit stops
//! them gracefully (atexit) and removes their directories. ganesha uses fixed
//! ports, so binaries (also of other worktrees) serialize on a lock file.
#![allow(dead_code)]

pub mod mount;

use std::fs::{self, File};
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const NFS_PORT: u16 = 2049;
pub const MNT_PORT: u16 = 20048;
/// Owner of the root-squashed export's directory.
pub const SQUASHED_OWNER: u32 = 1000;
/// Directory of the export holding a tmpfs of [`SMALL_FS_MIB`] MiB: writes
/// past it fail on the server (NFS3ERR_NOSPC).
pub const SMALL_FS: &str = "small-fs";
pub const SMALL_FS_MIB: usize = 64;
const LOCK_FILE: &str = "/tmp/cachalot-nfs-tests.lock";

type SpawnRequest = (Command, i32, mpsc::Sender<std::io::Result<Child>>);

/// Spawn `cmd` from the spawner thread (which lives as long as the process)
/// with SIGKILL as parent-death signal.
fn spawn(cmd: Command) -> std::io::Result<Child> {
    spawn_with_death_signal(cmd, libc::SIGKILL)
}

/// Spawn `cmd` so that it gets `signal` when the test process dies.
pub fn spawn_with_death_signal(cmd: Command, signal: i32) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("server-spawner".into())
            .spawn(move || {
                for (mut cmd, signal, reply) in rx {
                    // SAFETY: prctl is async-signal-safe.
                    unsafe {
                        cmd.pre_exec(move || {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    // The child inherits this process's descriptors until exec closes
    // them, and each closed copy of a cachalot file is a FUSE FLUSH, which
    // publishes: not while a test holds `no_fork_guard` (see common).
    let _no_writer_open = crate::common::exclusive_fork_guard();
    sender
        .lock()
        .unwrap()
        .send((cmd, signal, tx))
        .map_err(|_| std::io::Error::other("spawner gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("spawner gone"))?
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

pub fn stop_child(child: &mut Child, grace: Duration) {
    let pid = child.id() as i32;
    // SAFETY: signalling our own child by pid.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub struct Ganesha {
    pub root: tempfile::TempDir,
    conf: PathBuf,
    log: PathBuf,
    child: Mutex<Option<Child>>,
    rpcbind: Mutex<Option<Child>>,
    _lock: File,
}

impl Ganesha {
    /// Directory behind `nfs://127.0.0.1/export` (no_root_squash).
    pub fn export_dir(&self) -> PathBuf {
        self.root.path().join("export")
    }

    /// Directory behind `nfs://127.0.0.1/squashed` (root_squash, owned by
    /// uid 1000, mode 0755).
    pub fn squashed_dir(&self) -> PathBuf {
        self.root.path().join("squashed")
    }

    /// The tmpfs below the export (see [`SMALL_FS`]) on disk, and its URL.
    /// Its content is left to the tests that use it.
    pub fn small_fs(&self) -> (PathBuf, String) {
        (
            self.export_dir().join(SMALL_FS),
            format!("nfs://127.0.0.1/export/{SMALL_FS}"),
        )
    }

    /// A fresh directory `name` under the export, and its URL.
    pub fn area(&self, name: &str) -> (PathBuf, String) {
        let dir = self.export_dir().join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        (dir, format!("nfs://127.0.0.1/export/{name}"))
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Whether the ganesha process is alive (it may have crashed).
    pub fn is_running(&self) -> bool {
        let mut slot = self.child.lock().unwrap();
        match slot.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                *slot = None;
                false
            }
            None => false,
        }
    }

    /// Start ganesha (if stopped) and wait until both ports answer.
    pub fn start(&self) {
        if self.is_running() {
            return;
        }
        let mut slot = self.child.lock().unwrap();
        let mut cmd = Command::new("ganesha.nfsd");
        cmd.arg("-F")
            .arg("-f")
            .arg(&self.conf)
            .arg("-L")
            .arg(&self.log)
            .arg("-p")
            .arg(self.root.path().join("ganesha.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn(cmd).expect("starting ganesha.nfsd (run scripts/install-nfs-deps.sh)");
        *slot = Some(child);
        drop(slot);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let mut slot = self.child.lock().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(port_open(NFS_PORT) && port_open(MNT_PORT)) {
            if let Some(Ok(Some(status))) = slot.as_mut().map(|c| c.try_wait()) {
                *slot = None;
                panic!("ganesha exited at start ({status}):\n{}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "ganesha not ready:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Registration with rpcbind happens around the same time.
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Stop ganesha: `graceful` = SIGTERM (then SIGKILL), else SIGKILL at once.
    pub fn stop(&self, graceful: bool) {
        let mut slot = self.child.lock().unwrap();
        if let Some(mut child) = slot.take() {
            if graceful {
                stop_child(&mut child, Duration::from_secs(10));
            } else {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while port_open(NFS_PORT) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn restart(&self) {
        self.stop(false);
        self.start();
    }

    /// A restart prepared in advance: a shell that will `exec` ganesha when
    /// told to. Needed while the test process holds files of a cachalot
    /// mount open: spawning a process then would hand those descriptors to
    /// the child, whose close at exec sends FUSE FLUSH, which waits for the
    /// write in progress (and publishes) — the restart would hang on the
    /// very write it is meant to interrupt.
    pub fn prepare_restart(self: &Arc<Self>) -> PreparedRestart {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"read -r _ && exec ganesha.nfsd -F -f "$1" -L "$2" -p "$3""#)
            .arg("sh")
            .arg(&self.conf)
            .arg(&self.log)
            .arg(self.root.path().join("ganesha.pid"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        PreparedRestart {
            server: Arc::clone(self),
            child: Some(spawn(cmd).expect("preparing a ganesha restart")),
        }
    }
}

pub struct PreparedRestart {
    server: Arc<Ganesha>,
    child: Option<Child>,
}

impl PreparedRestart {
    /// Kill the running ganesha (SIGKILL), keep it down for `down`, start the
    /// prepared one and wait until it serves.
    pub fn kill_and_restart(mut self, down: Duration) {
        self.server.stop(false);
        std::thread::sleep(down);
        let mut child = self.child.take().expect("prepared child");
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(b"go\n").unwrap();
        drop(stdin);
        *self.server.child.lock().unwrap() = Some(child);
        self.server.wait_ready();
    }
}

impl Drop for PreparedRestart {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Ganesha {
    fn drop(&mut self) {
        self.stop(true);
        // Before the temp dir goes: its removal would stop at the mount.
        let small = self.export_dir().join(SMALL_FS);
        let _ = nix::mount::umount2(&small, nix::mount::MntFlags::MNT_DETACH);
        if let Some(mut rpcbind) = self.rpcbind.lock().unwrap().take() {
            stop_child(&mut rpcbind, Duration::from_secs(5));
        }
    }
}

fn rpcbind_running() -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], 111).into(), Duration::from_millis(200)).is_ok()
}

fn start_rpcbind() -> Option<Child> {
    if rpcbind_running() {
        return None;
    }
    fs::create_dir_all("/run/rpcbind").unwrap();
    let mut cmd = Command::new("rpcbind");
    cmd.args(["-f", "-w"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = spawn(cmd).expect("starting rpcbind (run scripts/install-nfs-deps.sh)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rpcbind_running() {
        assert!(Instant::now() < deadline, "rpcbind did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(child)
}

fn config(root: &Path) -> String {
    let export = root.join("export");
    let squashed = root.join("squashed");
    let recovery = root.join("recovery");
    // mount_path_pseudo: NFSv3 clients mount the pseudo path (/export), as
    // the URLs in the tests and docs do. Attr_Expiration_Time=0: the tests
    // change files on disk directly and must see that at once.
    format!(
        r#"NFS_CORE_PARAM {{ Bind_addr=127.0.0.1; NFS_Port={NFS_PORT}; MNT_Port={MNT_PORT}; Enable_NLM=false; Enable_RQUOTA=false; Enable_UDP=false; Protocols=3,4; mount_path_pseudo=true; }}
NFSV4 {{ RecoveryBackend=fs; RecoveryRoot={recovery}; Graceless=true; }}
EXPORT {{ Export_Id=1; Path={export}; Pseudo=/export; Access_Type=RW; Squash=No_Root_Squash; Protocols=3,4; Transports=TCP; SecType=sys; Attr_Expiration_Time=0; FSAL {{ Name=VFS; }} }}
EXPORT {{ Export_Id=2; Path={squashed}; Pseudo=/squashed; Access_Type=RW; Squash=Root_Squash; Protocols=3,4; Transports=TCP; SecType=sys; Attr_Expiration_Time=0; FSAL {{ Name=VFS; }} }}
"#,
        recovery = recovery.display(),
        export = export.display(),
        squashed = squashed.display(),
    )
}

static SERVER: Mutex<Option<Arc<Ganesha>>> = Mutex::new(None);

extern "C" fn stop_at_exit() {
    let server = SERVER.lock().ok().and_then(|mut s| s.take());
    drop(server);
}

/// The shared server of this test binary (started on first use).
pub fn ganesha() -> Arc<Ganesha> {
    let mut slot = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(server) = slot.as_ref() {
        return Arc::clone(server);
    }
    let lock = File::create(LOCK_FILE).unwrap();
    // SAFETY: flock on an open descriptor.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(rc, 0, "locking {LOCK_FILE}");
    assert!(
        !port_open(NFS_PORT),
        "something already listens on 127.0.0.1:{NFS_PORT}; stop it before running the NFS tests"
    );
    let root = tempfile::Builder::new()
        .prefix("cachalot-ganesha-")
        .tempdir()
        .unwrap();
    for d in ["export", "squashed", "recovery"] {
        fs::create_dir_all(root.path().join(d)).unwrap();
    }
    // Mounted before ganesha starts: it serves only file systems it found
    // below an export at start (a later mount would be another device).
    let small = root.path().join("export").join(SMALL_FS);
    fs::create_dir_all(&small).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &small,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(format!("size={SMALL_FS_MIB}m,mode=0777").as_str()),
    )
    .unwrap_or_else(|e| panic!("mount tmpfs on {}: {e}", small.display()));
    let squashed = root.path().join("squashed");
    std::os::unix::fs::chown(&squashed, Some(SQUASHED_OWNER), Some(SQUASHED_OWNER)).unwrap();
    fs::set_permissions(&squashed, fs::Permissions::from_mode(0o755)).unwrap();
    let conf = root.path().join("ganesha.conf");
    File::create(&conf)
        .unwrap()
        .write_all(config(root.path()).as_bytes())
        .unwrap();
    let server = Arc::new(Ganesha {
        log: root.path().join("ganesha.log"),
        conf,
        child: Mutex::new(None),
        rpcbind: Mutex::new(start_rpcbind()),
        root,
        _lock: lock,
    });
    server.start();
    // SAFETY: registering a plain extern "C" function.
    unsafe {
        libc::atexit(stop_at_exit);
    }
    *slot = Some(Arc::clone(&server));
    server
}
