//! The benchmarks' XDP programs, in an object of their own (`bench`) so that the daemon's
//! object holds nothing but `demux`: `baseline_pass`, a bare XDP_PASS that `bench classifier`
//! runs beside `demux` and `bench throughput` attaches for the kernel-socket cases, and
//! `bench_drop`, which counts every packet in `BENCH_DROPS` and drops it (the hook's limit).
//! User space finds them through `demux::testing::bench_object`.
#![no_std]
#![no_main]

#[path = "../runtime.rs"]
mod runtime;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use demux_common::bench::SendState;

/// Packets dropped by `bench_drop`, per CPU (one slot).
#[map(name = "BENCH_DROPS")]
static BENCH_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The baseline: passes every packet and does nothing else.
#[xdp]
pub(crate) fn baseline_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The limit case: counts every packet in `BENCH_DROPS` and drops it.
#[xdp]
pub(crate) fn bench_drop(_ctx: XdpContext) -> u32 {
    if let Some(slot) = BENCH_DROPS.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, and XDP programs do not preempt each other on one CPU.
        unsafe { *slot += 1 };
    }
    xdp_action::XDP_DROP
}

/// The live sender's settings and state (`demux_common::bench`).
#[map(name = "BENCH_SEND")]
static BENCH_SEND: Array<SendState> = Array::with_max_entries(1, 0);

/// The live-frames sender: run by BPF_PROG_RUN with `BPF_F_TEST_XDP_LIVE_FRAMES` on the
/// sender's veth, it turns each run's frame into the next frame of the generator's set (ports,
/// source address, sequence number and send time, checksums updated), waits for its send time,
/// and sends it (XDP_TX: the receiving veth gets an `xdp_frame`, no skb).
#[xdp]
pub(crate) fn bench_send(ctx: XdpContext) -> u32 {
    let Some(state) = BENCH_SEND.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: the map's one value; a live-frames run uses one CPU.
    let state = unsafe { &mut *state };
    let v6 = state.family == 6;
    // Offsets: IPv4 header checksum, source address's last 32 bits, UDP ports, checksum and
    // payload (no VLAN, no IP options).
    let (ip_csum, src_low, l4) = if v6 { (0, 34, 54) } else { (24, 26, 34) };
    let start = ctx.data();
    if start + l4 + 8 + 16 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let seq = state.seq;
    state.seq = seq + 1;
    let i = (seq % u64::from(state.distinct.max(1))) as u32;
    let now = pace(state);
    let src = state
        .src_low
        .wrapping_add(i % state.src_addrs.max(1))
        .to_be_bytes();
    let sport = state
        .src_port
        .wrapping_add((i % state.flows.max(1)) as u16)
        .to_be_bytes();
    let dport = state
        .dst_port
        .wrapping_add((i % state.dst_ports.max(1)) as u16)
        .to_be_bytes();
    let (seq, now) = (seq.to_le_bytes(), now.to_le_bytes());
    // Each 16-bit word written, at its offset; the UDP checksum covers them all (the source
    // address through the pseudo-header), the IPv4 header checksum only the address.
    let words: [(usize, [u8; 2]); 12] = [
        (src_low, [src[0], src[1]]),
        (src_low + 2, [src[2], src[3]]),
        (l4, [sport[0], sport[1]]),
        (l4 + 2, [dport[0], dport[1]]),
        (l4 + 8, [seq[0], seq[1]]),
        (l4 + 10, [seq[2], seq[3]]),
        (l4 + 12, [seq[4], seq[5]]),
        (l4 + 14, [seq[6], seq[7]]),
        (l4 + 16, [now[0], now[1]]),
        (l4 + 18, [now[2], now[3]]),
        (l4 + 20, [now[4], now[5]]),
        (l4 + 22, [now[6], now[7]]),
    ];
    let (mut udp_sum, mut ip_sum) = (0u32, 0u32);
    for (n, &(at, new)) in words.iter().enumerate() {
        // SAFETY: every offset is below l4 + 24, inside the bounds checked above.
        let word = unsafe { (start as *mut u8).add(at) };
        // SAFETY: as above.
        let old = unsafe { [*word, *word.add(1)] };
        let (old, new_word) = (u16::from_ne_bytes(old), u16::from_ne_bytes(new));
        let delta = u32::from(!old) + u32::from(new_word);
        udp_sum += delta;
        if n < 2 {
            ip_sum += delta;
        }
        // SAFETY: as above.
        unsafe {
            *word = new[0];
            *word.add(1) = new[1];
        }
    }
    if v6 {
        // SAFETY: inside the bounds checked above.
        unsafe { update_checksum((start + l4 + 6) as *mut u8, udp_sum, true) };
    } else {
        // IPv4: the UDP checksum stays 0 ("none", as the generator sends it).
        // SAFETY: inside the bounds checked above.
        unsafe { update_checksum((start + ip_csum) as *mut u8, ip_sum, false) };
    }
    xdp_action::XDP_TX
}

/// Adds the one's-complement `delta` (sum of `!old + new` words) to the checksum at `at`
/// (RFC 1624: `HC' = ~(~HC + ~m + m')`); a UDP checksum that comes out 0 is sent as 0xffff.
///
/// # Safety
/// `at` and `at + 1` are writable bytes of the frame.
#[inline(always)]
unsafe fn update_checksum(at: *mut u8, delta: u32, udp: bool) {
    // SAFETY: the caller's promise.
    let old = u16::from_ne_bytes(unsafe { [*at, *at.add(1)] });
    let mut sum = u32::from(!old) + delta;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let mut new = !(sum as u16);
    if udp && new == 0 {
        new = 0xffff;
    }
    let bytes = new.to_ne_bytes();
    // SAFETY: the caller's promise.
    unsafe {
        *at = bytes[0];
        *at.add(1) = bytes[1];
    }
}

/// Waits until the frame's send time and schedules the next; returns the send time. A sender
/// behind its schedule by more than `max_lag_ns` forgives the frames beyond it. The wait spins
/// at most 4,096 clock reads (about 100 µs here): rates below 20,000 pps are refused by the
/// bench.
#[inline(always)]
fn pace(state: &mut SendState) -> u64 {
    // SAFETY: a helper without arguments.
    let mut now = unsafe { bpf_ktime_get_ns() };
    let interval = state.interval_ns;
    if interval == 0 {
        return now;
    }
    let mut due = if state.next_ns == 0 {
        now
    } else {
        state.next_ns
    };
    if now > due + state.max_lag_ns {
        state.forgiven += (now - due - state.max_lag_ns) / interval;
        due = now - state.max_lag_ns;
    }
    let mut spins = 0;
    while now < due && spins < 4096 {
        // SAFETY: as above.
        now = unsafe { bpf_ktime_get_ns() };
        spins += 1;
    }
    state.next_ns = due + interval;
    now
}
