//! A blocking client of the control socket, as the CLI and the client library use it. The
//! connection stays open as long as the client lives: endpoints it created without
//! `persistent` close with it. It opens with `hello`, so a daemon of another protocol version
//! is one clear [`ClientError::VersionMismatch`]. Responses are read with `recvmsg`, so
//! descriptors the daemon attaches (a ring's memfd and eventfd) arrive with them; requests are
//! written with `sendmsg`, so a bind's backing socket and its `pcap:` or `unix:` sink, which
//! the client opens itself, go with it.
#![deny(missing_docs)]

use std::{
    io::{self, Write},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        unix::net::UnixStream,
    },
    path::Path,
};

use serde::Deserialize;
use thiserror::Error;

use super::{
    BindRequest, Envelope, ErrorCode, Request, Response, SinkOpenError, SOFTWARE, VERSION,
};

/// Longest answer line the client accepts (a `list` of many endpoints fits easily).
const MAX_ANSWER: usize = 64 << 20;

/// A failed exchange with the daemon. [`ClientError::code`] says what kind, for matching.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The control socket cannot be reached.
    #[error("cannot reach the daemon at {path}: {cause} (is `demux daemon` running? pass --control PATH if it listens elsewhere)")]
    Connect {
        /// The control socket's path.
        path: String,
        /// Why `connect` failed.
        cause: io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("talking to the daemon: {0}")]
    Io(io::Error),
    /// The daemon closed the connection (stopped or restarted).
    #[error("the daemon closed the connection")]
    Closed,
    /// The answer is not JSON this build understands.
    #[error("the daemon's answer is not understood ({0}); are the client and the daemon the same version?")]
    BadResponse(String),
    /// The daemon speaks another protocol version.
    #[error("{message}")]
    VersionMismatch {
        /// The daemon's explanation: both versions and which side to upgrade.
        message: String,
    },
    /// The client could not open the sink it passes with a bind (`pcap:`, `unix:`).
    #[error(transparent)]
    Sink(#[from] SinkOpenError),
    /// The daemon refused the request.
    #[error("{message}")]
    Refused {
        /// What kind of refusal.
        code: ErrorCode,
        /// The daemon's explanation, naming the field and the fix.
        message: String,
    },
}

impl ClientError {
    /// The kind of failure, to match on; maps to `errno` and `io::ErrorKind` through
    /// [`ErrorCode::errno`] and [`ErrorCode::io_kind`].
    pub fn code(&self) -> ErrorCode {
        match self {
            ClientError::Connect { .. } | ClientError::Closed => ErrorCode::Unavailable,
            ClientError::Io(_) => ErrorCode::Unavailable,
            ClientError::BadResponse(_) | ClientError::VersionMismatch { .. } => {
                ErrorCode::VersionMismatch
            }
            ClientError::Refused { code, .. } => *code,
            ClientError::Sink(error) => match error.source.kind() {
                io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
                io::ErrorKind::NotFound => ErrorCode::NotFound,
                _ => ErrorCode::InvalidArgument,
            },
        }
    }
}

impl From<ClientError> for io::Error {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::Io(e) => e,
            ClientError::Connect { cause, .. } => cause,
            other => io::Error::new(other.code().io_kind(), other),
        }
    }
}

/// An error answer, read on its own: its shape is the same in every protocol version.
#[derive(Deserialize)]
struct ErrorOnly {
    result: String,
    #[serde(default = "other_code")]
    code: ErrorCode,
    message: String,
}

fn other_code() -> ErrorCode {
    ErrorCode::Other
}

/// A connection to the daemon's control socket.
pub struct Client {
    stream: UnixStream,
    /// Bytes received after the last complete line.
    pending: Vec<u8>,
    /// The daemon's software version, from `hello`.
    daemon: String,
}

impl Client {
    /// Connects and exchanges `hello`; a daemon of another protocol version is refused here.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|cause| ClientError::Connect {
            path: path.display().to_string(),
            cause,
        })?;
        let mut client = Self {
            stream,
            pending: Vec::new(),
            daemon: String::new(),
        };
        match client.call(Request::Hello {
            software: SOFTWARE.into(),
        })? {
            Response::Hello { version, software } if version == VERSION => {
                client.daemon = software;
                Ok(client)
            }
            Response::Hello { version, software } => Err(ClientError::VersionMismatch {
                message: format!(
                    "control protocol: this client ({SOFTWARE}) speaks version {VERSION}, the \
                     daemon ({software}) speaks version {version}: {}",
                    super::upgrade(VERSION, version)
                ),
            }),
            other => Err(ClientError::BadResponse(format!(
                "unexpected answer to hello: {other:?}"
            ))),
        }
    }

    /// The daemon's software version, as it said in `hello`.
    pub fn daemon_software(&self) -> &str {
        &self.daemon
    }

    /// Sends one request and reads its response; a refusal becomes [`ClientError::Refused`].
    /// A bind goes as [`Client::bind`] sends it, without a backing socket (root's prefix,
    /// all-ports and TCP bindings).
    pub fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        match request {
            Request::Bind(bind) => self.bind(bind, None),
            request => self.call_with_fds(request, &[]),
        }
        .map(|(response, _)| response)
    }

    /// Sends a bind with its backing socket ([`crate::backing::open`]) if given, and its sink:
    /// a `pcap:` or `unix:` sink is opened here, as this process
    /// ([`crate::control::SinkSpec::open_for_caller`]). Returns the answer and the descriptors
    /// that came with it (a ring's).
    pub fn bind(
        &mut self,
        mut request: BindRequest,
        backing: Option<BorrowedFd<'_>>,
    ) -> Result<(Response, Vec<OwnedFd>), ClientError> {
        let sink = request.to.open_for_caller()?;
        request.backed = backing.is_some();
        let send: Vec<BorrowedFd<'_>> = backing
            .into_iter()
            .chain(sink.iter().map(AsFd::as_fd))
            .collect();
        self.call_with_fds(Request::Bind(request), &send)
    }

    /// Sends one request with exactly the descriptors `send` (SCM_RIGHTS; the line declares
    /// how many) and reads its response, also returning the descriptors that came with it.
    pub fn call_with_fds(
        &mut self,
        request: Request,
        send: &[BorrowedFd<'_>],
    ) -> Result<(Response, Vec<OwnedFd>), ClientError> {
        if send.len() > crate::sys::scm::MAX_FDS {
            return Err(ClientError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a request carries at most {} descriptors",
                    crate::sys::scm::MAX_FDS
                ),
            )));
        }
        let mut line = serde_json::to_string(&Envelope {
            version: VERSION,
            fds: send.len() as u32,
            request,
        })
        .expect("requests always serialize");
        line.push('\n');
        self.send(line.as_bytes(), send).map_err(ClientError::Io)?;
        let mut received = Vec::new();
        let answer = self.read_line(&mut received)?;
        match serde_json::from_slice(&answer) {
            Ok(Response::Error { code, message }) => Err(refusal(code, message)),
            Ok(response) => Ok((response, received)),
            Err(e) => match serde_json::from_slice::<ErrorOnly>(&answer) {
                Ok(error) if error.result == "error" => Err(refusal(error.code, error.message)),
                _ => Err(ClientError::BadResponse(e.to_string())),
            },
        }
    }

    /// Writes `bytes`, the descriptors attached to the first of them.
    fn send(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if fds.is_empty() {
            return self.stream.write_all(bytes);
        }
        let raw: Vec<_> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let mut sent = 0;
        while sent < bytes.len() {
            let attach = if sent == 0 { &raw[..] } else { &[] };
            match crate::sys::scm::send(self.stream.as_raw_fd(), &bytes[sent..], attach) {
                Ok(n) => sent += n,
                // `scm::send` does not wait: wait for room, as a blocking write would.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut pollfd = [crate::sys::pollfd(&self.stream, libc::POLLOUT)];
                    crate::sys::poll(&mut pollfd, -1)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn read_line(&mut self, received: &mut Vec<OwnedFd>) -> Result<Vec<u8>, ClientError> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line = self.pending.drain(..=end).collect();
                return Ok(line);
            }
            if self.pending.len() > MAX_ANSWER {
                return Err(ClientError::BadResponse(format!(
                    "an answer longer than {MAX_ANSWER} bytes"
                )));
            }
            let mut buf = [0u8; 4096];
            let n =
                crate::sys::scm::recv(&self.stream, &mut buf, received).map_err(ClientError::Io)?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    /// The connection's descriptor: readable or hung up when the daemon goes away.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

fn refusal(code: ErrorCode, message: String) -> ClientError {
    match code {
        ErrorCode::VersionMismatch => ClientError::VersionMismatch { message },
        code => ClientError::Refused { code, message },
    }
}
