//! The benchmark's system calls that std does not wrap, behind safe functions: with `uring`, the only
//! `unsafe` of this benchmark (the rest denies `unsafe_code`).

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd},
};

/// A UDP socket bound to `addr` with SO_REUSEPORT and a receive buffer of `rcvbuf` bytes
/// (SO_RCVBUFFORCE, root); IPv6 sockets are v6only.
pub(crate) fn udp_socket(addr: SocketAddr, rcvbuf: i32) -> io::Result<UdpSocket> {
    let family = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: a plain socket call; the result is checked before it is owned.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nobody else owns.
    let socket = unsafe { UdpSocket::from_raw_fd(fd) };
    set_int(&socket, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    set_int(&socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, rcvbuf)?;
    if addr.is_ipv6() {
        set_int(&socket, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    let (storage, len) = demux::sys::sockaddr::to_c(addr);
    // SAFETY: `storage` holds a socket address of `len` bytes; the kernel only reads it.
    if unsafe { libc::bind(socket.as_raw_fd(), (&raw const storage).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

fn set_int(socket: &UdpSocket, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: a valid socket and a pointer to an int option of the size given.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Buffers for `recvmmsg`: up to `N` datagrams of at most 2,048 bytes per call.
pub(crate) struct Batch {
    bufs: Vec<[u8; 2048]>,
    // Point into `bufs` and `iovs`; the vectors are never resized, so their heap memory stays
    // where the pointers say even when the Batch moves.
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside only point into the Batch's own heap buffers.
unsafe impl Send for Batch {}

impl Batch {
    /// Room for `n` datagrams.
    pub(crate) fn new(n: usize) -> Self {
        let mut bufs = vec![[0u8; 2048]; n];
        let mut iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let msgs = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is plain data (all-zero is valid); it points at its iovec.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        Self { bufs, iovs, msgs }
    }

    /// Reads what is waiting (`MSG_WAITFORONE`: blocks for the first, within the socket's
    /// read timeout); returns how many datagrams, 0 on a timeout or an error.
    pub(crate) fn recv(&mut self, socket: &UdpSocket) -> usize {
        debug_assert_eq!(self.iovs.len(), self.msgs.len());
        // SAFETY: the messages point at iovecs and buffers owned by `self`, alive and not
        // otherwise borrowed during the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                self.msgs.len() as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        n.max(0) as usize
    }

    /// Datagram `i` of the last `recv`.
    pub(crate) fn datagram(&self, i: usize) -> &[u8] {
        &self.bufs[i][..self.msgs[i].msg_len as usize]
    }
}

/// Pins the calling thread to `cpu`.
pub(crate) fn pin_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Clock ticks per second, the unit of `/proc/stat`.
pub(crate) fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}
