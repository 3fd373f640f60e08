//! The kernel as the test oracle (issue 12): demux must deliver every UDP datagram exactly
//! where real kernel sockets receive it.
//!
//! A seeded [`Scenario`] names kernel UDP sockets for the receiving namespace (wildcard, bound
//! to one of two local addresses, connected, dual-stack, v6only, SO_REUSEPORT groups,
//! multicast joins, binds to group addresses) and a mix of datagrams sent from real sockets in
//! the other namespace ([`Kind`]: unicast, non-local, broadcast, multicast joined and not,
//! fragmented, IPv4 options and source routes, IPv6 extension headers, bad checksums from a raw
//! socket). [`run`] sends them and returns who got what ([`Deliveries`]): first with nothing
//! but the kernel reading the sockets, then with the daemon on the receiving veth and the same
//! sockets registered as its endpoints (each with a `unix:` sink of its own). The two are
//! compared datagram by datagram ([`compare`]): unicast on the same socket (a reuseport group:
//! the same group, and every flow on one member), broadcast and multicast on the same set of
//! sockets; nothing lost, duplicated or cut. `stats` must add up.
//!
//! `DEMUX_ORACLE_SEED` reruns a seed (printed on every run), `DEMUX_ORACLE_DATAGRAMS` sends
//! more than [`DEFAULT_DATAGRAMS`], `DEMUX_ORACLE_KINDS` (comma-separated kind names) sends
//! only those kinds, for development: the test as committed sends and demands all of them.
//! `DEMUX_ORACLE_VERBOSE` lists the sockets.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    io::{self, IoSlice},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::{
        fd::{AsFd, AsRawFd},
        unix::net::UnixDatagram,
    },
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use demux::{
    control::{BindRequest, Request, Response, SinkSpec, Stats},
    record,
    testing::testbed::{PairSpec, TempDir, VethPair},
};
use socket2::{Domain, MsgHdr, SockAddr, Socket, Type};

use crate::{classifier::SplitMix64, daemon::RunningDaemon};

pub(crate) fn tests() -> Vec<libtest_mimic::Trial> {
    trials![demux_delivers_where_the_kernel_does]
}

/// Datagrams per run unless `DEMUX_ORACLE_DATAGRAMS` says more.
const DEFAULT_DATAGRAMS: usize = 20_000;
/// The whole test must end well under a minute: sending stops with an error past this.
const TIME_BUDGET: Duration = Duration::from_secs(45);
/// Datagrams sent before waiting for the receivers to catch up.
const BATCH: usize = 250;

// The network: `a` sends, `b` receives. Two local addresses on `b`, one address of the subnet
// that is nobody's but whose frames go to `b`'s MAC (non-local), the /29's broadcast.
const A4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const B4_SECOND: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const NON_LOCAL4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);
const SUBNET_BROADCAST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 7);
const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);
const B6_SECOND: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 3);
const NON_LOCAL6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 4);
/// Groups 0 and 1 are joined on `b` (by the sentinel sockets at least), 2 and 3 never.
const GROUPS4: [Ipv4Addr; 4] = [
    Ipv4Addr::new(239, 18, 0, 1),
    Ipv4Addr::new(239, 18, 0, 2),
    Ipv4Addr::new(239, 18, 0, 3),
    Ipv4Addr::new(239, 18, 0, 4),
];
const GROUPS6: [Ipv6Addr; 4] = [
    Ipv6Addr::new(0xff35, 0, 0, 0, 0, 0, 0x8000, 1),
    Ipv6Addr::new(0xff35, 0, 0, 0, 0, 0, 0x8000, 2),
    Ipv6Addr::new(0xff35, 0, 0, 0, 0, 0, 0x8000, 3),
    Ipv6Addr::new(0xff35, 0, 0, 0, 0, 0, 0x8000, 4),
];
const JOINED: usize = 2;
/// The receiving ports: PORT_BASE .. PORT_BASE + PORTS.
const PORT_BASE: u16 = 7400;
const PORTS: u16 = 24;
/// A port of its own for the sockets that join the joined groups.
const JOIN_PORT: u16 = 7399;
/// The senders: one socket per family on each of SOURCE_BASE .. SOURCE_BASE + SOURCES.
const SOURCE_BASE: u16 = 40000;
const SOURCES: u16 = 8;
/// The first bytes of every payload, then the datagram's id (u32, little-endian).
const MAGIC: &[u8; 4] = b"DMXO";
/// A fragmented datagram's payload: twice the MTU and more.
const FRAGMENTED_LEN: usize = 3000;

/// A traffic kind: how a datagram is sent and where to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Unicast4,
    Unicast6,
    Ipv4Options,
    Ipv4SourceRoute,
    Ipv6ExtHeaders,
    Ipv6LongPadding,
    Fragmented4,
    Fragmented6,
    NonLocal4,
    NonLocal6,
    SubnetBroadcast,
    LimitedBroadcast,
    Multicast4Joined,
    Multicast4NotJoined,
    Multicast6Joined,
    Multicast6NotJoined,
    BadChecksum4,
    BadChecksum6,
    ZeroChecksum6,
}

impl Kind {
    /// Every kind with its weight in the mix (out of 100).
    const MIX: [(Kind, u64); 19] = [
        (Kind::Unicast4, 30),
        (Kind::Unicast6, 20),
        (Kind::Ipv4Options, 4),
        (Kind::Ipv4SourceRoute, 2),
        (Kind::Ipv6ExtHeaders, 4),
        (Kind::Ipv6LongPadding, 2),
        (Kind::Fragmented4, 3),
        (Kind::Fragmented6, 3),
        (Kind::NonLocal4, 3),
        (Kind::NonLocal6, 3),
        (Kind::SubnetBroadcast, 4),
        (Kind::LimitedBroadcast, 3),
        (Kind::Multicast4Joined, 4),
        (Kind::Multicast4NotJoined, 3),
        (Kind::Multicast6Joined, 4),
        (Kind::Multicast6NotJoined, 3),
        (Kind::BadChecksum4, 2),
        (Kind::BadChecksum6, 2),
        (Kind::ZeroChecksum6, 1),
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Unicast4 => "unicast-v4",
            Kind::Unicast6 => "unicast-v6",
            Kind::Ipv4Options => "ipv4-options",
            Kind::Ipv4SourceRoute => "ipv4-source-route",
            Kind::Ipv6ExtHeaders => "ipv6-ext-headers",
            Kind::Ipv6LongPadding => "ipv6-long-padding",
            Kind::Fragmented4 => "fragmented-v4",
            Kind::Fragmented6 => "fragmented-v6",
            Kind::NonLocal4 => "non-local-v4",
            Kind::NonLocal6 => "non-local-v6",
            Kind::SubnetBroadcast => "subnet-broadcast",
            Kind::LimitedBroadcast => "limited-broadcast",
            Kind::Multicast4Joined => "multicast-v4-joined",
            Kind::Multicast4NotJoined => "multicast-v4-not-joined",
            Kind::Multicast6Joined => "multicast-v6-joined",
            Kind::Multicast6NotJoined => "multicast-v6-not-joined",
            Kind::BadChecksum4 => "bad-checksum-v4",
            Kind::BadChecksum6 => "bad-checksum-v6",
            Kind::ZeroChecksum6 => "zero-checksum-v6",
        }
    }

    fn ipv6(self) -> bool {
        matches!(
            self,
            Kind::Unicast6
                | Kind::Ipv6ExtHeaders
                | Kind::Ipv6LongPadding
                | Kind::Fragmented6
                | Kind::NonLocal6
                | Kind::Multicast6Joined
                | Kind::Multicast6NotJoined
                | Kind::BadChecksum6
                | Kind::ZeroChecksum6
        )
    }

    /// Every listener gets a copy: compared socket by socket, reuseport members included.
    fn one_to_many(self) -> bool {
        matches!(
            self,
            Kind::SubnetBroadcast
                | Kind::LimitedBroadcast
                | Kind::Multicast4Joined
                | Kind::Multicast4NotJoined
                | Kind::Multicast6Joined
                | Kind::Multicast6NotJoined
        )
    }
}

/// A kernel UDP socket of the receiving namespace, as the scenario proposes it (the kernel may
/// refuse its bind: then it is not part of the run).
#[derive(Clone, Debug, PartialEq, Eq)]
struct SocketSpec {
    local: SocketAddr,
    reuseport: bool,
    v6only: bool,
    connect: Option<SocketAddr>,
    /// Groups it joins on the receiving veth.
    joins: Vec<IpAddr>,
}

impl SocketSpec {
    fn new(local: SocketAddr) -> Self {
        Self {
            local,
            reuseport: false,
            v6only: false,
            connect: None,
            joins: Vec::new(),
        }
    }

    /// What makes sockets one reuseport group: equal bindings, all with SO_REUSEPORT.
    fn group_key(&self) -> Option<(SocketAddr, Option<SocketAddr>, bool)> {
        self.reuseport
            .then_some((self.local, self.connect, self.v6only))
    }
}

impl fmt::Display for SocketSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "udp {}", self.local)?;
        if let Some(remote) = self.connect {
            write!(f, " connected {remote}")?;
        }
        if self.v6only {
            write!(f, " v6only")?;
        }
        if self.reuseport {
            write!(f, " reuseport")?;
        }
        for group in &self.joins {
            write!(f, " join {group}")?;
        }
        Ok(())
    }
}

/// One datagram: its id (in its payload), kind, sending port and destination.
#[derive(Clone, Copy, Debug)]
struct DatagramSpec {
    id: u32,
    kind: Kind,
    source: u16,
    dst: SocketAddr,
    len: usize,
    /// Which of the kind's variants (options, extension headers).
    variant: u8,
}

impl DatagramSpec {
    fn source(&self) -> SocketAddr {
        match self.kind.ipv6() {
            false => (A4, self.source).into(),
            true => (A6, self.source).into(),
        }
    }

    fn payload(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(self.len);
        payload.extend_from_slice(MAGIC);
        payload.extend_from_slice(&self.id.to_le_bytes());
        payload.extend((payload.len()..self.len).map(|i| i as u8));
        payload
    }
}

/// What a run sets up and sends: sockets and datagrams, from a seed.
struct Scenario {
    sockets: Vec<SocketSpec>,
    datagrams: Vec<DatagramSpec>,
}

impl Scenario {
    fn generate(seed: u64, count: usize, kinds: &[Kind]) -> Self {
        let mut rng = SplitMix64(seed);
        let mut sockets = sentinels();
        for port in PORT_BASE..PORT_BASE + PORTS {
            sockets.extend(port_sockets(&mut rng, port));
        }
        let mix: Vec<(Kind, u64)> = Kind::MIX
            .into_iter()
            .filter(|(kind, _)| kinds.contains(kind))
            .collect();
        let total: u64 = mix.iter().map(|(_, w)| w).sum();
        let datagrams = (0..count as u32)
            .map(|id| {
                let mut pick = rng.below(total);
                let kind = mix
                    .iter()
                    .find(|(_, w)| {
                        let hit = pick < *w;
                        pick = pick.saturating_sub(*w);
                        hit
                    })
                    .map_or(Kind::Unicast4, |(kind, _)| *kind);
                random_datagram(&mut rng, id, kind)
            })
            .collect();
        Self { sockets, datagrams }
    }
}

/// The sockets on [`JOIN_PORT`] that join the joined groups, so that they are joined
/// whatever else the seed draws.
fn sentinels() -> Vec<SocketSpec> {
    let v4 = SocketSpec {
        joins: GROUPS4[..JOINED].iter().map(|g| IpAddr::V4(*g)).collect(),
        ..SocketSpec::new((B4, JOIN_PORT).into())
    };
    let v6 = SocketSpec {
        joins: GROUPS6[..JOINED].iter().map(|g| IpAddr::V6(*g)).collect(),
        ..SocketSpec::new((B6, JOIN_PORT).into())
    };
    vec![v4, v6]
}

/// A random set of sockets on one port: some ports empty, a third of them all SO_REUSEPORT
/// (with groups of up to three equal bindings).
fn port_sockets(rng: &mut SplitMix64, port: u16) -> Vec<SocketSpec> {
    if rng.below(6) == 0 {
        return Vec::new();
    }
    let reuseport = rng.below(3) == 0;
    // A reuseport port's IPv6 wildcards are all v6only or all dual-stack: demux keeps one
    // wildcard entry per port and family, so it refuses the second kind beside the first
    // (address_in_use), where the kernel would keep two groups (docs/SECURITY.md).
    let wildcard6_v6only = rng.below(2) == 0;
    let mut sockets = Vec::new();
    for _ in 0..1 + rng.below(5) {
        let source = SOURCE_BASE + rng.below(SOURCES.into()) as u16;
        let group4 = GROUPS4[rng.below(4) as usize];
        let group6 = GROUPS6[rng.below(4) as usize];
        let mut spec = match rng.below(11) {
            0 => SocketSpec::new((Ipv4Addr::UNSPECIFIED, port).into()),
            1 => SocketSpec::new((B4, port).into()),
            2 => SocketSpec::new((B4_SECOND, port).into()),
            3 => SocketSpec {
                connect: Some((A4, source).into()),
                ..SocketSpec::new((B4, port).into())
            },
            4 | 5 => SocketSpec {
                v6only: if reuseport {
                    wildcard6_v6only
                } else {
                    rng.below(2) == 0
                },
                ..SocketSpec::new((Ipv6Addr::UNSPECIFIED, port).into())
            },
            6 => SocketSpec::new((B6, port).into()),
            7 => SocketSpec {
                connect: Some((A6, source).into()),
                ..SocketSpec::new((B6, port).into())
            },
            8 => SocketSpec::new((group4, port).into()),
            9 => SocketSpec::new((group6, port).into()),
            _ => SocketSpec::new((B6_SECOND, port).into()),
        };
        spec.reuseport = reuseport;
        // Joins only of the joined groups: the others stay unjoined on the host.
        if rng.below(4) == 0 && spec.connect.is_none() {
            spec.joins = match spec.local {
                SocketAddr::V4(_) => vec![IpAddr::V4(GROUPS4[rng.below(JOINED as u64) as usize])],
                SocketAddr::V6(_) => vec![IpAddr::V6(GROUPS6[rng.below(JOINED as u64) as usize])],
            };
        }
        let copies = if reuseport { 1 + rng.below(3) } else { 1 };
        for _ in 0..copies {
            sockets.push(spec.clone());
        }
    }
    sockets
}

fn random_datagram(rng: &mut SplitMix64, id: u32, kind: Kind) -> DatagramSpec {
    let port = PORT_BASE + rng.below(PORTS.into()) as u16;
    let source = SOURCE_BASE + rng.below(SOURCES.into()) as u16;
    let local4 = if rng.below(4) == 0 { B4_SECOND } else { B4 };
    let local6 = if rng.below(4) == 0 { B6_SECOND } else { B6 };
    let joined4 = GROUPS4[rng.below(JOINED as u64) as usize];
    let unjoined4 = GROUPS4[JOINED + rng.below(JOINED as u64) as usize];
    let joined6 = GROUPS6[rng.below(JOINED as u64) as usize];
    let unjoined6 = GROUPS6[JOINED + rng.below(JOINED as u64) as usize];
    let ip: IpAddr = match kind {
        Kind::Unicast4
        | Kind::Ipv4Options
        | Kind::Ipv4SourceRoute
        | Kind::Fragmented4
        | Kind::BadChecksum4 => local4.into(),
        Kind::Unicast6
        | Kind::Ipv6ExtHeaders
        | Kind::Ipv6LongPadding
        | Kind::Fragmented6
        | Kind::BadChecksum6
        | Kind::ZeroChecksum6 => local6.into(),
        Kind::NonLocal4 => NON_LOCAL4.into(),
        Kind::NonLocal6 => NON_LOCAL6.into(),
        Kind::SubnetBroadcast => SUBNET_BROADCAST.into(),
        Kind::LimitedBroadcast => Ipv4Addr::BROADCAST.into(),
        Kind::Multicast4Joined => joined4.into(),
        Kind::Multicast4NotJoined => unjoined4.into(),
        Kind::Multicast6Joined => joined6.into(),
        Kind::Multicast6NotJoined => unjoined6.into(),
    };
    let len = match kind {
        Kind::Fragmented4 | Kind::Fragmented6 => FRAGMENTED_LEN,
        _ => 8 + rng.below(193) as usize,
    };
    DatagramSpec {
        id,
        kind,
        source,
        dst: (ip, port).into(),
        len,
        variant: rng.below(3) as u8,
    }
}

/// The namespace pair: `a` 198.18.0.1/29 and 2001:2::1/64; `b` two addresses of each family;
/// static neighbours both ways, the non-local addresses on `b`'s MAC; TX checksum offload off
/// on `a` (veth would hand `b` partial checksums, which its checks drop); a long Unix datagram
/// queue in `b`, where the sinks are made.
fn testbed() -> anyhow::Result<VethPair> {
    let net = VethPair::new(PairSpec::unique(
        "dmxo",
        &["198.18.0.1/29", "2001:2::1/64"],
        &[
            "198.18.0.2/29",
            "198.18.0.3/29",
            "2001:2::2/64",
            "2001:2::3/64",
        ],
    ))?;
    let neighbour = |ns: &demux::testing::testbed::NetNs, addr: IpAddr, mac: &str, dev: &str| {
        ns.ip(&[
            "neigh",
            "replace",
            &addr.to_string(),
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ])
        .map(drop)
    };
    for addr in [
        IpAddr::from(B4_SECOND),
        NON_LOCAL4.into(),
        B6.into(),
        B6_SECOND.into(),
        NON_LOCAL6.into(),
    ] {
        neighbour(&net.a, addr, &net.b_mac, &net.a_if)?;
    }
    neighbour(&net.b, A6.into(), &net.a_mac, &net.b_if)?;
    net.a.exec(&["ethtool", "-K", &net.a_if, "tx", "off"])?;
    net.b.sysctl("net.unix.max_dgram_qlen", "65536")?;
    settle_ipv6(&net)?;
    Ok(net)
}

/// Waits (at most 5 s) until neither side has a tentative IPv6 address: until then the kernel
/// delivers IPv6 multicast only in part (measured: 215–304 of 364 copies when the first run
/// started at once), and the oracle would not be the kernel's settled behaviour.
fn settle_ipv6(net: &VethPair) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut tentative = String::new();
        for ns in [&net.a, &net.b] {
            tentative += &ns.ip(&["-6", "addr", "show", "tentative"])?;
        }
        if tentative.trim().is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "IPv6 addresses still tentative after 5 s: {tentative}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sending side: a UDP socket per family and source port, and raw sockets for frames
/// with a bad checksum.
struct Senders {
    v4: Vec<Socket>,
    v6: Vec<Socket>,
    raw4: Socket,
    raw6: Socket,
}

impl Senders {
    /// Created in `a` (sockets keep their namespace; any thread may send on them).
    fn open(net: &VethPair) -> anyhow::Result<Self> {
        net.a.run_in(|| {
            let ifindex = demux::sys::if_nametoindex(&net.a_if).context("a's ifindex")?;
            let mut v4 = Vec::new();
            let mut v6 = Vec::new();
            for port in SOURCE_BASE..SOURCE_BASE + SOURCES {
                let s = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
                s.set_broadcast(true)?;
                // Bound to the device: 255.255.255.255 and the groups need no route.
                s.bind_device(Some(net.a_if.as_bytes()))?;
                s.set_multicast_if_v4(&A4)?;
                s.bind(&SocketAddr::from((A4, port)).into())?;
                v4.push(s);
                let s = Socket::new(Domain::IPV6, Type::DGRAM, None)?;
                s.bind_device(Some(net.a_if.as_bytes()))?;
                s.set_multicast_if_v6(ifindex)?;
                s.bind(&SocketAddr::from((A6, port)).into())?;
                v6.push(s);
            }
            let raw = |domain| Socket::new(domain, Type::RAW, Some(libc::IPPROTO_RAW.into()));
            Ok(Self {
                v4,
                v6,
                raw4: raw(Domain::IPV4)?,
                raw6: raw(Domain::IPV6)?,
            })
        })
    }

    fn send(&self, d: &DatagramSpec) -> io::Result<()> {
        let payload = d.payload();
        let to = SockAddr::from(d.dst);
        let index = usize::from(d.source - SOURCE_BASE);
        let control = match d.kind {
            Kind::Ipv4Options => cmsg(libc::IPPROTO_IP, libc::IP_RETOPTS, ipv4_options(d.variant)),
            Kind::Ipv4SourceRoute => {
                // NOP, then a loose source route through the destination itself.
                let mut lsrr = vec![1, 131, 7, 4];
                lsrr.extend_from_slice(&addr_bytes(d.dst.ip()));
                cmsg(libc::IPPROTO_IP, libc::IP_RETOPTS, &lsrr)
            }
            Kind::Ipv6ExtHeaders => ipv6_options(d.variant),
            Kind::Ipv6LongPadding => long_padding(d.variant),
            Kind::BadChecksum4 | Kind::BadChecksum6 | Kind::ZeroChecksum6 => {
                let (socket, packet) = match d.kind {
                    Kind::BadChecksum4 => (&self.raw4, raw_ipv4(d, &payload)),
                    _ => (
                        &self.raw6,
                        raw_ipv6(d, &payload, d.kind == Kind::ZeroChecksum6),
                    ),
                };
                // The port is the protocol for a raw socket: 0 takes the socket's own.
                let to = SockAddr::from(SocketAddr::new(d.dst.ip(), 0));
                return socket.send_to(&packet, &to).map(drop);
            }
            _ => Vec::new(),
        };
        let socket = match d.kind.ipv6() {
            false => &self.v4[index],
            true => &self.v6[index],
        };
        let buffers = [IoSlice::new(&payload)];
        let mut message = MsgHdr::new().with_addr(&to).with_buffers(&buffers);
        if !control.is_empty() {
            message = message.with_control(&control);
        }
        socket.sendmsg(&message, 0).map(drop)
    }
}

/// IPv4 options to send: NOPs; NOP and record route (room for one address); router alert.
fn ipv4_options(variant: u8) -> &'static [u8] {
    match variant {
        0 => &[1, 1, 1, 1],
        1 => &[1, 7, 7, 4, 0, 0, 0, 0],
        _ => &[148, 4, 0, 0],
    }
}

/// IPv6 extension headers to send as ancillary data: destination options, hop-by-hop
/// options, or both (each 8 bytes, padded with a 4-byte PadN).
fn ipv6_options(variant: u8) -> Vec<u8> {
    let eight = [0u8, 0, 1, 4, 0, 0, 0, 0];
    match variant {
        0 => cmsg(libc::IPPROTO_IPV6, libc::IPV6_DSTOPTS, &eight),
        1 => cmsg(libc::IPPROTO_IPV6, libc::IPV6_HOPOPTS, &eight),
        _ => {
            let mut both = cmsg(libc::IPPROTO_IPV6, libc::IPV6_HOPOPTS, &eight);
            both.extend(cmsg(libc::IPPROTO_IPV6, libc::IPV6_DSTOPTS, &eight));
            both
        }
    }
}

/// A 16-byte hop-by-hop or destination options header that is one 14-byte PadN: valid
/// syntax, but the kernel drops more than 7 bytes of padding (RFC 4942 §2.1.9.5).
fn long_padding(variant: u8) -> Vec<u8> {
    let sixteen = [0u8, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let kind = match variant {
        0 => libc::IPV6_HOPOPTS,
        _ => libc::IPV6_DSTOPTS,
    };
    cmsg(libc::IPPROTO_IPV6, kind, &sixteen)
}

/// One control message (`struct cmsghdr`, then `data`, padded to 8 bytes: 64-bit Linux).
pub(crate) fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
    const HEADER: usize = 16;
    let mut buf = Vec::with_capacity(HEADER + data.len().next_multiple_of(8));
    buf.extend_from_slice(&((HEADER + data.len()) as u64).to_ne_bytes());
    buf.extend_from_slice(&level.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(HEADER + data.len().next_multiple_of(8), 0);
    buf
}

fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// A UDP header and payload whose checksum is wrong (never 0: that means "none" in IPv4), or
/// 0 if `zero`.
fn bad_udp(d: &DatagramSpec, payload: &[u8], zero: bool) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut udp = Vec::with_capacity(len.into());
    udp.extend_from_slice(&d.source.to_be_bytes());
    udp.extend_from_slice(&d.dst.port().to_be_bytes());
    udp.extend_from_slice(&len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let good = udp_checksum(d.source().ip(), d.dst.ip(), &udp);
    let bad = match good ^ 0x00ff {
        0 | 0xffff => 0x1111,
        other => other,
    };
    let checksum = if zero { 0 } else { bad };
    udp[6..8].copy_from_slice(&checksum.to_be_bytes());
    udp
}

/// The UDP checksum over the pseudo-header and `udp` (its checksum field zero).
fn udp_checksum(src: IpAddr, dst: IpAddr, udp: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            sum += u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    };
    add(&addr_bytes(src));
    add(&addr_bytes(dst));
    add(&[0, 17]);
    add(&(udp.len() as u32).to_be_bytes());
    add(udp);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    match !(sum as u16) {
        0 => 0xffff,
        checksum => checksum,
    }
}

/// An IPv4 packet with a bad UDP checksum (the kernel fills in the header's checksum, length
/// and id on a raw socket).
fn raw_ipv4(d: &DatagramSpec, payload: &[u8]) -> Vec<u8> {
    let udp = bad_udp(d, payload, false);
    let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    packet.extend_from_slice(&A4.octets());
    packet.extend_from_slice(&addr_bytes(d.dst.ip()));
    packet.extend_from_slice(&udp);
    packet
}

/// An IPv6 packet with a bad UDP checksum, or none (0).
fn raw_ipv6(d: &DatagramSpec, payload: &[u8], zero: bool) -> Vec<u8> {
    let udp = bad_udp(d, payload, zero);
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[17, 64]);
    packet.extend_from_slice(&A6.octets());
    packet.extend_from_slice(&addr_bytes(d.dst.ip()));
    packet.extend_from_slice(&udp);
    packet
}

/// The receiving sockets of a run, bound in `b`: the scenario's sockets the kernel accepted.
struct Receivers {
    specs: Vec<SocketSpec>,
    sockets: Vec<UdpSocket>,
    /// Proposed sockets the kernel refused (`EADDRINUSE`: they conflict with earlier ones).
    refused: usize,
}

impl Receivers {
    fn bind(net: &VethPair, scenario: &Scenario) -> anyhow::Result<Self> {
        net.b.run_in(|| {
            let ifindex = demux::sys::if_nametoindex(&net.b_if).context("b's ifindex")?;
            let (mut specs, mut sockets, mut refused) = (Vec::new(), Vec::new(), 0);
            for spec in &scenario.sockets {
                let socket = match demux::backing::open(
                    spec.local,
                    &demux::backing::Options {
                        reuseport: spec.reuseport,
                        v6only: spec.v6only,
                        connect: spec.connect,
                        join: Vec::new(),
                    },
                ) {
                    Ok(socket) => socket,
                    Err(e) if e.code() == demux::control::ErrorCode::AddressInUse => {
                        refused += 1;
                        continue;
                    }
                    Err(e) => return Err(e).with_context(|| format!("binding {spec}")),
                };
                let fd = socket.as_fd();
                // A queue the collector never lets fill, even with every copy of a batch.
                demux::sys::socket::set_int_option(&fd, libc::SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
                    .context("SO_RCVBUFFORCE")?;
                let socket2 = socket2::SockRef::from(&socket);
                for group in &spec.joins {
                    match group {
                        IpAddr::V4(g) => socket2.join_multicast_v4(g, &B4),
                        IpAddr::V6(g) => socket2.join_multicast_v6(g, ifindex),
                    }
                    .with_context(|| format!("{spec}: joining {group}"))?;
                }
                specs.push(spec.clone());
                sockets.push(socket);
            }
            Ok(Self {
                specs,
                sockets,
                refused,
            })
        })
    }

    /// Socket `i`'s reuseport group (its first member's index), or itself.
    fn group_of(&self, i: usize) -> usize {
        match self.specs[i].group_key() {
            None => i,
            Some(key) => self
                .specs
                .iter()
                .position(|s| s.group_key() == Some(key))
                .unwrap_or(i),
        }
    }
}

const SO_RCVBUFFORCE: i32 = 33;

/// Who got what: for each datagram id, the receivers (socket indices) of each copy, sorted,
/// duplicates kept; and copies whose payload was not the length sent.
#[derive(Default)]
struct Deliveries {
    by_id: HashMap<u32, Vec<usize>>,
    cut: u64,
    strangers: u64,
    total: u64,
}

/// Where a run reads: each socket itself (the kernel alone), or its endpoint's sink.
enum Source<'a> {
    Socket(&'a UdpSocket),
    Sink(&'a UnixDatagram),
}

impl Source<'_> {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Source::Socket(s) => s.as_fd(),
            Source::Sink(s) => s.as_fd(),
        }
    }

    /// One payload, or `None` when nothing is queued.
    fn read<'b>(&self, buf: &'b mut [u8]) -> anyhow::Result<Option<&'b [u8]>> {
        let got = match self {
            Source::Socket(s) => s.recv(buf),
            Source::Sink(s) => s.recv(buf),
        };
        let n = match got {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(match self {
            Source::Socket(_) => &buf[..n],
            Source::Sink(_) => record::decode(&buf[..n])?.payload,
        }))
    }
}

/// Sends every datagram of `scenario` in batches while a collector thread reads `sources`;
/// after each batch waits until the receivers have what `expect` says (the kernel run's
/// cumulative count per batch) and nothing more comes. Returns who got what, and the count
/// after each batch.
fn run(
    senders: &Senders,
    scenario: &Scenario,
    sources: &[Source<'_>],
    expect: Option<&[u64]>,
    deadline: Instant,
) -> anyhow::Result<(Deliveries, Vec<u64>)> {
    let lengths: HashMap<u32, usize> = scenario.datagrams.iter().map(|d| (d.id, d.len)).collect();
    let got = Mutex::new(Deliveries::default());
    let count = AtomicU64::new(0);
    let last = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let started = Instant::now();
    let since_start = || started.elapsed().as_micros() as u64;
    let (got_in, lengths) = (&got, &lengths);
    let after = thread::scope(|scope| -> anyhow::Result<Vec<u64>> {
        let collector = scope.spawn(|| -> anyhow::Result<()> {
            let mut buf = vec![0u8; 70_000];
            let mut fds: Vec<libc::pollfd> = sources
                .iter()
                .map(|s| demux::sys::pollfd(&s.fd().as_raw_fd(), libc::POLLIN))
                .collect();
            while !done.load(Relaxed) {
                demux::sys::poll(&mut fds, 10)?;
                for (i, source) in sources.iter().enumerate() {
                    while let Some(payload) = source.read(&mut buf)? {
                        let mut got = got_in.lock().expect("not poisoned");
                        got.total += 1;
                        match payload
                            .strip_prefix(MAGIC)
                            .and_then(|rest| {
                                Some(u32::from_le_bytes(rest.get(..4)?.try_into().ok()?))
                            })
                            .filter(|id| lengths.contains_key(id))
                        {
                            Some(id) => {
                                if lengths[&id] != payload.len() {
                                    got.cut += 1;
                                }
                                got.by_id.entry(id).or_default().push(i);
                            }
                            None => got.strangers += 1,
                        }
                        drop(got);
                        count.fetch_add(1, Relaxed);
                        last.store(since_start(), Relaxed);
                    }
                }
            }
            Ok(())
        });
        let sent = (|| -> anyhow::Result<Vec<u64>> {
            let mut after = Vec::new();
            for (n, batch) in scenario.datagrams.chunks(BATCH).enumerate() {
                ensure!(
                    Instant::now() < deadline,
                    "out of time after {} datagrams",
                    n * BATCH
                );
                for d in batch {
                    senders.send(d).with_context(|| {
                        format!("sending {} {} -> {}", d.kind.name(), d.source(), d.dst)
                    })?;
                }
                let want = expect.map(|e| e[n]);
                let begun = since_start();
                loop {
                    thread::sleep(Duration::from_millis(2));
                    let now = since_start();
                    // The receiver may stamp `last` after `now` was read: saturate.
                    let quiet = now.saturating_sub(last.load(Relaxed).max(begun));
                    let reached = want.is_none_or(|w| count.load(Relaxed) >= w);
                    if (reached && quiet > 15_000) || quiet > 100_000 {
                        break;
                    }
                }
                after.push(count.load(Relaxed));
            }
            Ok(after)
        })();
        done.store(true, Relaxed);
        collector
            .join()
            .unwrap_or_else(|_| bail!("the collector panicked"))?;
        sent
    })?;
    let mut got = got.into_inner().expect("not poisoned");
    for receivers in got.by_id.values_mut() {
        receivers.sort_unstable();
    }
    Ok((got, after))
}

/// One kind's line of the agreement table.
#[derive(Default)]
struct Tally {
    sent: u64,
    agreed: u64,
    disagreed: u64,
    /// Copies the kernel and demux delivered.
    kernel_copies: u64,
    demux_copies: u64,
    /// The first few disagreements, described.
    examples: Vec<String>,
}

/// Compares demux's deliveries with the kernel's, datagram by datagram: per kind, how many
/// agreed. Unicast compares reuseport groups (the kernel's member choice is its own hash),
/// one-to-many kinds compare sockets.
fn compare(
    scenario: &Scenario,
    receivers: &Receivers,
    kernel: &Deliveries,
    demux: &Deliveries,
) -> BTreeMap<Kind, Tally> {
    let mut table: BTreeMap<Kind, Tally> = BTreeMap::new();
    let none = Vec::new();
    for d in &scenario.datagrams {
        let (k, x) = (
            kernel.by_id.get(&d.id).unwrap_or(&none),
            demux.by_id.get(&d.id).unwrap_or(&none),
        );
        let canonical = |got: &Vec<usize>| -> Vec<usize> {
            let mut v: Vec<usize> = match d.kind.one_to_many() {
                true => got.clone(),
                false => got.iter().map(|&i| receivers.group_of(i)).collect(),
            };
            v.sort_unstable();
            v
        };
        let tally = table.entry(d.kind).or_default();
        tally.sent += 1;
        tally.kernel_copies += k.len() as u64;
        tally.demux_copies += x.len() as u64;
        if canonical(k) == canonical(x) {
            tally.agreed += 1;
        } else {
            tally.disagreed += 1;
            if tally.examples.len() < 3 {
                let name = |got: &Vec<usize>| -> String {
                    match got.is_empty() {
                        true => "nobody".into(),
                        false => got
                            .iter()
                            .map(|&i| format!("#{i} ({})", receivers.specs[i]))
                            .collect::<Vec<_>>()
                            .join(", "),
                    }
                };
                tally.examples.push(format!(
                    "id {} (variant {}) {} -> {}: kernel: {}; demux: {}",
                    d.id,
                    d.variant,
                    d.source(),
                    d.dst,
                    name(k),
                    name(x)
                ));
            }
        }
    }
    table
}

/// Unicast flows (4-tuples) whose datagrams reached more than one member of a group: how many,
/// and the first few, each with the kinds of datagram each member got.
fn split_flows(
    scenario: &Scenario,
    specs: &[SocketSpec],
    got: &Deliveries,
) -> (usize, Vec<String>) {
    type Members = BTreeMap<usize, BTreeSet<&'static str>>;
    let mut flows: BTreeMap<(SocketAddr, SocketAddr), Members> = BTreeMap::new();
    for d in scenario.datagrams.iter().filter(|d| !d.kind.one_to_many()) {
        for &i in got.by_id.get(&d.id).into_iter().flatten() {
            let flow = flows.entry((d.source(), d.dst)).or_default();
            flow.entry(i).or_default().insert(d.kind.name());
        }
    }
    // A group of connected sockets (equal 4-tuples) is the kernel's to split: it picks by
    // hash-chain order and runs no reuseport program for them (docs/SECURITY.md).
    let connected = |members: &Members| members.keys().all(|&i| specs[i].connect.is_some());
    let split: Vec<String> = flows
        .iter()
        .filter(|(_, members)| members.len() > 1 && !connected(members))
        .map(|((from, to), members)| format!("{from} -> {to}: {members:?}"))
        .collect();
    (split.len(), split.into_iter().take(3).collect())
}

fn print_table(table: &BTreeMap<Kind, Tally>) {
    let row = |kind: &str, t: &Tally| {
        println!(
            "  {kind:<24} {:>7} {:>7} {:>10} {:>14} {:>13}",
            t.sent, t.agreed, t.disagreed, t.kernel_copies, t.demux_copies
        );
    };
    println!(
        "  {:<24} {:>7} {:>7} {:>10} {:>14} {:>13}",
        "kind", "sent", "agreed", "disagreed", "kernel copies", "demux copies"
    );
    let mut total = Tally::default();
    for (kind, t) in table {
        row(kind.name(), t);
        total.sent += t.sent;
        total.agreed += t.agreed;
        total.disagreed += t.disagreed;
        total.kernel_copies += t.kernel_copies;
        total.demux_copies += t.demux_copies;
    }
    row("all", &total);
}

fn env_number(name: &str) -> anyhow::Result<Option<u64>> {
    let Ok(text) = std::env::var(name) else {
        return Ok(None);
    };
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Ok(Some(parsed.with_context(|| format!("{name}={text}"))?))
}

/// The kinds `DEMUX_ORACLE_KINDS` names, or all.
fn kinds_from_env() -> anyhow::Result<Vec<Kind>> {
    let all: Vec<Kind> = Kind::MIX.iter().map(|(k, _)| *k).collect();
    let Ok(text) = std::env::var("DEMUX_ORACLE_KINDS") else {
        return Ok(all);
    };
    text.split(',')
        .map(|name| {
            all.iter()
                .copied()
                .find(|k| k.name() == name.trim())
                .with_context(|| {
                    let names: Vec<&str> = all.iter().map(|k| k.name()).collect();
                    format!(
                        "DEMUX_ORACLE_KINDS: `{name}` is none of {}",
                        names.join(", ")
                    )
                })
        })
        .collect()
}

pub(crate) fn demux_delivers_where_the_kernel_does() -> anyhow::Result<()> {
    let seed = match env_number("DEMUX_ORACLE_SEED")? {
        Some(seed) => seed,
        None => {
            let mut bytes = [0u8; 8];
            demux::sys::random_bytes(&mut bytes)?;
            u64::from_le_bytes(bytes)
        }
    };
    let count = env_number("DEMUX_ORACLE_DATAGRAMS")?.map_or(DEFAULT_DATAGRAMS, |n| n as usize);
    let kinds = kinds_from_env()?;
    let rerun =
        format!("seed {seed:#x}, {count} datagrams; rerun with DEMUX_ORACLE_SEED={seed:#x}");
    println!("  oracle: {rerun}");
    oracle(seed, count, &kinds).with_context(|| rerun)
}

fn oracle(seed: u64, count: usize, kinds: &[Kind]) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + TIME_BUDGET;
    let scenario = Scenario::generate(seed, count, kinds);
    let net = testbed()?;
    let dir = TempDir::new("demux-oracle")?;
    let senders = Senders::open(&net)?;
    let receivers = Receivers::bind(&net, &scenario)?;
    let udp_before = [net.b.udp_counters(false)?, net.b.udp_counters(true)?];

    // The kernel alone.
    let sources: Vec<Source<'_>> = receivers.sockets.iter().map(Source::Socket).collect();
    let (kernel, expect) = run(&senders, &scenario, &sources, None, deadline)?;
    let udp_after = [net.b.udp_counters(false)?, net.b.udp_counters(true)?];
    for (before, after) in udp_before.iter().zip(&udp_after) {
        let overflowed =
            after.get("RcvbufErrors").unwrap_or(&0) - before.get("RcvbufErrors").unwrap_or(&0);
        ensure!(
            overflowed == 0,
            "the kernel run overflowed {overflowed} socket queues: the oracle is not exact"
        );
    }
    let kernel_phase = started.elapsed();

    // The same sockets as demux endpoints, each with a sink of its own.
    let daemon = RunningDaemon::start(&net, &dir, &[])?;
    let sinks: Vec<UnixDatagram> = net.b.run_in(|| {
        (0..receivers.sockets.len())
            .map(|i| {
                let sink = UnixDatagram::bind(dir.join(&format!("sink{i}")))?;
                sink.set_nonblocking(true)?;
                Ok(sink)
            })
            .collect()
    })?;
    let mut client = daemon.client()?;
    let mut unregistered = Vec::new();
    for (i, (spec, socket)) in receivers.specs.iter().zip(&receivers.sockets).enumerate() {
        let request = BindRequest {
            connect: spec.connect.map(|c| c.to_string()),
            v6only: spec.v6only,
            ..BindRequest::udp(
                spec.local.to_string(),
                SinkSpec::Unix(dir.join(&format!("sink{i}"))),
            )
        };
        match client.bind(request, Some(socket.as_fd())) {
            Ok((Response::Bound { .. }, _)) => {}
            Ok((other, _)) => unregistered.push(format!("#{i} ({spec}): {other:?}")),
            Err(e) => unregistered.push(format!("#{i} ({spec}): {e}")),
        }
    }
    // A socket demux refused is read directly, so that the rest of the run still compares.
    let registered = |i: usize| {
        !unregistered
            .iter()
            .any(|u| u.starts_with(&format!("#{i} ")))
    };
    let sources: Vec<Source<'_>> = (0..receivers.sockets.len())
        .map(|i| match registered(i) {
            true => Source::Sink(&sinks[i]),
            false => Source::Socket(&receivers.sockets[i]),
        })
        .collect();
    let replay_started = Instant::now();
    let (demux, _) = run(&senders, &scenario, &sources, Some(&expect), deadline)?;
    let replay_phase = replay_started.elapsed();
    let Response::Stats(stats) = client.call(Request::Stats)? else {
        bail!("no stats");
    };

    let table = compare(&scenario, &receivers, &kernel, &demux);
    let groups = (0..receivers.specs.len())
        .filter(|&i| receivers.group_of(i) != i)
        .count();
    println!(
        "  {} sockets ({} reuseport members beyond the first, {} proposals refused by the \
         kernel); kernel run {:.1} s, replay {:.1} s, all {:.1} s",
        receivers.specs.len(),
        groups,
        receivers.refused,
        kernel_phase.as_secs_f64(),
        replay_phase.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    print_table(&table);
    if std::env::var_os("DEMUX_ORACLE_VERBOSE").is_some() {
        for (i, spec) in receivers.specs.iter().enumerate() {
            println!("  #{i} {spec}");
        }
    }
    let ((kernel_split, kernel_flows), (demux_split, demux_flows)) = (
        split_flows(&scenario, &receivers.specs, &kernel),
        split_flows(&scenario, &receivers.specs, &demux),
    );
    let via_kernel: u64 = stats.endpoints.iter().map(|e| e.via_kernel).sum();
    let delivered: u64 = stats.endpoints.iter().map(|e| e.delivered).sum();
    println!(
        "  kernel copies {} demux copies {} (XDP {delivered}, via backing sockets {via_kernel}); \
         flows on more than one member: kernel {kernel_split}, demux {demux_split}; stats: seen \
         {} delivered {} passed {} dropped {}",
        kernel.total,
        demux.total,
        stats.seen(),
        stats.delivered(),
        stats.passed(),
        stats.dropped()
    );

    let mut failures = Vec::new();
    for (kind, t) in &table {
        if t.disagreed > 0 {
            failures.push(format!(
                "{}: {} of {} disagree, e.g. {}",
                kind.name(),
                t.disagreed,
                t.sent,
                t.examples.join(" | ")
            ));
        }
    }
    if !unregistered.is_empty() {
        failures.push(format!(
            "demux refused sockets the kernel took: {unregistered:?}"
        ));
    }
    for (who, got) in [("kernel", &kernel), ("demux", &demux)] {
        if got.cut + got.strangers > 0 {
            failures.push(format!(
                "{who}: {} datagrams cut, {} not sent by this run",
                got.cut, got.strangers
            ));
        }
    }
    // The kernel is the oracle, not under test: its own splits are shown, not counted.
    if kernel_split > 0 {
        println!(
            "  the kernel itself split {kernel_split} flow(s) over group members: {kernel_flows:?}"
        );
    }
    if demux_split > 0 {
        failures.push(format!(
            "{demux_split} flow(s) reached more than one member of their group, e.g. \
             {demux_flows:?}"
        ));
    }
    failures.extend(accounting(&stats, &demux, &unregistered));
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    drop(daemon);
    Ok(())
}

/// What `stats` must say after the replay: the equation holds, nothing dropped, and every
/// record a sink received is one the daemon counted (through XDP or the backing socket).
fn accounting(stats: &Stats, demux: &Deliveries, unregistered: &[String]) -> Vec<String> {
    let mut failures = Vec::new();
    let line = format!(
        "seen {} delivered {} passed {} dropped {}: {:?}",
        stats.seen(),
        stats.delivered(),
        stats.passed(),
        stats.dropped(),
        stats.verdicts
    );
    if stats.seen() != stats.delivered() + stats.passed() + stats.dropped() {
        failures.push(format!("stats do not add up: {line}"));
    }
    // Bad checksums are dropped as the kernel drops them; nothing else may be.
    if stats.dropped() != stats.dropped_bad_checksum {
        failures.push(format!(
            "the daemon dropped datagrams other than bad checksums ({}): {line}",
            stats.dropped_bad_checksum
        ));
    }
    let counted: u64 = stats
        .endpoints
        .iter()
        .map(|e| e.delivered + e.via_kernel)
        .sum();
    if unregistered.is_empty() && counted != demux.total {
        failures.push(format!(
            "the sinks received {} records, the endpoints count {counted} (delivered + via_kernel)",
            demux.total
        ));
    }
    failures
}
