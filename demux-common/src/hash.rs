//! The flow hash: keyed SipHash-2-4 over the 4-tuple, so every packet of one flow gets the
//! same value and so the same group member (SO_REUSEPORT semantics), while a sender who does
//! not know the key cannot choose (or predict) the member its flow lands on. Part of the ABI:
//! user space recomputes it with the same key, and receivers see it in `PacketMeta::flow_hash`.
//!
//! The key is drawn by the daemon at every start and written into the program's read-only
//! global [`KEY_GLOBAL`] before load. SipHash is a pseudo-random function: seeing hash values
//! (which every receiver of a group does) reveals nothing usable about the key, unlike a keyed
//! jhash, which is no PRF (the kernel replaced keyed jhash by SipHash where outputs are seen,
//! e.g. the IP ID generator and the IPv6 route exception hash). SipHash-2-4 rather than 1-3:
//! the kernel's SipHash-1-3 (`hsiphash` on 64-bit) is meant only for outputs never exposed.
//!
//! The message is 36 bytes: source address, destination address (16 bytes each, IPv4 in the
//! first 4), source port and destination port (little-endian `u16`s); the hash is standard
//! SipHash-2-4 of those bytes, folded to 32 bits by XOR of its halves. Five compressions and
//! four finalisation rounds, all straight-line code: no loop for the verifier to bound.

/// Name of the program's read-only global (`.rodata`) that holds the [`FlowKey`].
pub const KEY_GLOBAL: &str = "DEMUX_FLOW_KEY";

/// The 128-bit secret key of the flow hash: SipHash's `k0` and `k1` (the key's bytes 0–7 and
/// 8–15, little-endian). Its `Debug` does not show the key.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    /// Key bytes 0–7, little-endian.
    pub k0: u64,
    /// Key bytes 8–15, little-endian.
    pub k1: u64,
}

impl FlowKey {
    /// The value the program is built with; the daemon always overrides it before load.
    pub const UNSET: FlowKey = FlowKey {
        k0: 0x756e_7365_7420_6b30,
        k1: 0x756e_7365_7420_6b31,
    };

    /// The key from 16 (random) bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> FlowKey {
        let [a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7] = bytes;
        FlowKey {
            k0: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            k1: u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7]),
        }
    }

    /// The key's 16 bytes (the inverse of [`FlowKey::from_bytes`]).
    pub const fn to_bytes(self) -> [u8; 16] {
        let [a0, a1, a2, a3, a4, a5, a6, a7] = self.k0.to_le_bytes();
        let [b0, b1, b2, b3, b4, b5, b6, b7] = self.k1.to_le_bytes();
        [
            a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7,
        ]
    }
}

impl core::fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("FlowKey(..)")
    }
}

/// Hashes source and destination address and port under `key`. Addresses are 16-byte (IPv4 in
/// the first 4).
#[inline(always)]
pub fn flow_hash(
    key: &FlowKey,
    src_addr: &[u8; 16],
    dst_addr: &[u8; 16],
    src_port: u16,
    dst_port: u16,
) -> u32 {
    let h = siphash24_36(
        key,
        [
            word(src_addr, 0),
            word(src_addr, 8),
            word(dst_addr, 0),
            word(dst_addr, 8),
        ],
        u32::from(src_port) | (u32::from(dst_port) << 16),
    );
    (h ^ (h >> 32)) as u32
}

/// Bytes `at..at + 8` of `bytes`, little-endian.
#[inline(always)]
fn word(bytes: &[u8; 16], at: usize) -> u64 {
    u64::from_le_bytes([
        bytes[at],
        bytes[at + 1],
        bytes[at + 2],
        bytes[at + 3],
        bytes[at + 4],
        bytes[at + 5],
        bytes[at + 6],
        bytes[at + 7],
    ])
}

/// SipHash-2-4 of a 36-byte message: four 8-byte words, then the last 4 bytes (`tail`,
/// little-endian), which share the final block with the length (36 << 56).
#[inline(always)]
fn siphash24_36(key: &FlowKey, words: [u64; 4], tail: u32) -> u64 {
    let mut v = [
        key.k0 ^ 0x736f_6d65_7073_6575,
        key.k1 ^ 0x646f_7261_6e64_6f6d,
        key.k0 ^ 0x6c79_6765_6e65_7261,
        key.k1 ^ 0x7465_6462_7974_6573,
    ];
    let [m0, m1, m2, m3] = words;
    compress(&mut v, m0);
    compress(&mut v, m1);
    compress(&mut v, m2);
    compress(&mut v, m3);
    compress(&mut v, (36u64 << 56) | u64::from(tail));
    v[2] ^= 0xff;
    round(&mut v);
    round(&mut v);
    round(&mut v);
    round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// One message block, two rounds (the "2" of SipHash-2-4).
#[inline(always)]
fn compress(v: &mut [u64; 4], m: u64) {
    v[3] ^= m;
    round(v);
    round(v);
    v[0] ^= m;
}

/// One SipRound.
#[inline(always)]
fn round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    const KEY: FlowKey =
        FlowKey::from_bytes([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);

    /// SplitMix64: distinct, well-spread test keys without a dependency.
    fn keys(n: u64) -> impl Iterator<Item = FlowKey> {
        let mut state = 0x1234_5678_u64;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        (0..n).map(move |_| FlowKey {
            k0: next(),
            k1: next(),
        })
    }

    /// The 36-byte message, as [`flow_hash`] defines it.
    fn message(src: &[u8; 16], dst: &[u8; 16], sport: u16, dport: u16) -> [u8; 36] {
        let mut m = [0u8; 36];
        m[..16].copy_from_slice(src);
        m[16..32].copy_from_slice(dst);
        m[32..34].copy_from_slice(&sport.to_le_bytes());
        m[34..].copy_from_slice(&dport.to_le_bytes());
        m
    }

    #[test]
    #[allow(deprecated)] // std's SipHasher is SipHash-2-4: the reference implementation.
    fn is_siphash_2_4_of_the_tuple() {
        use core::hash::Hasher as _;
        for (i, key) in keys(200).chain([KEY]).enumerate() {
            let src = [i as u8; 16];
            let dst = [(i * 7) as u8 ^ 0x5a; 16];
            let (sport, dport) = (i as u16 * 31, 53 + i as u16);
            let mut reference = std::hash::SipHasher::new_with_keys(key.k0, key.k1);
            reference.write(&message(&src, &dst, sport, dport));
            let full = reference.finish();
            assert_eq!(
                flow_hash(&key, &src, &dst, sport, dport),
                (full ^ (full >> 32)) as u32
            );
        }
    }

    #[test]
    fn key_bytes_round_trip() {
        assert_eq!(KEY.k0, 0x0706_0504_0302_0100);
        assert_eq!(FlowKey::from_bytes(KEY.to_bytes()), KEY);
        assert_eq!(std::format!("{KEY:?}"), "FlowKey(..)");
    }

    #[test]
    fn depends_on_every_field() {
        let a = [1u8; 16];
        let b = [2u8; 16];
        let base = flow_hash(&KEY, &a, &b, 1000, 53);
        assert_ne!(base, flow_hash(&KEY, &b, &a, 1000, 53));
        assert_ne!(base, flow_hash(&KEY, &a, &b, 1001, 53));
        assert_ne!(base, flow_hash(&KEY, &a, &b, 1000, 54));
        let mut c = a;
        c[15] = 9;
        assert_ne!(base, flow_hash(&KEY, &c, &b, 1000, 53));
        assert_eq!(base, flow_hash(&KEY, &a, &b, 1000, 53));
    }

    #[test]
    fn same_key_is_stable_and_different_flows_spread_over_members() {
        for key in keys(4) {
            let mut seen = [0u32; 4];
            for port in 0..4000u16 {
                let hash = flow_hash(&key, &[7; 16], &[8; 16], port, 53);
                assert_eq!(hash, flow_hash(&key, &[7; 16], &[8; 16], port, 53));
                seen[(hash % 4) as usize] += 1;
            }
            assert!(
                seen.iter().all(|&n| (850..1150).contains(&n)),
                "uneven spread: {seen:?}"
            );
        }
    }

    /// The point of the key: one flow's member is not fixed by the tuple. Over many keys, the
    /// member a fixed tuple picks among 4 is spread evenly, and among 32 nearly every member is
    /// picked by some key; the hashes themselves are all but all distinct.
    #[test]
    fn the_member_of_one_flow_depends_on_the_key() {
        let (src, dst) = (
            [198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [9u8; 16],
        );
        let mut of4 = [0u32; 4];
        let mut of32 = [0u32; 32];
        let mut hashes = std::collections::BTreeSet::new();
        for key in keys(4000) {
            let hash = flow_hash(&key, &src, &dst, 40000, 53);
            of4[(hash % 4) as usize] += 1;
            of32[(hash % 32) as usize] += 1;
            hashes.insert(hash);
        }
        assert!(
            of4.iter().all(|&n| (850..1150).contains(&n)),
            "one flow's member hardly depends on the key: {of4:?}"
        );
        assert!(
            of32.iter().all(|&n| n > 60),
            "some member is never picked: {of32:?}"
        );
        assert!(hashes.len() > 3990, "{} distinct hashes", hashes.len());
    }
}
