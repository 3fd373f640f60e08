//! The program's verdict counters: the per-CPU `VERDICTS` array, summed over CPUs.

use std::fmt;

use aya::{
    maps::{MapData, PerCpuArray},
    Ebpf,
};
use demux_common::{maps, Verdict};

use crate::{dataplane::CounterError, program::LoadError};

/// Packets per verdict, summed over all CPUs, indexed by `Verdict as usize`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictCounts(pub [u64; Verdict::COUNT as usize]);

/// The `VERDICTS` map, taken from the object at load; read through `&self`, from any thread.
pub struct VerdictsMap(PerCpuArray<MapData, u64>);

impl VerdictsMap {
    /// Takes `VERDICTS` out of `ebpf`, size-checked (`u64` per CPU).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        crate::program::take_map(ebpf, maps::VERDICTS, "a per-CPU array").map(Self)
    }

    /// Reads and sums the counters.
    pub fn read(&self) -> Result<VerdictCounts, CounterError> {
        let mut counts = [0u64; Verdict::COUNT as usize];
        for verdict in Verdict::ALL {
            let index = verdict as u32;
            let per_cpu = self.0.get(&index, 0).map_err(|source| CounterError::Read {
                map: maps::VERDICTS,
                index,
                source,
            })?;
            counts[verdict as usize] = per_cpu.iter().sum();
        }
        Ok(VerdictCounts(counts))
    }
}

impl VerdictCounts {
    /// The count of one verdict.
    pub fn get(&self, verdict: Verdict) -> u64 {
        self.0[verdict as usize]
    }

    /// All packets the program has seen.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Counts since `earlier` (counters only grow).
    pub fn since(&self, earlier: &Self) -> Self {
        let mut delta = *self;
        for (d, e) in delta.0.iter_mut().zip(earlier.0) {
            *d = d.saturating_sub(e);
        }
        delta
    }
}

impl fmt::Display for VerdictCounts {
    /// `total=N redirected=N pass_no_match=N …`, one `name=value` per verdict.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "total={}", self.total())?;
        for verdict in Verdict::ALL {
            write!(f, " {}={}", verdict.name(), self.get(verdict))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_every_verdict_in_slot_order() {
        let mut counts = VerdictCounts::default();
        counts.0[Verdict::PassNoMatch as usize] = 5;
        counts.0[Verdict::PassNotIp as usize] = 2;
        assert_eq!(
            counts.to_string(),
            "total=7 redirected=0 pass_no_match=5 pass_not_ip=2 pass_other_protocol=0 \
             pass_fragment=0 pass_malformed=0 pass_no_socket=0 pass_no_metadata=0 \
             pass_not_local=0 pass_multicast=0 pass_martian=0 pass_ip_options=0 \
             pass_routing_header=0 pass_vlan=0 pass_too_large=0"
        );
    }

    #[test]
    fn since_subtracts_per_verdict() {
        let earlier = VerdictCounts([1, 2, 3, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0]);
        let later = VerdictCounts([4, 2, 5, 1, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0, 2]);
        assert_eq!(
            later.since(&earlier),
            VerdictCounts([3, 0, 2, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2])
        );
    }
}
