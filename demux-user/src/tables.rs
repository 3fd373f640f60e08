//! The daemon's bookkeeping of the binding tables: writes bindings through a [`Dataplane`] and
//! keeps the port index bits of `PORTS` in step. One binding is one map entry (a wildcard: the
//! fields of its port's `PORTS` entry), so each insert is atomic for the program; a batch that
//! fails part-way removes what it inserted, so the maps are never left half-updated.

use aya::maps::MapError;
use demux_common::{
    binding::{Target, FAMILY_IPV4, MAX_BINDINGS, MAX_GROUPS, MAX_GROUP_MEMBERS},
    maps,
    ports::{all_ports_index, port_bit, port_index, TABLE_BOUND, TABLE_CONNECTED, TABLE_PREFIX},
    presence::{Filter, Probe},
};
use thiserror::Error;

use crate::{binding::Entry, dataplane::Dataplane};

/// A failed table update, naming the table.
#[derive(Debug, Error)]
pub enum TableError {
    #[error("{table}: this binding is already held; close the endpoint that holds it first")]
    Exists { table: &'static str },
    #[error(
        "{table}: the table is full; remove bindings first, or restart the daemon with a larger \
         --max-bindings (at most {MAX_BINDINGS})"
    )]
    Full { table: &'static str },
    #[error("{table}: no such binding")]
    NotFound { table: &'static str },
    #[error(
        "group {id}: {count} members is more than {MAX_GROUP_MEMBERS}, the most a demux group \
         holds (a kernel reuseport group holds more); close a member first"
    )]
    GroupTooLarge { id: u32, count: usize },
    #[error("group {id}: not a group id (0-{max})", max = MAX_GROUPS - 1)]
    BadGroup { id: u32 },
    #[error("interface number {number}: a daemon attaches to at most {max} interfaces (0-{last})",
        max = demux_common::maps::MAX_IFACES, last = demux_common::maps::MAX_IFACES - 1)]
    BadIface { number: u32 },
    #[error(
        "WILDCARD: id {id} does not fit the port table's 16 bits (endpoint ids are below 65,536)"
    )]
    IdTooLarge { id: u32 },
    #[error("map {table}: {source}")]
    Map {
        table: &'static str,
        #[source]
        source: MapError,
    },
}

impl Entry {
    /// The name of the map this entry lives in: a prefix binding's family's trie
    /// (`PREFIX_V4` or `PREFIX_V6`, each of `--max-bindings` entries).
    pub fn table(&self) -> &'static str {
        match self {
            Entry::Connected(_) => maps::CONNECTED,
            Entry::Bound(_) => maps::BOUND,
            Entry::Prefix(key, _) if key.family == FAMILY_IPV4 => maps::PREFIX_V4,
            Entry::Prefix(..) => maps::PREFIX_V6,
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
    /// Keys per presence filter bit (`demux_common::presence`), by (word, bit number): tuple,
    /// source and bound keys alike, so a bit is cleared only when no key of any kind is left.
    presence: std::collections::HashMap<(u32, u32), u32>,
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
        let Some((index, bit)) = entry.port_slot() else {
            // A wildcard: the binding is its own entry of the port table.
            return dataplane.insert(entry, target);
        };
        if self.count(index, bit) == 0 {
            let bits = dataplane.port_bits(index)?;
            dataplane.set_port_bits(index, bits | bit)?;
        }
        *self.counts.entry((index, bit)).or_default() += 1;
        let probes = entry.presence_probes(dataplane.presence_filter());
        for (claimed, &probe) in probes.iter().enumerate() {
            if let Err(error) = self.claim_presence(dataplane, probe) {
                for &probe in &probes[..claimed] {
                    let _ = self.release_presence(dataplane, probe);
                }
                let _ = self.release(dataplane, index, bit);
                return Err(error);
            }
        }
        let result = dataplane.insert(entry, target);
        if result.is_err() {
            // Should clearing a bit fail, it stays set: a wasted probe, never a wrong match.
            for &probe in probes.iter() {
                let _ = self.release_presence(dataplane, probe);
            }
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
        // Every key's count drops even if a write fails (its bits then stay set: wasted probes).
        let mut result = Ok(());
        for &probe in entry.presence_probes(dataplane.presence_filter()).iter() {
            let released = self.release_presence(dataplane, probe);
            result = result.and(released);
        }
        result?;
        match entry.port_slot() {
            Some((index, bit)) => self.release(dataplane, index, bit),
            None => Ok(()),
        }
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

    /// Counts one more key behind the bits of `probe`, setting those that were clear first (in
    /// one write of the word). On a failure nothing is counted.
    fn claim_presence<D: Dataplane + ?Sized>(
        &mut self,
        dataplane: &mut D,
        probe: Probe,
    ) -> Result<(), TableError> {
        let clear = bits(probe.mask).any(|bit| !self.presence.contains_key(&(probe.word, bit)));
        if clear {
            let word = dataplane.presence_word(probe.word)?;
            dataplane.set_presence_word(probe.word, word | probe.mask)?;
        }
        for bit in bits(probe.mask) {
            *self.presence.entry((probe.word, bit)).or_default() += 1;
        }
        Ok(())
    }

    /// Drops one key behind the bits of `probe`, clearing each after its last key (in one write
    /// of the word).
    fn release_presence<D: Dataplane + ?Sized>(
        &mut self,
        dataplane: &mut D,
        probe: Probe,
    ) -> Result<(), TableError> {
        let mut unused = 0u64;
        for bit in bits(probe.mask) {
            let count = self.presence.entry((probe.word, bit)).or_default();
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.presence.remove(&(probe.word, bit));
                unused |= 1 << bit;
            }
        }
        if unused != 0 {
            let word = dataplane.presence_word(probe.word)?;
            dataplane.set_presence_word(probe.word, word & !unused)?;
        }
        Ok(())
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

/// The bit numbers (0–63) set in `mask`.
fn bits(mask: u64) -> impl Iterator<Item = u32> {
    (0..64).filter(move |bit| mask & (1 << bit) != 0)
}

impl Entry {
    /// The presence filter keys of this binding in `filter`, each counted on its own: a
    /// `CONNECTED` key's tuple and its source (protocol, family, remote address), a `BOUND`
    /// key; none for the other tables.
    pub(crate) fn presence_probes(&self, filter: Filter) -> Vec<Probe> {
        match self {
            Entry::Connected(k) => vec![
                filter.connected(
                    k.protocol,
                    k.family,
                    k.local_port,
                    k.remote_port,
                    &k.local_addr,
                    &k.remote_addr,
                ),
                filter.source(k.protocol, k.family, &k.remote_addr),
            ],
            Entry::Bound(k) => {
                vec![filter.bound(k.protocol, k.family, k.local_port, &k.local_addr)]
            }
            Entry::Prefix(..) | Entry::Wildcard(_) => Vec::new(),
        }
    }

    /// The port index entry and bit that announce this binding; `None` for a wildcard, which
    /// is held in its port's entry itself.
    pub(crate) fn port_slot(&self) -> Option<(u32, u32)> {
        Some(match self {
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
            Entry::Wildcard(_) => return None,
        })
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

#[cfg(test)]
mod tests {
    //! The port-index rules, over the in-memory dataplane, which also checks after every write
    //! that no binding is without its bit.

    use demux_common::binding::Target;

    use super::*;
    use crate::{
        binding::{Binding, Local, Protocol, Receiver},
        dataplane::memory::{Event, MemoryDataplane, Op},
    };

    /// The entry and target of a UDP binding on `local` (`ADDR:PORT` or `PREFIX:PORT|*`).
    fn udp(local: &str) -> (Entry, Target) {
        Binding {
            protocol: Protocol::Udp,
            local: local.parse::<Local>().expect("a valid local address"),
            remote: None,
            v6only: false,
        }
        .encode(Receiver::Endpoint(1))
        .expect("an encodable binding")
    }

    fn assert_kept_promises(dataplane: &MemoryDataplane) {
        assert!(
            dataplane.violations().is_empty(),
            "{:?}",
            dataplane.violations()
        );
    }

    #[test]
    fn the_bit_is_set_before_the_first_insert_and_cleared_after_the_last_removal() {
        let mut dataplane = MemoryDataplane::default();
        let mut tables = Tables::default();
        let (a, target) = udp("198.18.0.2:53");
        let (b, _) = udp("198.18.0.3:53");
        let (index, bit) = a.port_slot().expect("a bound binding has a bit");
        assert_eq!(
            b.port_slot(),
            Some((index, bit)),
            "same port, table and family"
        );

        tables.insert(&mut dataplane, &a, target).expect("insert a");
        assert_eq!(
            dataplane.events(),
            [
                Event::SetPortBits { index, bits: bit },
                Event::SetPresence {
                    index: a.presence_probes(Filter::default())[0].word,
                    word: a.presence_probes(Filter::default())[0].mask,
                },
                Event::Insert(a, target)
            ],
            "the bits first, then the binding"
        );
        tables.insert(&mut dataplane, &b, target).expect("insert b");
        tables.remove(&mut dataplane, &a).expect("remove a");
        assert_eq!(dataplane.bits(index), bit, "b still needs the bit");
        tables.remove(&mut dataplane, &b).expect("remove b");
        assert_eq!(dataplane.bits(index), 0, "cleared after the last binding");
        assert_eq!(
            dataplane.events().last(),
            Some(&Event::SetPortBits { index, bits: 0 }),
            "the binding first, then the bit"
        );
        assert_kept_promises(&dataplane);
    }

    #[test]
    fn bits_are_counted_per_table_and_family() {
        let mut dataplane = MemoryDataplane::default();
        let mut tables = Tables::default();
        let bound4 = udp("198.18.0.2:53");
        let bound6 = udp("[2001:2::2]:53");
        let wildcard4 = udp("0.0.0.0:53");
        for (entry, target) in [bound4, bound6, wildcard4] {
            tables
                .insert(&mut dataplane, &entry, target)
                .expect("insert");
        }
        let index = port_index(demux_common::binding::PROTO_UDP, 53);
        let all = port_bit(TABLE_BOUND, 4) | port_bit(TABLE_BOUND, 6);
        assert_eq!(dataplane.bits(index), all);
        tables.remove(&mut dataplane, &bound4.0).expect("remove");
        assert_eq!(
            dataplane.bits(index),
            all & !port_bit(TABLE_BOUND, 4),
            "only the IPv4 bound bit goes"
        );
        assert_kept_promises(&dataplane);
    }

    #[test]
    fn an_all_ports_prefix_sets_the_protocol_wide_entry() {
        let mut dataplane = MemoryDataplane::default();
        let mut tables = Tables::default();
        let (entry, target) = udp("198.18.0.0/15:*");
        tables
            .insert(&mut dataplane, &entry, target)
            .expect("insert");
        let index = all_ports_index(demux_common::binding::PROTO_UDP);
        assert_eq!(dataplane.bits(index), port_bit(TABLE_PREFIX, 4));
        tables.remove(&mut dataplane, &entry).expect("remove");
        assert!(!dataplane.any_port_bits());
    }

    #[test]
    fn a_refused_insert_leaves_the_port_index_as_before() {
        let mut dataplane = MemoryDataplane::with_capacity(1);
        let mut tables = Tables::default();
        let (held, target) = udp("198.18.0.2:53");
        tables
            .insert(&mut dataplane, &held, target)
            .expect("insert");
        // The same key again: the bit it shares with the held binding stays.
        let error = tables
            .insert(&mut dataplane, &held, target)
            .expect_err("held");
        assert!(
            matches!(error, TableError::Exists { table: "BOUND" }),
            "{error}"
        );
        let (index, bit) = held.port_slot().expect("a bit");
        assert_eq!(dataplane.bits(index), bit);
        // A full table: the new port's bit is cleared again.
        let (other, _) = udp("198.18.0.2:54");
        let error = tables
            .insert(&mut dataplane, &other, target)
            .expect_err("full");
        assert!(
            matches!(error, TableError::Full { table: "BOUND" }),
            "{error}"
        );
        assert_eq!(dataplane.bits(other.port_slot().expect("a bit").0), 0);
        // And the counts are right: removing the held binding clears its bit.
        tables.remove(&mut dataplane, &held).expect("remove");
        assert!(!dataplane.any_port_bits());
        assert_kept_promises(&dataplane);
    }

    #[test]
    fn each_family_has_its_own_prefix_table() {
        // The kernel holds the prefix bindings in two tries of `--max-bindings` entries each:
        // a full IPv4 trie leaves room for IPv6 prefixes, and the error names the full one.
        let mut dataplane = MemoryDataplane::with_capacity(1);
        let mut tables = Tables::default();
        for local in ["198.18.0.0/15:53", "[2001:2::]/48:53"] {
            let (entry, target) = udp(local);
            tables
                .insert(&mut dataplane, &entry, target)
                .unwrap_or_else(|error| panic!("{local}: {error}"));
        }
        for (local, table) in [
            ("198.18.0.0/16:54", "PREFIX_V4"),
            ("[2001:2::]/64:54", "PREFIX_V6"),
        ] {
            let (entry, target) = udp(local);
            let error = tables
                .insert(&mut dataplane, &entry, target)
                .expect_err("full");
            assert!(
                matches!(error, TableError::Full { table: t } if t == table),
                "{local}: {error}"
            );
        }
        assert_kept_promises(&dataplane);
    }

    #[test]
    fn a_failed_port_bit_write_inserts_nothing_and_counts_nothing() {
        let mut dataplane = MemoryDataplane::default();
        let mut tables = Tables::default();
        let (entry, target) = udp("198.18.0.2:53");
        dataplane.fail(Op::SetPortBits, 0);
        let error = tables
            .insert(&mut dataplane, &entry, target)
            .expect_err("injected");
        assert!(
            matches!(error, TableError::Map { table: "PORTS", .. }),
            "{error}"
        );
        assert!(dataplane.is_empty());
        // The next insert sets the bit again: no count was left behind.
        tables
            .insert(&mut dataplane, &entry, target)
            .expect("insert");
        let (index, bit) = entry.port_slot().expect("a bit");
        assert_eq!(dataplane.bits(index), bit);
        assert_kept_promises(&dataplane);
    }

    #[test]
    fn the_presence_bit_comes_and_goes_with_its_key() {
        let mut dataplane = MemoryDataplane::default();
        let mut tables = Tables::default();
        let (entry, target) = Binding {
            protocol: Protocol::Udp,
            local: "198.18.0.2:53".parse::<Local>().expect("local"),
            remote: Some("198.18.0.1:40000".parse().expect("remote")),
            v6only: false,
        }
        .encode(Receiver::Endpoint(1))
        .expect("encodable");
        let Probe { word, mask } = entry.presence_probes(Filter::default())[0];
        // A failed filter write, of the tuple's word and then of the source's: nothing
        // inserted, the port bit and the bits already set cleared again.
        for after in [0, 1] {
            dataplane.fail(Op::SetPresence, after);
            let error = tables
                .insert(&mut dataplane, &entry, target)
                .expect_err("injected");
            assert!(
                matches!(
                    error,
                    TableError::Map {
                        table: "PRESENCE",
                        ..
                    }
                ),
                "{error}"
            );
            assert!(dataplane.is_empty() && !dataplane.any_port_bits());
            assert!(!dataplane.any_presence_bits(), "failing write {after}");
        }
        tables
            .insert(&mut dataplane, &entry, target)
            .expect("insert");
        assert_eq!(dataplane.presence(word) & mask, mask, "set before the key");
        tables.remove(&mut dataplane, &entry).expect("remove");
        assert!(!dataplane.any_presence_bits(), "cleared after the key");
        assert!(!dataplane.any_port_bits());
        assert_kept_promises(&dataplane);
    }

    /// In a filter of 64 words, 600 keys (bound, connected and the connected keys' 10
    /// sources) share words and bits: each bit stays set while any key behind it is bound (the dataplane checks every key after every write) and goes with
    /// the last; every key is found "perhaps bound" throughout.
    #[test]
    fn shared_presence_bits_stay_until_their_last_key_goes() {
        let filter = Filter::for_bindings(0);
        let mut dataplane = MemoryDataplane::with_presence_filter(filter);
        let mut tables = Tables::default();
        let entries: Vec<(Entry, Target)> = (0..600u32)
            .map(|i| {
                let (v4, v6) = (i % 250, 0x2001_0002_u128 << 96 | u128::from(i));
                let local = if i % 2 == 0 {
                    format!("198.18.1.{v4}:{}", 53 + i % 7)
                } else {
                    format!("[{}]:53", std::net::Ipv6Addr::from(v6))
                };
                Binding {
                    protocol: Protocol::Udp,
                    local: local.parse::<Local>().expect("local"),
                    remote: (i % 3 == 0).then(|| {
                        format!("198.18.2.{}:{}", i % 20, 1024 + i)
                            .parse()
                            .expect("remote")
                    }),
                    v6only: false,
                }
                .encode(Receiver::Endpoint(1))
                .unwrap_or_else(|_| udp(&format!("198.18.3.{}:{}", i % 250, 1000 + i)))
            })
            .filter(|(entry, _)| !matches!(entry, Entry::Connected(k) if k.family == 6))
            .collect();
        let probes: std::collections::HashSet<Probe> = entries
            .iter()
            .flat_map(|(entry, _)| entry.presence_probes(filter))
            .collect();
        let words: std::collections::HashSet<u32> = probes.iter().map(|p| p.word).collect();
        assert!(words.len() < probes.len(), "keys must share words");
        for (entry, target) in &entries {
            tables
                .insert(&mut dataplane, entry, *target)
                .expect("insert");
        }
        assert_kept_promises(&dataplane);
        for (entry, _) in entries.iter().rev() {
            tables.remove(&mut dataplane, entry).expect("remove");
        }
        assert_kept_promises(&dataplane);
        assert!(
            !dataplane.any_presence_bits(),
            "every bit cleared at the end"
        );
    }

    /// A connected binding's UDP entry from `remote` to `local`.
    fn connected(local: &str, remote: &str) -> (Entry, Target) {
        Binding {
            protocol: Protocol::Udp,
            local: local.parse::<Local>().expect("local"),
            remote: Some(remote.parse().expect("remote")),
            v6only: false,
        }
        .encode(Receiver::Endpoint(1))
        .expect("encodable")
    }

    /// Whether all bits of `probe` are set.
    fn present(dataplane: &MemoryDataplane, probe: Probe) -> bool {
        dataplane.presence(probe.word) & probe.mask == probe.mask
    }

    /// The source key (protocol, family, remote address) is set while any connected binding
    /// from that address exists, whatever its local half, and cleared after the last.
    #[test]
    fn a_source_key_stays_until_its_last_connected_binding_goes() {
        let filter = Filter::default();
        let mut dataplane = MemoryDataplane::with_presence_filter(filter);
        let mut tables = Tables::default();
        let remote = [198, 18, 0, 1];
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&remote);
        let source = filter.source(demux_common::binding::PROTO_UDP, FAMILY_IPV4, &addr);
        let a = connected("198.18.0.2:53", "198.18.0.1:40000");
        let b = connected("198.18.0.3:54", "198.18.0.1:40001");
        let other = connected("198.18.0.2:53", "198.18.0.9:40000");
        tables.insert(&mut dataplane, &a.0, a.1).expect("insert a");
        assert!(present(&dataplane, source), "set before the first binding");
        tables.insert(&mut dataplane, &b.0, b.1).expect("insert b");
        tables
            .insert(&mut dataplane, &other.0, other.1)
            .expect("insert other");
        tables.remove(&mut dataplane, &a.0).expect("remove a");
        assert!(present(&dataplane, source), "b still comes from it");
        tables.remove(&mut dataplane, &b.0).expect("remove b");
        let other_probes = other.0.presence_probes(filter);
        let others_bits = other_probes
            .iter()
            .filter(|probe| probe.word == source.word)
            .fold(0, |bits, probe| bits | probe.mask);
        assert_eq!(
            dataplane.presence(source.word) & source.mask & !others_bits,
            0,
            "cleared after the last binding from it (but for bits the other binding's keys hold)"
        );
        assert!(other_probes.iter().all(|&probe| present(&dataplane, probe)));
        tables
            .remove(&mut dataplane, &other.0)
            .expect("remove other");
        assert!(!dataplane.any_presence_bits());
        assert_kept_promises(&dataplane);
    }

    #[test]
    fn insert_all_removes_what_it_inserted() {
        let mut dataplane = MemoryDataplane::with_capacity(2);
        let mut tables = Tables::default();
        let batch: Vec<(Entry, Target)> = (1..=3)
            .map(|port| udp(&format!("198.18.0.2:{port}")))
            .collect();
        let error = tables
            .insert_all(&mut dataplane, &batch)
            .expect_err("three do not fit in two");
        assert!(
            matches!(error, TableError::Full { table: "BOUND" }),
            "{error}"
        );
        assert!(dataplane.is_empty(), "the first two were removed again");
        assert!(!dataplane.any_port_bits(), "and their bits cleared");
        tables
            .insert_all(&mut dataplane, &batch[..2])
            .expect("two fit");
        assert_eq!(dataplane.len(), 2);
        assert_kept_promises(&dataplane);
    }
}
