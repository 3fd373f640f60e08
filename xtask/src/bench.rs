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
    /// Throughput: how every case's traffic is sent. `xdp` (default): demux-gen over AF_XDP in
    /// copy mode, whose frames reach the receiving veth as skbs that veth copies before any XDP
    /// program runs (every case pays it, the kernel's included). `live`: BPF_PROG_RUN live
    /// frames of an XDP_TX program on the sender's veth, so the receiving veth gets xdp_frames
    /// with no copy, as from a NIC (rates of 20,000 pps and more).
    #[arg(long, value_enum, value_name = "HOW")]
    sender: Option<Sender>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Sender {
    Xdp,
    Live,
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
    let mut cmd = cargo();
    cmd.args(["bench", "--package", "demux-user", "--bench", name, "--"]);
    cmd.args(bench_flags(&args, &json.to_string_lossy()));
    step(&mut cmd)
}

/// The flags the benchmark binary gets (after `--`).
fn bench_flags(args: &BenchArgs, json: &str) -> Vec<String> {
    let mut flags = vec!["--json".to_owned(), json.to_owned()];
    if args.quick {
        flags.push("--quick".to_owned());
    }
    let mut pass = |flag: &str, value: Option<String>| {
        if let Some(value) = value {
            flags.extend([flag.to_owned(), value]);
        }
    };
    pass("--receivers", args.receivers.clone());
    pass("--rounds", args.rounds.map(|n| n.to_string()));
    pass("--half-load", args.half_load.map(|n| n.to_string()));
    // Both or neither (clap's `requires`): one alone moderates nothing.
    pass(
        "--napi-defer-hard-irqs",
        args.napi_defer_hard_irqs.map(|n| n.to_string()),
    );
    pass(
        "--gro-flush-timeout",
        args.gro_flush_timeout.map(|n| n.to_string()),
    );
    pass(
        "--sender",
        args.sender.map(|s| format!("{s:?}").to_lowercase()),
    );
    flags
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Cmd};

    fn parse(line: &str) -> Result<BenchArgs, clap::Error> {
        let cli = Cli::try_parse_from(line.split_whitespace())?;
        match cli.command {
            Cmd::Bench(args) => Ok(args),
            other => panic!("not a bench command: {other:?}"),
        }
    }

    #[test]
    fn napi_moderation_reaches_the_bench_only_as_a_pair() {
        let args = parse(
            "xtask bench throughput --quick --napi-defer-hard-irqs 2 --gro-flush-timeout 50000",
        )
        .expect("both flags");
        let flags = bench_flags(&args, "out.json").join(" ");
        assert!(
            flags.contains("--napi-defer-hard-irqs 2 --gro-flush-timeout 50000"),
            "not passed through: {flags}"
        );
        for half in [
            "xtask bench throughput --napi-defer-hard-irqs 2",
            "xtask bench throughput --gro-flush-timeout 50000",
        ] {
            assert!(parse(half).is_err(), "accepted alone: {half}");
        }
        let plain = bench_flags(&parse("xtask bench throughput").expect("plain"), "o.json");
        assert_eq!(plain, ["--json", "o.json"]);
    }

    #[test]
    fn the_sender_reaches_the_bench_by_name() {
        for name in ["xdp", "live"] {
            let args = parse(&format!("xtask bench throughput --sender {name}")).expect(name);
            let flags = bench_flags(&args, "o.json");
            assert_eq!(flags[2..], ["--sender", name]);
        }
        assert!(parse("xtask bench throughput --sender packet").is_err());
    }
}
