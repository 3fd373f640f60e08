//! The host's view the program needs to tell "addressed to this host" from "not ours": the
//! namespace's local addresses and `local` route prefixes (`LOCAL_ADDRS`, an LPM trie the
//! daemon follows through rtnetlink), and each attached interface's own MAC (`IFACE_MACS`).
//! Byte layouts are in docs/ARCHITECTURE.md.

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

/// `LOCAL_ADDRS` value: a local address or prefix (the kernel's `RTN_LOCAL`): unicast to it is
/// delivered to this host's sockets.
pub const LOCAL_KIND_LOCAL: u32 = 1;
/// `LOCAL_ADDRS` value: a subnet broadcast address (`RTN_BROADCAST`): every listener gets a
/// copy, so the program passes it (`pass_multicast`).
pub const LOCAL_KIND_BROADCAST: u32 = 2;

/// Entries of `LOCAL_ADDRS`: local routes of one namespace (addresses, broadcast addresses,
/// `ip route add local` prefixes).
pub const MAX_LOCAL_ADDRS: u32 = 16_384;

/// `IFACE_MACS` value: an interface's own MAC address. 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IfaceMac {
    pub addr: [u8; 6],
    pub _pad: [u8; 2],
}
