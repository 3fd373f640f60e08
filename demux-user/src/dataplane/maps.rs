//! The real [`Dataplane`]: the typed handles of every map the daemon's rules write, taken from
//! the loaded object once (`crate::program::Loaded::load`), and the counters shared with the
//! statistics readers.

use std::{os::fd::BorrowedFd, sync::Arc};

use aya::{programs::ProgramFd, Ebpf};
use demux_common::{
    binding::{EndpointStats, Target},
    presence::Filter,
};

use super::{
    bindings::BindingMaps, group_value, groups::GroupsMap, iface_slots::IfaceSlotsMap,
    local_addrs::LocalAddrsMap, presence::PresenceMap, reuseport_cookies::ReuseportCookiesMap,
    reuseport_program::ReuseportProgram, reuseport_sockets::ReuseportSocketsMap, CounterError,
    Counters, Dataplane, LocalKind, LocalPrefix, ReuseportError,
};
use crate::{
    binding::Entry,
    endpoint_stats::{self, EndpointStatsReader, EndpointStatsWriter},
    program::LoadError,
    tables::TableError,
    verdicts::{VerdictCounts, VerdictsMap},
};

/// The loaded program's binding tables, port index, groups, host view, reuseport sockets and
/// counters, and the reuseport program.
pub struct Maps {
    bindings: BindingMaps,
    groups: GroupsMap,
    presence: PresenceMap,
    /// `PRESENCE`'s geometry, as loaded.
    filter: Filter,
    reuseport_sockets: ReuseportSocketsMap,
    reuseport_cookies: ReuseportCookiesMap,
    reuseport_program: ReuseportProgram,
    local_addrs: LocalAddrsMap,
    iface_slots: IfaceSlotsMap,
    endpoint_stats: EndpointStatsWriter,
    counters: Arc<MapCounters>,
}

/// The counters as the readers see them: `VERDICTS` and a reader's handle of `ENDPOINT_STATS`.
pub struct MapCounters {
    verdicts: VerdictsMap,
    endpoint_stats: EndpointStatsReader,
}

impl Maps {
    /// Takes the maps out of `ebpf`, each checked against its `demux-common` types, and keeps
    /// `reuseport`, a descriptor of the loaded `demux_reuseport` program; `filter` is the
    /// presence filter's geometry the program was loaded with.
    pub(crate) fn take(
        ebpf: &mut Ebpf,
        reuseport: ProgramFd,
        filter: Filter,
    ) -> Result<Self, LoadError> {
        let (writer, reader) = endpoint_stats::take(ebpf)?;
        Ok(Self {
            bindings: BindingMaps::take(ebpf)?,
            groups: GroupsMap::take(ebpf)?,
            presence: PresenceMap::take(ebpf)?,
            filter,
            reuseport_sockets: ReuseportSocketsMap::take(ebpf)?,
            reuseport_cookies: ReuseportCookiesMap::take(ebpf)?,
            reuseport_program: ReuseportProgram::new(reuseport),
            local_addrs: LocalAddrsMap::take(ebpf)?,
            iface_slots: IfaceSlotsMap::take(ebpf)?,
            endpoint_stats: writer,
            counters: Arc::new(MapCounters {
                verdicts: VerdictsMap::take(ebpf)?,
                endpoint_stats: reader,
            }),
        })
    }

    /// The verdict counters, summed over CPUs.
    pub fn verdicts(&self) -> Result<VerdictCounts, CounterError> {
        self.counters.verdicts()
    }

    /// Endpoint `id`'s counters, summed over CPUs.
    pub fn endpoint_stats(&self, id: u32) -> Result<EndpointStats, CounterError> {
        self.counters.endpoint_stats(id)
    }
}

impl Dataplane for Maps {
    fn insert(&mut self, entry: &Entry, target: Target) -> Result<(), TableError> {
        self.bindings.insert(entry, target)
    }

    fn remove(&mut self, entry: &Entry) -> Result<(), TableError> {
        self.bindings.remove(entry)
    }

    fn port_bits(&self, index: u32) -> Result<u32, TableError> {
        self.bindings.ports.get(index)
    }

    fn set_port_bits(&mut self, index: u32, bits: u32) -> Result<(), TableError> {
        self.bindings.ports.set(index, bits)
    }

    fn presence_filter(&self) -> Filter {
        self.filter
    }

    fn presence_word(&self, index: u32) -> Result<u64, TableError> {
        self.presence.get(index)
    }

    fn set_presence_word(&mut self, index: u32, word: u64) -> Result<(), TableError> {
        self.presence.set(index, word)
    }

    fn set_group(&mut self, id: u32, members: &[u32]) -> Result<(), TableError> {
        self.groups.set(id, &group_value(id, members)?)
    }

    fn reset_endpoint_stats(&mut self, id: u32) -> Result<(), CounterError> {
        self.endpoint_stats.reset(id)
    }

    fn set_local(&mut self, prefix: LocalPrefix, kind: LocalKind) -> Result<(), TableError> {
        self.local_addrs.set(prefix, kind)
    }

    fn remove_local(&mut self, prefix: LocalPrefix) -> Result<(), TableError> {
        self.local_addrs.remove(prefix)
    }

    fn set_iface(&mut self, ifindex: u32, number: u32, mac: [u8; 6]) -> Result<(), TableError> {
        self.iface_slots.set(ifindex, number, mac)
    }

    fn set_reuseport_socket(
        &mut self,
        slot: u32,
        socket: BorrowedFd<'_>,
    ) -> Result<(), ReuseportError> {
        self.reuseport_sockets.set(slot, socket)
    }

    fn clear_reuseport_socket(&mut self, slot: u32) -> Result<(), ReuseportError> {
        self.reuseport_sockets.clear(slot)
    }

    fn set_reuseport_cookie(&mut self, cookie: u64, group: u32) -> Result<(), ReuseportError> {
        self.reuseport_cookies.set(cookie, group)
    }

    fn remove_reuseport_cookie(&mut self, cookie: u64) -> Result<(), ReuseportError> {
        self.reuseport_cookies.remove(cookie)
    }

    fn attach_reuseport(&mut self, socket: BorrowedFd<'_>) -> Result<(), ReuseportError> {
        self.reuseport_program.attach(socket)
    }

    fn detach_reuseport(&mut self, socket: BorrowedFd<'_>) -> Result<(), ReuseportError> {
        ReuseportProgram::detach(socket)
    }

    fn counters(&self) -> Arc<dyn Counters> {
        self.counters.clone()
    }
}

impl Counters for MapCounters {
    fn endpoint_stats(&self, id: u32) -> Result<EndpointStats, CounterError> {
        self.endpoint_stats.read(id)
    }

    fn verdicts(&self) -> Result<VerdictCounts, CounterError> {
        self.verdicts.read()
    }
}
