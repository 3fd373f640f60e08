//! The kernel path of a daemon-held endpoint (a `count`, `pcap:` or `unix:` sink; a ring's
//! client reads its socket itself): what the kernel delivers to the endpoint's backing socket —
//! fragmented datagrams after reassembly, the host's own datagrams, what arrived while the
//! program was not steering — read into the same sink, beside what the queue workers deliver.
//!
//! These are datagrams the XDP program passed, so the accounting counts them as passed; the
//! endpoint counts them apart (`via_kernel`).

use std::{
    net::SocketAddr,
    os::fd::OwnedFd,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::SystemTime,
};

use demux_common::binding::PROTO_UDP;
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use super::state::EndpointHandle;
use crate::{
    backing::{self, Backed},
    binding::Local,
    datagram::Datagram,
    sink::Sink,
};

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// Starts reading endpoint `id`'s backing `socket` into its sink, on the current tokio
/// runtime; `None` outside one (the host unit tests), and with a warning when the socket cannot
/// be watched.
pub fn spawn(
    id: u32,
    backed: &Backed,
    socket: &OwnedFd,
    handle: Arc<EndpointHandle>,
) -> Option<AbortHandle> {
    tokio::runtime::Handle::try_current().ok()?;
    let Local::Addr(bound) = backed.binding.local else {
        return None;
    };
    let watched = socket
        .try_clone()
        .map_err(|cause| backing::BackingError::Io { step: "dup", cause })
        .and_then(|socket| {
            backing::want_destination(&socket, bound.is_ipv6())?;
            crate::sys::async_readable(socket).map_err(|cause| backing::BackingError::Io {
                step: "watching it",
                cause,
            })
        });
    let socket = match watched {
        Ok(socket) => socket,
        Err(e) => {
            warn!(id, "{e}: datagrams the kernel delivers to it are not read");
            return None;
        }
    };
    Some(tokio::spawn(read(id, bound, socket, handle)).abort_handle())
}

async fn read(
    id: u32,
    bound: SocketAddr,
    socket: tokio::io::unix::AsyncFd<OwnedFd>,
    handle: Arc<EndpointHandle>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok(mut ready) = socket.readable().await else {
            return;
        };
        let mut errors = 0;
        loop {
            match backing::recv(socket.get_ref(), bound, &mut buf) {
                Ok(Some(got)) => deliver(id, &handle, &buf[..got.len], got.peer, got.local),
                Ok(None) => {
                    ready.clear_ready();
                    break;
                }
                // A connected socket reports an ICMP error once (ECONNREFUSED): read on, but
                // never spin on an error that stays.
                Err(e) => {
                    debug!(id, "reading the backing socket: {e}");
                    errors += 1;
                    if errors > 16 {
                        ready.clear_ready();
                        break;
                    }
                }
            }
        }
        handle.sink.flush();
    }
}

fn deliver(id: u32, handle: &EndpointHandle, payload: &[u8], peer: SocketAddr, local: SocketAddr) {
    let datagram = Datagram {
        protocol: PROTO_UDP,
        peer,
        local,
        payload,
    };
    let frame = match &handle.sink {
        Sink::Pcap(_) => datagram.udp_frame().unwrap_or_default(),
        _ => Vec::new(),
    };
    let counter = match handle
        .sink
        .deliver(id, &datagram, &frame, SystemTime::now())
    {
        Ok(()) => &handle.via_kernel,
        Err(_) => &handle.via_kernel_dropped,
    };
    counter.fetch_add(1, Relaxed);
}
