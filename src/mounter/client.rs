//! Talking to the node's mounter: used by the CSI node plugin (stage,
//! unstage, keeping descriptors) and by `cachalot sessions`.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{
    Envelope, ErrorCode, Request, Response, SessionList, StageRequest, PROTOCOL_VERSION,
};
use super::wire;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the cachalot mounter at {socket}: {source}; is the mounter (DaemonSet cachalot-mounter) running on this node?")]
    Unreachable {
        socket: String,
        source: std::io::Error,
    },
    #[error("the cachalot mounter refused: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("talking to the cachalot mounter at {socket}: {source}")]
    Io {
        socket: String,
        source: std::io::Error,
    },
    #[error("the cachalot mounter answered {0} where another answer was expected")]
    Unexpected(String),
}

impl ClientError {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct MounterClient {
    socket: PathBuf,
    /// Bound on one exchange: a stage mounts, which may take a while.
    timeout: Duration,
}

impl MounterClient {
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> MounterClient {
        MounterClient {
            socket: socket.into(),
            timeout,
        }
    }

    fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io {
            socket: self.socket.display().to_string(),
            source,
        }
    }

    fn connect(&self) -> Result<UnixStream, ClientError> {
        let stream =
            UnixStream::connect(&self.socket).map_err(|source| ClientError::Unreachable {
                socket: self.socket.display().to_string(),
                source,
            })?;
        stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|_| stream.set_write_timeout(Some(self.timeout)))
            .map_err(|e| self.io(e))?;
        Ok(stream)
    }

    /// Send `request`; the answer and the connection (descriptors may follow).
    fn exchange(&self, request: Request) -> Result<(Response, UnixStream), ClientError> {
        let mut stream = self.connect()?;
        let envelope = Envelope {
            v: PROTOCOL_VERSION,
            request,
        };
        wire::write_frame(&mut stream, &envelope).map_err(|e| self.io(e))?;
        let response: Response = wire::read_frame(&mut stream).map_err(|e| self.io(e))?;
        match response {
            Response::Error { code, message } => Err(ClientError::Refused { code, message }),
            other => Ok((other, stream)),
        }
    }

    /// Serve a volume; the mounter's pid and whether it already did.
    pub fn stage(&self, request: StageRequest) -> Result<(u32, bool), ClientError> {
        match self.exchange(Request::Stage(Box::new(request)))?.0 {
            Response::Staged {
                mounter_pid,
                already,
            } => Ok((mounter_pid, already)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub fn unstage(&self, staging: &Path) -> Result<(), ClientError> {
        match self
            .exchange(Request::Unstage {
                staging: staging.to_path_buf(),
            })?
            .0
        {
            Response::Ok => Ok(()),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub fn list(&self) -> Result<SessionList, ClientError> {
        match self.exchange(Request::List)?.0 {
            Response::Sessions(list) => Ok(list),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Duplicates of every session's `/dev/fuse` descriptor.
    pub fn fds(&self) -> Result<Vec<(PathBuf, OwnedFd)>, ClientError> {
        let (response, stream) = self.exchange(Request::Fds)?;
        let Response::Fds { staging } = response else {
            return Err(ClientError::Unexpected(format!("{response:?}")));
        };
        let fds = wire::recv_fds(&stream, staging.len()).map_err(|e| self.io(e))?;
        Ok(staging.into_iter().zip(fds).collect())
    }

    /// Hand kept descriptors to a mounter that lost its sessions (it died).
    pub fn adopt(&self, kept: &[(PathBuf, OwnedFd)]) -> Result<(), ClientError> {
        use std::os::fd::AsFd;
        let mut stream = self.connect()?;
        let envelope = Envelope {
            v: PROTOCOL_VERSION,
            request: Request::Adopt {
                staging: kept.iter().map(|(p, _)| p.clone()).collect(),
            },
        };
        wire::write_frame(&mut stream, &envelope).map_err(|e| self.io(e))?;
        let fds: Vec<_> = kept.iter().map(|(_, fd)| fd.as_fd()).collect();
        wire::send_fds(&stream, &fds).map_err(|e| self.io(e))?;
        match wire::read_frame(&mut stream).map_err(|e| self.io(e))? {
            Response::Ok => Ok(()),
            Response::Error { code, message } => Err(ClientError::Refused { code, message }),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
}
