//! The interface's XDP slot over rtnetlink, as libxdp uses it: which program is attached and in
//! which mode (`RTM_GETLINK`, `IFLA_XDP`), and attaching, atomically replacing or removing a
//! program (`RTM_SETLINK` with `XDP_FLAGS_REPLACE` and `IFLA_XDP_EXPECTED_FD`). The dispatcher
//! is attached this way, not through a BPF link, so that libxdp's tools can replace it in turn.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
    time::{Duration, Instant},
};

use crate::sys::netlink::{self, RouteSocket, NLMSG_HDRLEN};

const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLA_F_NESTED: u16 = 1 << 15;
const IFINFOMSG_LEN: usize = 16;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_EXPECTED_FD: u16 = 8;

/// `XDP_FLAGS_UPDATE_IF_NOEXIST`: fail with EBUSY if a program is attached.
pub const FLAGS_UPDATE_IF_NOEXIST: u32 = 1 << 0;
/// `XDP_FLAGS_SKB_MODE`: generic XDP.
pub const FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`: native XDP in the driver.
pub const FLAGS_DRV_MODE: u32 = 1 << 2;
/// `XDP_FLAGS_REPLACE`: replace only the program given as expected.
pub const FLAGS_REPLACE: u32 = 1 << 4;

/// How long a netlink answer may take before the request counts as failed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// The mode of an attached program (`IFLA_XDP_ATTACHED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// Nothing attached.
    None,
    /// Native (driver) mode.
    Driver,
    /// Generic (skb) mode.
    Skb,
    /// Offloaded to the NIC, or several modes at once: not something libxdp's dispatcher uses.
    Other(u8),
}

/// What is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpState {
    /// The mode, or `None`.
    pub attached: Attached,
    /// The attached program's id (0 when none).
    pub prog_id: u32,
}

fn ifinfomsg(ifindex: u32) -> Vec<u8> {
    let mut body = vec![0u8; IFINFOMSG_LEN];
    body[0] = libc::AF_UNSPEC as u8;
    body[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    body
}

fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut attr = Vec::with_capacity(4 + value.len() + 3);
    attr.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    attr.extend_from_slice(&kind.to_ne_bytes());
    attr.extend_from_slice(value);
    while attr.len() % 4 != 0 {
        attr.push(0);
    }
    attr
}

/// Iterates over the attributes in `bytes` as (type without flags, value), up to the first
/// bad one.
fn attributes(bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    netlink::attributes(bytes)
        .map_while(Result::ok)
        .map(|(kind, value)| (kind & !NLA_F_NESTED, value))
}

/// Sends `request` and returns the kernel's answers until an ack or the first message of
/// kind `want`.
fn exchange(request: &[u8], want: u16) -> io::Result<Vec<u8>> {
    let socket = RouteSocket::open(0)?;
    socket.send(request)?;
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no rtnetlink answer within 2 s",
            ));
        }
        let mut fds = [crate::sys::pollfd(&socket.as_raw_fd(), libc::POLLIN)];
        crate::sys::poll(&mut fds, left.as_millis() as i32)?;
        let got = match socket.recv(&mut buf) {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut rest = &buf[..got];
        while rest.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            if len < NLMSG_HDRLEN || len > rest.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated rtnetlink message",
                ));
            }
            let body = &rest[NLMSG_HDRLEN..len];
            if kind == NLMSG_ERROR {
                let code = body
                    .get(0..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                    .unwrap_or(-libc::EPROTO);
                return if code == 0 {
                    Ok(Vec::new())
                } else {
                    Err(io::Error::from_raw_os_error(-code))
                };
            }
            if kind == want {
                return Ok(body.to_vec());
            }
            rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        }
    }
}

/// What is attached to interface `ifindex` (in this network namespace).
pub fn query(ifindex: u32) -> io::Result<XdpState> {
    let request = netlink::message(RTM_GETLINK, NLM_F_REQUEST, 1, &ifinfomsg(ifindex));
    let body = exchange(&request, libc::RTM_NEWLINK)?;
    let mut state = XdpState {
        attached: Attached::None,
        prog_id: 0,
    };
    let Some(attrs) = body.get(IFINFOMSG_LEN..) else {
        return Ok(state);
    };
    for (kind, value) in attributes(attrs) {
        if kind != IFLA_XDP {
            continue;
        }
        for (kind, value) in attributes(value) {
            match (kind, value) {
                (IFLA_XDP_ATTACHED, [mode, ..]) => {
                    state.attached = match mode {
                        0 => Attached::None,
                        1 => Attached::Driver,
                        2 => Attached::Skb,
                        other => Attached::Other(*other),
                    }
                }
                (IFLA_XDP_PROG_ID, [a, b, c, d, ..]) => {
                    state.prog_id = u32::from_ne_bytes([*a, *b, *c, *d]);
                }
                _ => {}
            }
        }
    }
    Ok(state)
}

/// Attaches `program` to `ifindex` with `flags` (mode and update flags); `None` removes the
/// attached program. With `expected`, the kernel does it only if that program is the one
/// attached (`XDP_FLAGS_REPLACE` must be in `flags`).
pub fn set(
    ifindex: u32,
    program: Option<BorrowedFd<'_>>,
    flags: u32,
    expected: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let fd = program.map_or(-1, |fd| fd.as_raw_fd());
    let mut nested = attribute(IFLA_XDP_FD, &fd.to_ne_bytes());
    nested.extend(attribute(IFLA_XDP_FLAGS, &flags.to_ne_bytes()));
    if let Some(expected) = expected {
        nested.extend(attribute(
            IFLA_XDP_EXPECTED_FD,
            &expected.as_raw_fd().to_ne_bytes(),
        ));
    }
    let mut body = ifinfomsg(ifindex);
    body.extend(attribute(IFLA_XDP | NLA_F_NESTED, &nested));
    let request = netlink::message(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, 1, &body);
    exchange(&request, NLMSG_ERROR).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding() {
        let mut bytes = attribute(IFLA_XDP_ATTACHED, &[1]);
        bytes.extend(attribute(IFLA_XDP_PROG_ID, &42u32.to_ne_bytes()));
        assert_eq!(bytes.len(), 8 + 8, "a one-byte value is padded to 4");
        let found: Vec<(u16, Vec<u8>)> = attributes(&bytes).map(|(k, v)| (k, v.to_vec())).collect();
        assert_eq!(
            found,
            [
                (IFLA_XDP_ATTACHED, vec![1]),
                (IFLA_XDP_PROG_ID, 42u32.to_ne_bytes().to_vec())
            ]
        );
    }

    #[test]
    fn a_bad_length_ends_the_walk() {
        let bytes = [200u8, 0, 1, 0, 0, 0, 0, 0];
        assert_eq!(attributes(&bytes).count(), 0);
    }
}
