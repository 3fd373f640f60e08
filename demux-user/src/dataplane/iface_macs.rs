//! The interfaces' own MAC addresses `IFACE_MACS` (`ifindex → IfaceMac`) as a typed handle
//! taken at load; the daemon writes each interface's address when it attaches.

use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use demux_common::{local::IfaceMac, maps};

use crate::{
    program::{take_map, LoadError},
    tables::{classify, TableError},
};

/// The `IFACE_MACS` hash map of the loaded program.
pub(super) struct IfaceMacsMap(HashMap<MapData, u32, IfaceMac>);

impl IfaceMacsMap {
    /// Takes `IFACE_MACS` out of `ebpf`, size-checked against `u32` and [`IfaceMac`].
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        take_map(ebpf, maps::IFACE_MACS, "a hash map").map(Self)
    }

    /// Writes interface `ifindex`'s MAC address (overwrites an older one).
    pub(super) fn set(&mut self, ifindex: u32, mac: [u8; 6]) -> Result<(), TableError> {
        let value = IfaceMac {
            addr: mac,
            _pad: [0; 2],
        };
        self.0
            .insert(ifindex, value, 0)
            .map_err(|source| classify(maps::IFACE_MACS, source))
    }
}
