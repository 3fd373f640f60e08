//! A queue worker: one thread per AF_XDP socket, which it opens itself (the UMEM's memory stays
//! with the thread that uses it). It waits for frames (poll), reads them in batches (a
//! multi-buffer frame gathered whole from its descriptors; a broken chain of descriptors is
//! counted as `dropped_bad_chain`), finds each frame's endpoint from its metadata, checks the frame's checksums as the kernel would
//! ([`crate::checksum`]; a bad one is dropped, counted as `dropped_bad_checksum`), delivers the
//! datagram to the endpoint's sink, and returns every frame to the fill ring.

use std::{
    os::fd::{AsRawFd, OwnedFd, RawFd},
    sync::mpsc,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime},
};

use xdpilone::xdp::XdpStatisticsV2;

use crate::{
    checksum::{self, BadChecksum},
    control::SocketInfo,
    datagram::Datagram,
    program::SocketSlot,
    sink::DropReason,
    xsk::{BindMode, LeasedSocket, QueueSocket, Received, XskError},
};

use super::state::{Directory, WorkerCounters};

/// Frames read per batch.
const BATCH: u32 = 64;
/// Tries of a leased socket's bind, 20 ms apart (within the control socket's wait for it).
const BIND_RETRIES: u32 = 50;
/// How long a worker sleeps in poll when its ring is empty; also how soon it notices `stop`.
const POLL_MS: i32 = 100;
/// How often a worker publishes its counters. For a leased queue this is also how often the
/// rx ring's producer index (a wrapping `u32`) is read, which must happen before 2^32 more
/// frames arrive: between two reads lie at most this, one poll wait ([`POLL_MS`]) and one
/// command (the longest, a bind retried for [`BIND_RETRIES`] × 20 ms), about 1.2 s, while 2^32
/// frames take over 7 s even at 400 Gb/s line rate of minimum-size frames (595 Mpps), and a
/// copy-mode queue takes a few Mpps at most.
const PUBLISH_MS: u64 = 100;

/// What the control plane asks of a queue worker for a fast-path lease (see "The fast path" in
/// docs/ARCHITECTURE.md). The worker answers through the oneshot; the control socket's task
/// awaits it, never blocking the runtime.
pub enum Command {
    /// Drain and close the queue's own socket, open a leased one (fresh UMEM, unbound) and
    /// answer with what the client maps.
    Lease(tokio::sync::oneshot::Sender<Result<LeaseFds, String>>),
    /// Bind the leased socket (the client has mapped its rings) and steer the queue to it.
    Bind(tokio::sync::oneshot::Sender<Result<(), String>>),
    /// The lease is over (its slot is empty already): close the leased socket and open the
    /// queue's own again, retrying while the client still holds the old one (the kernel takes
    /// one UMEM per queue).
    End,
}

/// A leased queue's descriptors for the client: its AF_XDP socket and its UMEM (read-only).
pub struct LeaseFds {
    pub socket: OwnedFd,
    pub umem: OwnedFd,
    pub frames: u32,
}

/// A queue worker's handle, kept by the state for leases.
#[derive(Clone)]
pub struct QueueControl {
    pub iface: String,
    pub queue: u32,
    pub commands: mpsc::Sender<Command>,
    pub slot: SocketSlot,
}

/// What the worker's queue is served by.
enum Mode {
    /// Its own socket: the worker reads every frame and delivers it.
    Own(QueueSocket),
    /// A fast-path lease: the client reads the queue; the worker only publishes its counters.
    Leased(LeasedSocket),
    /// Between the two: no socket (the slot is empty, steered frames go to the kernel) until
    /// the queue's own socket can be opened again.
    Reopening,
}

/// Starts the worker of (`iface`, `queue`); returns it, its socket's fd for the XSKMAP and the
/// socket's frame limit for `XSK_FRAME_LIMITS` ([`QueueSocket::frame_limit`]), and its control
/// handle (`slot` is where a replacement socket goes). Every socket of the queue
/// (its own, reopened, leased) has `frames` frames and binds in `bind`.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    iface: &str,
    queue: u32,
    frames: u32,
    bind: BindMode,
    directory: Arc<Directory>,
    counters: Arc<WorkerCounters>,
    cell: Arc<Mutex<SocketInfo>>,
    stop: Arc<AtomicBool>,
    slot: SocketSlot,
) -> anyhow::Result<(JoinHandle<()>, RawFd, u32, QueueControl)> {
    let (opened, fd) = mpsc::channel::<Result<(RawFd, u32), XskError>>();
    let (commands, inbox) = mpsc::channel::<Command>();
    let control = QueueControl {
        iface: iface.to_owned(),
        queue,
        commands,
        slot: slot.clone(),
    };
    let iface = iface.to_owned();
    let worker = thread::Builder::new()
        .name(format!("demux-{iface}-q{queue}"))
        .spawn(move || {
            let opened_and_lowered =
                QueueSocket::open(&iface, queue, frames, bind).and_then(|socket| {
                    // Socket open: this thread keeps only the run-time capabilities from here on
                    // (it was started before the daemon's own drop, see `privileges`).
                    super::privileges::restrict_thread().map_err(|e| XskError::Step {
                        iface: iface.clone(),
                        queue,
                        step: "lowering the worker's capabilities to the run-time set",
                        errno: e.to_string(),
                    })?;
                    Ok(socket)
                });
            let socket = match opened_and_lowered {
                Ok(socket) => {
                    // Once per queue: whether jumbo frames come through AF_XDP here.
                    tracing::info!("{}", socket.describe());
                    let _ = opened.send(Ok((socket.fd(), socket.frame_limit())));
                    socket
                }
                Err(e) => {
                    let _ = opened.send(Err(e));
                    return;
                }
            };
            let maps_bound_rings = socket.maps_bound_rings();
            tracing::debug!(
                "{iface} queue {queue}: the kernel maps a bound AF_XDP socket's rings: \
                 {maps_bound_rings} (a leased socket is bound before the hand-over if so)"
            );
            let mut worker = Worker {
                retired: KernelCounts::default(),
                maps_bound_rings,
                iface,
                queue,
                frames,
                bind,
                directory,
                counters,
                cell,
                slot,
                napi_logged: false,
                touched: Vec::new(),
            };
            let mut mode = Mode::Own(socket);
            let mut published = Instant::now();
            loop {
                // Set after the program is detached: one last drain, then the worker ends, so a
                // graceful stop loses nothing that was steered.
                let stopping = stop.load(Relaxed);
                let command = match &mut mode {
                    Mode::Own(socket) => {
                        worker.serve(socket, !stopping);
                        inbox.try_recv().ok()
                    }
                    Mode::Leased(_) | Mode::Reopening => {
                        match inbox.recv_timeout(Duration::from_millis(POLL_MS as u64)) {
                            Ok(command) => Some(command),
                            Err(mpsc::RecvTimeoutError::Timeout) => None,
                            // The state is gone: the daemon is stopping.
                            Err(mpsc::RecvTimeoutError::Disconnected) => {
                                thread::sleep(Duration::from_millis(POLL_MS as u64));
                                None
                            }
                        }
                    }
                };
                if stopping {
                    break;
                }
                if let Some(command) = command {
                    mode = worker.obey(command, mode);
                }
                if matches!(mode, Mode::Reopening) {
                    mode = worker.reopen();
                }
                // Also bounds the time between two reads of a leased rx ring's producer index
                // (`LeasedSocket::handed_to_client`): see `PUBLISH_MS`.
                if published.elapsed() > Duration::from_millis(PUBLISH_MS) {
                    worker.publish(&mut mode);
                    published = Instant::now();
                }
            }
            worker.publish(&mut mode);
        })?;
    let (fd, frame_limit) = fd.recv().map_err(|_| {
        anyhow::anyhow!("the worker of queue {queue} died while opening its socket")
    })??;
    Ok((worker, fd, frame_limit, control))
}

/// A worker's fixed parts.
struct Worker {
    iface: String,
    queue: u32,
    frames: u32,
    bind: BindMode,
    directory: Arc<Directory>,
    counters: Arc<WorkerCounters>,
    cell: Arc<Mutex<SocketInfo>>,
    slot: SocketSlot,
    /// Busy polling (SO_PREFER_BUSY_POLL, SO_BUSY_POLL) needs the socket to know its NAPI
    /// instance: logged once, after the first frames.
    napi_logged: bool,
    /// Endpoints delivered to in a batch whose sink wakes a reader ([`crate::sink::Sink::wakes`]), to flush
    /// once each after it.
    touched: Vec<u32>,
    /// The kernel counters of the queue's earlier sockets (replaced when a lease starts and
    /// ends), added to the current socket's so that `stats` never goes back.
    retired: KernelCounts,
    /// Whether the kernel maps a bound socket's rings ([`QueueSocket::maps_bound_rings`]):
    /// then a leased socket is bound before the client gets it, so the client never holds an
    /// unbound AF_XDP socket it could bind elsewhere.
    maps_bound_rings: bool,
}

impl Worker {
    /// Waits for frames (`wait`: poll, bounded by [`POLL_MS`]) and delivers them all.
    fn serve(&mut self, socket: &mut QueueSocket, wait: bool) {
        let Self {
            iface,
            queue,
            directory,
            counters,
            napi_logged,
            touched,
            ..
        } = self;
        if wait {
            // Readable or not, the loop below looks; the timeout bounds the wait.
            let _ = crate::sys::poll(
                &mut [crate::sys::pollfd(&socket.as_raw_fd(), libc::POLLIN)],
                POLL_MS,
            );
        }
        loop {
            let now = SystemTime::now();
            let endpoints = directory.read();
            // Spread over many endpoints, each frame's handle is a cache miss: ask for them
            // all first, so that the misses overlap (docs/BENCHMARKS.md, "Scale, part 4").
            socket.peek_endpoints(BATCH, |id| {
                if let Some(endpoint) = endpoints.get(id) {
                    crate::sys::prefetch(&endpoint.sink);
                    crate::sys::prefetch(&endpoint.delivered);
                }
            });
            let read = socket.receive(BATCH, |packet| {
                let (frame, meta) = match packet {
                    Received::Frame(frame, meta) => (frame, meta),
                    Received::Broken(e) => {
                        tracing::debug!("{iface} queue {queue}: dropped a frame: {e}");
                        counters.dropped_bad_chain.fetch_add(1, Relaxed);
                        return;
                    }
                };
                let Some(meta) = meta else {
                    counters.dropped_bad_metadata.fetch_add(1, Relaxed);
                    return;
                };
                let Some(endpoint) = endpoints.get(meta.endpoint) else {
                    counters.dropped_no_endpoint.fetch_add(1, Relaxed);
                    return;
                };
                let Some(datagram) = Datagram::from_frame(frame, &meta) else {
                    counters.dropped_bad_metadata.fetch_add(1, Relaxed);
                    return;
                };
                // As the kernel: a bad checksum never reaches a socket.
                match checksum::verify(frame, &meta) {
                    Ok(()) => {}
                    Err(BadChecksum::Malformed) => {
                        counters.dropped_bad_metadata.fetch_add(1, Relaxed);
                        return;
                    }
                    Err(_) => {
                        counters.dropped_bad_checksum.fetch_add(1, Relaxed);
                        return;
                    }
                }
                if endpoint.sink.wakes() && !touched.contains(&meta.endpoint) {
                    touched.push(meta.endpoint);
                }
                match endpoint.sink.deliver(meta.endpoint, &datagram, frame, now) {
                    Ok(()) => {
                        endpoint.delivered.fetch_add(1, Relaxed);
                        endpoint
                            .delivered_bytes
                            .fetch_add(datagram.payload.len() as u64, Relaxed);
                    }
                    Err(DropReason::SinkFull) => {
                        endpoint.dropped_sink_full.fetch_add(1, Relaxed);
                    }
                    Err(DropReason::SinkError) => {
                        endpoint.dropped_sink_error.fetch_add(1, Relaxed);
                    }
                }
            });
            for id in touched.drain(..) {
                if let Some(endpoint) = endpoints.get(id) {
                    endpoint.sink.flush();
                }
            }
            drop(endpoints);
            if read > 0 && !*napi_logged {
                *napi_logged = true;
                let napi = crate::sys::socket::int_option(
                    &socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_INCOMING_NAPI_ID,
                );
                tracing::info!(
                    "AF_XDP socket on {iface} queue {queue}: SO_INCOMING_NAPI_ID {napi:?}"
                );
            }
            if read < BATCH {
                break;
            }
        }
    }

    /// Carries out `command`; returns what serves the queue next.
    fn obey(&mut self, command: Command, mode: Mode) -> Mode {
        let (iface, queue) = (self.iface.clone(), self.queue);
        match (command, mode) {
            (Command::Lease(reply), mode) => {
                match mode {
                    Mode::Own(mut socket) => {
                        // Deliver what is steered already, then close: the kernel takes the
                        // closed socket out of the slot, and a fresh UMEM holds no frame of
                        // before.
                        self.serve(&mut socket, false);
                        self.retired.add(socket.statistics());
                    }
                    Mode::Leased(mut old) => self.retired.retire_lease(&mut old),
                    Mode::Reopening => {}
                }
                let bind_first = self.maps_bound_rings;
                match LeasedSocket::open(&iface, queue, self.frames, self.bind).and_then(
                    |mut leased| {
                        if bind_first {
                            bind_retrying(&mut leased, &iface, queue)?;
                        }
                        let (socket, umem) = leased.client_fds().map_err(|e| XskError::Step {
                            iface: iface.clone(),
                            queue,
                            step: "handing over the leased socket",
                            errno: e.to_string(),
                        })?;
                        Ok((leased, socket, umem))
                    },
                ) {
                    Ok((leased, socket, umem)) => {
                        tracing::info!(%iface, queue, "queue leased for a fast path");
                        let frames = leased.frames;
                        let _ = reply.send(Ok(LeaseFds {
                            socket,
                            umem,
                            frames,
                        }));
                        Mode::Leased(leased)
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                        Mode::Reopening
                    }
                }
            }
            (Command::Bind(reply), Mode::Leased(mut leased)) => {
                let result = bind_retrying(&mut leased, &iface, queue)
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        self.slot
                            // A leased socket is bound without XDP_USE_SG (the client reads one
                            // descriptor per frame): longer frames pass to the kernel.
                            .set(leased.fd(), 0)
                            .map_err(|e| e.to_string())
                    });
                let _ = reply.send(result);
                Mode::Leased(leased)
            }
            (Command::Bind(reply), mode) => {
                let _ = reply.send(Err(format!("queue {queue} of {iface} is not leased")));
                mode
            }
            (Command::End, Mode::Leased(mut leased)) => {
                // The slot is empty already: this last read of the producer index counts every
                // frame the lease got.
                self.retired.retire_lease(&mut leased);
                tracing::info!(%iface, queue, "fast-path lease ended");
                Mode::Reopening
            }
            (Command::End, mode) => mode,
        }
    }

    /// Opens the queue's own socket again and steers the queue to it; stays [`Mode::Reopening`]
    /// while the kernel refuses (a client still holds the leased socket: `EBUSY`).
    fn reopen(&mut self) -> Mode {
        match QueueSocket::open(&self.iface, self.queue, self.frames, self.bind) {
            Ok(socket) => match self.slot.set(socket.fd(), socket.frame_limit()) {
                Ok(()) => {
                    tracing::info!(iface = %self.iface, queue = self.queue, "queue served by the daemon again");
                    tracing::debug!("{}", socket.describe());
                    Mode::Own(socket)
                }
                Err(e) => {
                    tracing::warn!(iface = %self.iface, queue = self.queue, "steering to the reopened socket: {e}");
                    Mode::Reopening
                }
            },
            Err(e) => {
                tracing::debug!(iface = %self.iface, queue = self.queue, "reopening: {e}");
                Mode::Reopening
            }
        }
    }

    fn publish(&self, mode: &mut Mode) {
        match mode {
            Mode::Own(socket) => publish(socket, &self.cell, &self.retired),
            Mode::Leased(leased) => {
                let mut info = self.cell.lock().expect("socket cell");
                // The client holds the frames: the daemon cannot count where they are.
                info.leased = true;
                info.frames = 0;
                info.frame_limit = 0;
                info.frames_free = 0;
                info.frames_fill_ring = 0;
                info.frames_rx_ring = 0;
                let mut counts = self.retired;
                counts.retire_lease(leased);
                counts.write(&mut info);
            }
            Mode::Reopening => {}
        }
    }
}

/// Binds `leased` (nothing if bound already). The kernel lets go of the queue's previous UMEM
/// in a deferred work item after its socket closed: `EBUSY` for a moment, so it retries.
fn bind_retrying(leased: &mut LeasedSocket, iface: &str, queue: u32) -> Result<(), XskError> {
    let mut bound = leased.bind(iface, queue);
    for _ in 0..BIND_RETRIES {
        if bound.is_ok() {
            break;
        }
        thread::sleep(Duration::from_millis(20));
        bound = leased.bind(iface, queue);
    }
    bound
}

/// XDP_STATISTICS counters, and the frames the kernel put on leased sockets' rx rings, summed
/// over sockets.
#[derive(Clone, Copy, Default)]
struct KernelCounts {
    rx_dropped: u64,
    rx_ring_full: u64,
    rx_fill_ring_empty: u64,
    rx_invalid_descs: u64,
    handed_to_client: u64,
}

impl KernelCounts {
    /// Adds a socket's counters (nothing if they could not be read).
    fn add(&mut self, stats: Result<XdpStatisticsV2, String>) {
        if let Ok(stats) = stats {
            self.rx_dropped += stats.rx_dropped;
            self.rx_ring_full += stats.rx_ring_full;
            self.rx_fill_ring_empty += stats.rx_fill_ring_empty_descs;
            self.rx_invalid_descs += stats.rx_invalid_descs;
        }
    }

    /// Adds a leased socket's counters and the frames handed to its client so far (its rx
    /// ring's producer index, read now).
    fn retire_lease(&mut self, leased: &mut LeasedSocket) {
        self.add(leased.statistics());
        self.handed_to_client = self
            .handed_to_client
            .saturating_add(leased.handed_to_client());
    }

    fn write(&self, info: &mut SocketInfo) {
        info.rx_dropped = self.rx_dropped;
        info.rx_ring_full = self.rx_ring_full;
        info.rx_fill_ring_empty = self.rx_fill_ring_empty;
        info.rx_invalid_descs = self.rx_invalid_descs;
        info.handed_to_client = self.handed_to_client;
    }
}

/// Copies the socket's kernel counters, on top of the queue's earlier sockets' `retired`,
/// where `stats` can read them.
fn publish(socket: &QueueSocket, cell: &Mutex<SocketInfo>, retired: &KernelCounts) {
    let (frames, free) = socket.frames();
    let (fill, rx) = socket.ring_frames();
    let mut info = cell.lock().expect("socket cell");
    info.leased = false;
    info.frame_limit = socket.frame_limit();
    info.frames = frames;
    info.frames_free = free as u64;
    info.frames_fill_ring = u64::from(fill);
    info.frames_rx_ring = u64::from(rx);
    let mut counts = *retired;
    counts.add(socket.statistics());
    counts.write(&mut info);
}
