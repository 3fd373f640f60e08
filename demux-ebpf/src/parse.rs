//! Header parsing: Ethernet, up to two VLAN tags, IPv4 (with options) or IPv6 (with a bounded
//! walk over extension headers), then UDP or TCP.
//!
//! The result is the packet's socket address tuple and the offsets of its transport header and
//! payload, or the verdict that explains why the packet is not ours: not IP, another transport,
//! a fragment, or malformed (truncated or inconsistent headers). Only a packet that parsed
//! completely can ever be redirected. The parse also notes what `host::plain` judges next:
//! the destination MAC, VLAN tags, IPv4 options, IPv6 hop-by-hop or destination options
//! headers and an IPv6 routing header (the walk goes on past them, so that a malformed or
//! fragmented packet counts as such first).

use aya_ebpf::programs::XdpContext;
use demux_common::{
    binding::{FAMILY_IPV4, FAMILY_IPV6, PROTO_TCP, PROTO_UDP},
    Verdict,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

use crate::cursor::Cursor;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;

/// VLAN tags read before the IP header (802.1ad outer + 802.1Q inner).
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before giving up (the packet then counts as malformed).
pub(crate) const MAX_IPV6_EXT_HEADERS: usize = 6;

/// The socket address tuple of a packet that parsed completely. Addresses are 16 bytes; an
/// IPv4 address sits in the first 4 bytes, the rest zero. The addresses come first and the
/// struct is 8-aligned, so that reading them as words is a word load (BPF has no unaligned
/// loads: a `[u8; 16]` at an odd offset is read byte by byte).
#[repr(C, align(8))]
pub(crate) struct Packet {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// Destination MAC address.
    pub dst_mac: [u8; 6],
    /// At least one VLAN tag.
    pub vlan: bool,
    /// IPv4 with options (IHL > 5), or IPv6 with a hop-by-hop or destination options header
    /// anywhere in the extension header walk.
    pub ip_options: bool,
    /// IPv6 with a routing header anywhere in the extension header walk.
    pub routing_header: bool,
    pub family: u8,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// Offset of the UDP or TCP header from the start of the frame.
    pub l4_offset: u16,
    /// Offset of the transport payload from the start of the frame.
    pub payload_offset: u16,
    /// Offset of the IP header from the start of the frame.
    pub l3_offset: u16,
}

impl Packet {
    /// The destination address as four native-endian words (`demux_common::local::
    /// address_words`), read as words: the field sits 8-aligned. Words, not wider: the parse
    /// writes the addresses a word at a time, and a load wider than the stores it reads stalls
    /// store-to-load forwarding.
    #[inline(always)]
    pub(crate) fn dst_words(&self) -> &[u32; 4] {
        const { assert!(core::mem::offset_of!(Packet, dst_addr) % 4 == 0) };
        // SAFETY: `dst_addr` is 16 bytes at a 4-aligned offset of a `repr(C, align(8))` struct,
        // so it is a valid, aligned `[u32; 4]` (any bit pattern is), borrowed as long as `self`.
        unsafe { &*self.dst_addr.as_ptr().cast::<[u32; 4]>() }
    }

    /// The destination MAC as its first 4 bytes and last 2, read as a word and a half-word
    /// (the widths the parse writes it in; see [`Packet::dst_words`]).
    #[inline(always)]
    pub(crate) fn dst_mac_parts(&self) -> (u32, u16) {
        const { assert!(core::mem::offset_of!(Packet, dst_mac) % 4 == 0) };
        let p = self.dst_mac.as_ptr();
        // SAFETY: `dst_mac` is 6 bytes at a 4-aligned offset of a `repr(C, align(8))` struct:
        // an aligned `u32` at its start and an aligned `u16` 4 bytes in, both inside it.
        unsafe { (p.cast::<u32>().read(), p.add(4).cast::<u16>().read()) }
    }
}

/// Parses one frame, `beyond` bytes of which lie in multi-buffer fragments after the first
/// buffer (the headers must be in the first; the lengths they state may reach into the rest);
/// `Err` carries the pass verdict that says why it is not steerable.
#[inline(always)]
pub(crate) fn parse(ctx: &XdpContext, beyond: usize) -> Result<Packet, Verdict> {
    let mut cur = Cursor::new(ctx, beyond);
    let eth = cur.read::<EthHdr>().ok_or(Verdict::PassMalformed)?;
    let dst_mac = eth.dst_addr;
    let mut ether_type = u16::from_be(eth.ether_type);
    let vlan = ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let vlan = cur.read::<VlanHdr>().ok_or(Verdict::PassMalformed)?;
        ether_type = u16::from_be(vlan.ether_type);
    }
    let l3_offset = cur.offset() as u16;
    let packet = match ether_type {
        ETH_P_IPV4 => parse_ipv4(&mut cur),
        ETH_P_IPV6 => parse_ipv6(&mut cur),
        _ => Err(Verdict::PassNotIp),
    };
    packet.map(|packet| Packet {
        dst_mac,
        vlan,
        l3_offset,
        ..packet
    })
}

#[inline(always)]
fn parse_ipv4(cur: &mut Cursor) -> Result<Packet, Verdict> {
    let available = cur.remaining();
    let ip = cur.read::<Ipv4Hdr>().ok_or(Verdict::PassMalformed)?;
    let header_len = usize::from(ip.vihl & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes(ip.tot_len));
    if ip.vihl >> 4 != 4
        || header_len < Ipv4Hdr::LEN
        || total_len < header_len
        || total_len > available
    {
        return Err(Verdict::PassMalformed);
    }
    let frags = u16::from_be_bytes(ip.frags);
    // More-fragments flag (0x2000) or a non-zero offset (low 13 bits).
    if frags & 0x3fff != 0 {
        return Err(Verdict::PassFragment);
    }
    let protocol = ip.proto;
    let mut src_addr = [0u8; 16];
    let mut dst_addr = [0u8; 16];
    src_addr[..4].copy_from_slice(&ip.src_addr);
    dst_addr[..4].copy_from_slice(&ip.dst_addr);
    cur.skip(header_len - Ipv4Hdr::LEN)
        .ok_or(Verdict::PassMalformed)?;
    let packet = parse_l4(
        cur,
        FAMILY_IPV4,
        protocol,
        src_addr,
        dst_addr,
        total_len - header_len,
    )?;
    Ok(Packet {
        ip_options: header_len > Ipv4Hdr::LEN,
        ..packet
    })
}

#[inline(always)]
fn parse_ipv6(cur: &mut Cursor) -> Result<Packet, Verdict> {
    let ip = cur.read::<Ipv6Hdr>().ok_or(Verdict::PassMalformed)?;
    let mut payload_len = usize::from(u16::from_be_bytes(ip.payload_len));
    if ip.vcf[0] >> 4 != 6 || payload_len > cur.remaining() {
        return Err(Verdict::PassMalformed);
    }
    let src_addr = ip.src_addr;
    let dst_addr = ip.dst_addr;
    let mut next = ip.next_hdr;
    let mut routing_header = false;
    let mut option_header = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_extension(next) {
            break;
        }
        if next == IPPROTO_FRAGMENT {
            return Err(Verdict::PassFragment);
        }
        routing_header |= next == IPPROTO_ROUTING;
        option_header |= next == IPPROTO_HOPOPTS || next == IPPROTO_DSTOPTS;
        // Generic extension header: next header, then length in 8-octet units beyond the first.
        let ext = cur.read::<[u8; 2]>().ok_or(Verdict::PassMalformed)?;
        let len = (usize::from(ext[1]) + 1) * 8;
        if len > payload_len {
            return Err(Verdict::PassMalformed);
        }
        next = ext[0];
        payload_len -= len;
        cur.skip(len - 2).ok_or(Verdict::PassMalformed)?;
    }
    match next {
        IPPROTO_FRAGMENT => Err(Verdict::PassFragment),
        // More extension headers than the walk allows.
        next if is_extension(next) => Err(Verdict::PassMalformed),
        next => {
            parse_l4(cur, FAMILY_IPV6, next, src_addr, dst_addr, payload_len).map(|packet| Packet {
                ip_options: option_header,
                routing_header,
                ..packet
            })
        }
    }
}

/// IPv6 extension headers the walk steps over (or stops at, for a fragment).
#[inline(always)]
fn is_extension(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT
    )
}

/// Parses the UDP or TCP header; `ip_payload_len` is what the IP header says follows it.
#[inline(always)]
fn parse_l4(
    cur: &mut Cursor,
    family: u8,
    protocol: u8,
    src_addr: [u8; 16],
    dst_addr: [u8; 16],
    ip_payload_len: usize,
) -> Result<Packet, Verdict> {
    let l4_offset = cur.offset();
    let (src_port, dst_port) = match protocol {
        PROTO_UDP => {
            let udp = cur.read::<UdpHdr>().ok_or(Verdict::PassMalformed)?;
            let udp_len = usize::from(u16::from_be_bytes(udp.len));
            if udp_len < UdpHdr::LEN || udp_len > ip_payload_len {
                return Err(Verdict::PassMalformed);
            }
            (u16::from_be_bytes(udp.src), u16::from_be_bytes(udp.dst))
        }
        PROTO_TCP => {
            let tcp = cur.read::<TcpHdr>().ok_or(Verdict::PassMalformed)?;
            let header_len = usize::from(tcp.doff()) * 4;
            if header_len < TcpHdr::LEN || header_len > ip_payload_len {
                return Err(Verdict::PassMalformed);
            }
            let ports = (u16::from_be_bytes(tcp.source), u16::from_be_bytes(tcp.dest));
            cur.skip(header_len - TcpHdr::LEN)
                .ok_or(Verdict::PassMalformed)?;
            ports
        }
        _ => return Err(Verdict::PassOtherProtocol),
    };
    Ok(Packet {
        dst_mac: [0; 6],       // set by `parse`
        vlan: false,           // set by `parse`
        ip_options: false,     // set by `parse_ipv4` and `parse_ipv6`
        routing_header: false, // set by `parse_ipv6`
        family,
        protocol,
        src_addr,
        dst_addr,
        src_port,
        dst_port,
        l4_offset: l4_offset as u16,
        payload_offset: cur.offset() as u16,
        l3_offset: 0, // set by `parse`
    })
}
