//! Test servers for the S3 backend: SeaweedFS (`weed mini`, strict SigV4)
//! and moto (lenient), on 127.0.0.1, one per test, killed by a guard's Drop
//! and, should the test process die, by PR_SET_PDEATHSIG. Every server has
//! its own ports and data dir, so a test may kill and restart its SeaweedFS
//! (`prepare_restart`) without disturbing any other test.

#![allow(dead_code)]

pub mod mount;
pub mod proxy;
pub mod sts;
pub mod tls;

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use cachalot::backend::s3::{Credentials, S3Backend, S3Config, S3Options};
use object_store::aws::{AmazonS3, AmazonS3Builder};

pub const KEY_ID: &str = "cachalotkey";
pub const SECRET: &str = "cachalotsecret";
pub const BUCKET: &str = "test";
/// A second identity that may only read and list (for AccessDenied).
pub const READER_KEY_ID: &str = "readerkey";
pub const READER_SECRET: &str = "readersecret";

static NEXT_BASE: AtomicU16 = AtomicU16::new(0);

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// `count` consecutive free ports whose +10000 neighbours (SeaweedFS's gRPC
/// ports) are free too.
fn free_port_block(count: u16) -> u16 {
    let seed = (std::process::id() % 1000) as u16;
    for _ in 0..500 {
        let n = NEXT_BASE.fetch_add(1, Ordering::Relaxed);
        let base = 20_000 + (seed.wrapping_mul(37).wrapping_add(n.wrapping_mul(11))) % 25_000;
        if (base..base + count).all(|p| port_free(p) && port_free(p + 10_000)) {
            return base;
        }
    }
    panic!("no free block of ports found");
}

fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; it only sets a flag of the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn wait_for_port(port: u16, child: &mut Child, what: &str, log: &Path) {
    if let Err(e) = try_wait_for_port(port, child, what, log) {
        panic!("{e}");
    }
}

/// Wait until `port` accepts connections; an error if `child` exited first.
fn try_wait_for_port(port: u16, child: &mut Child, what: &str, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{what} exited early ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} not listening on {port} after 60s");
}

/// A plain object_store client of the bucket on `port`.
fn store_at(port: u16) -> AmazonS3 {
    cachalot::backend::s3::install_tls_provider();
    AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_region("us-east-1")
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_access_key_id(KEY_ID)
        .with_secret_access_key(SECRET)
        .build()
        .unwrap()
}

/// Whether the bucket can be listed within `wait`. On a thread with its own
/// runtime: callers may be inside a runtime already.
fn bucket_appears(port: u16, wait: Duration) -> bool {
    use object_store::ObjectStore;
    let store = store_at(port);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let deadline = Instant::now() + wait;
        loop {
            if rt.block_on(store.list_with_delimiter(None)).is_ok() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .join()
    .expect("waiting for the bucket")
}

/// A running S3 server; killed on drop.
pub struct S3Server {
    pub port: u16,
    /// S3 over https (SeaweedFS started by `seaweed_https`), beside `port`.
    pub https_port: Option<u16>,
    child: Child,
    pub dir: tempfile::TempDir,
    pub kind: &'static str,
}

impl S3Server {
    /// SeaweedFS with SigV4 enforced and bucket `test` created.
    pub fn seaweed() -> S3Server {
        Self::start_seaweed(false)
    }

    /// The same, also serving S3 over https on `https_port`, with a
    /// certificate from a throwaway CA (`ca_file`, for `SSL_CERT_FILE`).
    pub fn seaweed_https() -> S3Server {
        Self::start_seaweed(true)
    }

    fn start_seaweed(https: bool) -> S3Server {
        let dir = tempfile::tempdir().expect("tempdir");
        if https {
            tls::make_certificates(dir.path());
        }
        let mut base = free_port_block(WEED_PORTS);
        let log = dir.path().join("weed.log");
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        std::fs::write(
            dir.path().join("s3.json"),
            format!(
                r#"{{"identities":[
  {{"name":"admin","credentials":[{{"accessKey":"{KEY_ID}","secretKey":"{SECRET}"}}],
    "actions":["Admin","Read","Write","List","Tagging"]}},
  {{"name":"reader","credentials":[{{"accessKey":"{READER_KEY_ID}","secretKey":"{READER_SECRET}"}}],
    "actions":["Read","List"]}}]}}"#
            ),
        )
        .unwrap();
        // A port of the block can be taken between the check and weed's
        // bind (an outgoing connection of a parallel test gets it as its
        // ephemeral port): weed then exits at start. Try another block.
        let mut attempt = 0;
        let (child, port) = loop {
            let mut cmd = weed_mini(dir.path(), base, https);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
                .stderr(Stdio::from(
                    std::fs::File::create(dir.path().join("weed.err")).unwrap(),
                ));
            die_with_parent(&mut cmd);
            let mut child = cmd
                .spawn()
                .expect("start weed (run scripts/install-s3-deps.sh)");
            let port = base + 3;
            // Listening is not enough: under load, weed's S3 port has come
            // up once while the bucket it creates never did (one of its
            // other ports, taken meanwhile?). Start over then, too.
            let started = try_wait_for_port(port, &mut child, "weed mini", &log).and_then(|()| {
                match bucket_appears(port, Duration::from_secs(30)) {
                    true => Ok(()),
                    false => {
                        let _ = child.kill();
                        let _ = child.wait();
                        Err(format!(
                            "weed mini's bucket {BUCKET} did not appear within 30 s: {}",
                            std::fs::read_to_string(&log).unwrap_or_default()
                        ))
                    }
                }
            });
            match started {
                Ok(()) => break (child, port),
                Err(e) if attempt < 2 => {
                    eprintln!("{e}\n(retrying on other ports)");
                    attempt += 1;
                    base = free_port_block(WEED_PORTS);
                    // A fresh data directory: the old one names the old ports.
                    let data = dir.path().join("data");
                    let _ = std::fs::remove_dir_all(&data);
                    std::fs::create_dir_all(&data).unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        };
        let server = S3Server {
            port,
            https_port: https.then_some(port - 3 + HTTPS_OFFSET),
            child,
            dir,
            kind: "seaweedfs",
        };
        server.wait_for_auth();
        server
    }

    /// A restart of this SeaweedFS, prepared in advance: a shell, spawned
    /// now, that `exec`s the same `weed mini` (same ports, same data dir)
    /// when told to. Needed while the test process holds files of a
    /// cachalot mount open: a process spawned then inherits those
    /// descriptors and closes them at exec, which sends FUSE FLUSH for the
    /// very write the restart is meant to interrupt. Call it from the thread
    /// that owns the server: the parent-death signal follows that thread.
    pub fn prepare_restart(&self) -> PreparedRestart {
        assert_eq!(self.kind, "seaweedfs", "only SeaweedFS can be restarted");
        let weed = weed_mini(self.dir.path(), self.port - 3, self.https_port.is_some());
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"read -r _ && exec "$@""#)
            .arg("sh")
            .arg(weed.get_program())
            .args(weed.get_args());
        for (name, value) in weed.get_envs() {
            match value {
                Some(v) => cmd.env(name, v),
                None => cmd.env_remove(name),
            };
        }
        let append = |name: &str| {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(self.dir.path().join(name))
                .unwrap()
        };
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::from(append("weed.log")))
            .stderr(Stdio::from(append("weed.err")));
        die_with_parent(&mut cmd);
        PreparedRestart {
            child: Some(cmd.spawn().expect("preparing a weed restart")),
        }
    }

    /// The last lines of the server's output, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for name in ["weed.log", "weed.err"] {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {name}\n"));
            out.push_str(&lines[lines.len().saturating_sub(15)..].join("\n"));
            out.push('\n');
        }
        out
    }

    /// Everything the server printed (its request log included).
    pub fn output(&self) -> String {
        ["weed.log", "weed.err", "moto.log", "moto.err"]
            .iter()
            .filter_map(|name| std::fs::read_to_string(self.dir.path().join(name)).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGKILL the server (a crash, an OOM kill) and reap it; its ports
    /// close with it. Nothing is restarted (see `prepare_restart`).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// moto_server (no SigV4 enforcement) with bucket `test` created.
    pub fn moto() -> S3Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port_block(1);
        let log = dir.path().join("moto.log");
        let mut cmd = Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("moto.err")).unwrap(),
            ));
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .expect("start moto_server (run scripts/install-s3-deps.sh)");
        wait_for_port(port, &mut child, "moto_server", &log);
        // moto accepts unsigned requests: create the bucket by hand.
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "PUT /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "create bucket: {answer}"
        );
        let server = S3Server {
            port,
            https_port: None,
            child,
            dir,
            kind: "moto",
        };
        server.wait_for_bucket();
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The https endpoint of a server from `seaweed_https`.
    pub fn https_endpoint(&self) -> String {
        let port = self.https_port.expect("a server started by seaweed_https");
        format!("https://127.0.0.1:{port}")
    }

    /// The CA that signed the https certificate (`SSL_CERT_FILE`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A plain object_store client: the test's independent view of the bucket.
    pub fn store(&self) -> AmazonS3 {
        store_at(self.port)
    }

    /// SeaweedFS loads identities after it starts answering and allows
    /// everything until then: poll until a wrong secret is refused.
    fn wait_for_auth(&self) {
        use object_store::ObjectStore;
        cachalot::backend::s3::install_tls_provider();
        let intruder = AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_access_key_id(KEY_ID)
            .with_secret_access_key("not-the-secret")
            .build()
            .unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            while rt.block_on(intruder.list_with_delimiter(None)).is_ok() {
                assert!(Instant::now() < deadline, "SigV4 never enforced");
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .join()
        .expect("waiting for authentication");
    }

    /// Poll until the bucket answers a listing.
    fn wait_for_bucket(&self) {
        assert!(
            bucket_appears(self.port, Duration::from_secs(60)),
            "bucket {BUCKET} never appeared"
        );
    }

    /// Backend config for `prefix` with the right or the given credentials.
    pub fn config(&self, prefix: &str, staging: &Path) -> S3Config {
        Self::config_for_port(self.port, prefix, staging)
    }

    pub fn config_for_port(port: u16, prefix: &str, staging: &Path) -> S3Config {
        S3Config {
            bucket: BUCKET.into(),
            prefix: prefix.into(),
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            region: None,
            options: S3Options {
                path_style: true,
                max_retries: 2,
                part_size: 5 << 20,
                ..S3Options::default()
            },
            credentials: Credentials::new(KEY_ID, SECRET, None),
            uid: 1000,
            gid: 1000,
            staging_dir: staging.to_path_buf(),
        }
    }

    pub fn backend(&self, prefix: &str, staging: &Path) -> S3Backend {
        S3Backend::new(self.config(prefix, staging)).expect("backend")
    }
}

/// Ports of one `weed mini`: `base..base + WEED_PORTS`.
const WEED_PORTS: u16 = 8;
/// Where S3 over https listens, from `base`.
const HTTPS_OFFSET: u16 = 7;

/// `weed mini` serving bucket `test` from `dir` on ports `base..base + 7`
/// (S3 on `base + 3`), and with `https` S3 over https on `base + 7` too
/// (the certificate `make_certificates` left in `dir`); stdio is left to
/// the caller.
fn weed_mini(dir: &Path, base: u16, https: bool) -> Command {
    let mut cmd = Command::new("weed");
    cmd.arg("mini")
        .arg(format!("-dir={}", dir.join("data").display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false"])
        .arg(format!("-bucket={BUCKET}"))
        .arg(format!("-master.port={}", base))
        .arg(format!("-volume.port={}", base + 1))
        .arg(format!("-filer.port={}", base + 2))
        .arg(format!("-s3.port={}", base + 3))
        .arg(format!("-admin.port={}", base + 4))
        .arg(format!("-webdav.port={}", base + 5))
        .arg(format!("-debug.port={}", base + 6))
        .args([
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ])
        .arg(format!("-s3.config={}", dir.join("s3.json").display()));
    if https {
        cmd.arg(format!(
            "-s3.cert.file={}",
            dir.join("server.pem").display()
        ))
        .arg(format!("-s3.key.file={}", dir.join("server.key").display()))
        .arg(format!("-s3.port.https={}", base + HTTPS_OFFSET));
    }
    cmd
        // Identities come from -s3.config; with AWS_* set, weed mini
        // would use those alone.
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        // weed puts unix sockets and scratch volumes in $TMPDIR and
        // never removes them: keep them inside our temp dir.
        .env("TMPDIR", dir.join("tmp"))
        .current_dir(dir);
    cmd
}

/// See [`S3Server::prepare_restart`]. Dropped unused, the waiting shell is
/// killed.
pub struct PreparedRestart {
    child: Option<Child>,
}

impl PreparedRestart {
    /// Kill the running server, keep it down for `down`, then `start`.
    pub fn kill_and_restart(self, server: &mut S3Server, down: Duration) {
        server.kill();
        std::thread::sleep(down);
        self.start(server);
    }

    /// Start the prepared server (after `S3Server::kill`) and wait until it
    /// serves the bucket with SigV4 enforced again.
    pub fn start(mut self, server: &mut S3Server) {
        let mut child = self.child.take().expect("prepared child");
        let mut stdin = child.stdin.take().expect("piped stdin");
        std::io::Write::write_all(&mut stdin, b"go\n").unwrap();
        drop(stdin);
        // From here the server's Drop kills the new process.
        server.child = child;
        let log = server.dir.path().join("weed.log");
        wait_for_port(server.port, &mut server.child, "restarted weed mini", &log);
        server.wait_for_bucket();
        server.wait_for_auth();
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

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.kind == "seaweedfs" {
            remove_weed_sockets(self.port - 3);
        }
    }
}

/// weed creates `/tmp/seaweedfs-<service>-<port>.sock` (fixed path, not
/// $TMPDIR) and leaves them: remove the ones of our ports.
fn remove_weed_sockets(base: u16) {
    let ports: Vec<String> = (base..base + 7)
        .flat_map(|p| [p, p + 10_000])
        .map(|p| format!("-{p}.sock"))
        .collect();
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("seaweedfs-") && ports.iter().any(|p| name.ends_with(p)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Path of the cachalot binary built for the integration tests.
pub fn cachalot_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cachalot"))
}
