//! The per-endpoint counters: the per-CPU `ENDPOINT_STATS` array, summed over CPUs.
//!
//! Taken from the object once at load as two handles on the one map: the writer, which zeroes a
//! slot when an endpoint id is (re)used and stays with the daemon's state, and the reader, which
//! reads through `&self` and is shared with the statistics readers, so neither waits for the
//! other.

use std::os::fd::AsFd as _;

use aya::{
    maps::{IterableMap as _, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    Ebpf,
};
use demux_common::{binding::EndpointStats, maps};

use crate::{dataplane::CounterError, program::LoadError};

const MAP: &str = maps::ENDPOINT_STATS;

/// The writer's handle: zeroes slots.
pub struct EndpointStatsWriter(PerCpuArray<MapData, EndpointStats>);

/// The readers' handle: sums slots.
pub struct EndpointStatsReader(PerCpuArray<MapData, EndpointStats>);

/// Takes `ENDPOINT_STATS` out of `ebpf`, size-checked against [`EndpointStats`], as a writer and
/// a reader (a second descriptor of the same map).
pub fn take(ebpf: &mut Ebpf) -> Result<(EndpointStatsWriter, EndpointStatsReader), LoadError> {
    let writer: PerCpuArray<MapData, EndpointStats> =
        crate::program::take_map(ebpf, MAP, "a per-CPU array")?;
    let reopen = |source| LoadError::Reopen { map: MAP, source };
    let fd = writer
        .map()
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| reopen(e.into()))?;
    let data = MapData::from_fd(fd).map_err(reopen)?;
    let reader = PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(reopen)?;
    Ok((EndpointStatsWriter(writer), EndpointStatsReader(reader)))
}

impl EndpointStatsWriter {
    /// Zeroes endpoint `id`'s counters on every CPU.
    pub fn reset(&mut self, id: u32) -> Result<(), CounterError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, error)| CounterError::Cpus(error))?;
        let fail = |source: MapError| CounterError::Reset {
            map: MAP,
            index: id,
            source,
        };
        let zeros = PerCpuValues::try_from(vec![EndpointStats::default(); cpus])
            .map_err(|e| fail(e.into()))?;
        self.0.set(id, zeros, 0).map_err(fail)
    }
}

impl EndpointStatsReader {
    /// Packets and bytes the program redirected to endpoint `id`, summed over all CPUs.
    pub fn read(&self, id: u32) -> Result<EndpointStats, CounterError> {
        let per_cpu = self.0.get(&id, 0).map_err(|source| CounterError::Read {
            map: MAP,
            index: id,
            source,
        })?;
        Ok(per_cpu
            .iter()
            .fold(EndpointStats::default(), |sum, cpu| EndpointStats {
                packets: sum.packets + cpu.packets,
                bytes: sum.bytes + cpu.bytes,
            }))
    }
}
