//! The flow hash: over the 4-tuple, so every packet of one flow gets the same value and so the
//! same group member (SO_REUSEPORT semantics). Part of the ABI: user space recomputes it.

/// Hashes source and destination address and port. Addresses are 16-byte (IPv4 in the first 4).
#[inline(always)]
pub fn flow_hash(src_addr: &[u8; 16], dst_addr: &[u8; 16], src_port: u16, dst_port: u16) -> u32 {
    let mut h: u32 = 0x9e37_79b9;
    let mut i = 0;
    while i < 16 {
        h = mix(
            h,
            u32::from_le_bytes([
                src_addr[i],
                src_addr[i + 1],
                src_addr[i + 2],
                src_addr[i + 3],
            ]),
        );
        h = mix(
            h,
            u32::from_le_bytes([
                dst_addr[i],
                dst_addr[i + 1],
                dst_addr[i + 2],
                dst_addr[i + 3],
            ]),
        );
        i += 4;
    }
    h = mix(h, (u32::from(src_port) << 16) | u32::from(dst_port));
    // Final avalanche (murmur3 fmix32).
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn mix(h: u32, word: u32) -> u32 {
    (h ^ word).wrapping_mul(0x0100_0193).rotate_left(13)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_on_every_field() {
        let a = [1u8; 16];
        let b = [2u8; 16];
        let base = flow_hash(&a, &b, 1000, 53);
        assert_ne!(base, flow_hash(&b, &a, 1000, 53));
        assert_ne!(base, flow_hash(&a, &b, 1001, 53));
        assert_ne!(base, flow_hash(&a, &b, 1000, 54));
        let mut c = a;
        c[15] = 9;
        assert_ne!(base, flow_hash(&c, &b, 1000, 53));
        assert_eq!(base, flow_hash(&a, &b, 1000, 53));
    }

    #[test]
    fn spreads_over_members() {
        let mut seen = [0u32; 4];
        for port in 0..4000u16 {
            seen[(flow_hash(&[7; 16], &[8; 16], port, 53) % 4) as usize] += 1;
        }
        assert!(
            seen.iter().all(|&n| (800..1200).contains(&n)),
            "uneven spread: {seen:?}"
        );
    }
}
