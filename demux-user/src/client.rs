//! The client library: bind an endpoint on the daemon and receive its datagrams from a
//! shared-memory ring, without a system call per datagram while the ring has data.
//!
//! ```no_run
//! use demux::{binding::Protocol, client::Endpoint};
//! let mut endpoint = Endpoint::bind("/run/demux/control.sock", Protocol::Udp, "0.0.0.0:5353")?;
//! while let Some(datagram) = endpoint.recv_from(None)? {
//!     println!("{} bytes from {}", datagram.payload.len(), datagram.peer);
//! }
//! # Ok::<(), demux::client::Error>(())
//! ```
//!
//! Dropping the `Endpoint` closes its control connection, and the daemon closes the endpoint and
//! its bindings with it.
//!
//! Errors say what kind they are through [`Error::code`], an [`ErrorCode`] an application can
//! match (`address_in_use`, `permission_denied`, …), and convert into `io::Error` with the
//! matching `io::ErrorKind`.
#![deny(missing_docs)]

use std::{
    io,
    net::SocketAddr,
    os::fd::OwnedFd,
    path::Path,
    time::{Duration, Instant},
};

use thiserror::Error;

pub use crate::control::ErrorCode;
pub use crate::record::DatagramView;
use crate::{
    binding::{BindingError, Protocol},
    control::{
        client::{Client, ClientError},
        BindRequest, Request, Response, SinkSpec,
    },
    record::{self, RecordError},
    ring::{ClientFds, Consumer, RingError},
    sys,
};

/// A failure of the client library, naming the step.
#[derive(Debug, Error)]
pub enum Error {
    /// The control exchange failed or the daemon refused.
    #[error(transparent)]
    Control(#[from] ClientError),
    /// The ring the daemon handed over is not usable.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The bind request is invalid (checked before connecting).
    #[error(transparent)]
    Invalid(#[from] BindingError),
    /// The bind answer came with the wrong descriptors.
    #[error("the daemon sent {0} descriptors with the endpoint instead of 2 (memfd, eventfd)")]
    Descriptors(usize),
    /// A ring record cannot be decoded.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Waiting for the ring's wakeup failed.
    #[error("waiting for datagrams: {0}")]
    Wait(io::Error),
}

impl Error {
    /// The kind of failure, to match on.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Control(e) => e.code(),
            Error::Invalid(_) => ErrorCode::InvalidArgument,
            Error::Ring(_) | Error::Descriptors(_) | Error::Record(_) => ErrorCode::VersionMismatch,
            Error::Wait(_) => ErrorCode::Internal,
        }
    }
}

impl From<Error> for io::Error {
    fn from(error: Error) -> Self {
        match error {
            Error::Control(e) => e.into(),
            Error::Wait(e) => e,
            other => io::Error::new(other.code().io_kind(), other),
        }
    }
}

/// A received datagram, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// UDP or TCP.
    pub protocol: Protocol,
    /// The sender's socket address.
    pub peer: SocketAddr,
    /// The local socket address it was sent to.
    pub local: SocketAddr,
    /// Receive time, ns since the Unix epoch.
    pub received_ns: u64,
    /// UDP: the payload. TCP: the whole segment, header included.
    pub payload: Vec<u8>,
}

impl From<DatagramView<'_>> for Datagram {
    fn from(view: DatagramView<'_>) -> Self {
        Self {
            protocol: view.protocol,
            peer: view.peer,
            local: view.local,
            received_ns: view.received_ns,
            payload: view.payload.to_vec(),
        }
    }
}

/// An endpoint owned by this process.
pub struct Endpoint {
    control: Client,
    id: u32,
    ring: Consumer,
}

impl Endpoint {
    /// Binds `local` (any form `demux bind` takes) with a default ring.
    pub fn bind(control: impl AsRef<Path>, protocol: Protocol, local: &str) -> Result<Self, Error> {
        Self::bind_with(
            control,
            BindRequest {
                protocol,
                local: local.into(),
                connect: None,
                group: None,
                v6only: false,
                to: SinkSpec::Ring {
                    slots: crate::ring::DEFAULT_SLOTS,
                },
                persistent: false,
            },
        )
    }

    /// Binds as `request` says; its sink must be a ring.
    pub fn bind_with(control: impl AsRef<Path>, request: BindRequest) -> Result<Self, Error> {
        request.binding()?;
        let mut client = Client::connect(control.as_ref())?;
        let (response, fds) = client.call_with_fds(Request::Bind(request), &[])?;
        let Response::Bound { id } = response else {
            return Err(ClientError::BadResponse(format!(
                "unexpected answer to bind: {response:?}"
            ))
            .into());
        };
        let [memory, wake]: [OwnedFd; 2] = fds
            .try_into()
            .map_err(|fds: Vec<OwnedFd>| Error::Descriptors(fds.len()))?;
        let ring = Consumer::open(ClientFds { memory, wake })?;
        Ok(Self {
            control: client,
            id,
            ring,
        })
    }

    /// The endpoint's descriptor.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Hands up to `max` waiting datagrams to `each`, without blocking and without a system
    /// call. Returns how many.
    pub fn recv_batch(
        &mut self,
        max: usize,
        mut each: impl FnMut(DatagramView<'_>),
    ) -> Result<usize, Error> {
        let mut bad = None;
        let n = self.ring.consume(max, |bytes| match record::decode(bytes) {
            Ok(view) => each(view),
            Err(e) => bad = Some(e),
        });
        match bad {
            Some(e) => Err(e.into()),
            None => Ok(n),
        }
    }

    fn try_recv(&mut self) -> Result<Option<Datagram>, Error> {
        let mut got = None;
        self.recv_batch(1, |view| got = Some(Datagram::from(view)))?;
        Ok(got)
    }

    /// Waits for the next datagram; `Ok(None)` when `timeout` passes first.
    pub fn recv_from(&mut self, timeout: Option<Duration>) -> Result<Option<Datagram>, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(datagram) = self.try_recv()? {
                return Ok(Some(datagram));
            }
            if self.ring.prepare_to_sleep() {
                self.ring.stop_waiting();
                continue;
            }
            let wait_ms = match deadline {
                None => -1,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) => left.as_millis().min(i32::MAX as u128) as i32,
                    None => {
                        self.ring.stop_waiting();
                        return Ok(None);
                    }
                },
            };
            let mut fds = [
                sys::pollfd(&self.ring.wake_fd(), libc::POLLIN),
                sys::pollfd(&self.control.fd(), libc::POLLIN),
            ];
            let ready = sys::poll(&mut fds, wait_ms);
            self.ring.stop_waiting();
            ready.map_err(Error::Wait)?;
            if fds[1].revents != 0 {
                return Err(ClientError::Closed.into());
            }
        }
    }

    /// Waits for the next datagram on a tokio runtime (feature `async`).
    #[cfg(feature = "async")]
    pub async fn recv_from_async(&mut self) -> Result<Datagram, Error> {
        let wake = self
            .ring
            .wake_fd()
            .try_clone_to_owned()
            .map_err(Error::Wait)?;
        let wake = sys::async_readable(wake).map_err(Error::Wait)?;
        loop {
            if let Some(datagram) = self.try_recv()? {
                return Ok(datagram);
            }
            if self.ring.prepare_to_sleep() {
                self.ring.stop_waiting();
                continue;
            }
            let mut ready = wake.readable().await.map_err(Error::Wait)?;
            ready.clear_ready();
            self.ring.stop_waiting();
        }
    }
}
