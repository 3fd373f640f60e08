//! Hand-built frames for BPF_PROG_TEST_RUN: Ethernet, IPv4/IPv6, UDP, and the variants that the
//! program must pass to the kernel (ARP, fragments, truncation, other transports).

use std::net::{Ipv4Addr, Ipv6Addr};

const MAC_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const MAC_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

fn ethernet(ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&MAC_DST);
    frame.extend_from_slice(&MAC_SRC);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut segment = Vec::with_capacity(8 + payload.len());
    segment.extend_from_slice(&src_port.to_be_bytes());
    segment.extend_from_slice(&dst_port.to_be_bytes());
    segment.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    segment.extend_from_slice(&[0, 0]); // checksum: optional in IPv4, unchecked by XDP
    segment.extend_from_slice(payload);
    segment
}

/// An IPv4 packet with `protocol` and `flags_fragment` (flags and fragment offset field).
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, flags_fragment: u16, l4: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(20 + l4.len());
    packet.extend_from_slice(&[0x45, 0]);
    packet.extend_from_slice(&(20 + l4.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 1]);
    packet.extend_from_slice(&flags_fragment.to_be_bytes());
    packet.extend_from_slice(&[64, protocol, 0, 0]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    packet.extend_from_slice(l4);
    packet
}

pub const SRC4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const DST4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
pub const DST6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);

/// Ethernet + IPv4 + UDP from 198.18.0.1:40000 to 198.18.0.2:`dst_port`.
pub fn udp4(dst_port: u16, payload: &[u8]) -> Vec<u8> {
    ethernet(
        0x0800,
        &ipv4(SRC4, DST4, 17, 0, &udp(40000, dst_port, payload)),
    )
}

/// Ethernet + IPv6 + UDP from [2001:2::1]:40000 to [2001:2::2]:`dst_port`.
pub fn udp6(dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let l4 = udp(40000, dst_port, payload);
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[17, 64]);
    packet.extend_from_slice(&SRC6.octets());
    packet.extend_from_slice(&DST6.octets());
    packet.extend_from_slice(&l4);
    ethernet(0x86dd, &packet)
}

/// The first fragment of a UDP datagram (more-fragments flag set).
pub fn udp4_first_fragment() -> Vec<u8> {
    ethernet(
        0x0800,
        &ipv4(SRC4, DST4, 17, 0x2000, &udp(40000, 9, b"part")),
    )
}

/// An ICMP echo request.
pub fn icmp4() -> Vec<u8> {
    ethernet(0x0800, &ipv4(SRC4, DST4, 1, 0, &[8, 0, 0, 0, 0, 1, 0, 1]))
}

/// An ARP request (not IP).
pub fn arp() -> Vec<u8> {
    let mut arp = vec![0, 1, 0x08, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&MAC_SRC);
    arp.extend_from_slice(&SRC4.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&DST4.octets());
    ethernet(0x0806, &arp)
}
