//! `cargo xtask soak [--minutes N] [--rate PPS]`: the daemon on the throughput testbed for N
//! minutes (10 by default) at the highest zero-loss rate (or `--rate`) while endpoints bind and
//! close every second, checking at rest every minute and at the end that the accounting is
//! exact and that no UMEM frame, descriptor, endpoint or anonymous memory leaks (the
//! throughput benchmark's `--soak` mode: `demux-user/benches/throughput/soak.rs`). Release
//! build, as root; `cargo xtask test` runs one minute of it on the test build (`test_run`).

use anyhow::bail;
use clap::Args;

use crate::{cargo, is_root, step};

#[derive(Debug, Args)]
pub(crate) struct SoakArgs {
    /// How long to soak, in minutes (fractions allowed).
    #[arg(long, value_name = "N", default_value_t = 10.0)]
    minutes: f64,
    /// Offered rate in packets per second; by default the highest rate without loss, found by
    /// a binary search first.
    #[arg(long, value_name = "PPS")]
    rate: Option<u64>,
}

pub(crate) fn run(args: SoakArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the soak loads the XDP program and builds namespaces: run `cargo xtask soak` as root"
        );
    }
    let mut cmd = cargo();
    cmd.args([
        "bench",
        "--package",
        "demux-user",
        "--bench",
        "throughput",
        "--",
    ]);
    soak_args(&mut cmd, args.minutes, args.rate);
    step(&mut cmd)
}

/// The soak as `cargo xtask test` runs it: `minutes` on the test (debug) build, which shares
/// the tests' artifacts; its rate is the zero-loss rate of that build.
pub(crate) fn test_command(minutes: f64) -> std::process::Command {
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--package",
        "demux-user",
        "--bench",
        "throughput",
        "--",
    ]);
    soak_args(&mut cmd, minutes, None);
    cmd
}

fn soak_args(cmd: &mut std::process::Command, minutes: f64, rate: Option<u64>) {
    cmd.args(["--soak", &minutes.to_string()]);
    if let Some(rate) = rate {
        cmd.args(["--rate", &rate.to_string()]);
    }
}
