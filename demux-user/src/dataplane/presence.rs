//! The presence filter `PRESENCE` (`demux_common::presence`) as a typed handle taken at load:
//! one `u64` word of bits per index. Each write sets or clears one bit of one word.

use aya::{
    maps::{Array, MapData},
    Ebpf,
};
use demux_common::maps;

use crate::{
    program::{take_map, LoadError},
    tables::{classify, TableError},
};

/// The `PRESENCE` array of the loaded program.
pub(super) struct PresenceMap(Array<MapData, u64>);

impl PresenceMap {
    /// Takes `PRESENCE` out of `ebpf`, size-checked (`u64` words).
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        take_map(ebpf, maps::PRESENCE, "an array").map(Self)
    }

    /// Word `index`.
    pub(super) fn get(&self, index: u32) -> Result<u64, TableError> {
        self.0
            .get(&index, 0)
            .map_err(|source| classify(maps::PRESENCE, source))
    }

    /// Overwrites word `index`.
    pub(super) fn set(&mut self, index: u32, word: u64) -> Result<(), TableError> {
        self.0
            .set(index, word, 0)
            .map_err(|source| classify(maps::PRESENCE, source))
    }
}
