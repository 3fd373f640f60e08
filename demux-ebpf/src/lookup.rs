//! The binding tables and the lookup precedence, as the kernel's socket lookup would choose:
//!
//! 1. `CONNECTED`: the exact 5-tuple.
//! 2. `BOUND`: the exact local address and port.
//! 3. `PREFIX_V4`/`PREFIX_V6` (beyond the kernel): the longest local prefix; on equal length,
//!    the specific port beats all-ports.
//! 4. Wildcard: the unspecified address of the packet's family on the port; for IPv4, then an
//!    IPv6 wildcard that is not v6-only (dual-stack; the IPv4 one wins when both exist).
//!
//! `CONNECTED` and `BOUND` are probed only when the presence filter (`PRESENCE`) has all the bits
//! of the packet's key set; for `CONNECTED`, first those of its source (protocol, family, remote
//! address), so that a packet from an address with no connected binding reads no per-tuple word.
//!
//! A group target picks its member by flow hash. The port's `PORTS` entry, one inlined array
//! load, holds both wildcard bindings and says which other tables hold bindings on the
//! packet's port and family; the others are not probed.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie},
    Global,
};
use demux_common::binding::{
    BoundKey, ConnectedKey, Group, PrefixKey, PrefixKeyV4, Target, FAMILY_IPV4, FAMILY_IPV6,
    MAX_BINDINGS, MAX_GROUPS, PREFIX_KEY_FIXED_BITS, TARGET_GROUP, TARGET_V6ONLY,
};

use demux_common::ports::{
    all_ports_index, port_bit, port_index, PortEntry, PORT_INDEX_ENTRIES, TABLE_BOUND,
    TABLE_CONNECTED, TABLE_PREFIX,
};

use demux_common::presence::{Filter, LocalSum, Probe, RemoteSum, MAX_ENTRIES, MAX_WORDS_LOG2};

use crate::parse::Packet;

/// Exact 5-tuple → target (connected sockets).
#[map(name = "CONNECTED")]
static CONNECTED: HashMap<ConnectedKey, Target> =
    HashMap::with_max_entries(MAX_BINDINGS, BPF_F_NO_PREALLOC);

/// Local address and port → target (sockets bound to one address).
#[map(name = "BOUND")]
static BOUND: HashMap<BoundKey, Target> =
    HashMap::with_max_entries(MAX_BINDINGS, BPF_F_NO_PREALLOC);

/// Protocol, port (0: all ports) and local IPv4 prefix → target.
#[map(name = "PREFIX_V4")]
static PREFIX_V4: LpmTrie<PrefixKeyV4, Target> =
    LpmTrie::with_max_entries(MAX_BINDINGS, BPF_F_NO_PREALLOC);

/// Protocol, family (6), port (0: all ports) and local IPv6 prefix → target.
#[map(name = "PREFIX_V6")]
static PREFIX_V6: LpmTrie<PrefixKey, Target> =
    LpmTrie::with_max_entries(MAX_BINDINGS, BPF_F_NO_PREALLOC);

/// (protocol, port) → its wildcard bindings, and which other tables hold bindings there.
#[map(name = "PORTS")]
static PORTS: Array<PortEntry> = Array::with_max_entries(PORT_INDEX_ENTRIES, 0);

/// Bit array: "perhaps bound" or "certainly not" for `CONNECTED` and `BOUND` keys and the
/// sources of `CONNECTED` keys; the daemon sizes it at load (`demux_common::presence::Filter`).
#[map(name = "PRESENCE")]
static PRESENCE: Array<u64> = Array::with_max_entries(MAX_ENTRIES, 0);

/// log2 of `PRESENCE`'s tuple and bound words, written by the daemon at load with the map's
/// size (name `demux_common::presence::WORDS_LOG2_GLOBAL`, required); frozen, so a constant to
/// the verifier.
#[unsafe(no_mangle)]
static DEMUX_PRESENCE_WORDS_LOG2: Global<u32> = Global::new(MAX_WORDS_LOG2);

/// Group id → members (SO_REUSEPORT-style).
#[map(name = "GROUPS")]
pub(crate) static GROUPS: Array<Group> = Array::with_max_entries(MAX_GROUPS, 0);

/// The binding that receives `packet`, by precedence.
#[inline(always)]
pub(crate) fn lookup(packet: &Packet) -> Option<Target> {
    let entry = port_entry(port_index(packet.protocol, packet.dst_port));
    let has = |table| u32::from(entry.tables) & port_bit(table, packet.family) != 0;
    let filter = Filter {
        words_log2: DEMUX_PRESENCE_WORDS_LOG2.load(),
    };
    // The local half of the connected and bound keys, computed once for both.
    let local = || {
        LocalSum::of(
            packet.protocol,
            packet.family,
            packet.dst_port,
            &packet.dst_addr,
        )
    };
    let mut local_sum = None;
    if has(TABLE_CONNECTED) {
        let remote = RemoteSum::of(packet.protocol, packet.family, &packet.src_addr);
        if present(filter.source_of(remote))
            && present(filter.connected_of(*local_sum.insert(local()), remote, packet.src_port))
        {
            let key = ConnectedKey {
                protocol: packet.protocol,
                family: packet.family,
                local_port: packet.dst_port,
                remote_port: packet.src_port,
                _pad: [0; 2],
                local_addr: packet.dst_addr,
                remote_addr: packet.src_addr,
            };
            if let Some(target) = get(&CONNECTED, key) {
                return Some(target);
            }
        }
    }
    if has(TABLE_BOUND) && present(filter.bound_of(local_sum.unwrap_or_else(local))) {
        let key = BoundKey {
            protocol: packet.protocol,
            family: packet.family,
            local_port: packet.dst_port,
            local_addr: packet.dst_addr,
        };
        if let Some(target) = get(&BOUND, key) {
            return Some(target);
        }
    }
    let all_ports = u32::from(port_entry(all_ports_index(packet.protocol)).tables)
        & port_bit(TABLE_PREFIX, packet.family)
        != 0;
    if has(TABLE_PREFIX) || all_ports {
        if let Some(target) = lookup_prefix(packet, has(TABLE_PREFIX), all_ports) {
            return Some(target);
        }
    }
    if let Some(target) = entry.wildcard(packet.family) {
        return Some(target);
    }
    if packet.family == FAMILY_IPV4 {
        // Dual-stack: an IPv6 wildcard that is not v6-only also receives IPv4.
        return entry
            .wildcard(FAMILY_IPV6)
            .filter(|target| target.flags & TARGET_V6ONLY == 0);
    }
    None
}

/// `PORTS[index]`, read in one aligned 8-byte load so that the entry is one moment's (the
/// daemon's write order makes every such moment a consistent entry: `demux_common::ports`).
/// An index beyond the array reads as an empty entry.
#[inline(always)]
fn port_entry(index: u32) -> PortEntry {
    let Some(entry) = PORTS.get_ptr(index) else {
        return PortEntry::default();
    };
    // SAFETY: a valid, 8-aligned pointer to an 8-byte array value (`PortEntry` is
    // `repr(C, align(8))`, size 8); a volatile read keeps it one load.
    let raw = unsafe { core::ptr::read_volatile(entry.cast::<u64>()) };
    PortEntry::from_u64(raw)
}

/// Whether all bits of `probe` are set in the presence filter ("perhaps bound"); beyond the
/// array, yes.
#[inline(always)]
fn present(probe: Probe) -> bool {
    PRESENCE
        .get(probe.word)
        .is_none_or(|bits| bits & probe.mask == probe.mask)
}

/// A copy of the value under `key`.
#[inline(always)]
fn get<K>(map: &HashMap<K, Target>, key: K) -> Option<Target> {
    // SAFETY: a valid map value pointer; `Target` is plain data copied out at once.
    map.get_ptr(key).map(|target| unsafe { *target })
}

/// Longest prefix on the packet's port and on all ports; the longer wins, the port on a tie.
/// IPv4 and IPv6 prefixes are in tries of their own (`PREFIX_V4`, `PREFIX_V6`).
#[inline(always)]
fn lookup_prefix(packet: &Packet, on_port: bool, all_ports: bool) -> Option<Target> {
    let (port, all) = if packet.family == FAMILY_IPV4 {
        let a = &packet.dst_addr;
        let mut key = Key::new(
            PREFIX_KEY_FIXED_BITS + 32,
            PrefixKeyV4 {
                protocol: packet.protocol,
                _pad: 0,
                local_port: packet.dst_port,
                local_addr: [a[0], a[1], a[2], a[3]],
            },
        );
        let port = on_port.then(|| PREFIX_V4.get(&key).copied()).flatten();
        key.data.local_port = 0;
        let all = all_ports.then(|| PREFIX_V4.get(&key).copied()).flatten();
        (port, all)
    } else {
        let mut key = Key::new(
            PREFIX_KEY_FIXED_BITS + 128,
            PrefixKey {
                protocol: packet.protocol,
                family: packet.family,
                local_port: packet.dst_port,
                local_addr: packet.dst_addr,
            },
        );
        let port = on_port.then(|| PREFIX_V6.get(&key).copied()).flatten();
        key.data.local_port = 0;
        let all = all_ports.then(|| PREFIX_V6.get(&key).copied()).flatten();
        (port, all)
    };
    match (port, all) {
        (Some(port), Some(all)) if all.prefix_len > port.prefix_len => Some(all),
        (Some(port), _) => Some(port),
        (None, all) => all,
    }
}

/// The endpoint a target sends this packet to, and the flow hash that chose it: the target
/// itself (hash 0: only a group needs the hash, and SipHash-2-4 costs about 100 ns), or a
/// group member by flow hash. `None` for an empty group or endpoint 0.
#[inline(always)]
pub(crate) fn resolve(target: Target, packet: &Packet) -> Option<(u32, u32)> {
    let (endpoint, hash) = if target.flags & TARGET_GROUP != 0 {
        let hash = crate::flow::hash(packet);
        (GROUPS.get(target.id)?.member(hash)?, hash)
    } else {
        (target.id, 0)
    };
    (endpoint != 0).then_some((endpoint, hash))
}
