//! Connections to the NFS service, pooled per credential.
//!
//! AUTH_SYS credentials travel in every RPC call and `nfs3_client` fixes them
//! per connection, so each identity gets its own small pool. One RPC client
//! handles one call at a time; concurrency comes from several connections.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nfs3_client::rpc::RpcClient;
use nfs3_client::tokio::TokioIo;
use nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_types::xdr_codec::Opaque;
use parking_lot::Mutex;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One RPC connection (to the NFS or the MOUNT program).
pub type Conn = RpcClient<TokioIo<TcpStream>>;

/// Connections per identity: enough to overlap reads, writes and metadata.
pub const CONNS_PER_IDENTITY: usize = 4;
/// Identities with a live pool; the least recently used pool is closed first.
const MAX_POOLS: usize = 32;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An AUTH_SYS identity as sent on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Credential {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (at most 16 go on the wire, per RFC 5531).
    pub gids: Vec<u32>,
}

impl Credential {
    pub fn opaque(&self, machine: &str) -> opaque_auth<'static> {
        let mut gids = self.gids.clone();
        gids.truncate(16);
        opaque_auth::auth_unix(&auth_unix {
            stamp: 0,
            machinename: Opaque::owned(machine.as_bytes().to_vec()),
            uid: self.uid,
            gid: self.gid,
            gids,
        })
    }
}

/// Connect from a privileged source port when we may (servers with the
/// default `secure` export option insist), else from any port.
pub async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    static NEXT_PORT: AtomicU16 = AtomicU16::new(0);
    const LOW: u16 = 300;
    const HIGH: u16 = 1023;
    let attempt = async {
        if NEXT_PORT.load(Ordering::Relaxed) == 0 {
            let seed = (std::process::id() as u16) % (HIGH - LOW);
            let _ = NEXT_PORT.compare_exchange(0, seed + 1, Ordering::Relaxed, Ordering::Relaxed);
        }
        for _ in LOW..=HIGH {
            let port = LOW + NEXT_PORT.fetch_add(1, Ordering::Relaxed) % (HIGH - LOW + 1);
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            let any: IpAddr = if addr.is_ipv4() {
                Ipv4Addr::UNSPECIFIED.into()
            } else {
                Ipv6Addr::UNSPECIFIED.into()
            };
            match socket.bind(SocketAddr::new(any, port)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                // Not root: the server must accept unprivileged ports.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => break,
                Err(e) => return Err(e),
            }
            match socket.connect(addr).await {
                Ok(stream) => return Ok(stream),
                // Same 4-tuple still in TIME_WAIT on the server: next port.
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => continue,
                Err(e) => return Err(e),
            }
        }
        TcpStream::connect(addr).await
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Idle connections of one credential plus a cap on how many exist.
pub struct Pool {
    cred: Credential,
    auth: opaque_auth<'static>,
    idle: Mutex<Vec<Conn>>,
    slots: Arc<Semaphore>,
}

/// A connection on loan. Dropped without `give_back` (error, cancelled
/// call), the connection is closed: its stream may hold half a reply.
pub struct Loan {
    pub conn: Option<Conn>,
    pool: Arc<Pool>,
    _slot: OwnedSemaphorePermit,
}

impl Loan {
    pub fn give_back(mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.idle.lock().push(conn);
        }
    }
}

impl Pool {
    fn new(cred: Credential, machine: &str) -> Pool {
        Pool {
            auth: cred.opaque(machine),
            cred,
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(CONNS_PER_IDENTITY)),
        }
    }

    pub fn credential(&self) -> &Credential {
        &self.cred
    }

    /// An idle connection, or a new one to `addr`.
    pub async fn borrow(self: &Arc<Self>, addr: SocketAddr) -> std::io::Result<Loan> {
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| std::io::Error::other("connection pool closed"))?;
        let idle = self.idle.lock().pop();
        let conn = match idle {
            Some(c) => c,
            None => {
                let stream = connect(addr).await?;
                RpcClient::new_with_auth(
                    TokioIo::new(stream),
                    self.auth.clone(),
                    opaque_auth::default(),
                )
            }
        };
        Ok(Loan {
            conn: Some(conn),
            pool: Arc::clone(self),
            _slot: slot,
        })
    }

    /// Close idle connections (after a transport error: they most likely
    /// point at a server that is gone).
    pub fn drain(&self) {
        self.idle.lock().clear();
    }
}

/// Pools by credential, least recently used evicted beyond `MAX_POOLS`.
pub struct Pools {
    machine: String,
    pools: Mutex<HashMap<Credential, (Arc<Pool>, u64)>>,
    clock: AtomicU64,
}

impl Pools {
    pub fn new(machine: String) -> Pools {
        Pools {
            machine,
            pools: Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
        }
    }

    pub fn machine(&self) -> &str {
        &self.machine
    }

    pub fn get(&self, cred: &Credential) -> Arc<Pool> {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut pools = self.pools.lock();
        if let Some((pool, used)) = pools.get_mut(cred) {
            *used = now;
            return Arc::clone(pool);
        }
        if pools.len() >= MAX_POOLS {
            if let Some(oldest) = pools
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            {
                pools.remove(&oldest);
            }
        }
        let pool = Arc::new(Pool::new(cred.clone(), &self.machine));
        pools.insert(cred.clone(), (Arc::clone(&pool), now));
        pool
    }

    pub fn drain_all(&self) {
        for (pool, _) in self.pools.lock().values() {
            pool.drain();
        }
    }
}
