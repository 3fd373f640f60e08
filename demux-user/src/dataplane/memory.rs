//! An in-memory [`Dataplane`] for tests (built under `cfg(test)` and the `testing` feature only).
//!
//! It keeps the tables as plain collections, logs every write in order, and checks after every
//! write the two promises the daemon makes to the XDP program: no binding without its port-index
//! bit, and no binding pointing at an empty group. A test can shrink the tables ([`with_capacity`])
//! and make the next call of an operation fail ([`fail`]) to drive the rollbacks.
//!
//! [`with_capacity`]: MemoryDataplane::with_capacity
//! [`fail`]: MemoryDataplane::fail

use std::{
    collections::{BTreeMap, HashMap},
    io,
    os::fd::{AsRawFd as _, BorrowedFd, RawFd},
    sync::{Arc, Mutex, PoisonError},
};

use aya::{maps::MapError, sys::SyscallError};
use demux_common::{
    binding::{EndpointStats, Target, TARGET_GROUP},
    local::IfaceSlot,
    maps,
};

use super::{
    group_value, iface_slots::iface_slot, CounterError, Counters, Dataplane, LocalKind,
    LocalPrefix, ReuseportError,
};
use crate::{binding::Entry, tables::TableError, verdicts::VerdictCounts};

/// An operation of [`Dataplane`], to make fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Dataplane::insert`].
    Insert,
    /// [`Dataplane::remove`].
    Remove,
    /// [`Dataplane::set_port_bits`].
    SetPortBits,
    /// [`Dataplane::set_presence_word`].
    SetPresence,
    /// [`Dataplane::set_group`].
    SetGroup,
    /// [`Dataplane::reset_endpoint_stats`].
    ResetStats,
    /// [`Dataplane::set_local`] and [`Dataplane::remove_local`].
    Local,
    /// [`Dataplane::set_iface`].
    Iface,
    /// Every reuseport call: [`Dataplane::set_reuseport_socket`] and the others.
    Reuseport,
}

/// One successful write, in the order made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A binding was inserted.
    Insert(Entry, Target),
    /// A binding was removed.
    Remove(Entry),
    /// A port-index entry was written.
    SetPortBits {
        /// The entry.
        index: u32,
        /// Its new bits.
        bits: u32,
    },
    /// A presence filter word was written.
    SetPresence {
        /// The word's index.
        index: u32,
        /// Its new bits.
        word: u64,
    },
    /// A group's members were written.
    SetGroup {
        /// The group id.
        id: u32,
        /// Its new members.
        members: Vec<u32>,
    },
    /// An endpoint's counters were zeroed.
    ResetStats(u32),
    /// A local route was written.
    SetLocal(LocalPrefix, LocalKind),
    /// A local route was removed.
    RemoveLocal(LocalPrefix),
    /// An interface's entry was written: ifindex and value.
    SetIface(u32, IfaceSlot),
    /// A reuseport slot got a socket (its descriptor number).
    SetReuseportSocket(u32, RawFd),
    /// A reuseport slot was emptied.
    ClearReuseportSocket(u32),
    /// A socket cookie was recorded as a member of a group.
    SetReuseportCookie(u64, u32),
    /// A socket cookie was forgotten.
    RemoveReuseportCookie(u64),
    /// The reuseport program was attached through a socket (its descriptor number).
    AttachReuseport(RawFd),
    /// A kernel group's program was detached through a socket (its descriptor number).
    DetachReuseport(RawFd),
}

/// The binding tables, port index, groups and counters, in memory.
#[derive(Default)]
pub struct MemoryDataplane {
    entries: HashMap<Entry, Target>,
    ports: HashMap<u32, u32>,
    presence: HashMap<u32, u64>,
    /// The presence filter's geometry (the object's default unless set).
    filter: demux_common::presence::Filter,
    groups: HashMap<u32, Vec<u32>>,
    local: HashMap<LocalPrefix, LocalKind>,
    ifaces: HashMap<u32, IfaceSlot>,
    /// `REUSEPORT_SOCKETS`: slot → descriptor number.
    reuseport_sockets: BTreeMap<u32, RawFd>,
    /// `REUSEPORT_COOKIES`.
    reuseport_cookies: HashMap<u64, u32>,
    /// Entries per binding table; `None` is unbounded.
    capacity: Option<usize>,
    /// Per operation: how many more calls succeed before one fails.
    failures: HashMap<Op, usize>,
    events: Vec<Event>,
    violations: Vec<String>,
    counters: Arc<MemoryCounters>,
}

/// The counters of a [`MemoryDataplane`], which a test can also move.
#[derive(Default)]
pub struct MemoryCounters {
    verdicts: Mutex<VerdictCounts>,
    endpoints: Mutex<HashMap<u32, EndpointStats>>,
}

impl MemoryDataplane {
    /// Empty tables, each holding at most `capacity` bindings (a full table is `Full`).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: Some(capacity),
            ..Self::default()
        }
    }

    /// Empty tables with a presence filter of `filter`'s geometry (a small one makes keys
    /// share bits).
    pub fn with_presence_filter(filter: demux_common::presence::Filter) -> Self {
        Self {
            filter,
            ..Self::default()
        }
    }

    /// Lets `after` more calls of `op` succeed, then fails the next one once.
    pub fn fail(&mut self, op: Op, after: usize) {
        self.failures.insert(op, after);
    }

    /// The target `entry` is bound to, if any.
    pub fn target(&self, entry: &Entry) -> Option<Target> {
        self.entries.get(entry).copied()
    }

    /// How many bindings the tables hold.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the tables hold no binding.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bits of port-index entry `index` (0 when never written).
    pub fn bits(&self, index: u32) -> u32 {
        self.ports.get(&index).copied().unwrap_or(0)
    }

    /// Word `index` of the presence filter (0 when never written).
    pub fn presence(&self, index: u32) -> u64 {
        self.presence.get(&index).copied().unwrap_or(0)
    }

    /// Whether any presence filter bit is set.
    pub fn any_presence_bits(&self) -> bool {
        self.presence.values().any(|word| *word != 0)
    }

    /// Whether any port-index entry has a bit set.
    pub fn any_port_bits(&self) -> bool {
        self.ports.values().any(|bits| *bits != 0)
    }

    /// The members of group `id` (empty when never written).
    pub fn members(&self, id: u32) -> &[u32] {
        self.groups.get(&id).map_or(&[], Vec::as_slice)
    }

    /// The local routes (`LOCAL_ADDRS`).
    pub fn local(&self) -> &HashMap<LocalPrefix, LocalKind> {
        &self.local
    }

    /// The attached interfaces (`IFACE_SLOTS`).
    pub fn ifaces(&self) -> &HashMap<u32, IfaceSlot> {
        &self.ifaces
    }

    /// The socket (descriptor number) in each non-empty `REUSEPORT_SOCKETS` slot.
    pub fn reuseport_sockets(&self) -> &BTreeMap<u32, RawFd> {
        &self.reuseport_sockets
    }

    /// The recorded socket cookies and their groups (`REUSEPORT_COOKIES`).
    pub fn reuseport_cookies(&self) -> &HashMap<u64, u32> {
        &self.reuseport_cookies
    }

    /// Every successful write so far, in order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Every broken promise seen after a write: a binding without its port bit, or pointing at
    /// an empty group. Empty when the daemon kept them.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// The counters, to move them as the program would.
    pub fn memory_counters(&self) -> &Arc<MemoryCounters> {
        &self.counters
    }

    /// Consumes one call of `op`: `true` when it is the one to fail.
    fn fails(&mut self, op: Op) -> bool {
        match self.failures.get_mut(&op) {
            Some(0) => {
                self.failures.remove(&op);
                true
            }
            Some(after) => {
                *after -= 1;
                false
            }
            None => false,
        }
    }

    /// Logs a write and checks the promises the tables must keep after it.
    fn record(&mut self, event: Event) {
        for (entry, target) in &self.entries {
            let without_bit = entry
                .port_slot()
                .is_some_and(|(index, bit)| self.bits(index) & bit == 0);
            let without_presence = entry
                .presence_probes(self.presence_filter())
                .iter()
                .any(|probe| self.presence(probe.word) & probe.mask != probe.mask);
            if without_presence {
                self.violations.push(format!(
                    "after {event:?}: {entry:?} is bound without its presence bit"
                ));
            }
            if without_bit {
                self.violations.push(format!(
                    "after {event:?}: {entry:?} is bound without its port bit"
                ));
            }
            if target.flags & TARGET_GROUP != 0 && self.members(target.id).is_empty() {
                self.violations.push(format!(
                    "after {event:?}: {entry:?} points at group {}, which is empty",
                    target.id
                ));
            }
        }
        self.events.push(event);
    }
}

/// The error a failing syscall would give: `EIO`.
fn injected(call: &'static str) -> MapError {
    MapError::SyscallError(SyscallError {
        call,
        io_error: io::Error::from_raw_os_error(libc::EIO),
    })
}

impl Dataplane for MemoryDataplane {
    fn insert(&mut self, entry: &Entry, target: Target) -> Result<(), TableError> {
        let table = entry.table();
        if self.fails(Op::Insert) {
            return Err(TableError::Map {
                table,
                source: injected("bpf_map_update_elem"),
            });
        }
        if self.entries.contains_key(entry) {
            return Err(TableError::Exists { table });
        }
        // A wildcard is never full: the port table has an entry for every port.
        let held = self.entries.keys().filter(|e| e.table() == table).count();
        let wildcard = matches!(entry, Entry::Wildcard(_));
        if !wildcard && self.capacity.is_some_and(|capacity| held >= capacity) {
            return Err(TableError::Full { table });
        }
        self.entries.insert(*entry, target);
        self.record(Event::Insert(*entry, target));
        Ok(())
    }

    fn remove(&mut self, entry: &Entry) -> Result<(), TableError> {
        let table = entry.table();
        if self.fails(Op::Remove) {
            return Err(TableError::Map {
                table,
                source: injected("bpf_map_delete_elem"),
            });
        }
        self.entries
            .remove(entry)
            .ok_or(TableError::NotFound { table })?;
        self.record(Event::Remove(*entry));
        Ok(())
    }

    fn port_bits(&self, index: u32) -> Result<u32, TableError> {
        Ok(self.bits(index))
    }

    fn set_port_bits(&mut self, index: u32, bits: u32) -> Result<(), TableError> {
        if self.fails(Op::SetPortBits) {
            return Err(TableError::Map {
                table: maps::PORTS,
                source: injected("bpf_map_update_elem"),
            });
        }
        self.ports.insert(index, bits);
        self.record(Event::SetPortBits { index, bits });
        Ok(())
    }

    fn presence_filter(&self) -> demux_common::presence::Filter {
        self.filter
    }

    fn presence_word(&self, index: u32) -> Result<u64, TableError> {
        Ok(self.presence(index))
    }

    fn set_presence_word(&mut self, index: u32, word: u64) -> Result<(), TableError> {
        if self.fails(Op::SetPresence) {
            return Err(TableError::Map {
                table: maps::PRESENCE,
                source: injected("bpf_map_update_elem"),
            });
        }
        self.presence.insert(index, word);
        self.record(Event::SetPresence { index, word });
        Ok(())
    }

    fn set_group(&mut self, id: u32, members: &[u32]) -> Result<(), TableError> {
        group_value(id, members)?;
        if self.fails(Op::SetGroup) {
            return Err(TableError::Map {
                table: maps::GROUPS,
                source: injected("bpf_map_update_elem"),
            });
        }
        self.groups.insert(id, members.to_vec());
        self.record(Event::SetGroup {
            id,
            members: members.to_vec(),
        });
        Ok(())
    }

    fn reset_endpoint_stats(&mut self, id: u32) -> Result<(), CounterError> {
        if self.fails(Op::ResetStats) {
            return Err(CounterError::Reset {
                map: maps::ENDPOINT_STATS,
                index: id,
                source: injected("bpf_map_update_elem"),
            });
        }
        self.counters
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, EndpointStats::default());
        self.record(Event::ResetStats(id));
        Ok(())
    }

    fn set_local(&mut self, prefix: LocalPrefix, kind: LocalKind) -> Result<(), TableError> {
        if self.fails(Op::Local) {
            return Err(TableError::Map {
                table: maps::LOCAL_ADDRS,
                source: injected("bpf_map_update_elem"),
            });
        }
        self.local.insert(prefix, kind);
        self.record(Event::SetLocal(prefix, kind));
        Ok(())
    }

    fn remove_local(&mut self, prefix: LocalPrefix) -> Result<(), TableError> {
        if self.fails(Op::Local) {
            return Err(TableError::Map {
                table: maps::LOCAL_ADDRS,
                source: injected("bpf_map_delete_elem"),
            });
        }
        self.local.remove(&prefix).ok_or(TableError::NotFound {
            table: maps::LOCAL_ADDRS,
        })?;
        self.record(Event::RemoveLocal(prefix));
        Ok(())
    }

    fn set_iface(&mut self, ifindex: u32, number: u32, mac: [u8; 6]) -> Result<(), TableError> {
        let value = iface_slot(ifindex, number, mac)?;
        if self.fails(Op::Iface) {
            return Err(TableError::Map {
                table: maps::IFACE_SLOTS,
                source: injected("bpf_map_update_elem"),
            });
        }
        self.ifaces.insert(ifindex, value);
        self.record(Event::SetIface(ifindex, value));
        Ok(())
    }

    fn set_reuseport_socket(
        &mut self,
        slot: u32,
        socket: BorrowedFd<'_>,
    ) -> Result<(), ReuseportError> {
        self.reuseport_fails(maps::REUSEPORT_SOCKETS)?;
        let fd = socket.as_raw_fd();
        // As the kernel: one socket in one slot at most.
        if self
            .reuseport_sockets
            .iter()
            .any(|(at, held)| *held == fd && *at != slot)
        {
            return Err(ReuseportError::InAnotherArray { slot });
        }
        self.reuseport_sockets.insert(slot, fd);
        self.record(Event::SetReuseportSocket(slot, fd));
        Ok(())
    }

    fn clear_reuseport_socket(&mut self, slot: u32) -> Result<(), ReuseportError> {
        self.reuseport_fails(maps::REUSEPORT_SOCKETS)?;
        if self.reuseport_sockets.remove(&slot).is_some() {
            self.record(Event::ClearReuseportSocket(slot));
        }
        Ok(())
    }

    fn set_reuseport_cookie(&mut self, cookie: u64, group: u32) -> Result<(), ReuseportError> {
        self.reuseport_fails(maps::REUSEPORT_COOKIES)?;
        self.reuseport_cookies.insert(cookie, group);
        self.record(Event::SetReuseportCookie(cookie, group));
        Ok(())
    }

    fn remove_reuseport_cookie(&mut self, cookie: u64) -> Result<(), ReuseportError> {
        self.reuseport_fails(maps::REUSEPORT_COOKIES)?;
        if self.reuseport_cookies.remove(&cookie).is_some() {
            self.record(Event::RemoveReuseportCookie(cookie));
        }
        Ok(())
    }

    fn attach_reuseport(&mut self, socket: BorrowedFd<'_>) -> Result<(), ReuseportError> {
        if self.fails(Op::Reuseport) {
            return Err(ReuseportError::Attach(io::Error::from_raw_os_error(
                libc::EIO,
            )));
        }
        self.record(Event::AttachReuseport(socket.as_raw_fd()));
        Ok(())
    }

    fn detach_reuseport(&mut self, socket: BorrowedFd<'_>) -> Result<(), ReuseportError> {
        if self.fails(Op::Reuseport) {
            return Err(ReuseportError::Detach(io::Error::from_raw_os_error(
                libc::EIO,
            )));
        }
        self.record(Event::DetachReuseport(socket.as_raw_fd()));
        Ok(())
    }

    fn counters(&self) -> Arc<dyn Counters> {
        self.counters.clone()
    }
}

impl MemoryDataplane {
    /// Consumes one reuseport call: the injected failure of a write to `table`, if it is due.
    fn reuseport_fails(&mut self, table: &'static str) -> Result<(), ReuseportError> {
        match self.fails(Op::Reuseport) {
            true => Err(ReuseportError::Map(TableError::Map {
                table,
                source: injected("bpf_map_update_elem"),
            })),
            false => Ok(()),
        }
    }
}

impl MemoryCounters {
    /// Counts `packets` frames of `bytes` in all redirected to endpoint `id`, as the program
    /// would.
    pub fn redirect(&self, id: u32, packets: u64, bytes: u64) {
        let mut endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let stats = endpoints.entry(id).or_default();
        stats.packets += packets;
        stats.bytes += bytes;
    }

    /// Overwrites the verdict counters.
    pub fn set_verdicts(&self, counts: VerdictCounts) {
        *self.verdicts.lock().unwrap_or_else(PoisonError::into_inner) = counts;
    }
}

impl Counters for MemoryCounters {
    fn endpoint_stats(&self, id: u32) -> Result<EndpointStats, CounterError> {
        Ok(self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .copied()
            .unwrap_or_default())
    }

    fn verdicts(&self) -> Result<VerdictCounts, CounterError> {
        Ok(*self.verdicts.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
