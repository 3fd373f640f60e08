//! Building frames for tests and traffic: Ethernet, up to two VLAN tags, IPv4 (with options) or
//! IPv6 (with extension headers), then UDP, TCP or another protocol's bytes.

use std::net::{IpAddr, SocketAddr};

use demux_common::binding::{PROTO_TCP, PROTO_UDP};

/// IPv6 extension header kinds the builder can add.
pub const EXT_HOP_BY_HOP: u8 = 0;
pub const EXT_ROUTING: u8 = 43;
pub const EXT_FRAGMENT: u8 = 44;
pub const EXT_DEST_OPTS: u8 = 60;

/// One frame to build. Lengths and checksums (IPv4 header, UDP, TCP) are filled in by `build`,
/// so the kernel accepts what the XDP program passes on.
#[derive(Clone, Debug)]
pub struct FrameSpec {
    /// Destination and source MAC addresses.
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// Ether types of VLAN tags, outermost first (0x88a8, 0x8100).
    pub vlan_tags: Vec<u16>,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// IP protocol: 17 UDP, 6 TCP, anything else gets `payload` as its bytes.
    pub protocol: u8,
    /// IPv4 options bytes (a multiple of 4, at most 40).
    pub ipv4_options: usize,
    /// IPv6 extension headers, in order (`EXT_*`), 8 bytes each.
    pub ipv6_ext: Vec<u8>,
    /// IPv4 only: set the more-fragments flag.
    pub more_fragments: bool,
    /// TCP options bytes (a multiple of 4, at most 40).
    pub tcp_options: usize,
    pub payload: Vec<u8>,
}

impl FrameSpec {
    pub fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Self {
        Self {
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            vlan_tags: Vec::new(),
            src,
            dst,
            protocol: PROTO_UDP,
            ipv4_options: 0,
            ipv6_ext: Vec::new(),
            more_fragments: false,
            tcp_options: 0,
            payload: payload.to_vec(),
        }
    }

    pub fn tcp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Self {
        Self {
            protocol: PROTO_TCP,
            ..Self::udp(src, dst, payload)
        }
    }

    /// The frame's bytes.
    pub fn build(&self) -> Vec<u8> {
        let l4 = match self.protocol {
            PROTO_UDP => {
                let mut udp = Vec::new();
                udp.extend_from_slice(&self.src.port().to_be_bytes());
                udp.extend_from_slice(&self.dst.port().to_be_bytes());
                udp.extend_from_slice(&(8 + self.payload.len() as u16).to_be_bytes());
                udp.extend_from_slice(&[0, 0]);
                udp
            }
            PROTO_TCP => {
                let header_len = 20 + self.tcp_options;
                let mut tcp = Vec::new();
                tcp.extend_from_slice(&self.src.port().to_be_bytes());
                tcp.extend_from_slice(&self.dst.port().to_be_bytes());
                tcp.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
                tcp.push(((header_len / 4) as u8) << 4);
                tcp.extend_from_slice(&[0x02, 0xff, 0xff, 0, 0, 0, 0]); // SYN, window
                tcp.resize(header_len, 1); // options: NOPs
                tcp
            }
            _ => Vec::new(),
        };
        let mut transport = [l4.as_slice(), &self.payload].concat();
        let checksum_at = match self.protocol {
            PROTO_UDP => Some(6),
            PROTO_TCP => Some(16),
            _ => None,
        };
        if let Some(at) = checksum_at {
            let pseudo =
                pseudo_header(self.src.ip(), self.dst.ip(), self.protocol, transport.len());
            let mut sum = internet_checksum(&[&pseudo, &transport]);
            if sum == 0 && self.protocol == PROTO_UDP {
                sum = 0xffff; // 0 means "no checksum" in UDP
            }
            transport[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }

        let mut frame = [self.dst_mac, self.src_mac].concat();
        for tag in &self.vlan_tags {
            frame.extend_from_slice(&tag.to_be_bytes());
            frame.extend_from_slice(&[0, 42]); // TCI: VLAN 42
        }
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                frame.extend_from_slice(&0x0800u16.to_be_bytes());
                let header_len = 20 + self.ipv4_options;
                let total = (header_len + transport.len()) as u16;
                frame.push(0x40 | (header_len / 4) as u8);
                frame.push(0);
                frame.extend_from_slice(&total.to_be_bytes());
                frame.extend_from_slice(&[0, 1]);
                frame.extend_from_slice(
                    &(if self.more_fragments { 0x2000u16 } else { 0 }).to_be_bytes(),
                );
                frame.extend_from_slice(&[64, self.protocol, 0, 0]);
                frame.extend_from_slice(&src.octets());
                frame.extend_from_slice(&dst.octets());
                frame.resize(frame.len() + self.ipv4_options, 1); // options: NOPs
                let ip = frame.len() - header_len;
                let sum = internet_checksum(&[&frame[ip..]]);
                frame[ip + 10..ip + 12].copy_from_slice(&sum.to_be_bytes());
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                frame.extend_from_slice(&0x86ddu16.to_be_bytes());
                let payload_len = (8 * self.ipv6_ext.len() + transport.len()) as u16;
                let first = self.ipv6_ext.first().copied().unwrap_or(self.protocol);
                frame.extend_from_slice(&[0x60, 0, 0, 0]);
                frame.extend_from_slice(&payload_len.to_be_bytes());
                frame.extend_from_slice(&[first, 64]);
                frame.extend_from_slice(&src.octets());
                frame.extend_from_slice(&dst.octets());
                for (i, _) in self.ipv6_ext.iter().enumerate() {
                    let next = self.ipv6_ext.get(i + 1).copied().unwrap_or(self.protocol);
                    // Generic 8-byte header; a fragment header has the same size and the
                    // more-fragments bit set.
                    frame.extend_from_slice(&[next, 0, 0, 1, 0, 0, 0, 0]);
                }
            }
            _ => panic!("source and destination must be of one family"),
        }
        frame.extend_from_slice(&transport);
        frame
    }
}

/// Offset of the UDP payload in a frame without VLAN tags, IPv4 options or extension headers.
pub fn plain_udp_payload_offset(frame: &[u8]) -> usize {
    if frame[14] >> 4 == 4 {
        14 + 20 + 8
    } else {
        14 + 40 + 8
    }
}

/// Writes a sequence number and a send time (ns, CLOCK_MONOTONIC) at the start of the UDP
/// payload of a plain frame and keeps the UDP checksum valid (IPv4: none; IPv6: recomputed).
pub fn stamp_udp(frame: &mut [u8], seq: u64, sent_ns: u64) {
    let at = plain_udp_payload_offset(frame);
    if frame.len() >= at + 16 {
        frame[at..at + 8].copy_from_slice(&seq.to_le_bytes());
        frame[at + 8..at + 16].copy_from_slice(&sent_ns.to_le_bytes());
    }
    let l4 = at - 8;
    frame[l4 + 6..l4 + 8].copy_from_slice(&[0, 0]);
    if frame[14] >> 4 == 6 {
        let src = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&frame[22..38]).expect("16 bytes"));
        let dst = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&frame[38..54]).expect("16 bytes"));
        let pseudo = pseudo_header(src.into(), dst.into(), PROTO_UDP, frame.len() - l4);
        let mut sum = internet_checksum(&[&pseudo, &frame[l4..]]);
        if sum == 0 {
            sum = 0xffff;
        }
        frame[l4 + 6..l4 + 8].copy_from_slice(&sum.to_be_bytes());
    }
}

/// The six bytes of a MAC address written `02:00:00:00:00:0a`; `None` for anything else.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|part| u8::from_str_radix(part, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    bytes.try_into().ok()
}

/// A checksum [`corrupt_checksum`] breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corrupt {
    /// The IPv4 header's (IPv4 only).
    Ipv4Header,
    /// The UDP checksum: set (IPv4 too), then one bit off.
    Udp,
    /// The UDP checksum field zeroed: "none", which IPv4 allows and IPv6 does not.
    UdpZero,
    /// The TCP checksum, one bit off.
    Tcp,
}

/// Breaks the checksum `what` names in a plain frame (no VLAN tags, IPv4 options or extension
/// headers), as sent after [`stamp_udp`]; the kernel drops the result (but for
/// [`Corrupt::UdpZero`] over IPv4). Panics on a frame of another kind.
pub fn corrupt_checksum(frame: &mut [u8], what: Corrupt) {
    let v4 = frame[14] >> 4 == 4;
    let l4 = if v4 { 14 + 20 } else { 14 + 40 };
    let protocol = frame[if v4 { 14 + 9 } else { 14 + 6 }];
    let field = match what {
        Corrupt::Ipv4Header => {
            assert!(v4, "an IPv6 header has no checksum");
            14 + 10
        }
        Corrupt::Udp | Corrupt::UdpZero => {
            assert_eq!(protocol, PROTO_UDP, "not a UDP frame");
            l4 + 6
        }
        Corrupt::Tcp => {
            assert_eq!(protocol, PROTO_TCP, "not a TCP frame");
            l4 + 16
        }
    };
    let mut sum = u16::from_be_bytes([frame[field], frame[field + 1]]);
    match what {
        Corrupt::UdpZero => sum = 0,
        Corrupt::Udp => {
            // IPv4 frames go out without a UDP checksum: give them the right one first.
            let (src, dst): (IpAddr, IpAddr) = if v4 {
                let a = |at: usize| <[u8; 4]>::try_from(&frame[at..at + 4]).expect("4 bytes");
                (a(26).into(), a(30).into())
            } else {
                let a = |at: usize| <[u8; 16]>::try_from(&frame[at..at + 16]).expect("16 bytes");
                (a(22).into(), a(38).into())
            };
            frame[field..field + 2].copy_from_slice(&[0, 0]);
            let pseudo = pseudo_header(src, dst, PROTO_UDP, frame.len() - l4);
            sum = internet_checksum(&[&pseudo, &frame[l4..]]);
            if sum == 0 {
                sum = 0xffff;
            }
            // One bit off, never to 0 ("none").
            sum ^= if sum == 1 { 2 } else { 1 };
        }
        Corrupt::Ipv4Header | Corrupt::Tcp => sum ^= 1,
    }
    frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
}

/// The stamp `stamp_udp` wrote: (sequence number, send time in ns), from a UDP payload.
pub fn read_stamp(payload: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let sent = u64::from_le_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((seq, sent))
}

/// The pseudo header that UDP and TCP checksums cover.
fn pseudo_header(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> Vec<u8> {
    let mut pseudo = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, protocol]);
            pseudo.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, protocol]);
        }
        (s, d) => panic!("a frame from {s} to {d} mixes address families"),
    }
    pseudo
}

/// The ones' complement of the ones' complement sum of 16-bit words (RFC 1071).
fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for bytes in parts.iter().flat_map(|part| part.chunks(2)) {
        let word = u16::from_be_bytes([bytes[0], *bytes.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify() {
        let v4 = FrameSpec::udp(
            "198.18.0.1:1000".parse().unwrap(),
            "198.18.0.2:53".parse().unwrap(),
            b"abc",
        )
        .build();
        assert_eq!(internet_checksum(&[&v4[14..34]]), 0, "IPv4 header");
        let pseudo = pseudo_header(
            "198.18.0.1".parse().unwrap(),
            "198.18.0.2".parse().unwrap(),
            17,
            v4.len() - 34,
        );
        assert_eq!(internet_checksum(&[&pseudo, &v4[34..]]), 0, "UDP over IPv4");
        let v6 = FrameSpec::tcp(
            "[2001:2::1]:1000".parse().unwrap(),
            "[2001:2::2]:80".parse().unwrap(),
            b"x",
        )
        .build();
        let pseudo = pseudo_header(
            "2001:2::1".parse().unwrap(),
            "2001:2::2".parse().unwrap(),
            6,
            v6.len() - 54,
        );
        assert_eq!(internet_checksum(&[&pseudo, &v6[54..]]), 0, "TCP over IPv6");
    }

    #[test]
    fn stamps_keep_the_checksum_valid() {
        let mut v6 = FrameSpec::udp(
            "[2001:2::1]:1000".parse().unwrap(),
            "[2001:2::2]:53".parse().unwrap(),
            &[0; 18],
        )
        .build();
        stamp_udp(&mut v6, 7, 123_456);
        let pseudo = pseudo_header(
            "2001:2::1".parse().unwrap(),
            "2001:2::2".parse().unwrap(),
            17,
            v6.len() - 54,
        );
        assert_eq!(internet_checksum(&[&pseudo, &v6[54..]]), 0);
        assert_eq!(read_stamp(&v6[62..]), Some((7, 123_456)));
        let mut v4 = FrameSpec::udp(
            "198.18.0.1:1".parse().unwrap(),
            "198.18.0.2:2".parse().unwrap(),
            &[0; 18],
        )
        .build();
        stamp_udp(&mut v4, 1, 2);
        assert_eq!(&v4[40..42], &[0, 0], "IPv4 UDP goes without a checksum");
        assert_eq!(read_stamp(&v4[42..]), Some((1, 2)));
    }
}
