//! The host's view the program needs to tell "addressed to this host" from "not ours": the
//! namespace's local routes, which the daemon follows through rtnetlink, and each attached
//! interface's own MAC (in `IFACE_SLOTS`, beside its block of AF_XDP slots).
//!
//! The local routes are split for speed: single hosts (`/32`, `/128`: every local address and
//! subnet broadcast) sit in two exact-match hash maps, `LOCAL_HOSTS_V4` (4-byte key) and
//! `LOCAL_HOSTS_V6` (16-byte key), probed first; everything wider (`ip route add local
//! PREFIX`) sits in the LPM trie `LOCAL_ADDRS`, probed only on a host miss and only when
//! `LOCAL_PREFIXES` says the trie holds a prefix of the packet's family. A host entry is the
//! longest prefix there is, so this is the longest-prefix match over the whole table. Byte
//! layouts are in docs/ARCHITECTURE.md.

/// Name of the program's read-only global (`.rodata`, a `u32`) that turns the destination
/// checks on (1, the object's default) or off (0). The daemon's loader always writes 1
/// (`Loaded::load_with`); only the classifier benchmark loads a second copy with 0, to measure
/// what the checks cost in the same run. The verifier sees a frozen value and drops the branch
/// not taken, so neither copy pays for the switch.
pub const CHECKS_GLOBAL: &str = "DEMUX_DESTINATION_CHECKS";

/// `LOCAL_ADDRS` LPM trie key data (after the trie's `u32` prefix length). 20 bytes.
///
/// Bit counting: the trie compares the data bytes from the first, most significant bit
/// first, so the prefix length is [`LOCAL_KEY_FIXED_BITS`] (the family byte and the three pad
/// bytes, always matched whole) plus the address prefix length (0–32 for IPv4, 0–128 for
/// IPv6). A lookup uses the full length (32 + 32 or 32 + 128). IPv4 addresses sit in the first
/// 4 address bytes, the other 12 zero, as everywhere in the ABI.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalKey {
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; 16],
}

/// Bits of a `LocalKey` before the address: family and padding.
pub const LOCAL_KEY_FIXED_BITS: u32 = 32;

/// `LOCAL_ADDRS`, `LOCAL_HOSTS_V4` and `LOCAL_HOSTS_V6` value: a local address or prefix (the kernel's `RTN_LOCAL`): unicast to it is
/// delivered to this host's sockets.
pub const LOCAL_KIND_LOCAL: u32 = 1;
/// `LOCAL_ADDRS`, `LOCAL_HOSTS_V4` and `LOCAL_HOSTS_V6` value: a subnet broadcast address (`RTN_BROADCAST`): every listener gets a
/// copy, so the program passes it (`pass_multicast`).
pub const LOCAL_KIND_BROADCAST: u32 = 2;

/// Entries of `LOCAL_ADDRS`, and of each of `LOCAL_HOSTS_V4` and `LOCAL_HOSTS_V6`: local routes
/// of one namespace (addresses, broadcast addresses, `ip route add local` prefixes).
pub const MAX_LOCAL_ADDRS: u32 = 16_384;

/// `LOCAL_PREFIXES` index of the IPv4 count (the IPv6 one is [`LOCAL_PREFIXES_V6`]).
pub const LOCAL_PREFIXES_V4: u32 = 0;
/// `LOCAL_PREFIXES` index of the IPv6 count.
pub const LOCAL_PREFIXES_V6: u32 = 1;
/// Entries of `LOCAL_PREFIXES`: one `u32` count of `LOCAL_ADDRS` entries per family.
pub const LOCAL_PREFIXES_ENTRIES: u32 = 2;

/// `IFACE_SLOTS` and `IFACE_CACHE` value: an attached interface's index, first `XSKS` slot and
/// own MAC address. 16 bytes. An interface without an entry steers nothing (its MAC is
/// unknown, and it has no socket).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IfaceSlot {
    /// The interface's index (the `IFACE_SLOTS` key; in `IFACE_CACHE`, what tells a hit from
    /// another interface's entry or an empty one, 0).
    pub ifindex: u32,
    /// The interface's block of `MAX_QUEUES` slots starts here (interface number ×
    /// `MAX_QUEUES`).
    pub first_slot: u32,
    /// The interface's own MAC address.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Entries of `IFACE_CACHE`, the direct-mapped copy of `IFACE_SLOTS` at `ifindex %` this: an
/// array lookup, which the verifier inlines, instead of a hash lookup for most interfaces.
pub const IFACE_CACHE_ENTRIES: u32 = 256;

/// `LOCAL_CACHE` value: one slot of the direct-mapped cache of the single-host local routes
/// (`LOCAL_HOSTS_V4`, `LOCAL_HOSTS_V6`), at [`local_cache_slot`] of the address: an array
/// access, which the verifier inlines, instead of a hash lookup for most packets. 20 bytes.
///
/// `state` says what the slot knows of the addresses that hash to it:
/// - [`LOCAL_SLOT_EMPTY`]: none is a single-host route (the program goes on to the trie);
/// - [`LOCAL_KIND_LOCAL`] or [`LOCAL_KIND_BROADCAST`]: exactly one is, `addr` of `family`,
///   with that kind (any other address is not a single-host route);
/// - [`LOCAL_SLOT_SHARED`]: two or more are, or the slot is being rewritten: probe the hash
///   map of the family, which is always complete.
///
/// The daemon turns a slot `SHARED` before it changes the hash map or the slot's address, and
/// writes the final state after: a lookup racing an update sees a state that was true just
/// before or after it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LocalSlot {
    /// The address bytes as in `LocalKey::addr` (IPv4 in the first 4 bytes, the rest zero),
    /// read as four native-endian words ([`address_words`]): the program compares words.
    pub addr: [u32; 4],
    /// 4 or 6 (0 in an empty slot).
    pub family: u8,
    /// [`LOCAL_SLOT_EMPTY`], a `LOCAL_KIND_*` or [`LOCAL_SLOT_SHARED`].
    pub state: u8,
    pub _pad: [u8; 2],
}

/// `LocalSlot::state`: no single-host route hashes to this slot.
pub const LOCAL_SLOT_EMPTY: u8 = 0;
/// `LocalSlot::state`: more than one single-host route hashes to this slot, or it is being
/// rewritten: the hash map decides.
pub const LOCAL_SLOT_SHARED: u8 = 3;

/// log2 of [`LOCAL_CACHE_ENTRIES`].
pub const LOCAL_CACHE_BITS: u32 = 10;
/// Entries of `LOCAL_CACHE`.
pub const LOCAL_CACHE_ENTRIES: u32 = 1 << LOCAL_CACHE_BITS;

/// An address's 16 bytes as four native-endian words (`LocalSlot::addr`).
#[inline(always)]
pub fn address_words(addr: &[u8; 16]) -> [u32; 4] {
    let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

/// The `LOCAL_CACHE` slot of an address (`addr` as in `LocalKey::addr`; `v4`: only its first
/// 4 bytes count): a multiplicative hash of its words ([`address_words`]) folded together,
/// top bits. The program and the daemon both use this one (both little-endian).
#[inline(always)]
pub fn local_cache_slot(v4: bool, addr: &[u8; 16]) -> u32 {
    local_cache_slot_of_words(v4, &address_words(addr))
}

/// [`local_cache_slot`] of an address already read as words ([`address_words`]): the
/// program reads its packet's destination so, in the widths the parse wrote it.
#[inline(always)]
pub fn local_cache_slot_of_words(v4: bool, w: &[u32; 4]) -> u32 {
    let folded = if v4 {
        w[0]
    } else {
        w[0] ^ w[1] ^ w[2] ^ w[3] ^ 0x6666_6666
    };
    folded.wrapping_mul(0x9e37_79b1) >> (32 - LOCAL_CACHE_BITS)
}
