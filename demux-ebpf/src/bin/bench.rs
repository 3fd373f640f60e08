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
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};

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
