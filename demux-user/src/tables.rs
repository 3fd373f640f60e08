//! Writing bindings and groups into the loaded program's maps. One binding is one map entry,
//! so each insert is atomic; a batch that fails part-way removes what it inserted, so the maps
//! are never left half-updated.

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

/// Inserts one binding; fails with `Exists` if the same key is already bound.
pub fn insert(ebpf: &mut Ebpf, entry: &Entry, target: Target) -> Result<(), TableError> {
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

/// Removes one binding.
pub fn remove(ebpf: &mut Ebpf, entry: &Entry) -> Result<(), TableError> {
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

/// Inserts every binding, or none: on the first failure the ones already inserted are removed.
pub fn insert_all(ebpf: &mut Ebpf, entries: &[(Entry, Target)]) -> Result<(), TableError> {
    for (done, (entry, target)) in entries.iter().enumerate() {
        if let Err(error) = insert(ebpf, entry, *target) {
            for (entry, _) in &entries[..done] {
                // Best effort: these were inserted a moment ago by this call.
                let _ = remove(ebpf, entry);
            }
            return Err(error);
        }
    }
    Ok(())
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
