//! nfs:// sources: DNS, portmapper, NFS and MOUNT ports, the export list
//! against the share, then the write probe as the chosen identity (the
//! backend's own preflight, so `mount` and NodeStage word it the same).

use std::net::SocketAddr;

use super::{net, Doctor, Found, Problem, Request};
use crate::backend::nfs::client::mount::{resolve_ports, split_export};
use crate::backend::nfs::{export_list, not_exported, NfsBackend, NfsOptions};
use crate::backend::{Backend, Source};

/// The parts of the nfs:// URL the checks need.
pub struct Target<'a> {
    pub host: &'a str,
    pub port: Option<u16>,
    pub share: &'a str,
}

const PORTMAPPER: u16 = 111;

pub async fn checks(doc: &mut Doctor<'_>, req: &Request, t: Target<'_>) {
    let Some(ip) = doc.step("dns", net::dns(t.host)).await else {
        return skip_rest(doc, &["tcp", "rpcbind", "export", "identity"]);
    };
    let pmap = SocketAddr::new(ip, PORTMAPPER);
    doc.step("tcp", net::tcp(pmap, "rpcbind")).await;
    let ports = doc
        .step("rpcbind", rpcbind(SocketAddr::new(ip, 0), t.port))
        .await;
    let backend = doc.step("export", export(req, &t, ip, ports)).await;
    doc.step("identity", identity(req, backend)).await;
}

fn skip_rest(doc: &mut Doctor<'_>, names: &[&'static str]) {
    for name in names {
        doc.skip(name, "dns failed");
    }
}

/// Ports of MOUNT and NFS from the portmapper, each accepting connections.
async fn rpcbind(
    server: SocketAddr,
    nfs_port: Option<u16>,
) -> Result<((u16, u16), Found), Problem> {
    let host = server.ip();
    let (nfs, mount) = resolve_ports(server, nfs_port).await.map_err(|e| {
        Problem::new(
            format!("{host}:{PORTMAPPER}: {e}"),
            "run rpcbind on the server with MOUNT v3 and NFS v3 registered over TCP \
             (nfs-ganesha/nfs-kernel-server do it when they start)",
        )
    })?;
    net::connect(SocketAddr::new(host, nfs), "NFS").await?;
    net::connect(SocketAddr::new(host, mount), "MOUNT").await?;
    Ok((
        (nfs, mount),
        format!("MOUNT v3 at {host}:{mount} and NFS v3 at {host}:{nfs} accept connections").into(),
    ))
}

/// The share is under an export, and the server lets us mount it.
async fn export(
    req: &Request,
    t: &Target<'_>,
    ip: std::net::IpAddr,
    ports: Option<(u16, u16)>,
) -> Result<(NfsBackend, Found), Problem> {
    let (_, mount_port) = ports.ok_or_else(|| Problem::explained("rpcbind failed"))?;
    let exports = export_list(SocketAddr::new(ip, mount_port), req.identity())
        .await
        .map_err(|e| {
            Problem::new(
                format!("{} did not list its exports: {e}", t.host),
                "check that the NFS server's MOUNT service answers (showmount -e)",
            )
        })?;
    let Some((export, _)) = split_export(&exports, t.share) else {
        let listing = if exports.is_empty() {
            "(none)".to_string()
        } else {
            exports.join(", ")
        };
        let fix = if exports.is_empty() {
            "export a directory on the server".to_string()
        } else {
            "set share (the path of the nfs:// URL) to one of them or to a directory below one"
                .to_string()
        };
        return Err(Problem::new(not_exported(t.share, t.host, &listing), fix));
    };
    let export = export.to_string();
    let source = Source::Nfs {
        host: t.host.to_string(),
        port: t.port,
        path: t.share.to_string(),
    };
    let opts = NfsOptions {
        identity: req.identity,
        groups: req.groups.clone(),
        ..NfsOptions::default()
    };
    let backend = NfsBackend::connect(&source, opts)
        .await
        .map_err(Problem::from)?;
    let below = if export.trim_end_matches('/') == t.share.trim_end_matches('/') {
        String::new()
    } else {
        format!(" ({} is below it)", t.share)
    };
    Ok((
        backend,
        format!("{} exports {export}{below}", t.host).into(),
    ))
}

/// The backend's write probe (create, write, rename, remove) as the identity.
async fn identity(req: &Request, backend: Option<NfsBackend>) -> Result<((), Found), Problem> {
    let backend = backend.ok_or_else(|| Problem::explained("export failed"))?;
    let id = req.identity();
    backend.preflight(id).await.map_err(Problem::from)?;
    Ok((
        (),
        format!(
            "uid {} gid {} can create, write, rename and remove files in {}",
            id.uid,
            id.gid,
            backend.describe()
        )
        .into(),
    ))
}
