//! The port index `PORTS` (`demux_common::ports`) as a typed handle taken at load: one `u32`
//! bit set per (protocol, port).

use aya::{
    maps::{Array, MapData},
    Ebpf,
};
use demux_common::maps;

use crate::{
    program::{take_map, LoadError},
    tables::{classify, TableError},
};

/// The `PORTS` array of the loaded program.
pub(super) struct PortsMap(Array<MapData, u32>);

impl PortsMap {
    /// Takes `PORTS` out of `ebpf`, size-checked (`u32` bits).
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        take_map(ebpf, maps::PORTS, "an array").map(Self)
    }

    /// The bits of entry `index`.
    pub(super) fn get(&self, index: u32) -> Result<u32, TableError> {
        self.0
            .get(&index, 0)
            .map_err(|source| classify(maps::PORTS, source))
    }

    /// Overwrites entry `index`.
    pub(super) fn set(&mut self, index: u32, bits: u32) -> Result<(), TableError> {
        self.0
            .set(index, bits, 0)
            .map_err(|source| classify(maps::PORTS, source))
    }
}
