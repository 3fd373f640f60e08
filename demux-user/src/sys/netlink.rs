//! A raw `NETLINK_ROUTE` socket: open (non-blocking, close-on-exec, optionally subscribed to
//! multicast groups), send one request to the kernel, receive one datagram; and the two safe
//! pieces every user of it shares: a message's header ([`message`]) and the walk over a
//! body's attributes ([`attributes`]). What the messages mean is elsewhere
//! (`daemon::local_addrs`, `multiprog::link`).

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, OwnedFd, RawFd},
};

use super::owned;

/// `RTMGRP_IPV4_ROUTE`: IPv4 route changes.
pub const RTMGRP_IPV4_ROUTE: u32 = 0x40;
/// `RTMGRP_IPV6_ROUTE`: IPv6 route changes.
pub const RTMGRP_IPV6_ROUTE: u32 = 0x400;

/// `struct nlmsghdr`'s length.
pub const NLMSG_HDRLEN: usize = 16;

/// A netlink message: the header (length, `kind`, `flags`, `seq`, port id 0: the kernel
/// fills it in) followed by `body`.
pub fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(NLMSG_HDRLEN + body.len());
    message.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(body);
    message
}

/// An attribute whose length is under 4 or past the end of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadAttribute;

/// The attributes (`struct nlattr`, 4-byte aligned) in `bytes`, as (type with its flag bits,
/// value). Fewer than 4 bytes left ends the walk; a bad length ends it with
/// `Err(BadAttribute)`.
pub fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), BadAttribute>> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]);
        if len < 4 || len > bytes.len() {
            bytes = &[];
            return Some(Err(BadAttribute));
        }
        let value = &bytes[4..len];
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
        Some(Ok((kind, value)))
    })
}

/// One `AF_NETLINK`, `NETLINK_ROUTE` datagram socket of this network namespace.
#[derive(Debug)]
pub struct RouteSocket(OwnedFd);

impl RouteSocket {
    /// A new non-blocking socket, subscribed to `groups` (`RTMGRP_*` bits; 0 for none).
    pub fn open(groups: u32) -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked and owned at once.
        let fd = owned(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        })?;
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = groups;
        // SAFETY: `addr` is a valid sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    /// Sends one request (a whole netlink message) to the kernel.
    pub fn send(&self, message: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain data; all-zero (pid 0) addresses the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `message` is valid for its length; `kernel` is a valid address of the size
        // passed.
        let sent = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
                (&raw const kernel).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        match sent {
            n if n < 0 => Err(io::Error::last_os_error()),
            n if n as usize != message.len() => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "netlink request sent in part",
            )),
            _ => Ok(()),
        }
    }

    /// Receives one datagram into `buf` (non-blocking: `WouldBlock` when none is queued). A
    /// datagram longer than `buf` is an error (`MSG_TRUNC`), never silently cut.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid and exclusively borrowed for its length.
        let got = unsafe {
            libc::recv(
                self.0.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = got as usize;
        if got > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "netlink datagram of {got} bytes is longer than the {}-byte buffer",
                    buf.len()
                ),
            ));
        }
        Ok(got)
    }
}

impl AsRawFd for RouteSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

// SAFETY: the socket owns its descriptor and closes it only when dropped.
#[cfg(feature = "async")]
unsafe impl super::StableFd for RouteSocket {}

/// The MAC address of interface `name` (`SIOCGIFHWADDR`), in this process's network namespace.
pub fn hardware_address(name: &str) -> io::Result<[u8; 6]> {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= request.ifr_name.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{name}` is not an interface name"),
        ));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the result is checked and owned at once.
    let socket =
        owned(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: SIOCGIFHWADDR reads the NUL-terminated name and writes the address into the
    // `ifreq` we own, which is valid for the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &raw mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after SIOCGIFHWADDR the union holds `ifru_hwaddr`.
    let data = unsafe { request.ifr_ifru.ifru_hwaddr.sa_data };
    Ok(std::array::from_fn(|i| data[i] as u8))
}
