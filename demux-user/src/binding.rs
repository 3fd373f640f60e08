//! Binding requests and their encoding into table entries: the one place that decides which
//! table a binding lives in and rejects what cannot be encoded, naming the field and the fix.
#![deny(missing_docs)]

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use demux_common::binding::{
    BoundKey, ConnectedKey, PrefixKey, Target, WildcardKey, FAMILY_IPV4, FAMILY_IPV6,
    MAX_ENDPOINTS, MAX_GROUPS, PROTO_TCP, PROTO_UDP, TARGET_GROUP, TARGET_V6ONLY,
};
use thiserror::Error;

/// The transports demux steers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// UDP: endpoints receive payloads.
    Udp,
    /// TCP: endpoints receive whole segments.
    Tcp,
}

impl std::str::FromStr for Protocol {
    type Err = BindingError;

    fn from_str(text: &str) -> Result<Self, BindingError> {
        match text {
            "udp" => Ok(Protocol::Udp),
            "tcp" => Ok(Protocol::Tcp),
            _ => Err(BindingError::Protocol(text.into())),
        }
    }
}

impl Protocol {
    /// The IP protocol number (17, 6).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Udp => PROTO_UDP,
            Protocol::Tcp => PROTO_TCP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        })
    }
}

/// The local side of a binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Local {
    /// One socket address; the unspecified address (`0.0.0.0`, `::`) makes it a wildcard.
    Addr(SocketAddr),
    /// A prefix of local addresses, on one port or (`None`) on all ports.
    Prefix {
        /// The network address (host bits clear).
        addr: IpAddr,
        /// The prefix length.
        len: u8,
        /// One port, or `None` for all ports.
        port: Option<u16>,
    },
}

/// A local address that does not parse: the text and what is wrong with it.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error(
    "local address `{text}`: {reason}; write ADDR:PORT (198.18.0.1:9000, [::]:53) or \
     PREFIX/LEN:PORT (198.18.0.0/15:53, 198.18.0.0/15:* for all ports)"
)]
pub struct LocalError {
    /// What was given.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl std::str::FromStr for Local {
    type Err = LocalError;

    /// `198.18.0.1:9000`, `0.0.0.0:53`, `[::]:53`, `[2001:2::1]:53`, a prefix on a port
    /// `198.18.0.0/15:53` or `[2001:2::]/48:53`, or on all ports `198.18.0.0/15:*`.
    fn from_str(text: &str) -> Result<Self, LocalError> {
        let bad = |reason: &'static str| LocalError {
            text: text.into(),
            reason,
        };
        let Some((net, len_port)) = text.split_once('/') else {
            return text
                .parse()
                .map(Local::Addr)
                .map_err(|_| bad("not a socket address"));
        };
        let (len, port) = len_port
            .split_once(':')
            .ok_or_else(|| bad("no port after the prefix"))?;
        let addr: IpAddr = net
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| bad("not an IP prefix"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| bad("the prefix length is not a number"))?;
        let port = match port {
            "*" => None,
            port => Some(
                port.parse()
                    .map_err(|_| bad("the port is not a number or *"))?,
            ),
        };
        Ok(Local::Prefix { addr, len, port })
    }
}

impl fmt::Display for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (addr, len, port) = match self {
            Local::Addr(addr) => return write!(f, "{addr}"),
            Local::Prefix { addr, len, port } => (addr, len, port),
        };
        match addr {
            IpAddr::V6(v6) => write!(f, "[{v6}]/{len}:")?,
            IpAddr::V4(v4) => write!(f, "{v4}/{len}:")?,
        }
        match port {
            Some(port) => write!(f, "{port}"),
            None => f.write_str("*"),
        }
    }
}

/// A binding request: what an endpoint (or group) claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Binding {
    /// UDP or TCP.
    pub protocol: Protocol,
    /// The local address, prefix or wildcard.
    pub local: Local,
    /// Set for a connected binding: only packets from this remote socket address.
    pub remote: Option<SocketAddr>,
    /// IPv6 wildcard only: do not receive IPv4 (IPV6_V6ONLY).
    pub v6only: bool,
}

/// Who receives what a binding matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Receiver {
    /// One endpoint, by descriptor.
    Endpoint(u32),
    /// A group, by group id: a member is picked per flow.
    Group(u32),
}

/// A binding encoded for one of the four tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Entry {
    /// `CONNECTED`: the exact 5-tuple.
    Connected(ConnectedKey),
    /// `BOUND`: one local address and port.
    Bound(BoundKey),
    /// `PREFIX`: key and address prefix length.
    Prefix(PrefixKey, u8),
    /// Wildcard: the unspecified address on a port (held in the port's `PORTS` entry).
    Wildcard(WildcardKey),
}

/// A binding that cannot be encoded; the message names the field and what is allowed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BindingError {
    /// Neither `udp` nor `tcp`.
    #[error("protocol: `{0}` is neither udp nor tcp")]
    Protocol(String),
    /// The local address does not parse.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// The remote address does not parse.
    #[error("connect: `{0}` is not a socket address; write ADDR:PORT or [ADDR]:PORT")]
    Remote(String),
    /// Local port 0.
    #[error("local port: 0 is not a port; give 1-65535 (or `*` for all ports on a prefix)")]
    LocalPortZero,
    /// Remote port 0.
    #[error("remote port: 0 is not a port; give 1-65535")]
    RemotePortZero,
    /// A connected binding to the unspecified remote address.
    #[error("remote address: a connected binding needs a specific remote address, not {0}")]
    RemoteUnspecified(IpAddr),
    /// A connected binding on the unspecified local address.
    #[error("local address: a connected binding needs a specific local address, not {0}")]
    ConnectedWildcard(IpAddr),
    /// Local and remote of different families.
    #[error("remote address: {remote} is not the same family as the local address {local}")]
    FamilyMismatch {
        /// The local address.
        local: IpAddr,
        /// The remote address.
        remote: IpAddr,
    },
    /// An IPv4-mapped IPv6 address.
    #[error("local address: {0} is IPv4-mapped; bind the IPv4 address itself")]
    V4Mapped(IpAddr),
    /// A prefix longer than the address.
    #[error("prefix length: /{len} is longer than an {family} address (0-{max})")]
    PrefixTooLong {
        /// The length given.
        len: u8,
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// The longest allowed.
        max: u8,
    },
    /// Host bits set beyond the prefix length.
    #[error("prefix: {addr}/{len} has host bits set; write {network}/{len}")]
    PrefixHostBits {
        /// The address given.
        addr: IpAddr,
        /// The length given.
        len: u8,
        /// The address with the host bits cleared.
        network: IpAddr,
    },
    /// A connected binding on a prefix.
    #[error("prefix: a connected binding takes one local address, not a prefix")]
    ConnectedPrefix,
    /// `v6only` on anything but an IPv6 wildcard.
    #[error("v6only: applies only to an IPv6 wildcard binding ([::]:PORT)")]
    V6OnlyMisplaced,
    /// An endpoint id out of range.
    #[error("endpoint: {0} is not an endpoint id (1-{max})", max = MAX_ENDPOINTS - 1)]
    BadEndpoint(u32),
    /// A group id out of range.
    #[error("group: {0} is not a group id (0-{max})", max = MAX_GROUPS - 1)]
    BadGroup(u32),
}

impl Binding {
    /// The table entry and value for this binding, or why it cannot be encoded.
    pub fn encode(&self, receiver: Receiver) -> Result<(Entry, Target), BindingError> {
        let mut target = match receiver {
            Receiver::Endpoint(id) if id == 0 || id >= MAX_ENDPOINTS => {
                return Err(BindingError::BadEndpoint(id))
            }
            Receiver::Endpoint(id) => Target {
                id,
                flags: 0,
                prefix_len: 0,
                _pad: 0,
            },
            Receiver::Group(id) if id >= MAX_GROUPS => return Err(BindingError::BadGroup(id)),
            Receiver::Group(id) => Target {
                id,
                flags: TARGET_GROUP,
                prefix_len: 0,
                _pad: 0,
            },
        };
        let protocol = self.protocol.number();
        let is_v6_wildcard =
            matches!(self.local, Local::Addr(SocketAddr::V6(a)) if a.ip().is_unspecified());
        if self.v6only && (!is_v6_wildcard || self.remote.is_some()) {
            return Err(BindingError::V6OnlyMisplaced);
        }
        if self.v6only {
            target.flags |= TARGET_V6ONLY;
        }
        let entry = match (self.local, self.remote) {
            (Local::Prefix { .. }, Some(_)) => return Err(BindingError::ConnectedPrefix),
            (Local::Prefix { addr, len, port }, None) => {
                if port == Some(0) {
                    return Err(BindingError::LocalPortZero);
                }
                check_not_mapped(addr)?;
                let (family, max) = family_of(addr);
                if len > max {
                    let family = if family == FAMILY_IPV4 {
                        "IPv4"
                    } else {
                        "IPv6"
                    };
                    return Err(BindingError::PrefixTooLong { len, family, max });
                }
                let network = mask(addr, len);
                if network != addr {
                    return Err(BindingError::PrefixHostBits { addr, len, network });
                }
                target.prefix_len = len;
                let key = PrefixKey {
                    protocol,
                    family,
                    local_port: port.unwrap_or(0),
                    local_addr: addr16(addr),
                };
                Entry::Prefix(key, len)
            }
            (Local::Addr(local), remote) => {
                if local.port() == 0 {
                    return Err(BindingError::LocalPortZero);
                }
                check_not_mapped(local.ip())?;
                let (family, _) = family_of(local.ip());
                match remote {
                    Some(remote) => {
                        if local.ip().is_unspecified() {
                            return Err(BindingError::ConnectedWildcard(local.ip()));
                        }
                        if remote.is_ipv4() != local.is_ipv4() {
                            return Err(BindingError::FamilyMismatch {
                                local: local.ip(),
                                remote: remote.ip(),
                            });
                        }
                        if remote.ip().is_unspecified() {
                            return Err(BindingError::RemoteUnspecified(remote.ip()));
                        }
                        if remote.port() == 0 {
                            return Err(BindingError::RemotePortZero);
                        }
                        Entry::Connected(ConnectedKey {
                            protocol,
                            family,
                            local_port: local.port(),
                            remote_port: remote.port(),
                            _pad: [0; 2],
                            local_addr: addr16(local.ip()),
                            remote_addr: addr16(remote.ip()),
                        })
                    }
                    None if local.ip().is_unspecified() => Entry::Wildcard(WildcardKey {
                        protocol,
                        family,
                        local_port: local.port(),
                    }),
                    None => Entry::Bound(BoundKey {
                        protocol,
                        family,
                        local_port: local.port(),
                        local_addr: addr16(local.ip()),
                    }),
                }
            }
        };
        Ok((entry, target))
    }
}

/// The 16-byte address form of the ABI: IPv4 in the first 4 bytes.
pub fn addr16(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => {
            let mut out = [0; 16];
            out[..4].copy_from_slice(&v4.octets());
            out
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn family_of(addr: IpAddr) -> (u8, u8) {
    match addr {
        IpAddr::V4(_) => (FAMILY_IPV4, 32),
        IpAddr::V6(_) => (FAMILY_IPV6, 128),
    }
}

fn check_not_mapped(addr: IpAddr) -> Result<(), BindingError> {
    match addr {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Err(BindingError::V4Mapped(addr)),
        _ => Ok(()),
    }
}

/// `addr` with every bit past `len` cleared.
pub(crate) fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4) & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(bits.into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(bits.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(local: &str, remote: Option<&str>) -> Binding {
        Binding {
            protocol: Protocol::Udp,
            local: Local::Addr(local.parse().unwrap()),
            remote: remote.map(|r| r.parse().unwrap()),
            v6only: false,
        }
    }

    fn prefix(addr: &str, len: u8, port: Option<u16>) -> Binding {
        Binding {
            protocol: Protocol::Udp,
            local: Local::Prefix {
                addr: addr.parse().unwrap(),
                len,
                port,
            },
            remote: None,
            v6only: false,
        }
    }

    const EP: Receiver = Receiver::Endpoint(7);

    #[test]
    fn local_forms_parse_and_print() {
        for text in [
            "198.18.0.1:9000",
            "0.0.0.0:53",
            "[::]:53",
            "[2001:2::1]:53",
            "198.18.0.0/15:53",
            "198.18.0.0/15:*",
            "[2001:2::]/48:53",
        ] {
            let local: Local = text.parse().unwrap();
            assert_eq!(local.to_string(), text);
        }
        assert_eq!(
            "198.18.0.0/15:*".parse::<Local>().unwrap(),
            Local::Prefix {
                addr: "198.18.0.0".parse().unwrap(),
                len: 15,
                port: None
            }
        );
        for bad in [
            "",
            "198.18.0.1",
            "198.18.0.0/15",
            "198.18.0.0/x:1",
            "host:53",
            "1.2.3.4/8:-1",
        ] {
            let error = bad.parse::<Local>().unwrap_err();
            assert!(error.to_string().contains("local address"), "{error}");
        }
    }

    #[test]
    fn each_form_lands_in_its_table() {
        let (entry, target) = udp("198.18.0.1:9000", None).encode(EP).unwrap();
        assert!(matches!(entry, Entry::Bound(k) if k.local_port == 9000 && k.family == 4));
        assert_eq!((target.id, target.flags), (7, 0));
        let (entry, _) = udp("0.0.0.0:53", None).encode(EP).unwrap();
        assert!(matches!(entry, Entry::Wildcard(k) if k.local_port == 53 && k.family == 4));
        let (entry, _) = udp("[::]:53", None).encode(Receiver::Group(3)).unwrap();
        assert!(matches!(entry, Entry::Wildcard(k) if k.family == 6));
        let (entry, _) = udp("198.18.0.1:9000", Some("198.18.0.2:40000"))
            .encode(EP)
            .unwrap();
        assert!(matches!(entry, Entry::Connected(k) if k.remote_port == 40000));
        let (entry, target) = prefix("198.18.0.0", 15, None).encode(EP).unwrap();
        assert!(matches!(entry, Entry::Prefix(k, 15) if k.local_port == 0));
        assert_eq!(target.prefix_len, 15);
    }

    #[test]
    fn what_cannot_be_encoded_is_rejected_by_field() {
        use BindingError::*;
        let cases = [
            (udp("198.18.0.1:0", None), LocalPortZero),
            (udp("198.18.0.1:9", Some("198.18.0.2:0")), RemotePortZero),
            (
                udp("198.18.0.1:9", Some("0.0.0.0:1")),
                RemoteUnspecified("0.0.0.0".parse().unwrap()),
            ),
            (
                udp("0.0.0.0:9", Some("198.18.0.2:1")),
                ConnectedWildcard("0.0.0.0".parse().unwrap()),
            ),
            (
                udp("198.18.0.1:9", Some("[2001:2::1]:1")),
                FamilyMismatch {
                    local: "198.18.0.1".parse().unwrap(),
                    remote: "2001:2::1".parse().unwrap(),
                },
            ),
            (
                udp("[::ffff:198.18.0.1]:9", None),
                V4Mapped("::ffff:198.18.0.1".parse().unwrap()),
            ),
            (
                prefix("198.18.0.0", 33, None),
                PrefixTooLong {
                    len: 33,
                    family: "IPv4",
                    max: 32,
                },
            ),
            (
                prefix("2001:2::", 129, Some(1)),
                PrefixTooLong {
                    len: 129,
                    family: "IPv6",
                    max: 128,
                },
            ),
            (
                prefix("198.18.0.1", 15, None),
                PrefixHostBits {
                    addr: "198.18.0.1".parse().unwrap(),
                    len: 15,
                    network: "198.18.0.0".parse().unwrap(),
                },
            ),
            (prefix("198.18.0.0", 15, Some(0)), LocalPortZero),
        ];
        for (binding, want) in cases {
            assert_eq!(binding.encode(EP), Err(want), "{binding:?}");
        }
        let v6only_v4 = Binding {
            v6only: true,
            ..udp("0.0.0.0:53", None)
        };
        assert_eq!(v6only_v4.encode(EP), Err(V6OnlyMisplaced));
        assert_eq!(
            udp("0.0.0.0:53", None).encode(Receiver::Endpoint(0)),
            Err(BadEndpoint(0))
        );
        assert_eq!(
            udp("0.0.0.0:53", None).encode(Receiver::Endpoint(MAX_ENDPOINTS)),
            Err(BadEndpoint(MAX_ENDPOINTS))
        );
        assert_eq!(
            udp("0.0.0.0:53", None).encode(Receiver::Group(MAX_GROUPS)),
            Err(BadGroup(MAX_GROUPS))
        );
        assert!(prefix("0.0.0.0", 0, None).encode(EP).is_ok());
        assert!(prefix("2001:2::", 48, Some(53)).encode(EP).is_ok());
    }
}
