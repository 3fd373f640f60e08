//! The directory the queue workers read: endpoint id → [`EndpointHandle`] (sink and delivery
//! counters), as a table indexed by the id itself rather than a hash map.
//!
//! A worker looks up the endpoint of every frame it delivers. With traffic spread over
//! thousands of endpoints a hash map costs a hash of the id and a random bucket of a table
//! that is cold by the time the next batch comes (the kernel's copy into the UMEM and the NAPI
//! thread share the CPU's caches): at 4,096 endpoints that bucket was the worker's largest
//! single cost (docs/BENCHMARKS.md, "Scale, part 4"). Ids are small
//! (below `MAX_ENDPOINTS`, handed out in order and reused), so a vector indexed by id holds
//! them densely — eight bytes per id up to the highest id bound, 512 KiB at most — and a lookup
//! is one load.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::state::EndpointHandle;

/// Endpoint id → handle, read by the queue workers once per batch (one read lock), written by
/// the state on bind and close.
#[derive(Default)]
pub struct Directory(RwLock<Table>);

/// The table behind the lock: slot `id` holds endpoint `id`'s handle.
#[derive(Default)]
pub struct Table {
    /// Ends at the highest id present: `remove` drops the empty slots behind it.
    slots: Vec<Option<Arc<EndpointHandle>>>,
}

impl Directory {
    /// The table for reading (a worker holds it for one batch).
    pub fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The table for a change (bind, close).
    pub fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Table {
    /// Endpoint `id`'s handle, if it is in the directory.
    #[inline]
    pub fn get(&self, id: u32) -> Option<&Arc<EndpointHandle>> {
        self.slots.get(id as usize)?.as_ref()
    }

    /// Puts `handle` at `id` (replacing what was there); returns the old handle.
    pub fn insert(&mut self, id: u32, handle: Arc<EndpointHandle>) -> Option<Arc<EndpointHandle>> {
        let index = id as usize;
        if self.slots.len() <= index {
            self.slots.resize(index + 1, None);
        }
        self.slots[index].replace(handle)
    }

    /// Takes `id` out; returns its handle. The table shrinks to its highest id left.
    pub fn remove(&mut self, id: u32) -> Option<Arc<EndpointHandle>> {
        let old = self.slots.get_mut(id as usize)?.take();
        while matches!(self.slots.last(), Some(None)) {
            self.slots.pop();
        }
        old
    }

    /// The ids present, in order.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.is_some())
            .map(|(id, _)| id as u32)
    }

    /// How many endpoints the directory holds.
    pub fn len(&self) -> usize {
        self.ids().count()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    use super::*;
    use crate::sink::Sink;

    fn handle(delivered: u64) -> Arc<EndpointHandle> {
        Arc::new(EndpointHandle {
            sink: Sink::Count,
            delivered: AtomicU64::new(delivered),
            delivered_bytes: AtomicU64::new(0),
            dropped_sink_full: AtomicU64::new(0),
            dropped_sink_error: AtomicU64::new(0),
            via_kernel: AtomicU64::new(0),
            via_kernel_dropped: AtomicU64::new(0),
        })
    }

    fn delivered(table: &Table, id: u32) -> Option<u64> {
        table.get(id).map(|h| h.delivered.load(Relaxed))
    }

    #[test]
    fn finds_what_was_inserted_by_id_and_nothing_else() {
        let directory = Directory::default();
        let mut table = directory.write();
        assert!(table.is_empty());
        assert!(table.insert(3, handle(30)).is_none());
        assert!(table.insert(1, handle(10)).is_none());
        assert!(table.insert(65_535, handle(655)).is_none());
        drop(table);
        let table = directory.read();
        assert_eq!(delivered(&table, 1), Some(10));
        assert_eq!(delivered(&table, 3), Some(30));
        assert_eq!(delivered(&table, 65_535), Some(655));
        for absent in [0, 2, 4, 65_534, 65_536, u32::MAX] {
            assert_eq!(delivered(&table, absent), None, "id {absent}");
        }
        assert_eq!(table.ids().collect::<Vec<_>>(), vec![1, 3, 65_535]);
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn insert_replaces_and_remove_takes_out_and_shrinks() {
        let directory = Directory::default();
        let mut table = directory.write();
        table.insert(2, handle(1));
        let old = table.insert(2, handle(2)).expect("the first handle");
        assert_eq!(old.delivered.load(Relaxed), 1);
        assert_eq!(table.len(), 1);
        table.insert(9, handle(9));
        assert!(table.remove(5).is_none());
        assert!(table.remove(100).is_none());
        assert_eq!(table.len(), 2);
        assert_eq!(table.remove(9).map(|h| h.delivered.load(Relaxed)), Some(9));
        assert_eq!(table.slots.len(), 3, "shrinks to the highest id left");
        assert!(table.remove(9).is_none());
        assert_eq!(table.remove(2).map(|h| h.delivered.load(Relaxed)), Some(2));
        assert!(table.is_empty());
        assert!(table.slots.is_empty());
        assert_eq!(table.ids().count(), 0);
    }
}
