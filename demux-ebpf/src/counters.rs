//! Verdict counters: the per-CPU `VERDICTS` array, one `u64` slot per `Verdict`.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use demux_common::Verdict;

/// Packets by verdict, per CPU; the daemon sums the CPUs.
#[map(name = "VERDICTS")]
static VERDICTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Verdict::COUNT, 0);

/// Counts one packet under `verdict`.
#[inline(always)]
pub(crate) fn count(verdict: Verdict) {
    if let Some(slot) = VERDICTS.get_ptr_mut(verdict as u32) {
        // SAFETY: per-CPU slot, and XDP programs do not preempt each other on one CPU.
        unsafe { *slot += 1 };
    }
}
