//! The socket calls std and socket2 do not wrap, for backing sockets ([`crate::backing`]):
//! integer options at any level, the socket and network namespace cookies, attaching a
//! reuseport program, and receiving a datagram with its destination address (IP_PKTINFO /
//! IPV6_PKTINFO).

use std::{
    io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::AsRawFd,
};

/// `SO_NETNS_COOKIE` (Linux 5.14), not in the libc crate yet.
const SO_NETNS_COOKIE: libc::c_int = 71;
/// `SO_COOKIE` (Linux 4.12).
const SO_COOKIE: libc::c_int = 57;
/// `SO_ATTACH_REUSEPORT_EBPF` (Linux 4.6).
const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;
/// `SO_DETACH_REUSEPORT_BPF` (Linux 5.3), not in the libc crate yet.
const SO_DETACH_REUSEPORT_BPF: libc::c_int = 68;

/// An integer option of `fd` (`getsockopt(level, name)`).
pub fn int_option(fd: &impl AsRawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the live local `value`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Sets an integer option of `fd` (`setsockopt(level, name)`).
pub fn set_int_option(fd: &impl AsRawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from the live local `value`.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The cookie of the network namespace `fd` lives in (`SO_NETNS_COOKIE`): equal cookies, same
/// namespace.
pub fn netns_cookie(fd: &impl AsRawFd) -> io::Result<u64> {
    u64_option(fd, SO_NETNS_COOKIE)
}

/// The socket's own cookie (`SO_COOKIE`): the value `bpf_get_socket_cookie` gives a BPF
/// program for it, unique for the life of the system.
pub fn cookie(fd: &impl AsRawFd) -> io::Result<u64> {
    u64_option(fd, SO_COOKIE)
}

/// Attaches BPF program `program` (an `SK_REUSEPORT` or socket filter program's descriptor) to
/// the kernel reuseport group `fd` is a member of (`SO_ATTACH_REUSEPORT_EBPF`): the whole group
/// runs it, replacing any program attached before.
pub fn attach_reuseport(fd: &impl AsRawFd, program: &impl AsRawFd) -> io::Result<()> {
    set_int_option(
        fd,
        libc::SOL_SOCKET,
        SO_ATTACH_REUSEPORT_EBPF,
        program.as_raw_fd(),
    )
}

/// Detaches the program of the kernel reuseport group `fd` is a member of
/// (`SO_DETACH_REUSEPORT_BPF`; `ENOENT` when there is none).
pub fn detach_reuseport(fd: &impl AsRawFd) -> io::Result<()> {
    set_int_option(fd, libc::SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
}

/// A `u64` option at `SOL_SOCKET`.
fn u64_option(fd: &impl AsRawFd, name: i32) -> io::Result<u64> {
    let mut value: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the live local `value`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut u64).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// One datagram received by [`recv_with_destination`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Its length (truncated to the buffer if longer; `truncated` says so).
    pub len: usize,
    /// The sender.
    pub peer: SocketAddr,
    /// The destination address of its IP header, when the socket asked for it (IP_PKTINFO,
    /// IPV6_RECVPKTINFO).
    pub destination: Option<IpAddr>,
    /// Longer than the buffer (MSG_TRUNC).
    pub truncated: bool,
}

/// Receives one datagram into `buf` without waiting (`MSG_DONTWAIT`): `Ok(None)` when none
/// is queued.
pub fn recv_with_destination(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<Option<Received>> {
    // SAFETY: an all-zero sockaddr_storage is a valid buffer for any address.
    let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut peer).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 16]>();
    // SAFETY: every buffer msg points to lives until the call returns and is as long as said.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        let error = io::Error::last_os_error();
        return match error.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(error),
        };
    }
    let Some(peer) = from_c(&peer) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a datagram without an IP sender",
        ));
    };
    let mut destination = None;
    // SAFETY: the kernel filled `control` up to msg_controllen; CMSG_FIRSTHDR/NXTHDR stay within
    // it, and each payload is read unaligned at the size its type says.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info = data.cast::<libc::in_pktinfo>().read_unaligned();
                    destination = Some(IpAddr::V4(Ipv4Addr::from(
                        info.ipi_addr.s_addr.to_ne_bytes(),
                    )));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = data.cast::<libc::in6_pktinfo>().read_unaligned();
                    destination = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Some(Received {
        len: (n as usize).min(buf.len()),
        peer,
        destination,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
    }))
}

/// The socket address a kernel wrote in C form, if it is IPv4 or IPv6.
fn from_c(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
