//! Names of the BPF maps and globals the daemon looks up in the loaded object.

/// Per-CPU array of `u64`, one slot per [`crate::Verdict`]: packets by verdict.
pub const VERDICTS: &str = "VERDICTS";

/// Name of the `#[xdp]` entry point in the object.
pub const PROGRAM: &str = "demux";
