//! A queue worker: one thread per AF_XDP socket, which it opens itself (the UMEM's memory stays
//! with the thread that uses it). It waits for frames (poll), reads them in batches, finds each
//! frame's endpoint from its metadata, checks the frame's checksums as the kernel would
//! ([`crate::checksum`]; a bad one is dropped, counted as `dropped_bad_checksum`), delivers the
//! datagram to the endpoint's sink, and returns every frame to the fill ring.

use std::{
    os::fd::{AsRawFd, RawFd},
    sync::mpsc,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime},
};

use crate::{
    checksum::{self, BadChecksum},
    control::SocketInfo,
    datagram::Datagram,
    sink::DropReason,
    xsk::{QueueSocket, XskError},
};

use super::state::{Directory, WorkerCounters};

/// Frames read per batch.
const BATCH: u32 = 64;
/// How long a worker sleeps in poll when its ring is empty; also how soon it notices `stop`.
const POLL_MS: i32 = 100;

/// Starts the worker of (`iface`, `queue`); returns it and its socket's fd, for the XSKMAP.
pub fn spawn(
    iface: &str,
    queue: u32,
    frames: u32,
    directory: Arc<Directory>,
    counters: Arc<WorkerCounters>,
    cell: Arc<Mutex<SocketInfo>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(JoinHandle<()>, RawFd)> {
    let (opened, fd) = mpsc::channel::<Result<RawFd, XskError>>();
    let iface = iface.to_owned();
    let worker = thread::Builder::new()
        .name(format!("demux-{iface}-q{queue}"))
        .spawn(move || {
            let opened_and_lowered = QueueSocket::open(&iface, queue, frames).and_then(|socket| {
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
            let mut socket = match opened_and_lowered {
                Ok(socket) => {
                    let _ = opened.send(Ok(socket.fd()));
                    socket
                }
                Err(e) => {
                    let _ = opened.send(Err(e));
                    return;
                }
            };
            let mut published = Instant::now();
            // Busy polling (SO_PREFER_BUSY_POLL, SO_BUSY_POLL) needs the socket to know its
            // NAPI instance: logged once, after the first frames.
            let mut napi_logged = false;
            // Endpoints delivered to in a batch, to flush (wake) once each after it.
            let mut touched: Vec<u32> = Vec::new();
            loop {
                // Set after the program is detached: one last drain, then the worker ends, so a
                // graceful stop loses nothing that was steered.
                let stopping = stop.load(Relaxed);
                if !stopping {
                    // Readable or not, the loop below looks; the timeout bounds the wait.
                    let _ = crate::sys::poll(
                        &mut [crate::sys::pollfd(&socket.as_raw_fd(), libc::POLLIN)],
                        POLL_MS,
                    );
                }
                loop {
                    let now = SystemTime::now();
                    let endpoints = directory.read().expect("directory lock");
                    let read = socket.receive(BATCH, |frame, meta| {
                        let Some(meta) = meta else {
                            counters.dropped_bad_metadata.fetch_add(1, Relaxed);
                            return;
                        };
                        let Some(endpoint) = endpoints.get(&meta.endpoint) else {
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
                        if !touched.contains(&meta.endpoint) {
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
                        if let Some(endpoint) = endpoints.get(&id) {
                            endpoint.sink.flush();
                        }
                    }
                    drop(endpoints);
                    if read > 0 && !napi_logged {
                        napi_logged = true;
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
                if stopping {
                    break;
                }
                if published.elapsed() > Duration::from_millis(100) {
                    publish(&socket, &cell);
                    published = Instant::now();
                }
            }
            publish(&socket, &cell);
        })?;
    let fd = fd.recv().map_err(|_| {
        anyhow::anyhow!("the worker of queue {queue} died while opening its socket")
    })??;
    Ok((worker, fd))
}

/// Copies the socket's kernel counters where `stats` can read them.
fn publish(socket: &QueueSocket, cell: &Mutex<SocketInfo>) {
    let (frames, free) = socket.frames();
    let (fill, rx) = socket.ring_frames();
    let mut info = cell.lock().expect("socket cell");
    info.frames = frames;
    info.frames_free = free as u64;
    info.frames_fill_ring = u64::from(fill);
    info.frames_rx_ring = u64::from(rx);
    if let Ok(stats) = socket.statistics() {
        info.rx_dropped = stats.rx_dropped;
        info.rx_ring_full = stats.rx_ring_full;
        info.rx_fill_ring_empty = stats.rx_fill_ring_empty_descs;
        info.rx_invalid_descs = stats.rx_invalid_descs;
    }
}
