//! The generator's system calls that std does not wrap, behind safe functions: the only
//! `unsafe` of this binary (the rest denies `unsafe_code`).

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// A raw AF_PACKET socket (needs root).
pub(crate) fn packet_socket() -> io::Result<OwnedFd> {
    // SAFETY: a plain socket call; the result is checked before it is owned.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A link-layer destination: an interface and a MAC address.
pub(crate) struct LinkAddr(libc::sockaddr_ll);

impl LinkAddr {
    /// `mac` on interface `ifindex`.
    pub(crate) fn new(ifindex: u32, mac: [u8; 6]) -> Self {
        // SAFETY: an all-zero sockaddr_ll is valid; the fields below make it an address.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&mac);
        Self(addr)
    }
}

/// Sends one whole frame on an AF_PACKET socket.
pub(crate) fn send_frame(socket: &OwnedFd, frame: &[u8], to: &LinkAddr) -> io::Result<usize> {
    // SAFETY: `frame` and the address are valid for the call's duration; the kernel reads them.
    let n = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const to.0).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Sends `payloads[i]` to `destinations[(first + i) % len]` in one `sendmmsg`; returns how
/// many datagrams the kernel took.
pub(crate) fn send_batch(
    socket: &UdpSocket,
    payloads: &[Vec<u8>],
    destinations: &[SocketAddr],
    first: usize,
) -> io::Result<usize> {
    let addrs: Vec<_> = (0..payloads.len())
        .map(|i| demux::sys::sockaddr::to_c(destinations[(first + i) % destinations.len()]))
        .collect();
    let mut iovs: Vec<libc::iovec> = payloads
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr().cast_mut().cast(),
            iov_len: p.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .zip(&addrs)
        .map(|(iov, (addr, len))| {
            // SAFETY: mmsghdr is plain data (all-zero is valid); the fields below make it a
            // message.
            let mut msg: libc::mmsghdr = unsafe { std::mem::zeroed() };
            msg.msg_hdr.msg_name = (addr as *const libc::sockaddr_storage).cast_mut().cast();
            msg.msg_hdr.msg_namelen = *len;
            msg.msg_hdr.msg_iov = iov;
            msg.msg_hdr.msg_iovlen = 1;
            msg
        })
        .collect();
    // SAFETY: the messages point at iovecs, payloads and addresses that outlive the call; the
    // kernel only reads them.
    let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
