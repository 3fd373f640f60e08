//! XDP metadata written in front of every redirected frame (`bpf_xdp_adjust_meta`), so that
//! user space finds the endpoint and the payload without parsing again.

use crate::ABI_VERSION;

/// Bytes of one UMEM frame of the daemon's AF_XDP sockets.
pub const UMEM_FRAME_SIZE: u32 = 4096;

/// The longest frame (from the Ethernet header; the metadata sits in the headroom) that one
/// UMEM frame of the daemon's AF_XDP sockets holds: a UMEM frame less the kernel's 256 bytes of
/// headroom (`XDP_PACKET_HEADROOM`). A socket bound without `XDP_USE_SG` takes nothing longer,
/// nor a frame split over several buffers: the program passes those as
/// [`crate::Verdict::PassTooLarge`] unless the socket's `XSK_FRAME_LIMITS` entry says more.
pub const MAX_XSK_FRAME: u32 = UMEM_FRAME_SIZE - 256;

/// The most UMEM frames (rx descriptors) one packet may span on a socket bound with
/// `XDP_USE_SG`: the kernel fills [`MAX_XSK_FRAME`] bytes per descriptor and marks all but the
/// last with `XDP_PKT_CONTD`; the daemon gathers up to this many. Enough for any IP packet
/// (65,535 bytes, an Ethernet header and two VLAN tags: 65,557 bytes).
pub const MAX_XSK_SEGMENTS: u32 = 18;

/// The `XSK_FRAME_LIMITS` value of a slot whose socket is bound with `XDP_USE_SG`: the longest
/// frame it takes, [`MAX_XSK_SEGMENTS`] descriptors of [`MAX_XSK_FRAME`] bytes (69,120).
pub const MAX_XSK_SG_FRAME: u32 = MAX_XSK_SEGMENTS * MAX_XSK_FRAME;

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
    /// When a group picked the endpoint: the keyed hash over the 4-tuple that picked it
    /// ([`crate::hash::flow_hash`]); 0 when the binding names the endpoint itself (the hash is
    /// computed only where it is needed).
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
    /// Bytes of the metadata.
    pub const LEN: usize = core::mem::size_of::<Self>();
    /// The `version` this build writes and reads.
    pub const VERSION: u16 = ABI_VERSION as u16;

    /// Reads the metadata from the [`PacketMeta::LEN`] bytes before a frame (native byte order,
    /// the layout above); `None` if `bytes` is not exactly that long.
    #[inline]
    pub fn read(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; Self::LEN] = bytes.try_into().ok()?;
        let u16_at = |at: usize| u16::from_ne_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| {
            u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        Some(Self {
            version: u16_at(0),
            protocol: bytes[2],
            family: bytes[3],
            endpoint: u32_at(4),
            flow_hash: u32_at(8),
            l4_offset: u16_at(12),
            payload_offset: u16_at(14),
            l3_offset: u16_at(16),
            _pad: u16_at(18),
        })
    }
}
