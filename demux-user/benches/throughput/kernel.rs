//! The baseline: kernel UDP sockets in the receiving namespace, read with recvmmsg, or with an
//! io_uring multishot recvmsg on provided buffers (`uring`).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc, Arc, Mutex,
    },
    thread,
    time::Duration,
};

use anyhow::Context as _;

use demux::testing::testbed::enter_netns;

use crate::{
    probes::RX_CPU,
    sys::{self, pin_cpu},
    syscalls::thread_id,
    uring::UringReceiver,
};

/// How a receiver thread reads its socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reader {
    /// recvmmsg, 64 datagrams at most per call, blocking for the first.
    Recvmmsg,
    /// io_uring: one multishot recvmsg with provided buffers, waiting for completions.
    Iouring,
}

/// Running receiver threads; `finish` stops them and returns what they read.
pub(crate) struct Receivers {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    latencies: Arc<Mutex<Vec<u64>>>,
    /// The receiving threads' ids, for the system call count.
    tids: Vec<u32>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Receivers {
    /// The receiving threads' ids.
    pub(crate) fn thread_ids(&self) -> &[u32] {
        &self.tids
    }

    /// Datagrams read, and the send-to-read latencies (ns) if asked for.
    pub(crate) fn finish(self) -> (u64, Vec<u64>) {
        self.stop.store(true, Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let latencies = std::mem::take(&mut *self.latencies.lock().expect("latency lock"));
        (self.count.load(Relaxed), latencies)
    }
}

/// A UDP socket with SO_REUSEPORT, bound to `addr` (IPv6 sockets are v6only), with a 4 MiB
/// receive buffer (about 5,000 small datagrams): what a user tuning for rate would set, and
/// near the depth of demux's rings; root may pass net.core.rmem_max.
fn reuseport_socket(addr: SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
    let socket = sys::udp_socket(addr, 4 << 20).with_context(|| format!("socket on {addr}"))?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    Ok(socket)
}

/// Starts `sockets` SO_REUSEPORT sockets on `addr` in namespace `ns`, read by `reader`, a thread each (pinned to
/// the receiving CPU when there is one socket); with `latency`, each thread keeps the
/// send-to-read time of every datagram.
pub(crate) fn start(
    ns: &str,
    reader: Reader,
    sockets: usize,
    addr: SocketAddr,
    latency: bool,
) -> anyhow::Result<Receivers> {
    let receivers = Receivers {
        stop: Arc::new(AtomicBool::new(false)),
        count: Arc::new(AtomicU64::new(0)),
        latencies: Arc::new(Mutex::new(Vec::new())),
        tids: Vec::new(),
        threads: Vec::new(),
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut threads = Vec::new();
    for _ in 0..sockets {
        let ns = ns.to_owned();
        let (stop, count, all_latencies, ready) = (
            receivers.stop.clone(),
            receivers.count.clone(),
            receivers.latencies.clone(),
            ready_tx.clone(),
        );
        threads.push(thread::spawn(move || {
            let setup = || -> anyhow::Result<(std::net::UdpSocket, Option<UringReceiver>)> {
                enter_netns(&ns)?;
                if sockets == 1 {
                    pin_cpu(RX_CPU);
                }
                let socket = reuseport_socket(addr)?;
                // Set up on this thread, the ring's single issuer.
                let ring = match reader {
                    Reader::Recvmmsg => None,
                    Reader::Iouring => {
                        Some(UringReceiver::new(&socket).context("setting up the io_uring")?)
                    }
                };
                Ok((socket, ring))
            };
            let (socket, ring) = match setup() {
                Ok(s) => {
                    let _ = ready.send(Ok(thread_id()));
                    s
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let mut latencies = Vec::new();
            let wanted = latency.then_some(&mut latencies);
            match ring {
                None => read_loop(&socket, &stop, &count, wanted),
                Some(ring) => uring_loop(ring, &stop, &count, wanted),
            }
            all_latencies
                .lock()
                .expect("latency lock")
                .extend(latencies);
        }));
    }
    let mut receivers = Receivers {
        threads,
        ..receivers
    };
    for _ in 0..sockets {
        receivers
            .tids
            .extend(ready_rx.recv().context("a receiver thread died")??);
    }
    Ok(receivers)
}

fn read_loop(
    socket: &std::net::UdpSocket,
    stop: &AtomicBool,
    count: &AtomicU64,
    mut latencies: Option<&mut Vec<u64>>,
) {
    let mut batch = sys::Batch::new(64);
    while !stop.load(Relaxed) {
        let n = batch.recv(socket);
        if n == 0 {
            continue;
        }
        count.fetch_add(n as u64, Relaxed);
        if let Some(latencies) = latencies.as_deref_mut() {
            let now = demux::sys::monotonic_ns();
            for i in 0..n {
                if let Some((_, sent)) = demux::testing::frame::read_stamp(batch.datagram(i)) {
                    latencies.push(now.saturating_sub(sent));
                }
            }
        }
    }
}

/// The io_uring reader: waits for completions, the socket's read timeout as the wait's bound.
fn uring_loop(
    mut ring: UringReceiver,
    stop: &AtomicBool,
    count: &AtomicU64,
    mut latencies: Option<&mut Vec<u64>>,
) {
    let want = latencies.is_some();
    let mut stamps = Vec::new();
    while !stop.load(Relaxed) {
        let n = ring.recv(Duration::from_millis(50), |datagram| {
            if want {
                if let Some((_, sent)) = demux::testing::frame::read_stamp(datagram) {
                    stamps.push(sent);
                }
            }
        });
        if n == 0 {
            continue;
        }
        count.fetch_add(n as u64, Relaxed);
        if let Some(latencies) = latencies.as_deref_mut() {
            let now = demux::sys::monotonic_ns();
            latencies.extend(stamps.drain(..).map(|sent| now.saturating_sub(sent)));
        }
    }
}
