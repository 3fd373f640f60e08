//! Writing bindings and groups into the loaded program's maps, and keeping the port index in
//! step. One binding is one map entry, so each insert is atomic; a batch that fails part-way
//! removes what it inserted, so the maps are never left half-updated.

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, MapData, MapError,
    },
    Ebpf, Pod,
};
use demux_common::{
    binding::{Group, Target, MAX_BINDINGS, MAX_GROUPS, MAX_GROUP_MEMBERS, PREFIX_KEY_FIXED_BITS},
    maps,
    ports::{
        all_ports_index, port_bit, port_index, TABLE_BOUND, TABLE_CONNECTED, TABLE_PREFIX,
        TABLE_WILDCARD,
    },
};
use thiserror::Error;

use crate::binding::Entry;

/// `BPF_NOEXIST`: insert only, never overwrite another binding.
const NOEXIST: u64 = 1;

/// A failed table update, naming the table.
#[derive(Debug, Error)]
pub enum TableError {
    #[error("{table}: this binding is already held; close the endpoint that holds it first")]
    Exists { table: &'static str },
    #[error("{table}: the table is full ({max} entries); remove bindings first", max = MAX_BINDINGS)]
    Full { table: &'static str },
    #[error("{table}: no such binding")]
    NotFound { table: &'static str },
    #[error("group {id}: {count} members is more than {MAX_GROUP_MEMBERS}")]
    GroupTooLarge { id: u32, count: usize },
    #[error("group {id}: not a group id (0-{max})", max = MAX_GROUPS - 1)]
    BadGroup { id: u32 },
    #[error("map {table}: {source}")]
    Map {
        table: &'static str,
        #[source]
        source: MapError,
    },
}

impl Entry {
    /// The name of the map this entry lives in.
    pub fn table(&self) -> &'static str {
        match self {
            Entry::Connected(_) => maps::CONNECTED,
            Entry::Bound(_) => maps::BOUND,
            Entry::Prefix(..) => maps::PREFIX,
            Entry::Wildcard(_) => maps::WILDCARD,
        }
    }
}

/// The daemon's view of the binding tables: writes bindings into the maps and keeps the port
/// index (`PORTS`) in step, counting bindings per (port entry, bit). A bit is set before the
/// first binding behind it is inserted and cleared after the last one is removed, so a packet
/// can see a bit without a binding (one wasted probe) but never a binding without its bit.
#[derive(Debug, Default)]
pub struct Tables {
    counts: std::collections::HashMap<(u32, u32), u32>,
}

impl Tables {
    /// Inserts one binding; fails with `Exists` if the same key is already bound.
    pub fn insert(
        &mut self,
        ebpf: &mut Ebpf,
        entry: &Entry,
        target: Target,
    ) -> Result<(), TableError> {
        let (index, bit) = entry.port_slot();
        let count = self.counts.entry((index, bit)).or_default();
        *count += 1;
        if *count == 1 {
            update_port_bits(ebpf, index, |bits| bits | bit)?;
        }
        let result = insert_entry(ebpf, entry, target);
        if result.is_err() {
            self.release(ebpf, index, bit)?;
        }
        result
    }

    /// Removes one binding.
    pub fn remove(&mut self, ebpf: &mut Ebpf, entry: &Entry) -> Result<(), TableError> {
        remove_entry(ebpf, entry)?;
        let (index, bit) = entry.port_slot();
        self.release(ebpf, index, bit)
    }

    /// Inserts every binding, or none: on the first failure the ones already inserted are
    /// removed again.
    pub fn insert_all(
        &mut self,
        ebpf: &mut Ebpf,
        entries: &[(Entry, Target)],
    ) -> Result<(), TableError> {
        for (done, (entry, target)) in entries.iter().enumerate() {
            if let Err(error) = self.insert(ebpf, entry, *target) {
                for (entry, _) in &entries[..done] {
                    // Best effort: these were inserted a moment ago by this call.
                    let _ = self.remove(ebpf, entry);
                }
                return Err(error);
            }
        }
        Ok(())
    }

    /// Drops one count of (index, bit), clearing the bit when none is left.
    fn release(&mut self, ebpf: &mut Ebpf, index: u32, bit: u32) -> Result<(), TableError> {
        let count = self.counts.entry((index, bit)).or_default();
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.counts.remove(&(index, bit));
            update_port_bits(ebpf, index, |bits| bits & !bit)?;
        }
        Ok(())
    }
}

impl Entry {
    /// The port index entry and bit that announce this binding.
    fn port_slot(&self) -> (u32, u32) {
        match self {
            Entry::Connected(k) => (
                port_index(k.protocol, k.local_port),
                port_bit(TABLE_CONNECTED, k.family),
            ),
            Entry::Bound(k) => (
                port_index(k.protocol, k.local_port),
                port_bit(TABLE_BOUND, k.family),
            ),
            Entry::Prefix(k, _) if k.local_port == 0 => (
                all_ports_index(k.protocol),
                port_bit(TABLE_PREFIX, k.family),
            ),
            Entry::Prefix(k, _) => (
                port_index(k.protocol, k.local_port),
                port_bit(TABLE_PREFIX, k.family),
            ),
            Entry::Wildcard(k) => (
                port_index(k.protocol, k.local_port),
                port_bit(TABLE_WILDCARD, k.family),
            ),
        }
    }
}

fn update_port_bits(
    ebpf: &mut Ebpf,
    index: u32,
    change: impl Fn(u32) -> u32,
) -> Result<(), TableError> {
    let table = maps::PORTS;
    let map = ebpf.map_mut(table).ok_or_else(|| missing(table))?;
    let mut array: Array<&mut MapData, u32> =
        Array::try_from(map).map_err(|source| TableError::Map { table, source })?;
    let bits = array
        .get(&index, 0)
        .map_err(|source| classify(table, source))?;
    array
        .set(index, change(bits), 0)
        .map_err(|source| classify(table, source))
}

fn insert_entry(ebpf: &mut Ebpf, entry: &Entry, target: Target) -> Result<(), TableError> {
    let table = entry.table();
    let result = match entry {
        Entry::Connected(key) => hash_map(ebpf, table)?.insert(*key, target, NOEXIST),
        Entry::Bound(key) => hash_map(ebpf, table)?.insert(*key, target, NOEXIST),
        Entry::Wildcard(key) => hash_map(ebpf, table)?.insert(*key, target, NOEXIST),
        Entry::Prefix(key, len) => {
            let key = Key::new(PREFIX_KEY_FIXED_BITS + u32::from(*len), *key);
            lpm_trie(ebpf, table)?.insert(&key, target, NOEXIST)
        }
    };
    result.map_err(|source| classify(table, source))
}

fn remove_entry(ebpf: &mut Ebpf, entry: &Entry) -> Result<(), TableError> {
    let table = entry.table();
    let result = match entry {
        Entry::Connected(key) => hash_map(ebpf, table)?.remove(key),
        Entry::Bound(key) => hash_map(ebpf, table)?.remove(key),
        Entry::Wildcard(key) => hash_map(ebpf, table)?.remove(key),
        Entry::Prefix(key, len) => {
            let key = Key::new(PREFIX_KEY_FIXED_BITS + u32::from(*len), *key);
            lpm_trie(ebpf, table)?.remove(&key)
        }
    };
    result.map_err(|source| classify(table, source))
}

/// Sets the members of group `id` (an empty slice empties it).
pub fn set_group(ebpf: &mut Ebpf, id: u32, members: &[u32]) -> Result<(), TableError> {
    if id >= MAX_GROUPS {
        return Err(TableError::BadGroup { id });
    }
    if members.len() > MAX_GROUP_MEMBERS {
        return Err(TableError::GroupTooLarge {
            id,
            count: members.len(),
        });
    }
    let mut group = Group {
        count: members.len() as u32,
        members: [0; MAX_GROUP_MEMBERS],
    };
    group.members[..members.len()].copy_from_slice(members);
    let table = maps::GROUPS;
    let map = ebpf.map_mut(table).ok_or_else(|| missing(table))?;
    let mut array: Array<&mut MapData, Group> =
        Array::try_from(map).map_err(|source| TableError::Map { table, source })?;
    array
        .set(id, group, 0)
        .map_err(|source| classify(table, source))
}

fn hash_map<'a, K: Pod>(
    ebpf: &'a mut Ebpf,
    table: &'static str,
) -> Result<HashMap<&'a mut MapData, K, Target>, TableError> {
    let map = ebpf.map_mut(table).ok_or_else(|| missing(table))?;
    HashMap::try_from(map).map_err(|source| TableError::Map { table, source })
}

fn lpm_trie<'a, K: Pod>(
    ebpf: &'a mut Ebpf,
    table: &'static str,
) -> Result<LpmTrie<&'a mut MapData, K, Target>, TableError> {
    let map = ebpf.map_mut(table).ok_or_else(|| missing(table))?;
    LpmTrie::try_from(map).map_err(|source| TableError::Map { table, source })
}

fn missing(table: &'static str) -> TableError {
    TableError::Map {
        table,
        source: MapError::InvalidName { name: table.into() },
    }
}

/// Turns the kernel's errno into the error a user can act on.
fn classify(table: &'static str, source: MapError) -> TableError {
    let errno = match &source {
        MapError::SyscallError(e) => e.io_error.raw_os_error(),
        MapError::KeyNotFound => return TableError::NotFound { table },
        _ => None,
    };
    match errno {
        Some(libc::EEXIST) => TableError::Exists { table },
        Some(libc::E2BIG | libc::ENOSPC | libc::ENOMEM) => TableError::Full { table },
        Some(libc::ENOENT) => TableError::NotFound { table },
        _ => TableError::Map { table, source },
    }
}
