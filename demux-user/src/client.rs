//! The client library: bind an endpoint on the daemon and receive its datagrams from a
//! shared-memory ring, without a system call per datagram while the ring has data.
//!
//! An endpoint is a whole UDP socket for its application. It creates the kernel socket behind
//! it ([`crate::backing`]) with this process's credentials, binds it, and passes it to the
//! daemon, which then steers the socket's datagrams into the ring. What the XDP program does not
//! steer — fragmented datagrams after the kernel reassembled them, datagrams from this host, and
//! everything while the daemon is away — the kernel delivers to that socket, and the endpoint
//! reads both as one stream: the socket whenever the ring is empty, and at least every
//! [`KERNEL_EVERY`] while it is busy, so neither starves. When the daemon goes away the endpoint
//! keeps its ring, goes on reading its socket, and once a daemon listens again attaches to
//! its endpoint (a daemon restarted under systemd picked it up, same id and ring) or, when
//! that daemon did not, binds afresh once the old ring is drained. Send replies through
//! [`Endpoint::socket`].
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
//! Dropping the `Endpoint` closes its control connection and its socket, and the daemon closes
//! the endpoint and its bindings with them.
//!
//! Errors say what kind they are through [`Error::code`], an [`ErrorCode`] an application can
//! match (`address_in_use`, `permission_denied`, …), and convert into `io::Error` with the
//! matching `io::ErrorKind`.
#![deny(missing_docs)]

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsFd, AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use thiserror::Error;

pub use crate::control::ErrorCode;
pub use crate::record::DatagramView;
use crate::{
    backing::{self, BackingError},
    binding::{BindingError, Local, Protocol},
    control::{
        client::{Client, ClientError},
        BindRequest, Response, SinkSpec,
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
    /// The backing socket could not be created or bound (the kernel's refusal, e.g. the
    /// address is in use).
    #[error(transparent)]
    Backing(#[from] BackingError),
    /// Not a binding a client endpoint can have.
    #[error("a client endpoint is a UDP socket on one address, not {0}; prefix, all-ports and TCP endpoints are root's, bound with `demux bind`")]
    NotASocket(String),
    /// The bind answer came with the wrong descriptors.
    #[error("the daemon sent {0} descriptors with the endpoint instead of 2 (memfd, eventfd)")]
    Descriptors(usize),
    /// A ring record cannot be decoded.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Waiting for the ring's wakeup failed.
    #[error("waiting for datagrams: {0}")]
    Wait(io::Error),
    /// The fast path's queues could not be mapped.
    #[cfg(feature = "fast-path")]
    #[error(transparent)]
    FastPath(#[from] crate::fastpath::FastPathError),
}

impl Error {
    /// The kind of failure, to match on.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Control(e) => e.code(),
            Error::Invalid(_) | Error::NotASocket(_) => ErrorCode::InvalidArgument,
            Error::Backing(e) => e.code(),
            Error::Ring(_) | Error::Descriptors(_) | Error::Record(_) => ErrorCode::VersionMismatch,
            Error::Wait(_) => ErrorCode::Internal,
            #[cfg(feature = "fast-path")]
            Error::FastPath(_) => ErrorCode::Internal,
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

/// How long a busy ring may keep the endpoint from its backing socket.
pub const KERNEL_EVERY: Duration = Duration::from_millis(2);

/// How long a fast-path endpoint spins on its leased rx rings before it sleeps in poll(2):
/// long enough to catch the next batch NAPI hands over under load (no system call, no
/// wakeup), short enough that an idle endpoint costs next to nothing. Only while spinning
/// pays (`fastwait::AdaptiveSpin`).
#[cfg(feature = "fast-path")]
pub const FAST_SPIN: Duration = crate::fastwait::SPIN;

/// How soon an endpoint whose daemon went away tries to bind again.
pub const REBIND_EVERY: Duration = Duration::from_millis(200);

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// An endpoint owned by this process: its backing socket, and while the daemon serves it, its
/// control connection and ring.
pub struct Endpoint {
    /// Where the daemon listens, to bind again after it went away.
    control: PathBuf,
    request: BindRequest,
    socket: UdpSocket,
    bound: SocketAddr,
    session: Option<Session>,
    /// When to look at the socket next while the ring is busy.
    kernel_due: Instant,
    /// poll(2) saw the socket readable and it was not read empty since: while a fast path
    /// serves, a short batch reads the socket only then (or when [`KERNEL_EVERY`] is due).
    kernel_readable: bool,
    /// When to try binding again while there is no session.
    rebind_due: Instant,
    via_kernel: u64,
    reattached: u32,
    buf: Vec<u8>,
    /// The interface whose queues this endpoint asks to lease, again after every rebind.
    #[cfg(feature = "fast-path")]
    fast_iface: Option<String>,
    /// Whether to spin before the next sleep, and the batch wait (both fast path only).
    #[cfg(feature = "fast-path")]
    spin: crate::fastwait::AdaptiveSpin,
    #[cfg(feature = "fast-path")]
    batch_wait: crate::fastwait::BatchWait,
}

/// The daemon's side of an endpoint: its control connection, descriptor and ring. Without a
/// connection (the daemon stopped), the ring stays: a daemon restarted under systemd picks
/// the endpoint up with its ring, and the endpoint attaches to it again.
struct Session {
    control: Option<Client>,
    id: u32,
    ring: Consumer,
    /// The leased queues, read before the ring.
    #[cfg(feature = "fast-path")]
    fast: Option<crate::fastpath::FastPath>,
}

impl Endpoint {
    /// Binds `local` (a UDP or TCP socket address, `198.18.0.2:9000`, `[::]:53`) with a default
    /// ring.
    pub fn bind(control: impl AsRef<Path>, protocol: Protocol, local: &str) -> Result<Self, Error> {
        Self::bind_with(
            control,
            BindRequest {
                protocol,
                ..BindRequest::udp(
                    local,
                    SinkSpec::Ring {
                        slots: crate::ring::DEFAULT_SLOTS,
                    },
                )
            },
            None,
        )
    }

    /// Binds as `request` says (its sink must be a ring): creates the backing socket — bound
    /// to `local`, set up by `options` (by default [`backing::Options::of`] the request's
    /// binding: its `v6only`, connected to its `connect`; add `reuseport` to share the port
    /// with this uid's other sockets, `join` for multicast groups) — and registers it with the
    /// daemon, which refuses a socket that does not match the request.
    pub fn bind_with(
        control: impl AsRef<Path>,
        request: BindRequest,
        options: Option<backing::Options>,
    ) -> Result<Self, Error> {
        let binding = request.binding()?;
        let (Protocol::Udp, Local::Addr(bound)) = (binding.protocol, binding.local) else {
            return Err(Error::NotASocket(format!(
                "{} {}",
                binding.protocol, binding.local
            )));
        };
        // The daemon first: without it there is nothing to bind a socket for.
        let client = Client::connect(control.as_ref())?;
        let options = options.unwrap_or_else(|| backing::Options::of(&binding));
        let socket = backing::open(bound, &options)?;
        let mut endpoint = Self {
            control: control.as_ref().to_owned(),
            request,
            socket,
            bound,
            session: None,
            kernel_due: Instant::now(),
            kernel_readable: false,
            rebind_due: Instant::now(),
            via_kernel: 0,
            reattached: 0,
            buf: vec![0; MAX_DATAGRAM],
            #[cfg(feature = "fast-path")]
            fast_iface: None,
            #[cfg(feature = "fast-path")]
            spin: Default::default(),
            #[cfg(feature = "fast-path")]
            batch_wait: Default::default(),
        };
        match endpoint.register(client) {
            Ok(session) => endpoint.session = Some(session),
            // Another client's fast path holds the daemon's queues: the backing socket serves
            // this endpoint until it ends; binding again is tried every REBIND_EVERY.
            Err(e) if e.code() == ErrorCode::Busy => endpoint.lose_session(),
            Err(e) => return Err(e),
        }
        Ok(endpoint)
    }

    /// Passes the backing socket to the daemon over `control`; the session it answers with.
    fn register(&self, mut control: Client) -> Result<Session, Error> {
        let (response, fds) = control.bind(self.request.clone(), Some(self.socket.as_fd()))?;
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
        #[allow(unused_mut)]
        let mut session = Session {
            control: Some(control),
            id,
            ring,
            #[cfg(feature = "fast-path")]
            fast: None,
        };
        #[cfg(feature = "fast-path")]
        if let Some(iface) = &self.fast_iface {
            // Refused (another uid's endpoint is bound, …): the ring serves meanwhile.
            if let Ok(fast) = lease(&mut session, iface) {
                session.fast = Some(fast);
            }
        }
        Ok(session)
    }

    /// Asks the daemon for a fast path on `iface` (feature `fast-path`; see "The fast path" in
    /// docs/ARCHITECTURE.md): granted while this endpoint is the only one the daemon holds, it
    /// reads every rx queue of `iface` itself, with no daemon thread in between; asked for
    /// again after every rebind. `Ok` once it is on; refused, the ring serves as before (the
    /// error says why). Datagrams arrive through the same calls, blocking, batch or async.
    #[cfg(feature = "fast-path")]
    pub fn fast_path(&mut self, iface: &str) -> Result<(), Error> {
        self.fast_iface = Some(iface.to_owned());
        let Some(session) = &mut self.session else {
            return Err(ClientError::Closed.into());
        };
        if session.fast.is_some() {
            return Ok(());
        }
        match lease(session, iface) {
            Ok(fast) => {
                session.fast = Some(fast);
                Ok(())
            }
            Err(e) => {
                // A lease granted but not mapped would keep the queues from everyone: start
                // over without it.
                if matches!(e, Error::FastPath(_)) {
                    self.fast_iface = None;
                    self.lose_session();
                }
                Err(e)
            }
        }
    }

    /// Frames the fast path read but did not deliver: `(foreign, bad_checksum)`. A foreign
    /// frame (another endpoint's, or without this build's metadata) never appears while the
    /// lease rule holds.
    #[cfg(feature = "fast-path")]
    pub fn fast_dropped(&self) -> (u64, u64) {
        self.session
            .as_ref()
            .and_then(|s| s.fast.as_ref())
            .map_or((0, 0), |f| (f.dropped_foreign, f.dropped_bad_checksum))
    }

    /// Interrupt moderation in user space (`fastwait::BatchWait`, off by default): while the
    /// fast path serves, after a receive that found datagrams the next empty look sleeps
    /// `wait` (at most `fastwait::MAX_BATCH_WAIT`; zero turns it off) before the blocking
    /// receive sleeps in poll(2), so that NAPI hands over a batch instead of waking the thread
    /// for every few datagrams. Less CPU per datagram at moderate rates, for up to `wait` plus
    /// the thread's timer slack of latency. Measured in docs/BENCHMARKS.md ("Half load").
    #[cfg(feature = "fast-path")]
    pub fn set_batch_wait(&mut self, wait: Duration) {
        self.batch_wait.set(wait);
    }

    /// Whether the fast path serves this endpoint now.
    #[cfg(feature = "fast-path")]
    pub fn is_fast(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.fast.is_some())
    }

    /// Takes up endpoint `id` again on a restarted daemon that picked it up (`attach`, proving
    /// with the backing socket that it is ours).
    fn attach(&self, mut control: Client, id: u32) -> Result<Client, Error> {
        let (response, _) = control.call_with_fds(
            crate::control::Request::Attach { id },
            &[self.socket.as_fd()],
        )?;
        match response {
            Response::Attached { id: got } if got == id => Ok(control),
            other => Err(ClientError::BadResponse(format!(
                "unexpected answer to attach: {other:?}"
            ))
            .into()),
        }
    }

    /// The endpoint's descriptor on the daemon; `None` once the session is lost (the daemon
    /// went away and its ring is drained, and it did not pick the endpoint up).
    pub fn id(&self) -> Option<u32> {
        self.session.as_ref().map(|session| session.id)
    }

    /// Whether the endpoint has a control connection to a daemon now (`false` while the daemon
    /// is away; the ring may still bring what the daemon steered).
    pub fn connected(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.control.is_some())
    }

    /// How often the endpoint took up its session again on a restarted daemon (`attach`).
    pub fn reattached(&self) -> u32 {
        self.reattached
    }

    /// The backing socket: send replies through it (`send_to`), from the endpoint's address.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Datagrams read from the backing socket so far: what the kernel delivered (fragmented,
    /// from this host, or while the daemon was away), not the daemon.
    pub fn via_kernel(&self) -> u64 {
        self.via_kernel
    }

    /// Hands up to `max` waiting datagrams to `each`, without blocking: from the ring without a
    /// system call, and from the backing socket when the ring has fewer than `max` or has kept
    /// it waiting [`KERNEL_EVERY`] (then the socket's first datagram goes first, so that a busy
    /// ring cannot starve it even one datagram at a time). While a fast path serves, whose
    /// batches are short by nature, a short batch reads the socket only once poll(2) saw it
    /// readable: so datagrams flowing through the fast path cost no system call here. Never
    /// more than `max`. Returns how many.
    pub fn recv_batch(
        &mut self,
        max: usize,
        mut each: impl FnMut(DatagramView<'_>),
    ) -> Result<usize, Error> {
        if max == 0 {
            return Ok(0);
        }
        let mut n = 0;
        let mut socket_empty = false;
        let now = Instant::now();
        if now >= self.kernel_due {
            self.kernel_due = now + KERNEL_EVERY;
            n = self.recv_kernel(1, &mut each)?;
            socket_empty = n == 0;
        }
        #[allow(unused_mut)]
        let mut fast = false;
        #[cfg(feature = "fast-path")]
        if let Some(queues) = self.session.as_mut().and_then(|s| s.fast.as_mut()) {
            fast = true;
            let got = queues.receive(max - n, &mut each);
            self.batch_wait.received(got);
            n += got;
        }
        if let Some(session) = &mut self.session {
            let mut bad = None;
            n += session
                .ring
                .consume(max - n, |bytes| match record::decode(bytes) {
                    Ok(view) => each(view),
                    Err(e) => bad = Some(e),
                });
            if let Some(e) = bad {
                return Err(e.into());
            }
        }
        if socket_empty {
            self.kernel_readable = false;
        } else if n < max && (!fast || self.kernel_readable) {
            self.kernel_due = Instant::now() + KERNEL_EVERY;
            let got = self.recv_kernel(max - n, &mut each)?;
            if got < max - n {
                self.kernel_readable = false;
            }
            n += got;
        }
        Ok(n)
    }

    /// Reads up to `max` datagrams from the backing socket.
    fn recv_kernel(
        &mut self,
        max: usize,
        each: &mut impl FnMut(DatagramView<'_>),
    ) -> Result<usize, Error> {
        let mut n = 0;
        while n < max {
            let got = match backing::recv(&self.socket, self.bound, &mut self.buf) {
                Ok(Some(got)) => got,
                Ok(None) => break,
                // An ICMP error reported once on a connected socket: read on.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(Error::Wait(e)),
            };
            let received_ns = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            each(DatagramView {
                protocol: Protocol::Udp,
                peer: got.peer,
                local: got.local,
                received_ns,
                payload: &self.buf[..got.len],
            });
            self.via_kernel += 1;
            n += 1;
        }
        Ok(n)
    }

    fn try_recv(&mut self) -> Result<Option<Datagram>, Error> {
        let mut got = None;
        self.recv_batch(1, |view| got = Some(Datagram::from(view)))?;
        Ok(got)
    }

    fn lose_session(&mut self) {
        self.session = None;
        self.rebind_due = Instant::now() + REBIND_EVERY;
    }

    /// Without a connection, tries once [`REBIND_EVERY`] has passed since the last try: to
    /// attach to the endpoint again (a daemon restarted under systemd picked it up, ring and
    /// all), else — once the old ring is drained — to bind afresh.
    fn rebind_if_due(&mut self) {
        if self.connected() || Instant::now() < self.rebind_due {
            return;
        }
        self.rebind_due = Instant::now() + REBIND_EVERY;
        let Ok(client) = Client::connect(&self.control) else {
            return;
        };
        if let Some(session) = &self.session {
            match self.attach(client, session.id) {
                Ok(client) => {
                    if let Some(session) = &mut self.session {
                        session.control = Some(client);
                        // The old lease ended with the old daemon: ask the new one.
                        #[cfg(feature = "fast-path")]
                        {
                            session.fast = None;
                            if let Some(iface) = &self.fast_iface {
                                session.fast = lease(session, iface).ok();
                            }
                        }
                    }
                    self.reattached += 1;
                    return;
                }
                // The daemon did not pick it up: bind afresh once the old ring is drained
                // (until then its datagrams are still to be read).
                Err(_) => {
                    if !self.session.as_mut().is_some_and(|s| s.ring.is_empty()) {
                        return;
                    }
                    self.session = None;
                }
            }
            let Ok(client) = Client::connect(&self.control) else {
                return;
            };
            if let Ok(session) = self.register(client) {
                self.session = Some(session);
            }
            return;
        }
        if let Ok(session) = self.register(client) {
            self.session = Some(session);
        }
    }

    /// Waits for the next datagram; `Ok(None)` when `timeout` passes first. Survives the
    /// daemon going away (reading the backing socket meanwhile) and binds again when it is back.
    pub fn recv_from(&mut self, timeout: Option<Duration>) -> Result<Option<Datagram>, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            self.rebind_if_due();
            if let Some(datagram) = self.try_recv()? {
                return Ok(Some(datagram));
            }
            let now = Instant::now();
            let mut wait = deadline.map(|d| d.saturating_duration_since(now));
            if self.session.is_none() {
                let rebind = self.rebind_due.saturating_duration_since(now);
                wait = Some(wait.map_or(rebind, |w| w.min(rebind)));
            }
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            if !self.connected() {
                let rebind = self.rebind_due.saturating_duration_since(now);
                wait = Some(wait.map_or(rebind, |w| w.min(rebind)));
            }
            let wait_ms = wait.map_or(-1, |w| w.as_millis().clamp(1, i32::MAX as u128) as i32);
            let Some(session) = &mut self.session else {
                let mut fds = [sys::pollfd(&self.socket, libc::POLLIN)];
                sys::poll(&mut fds, wait_ms).map_err(Error::Wait)?;
                continue;
            };
            // A fast path may first wait for a batch (if asked to, after a busy stretch), then
            // spins a little on its rx rings (and the ring) before it sleeps, while spinning
            // pays: the first look at an empty ring; the second is below, after the wakeup
            // request.
            #[cfg(feature = "fast-path")]
            if let Some(fast) = &session.fast {
                if let Some(wait) = self.batch_wait.before_sleep() {
                    let wait =
                        deadline.map_or(wait, |d| wait.min(d.saturating_duration_since(now)));
                    std::thread::sleep(wait);
                    continue;
                }
                if self.spin.should_spin() {
                    let ring = &mut session.ring;
                    let budget = deadline.map_or(FAST_SPIN, |d| {
                        FAST_SPIN.min(d.saturating_duration_since(now))
                    });
                    let found = spin_until(budget, || fast.has_frames() || !ring.is_empty());
                    self.spin.spun(found);
                    if found {
                        continue;
                    }
                }
            }
            if session.ring.prepare_to_sleep() {
                session.ring.stop_waiting();
                continue;
            }
            // Without a connection, the ring's wakeup and the socket (and the retry's timer).
            let control = session
                .control
                .as_ref()
                .map(|c| c.fd().as_raw_fd())
                .unwrap_or(-1);
            #[allow(unused_mut)]
            let mut fds = [
                sys::pollfd(&session.ring.wake_fd(), libc::POLLIN),
                libc::pollfd {
                    fd: control,
                    events: libc::POLLIN,
                    revents: 0,
                },
                sys::pollfd(&self.socket, libc::POLLIN),
                sys::pollfd(&-1, 0),
                sys::pollfd(&-1, 0),
            ];
            #[allow(unused_mut)]
            let mut watched = 3;
            #[cfg(feature = "fast-path")]
            if let Some(fast) = &session.fast {
                // At most two queues (the daemon's limit per lease).
                for fd in fast.fds().take(2) {
                    fds[watched] = sys::pollfd(&fd, libc::POLLIN);
                    watched += 1;
                }
                if fast.has_frames() {
                    // The daemon does not write the eventfd for a leased queue's frames.
                    session.ring.cancel_wait();
                    continue;
                }
            }
            let ready = sys::poll(&mut fds[..watched], wait_ms);
            // The eventfd is read (a system call) only when poll saw it readable; a write that
            // comes later keeps it readable, and the next sleep returns at once and reads it.
            if fds[0].revents != 0 {
                session.ring.stop_waiting();
            } else {
                session.ring.cancel_wait();
            }
            ready.map_err(Error::Wait)?;
            if fds[2].revents != 0 {
                self.kernel_readable = true;
            }
            if fds[1].revents != 0 {
                self.daemon_gone();
            }
        }
    }

    /// The daemon closed the connection (it stopped or restarted): the session keeps its ring
    /// (its memory stays mapped; a restarted daemon may pick the endpoint up and fill it
    /// again) and the socket carries what the kernel delivers until the endpoint attaches
    /// again or, if the new daemon did not pick it up, binds afresh ([`Endpoint::rebind_if_due`]).
    fn daemon_gone(&mut self) {
        if let Some(session) = &mut self.session {
            session.control = None;
            self.rebind_due = Instant::now() + REBIND_EVERY;
        } else {
            self.lose_session();
        }
    }

    /// Waits for the next datagram on a tokio runtime (feature `async`), as
    /// [`Endpoint::recv_from`] does.
    #[cfg(feature = "async")]
    pub async fn recv_from_async(&mut self) -> Result<Datagram, Error> {
        let socket = watch(self.socket.as_fd())?;
        loop {
            self.rebind_if_due();
            if let Some(datagram) = self.try_recv()? {
                return Ok(datagram);
            }
            let Some(session) = &mut self.session else {
                let rebind = self.rebind_due.saturating_duration_since(Instant::now());
                tokio::select! {
                    ready = socket.readable() => ready.map_err(Error::Wait)?.clear_ready(),
                    () = tokio::time::sleep(rebind) => {}
                }
                continue;
            };
            if session.ring.prepare_to_sleep() {
                session.ring.stop_waiting();
                continue;
            }
            #[allow(unused_mut)]
            let mut queues = Vec::new();
            #[cfg(feature = "fast-path")]
            if let Some(fast) = &session.fast {
                if fast.has_frames() {
                    session.ring.cancel_wait();
                    continue;
                }
                for fd in fast.fds() {
                    queues.push(watch(fd)?);
                }
            }
            let wake = watch(session.ring.wake_fd())?;
            let control = match &session.control {
                Some(control) => Some(watch(control.fd())?),
                None => None,
            };
            let rebind = self.rebind_due.saturating_duration_since(Instant::now());
            let gone = tokio::select! {
                ready = wake.readable() => { ready.map_err(Error::Wait)?.clear_ready(); false }
                ready = socket.readable() => {
                    ready.map_err(Error::Wait)?.clear_ready();
                    self.kernel_readable = true;
                    false
                }
                ready = any_readable(&queues) => { ready.map_err(Error::Wait)?; false }
                _ = async { control.as_ref().expect("connected").readable().await }, if control.is_some() => true,
                () = tokio::time::sleep(rebind), if control.is_none() => false,
            };
            session.ring.stop_waiting();
            if gone {
                self.daemon_gone();
            }
        }
    }
}

/// Spins until `ready` says yes or `budget` has passed (the clock is read every 64 looks: a
/// vDSO call, no system call). Whether `ready` said yes.
#[cfg(feature = "fast-path")]
fn spin_until(budget: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= budget {
            return false;
        }
    }
}

/// Leases the queues of `iface` on `session`'s connection and maps them.
#[cfg(feature = "fast-path")]
fn lease(session: &mut Session, iface: &str) -> Result<crate::fastpath::FastPath, Error> {
    let control = session.control.as_mut().ok_or(ClientError::Closed)?;
    let (response, fds) = control.call_with_fds(
        crate::control::Request::FastPath {
            iface: iface.to_owned(),
        },
        &[],
    )?;
    let Response::FastPath {
        frames, frame_size, ..
    } = response
    else {
        return Err(ClientError::BadResponse(format!(
            "unexpected answer to fast_path: {response:?}"
        ))
        .into());
    };
    let fast = crate::fastpath::FastPath::open(session.id, frames, frame_size, fds)?;
    match control.call(crate::control::Request::FastPathReady)? {
        Response::FastPathOn => Ok(fast),
        other => Err(ClientError::BadResponse(format!(
            "unexpected answer to fast_path_ready: {other:?}"
        ))
        .into()),
    }
}

/// Waits until one of `fds` (the fast path's queues, at most two) is readable; forever if there
/// is none.
#[cfg(feature = "async")]
async fn any_readable(fds: &[tokio::io::unix::AsyncFd<OwnedFd>]) -> io::Result<()> {
    match fds {
        [] => std::future::pending().await,
        [one] => one.readable().await.map(|mut ready| ready.clear_ready()),
        [one, two, ..] => tokio::select! {
            ready = one.readable() => ready.map(|mut ready| ready.clear_ready()),
            ready = two.readable() => ready.map(|mut ready| ready.clear_ready()),
        },
    }
}

/// A copy of `fd` registered with the tokio reactor for readability.
#[cfg(feature = "async")]
fn watch(fd: std::os::fd::BorrowedFd<'_>) -> Result<tokio::io::unix::AsyncFd<OwnedFd>, Error> {
    fd.try_clone_to_owned()
        .and_then(sys::async_readable)
        .map_err(Error::Wait)
}
