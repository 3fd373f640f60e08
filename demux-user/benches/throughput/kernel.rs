//! The baseline: kernel UDP sockets in the receiving namespace, read with recvmmsg.

use std::{
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc, Arc, Mutex,
    },
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _};

use demux::testing::testbed::enter_netns;

use crate::probes::{pin_cpu, RX_CPU};

/// Running receiver threads; `finish` stops them and returns what they read.
pub(crate) struct Receivers {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    latencies: Arc<Mutex<Vec<u64>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Receivers {
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

/// A UDP socket with SO_REUSEPORT, bound to `addr` (IPv6 sockets are v6only).
fn reuseport_socket(addr: SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
    let family = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket calls on a fresh socket, owned right away.
    let socket = unsafe {
        let fd = libc::socket(family, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket");
        }
        std::net::UdpSocket::from_raw_fd(fd)
    };
    let one: libc::c_int = 1;
    let set = |level, name| {
        // SAFETY: a valid socket and an int option.
        unsafe { libc::setsockopt(socket.as_raw_fd(), level, name, (&raw const one).cast(), 4) }
    };
    set(libc::SOL_SOCKET, libc::SO_REUSEPORT);
    // A 4 MiB receive buffer (about 5,000 small datagrams), as a user tuning for rate would
    // set, and near the depth of demux's rings; root may pass net.core.rmem_max.
    let bytes: libc::c_int = 4 << 20;
    // SAFETY: a valid socket and an int option.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const bytes).cast(),
            4,
        )
    };
    if addr.is_ipv6() {
        set(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY);
    }
    let (storage, len) = demux::sys::sockaddr::to_c(addr);
    // SAFETY: storage holds a socket address of `len` bytes.
    if unsafe { libc::bind(socket.as_raw_fd(), (&raw const storage).cast(), len) } != 0 {
        bail!("bind {addr}: {}", std::io::Error::last_os_error());
    }
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    Ok(socket)
}

/// Starts `sockets` SO_REUSEPORT sockets on `addr` in namespace `ns`, a thread each (pinned to
/// the receiving CPU when there is one socket); with `latency`, each thread keeps the
/// send-to-read time of every datagram.
pub(crate) fn start(
    ns: &str,
    sockets: usize,
    addr: SocketAddr,
    latency: bool,
) -> anyhow::Result<Receivers> {
    let receivers = Receivers {
        stop: Arc::new(AtomicBool::new(false)),
        count: Arc::new(AtomicU64::new(0)),
        latencies: Arc::new(Mutex::new(Vec::new())),
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
            let setup = || -> anyhow::Result<std::net::UdpSocket> {
                enter_netns(&ns)?;
                if sockets == 1 {
                    pin_cpu(RX_CPU);
                }
                reuseport_socket(addr)
            };
            let socket = match setup() {
                Ok(s) => {
                    let _ = ready.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let mut latencies = Vec::new();
            read_loop(&socket, &stop, &count, latency.then_some(&mut latencies));
            all_latencies
                .lock()
                .expect("latency lock")
                .extend(latencies);
        }));
    }
    let receivers = Receivers {
        threads,
        ..receivers
    };
    for _ in 0..sockets {
        ready_rx.recv().context("a receiver thread died")??;
    }
    Ok(receivers)
}

fn read_loop(
    socket: &std::net::UdpSocket,
    stop: &AtomicBool,
    count: &AtomicU64,
    mut latencies: Option<&mut Vec<u64>>,
) {
    const BATCH: usize = 64;
    let mut bufs = vec![[0u8; 2048]; BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is plain data (all-zero is valid); it points at its iovec below.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    while !stop.load(Relaxed) {
        // SAFETY: msgs, iovs and bufs live across the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue;
        }
        count.fetch_add(n as u64, Relaxed);
        if let Some(latencies) = latencies.as_deref_mut() {
            let now = demux::sys::monotonic_ns();
            for (msg, buf) in msgs.iter().zip(&bufs).take(n as usize) {
                if let Some((_, sent)) =
                    demux::testing::frame::read_stamp(&buf[..msg.msg_len as usize])
                {
                    latencies.push(now.saturating_sub(sent));
                }
            }
        }
    }
}
