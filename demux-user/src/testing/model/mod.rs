//! The reference classifier: a plain Rust model of what the XDP program must decide, written
//! independently of it (byte slices, ordinary collections, a linear prefix scan), and used as
//! the oracle for testing the program with BPF_PROG_TEST_RUN.
//!
//! Its rules are the contract in docs/ARCHITECTURE.md: parse Ethernet, at most two VLAN tags,
//! IPv4 (version, IHL >= 5, IHL*4 <= total length <= bytes present, then fragments) or IPv6
//! (payload length <= bytes present, at most six hop-by-hop/routing/destination-options
//! headers, any fragment header), then UDP or TCP with consistent lengths; then the
//! destination checks against the host's view ([`Host`]: VLAN, IPv6 routing header, IPv4
//! options or IPv6 hop-by-hop/destination options headers, martians, broadcast and multicast, local routes by longest prefix, the ingress
//! interface's MAC; written with `std::net`'s address predicates); then look up
//! connected, bound, prefix (longest, then specific port), wildcard (IPv4, then dual-stack
//! IPv6); a group picks `members[flow_hash % count]`, the flow hash keyed with the key the
//! program was loaded with ([`Model::new`]).

pub mod fixtures;

use std::collections::{HashMap, HashSet};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use demux_common::{
    binding::{
        BoundKey, ConnectedKey, PrefixKey, Target, WildcardKey, FAMILY_IPV4, FAMILY_IPV6,
        PROTO_TCP, PROTO_UDP, TARGET_GROUP, TARGET_V6ONLY,
    },
    hash::{flow_hash, FlowKey},
    meta::PacketMeta,
    Verdict,
};

use crate::{
    binding::Entry,
    dataplane::{Dataplane, LocalKind, LocalPrefix},
    tables::TableError,
};

/// The ingress interface index BPF_PROG_TEST_RUN gives an XDP program: the loopback device of
/// the caller's namespace, always 1.
pub const TEST_RUN_IFINDEX: u32 = 1;

/// The host's view the program checks destinations against: the local routes (the maps
/// `LOCAL_HOSTS_V4`, `LOCAL_HOSTS_V6` and `LOCAL_ADDRS`; the model keeps one list and takes the
/// longest match) and the interfaces' own MAC addresses (`IFACE_SLOTS`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Host {
    pub local: Vec<(LocalPrefix, LocalKind)>,
    pub macs: HashMap<u32, [u8; 6]>,
}

impl Host {
    /// Writes this view into `dataplane` (the program's maps, or memory): every local route and
    /// every interface MAC (each interface as number 0: the tests have no AF_XDP socket).
    pub fn install<D: Dataplane + ?Sized>(&self, dataplane: &mut D) -> Result<(), TableError> {
        for (prefix, kind) in &self.local {
            dataplane.set_local(*prefix, *kind)?;
        }
        for (ifindex, mac) in &self.macs {
            dataplane.set_iface(*ifindex, 0, *mac)?;
        }
        Ok(())
    }

    /// Removes this view's local routes from `dataplane` (MACs stay: the next view overwrites
    /// them).
    pub fn uninstall<D: Dataplane + ?Sized>(&self, dataplane: &mut D) -> Result<(), TableError> {
        for (prefix, _) in &self.local {
            dataplane.remove_local(*prefix)?;
        }
        Ok(())
    }
}

/// A frame's socket address tuple and offsets, as the model parsed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub dst_mac: [u8; 6],
    /// At least one VLAN tag.
    pub vlan: bool,
    /// IPv4 with IHL > 5, or IPv6 with a hop-by-hop or destination options header.
    pub ip_options: bool,
    /// IPv6 with a routing header among the extension headers.
    pub routing_header: bool,
    pub family: u8,
    pub protocol: u8,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub l4_offset: u16,
    pub payload_offset: u16,
    pub l3_offset: u16,
}

/// What the program must do with one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The metadata written in front of the frame: present whenever a binding matched.
    pub meta: Option<PacketMeta>,
}

/// The binding tables, as plain collections, which rx queues have an AF_XDP socket, and the
/// flow hash key.
#[derive(Clone, Debug)]
pub struct Model {
    flow_key: FlowKey,
    connected: HashMap<ConnectedKey, Target>,
    bound: HashMap<BoundKey, Target>,
    prefixes: Vec<(PrefixKey, u8, Target)>,
    wildcard: HashMap<WildcardKey, Target>,
    groups: HashMap<u32, Vec<u32>>,
    pub sockets: HashSet<u32>,
    /// Rx queue → the `XSK_FRAME_LIMITS` entry of its slot: the longest frame its socket takes
    /// beyond one UMEM frame (bound with `XDP_USE_SG`); absent: 0.
    pub frame_limits: HashMap<u32, u32>,
    /// Local routes and interface MACs; empty: nothing is local.
    pub host: Host,
    /// The interface frames arrive on ([`TEST_RUN_IFINDEX`] by default).
    pub ifindex: u32,
}

impl Model {
    /// An empty model whose groups hash flows with `flow_key` (the program's key:
    /// `demux::program::Loaded::flow_key`).
    pub fn new(flow_key: FlowKey) -> Model {
        Model {
            flow_key,
            connected: HashMap::new(),
            bound: HashMap::new(),
            prefixes: Vec::new(),
            wildcard: HashMap::new(),
            groups: HashMap::new(),
            sockets: HashSet::new(),
            frame_limits: HashMap::new(),
            host: Host::default(),
            ifindex: TEST_RUN_IFINDEX,
        }
    }

    /// Adds a binding; `false` if its key is already bound (the map insert would fail too).
    pub fn insert(&mut self, entry: Entry, target: Target) -> bool {
        match entry {
            Entry::Connected(key) => self.connected.try_insert_like(key, target),
            Entry::Bound(key) => self.bound.try_insert_like(key, target),
            Entry::Wildcard(key) => self.wildcard.try_insert_like(key, target),
            Entry::Prefix(key, len) => {
                if self.prefixes.iter().any(|(k, l, _)| *k == key && *l == len) {
                    return false;
                }
                self.prefixes.push((key, len, target));
                true
            }
        }
    }

    pub fn set_group(&mut self, id: u32, members: &[u32]) {
        self.groups.insert(id, members.to_vec());
    }

    /// The outcome for `frame` arriving on `rx_queue`.
    pub fn classify(&self, frame: &[u8], rx_queue: u32) -> Outcome {
        // First: a frame the socket of its queue could not take is passed unexamined. Longer
        // than one UMEM frame fits only a socket bound with XDP_USE_SG, up to its limit, found
        // through the interface's entry (the program's too; none: it fits nothing).
        let limit = match self.host.macs.get(&self.ifindex) {
            Some(_) => self.frame_limits.get(&rx_queue).copied().unwrap_or(0),
            None => 0,
        };
        if frame.len() > demux_common::meta::MAX_XSK_FRAME as usize && frame.len() > limit as usize
        {
            return Outcome {
                verdict: Verdict::PassTooLarge,
                meta: None,
            };
        }
        let tuple = match parse(frame) {
            Ok(tuple) => tuple,
            Err(verdict) => {
                return Outcome {
                    verdict,
                    meta: None,
                }
            }
        };
        if let Err(verdict) = self.addressed_here(&tuple) {
            return Outcome {
                verdict,
                meta: None,
            };
        }
        let no_match = Outcome {
            verdict: Verdict::PassNoMatch,
            meta: None,
        };
        let Some(target) = self.lookup(&tuple) else {
            return no_match;
        };
        // Only a group's member choice needs the flow hash; an endpoint's metadata carries 0.
        let (endpoint, hash) = if target.flags & TARGET_GROUP != 0 {
            let hash = flow_hash(
                &self.flow_key,
                &tuple.src_addr,
                &tuple.dst_addr,
                tuple.src_port,
                tuple.dst_port,
            );
            match self.groups.get(&target.id) {
                Some(members) if !members.is_empty() => {
                    (members[hash as usize % members.len()], hash)
                }
                _ => return no_match,
            }
        } else {
            (target.id, 0)
        };
        if endpoint == 0 {
            return no_match;
        }
        if let Err(verdict) = self.local_here(&tuple) {
            return Outcome {
                verdict,
                meta: None,
            };
        }
        let meta = PacketMeta {
            version: PacketMeta::VERSION,
            protocol: tuple.protocol,
            family: tuple.family,
            endpoint,
            flow_hash: hash,
            l4_offset: tuple.l4_offset,
            payload_offset: tuple.payload_offset,
            l3_offset: tuple.l3_offset,
            _pad: 0,
        };
        let verdict = if self.sockets.contains(&rx_queue) {
            Verdict::Redirected
        } else {
            Verdict::PassNoSocket
        };
        Outcome {
            verdict,
            meta: Some(meta),
        }
    }

    /// What the packet alone says about whether the kernel would deliver it to a local socket
    /// (the order of the program's `host::plain`, before the lookup); `Err` is the pass verdict.
    fn addressed_here(&self, t: &Tuple) -> Result<(), Verdict> {
        if t.vlan {
            return Err(Verdict::PassVlan);
        }
        if t.routing_header {
            return Err(Verdict::PassRoutingHeader);
        }
        if t.ip_options {
            return Err(Verdict::PassIpOptions);
        }
        let (src, dst) = (ip(t.family, &t.src_addr), ip(t.family, &t.dst_addr));
        let martian = |addr: IpAddr| match addr {
            IpAddr::V4(a) => a.is_loopback() || a.octets()[0] == 0,
            IpAddr::V6(a) => a.is_loopback() || a.is_unspecified() || a.to_ipv4_mapped().is_some(),
        };
        let group = |addr: IpAddr| match addr {
            IpAddr::V4(a) => a.is_multicast() || a.is_broadcast(),
            IpAddr::V6(a) => a.is_multicast(),
        };
        if martian(src) || martian(dst) || group(src) {
            return Err(Verdict::PassMartian);
        }
        let mac_group = t.dst_mac[0] & 0x01 != 0;
        if mac_group || group(dst) {
            return Err(Verdict::PassMulticast);
        }
        Ok(())
    }

    /// What only the host's tables say, checked for a packet that matched a binding: the
    /// destination is a local address (a subnet broadcast passes as multicast) and the MAC
    /// the interface's own.
    fn local_here(&self, t: &Tuple) -> Result<(), Verdict> {
        let dst = ip(t.family, &t.dst_addr);
        let route = self
            .host
            .local
            .iter()
            .filter(|(prefix, _)| prefix.contains(dst))
            .max_by_key(|(prefix, _)| prefix.len);
        match route {
            None => return Err(Verdict::PassNotLocal),
            Some((_, LocalKind::Broadcast)) => return Err(Verdict::PassMulticast),
            Some((_, LocalKind::Local)) => {}
        }
        match self.host.macs.get(&self.ifindex) {
            Some(mac) if *mac == t.dst_mac => Ok(()),
            _ => Err(Verdict::PassNotLocal),
        }
    }

    fn lookup(&self, t: &Tuple) -> Option<Target> {
        let connected = ConnectedKey {
            protocol: t.protocol,
            family: t.family,
            local_port: t.dst_port,
            remote_port: t.src_port,
            _pad: [0; 2],
            local_addr: t.dst_addr,
            remote_addr: t.src_addr,
        };
        let bound = BoundKey {
            protocol: t.protocol,
            family: t.family,
            local_port: t.dst_port,
            local_addr: t.dst_addr,
        };
        let wildcard = |family| WildcardKey {
            protocol: t.protocol,
            family,
            local_port: t.dst_port,
        };
        self.connected
            .get(&connected)
            .or_else(|| self.bound.get(&bound))
            .copied()
            .or_else(|| self.longest_prefix(t))
            .or_else(|| self.wildcard.get(&wildcard(t.family)).copied())
            .or_else(|| {
                let dual = self.wildcard.get(&wildcard(FAMILY_IPV6)).copied();
                dual.filter(|d| t.family == FAMILY_IPV4 && d.flags & TARGET_V6ONLY == 0)
            })
    }

    /// Longest matching prefix; on equal length the port-specific binding wins.
    fn longest_prefix(&self, t: &Tuple) -> Option<Target> {
        self.prefixes
            .iter()
            .filter(|(k, _, _)| k.protocol == t.protocol && k.family == t.family)
            .filter(|(k, _, _)| k.local_port == t.dst_port || k.local_port == 0)
            .filter(|(k, len, _)| prefix_matches(&k.local_addr, &t.dst_addr, *len))
            .max_by_key(|(k, len, _)| (*len, k.local_port != 0))
            .map(|(_, _, target)| *target)
    }
}

trait TryInsertLike<K, V> {
    fn try_insert_like(&mut self, key: K, value: V) -> bool;
}

impl<K: std::hash::Hash + Eq, V> TryInsertLike<K, V> for HashMap<K, V> {
    fn try_insert_like(&mut self, key: K, value: V) -> bool {
        if self.contains_key(&key) {
            return false;
        }
        self.insert(key, value);
        true
    }
}

/// The address of family `family` in the 16-byte form.
fn ip(family: u8, addr: &[u8; 16]) -> IpAddr {
    if family == FAMILY_IPV4 {
        Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).into()
    } else {
        Ipv6Addr::from(*addr).into()
    }
}

fn prefix_matches(prefix: &[u8; 16], addr: &[u8; 16], len: u8) -> bool {
    (0..usize::from(len)).all(|bit| {
        let mask = 0x80 >> (bit % 8);
        prefix[bit / 8] & mask == addr[bit / 8] & mask
    })
}

/// The metadata the program writes in front of `frame` when it steers it to endpoint 1 (flow
/// hash 0), from the contract's parse; `None` for a frame that does not parse.
pub fn meta_for(frame: &[u8]) -> Option<PacketMeta> {
    let t = parse(frame).ok()?;
    Some(PacketMeta {
        version: PacketMeta::VERSION,
        protocol: t.protocol,
        family: t.family,
        endpoint: 1,
        flow_hash: 0,
        l4_offset: t.l4_offset,
        payload_offset: t.payload_offset,
        l3_offset: t.l3_offset,
        _pad: 0,
    })
}

/// Parses a frame by the contract; `Err` is the pass verdict.
pub fn parse(frame: &[u8]) -> Result<Tuple, Verdict> {
    use Verdict::{PassFragment as Fragment, PassMalformed as Malformed};
    let bytes = |at: usize, n: usize| frame.get(at..at + n).ok_or(Malformed);
    let be16 = |at: usize| bytes(at, 2).map(|b| u16::from_be_bytes([b[0], b[1]]));

    let mut ether_type = be16(12)?;
    let dst_mac: [u8; 6] = bytes(0, 6)?.try_into().expect("6 bytes");
    let vlan = ether_type == 0x8100 || ether_type == 0x88a8;
    let mut routing_header = false;
    let mut option_header = false;
    let mut at = 14;
    for _ in 0..2 {
        if ether_type != 0x8100 && ether_type != 0x88a8 {
            break;
        }
        ether_type = be16(at + 2)?;
        at += 4;
    }
    let (family, protocol, src, dst, l4_at, ip_payload) = match ether_type {
        0x0800 => {
            let ip = bytes(at, 20)?;
            let header_len = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            if ip[0] >> 4 != 4 || header_len < 20 || total < header_len || at + total > frame.len()
            {
                return Err(Malformed);
            }
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
                return Err(Fragment);
            }
            let mut src = [0; 16];
            let mut dst = [0; 16];
            src[..4].copy_from_slice(&ip[12..16]);
            dst[..4].copy_from_slice(&ip[16..20]);
            (
                FAMILY_IPV4,
                ip[9],
                src,
                dst,
                at + header_len,
                total - header_len,
            )
        }
        0x86dd => {
            let ip = bytes(at, 40)?;
            let mut payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if ip[0] >> 4 != 6 || at + 40 + payload > frame.len() {
                return Err(Malformed);
            }
            let mut next = ip[6];
            let mut cursor = at + 40;
            let mut walked = 0;
            loop {
                match next {
                    44 => return Err(Fragment),
                    0 | 43 | 60 => {
                        if walked == 6 {
                            return Err(Malformed);
                        }
                        let ext = bytes(cursor, 2)?;
                        let len = (usize::from(ext[1]) + 1) * 8;
                        if len > payload {
                            return Err(Malformed);
                        }
                        bytes(cursor, len)?;
                        routing_header |= next == 43;
                        option_header |= next == 0 || next == 60;
                        next = ext[0];
                        payload -= len;
                        cursor += len;
                        walked += 1;
                    }
                    _ => break,
                }
            }
            let src: [u8; 16] = ip[8..24].try_into().expect("16 bytes");
            let dst: [u8; 16] = ip[24..40].try_into().expect("16 bytes");
            (FAMILY_IPV6, next, src, dst, cursor, payload)
        }
        _ => return Err(Verdict::PassNotIp),
    };
    let payload_at = match protocol {
        PROTO_UDP => {
            let udp = bytes(l4_at, 8)?;
            let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
            if len < 8 || len > ip_payload {
                return Err(Malformed);
            }
            l4_at + 8
        }
        PROTO_TCP => {
            let tcp = bytes(l4_at, 20)?;
            let header_len = usize::from(tcp[12] >> 4) * 4;
            if header_len < 20 || header_len > ip_payload {
                return Err(Malformed);
            }
            bytes(l4_at, header_len)?;
            l4_at + header_len
        }
        _ => return Err(Verdict::PassOtherProtocol),
    };
    let port = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    Ok(Tuple {
        dst_mac,
        vlan,
        ip_options: (family == FAMILY_IPV4 && l4_at - at > 20) || option_header,
        routing_header,
        family,
        protocol,
        src_addr: src,
        dst_addr: dst,
        src_port: port(l4_at),
        dst_port: port(l4_at + 2),
        l4_offset: l4_at as u16,
        payload_offset: payload_at as u16,
        l3_offset: at as u16,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two arbitrary keys: the fixtures hold whatever the key.
    const KEYS: [FlowKey; 2] = [
        FlowKey { k0: 1, k1: 2 },
        FlowKey {
            k0: 0x0123_4567_89ab_cdef,
            k1: 0xfedc_ba98_7654_3210,
        },
    ];

    #[test]
    fn fixtures() {
        let mut failures = Vec::new();
        for fixture in KEYS.iter().flat_map(|key| {
            fixtures::all(key)
                .into_iter()
                .map(move |fixture| (*key, fixture))
        }) {
            let (key, fixture) = fixture;
            let mut model = Model::new(key);
            model.host = fixtures::host();
            for (binding, receiver) in &fixture.bindings {
                let (entry, target) = binding.encode(*receiver).expect(&fixture.name);
                assert!(
                    model.insert(entry, target),
                    "{}: duplicate binding",
                    fixture.name
                );
            }
            for (id, members) in &fixture.groups {
                model.set_group(*id, members);
            }
            let outcome = model.classify(&fixture.frame, 0);
            let endpoint = outcome.meta.map(|m| m.endpoint);
            if outcome.verdict != fixture.verdict || endpoint != fixture.endpoint {
                failures.push(format!(
                    "{}: got {:?} endpoint {:?}, want {:?} endpoint {:?}",
                    fixture.name, outcome.verdict, endpoint, fixture.verdict, fixture.endpoint
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} fixtures failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn offsets_point_at_the_headers() {
        use crate::testing::frame::FrameSpec;
        let spec = FrameSpec {
            vlan_tags: vec![0x8100],
            ipv4_options: 8,
            ..FrameSpec::udp(
                "198.18.0.1:1".parse().unwrap(),
                "198.18.0.2:2".parse().unwrap(),
                b"abc",
            )
        };
        let frame = spec.build();
        let tuple = parse(&frame).unwrap();
        assert_eq!(
            (tuple.l4_offset, tuple.payload_offset),
            (14 + 4 + 28, 14 + 4 + 28 + 8)
        );
        assert_eq!(&frame[usize::from(tuple.payload_offset)..], b"abc");
        assert_eq!((tuple.src_port, tuple.dst_port), (1, 2));
    }

    /// A model on the fixtures' host with endpoint 9 on `0.0.0.0:2`.
    fn wildcard_on_port_2() -> Model {
        let binding = crate::binding::Binding {
            protocol: crate::binding::Protocol::Udp,
            local: crate::binding::Local::Addr("0.0.0.0:2".parse().unwrap()),
            remote: None,
            v6only: false,
        };
        let (entry, target) = binding
            .encode(crate::binding::Receiver::Endpoint(9))
            .unwrap();
        let mut model = Model::new(KEYS[0]);
        model.host = fixtures::host();
        model.insert(entry, target);
        model
    }

    #[test]
    fn sockets_decide_between_redirect_and_no_socket() {
        let mut model = wildcard_on_port_2();
        let frame = crate::testing::frame::FrameSpec::udp(
            "198.18.0.1:1".parse().unwrap(),
            "198.18.0.2:2".parse().unwrap(),
            b"",
        )
        .build();
        assert_eq!(model.classify(&frame, 3).verdict, Verdict::PassNoSocket);
        model.sockets.insert(3);
        assert_eq!(model.classify(&frame, 3).verdict, Verdict::Redirected);
        assert_eq!(model.classify(&frame, 4).verdict, Verdict::PassNoSocket);
    }

    #[test]
    fn a_long_frame_fits_only_a_socket_bound_for_multi_buffer_frames() {
        let mut model = wildcard_on_port_2();
        model.sockets.insert(0);
        let frame = crate::testing::frame::FrameSpec::udp(
            "198.18.0.1:1".parse().unwrap(),
            "198.18.0.2:2".parse().unwrap(),
            &[7; 5000],
        )
        .build();
        assert_eq!(model.classify(&frame, 0).verdict, Verdict::PassTooLarge);
        model.frame_limits.insert(0, frame.len() as u32 - 1);
        assert_eq!(model.classify(&frame, 0).verdict, Verdict::PassTooLarge);
        model.frame_limits.insert(0, frame.len() as u32);
        assert_eq!(model.classify(&frame, 0).verdict, Verdict::Redirected);
        // Another queue's socket, or an interface without an entry: passed.
        assert_eq!(model.classify(&frame, 1).verdict, Verdict::PassTooLarge);
        model.ifindex = 7;
        assert_eq!(model.classify(&frame, 0).verdict, Verdict::PassTooLarge);
    }

    #[test]
    fn an_interface_without_a_mac_entry_steers_nothing() {
        let mut model = wildcard_on_port_2();
        model.ifindex = 7;
        let frame = crate::testing::frame::FrameSpec::udp(
            "198.18.0.1:1".parse().unwrap(),
            "198.18.0.2:2".parse().unwrap(),
            b"",
        )
        .build();
        assert_eq!(model.classify(&frame, 0).verdict, Verdict::PassNotLocal);
        model.ifindex = TEST_RUN_IFINDEX;
        assert_eq!(model.classify(&frame, 0).verdict, Verdict::PassNoSocket);
        model.host.local.clear();
        assert_eq!(model.classify(&frame, 0).verdict, Verdict::PassNotLocal);
    }
}
