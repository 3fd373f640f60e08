//! `cargo xtask bench …`: benchmarks, run as root, each printing a table and writing JSON
//! under `target/bench/`.

use anyhow::bail;
use clap::{Args, ValueEnum};

use crate::{cargo, is_root, step};

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Which benchmark to run.
    #[arg(value_enum)]
    which: Which,
    /// A short run for a first look (fewer rounds and repeats, smaller tables).
    #[arg(long)]
    quick: bool,
    /// Throughput: only the one-endpoint cases of these receivers, e.g.
    /// `demux_count,demux_count_backed` (names as in the report).
    #[arg(long, value_name = "A,B")]
    receivers: Option<String>,
    /// Throughput: flat-out rounds (interleaved), for a tighter spread.
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// Throughput: offer this rate (pps) in every half-load run instead of half the best kernel
    /// case's flat-out rate (to compare builds run one after the other at one load).
    #[arg(long, value_name = "PPS")]
    half_load: Option<u64>,
    /// Throughput: NAPI moderation on the receiving veth for every case of the run, kernel
    /// cases included (the interface's `napi_defer_hard_irqs`; needs --gro-flush-timeout).
    #[arg(long, value_name = "N", requires = "gro_flush_timeout")]
    napi_defer_hard_irqs: Option<u32>,
    /// Throughput: with --napi-defer-hard-irqs, the timer (ns) that polls NAPI while its
    /// interrupt stays masked (the interface's `gro_flush_timeout`).
    #[arg(long, value_name = "NS", requires = "napi_defer_hard_irqs")]
    gro_flush_timeout: Option<u64>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Which {
    /// Per-packet cost of the XDP program under BPF_PROG_TEST_RUN against an XDP_PASS baseline,
    /// with 1 to 1,000,000 bindings.
    Classifier,
    /// Delivered packets per second on a veth testbed: XDP_DROP, kernel UDP sockets (recvmmsg,
    /// io_uring, SO_REUSEPORT), demux to a counting sink and to a client ring; IPv4 and IPv6,
    /// 64- and 1,400-byte frames, 1 to 4,096 endpoints and 1,000,000 bindings; latency at half
    /// load, the zero-loss rate and the receiving side's system calls per million datagrams.
    /// Writes JSON and a plot (SVG, PNG) under target/bench/.
    Throughput,
}

pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!("benchmarks load BPF programs: run `cargo xtask bench` as root");
    }
    let name = match args.which {
        Which::Classifier => "classifier",
        Which::Throughput => "throughput",
    };
    // Absolute: cargo runs a bench in its package's directory.
    let json = crate::workspace_root().join(format!("target/bench/{name}.json"));
    let json = json.to_string_lossy();
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
    if let Some(receivers) = &args.receivers {
        cmd.args(["--receivers", receivers]);
    }
    if let Some(rounds) = args.rounds {
        cmd.args(["--rounds", &rounds.to_string()]);
    }
    if let Some(pps) = args.half_load {
        cmd.args(["--half-load", &pps.to_string()]);
    }
    if let (Some(defer), Some(timeout)) = (args.napi_defer_hard_irqs, args.gro_flush_timeout) {
        cmd.args([
            "--napi-defer-hard-irqs",
            &defer.to_string(),
            "--gro-flush-timeout",
            &timeout.to_string(),
        ]);
    }
    step(&mut cmd)
}
