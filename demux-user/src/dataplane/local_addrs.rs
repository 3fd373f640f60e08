//! The namespace's local routes as typed handles taken at load, and the user-side form of one
//! entry: [`LocalPrefix`] and its [`LocalKind`]. The daemon's follower (`daemon::local_addrs`)
//! writes the set it reads from the kernel's local routing table.
//!
//! One route goes to one map (`demux_common::local`): a single host (`/32`, `/128`) to the
//! exact-match hash of its family (`LOCAL_HOSTS_V4`, `LOCAL_HOSTS_V6`) and its slot of the
//! direct-mapped cache `LOCAL_CACHE` (the one host there, none, or shared: the slot is turned
//! shared before the hash changes and settled after), anything wider to the
//! LPM trie `LOCAL_ADDRS`, whose entries per family are counted in `LOCAL_PREFIXES` so that the
//! program skips the trie when it is empty. The count is raised before a trie insert and
//! lowered after a trie removal: the program may walk an empty trie once (a wasted probe) but
//! never skips a prefix it holds. Routes inside 127.0.0.0/8 or 0.0.0.0/8 (the kernel's
//! `local 127.0.0.0/8` of loopback) are not written: the martian check passes every packet to
//! or from them before any lookup, and leaving them out keeps the IPv4 trie empty on most hosts.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap, HashSet},
    net::IpAddr,
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, MapData,
    },
    Ebpf,
};
use demux_common::{
    binding::{FAMILY_IPV4, FAMILY_IPV6},
    local::{
        address_words, local_cache_slot, LocalKey, LocalSlot, LOCAL_KEY_FIXED_BITS,
        LOCAL_KIND_BROADCAST, LOCAL_KIND_LOCAL, LOCAL_PREFIXES_V4, LOCAL_PREFIXES_V6,
        LOCAL_SLOT_EMPTY, LOCAL_SLOT_SHARED,
    },
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

impl LocalPrefix {
    /// A single host: `/32` or `/128`.
    pub fn is_host(&self) -> bool {
        u32::from(self.len) == if self.addr.is_ipv4() { 32 } else { 128 }
    }

    /// Inside 127.0.0.0/8 or 0.0.0.0/8: every packet it could match is a martian, passed before
    /// the program looks at local routes.
    pub fn is_shadowed_by_martian(&self) -> bool {
        match self.addr {
            IpAddr::V4(a) => self.len >= 8 && matches!(a.octets()[0], 0 | 127),
            IpAddr::V6(_) => false,
        }
    }
}

impl std::fmt::Display for LocalPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The local route maps of the loaded program, which trie prefixes this handle wrote (the
/// counts in `LOCAL_PREFIXES` follow them), and the single hosts of each `LOCAL_CACHE` slot
/// with what the slot holds now.
pub(super) struct LocalAddrsMap {
    hosts_v4: HashMap<MapData, [u8; 4], u32>,
    hosts_v6: HashMap<MapData, [u8; 16], u32>,
    cache: Array<MapData, LocalSlot>,
    prefixes: LpmTrie<MapData, LocalKey, u32>,
    counts: Array<MapData, u32>,
    written: HashSet<LocalPrefix>,
    /// Cache slot → the single-host routes in the hashes that map to it: (family, address) →
    /// kind.
    slot_hosts: StdHashMap<u32, BTreeMap<(u8, [u8; 16]), u8>>,
    /// Cache slot → its value as last written (absent: still all zero, empty).
    slot_values: StdHashMap<u32, LocalSlot>,
}

impl LocalAddrsMap {
    /// Takes `LOCAL_HOSTS_V4`, `LOCAL_HOSTS_V6`, `LOCAL_ADDRS` and `LOCAL_PREFIXES` out of
    /// `ebpf`, each size-checked against its key and value.
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        Ok(Self {
            hosts_v4: take_map(ebpf, maps::LOCAL_HOSTS_V4, "a hash map")?,
            hosts_v6: take_map(ebpf, maps::LOCAL_HOSTS_V6, "a hash map")?,
            cache: take_map(ebpf, maps::LOCAL_CACHE, "an array")?,
            prefixes: take_map(ebpf, maps::LOCAL_ADDRS, "an LPM trie")?,
            counts: take_map(ebpf, maps::LOCAL_PREFIXES, "an array")?,
            written: HashSet::new(),
            slot_hosts: StdHashMap::new(),
            slot_values: StdHashMap::new(),
        })
    }

    /// Writes `prefix` with `kind` (overwrites its old kind).
    pub(super) fn set(&mut self, prefix: LocalPrefix, kind: LocalKind) -> Result<(), TableError> {
        let value = kind.value();
        match prefix.addr {
            _ if prefix.is_shadowed_by_martian() => Ok(()),
            _ if prefix.is_host() => self.set_host(prefix.addr, Some(value)),
            _ => {
                let new = !self.written.contains(&prefix);
                if new {
                    // Counted before the program can find it.
                    self.set_count(&prefix, 1)?;
                }
                let result = self
                    .prefixes
                    .insert(&prefix.key(), value, 0)
                    .map_err(|source| classify(maps::LOCAL_ADDRS, source));
                match result {
                    Ok(()) if new => {
                        self.written.insert(prefix);
                        Ok(())
                    }
                    Err(e) if new => {
                        // Best effort: an over-count only costs a wasted probe.
                        let _ = self.set_count(&prefix, 0);
                        Err(e)
                    }
                    other => other,
                }
            }
        }
    }

    /// Removes `prefix`.
    pub(super) fn remove(&mut self, prefix: LocalPrefix) -> Result<(), TableError> {
        match prefix.addr {
            _ if prefix.is_shadowed_by_martian() => Ok(()),
            _ if prefix.is_host() => self.set_host(prefix.addr, None),
            _ => {
                self.prefixes
                    .remove(&prefix.key())
                    .map_err(|source| classify(maps::LOCAL_ADDRS, source))?;
                // Uncounted after the program can no longer find it.
                if self.written.remove(&prefix) {
                    self.set_count(&prefix, 0)?;
                }
                Ok(())
            }
        }
    }

    /// Writes single host `addr` with kind `value`, or removes it (`None`), in the family's
    /// hash and its `LOCAL_CACHE` slot: the slot is turned shared first (the program asks the
    /// hash, which is complete), then the hash changes, then the slot gets its final state.
    fn set_host(&mut self, addr: IpAddr, value: Option<u32>) -> Result<(), TableError> {
        let (family, bytes) = (family(addr), addr16(addr));
        let index = local_cache_slot(addr.is_ipv4(), &bytes);
        self.write_slot(
            index,
            LocalSlot {
                state: LOCAL_SLOT_SHARED,
                ..self.slot_value(index)
            },
        )?;
        let result = match (addr, value) {
            (IpAddr::V4(a), Some(value)) => self
                .hosts_v4
                .insert(a.octets(), value, 0)
                .map_err(|source| classify(maps::LOCAL_HOSTS_V4, source)),
            (IpAddr::V6(a), Some(value)) => self
                .hosts_v6
                .insert(a.octets(), value, 0)
                .map_err(|source| classify(maps::LOCAL_HOSTS_V6, source)),
            (IpAddr::V4(a), None) => self
                .hosts_v4
                .remove(&a.octets())
                .map_err(|source| classify(maps::LOCAL_HOSTS_V4, source)),
            (IpAddr::V6(a), None) => self
                .hosts_v6
                .remove(&a.octets())
                .map_err(|source| classify(maps::LOCAL_HOSTS_V6, source)),
        };
        if result.is_ok() {
            let hosts = self.slot_hosts.entry(index).or_default();
            match value {
                // The kinds are 1 and 2: they fit the slot's state byte.
                Some(value) => hosts.insert((family, bytes), value as u8),
                None => hosts.remove(&(family, bytes)),
            };
        }
        // Settled even after a failure: the slot then says what the hash still holds.
        self.settle_slot(index)?;
        result
    }

    /// Gives cache slot `index` its final state from the hosts that map to it: none → empty,
    /// one → that address and kind (its address written while the slot is still shared), more
    /// → shared.
    fn settle_slot(&mut self, index: u32) -> Result<(), TableError> {
        let current = self.slot_value(index);
        let hosts = self.slot_hosts.get(&index);
        let only = match hosts.map(BTreeMap::len).unwrap_or(0) {
            0 => {
                self.slot_hosts.remove(&index);
                return self.write_slot(
                    index,
                    LocalSlot {
                        state: LOCAL_SLOT_EMPTY,
                        ..current
                    },
                );
            }
            1 => hosts.and_then(|h| h.iter().next()).map(|(&k, &v)| (k, v)),
            _ => None,
        };
        let Some(((family, addr), kind)) = only else {
            return self.write_slot(
                index,
                LocalSlot {
                    state: LOCAL_SLOT_SHARED,
                    ..current
                },
            );
        };
        let mut slot = LocalSlot {
            addr: address_words(&addr),
            family,
            state: LOCAL_SLOT_SHARED,
            _pad: [0; 2],
        };
        self.write_slot(index, slot)?;
        slot.state = kind;
        self.write_slot(index, slot)
    }

    /// Cache slot `index` as last written.
    fn slot_value(&self, index: u32) -> LocalSlot {
        self.slot_values.get(&index).copied().unwrap_or_default()
    }

    /// Writes cache slot `index` unless it already holds `slot`.
    fn write_slot(&mut self, index: u32, slot: LocalSlot) -> Result<(), TableError> {
        if self.slot_value(index) == slot {
            return Ok(());
        }
        self.cache
            .set(index, slot, 0)
            .map_err(|source| classify(maps::LOCAL_CACHE, source))?;
        self.slot_values.insert(index, slot);
        Ok(())
    }

    /// Writes the `LOCAL_PREFIXES` count of `prefix`'s family: the prefixes written so far of
    /// that family, plus `extra` (1 before the insert of a new one).
    fn set_count(&mut self, prefix: &LocalPrefix, extra: u32) -> Result<(), TableError> {
        let v4 = prefix.addr.is_ipv4();
        let count = self
            .written
            .iter()
            .filter(|p| p.addr.is_ipv4() == v4)
            .count() as u32
            + extra;
        let index = if v4 {
            LOCAL_PREFIXES_V4
        } else {
            LOCAL_PREFIXES_V6
        };
        self.counts
            .set(index, count, 0)
            .map_err(|source| classify(maps::LOCAL_PREFIXES, source))
    }
}

/// The ABI family byte of `addr`.
fn family(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        FAMILY_IPV4
    } else {
        FAMILY_IPV6
    }
}

/// `ADDR/LEN` as a prefix, for tests.
#[cfg(test)]
pub(crate) fn prefix(text: &str) -> LocalPrefix {
    let (addr, len) = text.split_once('/').expect("addr/len");
    LocalPrefix {
        addr: addr.parse().expect("address"),
        len: len.parse().expect("length"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which map a route goes to: hosts to the exact hashes, the rest to the trie, and nothing
    /// for what the martian check already passes.
    #[test]
    fn routes_are_split_by_kind_of_prefix() {
        for (text, host, shadowed) in [
            ("198.18.0.2/32", true, false),
            ("198.18.8.0/24", false, false),
            ("2001:2::2/128", true, false),
            ("2001:2::/64", false, false),
            ("::1/128", true, false),
            ("127.0.0.0/8", false, true),
            ("127.0.0.1/32", true, true),
            ("127.255.255.255/32", true, true),
            ("0.0.0.0/8", false, true),
            ("96.0.0.0/3", false, false),
            ("0.0.0.0/0", false, false),
        ] {
            let p = prefix(text);
            assert_eq!(
                (p.is_host(), p.is_shadowed_by_martian()),
                (host, shadowed),
                "{text}"
            );
        }
    }
}
