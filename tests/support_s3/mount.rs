//! A real FUSE mount of an s3:// source by the cachalot binary, in the
//! foreground, unmounted (and the daemon stopped) by the guard's Drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{cachalot_bin, S3Server, BUCKET, KEY_ID, SECRET};

pub struct Mounted {
    child: Option<Child>,
    pub mnt: tempfile::TempDir,
    pub log: PathBuf,
}

/// One reading of the mount table for every suite.
pub use crate::common::is_mounted;

/// The command line of a foreground mount (for tests that expect failure).
pub fn mount_command(server: &S3Server, prefix: &str, mnt: &Path, cache: &Path) -> Command {
    mount_source_command(server, &format!("s3://{BUCKET}/{prefix}"), mnt, cache)
}

pub fn mount_source_command(server: &S3Server, source: &str, mnt: &Path, cache: &Path) -> Command {
    command_at(&server.endpoint(), source, mnt, cache)
}

/// The command line of a foreground mount reaching S3 at `endpoint`.
pub fn command_at(endpoint: &str, source: &str, mnt: &Path, cache: &Path) -> Command {
    let mut cmd = Command::new(cachalot_bin());
    cmd.arg("mount")
        .arg(source)
        .arg(mnt)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--endpoint")
        .arg(endpoint)
        .arg("--path-style")
        .arg("--foreground")
        .env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env_remove("AWS_SESSION_TOKEN")
        .env("RUST_LOG", "info");
    cmd
}

impl Mounted {
    pub fn start(server: &S3Server, prefix: &str, cache: &Path, extra: &[&str]) -> Mounted {
        Self::start_with_env(server, prefix, cache, extra, &[])
    }

    pub fn start_with_env(
        server: &S3Server,
        prefix: &str,
        cache: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Mounted {
        Self::start_edited(server, prefix, cache, |cmd| {
            cmd.args(extra).envs(env.iter().copied());
        })
    }

    /// A mount whose command line and environment `edit` changes first
    /// (e.g. to take the S3 keys away).
    pub fn start_edited(
        server: &S3Server,
        prefix: &str,
        cache: &Path,
        edit: impl FnOnce(&mut Command),
    ) -> Mounted {
        Self::start_at(&server.endpoint(), prefix, cache, edit)
    }

    /// Like [`Mounted::start_edited`], reaching S3 at `endpoint` (a proxy
    /// in front of the server).
    pub fn start_at(
        endpoint: &str,
        prefix: &str,
        cache: &Path,
        edit: impl FnOnce(&mut Command),
    ) -> Mounted {
        let mnt = tempfile::tempdir().unwrap();
        static MOUNTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MOUNTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = cache.join(format!("test-mount-{n}.log"));
        let source = format!("s3://{BUCKET}/{prefix}");
        let mut cmd = command_at(endpoint, &source, mnt.path(), cache);
        edit(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
        let mut child = cmd.spawn().expect("start cachalot");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(mnt.path()) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "cachalot exited ({status}) before mounting:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "mount did not appear within 30s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Mounted {
            child: Some(child),
            mnt,
            log,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.path().join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// `kill -9` the daemon (simulated crash) and detach the dead mount.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        detach(self.mnt.path());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn detach(mnt: &Path) {
    if is_mounted(mnt) {
        let _ = nix::mount::umount2(mnt, nix::mount::MntFlags::MNT_DETACH);
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: the daemon unmounts and exits.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        detach(self.mnt.path());
    }
}
