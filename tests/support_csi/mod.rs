//! Test harness for the CSI plugin: a real `cachalot csi` process on a unix
//! socket in a temp dir, a tonic client, and a guard that always cleans up
//! (plugin, mount children, FUSE and bind mounts) even when a test panics.
#![allow(dead_code)]

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cachalot::csi::proto::controller_client::ControllerClient;
use cachalot::csi::proto::identity_client::IdentityClient;
use cachalot::csi::proto::node_client::NodeClient;
use cachalot::csi::proto::volume_capability::access_mode::Mode;
use cachalot::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use cachalot::csi::proto::*;
use tonic::transport::{Channel, Endpoint};

pub struct Plugin {
    child: Child,
}

impl Plugin {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// One test's world: temp root with source/, cache/, state/, kubelet/ and
/// the plugin. Dropping it tears everything down.
pub struct Env {
    pub root: tempfile::TempDir,
    pub plugin: Option<Plugin>,
    pub rust_log: String,
    /// The node's mounter, in its own emulated container (`with_mounter`);
    /// the plugin then runs in one too and uses it.
    pub mounter: Option<Container>,
    /// Mounters started so far (numbers their log files).
    mounters_started: u32,
    /// `--metrics-addr` ports of the plugin and of every mounter.
    pub metrics_ports: Option<(u16, u16)>,
    /// Environment of the plugin and the mounters besides the test's.
    pub extra_env: Vec<(String, String)>,
}

/// A process in its own PID namespace, as a container runs: killing the
/// container (SIGKILL to `unshare`, whose `--kill-child` then kills the
/// namespace's init) kills every process inside, whatever `setsid` they did.
pub struct Container {
    pub child: Child,
}

impl Container {
    pub fn start(cmd: Command, log: &Path) -> Container {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let program = cmd.get_program().to_owned();
        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        let mut wrapped = Command::new("unshare");
        wrapped
            .args(["--pid", "--fork", "--kill-child", "--"])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        // The container dies with the test process.
        unsafe {
            wrapped.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        Container {
            child: wrapped.spawn().expect("starting unshare (util-linux)"),
        }
    }

    /// Kill the container and everything in it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait for the container's process to end by itself.
    pub fn wait_exit(mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub struct Clients {
    pub identity: IdentityClient<Channel>,
    pub controller: ControllerClient<Channel>,
    pub node: NodeClient<Channel>,
}

/// The calls of the kubelet/provisioner sequence that a test expects to
/// succeed, in one place: a failure panics naming the call.
impl Clients {
    /// CreateVolume; the volume.
    pub async fn create(&mut self, name: &str, params: HashMap<String, String>) -> Volume {
        self.controller
            .create_volume(create_req(name, params))
            .await
            .unwrap_or_else(|e| panic!("CreateVolume {name}: {e}"))
            .into_inner()
            .volume
            .expect("CreateVolume answered without a volume")
    }

    pub async fn stage(&mut self, vol: &Volume, staging: &Path) {
        self.node
            .node_stage_volume(stage_req(vol, staging))
            .await
            .unwrap_or_else(|e| panic!("NodeStageVolume {}: {e}", vol.volume_id));
    }

    pub async fn publish(&mut self, vol: &Volume, staging: &Path, target: &Path, read_only: bool) {
        self.node
            .node_publish_volume(publish_req(vol, staging, target, read_only))
            .await
            .unwrap_or_else(|e| panic!("NodePublishVolume {}: {e}", target.display()));
    }

    pub async fn unpublish(&mut self, vol: &Volume, target: &Path) {
        self.node
            .node_unpublish_volume(unpublish_req(vol, target))
            .await
            .unwrap_or_else(|e| panic!("NodeUnpublishVolume {}: {e}", target.display()));
    }

    pub async fn unstage(&mut self, vol: &Volume, staging: &Path) {
        self.node
            .node_unstage_volume(unstage_req(vol, staging))
            .await
            .unwrap_or_else(|e| panic!("NodeUnstageVolume {}: {e}", vol.volume_id));
    }
}

impl Env {
    pub fn new() -> Env {
        Env::with_log("info")
    }

    pub fn with_log(rust_log: &str) -> Env {
        let root = tempfile::Builder::new()
            .prefix("cachalot-csi-test-")
            .tempdir()
            .expect("temp dir");
        for d in ["source", "cache", "state", "kubelet"] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        let mut env = Env {
            root,
            plugin: None,
            rust_log: rust_log.to_string(),
            mounter: None,
            mounters_started: 0,
            metrics_ports: None,
            extra_env: Vec::new(),
        };
        env.start_plugin();
        env
    }

    /// A node as deployed: a mounter and the plugin, each in its own
    /// emulated container; the plugin asks the mounter to stage.
    pub fn with_mounter() -> Env {
        Env::with_mounter_metrics(None)
    }

    /// The same, the plugin and the mounters serving metrics on these
    /// ports (plugin, mounter).
    pub fn with_mounter_metrics(metrics_ports: Option<(u16, u16)>) -> Env {
        Env::with_mounter_setup(metrics_ports, Vec::new())
    }

    /// A node as deployed, the plugin and the mounter with `vars` in their
    /// environment (what the DaemonSet would set).
    pub fn with_mounter_env(vars: &[(&str, String)]) -> Env {
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.clone()));
        Env::with_mounter_setup(None, vars.collect())
    }

    fn with_mounter_setup(
        metrics_ports: Option<(u16, u16)>,
        extra_env: Vec<(String, String)>,
    ) -> Env {
        let root = tempfile::Builder::new()
            .prefix("cachalot-csi-test-")
            .tempdir()
            .expect("temp dir");
        for d in [
            "source",
            "cache",
            "state",
            "kubelet",
            "mounter-state",
            "run",
        ] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        let mut env = Env {
            root,
            plugin: None,
            rust_log: "info".into(),
            mounter: None,
            mounters_started: 0,
            metrics_ports,
            extra_env,
        };
        let mounter = env.start_mounter();
        env.wait_for_mounter();
        env.mounter = Some(mounter);
        env.start_plugin();
        env
    }

    pub fn mounter_socket(&self) -> PathBuf {
        self.path("run/mounter.sock")
    }

    pub fn mounter_log(&self, n: u32) -> PathBuf {
        self.path(&format!("mounter-{n}.log"))
    }

    /// Wait until the latest mounter took its predecessor's sessions over
    /// (until then the predecessor still answers on the socket and serves).
    pub fn wait_for_takeover(&self) {
        let log = self.mounter_log(self.mounters_started);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("took over from the previous mounter")
        {
            assert!(
                Instant::now() < deadline,
                "the takeover never finished:\n{}",
                self.mounter_logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every mounter's log so far.
    pub fn mounter_logs(&self) -> String {
        (1..=self.mounters_started)
            .map(|n| {
                format!(
                    "--- mounter {n} ---\n{}",
                    std::fs::read_to_string(self.mounter_log(n)).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Start a mounter container on the node's socket (a second one takes
    /// over from the running one). Does not wait.
    pub fn start_mounter(&mut self) -> Container {
        check_binary();
        self.mounters_started += 1;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cachalot"));
        cmd.arg("mounter")
            .arg("--socket")
            .arg(self.mounter_socket())
            .arg("--state-dir")
            .arg(self.path("mounter-state"))
            .arg("--cache-dir")
            .arg(self.path("cache"))
            .env("RUST_LOG", &self.rust_log)
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)));
        if let Some((_, port)) = self.metrics_ports {
            // As deployed: the predecessor idles after a handover (its
            // container must not restart), so it must let go of the port.
            cmd.arg("--metrics-addr")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--idle-after-handover");
        }
        Container::start(cmd, &self.mounter_log(self.mounters_started))
    }

    /// Wait until a mounter answers on the socket.
    pub fn wait_for_mounter(&self) {
        let client =
            cachalot::mounter::MounterClient::new(self.mounter_socket(), Duration::from_secs(5));
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.list().is_err() {
            assert!(
                Instant::now() < deadline,
                "the mounter never answered:\n{}",
                self.mounter_logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The mounter's sessions, as `cachalot sessions --json` reports them.
    pub fn sessions(&self) -> cachalot::mounter::protocol::SessionList {
        cachalot::mounter::MounterClient::new(self.mounter_socket(), Duration::from_secs(10))
            .list()
            .expect("listing the mounter's sessions")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }
    pub fn source(&self) -> PathBuf {
        self.path("source")
    }
    pub fn source_url(&self) -> String {
        format!("file://{}", self.source().display())
    }
    pub fn socket(&self) -> PathBuf {
        self.path("csi.sock")
    }
    pub fn log_file(&self) -> PathBuf {
        self.path("plugin.log")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }
    pub fn staging(&self, name: &str) -> PathBuf {
        self.path(&format!(
            "kubelet/plugins/cachalot.csi.dev/{name}/globalmount"
        ))
    }
    pub fn target(&self, pod: &str) -> PathBuf {
        self.path(&format!(
            "kubelet/pods/{pod}/volumes/kubernetes.io~csi/pv/mount"
        ))
    }

    pub fn start_plugin(&mut self) {
        check_binary();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cachalot"));
        cmd.arg("csi")
            .arg("--endpoint")
            .arg(format!("unix://{}", self.socket().display()))
            .arg("--node-id")
            .arg("test-node-1")
            .arg("--cache-dir")
            .arg(self.path("cache"))
            .arg("--state-dir")
            .arg(self.path("state"))
            .env("RUST_LOG", &self.rust_log)
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)));
        if let Some((port, _)) = self.metrics_ports {
            cmd.arg("--metrics-addr").arg(format!("127.0.0.1:{port}"));
        }
        if self.mounter.is_some() {
            cmd.arg("--mounter-socket").arg(self.mounter_socket());
            let container = Container::start(cmd, &self.log_file());
            self.plugin = Some(Plugin {
                child: container.child,
            });
            self.wait_for_plugin();
            return;
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        // The plugin dies with the test process; its mount children do not
        // (own session, by design) and are cleaned up by Drop.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting cachalot csi");
        self.plugin = Some(Plugin { child });
        self.wait_for_plugin();
    }

    fn wait_for_plugin(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            if let Some(p) = self.plugin.as_mut() {
                if let Ok(Some(status)) = p.child.try_wait() {
                    panic!("plugin exited early ({status}):\n{}", self.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "plugin socket never appeared:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL the plugin (mount children survive).
    pub fn kill_plugin(&mut self) {
        if let Some(mut p) = self.plugin.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn stop_plugin(&mut self) -> std::process::ExitStatus {
        let mut p = self.plugin.take().expect("plugin running");
        unsafe {
            libc::kill(p.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(s)) = p.child.try_wait() {
                return s;
            }
            assert!(Instant::now() < deadline, "plugin ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub async fn clients(&self) -> Clients {
        let channel = connect(self.socket()).await;
        Clients {
            identity: IdentityClient::new(channel.clone()),
            controller: ControllerClient::new(channel.clone()),
            node: NodeClient::new(channel),
        }
    }

    /// Mount children serving this test (found by their command line).
    pub fn mount_children(&self) -> Vec<u32> {
        processes_mentioning(self.root.path())
            .into_iter()
            .filter(|(_, cmd)| cmd.iter().any(|a| a == "mount"))
            .map(|(pid, _)| pid)
            .collect()
    }
}

/// The integration tests share a cargo target dir with other worktrees; a
/// concurrent build there can replace the binary under test. Say so plainly
/// instead of failing with a confusing clap error.
fn check_binary() {
    static CHECKED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    CHECKED.get_or_init(|| {
        let out = Command::new(env!("CARGO_BIN_EXE_cachalot"))
            .args(["csi", "--help"])
            .output()
            .expect("running the cachalot binary");
        assert!(
            out.status.success(),
            "{} has no `csi` subcommand: another build replaced the binary in the shared \
             target dir; rerun the tests",
            env!("CARGO_BIN_EXE_cachalot")
        );
    });
}

pub async fn connect(socket: PathBuf) -> Channel {
    Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connecting to the plugin socket")
}

fn processes_mentioning(dir: &Path) -> Vec<(u32, Vec<String>)> {
    let needle = dir.to_string_lossy().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if args.iter().any(|a| a.contains(&needle)) {
            out.push((pid, args));
        }
    }
    out
}

/// Mount points below `dir`, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let table = cachalot::csi::mounts::mount_table().unwrap_or_default();
    let mut found: Vec<PathBuf> = table
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

impl Drop for Env {
    fn drop(&mut self) {
        self.kill_plugin();
        if let Some(m) = self.mounter.take() {
            m.kill();
        }
        let root = self.root.path().to_path_buf();
        for _ in 0..3 {
            for m in mounts_below(&root) {
                let c = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()).unwrap();
                unsafe {
                    libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
        for (pid, _) in processes_mentioning(&root) {
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        if std::thread::panicking() {
            eprintln!("--- plugin log ---\n{}", self.log());
            if self.mounters_started > 0 {
                eprintln!("{}", self.mounter_logs());
            }
        }
    }
}

pub fn mount_cap(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

pub fn rwx() -> VolumeCapability {
    mount_cap(Mode::MultiNodeMultiWriter)
}

pub fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn create_req(name: &str, params: HashMap<String, String>) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: 1 << 30,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![rwx()],
        parameters: params,
        ..Default::default()
    }
}

pub fn stage_req(vol: &Volume, staging: &Path) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(rwx()),
        volume_context: vol.volume_context.clone(),
        ..Default::default()
    }
}

pub fn publish_req(
    vol: &Volume,
    staging: &Path,
    target: &Path,
    readonly: bool,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(rwx()),
        readonly,
        volume_context: vol.volume_context.clone(),
        ..Default::default()
    }
}

pub fn unpublish_req(vol: &Volume, target: &Path) -> NodeUnpublishVolumeRequest {
    NodeUnpublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        target_path: target.display().to_string(),
    }
}

pub fn unstage_req(vol: &Volume, staging: &Path) -> NodeUnstageVolumeRequest {
    NodeUnstageVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
    }
}

/// One reading of the mount table for every suite.
pub use crate::common::is_mounted;

/// Wait for a condition (e.g. a process to die).
pub fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CreateSnapshot, called again (as the snapshotter does) until the
/// snapshot is ready.
pub async fn take_snapshot(
    c: &mut Clients,
    name: &str,
    volume_id: &str,
    secrets: HashMap<String, String>,
) -> Snapshot {
    for _ in 0..300 {
        let s = c
            .controller
            .create_snapshot(CreateSnapshotRequest {
                source_volume_id: volume_id.to_string(),
                name: name.to_string(),
                secrets: secrets.clone(),
                ..Default::default()
            })
            .await
            .expect("CreateSnapshot")
            .into_inner()
            .snapshot
            .expect("a snapshot");
        if s.ready_to_use {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("snapshot {name} never became ready");
}

/// CreateVolume, retried (as the provisioner does) while it answers
/// ABORTED: a restore or clone still copying.
pub async fn create_volume_retrying(c: &mut Clients, req: CreateVolumeRequest) -> Volume {
    for _ in 0..300 {
        match c.controller.create_volume(req.clone()).await {
            Ok(r) => return r.into_inner().volume.expect("a volume"),
            Err(e) if e.code() == tonic::Code::Aborted => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("CreateVolume {}: {e:?}", req.name),
        }
    }
    panic!("CreateVolume {} never finished", req.name);
}
