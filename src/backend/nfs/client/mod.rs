//! The NFSv3 RPC layer: one `call` that picks a connection of the caller's
//! identity, retries across reconnects with backoff while the server is away,
//! and tells the caller whether the request may have been executed twice.
//! `call_with` is the same with the request sent and its reply read by an
//! `Exchange` (READ data straight into page buffers, WRITE data sent from
//! the caller's).

pub mod mount;
pub mod pool;
#[cfg(test)]
pub mod scripted;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::future::BoxFuture;
use nfs3_client::RpcError;
use nfs3_types::nfs3::{nfsstat3, Nfs3Result, NFS_PROGRAM, PROGRAM, VERSION};
use nfs3_types::xdr_codec::{Pack, Unpack};

use pool::{Credential, Pools};

/// How hard to try before giving up on a request.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// One RPC (send + reply); a call stuck longer is abandoned and re-sent
    /// on a new connection.
    pub call_timeout: Duration,
    /// Total time a request keeps being retried while the server is
    /// unreachable (restart, network blip) before the application gets EIO.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            call_timeout: Duration::from_secs(30),
            budget: Duration::from_secs(60),
        }
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A call that could not be completed.
#[derive(Debug)]
pub enum CallError {
    /// The server stayed unreachable (or kept dropping the connection) for
    /// the whole retry budget.
    Transport { cause: String, attempts: u32 },
    /// The server answered, but refused the call at the RPC level
    /// (authentication flavor, program/procedure unavailable, garbage).
    Rejected(RpcError),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transport { cause, attempts } => {
                write!(f, "server unreachable after {attempts} attempts: {cause}")
            }
            CallError::Rejected(e) => write!(f, "RPC rejected: {e}"),
        }
    }
}

/// One request and the reading of its reply on a connection (see
/// `NfsClient::call_with`). A trait rather than a closure: its future
/// borrows the connection and the exchange's own buffers.
pub trait Exchange<T, E>: Send {
    fn exchange<'c>(
        &'c mut self,
        conn: &'c mut pool::Conn,
    ) -> BoxFuture<'c, Result<Nfs3Result<T, E>, CallFailed>>;
}

/// A call whose reply is read whole and decoded (`RpcClient::call`).
struct Plain<'a, A> {
    proc: NFS_PROGRAM,
    args: &'a A,
}

impl<A, T, E> Exchange<T, E> for Plain<'_, A>
where
    A: Pack + Send + Sync,
    Nfs3Result<T, E>: Unpack,
{
    fn exchange<'c>(
        &'c mut self,
        conn: &'c mut pool::Conn,
    ) -> BoxFuture<'c, Result<Nfs3Result<T, E>, CallFailed>> {
        Box::pin(async move {
            conn.call::<A, Nfs3Result<T, E>>(PROGRAM, VERSION, self.proc as u32, self.args)
                .await
                .map_err(CallFailed::from)
        })
    }
}

/// An exchange on a connection that failed, and whether the connection is
/// still fit for the next call (its stream at a reply's end).
pub struct CallFailed {
    pub error: RpcError,
    pub reusable: bool,
}

impl CallFailed {
    /// A failure while reading a reply's body: the rest of the reply may
    /// still be on the stream, so the connection must go.
    pub fn mid_reply(error: RpcError) -> CallFailed {
        CallFailed {
            error,
            reusable: false,
        }
    }
}

impl From<RpcError> for CallFailed {
    fn from(error: RpcError) -> CallFailed {
        CallFailed {
            reusable: error.is_connection_reusable(),
            error,
        }
    }
}

/// A reply, and whether the request was sent more than once (a non-idempotent
/// procedure then needs its result interpreted: REMOVE answering NOENT may
/// mean our first attempt already removed it).
pub struct Reply<R> {
    pub res: R,
    pub resent: bool,
}

enum Failure {
    /// Retry on a new connection. `sent`: the request may have reached the server.
    Transport {
        cause: String,
        sent: bool,
    },
    Fatal(RpcError),
}

fn classify(e: RpcError) -> Failure {
    match e {
        RpcError::Io(io) => Failure::Transport {
            cause: io.to_string(),
            sent: true,
        },
        // The stream is out of step with the replies: start over.
        RpcError::UnexpectedXid | RpcError::FragmentedReply => Failure::Transport {
            cause: e.to_string(),
            sent: true,
        },
        other => Failure::Fatal(other),
    }
}

pub struct NfsClient {
    addr: SocketAddr,
    pools: Pools,
    policy: RetryPolicy,
}

impl NfsClient {
    pub fn new(addr: SocketAddr, machine: String, policy: RetryPolicy) -> NfsClient {
        NfsClient {
            addr,
            pools: Pools::new(machine),
            policy,
        }
    }

    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// Call an NFSv3 procedure as `cred`. Transport failures are retried
    /// (new connection, exponential backoff) until the budget is spent;
    /// NFS3ERR_JUKEBOX ("try later") too.
    pub async fn call<A, T, E>(
        &self,
        cred: &Credential,
        proc: NFS_PROGRAM,
        args: &A,
    ) -> Result<Reply<Nfs3Result<T, E>>, CallError>
    where
        A: Pack + Send + Sync,
        Nfs3Result<T, E>: Unpack,
    {
        let mut call = Plain { proc, args };
        self.call_with(cred, proc, &mut call).await
    }

    /// `call` with the request sent and its reply read by `exchange` on a
    /// connection of `cred` (once per attempt): for replies read in pieces
    /// (`RpcClient::call_streamed`, an NFS READ into page buffers).
    pub async fn call_with<T, E>(
        &self,
        cred: &Credential,
        proc: NFS_PROGRAM,
        exchange: &mut impl Exchange<T, E>,
    ) -> Result<Reply<Nfs3Result<T, E>>, CallError> {
        let started = Instant::now();
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(FIRST_BACKOFF)
            .with_max_delay(MAX_BACKOFF)
            .without_max_times()
            .with_jitter()
            .build();
        let mut attempts = 0u32;
        let mut sent_before = false;
        loop {
            attempts += 1;
            let pool = self.pools.get(cred);
            let outcome = async {
                let mut loan = pool
                    .borrow(self.addr)
                    .await
                    .map_err(|e| Failure::Transport {
                        cause: format!("connect to {}: {e}", self.addr),
                        sent: false,
                    })?;
                let Some(conn) = loan.conn.as_mut() else {
                    return Err(Failure::Transport {
                        cause: "no connection".into(),
                        sent: false,
                    });
                };
                match tokio::time::timeout(self.policy.call_timeout, exchange.exchange(conn)).await
                {
                    Ok(Ok(res)) => {
                        loan.give_back();
                        Ok(res)
                    }
                    Ok(Err(failed)) => {
                        if failed.reusable {
                            loan.give_back();
                        }
                        Err(classify(failed.error))
                    }
                    // Dropping the loan closes the connection mid-reply.
                    Err(_) => Err(Failure::Transport {
                        cause: format!("no reply within {:?}", self.policy.call_timeout),
                        sent: true,
                    }),
                }
            }
            .await;
            let retry_cause = match outcome {
                Ok(Nfs3Result::Err((nfsstat3::NFS3ERR_JUKEBOX, _))) => {
                    sent_before = true;
                    "server busy (NFS3ERR_JUKEBOX)".to_string()
                }
                Ok(res) => {
                    if attempts > 1 {
                        tracing::info!(procedure = %proc, attempts, "NFS call succeeded after retrying");
                    }
                    return Ok(Reply {
                        res,
                        resent: attempts > 1 && sent_before,
                    });
                }
                Err(Failure::Fatal(e)) => return Err(CallError::Rejected(e)),
                Err(Failure::Transport { cause, sent }) => {
                    sent_before |= sent;
                    // Sibling connections most likely died with this one.
                    pool.drain();
                    self.pools.drain_all();
                    cause
                }
            };
            let delay = delays.next().unwrap_or(MAX_BACKOFF);
            if started.elapsed() + delay > self.policy.budget {
                tracing::error!(procedure = %proc, attempts, cause = %retry_cause,
                    "NFS server unreachable; giving up after the retry budget");
                return Err(CallError::Transport {
                    cause: retry_cause,
                    attempts,
                });
            }
            if attempts == 1 {
                tracing::warn!(procedure = %proc, cause = %retry_cause, "NFS call failed; retrying");
            }
            tokio::time::sleep(delay).await;
        }
    }
}
