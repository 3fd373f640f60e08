//! A blocking client of the control socket, as the CLI and the client library use it. The
//! connection stays open as long as the client lives: endpoints it created without
//! `persistent` close with it. Responses are read with `recvmsg`, so descriptors the daemon
//! attaches (a ring's memfd and eventfd) arrive with them.

use std::{
    io::Write,
    os::{
        fd::{AsRawFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    path::Path,
};

use thiserror::Error;

use super::{fds, Envelope, Request, Response, VERSION};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot reach the daemon at {path}: {source} (is `demux daemon` running? pass --control PATH if it listens elsewhere)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to the daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon closed the connection")]
    Closed,
    #[error("the daemon's answer is not understood ({0}); are the client and the daemon the same version?")]
    BadResponse(serde_json::Error),
    #[error("{0}")]
    Refused(String),
}

pub struct Client {
    stream: UnixStream,
    /// Bytes received after the last complete line.
    pending: Vec<u8>,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            stream,
            pending: Vec::new(),
        })
    }

    /// Sends one request and reads its response; a refusal becomes `ClientError::Refused`.
    pub fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        self.call_with_fds(request).map(|(response, _)| response)
    }

    /// As `call`, also returning the descriptors that came with the response.
    pub fn call_with_fds(
        &mut self,
        request: Request,
    ) -> Result<(Response, Vec<OwnedFd>), ClientError> {
        let mut line = serde_json::to_string(&Envelope {
            version: VERSION,
            request,
        })
        .expect("requests always serialize");
        line.push('\n');
        self.stream.write_all(line.as_bytes())?;
        let mut received = Vec::new();
        let answer = self.read_line(&mut received)?;
        match serde_json::from_slice(&answer).map_err(ClientError::BadResponse)? {
            Response::Error { message } => Err(ClientError::Refused(message)),
            response => Ok((response, received)),
        }
    }

    fn read_line(&mut self, received: &mut Vec<OwnedFd>) -> Result<Vec<u8>, ClientError> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line = self.pending.drain(..=end).collect();
                return Ok(line);
            }
            let mut buf = [0u8; 4096];
            let n = fds::recv(&self.stream, &mut buf, received)?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    /// The connection's fd: readable or hung up when the daemon goes away.
    pub fn raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}
