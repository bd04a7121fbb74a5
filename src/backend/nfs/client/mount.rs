//! Portmapper and MOUNT protocol: find the ports, list the exports, and turn
//! an export path into its root file handle.

use std::net::SocketAddr;
use std::time::Duration;

use nfs3_client::tokio::TokioIo;
use nfs3_client::{MountClient, MountError, PortmapperClient};
use nfs3_types::mount::{dirpath, mountstat3};
use nfs3_types::nfs3::nfs_fh3;
use nfs3_types::portmap::{IPPROTO_TCP, PMAP_PORT};
use nfs3_types::rpc::opaque_auth;
use nfs3_types::xdr_codec::Opaque;

use super::pool::{connect, Credential};

const STEP_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_NFS_PORT: u16 = 2049;

async fn timed<T, E: std::fmt::Display>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {STEP_TIMEOUT:?}")),
    }
}

/// Ports of the NFSv3 and MOUNTv3 services over TCP. An explicit NFS port
/// wins; without a portmapper the NFS port defaults to 2049, but MOUNT has
/// no standard port, so then the mount fails with the reason.
pub async fn resolve_ports(host: SocketAddr, nfs_port: Option<u16>) -> Result<(u16, u16), String> {
    let pmap = SocketAddr::new(host.ip(), PMAP_PORT);
    let mut client = match timed("connect to portmapper", connect(pmap)).await {
        Ok(stream) => PortmapperClient::new(TokioIo::new(stream)),
        Err(e) => return Err(format!("{e} (is rpcbind running on the server?)")),
    };
    let mount_port = timed(
        "portmapper lookup of MOUNT v3/tcp",
        client.getport(
            nfs3_types::mount::PROGRAM,
            nfs3_types::mount::VERSION,
            IPPROTO_TCP,
        ),
    )
    .await?;
    let nfs_port = match nfs_port {
        Some(p) => p,
        None => timed(
            "portmapper lookup of NFS v3/tcp",
            client.getport(
                nfs3_types::nfs3::PROGRAM,
                nfs3_types::nfs3::VERSION,
                IPPROTO_TCP,
            ),
        )
        .await
        .unwrap_or(DEFAULT_NFS_PORT),
    };
    Ok((nfs_port, mount_port))
}

async fn mount_client(
    addr: SocketAddr,
    cred: &Credential,
    machine: &str,
) -> Result<MountClient<TokioIo<tokio::net::TcpStream>>, String> {
    let stream = timed("connect to the MOUNT service", connect(addr)).await?;
    Ok(MountClient::new_with_auth(
        TokioIo::new(stream),
        cred.opaque(machine),
        opaque_auth::default(),
    ))
}

/// The server's export list (MOUNT EXPORT procedure).
pub async fn exports(
    addr: SocketAddr,
    cred: &Credential,
    machine: &str,
) -> Result<Vec<String>, String> {
    let mut client = mount_client(addr, cred, machine).await?;
    let list = timed("MOUNT EXPORT", client.export()).await?;
    Ok(list
        .into_inner()
        .into_iter()
        .map(|node| String::from_utf8_lossy(&node.ex_dir.0).into_owned())
        .collect())
}

/// MNT: the root handle of `path`. `Err(Some(stat))` when the server refused.
pub async fn mnt(
    addr: SocketAddr,
    cred: &Credential,
    machine: &str,
    path: &str,
) -> Result<nfs_fh3, (Option<mountstat3>, String)> {
    let mut client = mount_client(addr, cred, machine)
        .await
        .map_err(|e| (None, e))?;
    let dir = dirpath(Opaque::owned(path.as_bytes().to_vec()));
    match tokio::time::timeout(STEP_TIMEOUT, client.mnt(dir)).await {
        Ok(Ok(ok)) => Ok(nfs_fh3 {
            data: Opaque::owned(ok.fhandle.0.into_owned()),
        }),
        Ok(Err(MountError::Denied(stat))) => Err((Some(stat), format!("MNT {path}: {stat}"))),
        Ok(Err(MountError::Rpc(e))) => Err((None, format!("MNT {path}: {e}"))),
        Err(_) => Err((
            None,
            format!("MNT {path}: no answer within {STEP_TIMEOUT:?}"),
        )),
    }
}

/// The export that contains `path`: the longest export that is `path` or a
/// parent of it (component-wise). Returns (export, rest below it).
pub fn split_export<'a>(exports: &'a [String], path: &str) -> Option<(&'a str, String)> {
    let norm = |p: &str| -> String {
        let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
        format!("/{}", parts.join("/"))
    };
    let path = norm(path);
    exports
        .iter()
        .filter_map(|e| {
            let export = norm(e);
            let rest = if export == "/" {
                Some(path.trim_start_matches('/').to_string())
            } else if path == export {
                Some(String::new())
            } else {
                path.strip_prefix(&format!("{export}/")).map(str::to_string)
            };
            rest.map(|r| (e.as_str(), export.len(), r))
        })
        .max_by_key(|(_, len, _)| *len)
        .map(|(e, _, r)| (e, r))
}

#[cfg(test)]
mod tests {
    use super::split_export;

    #[test]
    fn picks_the_longest_containing_export() {
        let exports = vec![
            "/export".to_string(),
            "/export/big".to_string(),
            "/other".to_string(),
        ];
        assert_eq!(
            split_export(&exports, "/export"),
            Some(("/export", String::new()))
        );
        assert_eq!(
            split_export(&exports, "/export/a/b"),
            Some(("/export", "a/b".to_string()))
        );
        assert_eq!(
            split_export(&exports, "/export/big/x"),
            Some(("/export/big", "x".to_string()))
        );
        assert_eq!(split_export(&exports, "/exportx"), None);
        assert_eq!(split_export(&exports, "/"), None);
        let root = vec!["/".to_string()];
        assert_eq!(split_export(&root, "/a"), Some(("/", "a".to_string())));
    }
}
