//! The port table `PORTS`: one 8-byte [`PortEntry`] per (protocol, port), direct-indexed, that
//! holds the port's wildcard bindings themselves (IPv4 and IPv6) and says which of the other
//! tables hold bindings there, per family, so the program probes only tables that can match
//! (the kernel's socket lookup also starts from the port). The commonest binding, a wildcard,
//! costs one array load the verifier inlines: no hash, no second probe for a dual-stack IPv6
//! wildcard receiving IPv4.
//!
//! Index: `protocol slot * 65536 + port` (UDP slot 0, TCP slot 1); the entries at
//! `2 * 65536 + protocol slot` hold the protocol-wide bits of all-ports prefix bindings (their
//! wildcard fields stay empty).
//!
//! The daemon keeps the bits in step with the tables, setting a bit before the first binding
//! lands and clearing it after the last one is gone. The program reads an entry with one
//! aligned 8-byte load, and the daemon changes one entry so that every write changes either one
//! byte or only bytes that the program ignores at that moment (a wildcard's id while its flags
//! byte says "empty"): the kernel copies an array value with `memcpy`, which promises no
//! atomicity wider than a byte, so a reader may see any mix of old and new bytes, and every such
//! mix is the old entry or the new one. See [`PortEntry`].

use crate::binding::Target;
use crate::binding::{FAMILY_IPV4, PROTO_TCP, TARGET_GROUP, TARGET_V6ONLY};

/// Binding tables, as bit positions in a port entry's `tables` (two bits each: IPv4, IPv6).
/// Wildcard bindings have no bit: they live in the entry itself.
pub const TABLE_CONNECTED: u32 = 0;
pub const TABLE_BOUND: u32 = 1;
pub const TABLE_PREFIX: u32 = 2;

/// `PortEntry::wildcard_flags`: a wildcard binding is present (its id is valid).
pub const WILDCARD_SET: u8 = 0x80;
/// `PortEntry::wildcard_flags`: the id names a group (as `TARGET_GROUP`).
pub const WILDCARD_GROUP: u8 = TARGET_GROUP as u8;
/// `PortEntry::wildcard_flags`, IPv6 only: v6-only, never receives IPv4 (as `TARGET_V6ONLY`).
pub const WILDCARD_V6ONLY: u8 = TARGET_V6ONLY as u8;

/// `PORTS` value: one (protocol, port). 8 bytes, 8-aligned (read in one load).
///
/// Writes that keep every torn read harmless (a reader sees, byte by byte, old or new):
/// - table bits: only `tables` changes (one byte);
/// - a wildcard appears: first its `wildcard_id` is written while its flags byte is 0 (the
///   program ignores the id), then the flags byte alone becomes `WILDCARD_SET | …`;
/// - a wildcard goes: first the flags byte alone becomes 0, then the id is zeroed.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortEntry {
    /// `port_bit` bits of `CONNECTED`, `BOUND` and `PREFIX` holding bindings here.
    pub tables: u8,
    /// The wildcard bindings' flags, IPv4 then IPv6 (`WILDCARD_*`; 0: none).
    pub wildcard_flags: [u8; 2],
    pub _pad: u8,
    /// The wildcard bindings' endpoint or group ids, IPv4 then IPv6 (valid with `WILDCARD_SET`).
    pub wildcard_id: [u16; 2],
}

impl PortEntry {
    /// The entry from its 8 bytes read as one little-endian `u64` (both sides are
    /// little-endian; the program reads the entry in one load this way).
    #[inline(always)]
    pub const fn from_u64(raw: u64) -> Self {
        Self {
            tables: raw as u8,
            wildcard_flags: [(raw >> 8) as u8, (raw >> 16) as u8],
            _pad: (raw >> 24) as u8,
            wildcard_id: [(raw >> 32) as u16, (raw >> 48) as u16],
        }
    }

    /// The wildcard binding of `family` (4 or 6), if any, as a table value.
    #[inline(always)]
    pub fn wildcard(&self, family: u8) -> Option<Target> {
        let index = family_index(family);
        let flags = self.wildcard_flags[index];
        if flags & WILDCARD_SET == 0 {
            return None;
        }
        Some(Target {
            id: u32::from(self.wildcard_id[index]),
            flags: u16::from(flags & (WILDCARD_GROUP | WILDCARD_V6ONLY)),
            prefix_len: 0,
            _pad: 0,
        })
    }
}

impl PortEntry {
    /// The two writes that put a wildcard of `family` with `id` and `flags`
    /// (`WILDCARD_GROUP`/`WILDCARD_V6ONLY`) into this entry, in order: the id while the flags
    /// byte is 0, then the flags byte. The caller checks that there is none yet.
    pub fn wildcard_insert_steps(self, family: u8, id: u16, flags: u8) -> [Self; 2] {
        let index = family_index(family);
        let mut first = self;
        first.wildcard_flags[index] = 0;
        first.wildcard_id[index] = id;
        let mut second = first;
        second.wildcard_flags[index] = WILDCARD_SET | (flags & (WILDCARD_GROUP | WILDCARD_V6ONLY));
        [first, second]
    }

    /// The two writes that take the wildcard of `family` out of this entry, in order: the
    /// flags byte to 0, then the id.
    pub fn wildcard_remove_steps(self, family: u8) -> [Self; 2] {
        let index = family_index(family);
        let mut first = self;
        first.wildcard_flags[index] = 0;
        let mut second = first;
        second.wildcard_id[index] = 0;
        [first, second]
    }

    /// The entry's 8 bytes as one little-endian `u64` (the inverse of [`PortEntry::from_u64`]).
    pub const fn to_u64(self) -> u64 {
        self.tables as u64
            | (self.wildcard_flags[0] as u64) << 8
            | (self.wildcard_flags[1] as u64) << 16
            | (self._pad as u64) << 24
            | (self.wildcard_id[0] as u64) << 32
            | (self.wildcard_id[1] as u64) << 48
    }
}

/// 0 for IPv4, 1 for IPv6: the index into `PortEntry`'s per-family fields.
#[inline(always)]
pub const fn family_index(family: u8) -> usize {
    if family == FAMILY_IPV4 {
        0
    } else {
        1
    }
}

/// Entries of `PORTS`: 2 × 65,536 ports and 2 all-ports entries (1 MiB).
pub const PORT_INDEX_ENTRIES: u32 = 2 * 65_536 + 2;

/// The bit of `table` for `family` (4 or 6).
#[inline(always)]
pub const fn port_bit(table: u32, family: u8) -> u32 {
    1 << (table * 2 + if family == FAMILY_IPV4 { 0 } else { 1 })
}

#[inline(always)]
const fn slot(protocol: u8) -> u32 {
    if protocol == PROTO_TCP {
        1
    } else {
        0
    }
}

/// The entry of `(protocol, port)`.
#[inline(always)]
pub const fn port_index(protocol: u8, port: u16) -> u32 {
    slot(protocol) * 65_536 + port as u32
}

/// The entry of the protocol's all-ports prefix bindings.
#[inline(always)]
pub const fn all_ports_index(protocol: u8) -> u32 {
    2 * 65_536 + slot(protocol)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::FAMILY_IPV6;

    /// Every byte-wise mix of `before` and `after` (what a reader may see while the kernel
    /// copies `after` over `before`).
    fn mixes(before: PortEntry, after: PortEntry) -> impl Iterator<Item = PortEntry> {
        let (b, a) = (before.to_u64().to_le_bytes(), after.to_u64().to_le_bytes());
        (0u16..256).map(move |mask| {
            let mut bytes = [0u8; 8];
            for i in 0..8 {
                bytes[i] = if mask & (1 << i) != 0 { a[i] } else { b[i] };
            }
            PortEntry::from_u64(u64::from_le_bytes(bytes))
        })
    }

    /// What the program decides from an entry: the tables bits and both wildcards.
    fn seen(entry: PortEntry) -> (u8, Option<Target>, Option<Target>) {
        (
            entry.tables,
            entry.wildcard(FAMILY_IPV4),
            entry.wildcard(FAMILY_IPV6),
        )
    }

    #[test]
    fn an_entry_round_trips_through_its_u64() {
        let entry = PortEntry {
            tables: 0x15,
            wildcard_flags: [
                WILDCARD_SET,
                WILDCARD_SET | WILDCARD_GROUP | WILDCARD_V6ONLY,
            ],
            _pad: 0,
            wildcard_id: [65_535, 4_095],
        };
        assert_eq!(PortEntry::from_u64(entry.to_u64()), entry);
        let v6 = entry.wildcard(FAMILY_IPV6).expect("set");
        assert_eq!((v6.id, v6.flags), (4_095, TARGET_GROUP | TARGET_V6ONLY));
        assert_eq!(PortEntry::default().wildcard(FAMILY_IPV4), None);
    }

    #[test]
    fn no_torn_read_of_a_wildcard_write_is_a_third_binding() {
        // Start from an entry with bits and the other family's wildcard set, and replace a
        // wildcard by way of "none", as the daemon does (remove, then insert).
        let start = PortEntry {
            tables: 0x07,
            wildcard_flags: [0, WILDCARD_SET],
            _pad: 0,
            wildcard_id: [0, 0x0101],
        };
        let [a1, a2] = start.wildcard_insert_steps(FAMILY_IPV4, 0x1234, WILDCARD_GROUP);
        let [r1, r2] = a2.wildcard_remove_steps(FAMILY_IPV4);
        let [b1, b2] = r2.wildcard_insert_steps(FAMILY_IPV4, 0x00ff, 0);
        let steps = [start, a1, a2, r1, r2, b1, b2];
        for pair in steps.windows(2) {
            let allowed = [seen(pair[0]), seen(pair[1])];
            for mix in mixes(pair[0], pair[1]) {
                assert!(
                    allowed.contains(&seen(mix)),
                    "{:?} -> {:?}: a reader could see {:?}",
                    pair[0],
                    pair[1],
                    seen(mix)
                );
            }
        }
        assert_eq!(seen(r2), seen(start), "removed: as before");
        assert_eq!(
            b2.wildcard(FAMILY_IPV4).map(|t| (t.id, t.flags)),
            Some((0xff, 0))
        );
    }
}
