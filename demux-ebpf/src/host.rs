//! Is the packet addressed to this host, as the kernel would deliver it to a local socket? A
//! parsed packet is steered only when every check below says yes; otherwise it passes to the
//! kernel, counted by reason, and an endpoint still gets what the kernel delivers through its
//! backing socket. In order, first failure wins; 1–4 look at the packet alone and run before
//! the binding lookup ([`plain`]), 5–6 probe maps and run only for a packet that matched a
//! binding ([`local`]): everything else passes anyway, so the host's own traffic never pays
//! for them. Each half first runs a branch-free quick test for the common packet ([`clean`],
//! [`quick_local`]) that ORs everything it checks into one value: a zero is a yes of the
//! exact checks; anything else runs them below, in order, so the verdicts are the same:
//!
//! 1. VLAN-tagged → `pass_vlan` (the kernel delivers it through its VLAN device, if any).
//! 2. An IPv6 routing header → `pass_routing_header`; then IPv4 options or an IPv6 hop-by-hop
//!    or destination options header → `pass_ip_options` (the kernel's IP layer judges source
//!    routes, router alert, segments left, unknown options with the discard bits, padding,
//!    jumbograms).
//! 3. Martian source or destination → `pass_martian`: 127.0.0.0/8, 0.0.0.0/8, `::1`, `::`,
//!    `::ffff:0:0/96` on either side; a multicast or limited-broadcast source.
//! 4. Broadcast or multicast → `pass_multicast`: destination MAC with the group bit,
//!    destination IP 224.0.0.0/4, 255.255.255.255 or ff00::/8.
//! 5. Destination IP a local route (longest prefix): absent → `pass_not_local`; a subnet
//!    broadcast entry → `pass_multicast`. The exact-address hash of the family
//!    (`LOCAL_HOSTS_V4`, `LOCAL_HOSTS_V6`) first, through its direct-mapped copy
//!    `LOCAL_CACHE` (an inlined array access; the hash only for a shared slot); on a miss
//!    the trie `LOCAL_ADDRS`, but only when `LOCAL_PREFIXES` says it holds a prefix of that
//!    family (most namespaces have none that the martian check does not already cover, so
//!    most packets never walk the trie).
//! 6. Destination MAC the ingress interface's own (`IFACE_SLOTS[ifindex].mac`, through its
//!    direct-mapped copy `IFACE_CACHE` first): absent or another → `pass_not_local` (fail
//!    closed: an interface the daemon did not describe steers nothing). The same entry gives the interface's first `XSKS` slot, handed on to the
//!    redirect, so a steered packet looks the interface up once.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie},
    programs::XdpContext,
    Global,
};
use demux_common::{
    binding::{FAMILY_IPV4, FAMILY_IPV6},
    local::{
        address_words, local_cache_slot, local_cache_slot_of_words, IfaceSlot, LocalKey, LocalSlot,
        IFACE_CACHE_ENTRIES, LOCAL_CACHE_ENTRIES, LOCAL_KEY_FIXED_BITS, LOCAL_KIND_LOCAL,
        LOCAL_PREFIXES_ENTRIES, LOCAL_PREFIXES_V4, LOCAL_PREFIXES_V6, LOCAL_SLOT_EMPTY,
        LOCAL_SLOT_SHARED, MAX_LOCAL_ADDRS,
    },
    maps::MAX_IFACES,
    Verdict,
};

use crate::parse::Packet;

/// 1: the checks run (every load of the daemon); 0: skipped, only in the classifier benchmark's
/// comparison load. The name is `demux_common::local::CHECKS_GLOBAL`.
#[unsafe(no_mangle)]
static DEMUX_DESTINATION_CHECKS: Global<u32> = Global::new(1);

/// Whether the checks run: a frozen read-only global, so the verifier keeps one branch.
#[inline(always)]
pub(crate) fn enabled() -> bool {
    DEMUX_DESTINATION_CHECKS.load() != 0
}

/// IPv4 local routes that are single hosts (`/32`): address bytes → kind.
#[map(name = "LOCAL_HOSTS_V4")]
static LOCAL_HOSTS_V4: HashMap<[u8; 4], u32> =
    HashMap::with_max_entries(MAX_LOCAL_ADDRS, BPF_F_NO_PREALLOC);

/// IPv6 local routes that are single hosts (`/128`): address → kind.
#[map(name = "LOCAL_HOSTS_V6")]
static LOCAL_HOSTS_V6: HashMap<[u8; 16], u32> =
    HashMap::with_max_entries(MAX_LOCAL_ADDRS, BPF_F_NO_PREALLOC);

/// `local_cache_slot(addr)` → the one single-host route hashing there, none, or "shared"
/// (`LocalSlot`): probed before the two hashes.
#[map(name = "LOCAL_CACHE")]
static LOCAL_CACHE: Array<LocalSlot> = Array::with_max_entries(LOCAL_CACHE_ENTRIES, 0);

/// The namespace's local routes wider than one host (`ip route add local PREFIX`) → kind.
#[map(name = "LOCAL_ADDRS")]
static LOCAL_ADDRS: LpmTrie<LocalKey, u32> =
    LpmTrie::with_max_entries(MAX_LOCAL_ADDRS, BPF_F_NO_PREALLOC);

/// Per family: how many entries `LOCAL_ADDRS` holds (0: skip the trie).
#[map(name = "LOCAL_PREFIXES")]
static LOCAL_PREFIXES: Array<u32> = Array::with_max_entries(LOCAL_PREFIXES_ENTRIES, 0);

/// Interface index → its first slot in `XSKS` and its own MAC address.
#[map(name = "IFACE_SLOTS")]
static IFACE_SLOTS: HashMap<u32, IfaceSlot> = HashMap::with_max_entries(MAX_IFACES, 0);

/// `ifindex % IFACE_CACHE_ENTRIES` → the `IFACE_SLOTS` entry of one interface: probed first.
#[map(name = "IFACE_CACHE")]
static IFACE_CACHE: Array<IfaceSlot> = Array::with_max_entries(IFACE_CACHE_ENTRIES, 0);

/// What the packet alone says: `Ok` unless the IP layer must judge it (VLAN, routing header,
/// options), an address is martian, or the destination is a group. Arithmetic only: run
/// before the lookup.
#[inline(always)]
pub(crate) fn plain(packet: &Packet) -> Result<(), Verdict> {
    if clean(packet) {
        return Ok(());
    }
    plain_exact(packet)
}

/// First address bytes that may make an IPv4 packet martian or a group destination, in
/// groups of four (bit `b >> 2`): 0–3, 124–127, 224–255. A superset (1–3 and 124–126 are
/// fine): such a packet takes the exact path.
const V4_SUSPECT: u64 = 1 | 1 << 31 | 0xff << 56;

/// A quick yes for the common packet, without branches: no VLAN tag, no options or routing
/// header, destination MAC unicast, and both addresses clear of every range [`plain_exact`]
/// rejects (IPv4: first byte not in [`V4_SUSPECT`]; IPv6: both in 2000::/3). `false` only
/// means "ask [`plain_exact`]".
#[inline(always)]
fn clean(packet: &Packet) -> bool {
    let (src, dst) = (&packet.src_addr, &packet.dst_addr);
    let flags = u32::from(packet.vlan)
        | u32::from(packet.ip_options)
        | u32::from(packet.routing_header)
        | u32::from(packet.dst_mac[0] & 1);
    let addrs = if packet.family == FAMILY_IPV4 {
        let (s, d) = (u64::from(src[0]), u64::from(dst[0]));
        ((V4_SUSPECT >> (s >> 2)) | (V4_SUSPECT >> (d >> 2))) as u32 & 1
    } else {
        u32::from(((src[0] ^ 0x20) | (dst[0] ^ 0x20)) & 0xe0)
    };
    flags | addrs == 0
}

/// [`plain`] for a packet that [`clean`] did not clear: each check in order.
#[inline(always)]
fn plain_exact(packet: &Packet) -> Result<(), Verdict> {
    if packet.vlan {
        return Err(Verdict::PassVlan);
    }
    if packet.routing_header {
        return Err(Verdict::PassRoutingHeader);
    }
    if packet.ip_options {
        return Err(Verdict::PassIpOptions);
    }
    let (src, dst) = (&packet.src_addr, &packet.dst_addr);
    let v4 = packet.family == FAMILY_IPV4;
    if martian(v4, src, true) || martian(v4, dst, false) {
        return Err(Verdict::PassMartian);
    }
    if packet.dst_mac[0] & 1 != 0 || multicast(v4, dst) {
        return Err(Verdict::PassMulticast);
    }
    Ok(())
}

/// `Ok(first XSKS slot of the ingress interface)` when the kernel would deliver `packet`
/// (which passed [`plain`]) to a local socket; else the pass verdict. Map
/// lookups: run only for a packet that matched a binding (the rest passes anyway, so the
/// host's own traffic does not pay for them).
#[inline(always)]
pub(crate) fn local(ctx: &XdpContext, packet: &Packet) -> Result<u32, Verdict> {
    let v4 = packet.family == FAMILY_IPV4;
    let ifindex = ctx.ingress_ifindex() as u32;
    // The common hit first, one compare: `LOCAL_CACHE` holds the destination itself as a
    // local address and the destination MAC is the interface's. A straight line per family.
    if let Some(iface) = iface(ifindex) {
        let hit = if v4 {
            quick_local(true, FAMILY_IPV4, iface, packet)
        } else {
            quick_local(false, FAMILY_IPV6, iface, packet)
        };
        if hit {
            // SAFETY: a valid map value pointer to an `IfaceSlot`, read at once.
            return Ok(unsafe { (*iface).first_slot });
        }
    }
    match local_kind(v4, packet.family, &packet.dst_addr) {
        None => return Err(Verdict::PassNotLocal),
        Some(LOCAL_KIND_LOCAL) => {}
        Some(_) => return Err(Verdict::PassMulticast),
    }
    match iface(ctx.ingress_ifindex() as u32) {
        // SAFETY: a valid map value pointer to an `IfaceSlot`, read at once.
        Some(iface) => unsafe {
            if same_mac(&(*iface).mac, &packet.dst_mac) {
                Ok((*iface).first_slot)
            } else {
                Err(Verdict::PassNotLocal)
            }
        },
        None => Err(Verdict::PassNotLocal),
    }
}

/// The ingress interface's first `XSKS` slot without any check: the benchmark's comparison
/// load (checks off) finds the slot the way a checked packet does, so the difference between
/// the two loads is the checks alone.
#[inline(always)]
pub(crate) fn first_slot(ctx: &XdpContext) -> Option<u32> {
    // SAFETY: a valid map value pointer to an `IfaceSlot`, read at once.
    iface(ctx.ingress_ifindex() as u32).map(|iface| unsafe { (*iface).first_slot })
}

/// The ingress interface's entry: the direct-mapped cache (an inlined array access) first,
/// `IFACE_SLOTS` when the cache slot holds another interface or none.
#[inline(always)]
fn iface(ifindex: u32) -> Option<*const IfaceSlot> {
    if let Some(entry) = IFACE_CACHE.get_ptr(ifindex % IFACE_CACHE_ENTRIES) {
        // SAFETY: a valid map value pointer to an `IfaceSlot`.
        if unsafe { (*entry).ifindex } == ifindex {
            return Some(entry);
        }
    }
    IFACE_SLOTS.get_ptr(ifindex)
}

/// What `LOCAL_CACHE` says of `dst` as a single-host route.
enum Cached {
    /// It is one, of this kind.
    Kind(u32),
    /// It is none.
    Absent,
    /// The slot is shared (or being rewritten): ask the hash map.
    Shared,
}

/// `dst`'s `LOCAL_CACHE` slot, read as [`Cached`]: one inlined array access and a compare.
#[inline(always)]
fn cached_host(v4: bool, family: u8, dst: &[u8; 16]) -> Cached {
    let Some(slot) = LOCAL_CACHE.get_ptr(local_cache_slot(v4, dst)) else {
        return Cached::Shared;
    };
    // SAFETY: a valid map value pointer to a `LocalSlot`, read at once.
    let slot = unsafe { &*slot };
    match slot.state {
        LOCAL_SLOT_EMPTY => Cached::Absent,
        LOCAL_SLOT_SHARED => Cached::Shared,
        state => {
            if slot.family == family && address_diff(v4, &slot.addr, dst) == 0 {
                Cached::Kind(u32::from(state))
            } else {
                Cached::Absent
            }
        }
    }
}

/// Whether `LOCAL_CACHE` holds `packet`'s destination itself as a local address of
/// `family` (`v4`: IPv4) and its destination MAC is the interface's (at `iface`): one
/// inlined array access and one compare. `false` only means "ask the exact checks".
#[inline(always)]
fn quick_local(v4: bool, family: u8, iface: *const IfaceSlot, packet: &Packet) -> bool {
    let dst = packet.dst_words();
    match LOCAL_CACHE.get_ptr(local_cache_slot_of_words(v4, dst)) {
        Some(slot) => local_diff(v4, family, slot, dst) | mac_diff(iface, packet) == 0,
        None => false,
    }
}

/// Zero when the `LOCAL_CACHE` slot at `slot` holds `dst` itself, of `family`, as a local
/// address (`LOCAL_KIND_LOCAL`); anything else is non-zero (the slow path then decides).
#[inline(always)]
fn local_diff(v4: bool, family: u8, slot: *const LocalSlot, dst: &[u32; 4]) -> u32 {
    // SAFETY: a valid map value pointer to a `LocalSlot` (`repr(C)`, 4-aligned, 20 bytes),
    // read at once; bytes 16..20 (family, state, padding) are one aligned word.
    let (addr, tail) = unsafe { (&(*slot).addr, slot.cast::<u32>().add(4).read()) };
    let want = u32::from_ne_bytes([family, LOCAL_KIND_LOCAL as u8, 0, 0]);
    let addr = if v4 {
        addr[0] ^ dst[0]
    } else {
        (addr[0] ^ dst[0]) | (addr[1] ^ dst[1]) | (addr[2] ^ dst[2]) | (addr[3] ^ dst[3])
    };
    (tail ^ want) | addr
}

/// Zero when the interface's MAC (at `iface`) is the packet's destination MAC (as
/// [`same_mac`], without a branch): a word and a half-word each side.
#[inline(always)]
fn mac_diff(iface: *const IfaceSlot, packet: &Packet) -> u32 {
    const { assert!(core::mem::offset_of!(IfaceSlot, mac) % 4 == 0) };
    // SAFETY: a valid map value pointer to an `IfaceSlot` (`repr(C)`, 4-aligned), read at
    // once: `mac` sits 4-aligned, so its first 4 bytes are an aligned `u32` and its last 2 an
    // aligned `u16`.
    let (word, half) = unsafe {
        let mac = core::ptr::addr_of!((*iface).mac).cast::<u8>();
        (mac.cast::<u32>().read(), mac.add(4).cast::<u16>().read())
    };
    let (dst_word, dst_half) = packet.dst_mac_parts();
    (word ^ dst_word) | u32::from(half ^ dst_half)
}

/// Zero when `dst` is the address `words` (as in `LocalSlot::addr`): for IPv4 the first word
/// only. Word by word, no branches (an array `==` may become a memcmp call).
#[inline(always)]
fn address_diff(v4: bool, words: &[u32; 4], dst: &[u8; 16]) -> u32 {
    let (a, b) = (words, address_words(dst));
    if v4 {
        a[0] ^ b[0]
    } else {
        (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])
    }
}

/// The kind of the longest local route holding `dst`, if any: a host entry is the longest
/// there is, so the trie is walked only on a host miss, and only when it holds a prefix of
/// the family. Hosts are looked up in `LOCAL_CACHE` first, in the family's hash only when
/// the cache slot is shared.
#[inline(always)]
fn local_kind(v4: bool, family: u8, dst: &[u8; 16]) -> Option<u32> {
    match cached_host(v4, family, dst) {
        Cached::Kind(kind) => return Some(kind),
        Cached::Absent => {}
        Cached::Shared => {
            let host = if v4 {
                LOCAL_HOSTS_V4.get_ptr([dst[0], dst[1], dst[2], dst[3]])
            } else {
                LOCAL_HOSTS_V6.get_ptr(dst)
            };
            if let Some(kind) = host {
                // SAFETY: a valid map value pointer to a u32.
                return Some(unsafe { *kind });
            }
        }
    }
    let count = if v4 {
        LOCAL_PREFIXES_V4
    } else {
        LOCAL_PREFIXES_V6
    };
    if LOCAL_PREFIXES.get(count).copied().unwrap_or(0) == 0 {
        return None;
    }
    let key = Key::new(
        LOCAL_KEY_FIXED_BITS + if v4 { 32 } else { 128 },
        LocalKey {
            family,
            _pad: [0; 3],
            addr: *dst,
        },
    );
    LOCAL_ADDRS.get(&key).copied()
}

/// A martian address: loopback, "this network" or unspecified, IPv4-mapped on the wire; as a
/// source also multicast or the limited broadcast.
#[inline(always)]
fn martian(v4: bool, addr: &[u8; 16], source: bool) -> bool {
    if v4 {
        addr[0] == 127 || addr[0] == 0 || (source && (addr[0] & 0xf0 == 0xe0 || all_ones(addr)))
    } else {
        if addr[0] & 0xe0 == 0x20 {
            // 2000::/3, global unicast: none of the below (the common case, one compare).
            return false;
        }
        let w = address_words(addr);
        // ::, ::1 and ::ffff:a.b.c.d
        ((w[0] | w[1]) == 0
            && ((w[2] == 0 && (w[3] == 0 || w[3] == u32::from_ne_bytes([0, 0, 0, 1])))
                || w[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff])))
            || (source && addr[0] == 0xff)
    }
}

/// A multicast destination, or the limited broadcast 255.255.255.255.
#[inline(always)]
fn multicast(v4: bool, addr: &[u8; 16]) -> bool {
    if v4 {
        addr[0] & 0xf0 == 0xe0 || all_ones(addr)
    } else {
        addr[0] == 0xff
    }
}

#[inline(always)]
fn all_ones(addr: &[u8; 16]) -> bool {
    word(addr) == u32::MAX
}

/// The first 4 bytes (an IPv4 address) as one integer.
#[inline(always)]
fn word(addr: &[u8; 16]) -> u32 {
    u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]])
}

/// Two MAC addresses are equal: compared as a word and a half-word (no memcmp in BPF; both
/// sit 4-aligned, in `IfaceSlot` and `Packet`, so these are two loads each).
#[inline(always)]
fn same_mac(a: &[u8; 6], b: &[u8; 6]) -> bool {
    let word = |m: &[u8; 6]| u32::from_ne_bytes([m[0], m[1], m[2], m[3]]);
    let half = |m: &[u8; 6]| u16::from_ne_bytes([m[4], m[5]]);
    (word(a) ^ word(b)) | u32::from(half(a) ^ half(b)) == 0
}
