//! Names and sizes of the BPF maps the daemon looks up in the loaded object.

use crate::binding::{MAX_GROUPS, MAX_GROUP_MEMBERS};

/// Per-CPU array of `u64`, one slot per [`crate::Verdict`]: packets by verdict.
pub const VERDICTS: &str = "VERDICTS";
/// Hash map `ConnectedKey → Target`.
pub const CONNECTED: &str = "CONNECTED";
/// Hash map `BoundKey → Target`.
pub const BOUND: &str = "BOUND";
/// LPM trie `PrefixKeyV4 → Target`: IPv4 prefix bindings.
pub const PREFIX_V4: &str = "PREFIX_V4";
/// LPM trie `PrefixKey → Target`: IPv6 prefix bindings (family 6).
pub const PREFIX_V6: &str = "PREFIX_V6";
/// The wildcard bindings: not a map of their own but the `wildcard_*` fields of `PORTS`
/// entries; the name errors give them.
pub const WILDCARD: &str = "WILDCARD";
/// Array of `ports::PortEntry`: per (protocol, port), its wildcard bindings and which other
/// tables hold bindings there (see `ports`).
pub const PORTS: &str = "PORTS";
/// Array of `u64` words: the presence filter of `CONNECTED` and `BOUND` keys (see `presence`).
pub const PRESENCE: &str = "PRESENCE";
/// Array `group id → Group`.
pub const GROUPS: &str = "GROUPS";
/// Per-CPU array `endpoint id → EndpointStats`.
pub const ENDPOINT_STATS: &str = "ENDPOINT_STATS";
/// XSKMAP `slot → AF_XDP socket`, slot = `IFACE_SLOTS[ifindex] + rx queue`.
pub const XSKS: &str = "XSKS";
/// Array of `u32`, one per `XSKS` slot: the longest frame the socket there takes when the frame
/// is longer than `meta::MAX_XSK_FRAME` or split over several buffers (the socket is bound with
/// `XDP_USE_SG`: `meta::MAX_XSK_SG_FRAME`); 0 when it takes only one buffer of at most
/// `meta::MAX_XSK_FRAME` (bound without it, or an empty slot).
pub const XSK_FRAME_LIMITS: &str = "XSK_FRAME_LIMITS";
/// Hash map `ifindex → IfaceSlot`: each attached interface's first XSKS slot (a multiple of
/// `MAX_QUEUES`) and its own MAC address.
pub const IFACE_SLOTS: &str = "IFACE_SLOTS";
/// Array `ifindex % local::IFACE_CACHE_ENTRIES → IfaceSlot`: a direct-mapped copy of
/// `IFACE_SLOTS`, probed first (an entry of another ifindex, or 0, is a miss).
pub const IFACE_CACHE: &str = "IFACE_CACHE";
/// Hash map `[u8; 4] → u32 kind` (`local::LOCAL_KIND_*`): the namespace's IPv4 local routes
/// that are single hosts (`/32`), address bytes as on the wire.
pub const LOCAL_HOSTS_V4: &str = "LOCAL_HOSTS_V4";
/// Hash map `[u8; 16] → u32 kind`: the IPv6 local routes that are single hosts (`/128`).
pub const LOCAL_HOSTS_V6: &str = "LOCAL_HOSTS_V6";
/// Array `local::local_cache_slot(addr) → LocalSlot`: a direct-mapped cache of
/// `LOCAL_HOSTS_V4` and `LOCAL_HOSTS_V6`, probed first.
pub const LOCAL_CACHE: &str = "LOCAL_CACHE";
/// LPM trie `LocalKey → u32 kind`: the local routes wider than one host.
pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
/// Array of `u32`, one per family (`local::LOCAL_PREFIXES_V4`, `_V6`): how many entries of
/// that family `LOCAL_ADDRS` holds (0: the program skips the trie).
pub const LOCAL_PREFIXES: &str = "LOCAL_PREFIXES";

/// REUSEPORT_SOCKARRAY `slot → backing socket` of the kernel's reuseport groups: member `i`
/// of group `g` (in `GROUPS` order) is in slot [`reuseport_slot`]`(g, i)`.
pub const REUSEPORT_SOCKETS: &str = "REUSEPORT_SOCKETS";
/// Hash map `u64 socket cookie → u32 group id`: the group each registered reuseport backing
/// socket belongs to.
pub const REUSEPORT_COOKIES: &str = "REUSEPORT_COOKIES";

/// Rx queues per interface that can be steered (queue index < this).
pub const MAX_QUEUES: u32 = 64;
/// Interfaces one daemon can attach to.
pub const MAX_IFACES: u32 = 16;

/// Name of the `#[xdp]` entry point in the object.
pub const PROGRAM: &str = "demux";
/// Name of the `#[sk_reuseport]` program in the object, attached to every reuseport group of
/// backing sockets so that the kernel picks the member the XDP program picks.
pub const REUSEPORT_PROGRAM: &str = "demux_reuseport";

/// Slots of `REUSEPORT_SOCKETS` (and entries of `REUSEPORT_COOKIES`): one per possible member
/// of every group.
pub const REUSEPORT_SLOTS: u32 = MAX_GROUPS * MAX_GROUP_MEMBERS as u32;

/// The `REUSEPORT_SOCKETS` slot of member `index` of group `group`.
#[inline(always)]
pub const fn reuseport_slot(group: u32, index: u32) -> u32 {
    group * MAX_GROUP_MEMBERS as u32 + index
}
