//! A steered frame, as an endpoint receives it: the transport payload (UDP) or the whole segment
//! (TCP), the peer and local socket addresses and the protocol, read at the offsets the XDP
//! program put in the metadata, so nothing is parsed twice. A UDP datagram the kernel delivered
//! to a backing socket has no frame; [`Datagram::udp_frame`] rebuilds one for pcap sinks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::checksum;

use demux_common::{
    binding::{FAMILY_IPV4, PROTO_TCP, PROTO_UDP},
    meta::PacketMeta,
};

/// One received datagram (UDP payload) or segment (TCP header and payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram<'a> {
    pub protocol: u8,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub payload: &'a [u8],
}

impl<'a> Datagram<'a> {
    /// Reads a steered frame. `None` if the metadata does not fit the frame (which the program
    /// never produces; the worker counts it as a drop).
    #[inline]
    pub fn from_frame(frame: &'a [u8], meta: &PacketMeta) -> Option<Self> {
        let l3 = usize::from(meta.l3_offset);
        let l4 = usize::from(meta.l4_offset);
        let (src, dst, ip_end) = if meta.family == FAMILY_IPV4 {
            let ip = frame.get(l3..l3 + 20)?;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
            (src, dst, l3 + total)
        } else {
            let ip = frame.get(l3..l3 + 40)?;
            let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let src = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).ok()?));
            let dst = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?));
            (src, dst, l3 + 40 + payload)
        };
        let l4_header = frame.get(l4..l4 + 4)?;
        let src_port = u16::from_be_bytes([l4_header[0], l4_header[1]]);
        let dst_port = u16::from_be_bytes([l4_header[2], l4_header[3]]);
        let payload = match meta.protocol {
            PROTO_UDP => {
                let udp_len = usize::from(u16::from_be_bytes(
                    frame.get(l4 + 4..l4 + 6)?.try_into().ok()?,
                ));
                frame.get(usize::from(meta.payload_offset)..l4 + udp_len)?
            }
            // The kernel's TCP never sees these segments: the endpoint gets all of it.
            PROTO_TCP => frame.get(l4..ip_end)?,
            _ => return None,
        };
        Some(Self {
            protocol: meta.protocol,
            peer: SocketAddr::new(src, src_port),
            local: SocketAddr::new(dst, dst_port),
            payload,
        })
    }
}

impl Datagram<'_> {
    /// An Ethernet frame carrying this UDP datagram (zero MAC addresses, IPv4 header and UDP
    /// checksums set), for a pcap sink: what a datagram read from a backing socket looks like in
    /// a capture. `None` when the addresses are of different families or the payload
    /// is too long for one IP packet.
    pub fn udp_frame(&self) -> Option<Vec<u8>> {
        let udp_len = u16::try_from(8 + self.payload.len()).ok()?;
        let mut frame = vec![0u8; 12];
        match (self.peer.ip(), self.local.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                frame.extend_from_slice(&0x0800u16.to_be_bytes());
                let total = udp_len.checked_add(20)?;
                let mut ip = [0u8; 20];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&total.to_be_bytes());
                ip[8] = 64;
                ip[9] = PROTO_UDP;
                ip[12..16].copy_from_slice(&src.octets());
                ip[16..20].copy_from_slice(&dst.octets());
                let sum = checksum::internet_checksum(&[&ip]);
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                frame.extend_from_slice(&ip);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                frame.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut ip = [0u8; 40];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
                ip[6] = PROTO_UDP;
                ip[7] = 64;
                ip[8..24].copy_from_slice(&src.octets());
                ip[24..40].copy_from_slice(&dst.octets());
                frame.extend_from_slice(&ip);
            }
            _ => return None,
        }
        frame.extend_from_slice(&self.peer.port().to_be_bytes());
        frame.extend_from_slice(&self.local.port().to_be_bytes());
        frame.extend_from_slice(&udp_len.to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(self.payload);
        let (addresses, l4) = if frame[12] == 0x08 {
            (26..34, 34)
        } else {
            (22..54, 54)
        };
        let [a, b, c, d] = u32::from(udp_len).to_be_bytes();
        let v4_pseudo = [0, PROTO_UDP, c, d];
        let v6_pseudo = [a, b, c, d, 0, 0, 0, PROTO_UDP];
        let pseudo: &[u8] = if l4 == 34 { &v4_pseudo } else { &v6_pseudo };
        let sum = checksum::internet_checksum(&[&frame[addresses], pseudo, &frame[l4..]]);
        // A computed 0 goes out as all ones: 0 means "no checksum".
        let sum = if sum == 0 { 0xffff } else { sum };
        frame[l4 + 6..l4 + 8].copy_from_slice(&sum.to_be_bytes());
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{frame::FrameSpec, model};

    fn meta_for(frame: &[u8]) -> PacketMeta {
        model::meta_for(frame).expect("valid frame")
    }

    #[test]
    fn udp_payload_ignores_ethernet_padding_and_options() {
        let spec = FrameSpec {
            vlan_tags: vec![0x8100],
            ipv4_options: 8,
            ..FrameSpec::udp(
                "198.18.0.1:4000".parse().unwrap(),
                "198.18.0.2:53".parse().unwrap(),
                b"hi",
            )
        };
        let mut frame = spec.build();
        frame.extend_from_slice(&[0xee; 10]); // padding to the minimum frame size
        let d = Datagram::from_frame(&frame, &meta_for(&frame)).unwrap();
        assert_eq!(d.payload, b"hi");
        assert_eq!(d.peer, "198.18.0.1:4000".parse().unwrap());
        assert_eq!(d.local, "198.18.0.2:53".parse().unwrap());
    }

    #[test]
    fn tcp_gets_the_whole_segment_ipv6() {
        let spec = FrameSpec {
            tcp_options: 4,
            ..FrameSpec::tcp(
                "[2001:2::1]:4000".parse().unwrap(),
                "[2001:2::2]:80".parse().unwrap(),
                b"GET",
            )
        };
        let frame = spec.build();
        let d = Datagram::from_frame(&frame, &meta_for(&frame)).unwrap();
        assert_eq!(d.payload.len(), 24 + 3);
        assert_eq!(&d.payload[24..], b"GET");
        assert_eq!(d.peer.port(), 4000);
        assert_eq!(d.local, "[2001:2::2]:80".parse().unwrap());
    }

    #[test]
    fn a_rebuilt_frame_reads_back_as_the_datagram() {
        for (peer, local) in [
            ("198.18.0.1:4000", "198.18.0.2:53"),
            ("[2001:2::1]:4000", "[2001:2::2]:53"),
        ] {
            let payload = vec![7u8; 3000];
            let datagram = Datagram {
                protocol: PROTO_UDP,
                peer: peer.parse().unwrap(),
                local: local.parse().unwrap(),
                payload: &payload,
            };
            let frame = datagram.udp_frame().unwrap();
            let meta = meta_for(&frame);
            assert_eq!(Datagram::from_frame(&frame, &meta), Some(datagram));
            assert_eq!(checksum::verify(&frame, &meta), Ok(()), "{peer}");
        }
    }

    #[test]
    fn metadata_beyond_the_frame_is_refused() {
        let frame = FrameSpec::udp(
            "198.18.0.1:1".parse().unwrap(),
            "198.18.0.2:2".parse().unwrap(),
            b"",
        )
        .build();
        let mut meta = meta_for(&frame);
        meta.l4_offset = 500;
        assert_eq!(Datagram::from_frame(&frame, &meta), None);
    }
}
