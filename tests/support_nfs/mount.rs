//! A real FUSE mount by the `cachalot` binary, unmounted (and the process
//! stopped) when the guard drops, also on panic.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{spawn_with_death_signal, stop_child};
use crate::common::is_mounted;

pub struct Mounted {
    pub mnt: PathBuf,
    pub cache: PathBuf,
    stderr: PathBuf,
    child: Option<Child>,
    _dirs: tempfile::TempDir,
}

/// A mount attempt that failed: exit status and what it printed.
#[derive(Debug)]
pub struct MountFailure {
    pub status: ExitStatus,
    pub stderr: String,
}

/// `cachalot mount URL MNT --cache-dir C --foreground --metadata-ttl 0s ARGS`,
/// returning once the mount is live or the process exited.
pub fn mount(url: &str, args: &[&str]) -> Result<Mounted, MountFailure> {
    let dirs = tempfile::Builder::new()
        .prefix("cachalot-nfs-mnt-")
        .tempdir()
        .unwrap();
    let (mnt, cache, stderr) = (
        dirs.path().join("mnt"),
        dirs.path().join("cache"),
        dirs.path().join("stderr.log"),
    );
    fs::create_dir_all(&mnt).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cachalot"));
    cmd.arg("mount")
        .arg(url)
        .arg(&mnt)
        .arg("--cache-dir")
        .arg(&cache)
        .arg("--foreground")
        .args(["--metadata-ttl", "0s"])
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("CACHALOT_TEST_LOG").unwrap_or("info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr).unwrap());
    // SIGTERM: cachalot unmounts itself if the test process dies.
    let mut child = spawn_with_death_signal(cmd, libc::SIGTERM).expect("starting cachalot");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if is_mounted(&mnt) {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(MountFailure {
                status,
                stderr: fs::read_to_string(&stderr).unwrap_or_default(),
            });
        }
        if Instant::now() > deadline {
            stop_child(&mut child, Duration::from_secs(5));
            panic!(
                "mount did not come up: {}",
                fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Mounted {
        mnt,
        cache,
        stderr,
        child: Some(child),
        _dirs: dirs,
    })
}

impl Mounted {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(15));
        }
        if is_mounted(&self.mnt) {
            let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
