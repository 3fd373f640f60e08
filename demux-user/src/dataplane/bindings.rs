//! The binding tables, `CONNECTED`, `BOUND` (hash maps), `PREFIX_V4`/`PREFIX_V6` (LPM tries, one
//! per family, each of `--max-bindings` entries; errors name the family's trie) and `PORTS`
//! (the port table holding wildcard bindings, `ports.rs`), as typed handles taken at load: one
//! insert (`BPF_NOEXIST`) or remove per binding (two ordered writes for a wildcard).

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        HashMap, MapData,
    },
    Ebpf,
};
use demux_common::{
    binding::{
        BoundKey, ConnectedKey, PrefixKey, PrefixKeyV4, Target, FAMILY_IPV4, PREFIX_KEY_FIXED_BITS,
    },
    maps,
};

use super::ports::PortsMap;
use crate::{
    binding::Entry,
    program::{take_map, LoadError},
    tables::{classify, TableError},
};

/// `BPF_NOEXIST`: insert only, never overwrite another binding.
const NOEXIST: u64 = 1;

/// The binding tables of the loaded program.
pub(super) struct BindingMaps {
    connected: HashMap<MapData, ConnectedKey, Target>,
    bound: HashMap<MapData, BoundKey, Target>,
    prefix_v4: LpmTrie<MapData, PrefixKeyV4, Target>,
    prefix_v6: LpmTrie<MapData, PrefixKey, Target>,
    /// `PORTS`: wildcard bindings and the index bits.
    pub(super) ports: PortsMap,
}

impl BindingMaps {
    /// Takes the tables out of `ebpf`, each size-checked against its key and [`Target`].
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        Ok(Self {
            connected: take_map(ebpf, maps::CONNECTED, "a hash map")?,
            bound: take_map(ebpf, maps::BOUND, "a hash map")?,
            prefix_v4: take_map(ebpf, maps::PREFIX_V4, "an LPM trie")?,
            prefix_v6: take_map(ebpf, maps::PREFIX_V6, "an LPM trie")?,
            ports: PortsMap::take(ebpf)?,
        })
    }

    /// Inserts `entry`, never overwriting.
    pub(super) fn insert(&mut self, entry: &Entry, target: Target) -> Result<(), TableError> {
        let result = match entry {
            Entry::Connected(key) => self.connected.insert(key, target, NOEXIST),
            Entry::Bound(key) => self.bound.insert(key, target, NOEXIST),
            Entry::Wildcard(key) => return self.ports.insert_wildcard(key, target),
            Entry::Prefix(key, len) if key.family == FAMILY_IPV4 => self.prefix_v4.insert(
                &trie_key(&PrefixKeyV4::from_key(key), *len),
                target,
                NOEXIST,
            ),
            Entry::Prefix(key, len) => self.prefix_v6.insert(&trie_key(key, *len), target, NOEXIST),
        };
        result.map_err(|source| classify(entry.table(), source))
    }

    /// Removes `entry`.
    pub(super) fn remove(&mut self, entry: &Entry) -> Result<(), TableError> {
        let result = match entry {
            Entry::Connected(key) => self.connected.remove(key),
            Entry::Bound(key) => self.bound.remove(key),
            Entry::Wildcard(key) => return self.ports.remove_wildcard(key),
            Entry::Prefix(key, len) if key.family == FAMILY_IPV4 => self
                .prefix_v4
                .remove(&trie_key(&PrefixKeyV4::from_key(key), *len)),
            Entry::Prefix(key, len) => self.prefix_v6.remove(&trie_key(key, *len)),
        };
        result.map_err(|source| classify(entry.table(), source))
    }
}

/// The trie key of a prefix binding: the fixed part (protocol, family or padding, port) always
/// matches, then `len` bits of the address.
fn trie_key<K: aya::Pod>(key: &K, len: u8) -> Key<K> {
    Key::new(PREFIX_KEY_FIXED_BITS + u32::from(len), *key)
}
