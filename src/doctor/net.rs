//! Reachability: the host's name resolves, its ports accept connections.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{Found, Problem};

/// How long a TCP connect may take before the host counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `host`'s address (IPv4 preferred, as the NFS client does).
pub async fn dns(host: &str) -> Result<(IpAddr, Found), Problem> {
    let fix = "check the host name in the source (or --endpoint) and the node's DNS \
               (/etc/resolv.conf)";
    let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host, 0)).await {
        Ok(a) => a.collect(),
        Err(e) => return Err(Problem::new(format!("{host} does not resolve: {e}"), fix)),
    };
    let Some(ip) = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .map(SocketAddr::ip)
    else {
        return Err(Problem::new(format!("{host} has no address"), fix));
    };
    Ok((ip, format!("{host} resolves to {ip}").into()))
}

/// Whether `addr` accepts a TCP connection; `what` names the service.
pub async fn connect(addr: SocketAddr, what: &str) -> Result<(), Problem> {
    let cause = |why: String| {
        Problem::new(
            format!("{addr} ({what}) does not accept connections: {why}"),
            format!(
                "check that {what} runs on {} and that no firewall blocks port {} from this node",
                addr.ip(),
                addr.port()
            ),
        )
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(cause(e.to_string())),
        Err(_) => Err(cause(format!("no answer within {CONNECT_TIMEOUT:?}"))),
    }
}

/// `connect` as a check.
pub async fn tcp(addr: SocketAddr, what: &str) -> Result<((), Found), Problem> {
    connect(addr, what).await?;
    Ok(((), format!("{addr} ({what}) accepts connections").into()))
}
