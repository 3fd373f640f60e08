//! Keys and values of the four binding tables. Byte layouts are in docs/ARCHITECTURE.md.
//!
//! Addresses are 16 bytes: an IPv4 address sits in the first 4, the other 12 are zero. Ports
//! and other integers are native-endian (the BPF target and the host are both little-endian).

/// IP protocol numbers of the transports demux steers.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Address families, as the IP version.
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// `CONNECTED` key: the exact 5-tuple, seen from the receiver. 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectedKey {
    pub protocol: u8,
    pub family: u8,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: [u8; 2],
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// `BOUND` key: a specific local address and port. 20 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BoundKey {
    pub protocol: u8,
    pub family: u8,
    pub local_port: u16,
    pub local_addr: [u8; 16],
}

/// `PREFIX` LPM trie key data (after the trie's `u32` prefix length). 20 bytes. The trie
/// matches `32 + address prefix length` bits, so protocol, family and port always match
/// exactly; `local_port` 0 means all ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrefixKey {
    pub protocol: u8,
    pub family: u8,
    pub local_port: u16,
    pub local_addr: [u8; 16],
}

/// Bits of a `PrefixKey` before the address: protocol, family, port.
pub const PREFIX_KEY_FIXED_BITS: u32 = 32;

/// `PREFIX_V4` LPM trie key data (after the trie's `u32` prefix length): an IPv4 prefix
/// binding, in a trie of its own so that its key is 8 bytes and the walk has no family level.
/// The trie matches `32 + address prefix length` bits, so protocol and port always match
/// exactly; `local_port` 0 means all ports. (`PREFIX_V6` takes [`PrefixKey`], family 6.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrefixKeyV4 {
    pub protocol: u8,
    pub _pad: u8,
    pub local_port: u16,
    pub local_addr: [u8; 4],
}

impl PrefixKeyV4 {
    /// The `PREFIX_V4` key of an IPv4 [`PrefixKey`] (its address's first 4 bytes).
    #[inline(always)]
    pub fn from_key(key: &PrefixKey) -> Self {
        let a = &key.local_addr;
        Self {
            protocol: key.protocol,
            _pad: 0,
            local_port: key.local_port,
            local_addr: [a[0], a[1], a[2], a[3]],
        }
    }
}

/// A wildcard binding's coordinates: the unspecified address (`0.0.0.0` or `::`) on a port.
/// 4 bytes. Not a map key: the binding lives in the `PORTS` entry of (protocol, port), in the
/// family's fields (`ports::PortEntry`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WildcardKey {
    pub protocol: u8,
    pub family: u8,
    pub local_port: u16,
}

/// Value of every binding table: who receives the packet. 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// An endpoint id, or a group id when `flags & TARGET_GROUP`.
    pub id: u32,
    /// `TARGET_*` bits.
    pub flags: u16,
    /// `PREFIX` only: the address prefix length (0–32 or 0–128), to compare a port match with
    /// an all-ports match. Zero elsewhere.
    pub prefix_len: u8,
    pub _pad: u8,
}

/// `id` names a group in `GROUPS`; a member is picked by flow hash.
pub const TARGET_GROUP: u16 = 1 << 0;
/// `WILDCARD` IPv6 only: the socket is v6-only and never receives IPv4.
pub const TARGET_V6ONLY: u16 = 1 << 1;

/// Endpoint ids run from 1 to `MAX_ENDPOINTS - 1`; 0 is never a valid endpoint.
pub const MAX_ENDPOINTS: u32 = 65_536;
/// Group ids run from 0 to `MAX_GROUPS - 1`.
pub const MAX_GROUPS: u32 = 4_096;
/// Members of one group (like SO_REUSEPORT sockets on one port).
pub const MAX_GROUP_MEMBERS: usize = 32;
/// Entries of each hash and trie binding table (`CONNECTED`, `BOUND`, `PREFIX`) in the object;
/// the daemon sizes them at load (`--max-bindings`).
pub const MAX_BINDINGS: u32 = 1 << 20;

/// `GROUPS` value: the members of one group. 132 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    /// Members in use, from the front of `members`; 0 means the group receives nothing.
    pub count: u32,
    pub members: [u32; MAX_GROUP_MEMBERS],
}

impl Group {
    /// The member for a flow hash: `members[hash % count]`.
    #[inline(always)]
    pub fn member(&self, flow_hash: u32) -> Option<u32> {
        if self.count == 0 {
            return None;
        }
        self.members.get((flow_hash % self.count) as usize).copied()
    }
}

/// Per-CPU counters of one endpoint (`ENDPOINT_STATS[id]`): packets and bytes redirected to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub packets: u64,
    /// Frame bytes, Ethernet header included.
    pub bytes: u64,
}
