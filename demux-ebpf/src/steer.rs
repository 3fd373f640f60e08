//! Steering a matched packet: metadata in front of the frame, then a redirect to the AF_XDP
//! socket of the interface and rx queue it arrived on (`XSKS[first slot + queue]`, the first
//! slot from `IFACE_SLOTS[ifindex]`, which `host::local` already looked up), with XDP_PASS as
//! the fallback when there is none. Per-endpoint counters record what was
//! redirected.
//!
//! Slot scheme: one AF_XDP socket per rx queue, the endpoint id travels in the metadata. A
//! redirect only reaches a socket bound to the packet's own queue, and per-endpoint sockets
//! would need endpoints × queues sockets on a shared UMEM; one per queue keeps the XSKMAP as
//! small as the queue count and lets endpoints come and go without touching sockets.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_xdp_get_buff_len,
    macros::map,
    maps::{Array, PerCpuArray, XskMap},
    programs::XdpContext,
};
use demux_common::{
    binding::{EndpointStats, MAX_ENDPOINTS},
    maps::{MAX_IFACES, MAX_QUEUES},
    meta::{PacketMeta, MAX_XSK_FRAME},
    Verdict,
};

use crate::{cursor, host, parse::Packet};

/// Slot → the daemon's AF_XDP socket for one (interface, rx queue).
#[map(name = "XSKS")]
static XSKS: XskMap = XskMap::with_max_entries(MAX_IFACES * MAX_QUEUES, 0);

/// Endpoint id → packets and bytes redirected to it, per CPU.
#[map(name = "ENDPOINT_STATS")]
static ENDPOINT_STATS: PerCpuArray<EndpointStats> = PerCpuArray::with_max_entries(MAX_ENDPOINTS, 0);

/// Slot → the longest frame the socket in `XSKS` there takes beyond one UMEM frame (it is
/// bound with `XDP_USE_SG`); 0: one buffer of at most [`MAX_XSK_FRAME`] (see
/// `demux_common::maps::XSK_FRAME_LIMITS`).
#[map(name = "XSK_FRAME_LIMITS")]
static XSK_FRAME_LIMITS: Array<u32> = Array::with_max_entries(MAX_IFACES * MAX_QUEUES, 0);

/// A frame the socket of its queue takes whole: its bytes beyond the first buffer (0 unless
/// the frame is multi-buffer), for the parse, and its whole length, for the counters.
#[derive(Clone, Copy)]
pub(crate) struct Fits {
    pub(crate) beyond: usize,
    total: u64,
}

/// Whether the AF_XDP socket of the frame's (interface, rx queue) would take it whole. One
/// buffer of at most [`MAX_XSK_FRAME`] fits every socket: decided without a map lookup.
/// Anything longer, or split over several buffers (its length from `bpf_xdp_get_buff_len`),
/// fits only a socket bound with `XDP_USE_SG`, up to that slot's `XSK_FRAME_LIMITS` entry.
/// A frame that does not fit would be dropped by the socket after the redirect: `None`.
#[inline(always)]
pub(crate) fn fits_socket(ctx: &XdpContext) -> Option<Fits> {
    let linear = (ctx.data_end() - ctx.data()) as u64;
    // SAFETY: the helper only reads the frame's length; it takes the context the program got.
    let total = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    if total == linear && linear <= u64::from(MAX_XSK_FRAME) {
        return Some(Fits { beyond: 0, total });
    }
    let queue = ctx.rx_queue_index();
    if queue >= MAX_QUEUES || total < linear {
        return None;
    }
    let limit = XSK_FRAME_LIMITS.get(host::first_slot(ctx)? + queue)?;
    (total <= u64::from(*limit)).then_some(Fits {
        beyond: (total - linear) as usize,
        total,
    })
}

/// Sends `packet` towards `endpoint` through the ingress interface's block of slots from
/// `first_slot`; the verdict says whether it left for user space.
#[inline(always)]
pub(crate) fn steer(
    ctx: &XdpContext,
    packet: &Packet,
    first_slot: u32,
    endpoint: u32,
    flow_hash: u32,
    fits: Fits,
) -> Verdict {
    // From `bpf_xdp_get_buff_len`: a scalar (the verifier refuses sums with `data_end`).
    let frame_len = fits.total;
    let meta = PacketMeta {
        version: PacketMeta::VERSION,
        protocol: packet.protocol,
        family: packet.family,
        endpoint,
        flow_hash,
        l4_offset: packet.l4_offset,
        payload_offset: packet.payload_offset,
        l3_offset: packet.l3_offset,
        _pad: 0,
    };
    if !cursor::write_meta(ctx, &meta) {
        return Verdict::PassNoMetadata;
    }
    let queue = ctx.rx_queue_index();
    if queue >= MAX_QUEUES {
        return Verdict::PassNoSocket;
    }
    let slot = first_slot + queue;
    if XSKS
        .redirect(slot, u64::from(xdp_action::XDP_PASS))
        .is_err()
    {
        return Verdict::PassNoSocket;
    }
    if let Some(stats) = ENDPOINT_STATS.get_ptr_mut(endpoint) {
        // SAFETY: per-CPU slot; XDP programs do not preempt each other on one CPU.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += frame_len;
        }
    }
    Verdict::Redirected
}
