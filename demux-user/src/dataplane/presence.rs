//! The presence filter `PRESENCE` (`demux_common::presence`) as a typed handle taken at load:
//! the outer array of maps and its shards, arrays of `u64` words that the daemon creates at
//! load (`PRESENCE_SHARD`, each small enough for the kernel to `kmalloc`) and keeps a
//! descriptor of. Each write sets or clears bits of one word of one shard.

use std::os::fd::{AsFd, BorrowedFd};

use aya::{
    maps::{Array, ArrayOfMaps, Map, MapData, MapError},
    Ebpf,
};
use demux_common::{
    maps,
    presence::{Filter, Probe, SHARD_WORDS},
};

use crate::{
    program::{take_map, LoadError},
    tables::{classify, TableError},
};

/// The kernel's name of every shard (at most 15 bytes).
pub(super) const SHARD_NAME: &str = "PRESENCE_SHARD";

/// `PRESENCE` of the loaded program and the shards it holds.
pub(super) struct PresenceMap {
    /// The outer array (its entries hold the shards for the program).
    _outer: ArrayOfMaps<MapData, MapData>,
    /// Shard `i` is `PRESENCE[i]`, each a `Map::Array` of `u64`.
    shards: Vec<Map>,
}

impl PresenceMap {
    /// Takes `PRESENCE` out of `ebpf` (an array of maps), and creates and installs
    /// `filter.shards()` zeroed shards of [`SHARD_WORDS`] words.
    pub(super) fn take(ebpf: &mut Ebpf, filter: Filter) -> Result<Self, LoadError> {
        let mut outer: ArrayOfMaps<MapData, MapData> =
            take_map(ebpf, maps::PRESENCE, "an array of maps")?;
        let shards = (0..filter.shards())
            .map(|shard| {
                let error = |source| LoadError::PresenceShard { shard, source };
                let definition = aya_obj::Map::new_from_params(
                    aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
                    size_of::<u32>() as u32,
                    size_of::<u64>() as u32,
                    SHARD_WORDS,
                    0,
                );
                let array = MapData::create(definition, SHARD_NAME, None).map_err(error)?;
                outer.set(shard, &array, 0).map_err(error)?;
                Ok(Map::Array(array))
            })
            .collect::<Result<_, LoadError>>()?;
        Ok(Self {
            _outer: outer,
            shards,
        })
    }

    /// The shards' descriptors (for the kernel memory report).
    pub(super) fn shard_fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.shards.iter().filter_map(|shard| match shard {
            Map::Array(data) => Some(data.fd().as_fd()),
            _ => None,
        })
    }

    /// Word `index` of the whole filter ([`Probe::index`]).
    pub(super) fn get(&self, index: u32) -> Result<u64, TableError> {
        let (shard, word) = Probe::split(index);
        let shard = self.shards.get(shard as usize).ok_or(self.beyond(index))?;
        Array::<_, u64>::try_from(shard)
            .and_then(|array| array.get(&word, 0))
            .map_err(|source| classify(maps::PRESENCE, source))
    }

    /// Overwrites word `index` of the whole filter ([`Probe::index`]).
    pub(super) fn set(&mut self, index: u32, value: u64) -> Result<(), TableError> {
        let (shard, word) = Probe::split(index);
        let beyond = self.beyond(index);
        let shard = self.shards.get_mut(shard as usize).ok_or(beyond)?;
        Array::<_, u64>::try_from(shard)
            .and_then(|mut array| array.set(word, value, 0))
            .map_err(|source| classify(maps::PRESENCE, source))
    }

    /// The error for a word `index` beyond the shards.
    fn beyond(&self, index: u32) -> TableError {
        TableError::Map {
            table: maps::PRESENCE,
            source: MapError::OutOfBounds {
                index,
                max_entries: self.shards.len() as u32 * SHARD_WORDS,
            },
        }
    }
}
