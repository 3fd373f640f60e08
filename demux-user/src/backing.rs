//! Backing sockets: the real kernel UDP socket behind every endpoint a caller binds (design §7).
//!
//! The caller creates it, sets the options that change where the kernel delivers
//! (`SO_REUSEPORT`, `IPV6_V6ONLY`), binds it (and connects it) with its own credentials
//! ([`open`]), and passes it with the bind request. The kernel then decides what it decides for
//! any socket: privileged ports, `EADDRINUSE` against every socket on the host, same-uid
//! reuseport groups. The daemon derives the endpoint's binding from the socket ([`inspect`]) and
//! refuses every option that would make the kernel deliver elsewhere than demux steers.
//!
//! The socket also receives what the XDP program never steers — fragmented datagrams after
//! reassembly, the host's own datagrams, everything that arrives while the daemon is away — and
//! [`recv`] reads them with their destination address, so they join the endpoint's stream.
#![deny(missing_docs)]

use std::{
    fmt, io,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsFd,
    str::FromStr,
};

use socket2::{Domain, InterfaceIndexOrAddress, SockRef, Socket, Type};
use thiserror::Error;

use crate::{
    binding::{Binding, BindingError, Local, Protocol, Receiver},
    control::ErrorCode,
    sys::socket as sys,
};

/// The receive buffer [`open`] asks for (`SO_RCVBUF`; the kernel doubles it for its own
/// bookkeeping and caps the request at `net.core.rmem_max`, so an unprivileged caller gets at
/// most what the host allows). While no daemon runs — a restart — the socket carries the
/// endpoint's whole stream, and what its reader has not yet read waits here: the default
/// buffer (`net.core.rmem_default`, 208 KiB) holds a few hundred datagrams, a few milliseconds
/// at tens of thousands per second. The memory is taken only while datagrams wait.
pub const RECEIVE_BUFFER: usize = 4 << 20;

/// How a caller's backing socket is set up before it is bound.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `SO_REUSEPORT`: share the port with this uid's other sockets; equal bindings with it
    /// form a reuseport group (a flow sticks to one member).
    pub reuseport: bool,
    /// `IPV6_V6ONLY` for an IPv6 socket: do not receive IPv4.
    pub v6only: bool,
    /// Connect to this remote socket address: a connected binding.
    pub connect: Option<SocketAddr>,
    /// Multicast groups to join after binding (IP_ADD_MEMBERSHIP, IPV6_JOIN_GROUP): the host
    /// joins (IGMP/MLD) and the kernel delivers the group's datagrams to the socket; the last
    /// socket to leave (closing it) undoes it.
    pub join: Vec<Join>,
}

impl Options {
    /// The options that give a socket `binding` (its `v6only` and remote), nothing shared.
    pub fn of(binding: &Binding) -> Self {
        Self {
            v6only: binding.v6only,
            connect: binding.remote,
            ..Self::default()
        }
    }
}

/// A multicast group to join, on one interface or (`None`) where the routing table says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Join {
    /// The group address (224.0.0.0/4, ff00::/8).
    pub group: IpAddr,
    /// The interface, by name.
    pub iface: Option<String>,
}

/// A `--join` value that does not parse.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error(
    "join: `{0}` is not a multicast group; write GROUP or GROUP%IFACE (239.1.1.1, ff02::fb%eth0)"
)]
pub struct JoinError(String);

impl FromStr for Join {
    type Err = JoinError;

    /// `GROUP` or `GROUP%IFACE`.
    fn from_str(text: &str) -> Result<Self, JoinError> {
        let (group, iface) = match text.split_once('%') {
            Some((group, iface)) if !iface.is_empty() => (group, Some(iface.to_owned())),
            Some(_) => return Err(JoinError(text.into())),
            None => (text, None),
        };
        let group: IpAddr = group.parse().map_err(|_| JoinError(text.into()))?;
        if !group.is_multicast() {
            return Err(JoinError(text.into()));
        }
        Ok(Self { group, iface })
    }
}

impl fmt::Display for Join {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.iface {
            Some(iface) => write!(f, "{}%{iface}", self.group),
            None => write!(f, "{}", self.group),
        }
    }
}

/// A backing socket that cannot be created, or that the daemon refuses; names the step or the
/// option and the fix.
#[derive(Debug, Error)]
pub enum BackingError {
    /// A socket call failed while creating or inspecting it.
    #[error("backing socket: {step}: {cause}{}", hint(.step, .cause))]
    Io {
        /// Which call.
        step: &'static str,
        /// Why.
        cause: io::Error,
    },
    /// Not an IPv4 or IPv6 UDP socket.
    #[error("backing socket: not a UDP socket over IPv4 or IPv6 ({0}); pass a socket(AF_INET or AF_INET6, SOCK_DGRAM, IPPROTO_UDP)")]
    NotUdp(&'static str),
    /// A group to join is of the other family than the socket, or its interface is unknown.
    #[error("join {join}: {reason}")]
    Join {
        /// The group asked for.
        join: String,
        /// What is wrong.
        reason: String,
    },
    /// Not bound to a port.
    #[error("backing socket: not bound; bind it to the endpoint's address before passing it")]
    NotBound,
    /// In another network namespace than the daemon's interfaces.
    #[error("backing socket: it lives in another network namespace than the interfaces demux steers (a container without host networking?); create it in the daemon's namespace")]
    OtherNamespace,
    /// `SO_REUSEADDR` set.
    #[error("backing socket: SO_REUSEADDR is set; for UDP it lets any user share the port, so demux refuses it: use SO_REUSEPORT (--reuseport) to share a port among your own sockets")]
    ReuseAddr,
    /// `SO_BINDTODEVICE` set.
    #[error("backing socket: bound to device `{0}` (SO_BINDTODEVICE); demux steers by address only: unset it")]
    BoundToDevice(String),
    /// A link-local address with a scope id.
    #[error("backing socket: bound with IPv6 scope id {0}; demux steers by address only: bind a global address")]
    ScopeId(u32),
    /// `UDP_NO_CHECK6_RX` set.
    #[error("backing socket: UDP_NO_CHECK6_RX is set; demux does not deliver IPv6 datagrams without a checksum: unset it")]
    NoCheck6Rx,
    /// The socket's binding cannot be an endpoint's.
    #[error("backing socket: {0}")]
    Binding(#[from] BindingError),
}

impl BackingError {
    /// The kind of failure, to match on: the kernel's `EADDRINUSE` and `EACCES` as
    /// `address_in_use` and `permission_denied`, a refused socket as `invalid_argument`.
    pub fn code(&self) -> ErrorCode {
        match self {
            BackingError::Io { cause, .. } => match cause.kind() {
                io::ErrorKind::AddrInUse => ErrorCode::AddressInUse,
                io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
                _ => ErrorCode::InvalidArgument,
            },
            _ => ErrorCode::InvalidArgument,
        }
    }
}

/// What to do about the kernel's usual refusals of a bind.
fn hint(step: &str, cause: &io::Error) -> &'static str {
    match (step, cause.raw_os_error()) {
        ("bind", Some(libc::EADDRINUSE)) => {
            " (another socket holds this address and port: the kernel refuses it to you as it \
             would refuse your own socket; SO_REUSEPORT (--reuseport) shares a port among your \
             own sockets only)"
        }
        ("bind", Some(libc::EACCES)) => {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE, as for any socket)"
        }
        ("bind", Some(libc::EADDRNOTAVAIL)) => {
            " (the address is not on this host, in this network namespace: run where the \
             daemon's interfaces are)"
        }
        _ => "",
    }
}

fn step(step: &'static str) -> impl FnOnce(io::Error) -> BackingError {
    move |cause| BackingError::Io { step, cause }
}

/// Creates the backing socket for `local` as this process (close-on-exec, non-blocking), with
/// `options`, bound and, for a connected binding, connected. The kernel's refusals come back
/// as they are (`EADDRINUSE`, `EACCES` for a privileged port, `EADDRNOTAVAIL`).
pub fn open(local: SocketAddr, options: &Options) -> Result<UdpSocket, BackingError> {
    let domain = if local.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket =
        Socket::new(domain, Type::DGRAM.nonblocking().cloexec(), None).map_err(step("socket"))?;
    if options.reuseport {
        socket
            .set_reuse_port(true)
            .map_err(step("setsockopt SO_REUSEPORT"))?;
    }
    if local.is_ipv6() {
        socket
            .set_only_v6(options.v6only)
            .map_err(step("setsockopt IPV6_V6ONLY"))?;
    }
    want_destination(&socket, local.is_ipv6())?;
    socket
        .set_recv_buffer_size(RECEIVE_BUFFER)
        .map_err(step("setsockopt SO_RCVBUF"))?;
    socket.bind(&local.into()).map_err(step("bind"))?;
    if let Some(remote) = options.connect {
        socket.connect(&remote.into()).map_err(step("connect"))?;
    }
    for join in &options.join {
        self::join(&socket, join)?;
    }
    Ok(socket.into())
}

/// Joins `join`'s group on `socket`.
fn join(socket: &Socket, join: &Join) -> Result<(), BackingError> {
    let refuse = |reason: String| BackingError::Join {
        join: join.to_string(),
        reason,
    };
    let index = match &join.iface {
        None => 0,
        Some(name) => crate::sys::if_nametoindex(name)
            .ok_or_else(|| refuse(format!("no interface `{name}` in this network namespace")))?,
    };
    let ipv6 = socket.domain().map_err(step("getsockopt SO_DOMAIN"))? == Domain::IPV6;
    match (join.group, ipv6) {
        // Linux takes IP_ADD_MEMBERSHIP on a dual-stack IPv6 socket too.
        (IpAddr::V4(group), _) => socket
            .join_multicast_v4_n(&group, &InterfaceIndexOrAddress::Index(index))
            .map_err(step("setsockopt IP_ADD_MEMBERSHIP")),
        (IpAddr::V6(group), true) => socket
            .join_multicast_v6(&group, index)
            .map_err(step("setsockopt IPV6_JOIN_GROUP")),
        (IpAddr::V6(_), false) => Err(refuse(
            "an IPv6 group on an IPv4 socket; bind an IPv6 address".into(),
        )),
    }
}

/// Asks the kernel for each datagram's destination address (IP_PKTINFO, and IPV6_RECVPKTINFO
/// on an IPv6 socket), which [`recv`] reports as the datagram's local address.
pub fn want_destination(socket: &impl AsFd, ipv6: bool) -> Result<(), BackingError> {
    let fd = socket.as_fd();
    sys::set_int_option(&fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
        .map_err(step("setsockopt IP_PKTINFO"))?;
    if ipv6 {
        sys::set_int_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)
            .map_err(step("setsockopt IPV6_RECVPKTINFO"))?;
    }
    Ok(())
}

/// What the daemon reads off a passed backing socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backed {
    /// The binding the kernel gave it (IPv4-mapped addresses as IPv4).
    pub binding: Binding,
    /// `SO_REUSEPORT`: equal bindings of one owner form a reuseport group.
    pub reuseport: bool,
}

/// Derives the binding of a passed socket and refuses what demux cannot steer as the kernel
/// delivers: not UDP over IP, not bound, another network namespace than `netns` (the daemon's,
/// [`sys::netns_cookie`]), `SO_REUSEADDR`, `SO_BINDTODEVICE`, a scope id, `UDP_NO_CHECK6_RX`.
pub fn inspect(socket: &impl AsFd, netns: u64) -> Result<Backed, BackingError> {
    let fd = socket.as_fd();
    let socket = SockRef::from(&fd);
    let domain = socket.domain().map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTSOCK) => BackingError::NotUdp("not a socket"),
        _ => step("getsockopt SO_DOMAIN")(e),
    })?;
    let ipv6 = match domain {
        Domain::IPV4 => false,
        Domain::IPV6 => true,
        _ => return Err(BackingError::NotUdp("not an IP socket")),
    };
    if socket.r#type().map_err(step("getsockopt SO_TYPE"))? != Type::DGRAM {
        return Err(BackingError::NotUdp("not a datagram socket"));
    }
    if socket.protocol().map_err(step("getsockopt SO_PROTOCOL"))? != Some(socket2::Protocol::UDP) {
        return Err(BackingError::NotUdp("not UDP"));
    }
    if sys::netns_cookie(&fd).map_err(step("getsockopt SO_NETNS_COOKIE"))? != netns {
        return Err(BackingError::OtherNamespace);
    }
    if socket
        .reuse_address()
        .map_err(step("getsockopt SO_REUSEADDR"))?
    {
        return Err(BackingError::ReuseAddr);
    }
    if let Some(device) = socket
        .device()
        .map_err(step("getsockopt SO_BINDTODEVICE"))?
    {
        return Err(BackingError::BoundToDevice(
            String::from_utf8_lossy(&device).into(),
        ));
    }
    if ipv6
        && sys::int_option(&fd, libc::SOL_UDP, libc::UDP_NO_CHECK6_RX)
            .map_err(step("getsockopt UDP_NO_CHECK6_RX"))?
            != 0
    {
        return Err(BackingError::NoCheck6Rx);
    }
    let local = socket
        .local_addr()
        .map_err(step("getsockname"))?
        .as_socket()
        .ok_or(BackingError::NotUdp("no IP address"))?;
    if local.port() == 0 {
        return Err(BackingError::NotBound);
    }
    if let SocketAddr::V6(v6) = local {
        if v6.scope_id() != 0 {
            return Err(BackingError::ScopeId(v6.scope_id()));
        }
    }
    let remote = match socket.peer_addr() {
        Ok(peer) => peer.as_socket().map(canonical),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => None,
        Err(e) => return Err(step("getpeername")(e)),
    };
    let local = canonical(local);
    let v6only = ipv6
        && local.ip().is_unspecified()
        && local.is_ipv6()
        && remote.is_none()
        && socket.only_v6().map_err(step("getsockopt IPV6_V6ONLY"))?;
    let binding = Binding {
        protocol: Protocol::Udp,
        local: Local::Addr(local),
        remote,
        v6only,
    };
    binding.encode(Receiver::Endpoint(1))?;
    Ok(Backed {
        binding,
        reuseport: socket
            .reuse_port()
            .map_err(step("getsockopt SO_REUSEPORT"))?,
    })
}

/// IPv4-mapped IPv6 addresses as the IPv4 addresses they are, as the XDP path reports them.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// One datagram read from a backing socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Its length in the buffer.
    pub len: usize,
    /// The sender.
    pub peer: SocketAddr,
    /// The address and port it was sent to.
    pub local: SocketAddr,
    /// Longer than the buffer: cut to it.
    pub truncated: bool,
}

/// Reads one datagram from a backing socket bound to `bound` without waiting: `Ok(None)` when
/// none is queued. Its local address is its destination address where the socket reports it
/// ([`want_destination`]), else `bound`.
pub fn recv(socket: &impl AsFd, bound: SocketAddr, buf: &mut [u8]) -> io::Result<Option<Received>> {
    let Some(got) = sys::recv_with_destination(&socket.as_fd(), buf)? else {
        return Ok(None);
    };
    let ip = got.destination.unwrap_or(bound.ip());
    Ok(Some(Received {
        len: got.len,
        peer: canonical(got.peer),
        local: SocketAddr::new(IpAddr::to_canonical(&ip), bound.port()),
        truncated: got.truncated,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Sockets on test addresses bind without the address on any interface (IP_FREEBIND), so
    // these tests touch no interface.
    fn freebind(local: SocketAddr, options: &Options) -> UdpSocket {
        let domain = if local.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let socket = Socket::new(domain, Type::DGRAM, None).unwrap();
        socket.set_reuse_port(options.reuseport).unwrap();
        if local.is_ipv6() {
            socket.set_only_v6(options.v6only).unwrap();
            socket.set_freebind_v6(true).unwrap();
        } else {
            socket.set_freebind_v4(true).unwrap();
        }
        socket.bind(&local.into()).unwrap();
        if let Some(remote) = options.connect {
            socket.connect(&remote.into()).unwrap();
        }
        socket.into()
    }

    fn ours() -> u64 {
        sys::netns_cookie(&UdpSocket::bind("0.0.0.0:0").unwrap()).unwrap()
    }

    #[test]
    fn the_binding_is_the_sockets() {
        let socket = freebind("198.18.200.1:0".parse().unwrap(), &Options::default());
        let port = socket.local_addr().unwrap().port();
        let backed = inspect(&socket, ours()).unwrap();
        assert_eq!(
            backed.binding.local,
            Local::Addr(SocketAddr::new("198.18.200.1".parse().unwrap(), port))
        );
        assert_eq!(backed.binding.remote, None);
        assert!(!backed.reuseport);

        let options = Options {
            reuseport: true,
            ..Options::default()
        };
        let socket = freebind("198.18.200.1:0".parse().unwrap(), &options);
        assert!(inspect(&socket, ours()).unwrap().reuseport);
        // Connected bindings need a route: the privileged tests cover them, in a namespace.
    }

    #[test]
    fn ipv6_wildcards_say_v6only_and_mapped_addresses_are_ipv4() {
        for v6only in [false, true] {
            let options = Options {
                v6only,
                ..Options::default()
            };
            let socket = freebind("[::]:0".parse().unwrap(), &options);
            assert_eq!(inspect(&socket, ours()).unwrap().binding.v6only, v6only);
        }
        let socket = freebind(
            "[::ffff:198.18.200.1]:0".parse().unwrap(),
            &Options::default(),
        );
        let Local::Addr(local) = inspect(&socket, ours()).unwrap().binding.local else {
            panic!("not an address");
        };
        assert_eq!(local.ip(), "198.18.200.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn join_takes_a_group_and_an_interface() {
        assert_eq!(
            "239.1.1.1%lo".parse(),
            Ok(Join {
                group: "239.1.1.1".parse().unwrap(),
                iface: Some("lo".into())
            })
        );
        assert_eq!("ff02::fb".parse::<Join>().unwrap().iface, None);
        for bad in ["198.18.0.1", "239.1.1.1%", "group", ""] {
            assert!(bad.parse::<Join>().is_err(), "{bad}");
        }
    }

    #[test]
    fn options_that_change_delivery_are_refused() {
        let unbound = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        assert!(matches!(
            inspect(&unbound, ours()),
            Err(BackingError::NotBound)
        ));
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket.set_freebind_v4(true).unwrap();
        socket
            .bind(&"198.18.200.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        assert!(matches!(
            inspect(&socket, ours()),
            Err(BackingError::ReuseAddr)
        ));
        let socket = freebind("[::]:0".parse().unwrap(), &Options::default());
        sys::set_int_option(&socket, libc::SOL_UDP, libc::UDP_NO_CHECK6_RX, 1).unwrap();
        assert!(matches!(
            inspect(&socket, ours()),
            Err(BackingError::NoCheck6Rx)
        ));
        let tcp = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        assert!(matches!(
            inspect(&tcp, ours()),
            Err(BackingError::NotUdp(_))
        ));
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(matches!(
            inspect(&file, ours()),
            Err(BackingError::NotUdp(_))
        ));
        let socket = freebind("198.18.200.1:0".parse().unwrap(), &Options::default());
        assert!(matches!(
            inspect(&socket, ours() + 1),
            Err(BackingError::OtherNamespace)
        ));
    }
}
