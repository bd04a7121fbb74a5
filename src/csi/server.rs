//! The gRPC shell: unix socket, service registration, graceful shutdown.
//! Each RPC logs its name and volume ID only (requests may carry secrets)
//! and delegates to the plain services.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::controller::ControllerService;
use super::host::{MounterHost, SessionHost};
use super::identity::IdentityService;
use super::node::NodeService;
use super::proto::controller_server::{Controller, ControllerServer};
use super::proto::identity_server::{Identity, IdentityServer};
use super::proto::node_server::{Node, NodeServer};
use super::proto::*;
use super::state::StateDir;
use super::supervisor::Supervisor;
use crate::mounter::MounterClient;

#[derive(Debug, Clone)]
pub struct CsiConfig {
    pub endpoint: String,
    pub node_id: String,
    pub controller: bool,
    pub node: bool,
    pub cache_dir: PathBuf,
    pub state_dir: PathBuf,
    pub mount_timeout: Duration,
    /// The node's mounter (see `cachalot mounter`); None: mount children.
    pub mounter_socket: Option<PathBuf>,
}

/// Why the plugin could not start serving, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("endpoint '{0}' must be unix:///absolute/path (TCP endpoints are not supported)")]
    Endpoint(String),
    /// The socket path is taken; the message says by what.
    #[error("{0}")]
    SocketTaken(String),
    #[error("recovering staged volumes")]
    Recover(#[source] tokio::task::JoinError),
    #[error("gRPC server")]
    Grpc(#[source] tonic::transport::Error),
}

fn io_failed(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// `unix:///csi/csi.sock`, `unix:/csi/csi.sock` or `/csi/csi.sock`.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ServeError> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if !path.starts_with('/') {
        return Err(ServeError::Endpoint(endpoint.to_string()));
    }
    Ok(PathBuf::from(path))
}

/// Remove a socket left by a previous run, unless something still answers
/// on it (then another plugin is running: refuse to steal its socket).
fn clear_stale_socket(path: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_failed(format!("checking {}", path.display()))(e)),
        Ok(m) if !m.file_type().is_socket() => Err(ServeError::SocketTaken(format!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ))),
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::SocketTaken(format!(
                    "another process is serving {}; refusing to replace it",
                    path.display()
                )));
            }
            tracing::info!(path = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(io_failed(format!(
                "removing stale socket {}",
                path.display()
            )))
        }
    }
}

macro_rules! call {
    ($name:literal, $id:expr, $body:expr) => {{
        tracing::debug!(rpc = $name, volume_id = %$id, "call");
        let result: Result<_, Status> = $body;
        match &result {
            Ok(_) => tracing::debug!(rpc = $name, volume_id = %$id, "ok"),
            Err(s) => tracing::warn!(rpc = $name, volume_id = %$id, code = ?s.code(), message = %s.message(), "failed"),
        }
        result.map(Response::new)
    }};
}

fn unimplemented<T>(what: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not supported by cachalot"
    )))
}

struct IdentityGrpc(Arc<IdentityService>);
struct ControllerGrpc(Arc<ControllerService>);
struct NodeGrpc(Arc<NodeService>);

#[tonic::async_trait]
impl Identity for IdentityGrpc {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        call!("GetPluginInfo", "-", Ok(self.0.get_plugin_info()))
    }
    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        call!(
            "GetPluginCapabilities",
            "-",
            Ok(self.0.get_plugin_capabilities())
        )
    }
    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        call!("Probe", "-", self.0.probe())
    }
}

#[tonic::async_trait]
impl Controller for ControllerGrpc {
    async fn create_volume(
        &self,
        r: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let r = r.into_inner();
        let name = r.name.clone();
        call!("CreateVolume", name, self.0.create_volume(r).await)
    }
    async fn delete_volume(
        &self,
        r: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let r = r.into_inner();
        let id = r.volume_id.clone();
        call!("DeleteVolume", id, self.0.delete_volume(r).await)
    }
    async fn controller_publish_volume(
        &self,
        _: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        unimplemented("ControllerPublishVolume")
    }
    async fn controller_unpublish_volume(
        &self,
        _: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        unimplemented("ControllerUnpublishVolume")
    }
    async fn validate_volume_capabilities(
        &self,
        r: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let r = r.into_inner();
        let id = r.volume_id.clone();
        call!(
            "ValidateVolumeCapabilities",
            id,
            self.0.validate_volume_capabilities(r).await
        )
    }
    async fn list_volumes(
        &self,
        r: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        call!(
            "ListVolumes",
            "-",
            self.0.list_volumes(r.into_inner()).await
        )
    }
    async fn get_capacity(
        &self,
        r: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        call!(
            "GetCapacity",
            "-",
            self.0.get_capacity(r.into_inner()).await
        )
    }
    async fn controller_get_capabilities(
        &self,
        _: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        call!(
            "ControllerGetCapabilities",
            "-",
            Ok(self.0.get_capabilities())
        )
    }
    async fn create_snapshot(
        &self,
        r: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        let r = r.into_inner();
        let id = r.source_volume_id.clone();
        call!("CreateSnapshot", id, self.0.create_snapshot(r).await)
    }
    async fn delete_snapshot(
        &self,
        r: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        let r = r.into_inner();
        let id = r.snapshot_id.clone();
        call!("DeleteSnapshot", id, self.0.delete_snapshot(r).await)
    }
    async fn list_snapshots(
        &self,
        r: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        call!(
            "ListSnapshots",
            "-",
            self.0.list_snapshots(r.into_inner()).await
        )
    }
    async fn controller_expand_volume(
        &self,
        r: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        let r = r.into_inner();
        let id = r.volume_id.clone();
        call!("ControllerExpandVolume", id, self.0.expand_volume(r).await)
    }
    async fn controller_get_volume(
        &self,
        r: Request<ControllerGetVolumeRequest>,
    ) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        let r = r.into_inner();
        let id = r.volume_id.clone();
        call!(
            "ControllerGetVolume",
            id,
            self.0.controller_get_volume(r).await
        )
    }
    async fn controller_modify_volume(
        &self,
        _: Request<ControllerModifyVolumeRequest>,
    ) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        unimplemented("ControllerModifyVolume")
    }
}

#[tonic::async_trait]
impl Node for NodeGrpc {
    async fn node_stage_volume(
        &self,
        r: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let r = r.into_inner();
        let id = r.volume_id.clone();
        call!("NodeStageVolume", id, self.0.stage_volume(r).await)
    }
    async fn node_unstage_volume(
        &self,
        r: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let r = r.into_inner();
        let id = r.volume_id.clone();
        call!("NodeUnstageVolume", id, self.0.unstage_volume(r).await)
    }
    async fn node_publish_volume(
        &self,
        r: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let r = r.into_inner();
        let id = r.volume_id.clone();
        call!("NodePublishVolume", id, self.0.publish_volume(r).await)
    }
    async fn node_unpublish_volume(
        &self,
        r: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let r = r.into_inner();
        let id = r.volume_id.clone();
        call!("NodeUnpublishVolume", id, self.0.unpublish_volume(r).await)
    }
    async fn node_get_volume_stats(
        &self,
        r: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let r = r.into_inner();
        let id = r.volume_id.clone();
        call!("NodeGetVolumeStats", id, self.0.get_volume_stats(r).await)
    }
    async fn node_expand_volume(
        &self,
        r: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        let r = r.into_inner();
        let id = r.volume_id.clone();
        call!("NodeExpandVolume", id, self.0.expand_volume(r).await)
    }
    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        call!("NodeGetCapabilities", "-", Ok(self.0.get_capabilities()))
    }
    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        call!("NodeGetInfo", "-", Ok(self.0.get_info()))
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("signal received: stopping the gRPC server (mounts stay up)");
}

/// How often the keeper looks for a mounter that restarted.
const KEEPER_POLL: Duration = Duration::from_millis(250);

/// Run the plugin until SIGTERM/SIGINT. Staged mounts are left running on
/// exit: they belong to the pods, and the next plugin process adopts them.
pub async fn run(cfg: CsiConfig) -> Result<(), ServeError> {
    let (controller, node) = if !cfg.controller && !cfg.node {
        (true, true)
    } else {
        (cfg.controller, cfg.node)
    };
    std::fs::create_dir_all(&cfg.cache_dir).map_err(io_failed(format!(
        "creating cache directory {}",
        cfg.cache_dir.display()
    )))?;
    let state = StateDir::open(&cfg.state_dir).map_err(io_failed(format!(
        "opening state directory {}",
        cfg.state_dir.display()
    )))?;
    let socket = socket_path(&cfg.endpoint)?;
    clear_stale_socket(&socket)?;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(io_failed(format!("creating {}", dir.display())))?;
    }

    let identity = IdentityGrpc(Arc::new(IdentityService {
        controller,
        cache_dir: cfg.cache_dir.clone(),
        state_dir: cfg.state_dir.clone(),
    }));
    let mut router = tonic::transport::Server::builder()
        .layer(crate::metrics::CsiMetricsLayer)
        .add_service(IdentityServer::new(identity));
    if controller {
        router = router.add_service(ControllerServer::new(ControllerGrpc(Arc::new(
            ControllerService::new(state.clone(), cfg.cache_dir.clone()),
        ))));
    }
    if node {
        let host: Box<dyn SessionHost> = match &cfg.mounter_socket {
            Some(socket) => {
                // A stage mounts (backend checks included) within the
                // mount timeout; the exchange may take a little longer.
                let client =
                    MounterClient::new(socket, cfg.mount_timeout + Duration::from_secs(15));
                let host = Arc::new(MounterHost::new(client));
                match host.refresh_kept() {
                    Ok(n) => {
                        tracing::info!(socket = %socket.display(), sessions = n, "using the node's mounter; keeping its sessions' descriptors")
                    }
                    Err(e) => tracing::warn!(error = %e, "the node's mounter does not answer yet"),
                }
                let keeper = Arc::clone(&host);
                std::thread::Builder::new()
                    .name("keeper".into())
                    .spawn(move || keeper.keep(KEEPER_POLL))
                    .map_err(io_failed("starting the keeper thread"))?;
                Box::new(host)
            }
            None => {
                tracing::warn!("no --mounter-socket: volumes run in mount children of this plugin and die with its container");
                let exe = std::env::current_exe()
                    .map_err(io_failed("locating the cachalot binary for mount children"))?;
                Box::new(Supervisor::new(exe, cfg.mount_timeout))
            }
        };
        let svc = Arc::new(NodeService::new(
            cfg.node_id.clone(),
            cfg.cache_dir.clone(),
            state.clone(),
            host,
        ));
        // Before serving: kubelet's first calls after a restart must see the
        // re-established mounts.
        let s = Arc::clone(&svc);
        tokio::task::spawn_blocking(move || s.recover())
            .await
            .map_err(ServeError::Recover)?;
        router = router.add_service(NodeServer::new(NodeGrpc(svc)));
    }

    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(io_failed(format!("listening on {}", socket.display())))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tracing::info!(endpoint = %cfg.endpoint, node_id = %cfg.node_id, controller, node, "CSI plugin serving");
    let served = router
        .serve_with_incoming_shutdown(incoming, shutdown_signal())
        .await;
    let _ = std::fs::remove_file(&socket);
    served.map_err(ServeError::Grpc)?;
    tracing::info!("CSI plugin stopped");
    Ok(())
}
