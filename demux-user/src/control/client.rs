//! A blocking client of the control socket, as the CLI uses it. The connection stays open as
//! long as the client lives: endpoints it created without `persistent` close with it.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
};

use thiserror::Error;

use super::{Envelope, Request, Response, VERSION};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot reach the daemon at {path}: {source} (is `demux daemon` running? pass --control PATH if it listens elsewhere)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to the daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon closed the connection without an answer")]
    Closed,
    #[error(
        "the daemon's answer is not understood ({0}); are the CLI and the daemon the same version?"
    )]
    BadResponse(serde_json::Error),
    #[error("{0}")]
    Refused(String),
}

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends one request and reads its response; a refusal becomes `ClientError::Refused`.
    pub fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        let mut line = serde_json::to_string(&Envelope {
            version: VERSION,
            request,
        })
        .expect("requests always serialize");
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(ClientError::Closed);
        }
        match serde_json::from_str(&answer).map_err(ClientError::BadResponse)? {
            Response::Error { message } => Err(ClientError::Refused(message)),
            response => Ok(response),
        }
    }
}
