//! The attached interfaces `IFACE_SLOTS` (`ifindex → IfaceSlot`: first `XSKS` slot and own MAC
//! address) as a typed handle taken at load; the daemon writes each interface's entry before
//! it attaches. The program checks a packet's destination MAC against it and redirects within
//! the interface's block of slots; an interface without an entry steers nothing.

use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use demux_common::{
    local::IfaceSlot,
    maps::{self, MAX_IFACES, MAX_QUEUES},
};

use crate::{
    program::{take_map, LoadError},
    tables::{classify, TableError},
};

/// The `IFACE_SLOTS` hash map of the loaded program.
pub(super) struct IfaceSlotsMap(HashMap<MapData, u32, IfaceSlot>);

impl IfaceSlotsMap {
    /// Takes `IFACE_SLOTS` out of `ebpf`, size-checked against `u32` and [`IfaceSlot`].
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        take_map(ebpf, maps::IFACE_SLOTS, "a hash map").map(Self)
    }

    /// Writes interface `ifindex`'s entry (overwrites an older one).
    pub(super) fn set(
        &mut self,
        ifindex: u32,
        number: u32,
        mac: [u8; 6],
    ) -> Result<(), TableError> {
        self.0
            .insert(ifindex, iface_slot(number, mac)?, 0)
            .map_err(|source| classify(maps::IFACE_SLOTS, source))
    }
}

/// The `IFACE_SLOTS` value of interface `number` (0 to `MAX_IFACES` − 1) with `mac`: both
/// dataplanes refuse the same numbers.
pub(crate) fn iface_slot(number: u32, mac: [u8; 6]) -> Result<IfaceSlot, TableError> {
    if number >= MAX_IFACES {
        return Err(TableError::BadIface { number });
    }
    Ok(IfaceSlot {
        first_slot: number * MAX_QUEUES,
        mac,
        _pad: [0; 2],
    })
}
