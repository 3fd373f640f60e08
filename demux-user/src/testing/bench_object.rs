//! The benchmarks' XDP object, built by `build.rs` from `demux-ebpf/src/bin/bench.rs` and kept
//! apart from the daemon's object ([`crate::program::OBJECT`] holds only `demux` and
//! `demux_reuseport`): a bare
//! XDP_PASS baseline, a counting XDP_DROP, and the live-frames sender `bench_send`
//! ([`demux_common::bench`]). Load it with `aya::Ebpf::load(OBJECT)`.

/// The benchmarks' object.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench.bpf.o"));

/// An XDP program that passes every packet and does nothing else: the baseline.
pub const BASELINE_PROGRAM: &str = "baseline_pass";
/// An XDP program that counts every packet in [`DROPS`] and drops it: the hook's limit.
pub const DROP_PROGRAM: &str = "bench_drop";
/// Per-CPU array of one `u64`: the packets [`DROP_PROGRAM`] dropped.
pub const DROPS: &str = "BENCH_DROPS";

#[cfg(test)]
mod tests {
    use aya_obj::Object;

    use super::*;

    /// The two objects are split as promised: the benchmarks' programs and map here, and
    /// nothing but `demux` and `demux_reuseport` in the daemon's object.
    #[test]
    fn the_daemons_object_holds_only_demux_and_its_reuseport_program() {
        let bench = Object::parse(OBJECT).expect("the bench object parses");
        let mut names: Vec<&str> = bench.programs.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                BASELINE_PROGRAM,
                DROP_PROGRAM,
                demux_common::bench::SEND_PROGRAM
            ]
        );
        assert!(bench.maps.contains_key(DROPS), "{:?}", bench.maps.keys());
        assert!(
            bench.maps.contains_key(demux_common::bench::SEND_MAP),
            "{:?}",
            bench.maps.keys()
        );

        let daemon = Object::parse(crate::program::OBJECT).expect("the daemon's object parses");
        let mut names: Vec<&str> = daemon.programs.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                demux_common::maps::PROGRAM,
                demux_common::maps::REUSEPORT_PROGRAM
            ]
        );
        assert!(!daemon.maps.contains_key(DROPS), "{:?}", daemon.maps.keys());
    }
}
