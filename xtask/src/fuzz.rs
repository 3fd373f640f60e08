//! `cargo xtask fuzz [--frames N] [--seed S]`: random and mutated frames — truncated at every
//! offset, bit-flipped, spliced from two frames, with extension-header chains and VLAN stacks —
//! through the XDP program under BPF_PROG_TEST_RUN, each compared with the reference model
//! (the privileged test `classifier::differential_frames` with a frame count). Needs root.

use anyhow::bail;
use clap::Args;

use crate::{cargo, is_root, step};

#[derive(Debug, Args)]
pub(crate) struct FuzzArgs {
    /// Frames to run (`cargo xtask test` runs 1,000,000).
    #[arg(long, value_name = "N", default_value_t = 10_000_000)]
    frames: u64,
    /// The generator's seed (printed on a disagreement, to replay it).
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
}

pub(crate) fn run(args: FuzzArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!("fuzzing loads the XDP program (BPF_PROG_TEST_RUN): run `cargo xtask fuzz` as root");
    }
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--release",
        "--package",
        "demux-user",
        "--test",
        "privileged",
        "--",
        "classifier::differential_frames",
        "--nocapture",
    ])
    .env("DEMUX_DIFF_FRAMES", args.frames.to_string());
    if let Some(seed) = args.seed {
        cmd.env("DEMUX_DIFF_SEED", seed.to_string());
    }
    step(&mut cmd)
}
