//! Reading the per-endpoint counters: the per-CPU `ENDPOINT_STATS` array, summed over CPUs.

use aya::{
    maps::{MapError, PerCpuArray, PerCpuValues},
    Ebpf,
};
use demux_common::{binding::EndpointStats, maps};

/// Packets and bytes the program redirected to endpoint `id`, summed over all CPUs.
pub fn read(ebpf: &Ebpf, id: u32) -> Result<EndpointStats, MapError> {
    let map = ebpf
        .map(maps::ENDPOINT_STATS)
        .ok_or_else(|| MapError::InvalidName {
            name: maps::ENDPOINT_STATS.into(),
        })?;
    let array = PerCpuArray::<_, EndpointStats>::try_from(map)?;
    let per_cpu = array.get(&id, 0)?;
    Ok(per_cpu
        .iter()
        .fold(EndpointStats::default(), |sum, cpu| EndpointStats {
            packets: sum.packets + cpu.packets,
            bytes: sum.bytes + cpu.bytes,
        }))
}

/// Zeroes endpoint `id`'s counters, so that a reused id starts from nothing.
pub fn reset(ebpf: &mut Ebpf, id: u32) -> Result<(), MapError> {
    let map = ebpf
        .map_mut(maps::ENDPOINT_STATS)
        .ok_or_else(|| MapError::InvalidName {
            name: maps::ENDPOINT_STATS.into(),
        })?;
    let mut array = PerCpuArray::<_, EndpointStats>::try_from(map)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, error)| {
        MapError::SyscallError(aya::sys::SyscallError {
            call: "nr_cpus",
            io_error: error,
        })
    })?;
    let zeros = PerCpuValues::try_from(vec![EndpointStats::default(); cpus])?;
    array.set(id, zeros, 0)
}
