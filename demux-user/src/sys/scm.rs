//! Passing file descriptors over Unix sockets (SCM_RIGHTS): the daemon attaches a ring's
//! memfd and eventfd to the response that creates the endpoint, a client attaches the sink it
//! opened (a pcap file, a connected Unix datagram socket) to its bind request. And credentials
//! (SCM_CREDENTIALS): a `unix:` sink's records carry the endpoint owner's uid and gid.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

/// Room for this many descriptors in one message; the kernel closes any beyond.
pub const MAX_FDS: usize = 4;

fn cmsg_space() -> usize {
    // SAFETY: CMSG_SPACE is a pure size computation.
    unsafe { libc::CMSG_SPACE((MAX_FDS * size_of::<RawFd>()) as u32) as usize }
}

/// One `sendmsg` of `msg` without blocking and without SIGPIPE.
fn sendmsg_dontwait(socket: RawFd, msg: &libc::msghdr) -> io::Result<usize> {
    // SAFETY: the callers' msg points at buffers that live across the call; the kernel only
    // reads them.
    let sent = unsafe { libc::sendmsg(socket, msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// Sends `bytes` with `fds` attached; returns the bytes sent (the rest is sent without fds).
pub fn send(socket: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    assert!(fds.len() <= MAX_FDS);
    let mut control = vec![0u8; cmsg_space()];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut _,
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: as CMSG_SPACE above.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) } as _;
        // SAFETY: msg_control holds room for one cmsg with fds.len() descriptors.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(cmsg).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    sendmsg_dontwait(socket, &msg)
}

/// What came with a received message.
#[derive(Default)]
struct Ancillary {
    fds: Vec<OwnedFd>,
    creds: Option<Credentials>,
}

/// One `recvmsg` into `buf` with room for `control_len` bytes of control messages; the
/// descriptors (close-on-exec) and credentials that came along.
fn recvmsg(
    socket: &impl AsRawFd,
    buf: &mut [u8],
    control_len: usize,
) -> io::Result<(usize, Ancillary)> {
    let mut control = vec![0u8; control_len];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    // SAFETY: msg points at live buffers; MSG_CMSG_CLOEXEC keeps received fds from leaking.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut ancillary = Ancillary::default();
    // SAFETY: walking the control messages the kernel wrote into `control`; each descriptor
    // it passed is ours to own.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_CREDENTIALS) => {
                    let ucred = data.cast::<libc::ucred>().read_unaligned();
                    ancillary.creds = Some(Credentials {
                        pid: ucred.pid,
                        uid: ucred.uid,
                        gid: ucred.gid,
                    });
                }
                (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                    let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                        / size_of::<RawFd>();
                    for i in 0..count {
                        let fd = data.cast::<RawFd>().add(i).read_unaligned();
                        ancillary.fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, ancillary))
}

/// Receives into `buf`, adding any descriptors that came along to `fds`.
pub fn recv(socket: &impl AsRawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let (n, ancillary) = recvmsg(socket, buf, cmsg_space())?;
    fds.extend(ancillary.fds);
    Ok(n)
}

/// Who a datagram says it comes from (SCM_CREDENTIALS): what a receiver with `SO_PASSCRED` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The sending process.
    pub pid: i32,
    /// Its user.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
}

fn creds_space() -> usize {
    // SAFETY: CMSG_SPACE is a pure size computation.
    unsafe { libc::CMSG_SPACE(size_of::<libc::ucred>() as u32) as usize }
}

/// Sends the gathered `parts` as one datagram on a connected socket without blocking
/// (`MSG_DONTWAIT`, no SIGPIPE), stamped with `creds` (SCM_CREDENTIALS): a receiver with
/// `SO_PASSCRED` reads these, not the sender's own. The kernel allows another pid only with
/// CAP_SYS_ADMIN, another uid with CAP_SETUID, another gid with CAP_SETGID.
pub fn send_dontwait_as(
    socket: &impl AsRawFd,
    parts: &[io::IoSlice<'_>],
    creds: Credentials,
) -> io::Result<usize> {
    let mut control = vec![0u8; creds_space()];
    // SAFETY: an all-zero msghdr is valid (no name, no control data yet).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = parts.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = parts.len() as _;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    let ucred = libc::ucred {
        pid: creds.pid,
        uid: creds.uid,
        gid: creds.gid,
    };
    // SAFETY: msg_control holds room (CMSG_SPACE) for one cmsg carrying one ucred.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_CREDENTIALS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::ucred>() as u32) as _;
        libc::CMSG_DATA(cmsg)
            .cast::<libc::ucred>()
            .write_unaligned(ucred);
    }
    // `parts` (IoSlice is ABI-compatible with iovec) and `control` outlive the call.
    sendmsg_dontwait(socket.as_raw_fd(), &msg)
}

/// Sends the gathered `parts` as one datagram on a connected socket without blocking
/// (`MSG_DONTWAIT`, no SIGPIPE).
pub fn send_dontwait(socket: &impl AsRawFd, parts: &[io::IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = parts.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = parts.len() as _;
    // `parts` (IoSlice is ABI-compatible with iovec) outlive the call.
    sendmsg_dontwait(socket.as_raw_fd(), &msg)
}

/// Asks the kernel to attach the sender's credentials to every message `socket` receives
/// (`SO_PASSCRED`), to read with [`recv_with_credentials`].
pub fn set_passcred(socket: &impl AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from a live local.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one message into `buf` with the sender's credentials, if the socket has
/// [`set_passcred`] (descriptors that came along are closed).
pub fn recv_with_credentials(
    socket: &impl AsRawFd,
    buf: &mut [u8],
) -> io::Result<(usize, Option<Credentials>)> {
    let (n, ancillary) = recvmsg(socket, buf, creds_space() + cmsg_space())?;
    Ok((n, ancillary.creds))
}
