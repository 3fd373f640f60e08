//! Checksums as the kernel checks them on receive: the IPv4 header checksum, and the UDP and TCP
//! checksums over the pseudo-header and the segment, IPv4 and IPv6 (RFC 1071, RFC 768, RFC 8200
//! §8.1). The queue worker runs [`verify`] on every steered frame before it delivers it, since
//! the XDP program checks none of them (a 1,400-byte payload is too much for XDP's helpers).
//!
//! What counts as valid is what the kernel accepts: an IPv4 UDP checksum of 0 means "none"; an
//! IPv6 UDP checksum of 0 is refused (demux refuses backing sockets with `UDP_NO_CHECK6_RX`, the
//! only way the kernel would take one). A frame whose checksum the sender left partial
//! (CHECKSUM_PARTIAL, a veth with TX checksum offload on: only the pseudo-header sum in the
//! field) is refused as bad, because nothing in the frame tells it apart from a corrupted one.
//!
//! The sum reads the bytes in native-endian 64-bit chunks and adds their 32-bit halves into a
//! 64-bit accumulator, which cannot overflow for any frame (2^16 bytes at most, 2^33 per add),
//! then folds; ones' complement addition does not care about byte order (RFC 1071 §2(B)), so
//! one swap at the end gives the big-endian sum.

use demux_common::{
    binding::{FAMILY_IPV4, PROTO_TCP, PROTO_UDP},
    meta::PacketMeta,
};

/// Why a steered frame is not delivered. The worker counts all of them as
/// `dropped_bad_checksum`, except [`BadChecksum::Malformed`] (`dropped_bad_metadata`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadChecksum {
    #[error("bad IPv4 header checksum")]
    Ipv4Header,
    #[error("bad UDP checksum")]
    Udp,
    #[error("IPv6 UDP datagram without a checksum (0)")]
    UdpZeroIpv6,
    #[error("bad TCP checksum")]
    Tcp,
    #[error("the metadata's offsets do not fit the frame")]
    Malformed,
}

/// A running ones' complement sum of native-endian 16-bit words, not yet folded.
#[derive(Clone, Copy, Debug, Default)]
struct Sum(u64);

impl Sum {
    /// Adds `bytes`; only the last part of a sum may have an odd length (its last byte is
    /// padded with a zero, as RFC 1071 pads).
    #[inline]
    fn add(self, bytes: &[u8]) -> Self {
        let mut acc = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
            acc += (word & 0xffff_ffff) + (word >> 32);
        }
        let mut rest = chunks.remainder();
        if rest.len() >= 4 {
            acc += u64::from(u32::from_ne_bytes(rest[..4].try_into().expect("4 bytes")));
            rest = &rest[4..];
        }
        if rest.len() >= 2 {
            acc += u64::from(u16::from_ne_bytes([rest[0], rest[1]]));
            rest = &rest[2..];
        }
        if let [last] = rest {
            acc += u64::from(u16::from_ne_bytes([*last, 0]));
        }
        Self(acc)
    }

    /// The 16-bit ones' complement sum, as a big-endian number. All ones (0xffff) when the
    /// bytes summed include a correct checksum.
    #[inline]
    fn fold(self) -> u16 {
        let mut acc = self.0;
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        u16::from_be(acc as u16)
    }
}

/// The Internet checksum of `parts` taken as one byte string (each part but the last of even
/// length): the ones' complement of their ones' complement sum, the value a sender writes.
pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    !parts
        .iter()
        .fold(Sum::default(), |sum, part| sum.add(part))
        .fold()
}

/// Whether the IPv4 header `header` (options included) carries a correct checksum.
#[inline]
pub fn ipv4_header_ok(header: &[u8]) -> bool {
    Sum::default().add(header).fold() == 0xffff
}

/// Whether the UDP or TCP `segment` (header and payload, the checksum field included) sums to
/// all ones with its pseudo-header. `addresses` is the source and destination address, as they
/// lie in the IP header (8 bytes for IPv4, 32 for IPv6).
#[inline]
pub fn transport_ok(addresses: &[u8], protocol: u8, segment: &[u8]) -> bool {
    let len = segment.len() as u32;
    let sum = Sum::default().add(addresses);
    let sum = if addresses.len() == 8 {
        let [_, _, hi, lo] = len.to_be_bytes();
        sum.add(&[0, protocol, hi, lo])
    } else {
        let [a, b, c, d] = len.to_be_bytes();
        sum.add(&[a, b, c, d, 0, 0, 0, protocol])
    };
    sum.add(segment).fold() == 0xffff
}

/// Checks a steered frame's checksums as the kernel would before a socket sees it: the IPv4
/// header's, then the UDP datagram's (its length field's bytes) or the TCP segment's (to the end
/// of the IP packet), at the offsets the XDP program put in `meta`.
#[inline]
pub fn verify(frame: &[u8], meta: &PacketMeta) -> Result<(), BadChecksum> {
    use BadChecksum::Malformed;
    let l3 = usize::from(meta.l3_offset);
    let l4 = usize::from(meta.l4_offset);
    let (addresses, ip_end) = if meta.family == FAMILY_IPV4 {
        let fixed = frame.get(l3..l3 + 20).ok_or(Malformed)?;
        let header_len = usize::from(fixed[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        let header = frame.get(l3..l3 + header_len.max(20)).ok_or(Malformed)?;
        if !ipv4_header_ok(header) {
            return Err(BadChecksum::Ipv4Header);
        }
        (&fixed[12..20], l3 + total)
    } else {
        let fixed = frame.get(l3..l3 + 40).ok_or(Malformed)?;
        let payload = usize::from(u16::from_be_bytes([fixed[4], fixed[5]]));
        (&fixed[8..40], l3 + 40 + payload)
    };
    match meta.protocol {
        PROTO_UDP => {
            let header = frame.get(l4..l4 + 8).ok_or(Malformed)?;
            let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
            if header[6..8] == [0, 0] {
                return if meta.family == FAMILY_IPV4 {
                    Ok(())
                } else {
                    Err(BadChecksum::UdpZeroIpv6)
                };
            }
            let segment = frame.get(l4..l4 + len).ok_or(Malformed)?;
            if transport_ok(addresses, PROTO_UDP, segment) {
                Ok(())
            } else {
                Err(BadChecksum::Udp)
            }
        }
        PROTO_TCP => {
            let segment = frame.get(l4..ip_end).ok_or(Malformed)?;
            if transport_ok(addresses, PROTO_TCP, segment) {
                Ok(())
            } else {
                Err(BadChecksum::Tcp)
            }
        }
        _ => Err(Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{frame::FrameSpec, model::meta_for};
    use proptest::prelude::*;

    /// RFC 1071 word by word: the reference the fast sum is compared with.
    fn reference(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn frames() -> Vec<(&'static str, Vec<u8>)> {
        let v4 = (
            "198.18.0.1:4000".parse().unwrap(),
            "198.18.0.2:53".parse().unwrap(),
        );
        let v6 = (
            "[2001:2::1]:4000".parse().unwrap(),
            "[2001:2::2]:53".parse().unwrap(),
        );
        let odd: Vec<u8> = (0..37u8).map(|i| i.wrapping_mul(97)).collect();
        vec![
            ("udp4", FrameSpec::udp(v4.0, v4.1, b"hello").build()),
            ("udp4 odd", FrameSpec::udp(v4.0, v4.1, &odd).build()),
            (
                "udp4 options vlan",
                FrameSpec {
                    ipv4_options: 12,
                    vlan_tags: vec![0x88a8, 0x8100],
                    ..FrameSpec::udp(v4.0, v4.1, &odd)
                }
                .build(),
            ),
            ("udp6", FrameSpec::udp(v6.0, v6.1, b"hello").build()),
            (
                "udp6 ext",
                FrameSpec {
                    ipv6_ext: vec![0, 60],
                    ..FrameSpec::udp(v6.0, v6.1, &odd)
                }
                .build(),
            ),
            (
                "tcp4",
                FrameSpec {
                    tcp_options: 8,
                    ..FrameSpec::tcp(v4.0, v4.1, &odd)
                }
                .build(),
            ),
            ("tcp6", FrameSpec::tcp(v6.0, v6.1, b"GET /").build()),
            ("udp4 empty", FrameSpec::udp(v4.0, v4.1, b"").build()),
        ]
    }

    #[test]
    fn the_fast_sum_is_rfc_1071() {
        let bytes: Vec<u8> = (0..3000u32).map(|i| (i * 7919 % 251) as u8).collect();
        for len in 0..200 {
            for start in 0..9 {
                let part = &bytes[start..start + len];
                assert_eq!(internet_checksum(&[part]), reference(part), "{start}+{len}");
            }
        }
        assert_eq!(internet_checksum(&[&bytes]), reference(&bytes));
        assert_eq!(
            internet_checksum(&[&[0xff; 1500]]),
            reference(&[0xff; 1500])
        );
    }

    proptest! {
        #[test]
        fn the_fast_sum_agrees_with_the_reference(
            bytes in proptest::collection::vec(any::<u8>(), 0..2000),
            split in 0usize..1000,
        ) {
            prop_assert_eq!(internet_checksum(&[&bytes]), reference(&bytes));
            // Two parts, the first of even length, sum as one.
            let split = (split * 2).min(bytes.len() & !1);
            prop_assert_eq!(
                internet_checksum(&[&bytes[..split], &bytes[split..]]),
                reference(&bytes)
            );
        }
    }

    #[test]
    fn every_test_frame_is_valid() {
        for (name, frame) in frames() {
            let meta = meta_for(&frame).expect(name);
            assert_eq!(verify(&frame, &meta), Ok(()), "{name}");
        }
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        for (name, frame) in frames() {
            let meta = meta_for(&frame).unwrap();
            let l3 = usize::from(meta.l3_offset);
            let l4 = usize::from(meta.l4_offset);
            let udp_checksum = l4 + 6;
            // What the checksums cover: IPv4's whole header, IPv6's addresses (the rest of its
            // header and its extension headers are covered by none, for the kernel neither),
            // and the segment.
            let ip = if meta.family == FAMILY_IPV4 {
                l3..l4
            } else {
                l3 + 8..l3 + 40
            };
            for byte in ip.chain(l4..frame.len()) {
                for bit in 0..8 {
                    let mut bad = frame.clone();
                    bad[byte] ^= 1 << bit;
                    // The program would not steer it (another protocol, a fragment, lengths
                    // that no longer fit), or steer it with these offsets.
                    let Some(meta) = meta_for(&bad) else { continue };
                    let outcome = verify(&bad, &meta);
                    let v4_udp = meta.family == FAMILY_IPV4 && meta.protocol == PROTO_UDP;
                    if v4_udp && bad[udp_checksum..udp_checksum + 2] == [0, 0] {
                        // A flip that clears the field: "no checksum", which the kernel takes.
                        assert_eq!(outcome, Ok(()), "{name}: byte {byte} bit {bit}");
                        continue;
                    }
                    assert!(outcome.is_err(), "{name}: byte {byte} bit {bit} passed");
                }
            }
        }
    }

    #[test]
    fn reasons() {
        let v4 = FrameSpec::udp(
            "198.18.0.1:4000".parse().unwrap(),
            "198.18.0.2:53".parse().unwrap(),
            b"abc",
        )
        .build();
        let meta = meta_for(&v4).unwrap();
        let mut bad = v4.clone();
        bad[14 + 8] ^= 1; // TTL
        assert_eq!(verify(&bad, &meta), Err(BadChecksum::Ipv4Header));
        let mut bad = v4.clone();
        bad[14 + 20 + 8] ^= 1; // payload
        assert_eq!(verify(&bad, &meta), Err(BadChecksum::Udp));
        let mut none = v4.clone();
        none[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
        none[14 + 20 + 8] ^= 1; // no checksum: the payload is not checked
        assert_eq!(verify(&none, &meta), Ok(()));

        let v6 = FrameSpec::udp(
            "[2001:2::1]:4000".parse().unwrap(),
            "[2001:2::2]:53".parse().unwrap(),
            b"abc",
        )
        .build();
        let meta = meta_for(&v6).unwrap();
        let mut zero = v6.clone();
        zero[14 + 40 + 6..14 + 40 + 8].copy_from_slice(&[0, 0]);
        assert_eq!(verify(&zero, &meta), Err(BadChecksum::UdpZeroIpv6));

        let tcp = FrameSpec::tcp(
            "[2001:2::1]:4000".parse().unwrap(),
            "[2001:2::2]:80".parse().unwrap(),
            b"abc",
        )
        .build();
        let meta = meta_for(&tcp).unwrap();
        let mut bad = tcp.clone();
        bad[tcp.len() - 1] ^= 0x80;
        assert_eq!(verify(&bad, &meta), Err(BadChecksum::Tcp));
        let mut short = meta;
        short.l4_offset = 2000;
        assert_eq!(verify(&tcp, &short), Err(BadChecksum::Malformed));
    }

    #[test]
    fn the_generators_corruptions_are_caught() {
        use crate::testing::frame::{corrupt_checksum, stamp_udp, Corrupt};
        let v4 = (
            "198.18.0.1:4000".parse().unwrap(),
            "198.18.0.2:53".parse().unwrap(),
        );
        let v6 = (
            "[2001:2::1]:4000".parse().unwrap(),
            "[2001:2::2]:53".parse().unwrap(),
        );
        let cases = [
            (v4, false, Corrupt::Ipv4Header, Err(BadChecksum::Ipv4Header)),
            (v4, false, Corrupt::Udp, Err(BadChecksum::Udp)),
            (v4, false, Corrupt::UdpZero, Ok(())),
            (v6, false, Corrupt::Udp, Err(BadChecksum::Udp)),
            (v6, false, Corrupt::UdpZero, Err(BadChecksum::UdpZeroIpv6)),
            (v4, true, Corrupt::Tcp, Err(BadChecksum::Tcp)),
            (v6, true, Corrupt::Tcp, Err(BadChecksum::Tcp)),
        ];
        for ((src, dst), tcp, what, want) in cases {
            for seq in 0..300u64 {
                let mut frame = if tcp {
                    FrameSpec::tcp(src, dst, &[])
                } else {
                    FrameSpec::udp(src, dst, &[0x5a; 18])
                }
                .build();
                if !tcp {
                    stamp_udp(&mut frame, seq, seq.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                }
                let meta = meta_for(&frame).unwrap();
                assert_eq!(verify(&frame, &meta), Ok(()), "{what:?} {seq}: stamped");
                corrupt_checksum(&mut frame, what);
                assert_eq!(verify(&frame, &meta), want, "{what:?} {seq}");
            }
        }
    }

    #[test]
    fn a_partial_checksum_is_bad() {
        // What a veth with TX checksum offload hands over: the pseudo-header's sum, not
        // complemented, in the field (CHECKSUM_PARTIAL).
        let mut frame = FrameSpec::udp(
            "198.18.0.1:4000".parse().unwrap(),
            "198.18.0.2:53".parse().unwrap(),
            b"partial",
        )
        .build();
        let l4 = 14 + 20;
        let len = (frame.len() - l4) as u16;
        let [hi, lo] = len.to_be_bytes();
        let pseudo = !internet_checksum(&[&frame[26..34], &[0, PROTO_UDP, hi, lo]]);
        frame[l4 + 6..l4 + 8].copy_from_slice(&pseudo.to_be_bytes());
        let meta = meta_for(&frame).unwrap();
        assert_eq!(verify(&frame, &meta), Err(BadChecksum::Udp));
    }
}
