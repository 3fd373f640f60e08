//! The port index: which binding tables hold bindings on a (protocol, port), per family, so the
//! program probes only tables that can match (the kernel's socket lookup also starts from the
//! port). `PORTS` is an array of `u32` bit sets; the daemon keeps it in step with the tables,
//! setting a bit before the first binding lands and clearing it after the last one is gone.
//!
//! Index: `protocol slot * 65536 + port` (UDP slot 0, TCP slot 1); the entries at
//! `2 * 65536 + protocol slot` hold the protocol-wide bits of all-ports prefix bindings.

use crate::binding::{FAMILY_IPV4, PROTO_TCP};

/// Binding tables, as bit positions in a port entry (two bits each: IPv4, IPv6).
pub const TABLE_CONNECTED: u32 = 0;
pub const TABLE_BOUND: u32 = 1;
pub const TABLE_PREFIX: u32 = 2;
pub const TABLE_WILDCARD: u32 = 3;

/// Entries of `PORTS`.
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
