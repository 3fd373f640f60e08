//! The daemon's bookkeeping of the binding tables: writes bindings through a [`Dataplane`] and
//! keeps the port index (`PORTS`) in step. One binding is one map entry, so each insert is
//! atomic; a batch that fails part-way removes what it inserted, so the maps are never left
//! half-updated.

use aya::maps::MapError;
use demux_common::{
    binding::{Target, MAX_BINDINGS, MAX_GROUPS, MAX_GROUP_MEMBERS},
    maps,
    ports::{
        all_ports_index, port_bit, port_index, TABLE_BOUND, TABLE_CONNECTED, TABLE_PREFIX,
        TABLE_WILDCARD,
    },
};
use thiserror::Error;

use crate::{binding::Entry, dataplane::Dataplane};

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

/// The daemon's view of the binding tables: writes bindings through a [`Dataplane`] and keeps
/// the port index (`PORTS`) in step, counting bindings per (port entry, bit). A bit is set
/// before the first binding behind it is inserted and cleared after the last one is removed, so
/// a packet can see a bit without a binding (one wasted probe) but never a binding without its
/// bit.
#[derive(Debug, Default)]
pub struct Tables {
    counts: std::collections::HashMap<(u32, u32), u32>,
}

impl Tables {
    /// Inserts one binding; fails with `Exists` if the same key is already bound. On any
    /// failure the port index and the counts are as before.
    pub fn insert<D: Dataplane + ?Sized>(
        &mut self,
        dataplane: &mut D,
        entry: &Entry,
        target: Target,
    ) -> Result<(), TableError> {
        let (index, bit) = entry.port_slot();
        if self.count(index, bit) == 0 {
            let bits = dataplane.port_bits(index)?;
            dataplane.set_port_bits(index, bits | bit)?;
        }
        *self.counts.entry((index, bit)).or_default() += 1;
        let result = dataplane.insert(entry, target);
        if result.is_err() {
            // Should clearing the bit fail, it stays set: a wasted probe, never a wrong match.
            let _ = self.release(dataplane, index, bit);
        }
        result
    }

    /// Removes one binding.
    pub fn remove<D: Dataplane + ?Sized>(
        &mut self,
        dataplane: &mut D,
        entry: &Entry,
    ) -> Result<(), TableError> {
        dataplane.remove(entry)?;
        let (index, bit) = entry.port_slot();
        self.release(dataplane, index, bit)
    }

    /// Inserts every binding, or none: on the first failure the ones already inserted are
    /// removed again.
    pub fn insert_all<D: Dataplane + ?Sized>(
        &mut self,
        dataplane: &mut D,
        entries: &[(Entry, Target)],
    ) -> Result<(), TableError> {
        for (done, (entry, target)) in entries.iter().enumerate() {
            if let Err(error) = self.insert(dataplane, entry, *target) {
                for (entry, _) in &entries[..done] {
                    // Best effort: these were inserted a moment ago by this call.
                    let _ = self.remove(dataplane, entry);
                }
                return Err(error);
            }
        }
        Ok(())
    }

    /// Bindings counted behind (port entry `index`, `bit`).
    fn count(&self, index: u32, bit: u32) -> u32 {
        self.counts.get(&(index, bit)).copied().unwrap_or(0)
    }

    /// Drops one count of (index, bit), clearing the bit when none is left.
    fn release<D: Dataplane + ?Sized>(
        &mut self,
        dataplane: &mut D,
        index: u32,
        bit: u32,
    ) -> Result<(), TableError> {
        let count = self.counts.entry((index, bit)).or_default();
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.counts.remove(&(index, bit));
            let bits = dataplane.port_bits(index)?;
            dataplane.set_port_bits(index, bits & !bit)?;
        }
        Ok(())
    }
}

impl Entry {
    /// The port index entry and bit that announce this binding.
    pub(crate) fn port_slot(&self) -> (u32, u32) {
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

/// Turns the kernel's errno into the error a user can act on.
pub(crate) fn classify(table: &'static str, source: MapError) -> TableError {
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
