//! `cargo xtask bench …`: benchmarks, run as root, each printing a table and writing JSON
//! under `target/bench/`.

use anyhow::bail;
use clap::{Args, ValueEnum};

use crate::{cargo, is_root, step};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which benchmark to run.
    #[arg(value_enum)]
    which: Which,
    /// A short run for a first look (fewer rounds and repeats, smaller tables).
    #[arg(long)]
    quick: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Which {
    /// Per-packet cost of the XDP program under BPF_PROG_TEST_RUN against an XDP_PASS baseline,
    /// with 1 to 1,000,000 bindings.
    Classifier,
    /// Delivered packets per second on a veth testbed: XDP_DROP, kernel UDP sockets (recvmmsg,
    /// SO_REUSEPORT), demux to a counting sink and to a client ring.
    Throughput,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!("benchmarks load BPF programs: run `cargo xtask bench` as root");
    }
    let name = match args.which {
        Which::Classifier => "classifier",
        Which::Throughput => "throughput",
    };
    let json = format!("target/bench/{name}.json");
    let mut cmd = cargo();
    cmd.args([
        "bench",
        "--package",
        "demux-user",
        "--bench",
        name,
        "--",
        "--json",
        &json,
    ]);
    if args.quick {
        cmd.arg("--quick");
    }
    step(&mut cmd)
}
