//! The attached interfaces `IFACE_SLOTS` (`ifindex → IfaceSlot`: first `XSKS` slot and own MAC
//! address) and its direct-mapped copy `IFACE_CACHE` (`ifindex % IFACE_CACHE_ENTRIES`) as typed
//! handles taken at load; the daemon writes each interface's entry before it attaches. The
//! program checks a packet's destination MAC against it and redirects within the interface's
//! block of slots; an interface without an entry steers nothing. The hash entry is written
//! first, then the cache slot if no other interface holds it (that one keeps it, and the later
//! interface is found through the hash).

use std::collections::HashMap as StdHashMap;

use aya::{
    maps::{Array, HashMap, MapData},
    Ebpf,
};
use demux_common::{
    local::{IfaceSlot, IFACE_CACHE_ENTRIES},
    maps::{self, MAX_IFACES, MAX_QUEUES},
};

use crate::{
    program::{take_map, LoadError},
    tables::{classify, TableError},
};

/// The `IFACE_SLOTS` hash map and the `IFACE_CACHE` array of the loaded program, and which
/// interface holds each cache slot written so far.
pub(super) struct IfaceSlotsMap {
    slots: HashMap<MapData, u32, IfaceSlot>,
    cache: Array<MapData, IfaceSlot>,
    cached: StdHashMap<u32, u32>,
}

impl IfaceSlotsMap {
    /// Takes `IFACE_SLOTS` and `IFACE_CACHE` out of `ebpf`, size-checked against `u32` and
    /// [`IfaceSlot`].
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        Ok(Self {
            slots: take_map(ebpf, maps::IFACE_SLOTS, "a hash map")?,
            cache: take_map(ebpf, maps::IFACE_CACHE, "an array")?,
            cached: StdHashMap::new(),
        })
    }

    /// Writes interface `ifindex`'s entry (overwrites an older one).
    pub(super) fn set(
        &mut self,
        ifindex: u32,
        number: u32,
        mac: [u8; 6],
    ) -> Result<(), TableError> {
        let value = iface_slot(ifindex, number, mac)?;
        self.slots
            .insert(ifindex, value, 0)
            .map_err(|source| classify(maps::IFACE_SLOTS, source))?;
        let index = ifindex % IFACE_CACHE_ENTRIES;
        if self.cached.get(&index).is_some_and(|&held| held != ifindex) {
            return Ok(());
        }
        self.cache
            .set(index, value, 0)
            .map_err(|source| classify(maps::IFACE_CACHE, source))?;
        self.cached.insert(index, ifindex);
        Ok(())
    }
}

/// The `IFACE_SLOTS` value of interface `ifindex`, number `number` (0 to `MAX_IFACES` − 1),
/// with `mac`: both dataplanes refuse the same numbers.
pub(crate) fn iface_slot(ifindex: u32, number: u32, mac: [u8; 6]) -> Result<IfaceSlot, TableError> {
    if number >= MAX_IFACES {
        return Err(TableError::BadIface { number });
    }
    Ok(IfaceSlot {
        ifindex,
        first_slot: number * MAX_QUEUES,
        mac,
        _pad: [0; 2],
    })
}
