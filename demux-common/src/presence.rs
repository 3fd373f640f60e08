//! The presence filter `PRESENCE`: a bit array that says, for a `CONNECTED` or `BOUND` key,
//! "perhaps bound" or "certainly not", so that a packet whose port has bindings in those tables
//! (the `PORTS` bits) but none for its own tuple skips the hash probe: a few multiplications and
//! one inlined array load instead of a helper call, jhash of a 20–40-byte key and a bucket walk
//! in a table of up to millions of buckets.
//!
//! One bit per key, at [`connected_bit`] or [`bound_bit`] (a multiply-xorshift hash of the key's
//! fields, IPv4 addresses as one word); a bit may stand for several keys (a false "perhaps": one
//! wasted probe), never for none while a key behind it is bound. The daemon counts keys per bit
//! (`demux::tables::Tables`), sets a bit before inserting the first key behind it and clears it
//! after removing the last, as with the `PORTS` bits. The hash is not keyed: a sender who picks
//! colliding tuples only gets the probe every packet paid before the filter.
//!
//! `PRESENCE` is an array of `PRESENCE_WORDS` `u64` words (4 MiB, 2^25 bits): at 1,000,000 keys
//! about 3% of absent tuples find their bit set. A word is written whole by `memcpy`; a reader
//! sees each byte old or new, and a write changes one bit, so every other bit reads as it was.

use crate::binding::FAMILY_IPV4;

/// log2 of the filter's bits.
pub const PRESENCE_BITS_LOG2: u32 = 25;
/// `u64` words of `PRESENCE`.
pub const PRESENCE_WORDS: u32 = 1 << (PRESENCE_BITS_LOG2 - 6);

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;
const SEED_CONNECTED: u64 = 0x6a09_e667_f3bc_c908;
const SEED_BOUND: u64 = 0xbb67_ae85_84ca_a73b;

#[inline(always)]
fn mix(h: u64, word: u32) -> u64 {
    let h = (h ^ u64::from(word)).wrapping_mul(MULTIPLIER);
    h ^ (h >> 29)
}

#[inline(always)]
fn word(addr: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]])
}

/// Mixes an address in: one word for IPv4 (the other 12 bytes are zero), four for IPv6.
#[inline(always)]
fn mix_addr(h: u64, family: u8, addr: &[u8; 16]) -> u64 {
    let h = mix(h, word(addr, 0));
    if family == FAMILY_IPV4 {
        return h;
    }
    mix(mix(mix(h, word(addr, 4)), word(addr, 8)), word(addr, 12))
}

#[inline(always)]
fn finish(h: u64) -> u32 {
    (h.wrapping_mul(MULTIPLIER) >> (64 - PRESENCE_BITS_LOG2)) as u32
}

/// The bit of a `BOUND` key.
#[inline(always)]
pub fn bound_bit(protocol: u8, family: u8, port: u16, local: &[u8; 16]) -> u32 {
    let h = mix(
        SEED_BOUND,
        u32::from(protocol) | u32::from(family) << 8 | u32::from(port) << 16,
    );
    finish(mix_addr(h, family, local))
}

/// The bit of a `CONNECTED` key.
#[inline(always)]
pub fn connected_bit(
    protocol: u8,
    family: u8,
    local_port: u16,
    remote_port: u16,
    local: &[u8; 16],
    remote: &[u8; 16],
) -> u32 {
    let h = mix(
        SEED_CONNECTED,
        u32::from(protocol) | u32::from(family) << 8 | u32::from(local_port) << 16,
    );
    let h = mix_addr(mix(h, u32::from(remote_port)), family, local);
    finish(mix_addr(h, family, remote))
}

/// The word of `bit` and the bit's mask in it.
#[inline(always)]
pub const fn word_and_mask(bit: u32) -> (u32, u64) {
    (bit >> 6, 1 << (bit & 63))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_fall_inside_the_filter_and_spread() {
        let local = [198, 18, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut seen = [false; 1024];
        let mut distinct = 0;
        for i in 0u32..1024 {
            let mut remote = [0u8; 16];
            remote[..4].copy_from_slice(&(0xc613_0000u32 + i).to_be_bytes());
            let bit = connected_bit(17, 4, 53, 1024, &local, &remote);
            assert!(bit < PRESENCE_WORDS * 64);
            let bucket = (bit >> (PRESENCE_BITS_LOG2 - 10)) as usize;
            distinct += usize::from(!seen[bucket]);
            seen[bucket] = true;
        }
        // 1,024 keys over 1,024 buckets of the filter: about 1 - 1/e of them hit, if spread.
        assert!(distinct > 550, "{distinct} of 1024 buckets");
        assert_ne!(bound_bit(17, 4, 53, &local), bound_bit(17, 4, 54, &local));
        assert_ne!(bound_bit(17, 4, 53, &local), bound_bit(6, 4, 53, &local));
    }
}
