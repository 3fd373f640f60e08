//! The presence filter `PRESENCE`: a blocked Bloom filter that says, for a `CONNECTED` or
//! `BOUND` key, "perhaps bound" or "certainly not", so that a packet whose port has bindings in
//! those tables (the `PORTS` bits) but none for its own tuple skips the hash probe: a few
//! multiplications and one inlined array load instead of a helper call, jhash of a 20–40-byte
//! key and a bucket walk in a table of up to millions of buckets.
//!
//! It also holds a third kind of key, the source of every `CONNECTED` binding (protocol,
//! family, remote address: [`Filter::source`]), which the program probes before the tuple's:
//! a packet from an address with no connected binding anywhere reads one word per source
//! address instead of one per tuple (a cache miss when traffic spreads over many tuples). The
//! source keys have words of their own after the others' ([`Filter::source_words`]: a quarter
//! as many, 256 KiB at the default size): room for 8 bits a source when the connected bindings
//! come from up to a quarter as many sources as the tables hold bindings, without making the
//! other keys' words any fuller, in a region that stays in the CPU's caches better than the
//! whole filter when every packet comes from another source that has connected bindings
//! (measured in docs/BENCHMARKS.md, "Scale, part 6" and "Scale, part 7"). A false positive
//! only costs the tuple's word, as before the source keys.
//!
//! A key's [`Probe`] is one `u64` word of the filter and three bits in it (`mask`; they may
//! coincide), from one 64-bit hash of the key's fields ([`Filter::bound`],
//! [`Filter::connected`]). The key is "perhaps bound" when all its bits are set. The bits may stand
//! for other keys too (a false "perhaps": one wasted probe), never for none while a key behind
//! them is bound. The daemon counts keys per bit (`demux::tables::Tables`), sets a key's bits
//! before inserting it and clears a bit after removing the last key behind it, as with the
//! `PORTS` bits. The hash is not keyed: a sender who picks colliding tuples only gets the probe
//! every packet paid before the filter.
//!
//! The hash is a sum of products of independent 32-bit words (each plus a constant), so its
//! multiplications run in parallel rather than in a chain (the IPv6 connected key has ten
//! words), then one multiply-xorshift finish; IPv4 addresses are the same formula with three
//! zero words. A connected key's sum is its local half's ([`LocalSum`], the bound key's sum)
//! plus its remote half's ([`RemoteSum`], the source key's sum) plus a product for the remote
//! port, so a packet computes each half once for its three probes.
//!
//! Size: `PRESENCE` has `2^words_log2` words for the tuple and bound keys and a quarter as many
//! for the source keys ([`Filter::entries`]), chosen by the daemon at load from the table size
//! (`--max-bindings`, [`Filter::for_bindings`]: [`BITS_PER_BINDING`] bits per binding, at least
//! [`MIN_WORDS_LOG2`], at most [`MAX_WORDS_LOG2`]), and written to the program's read-only
//! global [`WORDS_LOG2_GLOBAL`] (frozen, so the shift is a constant to the verifier). At
//! 1,000,000 keys in the default 1 MiB filter (8 bits a key) about 4% of absent tuples find all
//! bits set; a filter that fits the CPU's cache beats a sparser one that does not (measured in
//! docs/BENCHMARKS.md). One array, although the kernel `vmalloc`s it in 4 KiB pages: shards of
//! at most 32 KiB under an array of maps (`kmalloc`ed, huge-page mapped) cost the same per
//! packet at scale and more in cache ("Scale, part 5"). A word is written whole by `memcpy`; a
//! reader sees each byte old or new, and a write changes only one key's bits, so every other bit
//! reads as it was.

use crate::binding::{FAMILY_IPV4, MAX_BINDINGS};

/// Name of the program's `u32` global holding the filter's `words_log2`.
pub const WORDS_LOG2_GLOBAL: &str = "DEMUX_PRESENCE_WORDS_LOG2";

/// Filter bits per binding of a table's capacity.
pub const BITS_PER_BINDING: u32 = 8;
/// The smallest filter: 64 words (512 bytes).
pub const MIN_WORDS_LOG2: u32 = 6;
/// The largest filter: 2^19 words (4 MiB).
pub const MAX_WORDS_LOG2: u32 = 19;
/// `PRESENCE`'s entries in the object (the largest filter, [`Filter::entries`]); the daemon
/// sizes it at load.
pub const MAX_ENTRIES: u32 = Filter {
    words_log2: MAX_WORDS_LOG2,
}
.entries();

/// Constants of the sums of products (random odd 64-bit values): the local half's, the remote
/// half's and the remote port's.
const K_LOCAL: [u64; 6] = [
    0x9e37_79b9_7f4a_7c15,
    0xbf58_476d_1ce4_e5b9,
    0x94d0_49bb_1331_11eb,
    0xd6e8_feb8_6659_fd93,
    0xa076_1d64_78bd_642f,
    0xe703_7ed1_a0b4_28db,
];
const K_REMOTE: [u64; 6] = [
    0x8ebc_6af0_9c88_c6e3,
    0x5899_65cc_7537_4cc3,
    0x1d8e_4e27_c47d_124f,
    0xff51_afd7_ed55_8ccd,
    0xc4ce_b9fe_1a85_ec53,
    0x2545_f491_4f6c_dd1d,
];
const K_PORT: [u64; 2] = [0xd1b5_4a32_d192_ed03, 0xaef1_7502_108e_f2d9];
const SEED_BOUND: u64 = 0xbb67_ae85_84ca_a73b;
const SEED_CONNECTED: u64 = 0x6a09_e667_f3bc_c908;
const SEED_SOURCE: u64 = 0x3c6e_f372_fe94_f82b;
const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

/// The source keys have `1/2^SOURCE_SHARE_LOG2` as many words as the tuple and bound keys, after
/// theirs (256 KiB after the default 1 MiB): 8 bits a source for up to a quarter as many sources
/// as bindings, in a region that stays in the CPU's caches better than the whole filter. A
/// sixteenth (64 KiB) shared with the other keys filled to 78% of its bits with the classifier
/// benchmark's 265,000 sources, so that a packet from another address paid both words about half
/// the time; a quarter shared with them made their words there fuller ("Scale, part 7").
pub const SOURCE_SHARE_LOG2: u32 = 2;
const _: () = assert!(
    SOURCE_SHARE_LOG2 <= MIN_WORDS_LOG2,
    "the source region has a word"
);

/// A filter's geometry: `2^words_log2` words of 64 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    pub words_log2: u32,
}

/// Where a key's bits are: `word` of the filter, the (up to three) bits of `mask`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Probe {
    pub word: u32,
    pub mask: u64,
}

impl Default for Filter {
    /// The filter of the object's own table size ([`MAX_BINDINGS`]).
    fn default() -> Self {
        Self::for_bindings(MAX_BINDINGS)
    }
}

impl Filter {
    /// The filter for tables of `bindings` entries each: [`BITS_PER_BINDING`] bits per binding,
    /// rounded up to a power of two of words, within [`MIN_WORDS_LOG2`]–[`MAX_WORDS_LOG2`].
    pub const fn for_bindings(bindings: u32) -> Self {
        let words = (bindings as u64 * BITS_PER_BINDING as u64).div_ceil(64);
        let mut words_log2 = MIN_WORDS_LOG2;
        while words_log2 < MAX_WORDS_LOG2 && (1u64 << words_log2) < words {
            words_log2 += 1;
        }
        Self { words_log2 }
    }

    /// Words of the tuple and bound keys: `PRESENCE`'s first.
    pub const fn words(self) -> u32 {
        1 << self.words_log2
    }

    /// Words of the source keys: `PRESENCE`'s last, after [`Filter::words`].
    pub const fn source_words(self) -> u32 {
        self.words() >> SOURCE_SHARE_LOG2
    }

    /// Entries of `PRESENCE`: both kinds of words.
    pub const fn entries(self) -> u32 {
        self.words() + self.source_words()
    }

    /// The filter whose map has `entries` entries, if one has.
    pub fn of_entries(entries: u32) -> Option<Self> {
        (MIN_WORDS_LOG2..=MAX_WORDS_LOG2)
            .map(|words_log2| Self { words_log2 })
            .find(|filter| filter.entries() == entries)
    }

    /// The probe of a `BOUND` key.
    #[inline(always)]
    pub fn bound(self, protocol: u8, family: u8, port: u16, local: &[u8; 16]) -> Probe {
        self.bound_of(LocalSum::of(protocol, family, port, local))
    }

    /// The probe of the source of a `CONNECTED` key: its protocol, family and remote address.
    #[inline(always)]
    pub fn source(self, protocol: u8, family: u8, remote: &[u8; 16]) -> Probe {
        self.source_of(RemoteSum::of(protocol, family, remote))
    }

    /// The probe of a `CONNECTED` key.
    #[inline(always)]
    pub fn connected(
        self,
        protocol: u8,
        family: u8,
        local_port: u16,
        remote_port: u16,
        local: &[u8; 16],
        remote: &[u8; 16],
    ) -> Probe {
        self.connected_of(
            LocalSum::of(protocol, family, local_port, local),
            RemoteSum::of(protocol, family, remote),
            remote_port,
        )
    }

    /// The probe of the `BOUND` key whose sum is `local`.
    #[inline(always)]
    pub fn bound_of(self, local: LocalSum) -> Probe {
        self.probe(SEED_BOUND ^ local.0)
    }

    /// The probe of the source whose sum is `remote`, among the source words.
    #[inline(always)]
    pub fn source_of(self, remote: RemoteSum) -> Probe {
        let probe = self.probe_in(SEED_SOURCE ^ remote.0, self.words_log2 - SOURCE_SHARE_LOG2);
        Probe {
            word: self.words() + probe.word,
            ..probe
        }
    }

    /// The probe of the `CONNECTED` key made of the bound key `local`, the source `remote` and
    /// the remote port: the sums of both halves plus one product for the port.
    #[inline(always)]
    pub fn connected_of(self, local: LocalSum, remote: RemoteSum, remote_port: u16) -> Probe {
        let port = u64::from(remote_port)
            .wrapping_add(K_PORT[0])
            .wrapping_mul(K_PORT[1]);
        self.probe(SEED_CONNECTED ^ local.0.wrapping_add(remote.0).wrapping_add(port))
    }

    /// The word and three bits of hash sum `h` (three, not two: 3.8% false positives instead of
    /// 5.4% at 8 bits a key, `structured_keys_spread_like_random_ones`).
    #[inline(always)]
    fn probe(self, h: u64) -> Probe {
        self.probe_in(h, self.words_log2)
    }

    /// The probe of hash sum `h` among the first `2^words_log2` words.
    #[inline(always)]
    fn probe_in(self, h: u64, words_log2: u32) -> Probe {
        let h = (h ^ (h >> 29)).wrapping_mul(MULTIPLIER);
        let h = h ^ (h >> 32);
        let word = ((h >> 32) & ((1u64 << words_log2) - 1)) as u32;
        Probe {
            word,
            mask: 1 << (h & 63) | 1 << ((h >> 6) & 63) | 1 << ((h >> 12) & 63),
        }
    }
}

/// `(a + ka) * (b + kb)`, wrapping: one product of the sum.
#[inline(always)]
fn pair(a: u32, ka: u64, b: u32, kb: u64) -> u64 {
    u64::from(a)
        .wrapping_add(ka)
        .wrapping_mul(u64::from(b).wrapping_add(kb))
}

/// An address as four little-endian words (an IPv4 address: the first, then three zeros).
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_le_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// The sum of products of a key's local half (protocol, family, port, local address): the
/// bound key's, and a part of the connected key's; computed once per packet for both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalSum(u64);

impl LocalSum {
    /// The sum of a bound key, or of a connected key's local half.
    #[inline(always)]
    pub fn of(protocol: u8, family: u8, port: u16, local: &[u8; 16]) -> Self {
        let head = u32::from(protocol) | u32::from(family) << 8 | u32::from(port) << 16;
        Self(address_sum(head, words(local), family, &K_LOCAL))
    }
}

/// The sum of products of a key's remote half (protocol, family, remote address): the source
/// key's, and a part of the connected key's; computed once per packet for both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteSum(u64);

impl RemoteSum {
    /// The sum of a source key, or of a connected key's remote half.
    #[inline(always)]
    pub fn of(protocol: u8, family: u8, remote: &[u8; 16]) -> Self {
        let head = u32::from(protocol) | u32::from(family) << 8;
        Self(address_sum(head, words(remote), family, &K_REMOTE))
    }
}

/// `(head + k0)(a0 + k1)`, and for IPv6 `+ (a1 + k2)(a2 + k3) + (a3 + k4)·k5`: three
/// independent products (an IPv4 address's other 12 bytes are zero: their products, a
/// constant, are skipped).
#[inline(always)]
fn address_sum(head: u32, [a0, a1, a2, a3]: [u32; 4], family: u8, k: &[u64; 6]) -> u64 {
    let sum = pair(head, k[0], a0, k[1]);
    if family == FAMILY_IPV4 {
        return sum;
    }
    sum.wrapping_add(pair(a1, k[2], a2, k[3]))
        .wrapping_add(u64::from(a3).wrapping_add(k[4]).wrapping_mul(k[5]))
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::binding::{FAMILY_IPV6, PROTO_UDP};

    fn v4(a: u32) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&a.to_be_bytes());
        out
    }

    fn v6(a: u128) -> [u8; 16] {
        a.to_be_bytes()
    }

    #[test]
    fn sizes_follow_the_bindings_within_bounds() {
        assert_eq!(Filter::for_bindings(0).words_log2, MIN_WORDS_LOG2);
        assert_eq!(Filter::for_bindings(1).words_log2, MIN_WORDS_LOG2);
        // 1,048,576 bindings × 8 bits = 2^23 bits = 2^17 words (1 MiB).
        assert_eq!(Filter::for_bindings(1 << 20).words_log2, 17);
        assert_eq!(Filter::for_bindings((1 << 20) + 1).words_log2, 18);
        assert_eq!(Filter::for_bindings(u32::MAX).words_log2, MAX_WORDS_LOG2);
        assert_eq!(Filter::default(), Filter::for_bindings(MAX_BINDINGS));
        // The default's map: 1 MiB of tuple and bound words, 256 KiB of source words.
        assert_eq!(Filter::default().entries(), (1 << 17) + (1 << 15));
        for log2 in MIN_WORDS_LOG2..=MAX_WORDS_LOG2 {
            let filter = Filter { words_log2: log2 };
            assert_eq!(Filter::of_entries(filter.entries()), Some(filter));
        }
        assert_eq!(Filter::of_entries(1 << 17), None);
    }

    #[test]
    fn probes_fall_inside_the_filter_with_one_to_three_bits() {
        for log2 in [MIN_WORDS_LOG2, 10, 17, MAX_WORDS_LOG2] {
            let filter = Filter { words_log2: log2 };
            for i in 0..2000u32 {
                let probe = filter.connected(17, 4, 53, i as u16, &v4(0xc612_0002), &v4(i));
                assert!(probe.word < filter.words());
                assert!((1..=3).contains(&probe.mask.count_ones()));
                let source = filter.source(17, 4, &v4(i));
                assert!((filter.words()..filter.entries()).contains(&source.word));
                assert!((1..=3).contains(&source.mask.count_ones()));
            }
        }
    }

    /// The false-positive rate on structured keys (sequential addresses and ports, as a
    /// server's clients or the benchmarks' fillers are) is close to a random hash's: a filter
    /// sized for `n` keys holding `n` keys, probed with `n` absent keys of the same shape.
    fn false_positives(family: u8, connected: bool) -> f64 {
        const N: u32 = 1 << 16;
        let filter = Filter::for_bindings(N);
        let mut words = std::vec![0u64; filter.words() as usize];
        let addr = |i: u32| {
            if family == FAMILY_IPV4 {
                v4(0xc613_0000 + i)
            } else {
                v6(0x2001_0002_0000_0001_0000_0000_0000_0000 + u128::from(i))
            }
        };
        let probe = |i: u32| {
            let local = addr(i >> 8);
            if connected {
                filter.connected(
                    PROTO_UDP,
                    family,
                    53,
                    1024 + (i & 15) as u16,
                    &local,
                    &addr(i),
                )
            } else {
                filter.bound(PROTO_UDP, family, 53 + (i & 1) as u16, &addr(i))
            }
        };
        for i in 0..N {
            let p = probe(i);
            words[p.word as usize] |= p.mask;
        }
        let hits = (N..2 * N)
            .filter(|&i| {
                let p = probe(i);
                words[p.word as usize] & p.mask == p.mask
            })
            .count();
        hits as f64 / f64::from(N)
    }

    #[test]
    fn structured_keys_spread_like_random_ones() {
        // 8 bits a key, three bits in one word: a random hash gives about 3.7% (two bits: 5.3%).
        for family in [FAMILY_IPV4, FAMILY_IPV6] {
            for connected in [false, true] {
                let rate = false_positives(family, connected);
                assert!(
                    rate < 0.045,
                    "family {family} connected {connected}: {:.1}% false positives",
                    rate * 100.0
                );
            }
        }
    }

    #[test]
    fn every_field_moves_the_probe() {
        let f = Filter::default();
        let (a, b) = (v6(0x2001_0002 << 96 | 2), v6(0x2001_0002 << 96 | 1));
        let base = f.connected(17, 6, 53, 40000, &a, &b);
        assert_ne!(base, f.connected(6, 6, 53, 40000, &a, &b));
        assert_ne!(base, f.connected(17, 6, 54, 40000, &a, &b));
        assert_ne!(base, f.connected(17, 6, 53, 40001, &a, &b));
        assert_ne!(base, f.connected(17, 6, 53, 40000, &b, &a));
        for byte in 0..16 {
            let mut c = b;
            c[byte] ^= 1;
            assert_ne!(base, f.connected(17, 6, 53, 40000, &a, &c), "byte {byte}");
            let mut d = a;
            d[byte] ^= 1;
            assert_ne!(
                f.bound(17, 6, 53, &a),
                f.bound(17, 6, 53, &d),
                "byte {byte}"
            );
        }
        assert_ne!(f.bound(17, 4, 53, &v4(1)), f.bound(17, 4, 54, &v4(1)));
        // The source key: every address byte, the protocol and the family move it, and it is
        // not the bound key of the same address on port 0.
        for byte in 0..16 {
            let mut c = b;
            c[byte] ^= 1;
            assert_ne!(f.source(17, 6, &b), f.source(17, 6, &c), "byte {byte}");
        }
        assert_ne!(f.source(17, 6, &b), f.source(6, 6, &b));
        assert_ne!(f.source(17, 4, &v4(1)), f.source(17, 6, &v4(1)));
        assert_ne!(f.source(17, 6, &b), f.bound(17, 6, 0, &b));
    }

    #[test]
    fn source_keys_stay_in_their_region_and_spread_like_random_ones() {
        // Sequential client addresses, as many as fill the source region to 8 bits a key:
        // about 3.7%, as the other keys in the whole filter.
        const N: u32 = 1 << 16;
        let filter = Filter::for_bindings(N << SOURCE_SHARE_LOG2);
        assert_eq!(filter.source_words(), N * 8 / 64);
        let mut words = std::vec![0u64; filter.entries() as usize];
        for family in [FAMILY_IPV4, FAMILY_IPV6] {
            words.fill(0);
            let addr = |i: u32| {
                if family == FAMILY_IPV4 {
                    v4(0xc613_0000 + i)
                } else {
                    v6(0x2001_0002_0000_0001_0000_0000_0000_0000 + u128::from(i))
                }
            };
            for i in 0..N {
                let p = filter.source(PROTO_UDP, family, &addr(i));
                assert!((filter.words()..filter.entries()).contains(&p.word));
                words[p.word as usize] |= p.mask;
            }
            let hits = (N..2 * N)
                .filter(|&i| {
                    let p = filter.source(PROTO_UDP, family, &addr(i));
                    words[p.word as usize] & p.mask == p.mask
                })
                .count();
            let rate = hits as f64 / f64::from(N);
            assert!(rate < 0.045, "family {family}: {:.1}%", rate * 100.0);
        }
    }
}
