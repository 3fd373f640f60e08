//! The reuseport socket array `REUSEPORT_SOCKETS` (`slot → backing socket`) as a typed handle
//! taken at load: member `i` of group `g` in slot `reuseport_slot(g, i)`, where the
//! `demux_reuseport` program selects it. The kernel keeps one socket in at most one slot of one
//! such array (`EBUSY` otherwise) and empties a slot by itself when its socket closes.

use std::os::fd::BorrowedFd;

use aya::{
    maps::{MapData, MapError, ReusePortSockArray},
    Ebpf,
};
use demux_common::maps;

use super::ReuseportError;
use crate::{
    program::{take_map, LoadError},
    tables::{classify, TableError},
};

/// The `REUSEPORT_SOCKETS` array of the loaded program.
pub(super) struct ReuseportSocketsMap(ReusePortSockArray<MapData>);

impl ReuseportSocketsMap {
    /// Takes `REUSEPORT_SOCKETS` out of `ebpf`, size-checked against `u32` slots and socket
    /// descriptors.
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        take_map(ebpf, maps::REUSEPORT_SOCKETS, "a reuseport socket array").map(Self)
    }

    /// Puts `socket` in `slot`, replacing what was there.
    pub(super) fn set(&mut self, slot: u32, socket: BorrowedFd<'_>) -> Result<(), ReuseportError> {
        self.0
            .set(slot, &socket, 0)
            .map_err(|source| match busy(&source) {
                true => ReuseportError::InAnotherArray { slot },
                false => ReuseportError::Map(classify(maps::REUSEPORT_SOCKETS, source)),
            })
    }

    /// Empties `slot`; an empty one is no error.
    pub(super) fn clear(&mut self, slot: u32) -> Result<(), ReuseportError> {
        match self.0.clear_index(&slot) {
            Ok(()) => Ok(()),
            Err(source) => match classify(maps::REUSEPORT_SOCKETS, source) {
                TableError::NotFound { .. } => Ok(()),
                error => Err(ReuseportError::Map(error)),
            },
        }
    }
}

/// Whether the kernel refused a socket already in a reuseport socket array (`EBUSY`).
fn busy(error: &MapError) -> bool {
    matches!(error, MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::EBUSY))
}
