//! The port table `PORTS` (`demux_common::ports`) as a typed handle taken at load: one
//! [`PortEntry`] per (protocol, port), holding the port's wildcard bindings and the bits of the
//! other tables. Every write follows the order `demux_common::ports` documents, so that the
//! program, which may see any byte-wise mix of an entry before and after a write, always sees
//! a consistent one. This handle is the only writer (the daemon's state lock), so a
//! read-modify-write of one entry cannot race another.

use aya::{
    maps::{Array, MapData},
    Ebpf,
};
use demux_common::{
    binding::{Target, WildcardKey},
    maps,
    ports::{family_index, port_index, PortEntry, WILDCARD_SET},
};

use crate::{
    program::{take_map, LoadError},
    tables::{classify, TableError},
};

/// The `PORTS` array of the loaded program.
pub(super) struct PortsMap(Array<MapData, PortEntry>);

impl PortsMap {
    /// Takes `PORTS` out of `ebpf`, size-checked (`PortEntry`).
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        take_map(ebpf, maps::PORTS, "an array").map(Self)
    }

    /// The table bits of entry `index`.
    pub(super) fn get(&self, index: u32) -> Result<u32, TableError> {
        Ok(u32::from(self.entry(index)?.tables))
    }

    /// Overwrites the table bits of entry `index` (one byte of the entry changes).
    pub(super) fn set(&mut self, index: u32, bits: u32) -> Result<(), TableError> {
        let mut entry = self.entry(index)?;
        entry.tables = bits as u8;
        self.write(index, entry, maps::PORTS)
    }

    /// Puts a wildcard binding in its port's entry: its id first (the program ignores it while
    /// the flags byte is 0), then the flags byte. A wildcard already there is `Exists`.
    pub(super) fn insert_wildcard(
        &mut self,
        key: &WildcardKey,
        target: Target,
    ) -> Result<(), TableError> {
        let (index, family) = (
            port_index(key.protocol, key.local_port),
            family_index(key.family),
        );
        let entry = self.entry(index)?;
        if entry.wildcard_flags[family] & WILDCARD_SET != 0 {
            return Err(TableError::Exists {
                table: maps::WILDCARD,
            });
        }
        let id = u16::try_from(target.id).map_err(|_| TableError::IdTooLarge { id: target.id })?;
        for step in entry.wildcard_insert_steps(key.family, id, target.flags as u8) {
            self.write(index, step, maps::WILDCARD)?;
        }
        Ok(())
    }

    /// Takes a wildcard binding out of its port's entry: the flags byte first, then the id.
    /// None there is `NotFound`.
    pub(super) fn remove_wildcard(&mut self, key: &WildcardKey) -> Result<(), TableError> {
        let (index, family) = (
            port_index(key.protocol, key.local_port),
            family_index(key.family),
        );
        let entry = self.entry(index)?;
        if entry.wildcard_flags[family] & WILDCARD_SET == 0 {
            return Err(TableError::NotFound {
                table: maps::WILDCARD,
            });
        }
        for step in entry.wildcard_remove_steps(key.family) {
            self.write(index, step, maps::WILDCARD)?;
        }
        Ok(())
    }

    fn entry(&self, index: u32) -> Result<PortEntry, TableError> {
        self.0
            .get(&index, 0)
            .map_err(|source| classify(maps::PORTS, source))
    }

    fn write(
        &mut self,
        index: u32,
        entry: PortEntry,
        table: &'static str,
    ) -> Result<(), TableError> {
        self.0
            .set(index, entry, 0)
            .map_err(|source| classify(table, source))
    }
}
