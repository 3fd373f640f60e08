//! The presence filter `PRESENCE`: a blocked Bloom filter that says, for a `CONNECTED` or
//! `BOUND` key, "perhaps bound" or "certainly not", so that a packet whose port has bindings in
//! those tables (the `PORTS` bits) but none for its own tuple skips the hash probe: a few
//! multiplications and two inlined array loads instead of a helper call, jhash of a 20–40-byte
//! key and a bucket walk in a table of up to millions of buckets.
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
//! zero words. The bound key's sum is the first part of the connected key's.
//!
//! Shards: the filter is `2^shards_log2` arrays ("shards") of [`SHARD_WORDS`] words each, held
//! by the array of maps `PRESENCE`; a probe names its shard and its word in the shard. A shard
//! is sized so that the kernel allocates it with `kmalloc`, in the direct map, which this
//! architecture maps with huge pages: a BPF array of more than 32 KiB (header included) is
//! `vmalloc`ed in 4 KiB pages (`__bpf_map_area_alloc`, `PAGE_ALLOC_COSTLY_ORDER`), so a random
//! word of a one-piece 1 MiB filter costs a TLB miss (a nested page walk in a VM) on top of the
//! cache miss (measured in docs/BENCHMARKS.md, "Scale, part 4").
//!
//! Size: the daemon chooses the shards at load from the table size (`--max-bindings`,
//! [`Filter::for_bindings`]: [`BITS_PER_BINDING`] bits per binding over shards of a nominal
//! [`NOMINAL_SHARD_WORDS`] words, at least one shard, at most [`MAX_SHARDS`]), sets `PRESENCE`'s
//! entries to that and writes its log2 to the program's read-only global
//! [`SHARDS_LOG2_GLOBAL`] (frozen, so the mask is a constant to the verifier). At 1,000,000
//! keys in the default filter (32 shards, 1 MiB less 1.6%) about 4% of absent tuples find all
//! bits set; a filter that fits the CPU's cache beats a sparser one that does not (measured in
//! docs/BENCHMARKS.md). A word is written whole by `memcpy`; a reader sees each byte old or new,
//! and a write changes only one key's bits, so every other bit reads as it was.

use crate::binding::{FAMILY_IPV4, MAX_BINDINGS};

/// Name of the program's `u32` global holding the filter's `shards_log2`.
pub const SHARDS_LOG2_GLOBAL: &str = "DEMUX_PRESENCE_SHARDS_LOG2";

/// Filter bits per binding of a table's capacity (over nominal shards).
pub const BITS_PER_BINDING: u32 = 8;
/// Words a shard stands for when the filter is sized: 32 KiB.
pub const NOMINAL_SHARD_WORDS: u32 = 4096;
/// Words of one shard (an inner array of `PRESENCE`): as many as fit, with the kernel's
/// `struct bpf_array` header in front (312 bytes on Linux 6.x; [`KMALLOC_ARRAY_HEADER`] leaves
/// room for it to grow), in the 32 KiB that the kernel still allocates with `kmalloc`.
pub const SHARD_WORDS: u32 = 4032;
/// The room left for the kernel's array header in a 32 KiB allocation.
pub const KMALLOC_ARRAY_HEADER: u32 = 512;
/// The largest `BPF_MAP_TYPE_ARRAY` the kernel allocates with `kmalloc`:
/// `PAGE_SIZE << PAGE_ALLOC_COSTLY_ORDER` (4 KiB << 3).
pub const KMALLOC_ARRAY_LIMIT: u32 = 32 * 1024;
const _: () = assert!(SHARD_WORDS * 8 + KMALLOC_ARRAY_HEADER <= KMALLOC_ARRAY_LIMIT);
/// The largest filter: 2^7 shards (4 MiB less 1.6%).
pub const MAX_SHARDS_LOG2: u32 = 7;
/// `PRESENCE`'s entries in the object (the largest filter); the daemon sizes it at load.
pub const MAX_SHARDS: u32 = 1 << MAX_SHARDS_LOG2;

/// Constants of the sum of products (random odd 64-bit values).
const K: [u64; 12] = [
    0x9e37_79b9_7f4a_7c15,
    0xbf58_476d_1ce4_e5b9,
    0x94d0_49bb_1331_11eb,
    0xd6e8_feb8_6659_fd93,
    0xa076_1d64_78bd_642f,
    0xe703_7ed1_a0b4_28db,
    0x8ebc_6af0_9c88_c6e3,
    0x5899_65cc_7537_4cc3,
    0x1d8e_4e27_c47d_124f,
    0xff51_afd7_ed55_8ccd,
    0xc4ce_b9fe_1a85_ec53,
    0x2545_f491_4f6c_dd1d,
];
const SEED_BOUND: u64 = 0xbb67_ae85_84ca_a73b;
const SEED_CONNECTED: u64 = 0x6a09_e667_f3bc_c908;
const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

/// A filter's geometry: `2^shards_log2` shards of [`SHARD_WORDS`] words of 64 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    pub shards_log2: u32,
}

/// Where a key's bits are: word `word` of shard `shard`, the (up to three) bits of `mask`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Probe {
    pub shard: u32,
    pub word: u32,
    pub mask: u64,
}

impl Probe {
    /// The word's place in the whole filter, shards end to end (`shard * SHARD_WORDS + word`):
    /// how user space counts and addresses words.
    pub const fn index(self) -> u32 {
        self.shard * SHARD_WORDS + self.word
    }

    /// The (shard, word) of a whole-filter `index` ([`Probe::index`]).
    pub const fn split(index: u32) -> (u32, u32) {
        (index / SHARD_WORDS, index % SHARD_WORDS)
    }
}

impl Default for Filter {
    /// The filter of the object's own table size ([`MAX_BINDINGS`]).
    fn default() -> Self {
        Self::for_bindings(MAX_BINDINGS)
    }
}

impl Filter {
    /// The filter for tables of `bindings` entries each: [`BITS_PER_BINDING`] bits per binding
    /// over shards of [`NOMINAL_SHARD_WORDS`], rounded up to a power of two of shards, from one
    /// to [`MAX_SHARDS`].
    pub const fn for_bindings(bindings: u32) -> Self {
        let words = (bindings as u64 * BITS_PER_BINDING as u64).div_ceil(64);
        let mut shards_log2 = 0;
        while shards_log2 < MAX_SHARDS_LOG2 && ((NOMINAL_SHARD_WORDS as u64) << shards_log2) < words
        {
            shards_log2 += 1;
        }
        Self { shards_log2 }
    }

    /// Shards of the filter (entries of `PRESENCE`, each an array of [`SHARD_WORDS`]).
    pub const fn shards(self) -> u32 {
        1 << self.shards_log2
    }

    /// Words of the whole filter.
    pub const fn words(self) -> u32 {
        self.shards() * SHARD_WORDS
    }

    /// The probe of a `BOUND` key.
    #[inline(always)]
    pub fn bound(self, protocol: u8, family: u8, port: u16, local: &[u8; 16]) -> Probe {
        self.probe(SEED_BOUND ^ local_sum(protocol, family, port, local))
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
        let local = local_sum(protocol, family, local_port, local);
        let [r0, r1, r2, r3] = words(remote);
        let mut sum = local.wrapping_add(pair(u32::from(remote_port), K[6], r0, K[7]));
        if family != FAMILY_IPV4 {
            sum = sum
                .wrapping_add(pair(r1, K[8], r2, K[9]))
                .wrapping_add(u64::from(r3).wrapping_add(K[10]).wrapping_mul(K[11]));
        }
        self.probe(SEED_CONNECTED ^ sum)
    }

    /// The shard, word and three bits of hash sum `h` (three bits, not two: 3.8% false
    /// positives instead of 5.4% at 8 bits a key, `structured_keys_spread_like_random_ones`).
    /// The bits come from bits 0–17 of the finished hash, the shard from bits 18–24, the word
    /// from the top 32 bits scaled to [`SHARD_WORDS`] (a multiply and a shift, no division).
    #[inline(always)]
    fn probe(self, h: u64) -> Probe {
        let h = (h ^ (h >> 29)).wrapping_mul(MULTIPLIER);
        let h = h ^ (h >> 32);
        Probe {
            shard: (h >> 18) as u32 & (self.shards() - 1),
            word: (((h >> 32) * u64::from(SHARD_WORDS)) >> 32) as u32,
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

/// The sum of products of protocol, family, port and local address: the bound key's, and the
/// first half of the connected key's.
#[inline(always)]
fn local_sum(protocol: u8, family: u8, port: u16, local: &[u8; 16]) -> u64 {
    let head = u32::from(protocol) | u32::from(family) << 8 | u32::from(port) << 16;
    let [l0, l1, l2, l3] = words(local);
    let sum = pair(head, K[0], l0, K[1]);
    if family == FAMILY_IPV4 {
        // The other 12 bytes are zero: skip their products (a constant).
        return sum;
    }
    sum.wrapping_add(pair(l1, K[2], l2, K[3]))
        .wrapping_add(u64::from(l3).wrapping_add(K[4]).wrapping_mul(K[5]))
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
        assert_eq!(Filter::for_bindings(0).shards_log2, 0);
        assert_eq!(Filter::for_bindings(1).shards_log2, 0);
        // 32,768 bindings × 8 bits = 4,096 words: one shard.
        assert_eq!(Filter::for_bindings(1 << 15).shards_log2, 0);
        assert_eq!(Filter::for_bindings((1 << 15) + 8).shards_log2, 1);
        // 1,048,576 bindings × 8 bits = 2^17 words = 32 shards (1 MiB less 1.6%).
        assert_eq!(Filter::for_bindings(1 << 20).shards_log2, 5);
        assert_eq!(Filter::for_bindings(1 << 20).words(), 32 * 4032);
        assert_eq!(Filter::for_bindings((1 << 20) + 1).shards_log2, 6);
        assert_eq!(Filter::for_bindings(u32::MAX).shards_log2, MAX_SHARDS_LOG2);
        assert_eq!(Filter::default(), Filter::for_bindings(MAX_BINDINGS));
    }

    /// A shard with the kernel's 312-byte array header (Linux 6.x: `sizeof(struct bpf_array)`,
    /// the `memlock` of a one-entry array less its 8-byte value) fits the 32 KiB the kernel
    /// still allocates with `kmalloc`; one more nominal word per shard would not.
    #[test]
    fn a_shard_with_the_kernels_header_fits_kmalloc() {
        assert!(SHARD_WORDS * 8 + 312 <= KMALLOC_ARRAY_LIMIT);
        assert!(NOMINAL_SHARD_WORDS * 8 + 312 > KMALLOC_ARRAY_LIMIT);
    }

    #[test]
    fn probes_fall_inside_their_shard_with_one_to_three_bits() {
        for log2 in [0, 3, 5, MAX_SHARDS_LOG2] {
            let filter = Filter { shards_log2: log2 };
            for i in 0..2000u32 {
                let probe = filter.connected(17, 4, 53, i as u16, &v4(0xc612_0002), &v4(i));
                assert!(probe.shard < filter.shards());
                assert!(probe.word < SHARD_WORDS);
                assert!(probe.index() < filter.words());
                assert_eq!(Probe::split(probe.index()), (probe.shard, probe.word));
                assert!((1..=3).contains(&probe.mask.count_ones()));
            }
        }
    }

    /// Keys spread evenly over the shards and over the words of a shard, first to last (the
    /// word's multiply-shift reaches both ends; the shard bits do not collapse).
    #[test]
    fn keys_spread_evenly_over_shards_and_words() {
        let filter = Filter { shards_log2: 5 };
        const KEYS: u32 = 1 << 18;
        let mut per_shard = std::vec![0u32; filter.shards() as usize];
        let mut per_eighth = [0u32; 8];
        for i in 0..KEYS {
            let probe = filter.connected(
                17,
                4,
                7000 + (i >> 6) as u16,
                40000 + (i & 63) as u16,
                &v4(0xc612_0002),
                &v4(0xc612_0001),
            );
            per_shard[probe.shard as usize] += 1;
            per_eighth[(probe.word * 8 / SHARD_WORDS) as usize] += 1;
        }
        let even = KEYS / filter.shards();
        for (shard, n) in per_shard.iter().enumerate() {
            assert!(
                n.abs_diff(even) < even / 10,
                "shard {shard}: {n} keys, {even} expected"
            );
        }
        for (eighth, n) in per_eighth.iter().enumerate() {
            assert!(
                n.abs_diff(KEYS / 8) < KEYS / 80,
                "eighth {eighth} of the words: {n}"
            );
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
            words[p.index() as usize] |= p.mask;
        }
        let hits = (N..2 * N)
            .filter(|&i| {
                let p = probe(i);
                words[p.index() as usize] & p.mask == p.mask
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
    }
}
