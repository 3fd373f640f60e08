//! The seam between the daemon's rules and the BPF maps they write.
//!
//! [`Dataplane`] is everything `daemon::state::State` and [`crate::tables::Tables`] do to the
//! maps: insert and remove one binding, read and write a port-index entry, set a group's
//! members, zero an endpoint's counters; and the host's view the program checks destinations
//! against: the local routes (`LOCAL_HOSTS_V4`, `LOCAL_HOSTS_V6`, `LOCAL_ADDRS` and its counts
//! `LOCAL_PREFIXES`, written by `daemon::local_addrs`) and the attached interfaces (`IFACE_SLOTS`:
//! MAC address and block of AF_XDP slots); and the kernel's side of reuseport groups: the
//! backing sockets in `REUSEPORT_SOCKETS` slots, their cookies in `REUSEPORT_COOKIES`, and the
//! `demux_reuseport` program attached to their kernel groups. [`Counters`] is what the
//! statistics readers need: the
//! verdict and per-endpoint counters, readable through `&self` from any thread, so that `stats`,
//! `list` and the metrics never wait for a bind or a close.
//!
//! Two implementations: [`maps::Maps`], over the typed map handles taken from the loaded object
//! once at load (`crate::program::Loaded::load`), and `memory::MemoryDataplane` (tests and the
//! `testing` feature only), plain collections that can also play a full table or a failing
//! syscall, so the rules and their rollbacks are tested without root.

mod bindings;
mod groups;
mod iface_slots;
mod local_addrs;
pub mod maps;
#[cfg(any(test, feature = "testing"))]
pub mod memory;
mod ports;
mod presence;
mod reuseport_cookies;
mod reuseport_program;
mod reuseport_sockets;

use std::{io, os::fd::BorrowedFd, sync::Arc};

use aya::maps::MapError;
use demux_common::binding::{EndpointStats, Group, Target, MAX_GROUPS, MAX_GROUP_MEMBERS};
use thiserror::Error;

use crate::{binding::Entry, tables::TableError, verdicts::VerdictCounts};

#[cfg(test)]
pub(crate) use local_addrs::prefix;
pub use local_addrs::{LocalKind, LocalPrefix};

/// The map writes the daemon's rules make. Every method is one map update (or one read), so
/// each is atomic for the XDP program; keeping several in step is the caller's job.
pub trait Dataplane {
    /// Inserts one binding, never overwriting (`BPF_NOEXIST`): a key already present is
    /// [`TableError::Exists`], a full table [`TableError::Full`].
    fn insert(&mut self, entry: &Entry, target: Target) -> Result<(), TableError>;

    /// Removes one binding; an absent key is [`TableError::NotFound`].
    fn remove(&mut self, entry: &Entry) -> Result<(), TableError>;

    /// The bits of port-index entry `index` (`demux_common::ports`).
    fn port_bits(&self, index: u32) -> Result<u32, TableError>;

    /// Overwrites port-index entry `index` with `bits`.
    fn set_port_bits(&mut self, index: u32, bits: u32) -> Result<(), TableError>;

    /// The presence filter's geometry (`demux_common::presence`), as the program was loaded.
    fn presence_filter(&self) -> demux_common::presence::Filter;

    /// Word `index` of the presence filter (`demux_common::presence`).
    fn presence_word(&self, index: u32) -> Result<u64, TableError>;

    /// Overwrites word `index` of the presence filter.
    fn set_presence_word(&mut self, index: u32, word: u64) -> Result<(), TableError>;

    /// Sets the members of group `id` (an empty slice empties it): refused with
    /// [`TableError::BadGroup`] or [`TableError::GroupTooLarge`] before any write.
    fn set_group(&mut self, id: u32, members: &[u32]) -> Result<(), TableError>;

    /// Zeroes endpoint `id`'s counters, so that a reused id starts from nothing.
    fn reset_endpoint_stats(&mut self, id: u32) -> Result<(), CounterError>;

    /// Writes one local route (a host to `LOCAL_HOSTS_V4`/`_V6`, a wider prefix to
    /// `LOCAL_ADDRS`), overwriting its kind if present.
    fn set_local(&mut self, prefix: LocalPrefix, kind: LocalKind) -> Result<(), TableError>;

    /// Removes one local route; an absent one is [`TableError::NotFound`].
    fn remove_local(&mut self, prefix: LocalPrefix) -> Result<(), TableError>;

    /// Describes attached interface `ifindex` (`IFACE_SLOTS`): its own MAC address and, from its
    /// `number` (0 to `MAX_IFACES` − 1, [`TableError::BadIface`] otherwise), its block of
    /// `XSKS` slots. Until this is written the interface steers nothing.
    fn set_iface(&mut self, ifindex: u32, number: u32, mac: [u8; 6]) -> Result<(), TableError>;

    /// Puts `socket` in `REUSEPORT_SOCKETS` slot `slot` (`demux_common::maps::reuseport_slot`),
    /// replacing what was there. The kernel keeps a socket in one slot at most: a socket in
    /// another slot (or in another program's array) is [`ReuseportError::InAnotherArray`].
    fn set_reuseport_socket(
        &mut self,
        slot: u32,
        socket: BorrowedFd<'_>,
    ) -> Result<(), ReuseportError>;

    /// Empties `REUSEPORT_SOCKETS` slot `slot`; an empty one stays so.
    fn clear_reuseport_socket(&mut self, slot: u32) -> Result<(), ReuseportError>;

    /// Records the socket with cookie `cookie` (`SO_COOKIE`) as a member of group `group`
    /// (`REUSEPORT_COOKIES`).
    fn set_reuseport_cookie(&mut self, cookie: u64, group: u32) -> Result<(), ReuseportError>;

    /// Forgets socket cookie `cookie`; an absent one is no error.
    fn remove_reuseport_cookie(&mut self, cookie: u64) -> Result<(), ReuseportError>;

    /// Attaches `demux_reuseport` to the kernel reuseport group `socket` is a member of (the
    /// whole group runs it), replacing any program attached before.
    fn attach_reuseport(&mut self, socket: BorrowedFd<'_>) -> Result<(), ReuseportError>;

    /// Detaches the program of the kernel reuseport group `socket` is a member of; none is no
    /// error.
    fn detach_reuseport(&mut self, socket: BorrowedFd<'_>) -> Result<(), ReuseportError>;

    /// The counters, for readers on other threads.
    fn counters(&self) -> Arc<dyn Counters>;
}

/// A failed step in keeping a kernel reuseport group choosing as demux does.
#[derive(Debug, Error)]
pub enum ReuseportError {
    /// The backing socket's cookie could not be read.
    #[error("reuseport: reading the backing socket's cookie (SO_COOKIE): {0}")]
    Cookie(#[source] io::Error),
    /// The socket is in a reuseport socket array already (`EBUSY`): another slot, or an array
    /// of a program its owner attached.
    #[error(
        "reuseport: the backing socket is in a BPF reuseport socket array already (another \
         program's, EBUSY), so demux cannot put it in slot {slot} of its own; use a socket \
         that is in no REUSEPORT_SOCKARRAY"
    )]
    InAnotherArray {
        /// The slot asked for.
        slot: u32,
    },
    /// A map write failed (the map is named).
    #[error("reuseport: {0}")]
    Map(#[source] TableError),
    /// `SO_ATTACH_REUSEPORT_EBPF` failed.
    #[error(
        "reuseport: attaching demux_reuseport to the socket's group (SO_ATTACH_REUSEPORT_EBPF): \
         {0}"
    )]
    Attach(#[source] io::Error),
    /// `SO_DETACH_REUSEPORT_BPF` failed.
    #[error("reuseport: detaching the socket's group program (SO_DETACH_REUSEPORT_BPF): {0}")]
    Detach(#[source] io::Error),
}

/// The program's counters, read without any lock the writers hold.
pub trait Counters: Send + Sync {
    /// Packets and bytes redirected to endpoint `id`, summed over CPUs.
    fn endpoint_stats(&self, id: u32) -> Result<EndpointStats, CounterError>;

    /// Packets by verdict, summed over CPUs.
    fn verdicts(&self) -> Result<VerdictCounts, CounterError>;
}

/// A failed counter read or reset, naming the map and the slot.
#[derive(Debug, Error)]
pub enum CounterError {
    /// Reading one slot failed.
    #[error("map {map}: reading slot {index}: {source}")]
    Read {
        /// The map's name.
        map: &'static str,
        /// The slot.
        index: u32,
        /// What aya reported.
        #[source]
        source: MapError,
    },
    /// Zeroing one slot failed.
    #[error("map {map}: zeroing slot {index}: {source}")]
    Reset {
        /// The map's name.
        map: &'static str,
        /// The slot.
        index: u32,
        /// What aya reported.
        #[source]
        source: MapError,
    },
    /// The number of possible CPUs (the width of a per-CPU value) is unknown.
    #[error("counting the possible CPUs (/sys/devices/system/cpu/possible): {0}")]
    Cpus(#[source] io::Error),
}

/// The `GROUPS` value for `members`, or why there is none: both implementations refuse the
/// same groups.
pub(crate) fn group_value(id: u32, members: &[u32]) -> Result<Group, TableError> {
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
    Ok(group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_values_are_checked_before_any_write() {
        let group = group_value(3, &[7, 9]).expect("a valid group");
        assert_eq!((group.count, &group.members[..3]), (2, &[7, 9, 0][..]));
        assert!(matches!(
            group_value(MAX_GROUPS, &[1]),
            Err(TableError::BadGroup { id: MAX_GROUPS })
        ));
        let too_many: Vec<u32> = (1..=MAX_GROUP_MEMBERS as u32 + 1).collect();
        assert!(matches!(
            group_value(0, &too_many),
            Err(TableError::GroupTooLarge { id: 0, count }) if count == MAX_GROUP_MEMBERS + 1
        ));
    }

    #[test]
    fn an_interface_gets_its_block_of_slots_and_its_mac() {
        use demux_common::maps::{MAX_IFACES, MAX_QUEUES};
        let mac = [2, 0, 0, 0, 0, 2];
        let slot = iface_slots::iface_slot(7, 3, mac).expect("a valid interface number");
        assert_eq!(
            (slot.ifindex, slot.first_slot, slot.mac, slot._pad),
            (7, 3 * MAX_QUEUES, mac, [0; 2])
        );
        assert!(matches!(
            iface_slots::iface_slot(7, MAX_IFACES, mac),
            Err(TableError::BadIface { number: MAX_IFACES })
        ));
    }
}
