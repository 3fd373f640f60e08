//! The namespace's local routes `LOCAL_ADDRS` (an LPM trie, `demux_common::local`) as a typed
//! handle taken at load, and the user-side form of one entry: [`LocalPrefix`] and its
//! [`LocalKind`]. The daemon's follower (`daemon::local_addrs`) writes the set it reads from
//! the kernel's local routing table.

use std::net::IpAddr;

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        MapData,
    },
    Ebpf,
};
use demux_common::{
    binding::{FAMILY_IPV4, FAMILY_IPV6},
    local::{LocalKey, LOCAL_KEY_FIXED_BITS, LOCAL_KIND_BROADCAST, LOCAL_KIND_LOCAL},
    maps,
};

use crate::{
    binding::addr16,
    program::{take_map, LoadError},
    tables::{classify, TableError},
};

/// A local address or prefix: `addr` with its host bits clear beyond `len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalPrefix {
    pub addr: IpAddr,
    /// 0–32 for IPv4, 0–128 for IPv6.
    pub len: u8,
}

/// What the kernel does with unicast to a local route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LocalKind {
    /// `RTN_LOCAL`: delivered to this host's sockets.
    Local,
    /// `RTN_BROADCAST`: a subnet broadcast address, a copy to every listener.
    Broadcast,
}

impl LocalKind {
    /// The map value (`demux_common::local::LOCAL_KIND_*`).
    pub fn value(self) -> u32 {
        match self {
            LocalKind::Local => LOCAL_KIND_LOCAL,
            LocalKind::Broadcast => LOCAL_KIND_BROADCAST,
        }
    }
}

impl LocalPrefix {
    /// Whether `addr` lies in this prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        if self.addr.is_ipv4() != addr.is_ipv4() {
            return false;
        }
        let (a, b) = (addr16(self.addr), addr16(addr));
        (0..usize::from(self.len)).all(|bit| {
            let mask = 0x80 >> (bit % 8);
            a[bit / 8] & mask == b[bit / 8] & mask
        })
    }

    /// The trie key: the family and padding always match (32 bits), then `len` address bits.
    pub fn key(&self) -> Key<LocalKey> {
        Key::new(
            LOCAL_KEY_FIXED_BITS + u32::from(self.len),
            LocalKey {
                family: if self.addr.is_ipv4() {
                    FAMILY_IPV4
                } else {
                    FAMILY_IPV6
                },
                _pad: [0; 3],
                addr: addr16(self.addr),
            },
        )
    }
}

impl std::fmt::Display for LocalPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The `LOCAL_ADDRS` trie of the loaded program.
pub(super) struct LocalAddrsMap(LpmTrie<MapData, LocalKey, u32>);

impl LocalAddrsMap {
    /// Takes `LOCAL_ADDRS` out of `ebpf`, size-checked against [`LocalKey`] and `u32`.
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        take_map(ebpf, maps::LOCAL_ADDRS, "an LPM trie").map(Self)
    }

    /// Writes `prefix` with `kind` (overwrites its old kind).
    pub(super) fn set(&mut self, prefix: LocalPrefix, kind: LocalKind) -> Result<(), TableError> {
        self.0
            .insert(&prefix.key(), kind.value(), 0)
            .map_err(|source| classify(maps::LOCAL_ADDRS, source))
    }

    /// Removes `prefix`.
    pub(super) fn remove(&mut self, prefix: LocalPrefix) -> Result<(), TableError> {
        self.0
            .remove(&prefix.key())
            .map_err(|source| classify(maps::LOCAL_ADDRS, source))
    }
}
