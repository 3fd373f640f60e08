//! The group table `GROUPS` as a typed handle taken at load: one [`Group`] (count and
//! members) per group id.

use aya::{
    maps::{Array, MapData},
    Ebpf,
};
use demux_common::{binding::Group, maps};

use crate::{
    program::{take_map, LoadError},
    tables::{classify, TableError},
};

/// The `GROUPS` array of the loaded program.
pub(super) struct GroupsMap(Array<MapData, Group>);

impl GroupsMap {
    /// Takes `GROUPS` out of `ebpf`, size-checked against [`Group`].
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        take_map(ebpf, maps::GROUPS, "an array").map(Self)
    }

    /// Overwrites group `id` (one update: a packet sees the old members or the new).
    pub(super) fn set(&mut self, id: u32, group: &Group) -> Result<(), TableError> {
        self.0
            .set(id, group, 0)
            .map_err(|source| classify(maps::GROUPS, source))
    }
}
