//! XDP metadata written in front of every redirected frame (`bpf_xdp_adjust_meta`), so that
//! user space finds the endpoint and the payload without parsing again.

use crate::ABI_VERSION;

/// The 20 bytes right before the frame in its UMEM chunk. Offsets count from the first byte of
/// the Ethernet header.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketMeta {
    /// [`ABI_VERSION`], so a reader can tell a stale program.
    pub version: u16,
    /// IP protocol: 6 TCP, 17 UDP.
    pub protocol: u8,
    /// 4 or 6.
    pub family: u8,
    /// The endpoint that receives the frame.
    pub endpoint: u32,
    /// Hash over the 4-tuple ([`crate::hash::flow_hash`]).
    pub flow_hash: u32,
    /// Offset of the UDP or TCP header.
    pub l4_offset: u16,
    /// Offset of the transport payload.
    pub payload_offset: u16,
    /// Offset of the IPv4 or IPv6 header.
    pub l3_offset: u16,
    pub _pad: u16,
}

impl PacketMeta {
    pub const LEN: usize = core::mem::size_of::<Self>();
    pub const VERSION: u16 = ABI_VERSION as u16;
}
