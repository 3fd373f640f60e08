//! The cookie table `REUSEPORT_COOKIES` (`u64 socket cookie → u32 group id`) as a typed handle
//! taken at load: how `demux_reuseport` finds the demux group of the socket the kernel's lookup
//! found.

use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use demux_common::maps;

use super::ReuseportError;
use crate::{
    program::{take_map, LoadError},
    tables::{classify, TableError},
};

/// The `REUSEPORT_COOKIES` hash map of the loaded program.
pub(super) struct ReuseportCookiesMap(HashMap<MapData, u64, u32>);

impl ReuseportCookiesMap {
    /// Takes `REUSEPORT_COOKIES` out of `ebpf`, size-checked against `u64` and `u32`.
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        take_map(ebpf, maps::REUSEPORT_COOKIES, "a hash map").map(Self)
    }

    /// Records socket `cookie` as a member of group `group`.
    pub(super) fn set(&mut self, cookie: u64, group: u32) -> Result<(), ReuseportError> {
        self.0
            .insert(cookie, group, 0)
            .map_err(|source| ReuseportError::Map(classify(maps::REUSEPORT_COOKIES, source)))
    }

    /// Forgets socket `cookie`; an absent one is no error.
    pub(super) fn remove(&mut self, cookie: u64) -> Result<(), ReuseportError> {
        match self.0.remove(&cookie) {
            Ok(()) => Ok(()),
            Err(source) => match classify(maps::REUSEPORT_COOKIES, source) {
                TableError::NotFound { .. } => Ok(()),
                error => Err(ReuseportError::Map(error)),
            },
        }
    }
}
