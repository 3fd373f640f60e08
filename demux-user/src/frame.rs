//! Building frames for tests and traffic: Ethernet, up to two VLAN tags, IPv4 (with options) or
//! IPv6 (with extension headers), then UDP, TCP or another protocol's bytes.

use std::net::{IpAddr, SocketAddr};

use demux_common::binding::{PROTO_TCP, PROTO_UDP};

/// IPv6 extension header kinds the builder can add.
pub const EXT_HOP_BY_HOP: u8 = 0;
pub const EXT_ROUTING: u8 = 43;
pub const EXT_FRAGMENT: u8 = 44;
pub const EXT_DEST_OPTS: u8 = 60;

/// One frame to build. Lengths and checksums are filled in by `build`; checksums are zero
/// (XDP does not check them, and UDP over IPv4 allows it).
#[derive(Clone, Debug)]
pub struct FrameSpec {
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
        let transport = [l4.as_slice(), &self.payload].concat();

        let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
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
