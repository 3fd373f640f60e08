//! `cargo xtask bench throughput`: demux side by side with the kernel's UDP sockets and the
//! XDP_DROP limit, on a two-namespace veth testbed (`probes`, built with
//! `demux::testing::testbed`), with the same generator
//! (`demux-gen`) for every case.
//!
//! Cases (`cases`): XDP_DROP (`bench_drop` from the benchmarks' own object,
//! `demux::testing::bench_object`, counts and drops), one kernel UDP socket read with
//! recvmmsg, one read through io_uring (multishot recvmsg, provided buffers; `uring`), one
//! SO_REUSEPORT socket per core, demux delivering to a counting sink in the
//! daemon, and demux delivering to a client's shared-memory ring; under IPv4 and IPv6, 64- and
//! 1,400-byte frames; demux at 1, 64 and 4,096 endpoints (the last with 1,000,000 bindings in
//! the tables); and the AF_XDP generator against its sendmmsg mode. veth accepts threaded NAPI
//! only with an XDP program attached, so the kernel-socket cases run with the bare
//! `baseline_pass` program attached (about 5 ns a packet, see `bench classifier`).
//!
//! Three phases: every case flat out, in interleaved rounds (A B C … A B C) so drift hits all
//! alike; every case again, in interleaved rounds, at one fixed offered load per traffic (half
//! the best kernel case's flat-out delivered rate, `half_load`), for the receiving CPU's cost per
//! packet and the latency percentiles (send stamp to the reader, for receivers that read
//! payloads), medians over the rounds; and for the kernel sockets and demux, binary searches
//! over the offered rate for the highest rate without loss (RFC 2544 style), repeated and
//! interleaved, their median and range reported. Each case's peak is the most it delivered in
//! any of these runs: the kernel's sockets livelock when offered far more than they take, and
//! then peak at a paced rate. Every sample checks the accounting:
//! sent = delivered + passed + dropped by named reason (veth ring, AF_XDP rx ring, socket
//! buffer, full sink, …); a mismatch fails the run.
//!
//! While the generator runs, the receiving side's system calls are counted by the kernel's
//! `raw_syscalls:sys_enter` tracepoint (`syscalls`; tracefs, mounted if it is not): the
//! receiver threads of the kernel cases, every daemon thread and the client's receiving thread
//! of the demux cases; reported per million delivered datagrams.
//!
//! Flags: `--quick` (a short run for a first look), `--json PATH` (also writes PATH with
//! `.svg` and `.png`: the plot), `--receivers A,B` (only the one-endpoint cases of these
//! receivers, e.g. `demux_count,demux_count_backed`), `--rounds N` (flat-out rounds), `--half-load PPS` (this
//! offered load for every half-load run instead, to compare builds run one after the other),
//! `--napi-defer-hard-irqs N --gro-flush-timeout NS` (NAPI moderation on the receiving veth
//! for the whole run, every case alike: `probes::NapiModeration`), `--scale`
//! (only `demux_count` with one endpoint and the scale cases; with no kernel case, their
//! half-load runs are all offered the one-endpoint case's half load), `--sender xdp|live`
//! (how every case but the sendmmsg one is sent: `demux-gen` over AF_XDP, whose skbs veth copies
//! before XDP, or live frames that reach the receiving veth as `xdp_frame`s: `live`).
//!
//! `--soak MINUTES [--rate PPS]` runs the soak instead (`soak`, `cargo xtask soak`): the daemon
//! for that long at a sustained rate while endpoints bind and close every second, checking
//! that nothing leaks.

#![deny(unsafe_code)]

mod cases;
mod churn;
mod daemon;
mod generator;
mod kernel;
mod live;
mod probes;
mod report;
mod search;
mod soak;
#[allow(unsafe_code)]
mod sys;
mod syscalls;
#[allow(unsafe_code)]
mod uring;

use std::{
    collections::BTreeMap,
    path::Path,
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use aya::{
    maps::PerCpuArray,
    programs::{Xdp, XdpMode},
    Ebpf,
};
use demux::testing::bench_object;
use indicatif::{ProgressBar, ProgressStyle};

use crate::{
    cases::{Case, Receiver, Sample, Sender, Traffic},
    generator::generate,
    probes::{bpf_run_stats, threads_cpu_ns, threads_runs, CpuTimes, NapiModeration, Testbed},
    report::CaseResult,
};

/// The flags this binary takes (the module comment says what each does): those followed by a
/// value, and those alone. `cargo bench` adds `--bench`.
const VALUE_FLAGS: [&str; 9] = [
    "--json",
    "--receivers",
    "--rounds",
    "--half-load",
    "--napi-defer-hard-irqs",
    "--gro-flush-timeout",
    "--sender",
    "--soak",
    "--rate",
];
const SWITCHES: [&str; 3] = ["--quick", "--scale", "--bench"];

const USAGE: &str = "usage: throughput [--quick] [--scale] [--receivers A,B] [--rounds N] \
    [--half-load PPS] [--sender xdp|live] [--napi-defer-hard-irqs N --gro-flush-timeout NS] \
    [--json PATH]\n       throughput --soak MINUTES [--rate PPS]\n\
    (as root; `cargo xtask bench throughput --help` and `cargo xtask soak --help` explain each flag)";

/// Refuses what this binary does not take, naming it: an unknown flag must not start a
/// 14-minute run that ignores it.
fn check_args(args: &[String]) -> Result<(), String> {
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        if VALUE_FLAGS.contains(&arg.as_str()) {
            if rest.next().is_none() {
                return Err(format!("{arg} needs a value"));
            }
        } else if !SWITCHES.contains(&arg.as_str()) {
            return Err(format!("unknown argument `{arg}`"));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if let Err(e) = check_args(&args) {
        eprintln!("bench throughput: {e}\n{USAGE}");
        return ExitCode::from(2);
    }
    if args.iter().any(|a| a == "--soak") {
        return soak::main();
    }
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("bench throughput: the accounting did not add up (see above)");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("bench throughput: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// How long and how often: flat-out rounds and seconds, half-load rounds and seconds, zero-loss
/// searches, their steps and seconds per trial.
struct Plan {
    rounds: usize,
    secs: f64,
    half_rounds: usize,
    half_secs: f64,
    searches: usize,
    search_steps: usize,
    search_secs: f64,
}

const ALL_RECEIVERS: [Receiver; 9] = [
    Receiver::XdpDrop,
    Receiver::KernelRecvmmsg,
    Receiver::KernelReuseport,
    Receiver::KernelIouring,
    Receiver::DemuxCount,
    Receiver::DemuxCountBacked,
    Receiver::DemuxRing,
    Receiver::DemuxClientFast,
    Receiver::DemuxClientFastWait,
];

fn cases(quick: bool) -> Vec<Case> {
    let base = Traffic::new(false, 60);
    let variants = if quick {
        vec![base]
    } else {
        vec![
            base,
            Traffic::new(true, 60),
            Traffic::new(false, 1396),
            Traffic::new(true, 1396),
        ]
    };
    let mut cases: Vec<Case> = variants
        .iter()
        .flat_map(|traffic| {
            ALL_RECEIVERS
                .into_iter()
                // The batch wait only under the base traffic (it is about moderate rates of
                // small datagrams; and the full run keeps under 12 minutes).
                .filter(|r| *r != Receiver::DemuxClientFastWait || *traffic == base)
                .map(|receiver| Case {
                    receiver,
                    traffic: *traffic,
                    fillers: 0,
                    fillers_on_own_ports: false,
                })
        })
        .collect();
    let scale = |ports, fillers, fillers_on_own_ports| Case {
        receiver: Receiver::DemuxCount,
        traffic: Traffic { ports, ..base },
        fillers,
        fillers_on_own_ports,
    };
    if !quick {
        cases.push(scale(64, 0, false));
        cases.push(scale(4096, 0, false));
        cases.push(scale(1, 1_000_000, true));
        cases.push(Case {
            receiver: Receiver::XdpDrop,
            traffic: Traffic {
                sender: Sender::Sendmmsg,
                ..base
            },
            fillers: 0,
            fillers_on_own_ports: false,
        });
    }
    cases.push(scale(4096, 1_000_000, false));
    cases.push(scale(4096, 1_000_000, true));
    // The same, from 65,536 source addresses: every packet's connected probe lands on another
    // bucket, as real traffic from many clients does.
    cases.push(Case {
        traffic: Traffic {
            sources: 65_536,
            ..scale(4096, 1_000_000, true).traffic
        },
        ..scale(4096, 1_000_000, true)
    });
    cases
}

/// Attaches `program` from the benchmarks' object to the receiving veth, in namespace B.
fn attach_plain(testbed: &Testbed, program: &str) -> anyhow::Result<Ebpf> {
    testbed.in_b(false, || {
        let mut ebpf = Ebpf::load(bench_object::OBJECT).context("loading the bench object")?;
        let prog: &mut Xdp = ebpf.program_mut(program).context("program")?.try_into()?;
        prog.load()?;
        prog.attach(&testbed.pair.b_if, XdpMode::Driver)
            .with_context(|| format!("attaching {program}"))?;
        Ok(ebpf)
    })
}

/// One run of `case` at `rate` pps (0: flat out) for `secs`.
fn measure(
    case: &Case,
    testbed: &mut Testbed,
    rate: u64,
    secs: f64,
    latency: bool,
) -> anyhow::Result<Sample> {
    let drain = Duration::from_millis(300);
    let me = std::process::id();
    probes::wait_until_quiet();
    match case.receiver {
        Receiver::XdpDrop => {
            let ebpf = attach_plain(testbed, bench_object::DROP_PROGRAM)?;
            let napi = testbed.threaded_napi()?;
            let (veth_before, cpu_before, bpf_before, threads_before, runs_before) = (
                testbed.veth_drops(),
                CpuTimes::now(),
                bpf_run_stats(me),
                threads_cpu_ns(&napi),
                threads_runs(&napi),
            );
            let (sent, secs, forgiven) = generate(testbed, &case.traffic, rate, secs)?;
            let (cpu_busy, cpu_secs) = CpuTimes::now().since(cpu_before);
            let threads_cpu_secs =
                Some(threads_cpu_ns(&napi).saturating_sub(threads_before) as f64 / 1e9);
            let napi_runs = Some(threads_runs(&napi).saturating_sub(runs_before));
            thread::sleep(drain);
            let bpf = bpf_run_stats(me);
            let drops: PerCpuArray<_, u64> =
                PerCpuArray::try_from(ebpf.map(bench_object::DROPS).context(bench_object::DROPS)?)?;
            Ok(Sample {
                rate,
                sent,
                forgiven,
                delivered: drops.get(&0, 0)?.iter().sum(),
                secs,
                dropped: BTreeMap::from([("veth", testbed.veth_drops() - veth_before)]),
                cpu_busy,
                cpu_secs,
                threads_cpu_secs,
                // The NAPI thread is the only receiving thread here.
                napi_cpu_secs: threads_cpu_secs,
                threads_runs: napi_runs,
                napi_runs,
                bpf_ns: per_run(bpf_before, bpf),
                ..Sample::default()
            })
        }
        Receiver::KernelRecvmmsg | Receiver::KernelReuseport | Receiver::KernelIouring => {
            let _ebpf = attach_plain(testbed, bench_object::BASELINE_PROGRAM)?;
            let napi = testbed.threaded_napi()?;
            let mut threads = napi.clone();
            let sockets = if case.receiver == Receiver::KernelReuseport {
                thread::available_parallelism().map_or(2, |n| n.get())
            } else {
                1
            };
            let reader = if case.receiver == Receiver::KernelIouring {
                kernel::Reader::Iouring
            } else {
                kernel::Reader::Recvmmsg
            };
            let receivers = kernel::start(
                testbed.pair.b.name(),
                reader,
                sockets,
                case.traffic.dst(),
                latency,
            )?;
            threads.extend_from_slice(receivers.thread_ids());
            let ipv6 = case.traffic.ipv6;
            let (threads_before, napi_before) = (threads_cpu_ns(&threads), threads_cpu_ns(&napi));
            let (runs_before, napi_runs_before) = (threads_runs(&threads), threads_runs(&napi));
            let (udp_before, veth_before, cpu_before, bpf_before) = (
                testbed.udp_counters(ipv6),
                testbed.veth_drops(),
                CpuTimes::now(),
                bpf_run_stats(me),
            );
            testbed.count_syscalls(receivers.thread_ids());
            let (sent, secs, forgiven) = generate(testbed, &case.traffic, rate, secs)?;
            let syscalls = testbed.syscalls_counted();
            let (cpu_busy, cpu_secs) = CpuTimes::now().since(cpu_before);
            let threads_cpu_secs =
                Some(threads_cpu_ns(&threads).saturating_sub(threads_before) as f64 / 1e9);
            let napi_cpu_secs =
                Some(threads_cpu_ns(&napi).saturating_sub(napi_before) as f64 / 1e9);
            let napi_runs = Some(threads_runs(&napi).saturating_sub(napi_runs_before));
            let threads_runs = Some(threads_runs(&threads).saturating_sub(runs_before));
            thread::sleep(drain);
            let bpf = bpf_run_stats(me);
            let (read, latencies) = receivers.finish();
            let udp_after = testbed.udp_counters(ipv6);
            let delta = |k: &str| udp_after.get(k).unwrap_or(&0) - udp_before.get(k).unwrap_or(&0);
            let dropped = BTreeMap::from([
                ("veth", testbed.veth_drops() - veth_before),
                ("socket_buffer", delta("RcvbufErrors")),
                ("udp_other", delta("InErrors") - delta("RcvbufErrors")),
                ("no_port", delta("NoPorts")),
            ]);
            Ok(Sample {
                rate,
                sent,
                forgiven,
                delivered: read,
                secs,
                dropped,
                // Datagrams queued but still unread when the receivers stopped.
                passed: delta("InDatagrams") - read,
                cpu_busy,
                cpu_secs,
                threads_cpu_secs,
                napi_cpu_secs,
                threads_runs,
                napi_runs,
                bpf_ns: per_run(bpf_before, bpf),
                latencies,
                daemon_kib: None,
                syscalls,
            })
        }
        Receiver::DemuxCount
        | Receiver::DemuxCountBacked
        | Receiver::DemuxRing
        | Receiver::DemuxClientFast
        | Receiver::DemuxClientFastWait => daemon::measure(case, testbed, rate, secs, latency),
    }
}

/// The one offered load every case under `case`'s traffic gets at half load: half the flat-out
/// delivered rate of the best kernel case under the same traffic (one endpoint, no fillers;
/// the fixed load, so per-packet CPU and latency compare at the same rate); without a
/// kernel case in the run, half the one-endpoint `demux_count` case's; without either, half
/// the case's own.
fn half_load(results: &[CaseResult], case: &Case) -> u64 {
    let base = Traffic {
        ports: 1,
        sources: 1,
        ..case.traffic
    };
    let one = |receiver: Receiver| {
        results
            .iter()
            .find(|r| r.case.receiver == receiver && r.case.fillers == 0 && r.case.traffic == base)
            .map(CaseResult::delivered_pps)
    };
    let kernel = Receiver::KERNEL
        .iter()
        .filter_map(|k| one(*k))
        .reduce(f64::max);
    let own = || {
        results
            .iter()
            .find(|r| r.case == *case)
            .map_or(0.0, CaseResult::delivered_pps)
    };
    let rate = kernel
        .or_else(|| one(Receiver::DemuxCount))
        .unwrap_or_else(own);
    (rate / 2.0) as u64
}

fn per_run(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let runs = after.1.saturating_sub(before.1);
    (runs > 0).then(|| after.0.saturating_sub(before.0) as f64 / runs as f64)
}

fn run() -> anyhow::Result<bool> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let json_path = value("--json");
    let receivers: Option<Vec<String>> =
        value("--receivers").map(|list| list.split(',').map(str::to_owned).collect());
    // Only the one-endpoint demux_count case and the scale cases (demux_count at 4,096
    // endpoints, 1,000,000 bindings, 65,536 sources), interleaved.
    let scale_only = args.iter().any(|a| a == "--scale");
    // The sender of every case but the sendmmsg one.
    let sender = match value("--sender").as_deref() {
        None | Some("xdp") => Sender::Xdp,
        Some("live") => Sender::Live,
        Some(other) => anyhow::bail!(
            "--sender {other}: `xdp` (AF_XDP in copy mode, the default) or `live` (BPF_PROG_RUN \
             live frames: no skb reaches the receiving veth)"
        ),
    };
    let rounds: Option<usize> = match value("--rounds") {
        Some(n) => Some(n.parse().context("--rounds: not a number")?),
        None => None,
    };
    let half_rate: Option<u64> = match value("--half-load") {
        Some(n) => Some(n.parse().context("--half-load: not a number of pps")?),
        None => None,
    };
    let number = |flag: &str| -> anyhow::Result<Option<u64>> {
        value(flag)
            .map(|n| n.parse().with_context(|| format!("{flag}: not a number")))
            .transpose()
    };
    let moderation = match (
        number("--napi-defer-hard-irqs")?,
        number("--gro-flush-timeout")?,
    ) {
        (None, None) => None,
        (Some(defer), Some(timeout)) if defer > 0 && timeout > 0 => Some(NapiModeration {
            defer_hard_irqs: u32::try_from(defer).context("--napi-defer-hard-irqs: too large")?,
            gro_flush_timeout_ns: timeout,
        }),
        _ => anyhow::bail!(
            "--napi-defer-hard-irqs N and --gro-flush-timeout NS go together, both above 0 \
             (one alone moderates nothing)"
        ),
    };
    ensure!(
        demux::sys::euid() == 0,
        "needs root: namespaces, XDP and AF_XDP"
    );
    let mut plan = if quick {
        Plan {
            rounds: 1,
            secs: 1.5,
            half_rounds: 3,
            half_secs: 1.0,
            searches: 2,
            search_steps: 4,
            search_secs: 0.5,
        }
    } else {
        // About 12 minutes on the 2-core testbed (731 s on a saturated machine with 0.75 s
        // trials): 3 s flat-out rounds became 2 s, and the search 6 trials of 0.5 s (7 of 1 s
        // before), to make room for three half-load rounds and two searches.
        Plan {
            rounds: 3,
            secs: 2.0,
            half_rounds: 3,
            half_secs: 1.0,
            searches: 2,
            search_steps: 6,
            search_secs: 0.5,
        }
    };
    if let Some(rounds) = rounds {
        plan.rounds = rounds.max(1);
    }
    demux::testing::testbed::remove_on_signal("bench throughput");
    // BPF_STATS_RUN_TIME: the kernel times every program run while this fd is open.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let mut testbed = probes::setup(moderation)?;
    let mut results: Vec<CaseResult> = cases(quick)
        .into_iter()
        .map(|mut case| {
            if case.traffic.sender == Sender::Xdp {
                case.traffic.sender = sender;
            }
            case
        })
        .filter(|case| {
            !scale_only
                || case.receiver == Receiver::DemuxCount
                    && case.traffic.sender != Sender::Sendmmsg
                    && !case.traffic.ipv6
                    && case.traffic.frame == 60
        })
        .filter(|case| {
            receivers.as_ref().is_none_or(|names| {
                names.iter().any(|n| n == case.receiver.name())
                    && case.traffic.ports == 1
                    && case.fillers == 0
            })
        })
        .map(|case| CaseResult {
            case,
            max: Vec::new(),
            half: Vec::new(),
            search: Vec::new(),
        })
        .collect();
    let searched = |c: &Case| {
        c.receiver != Receiver::XdpDrop
            && c.traffic
                == Traffic {
                    sender,
                    ..Traffic::new(false, 60)
                }
            && c.fillers == 0
    };
    let steps = results.len() * (plan.rounds + plan.half_rounds)
        + results.iter().filter(|r| searched(&r.case)).count() * plan.searches * plan.search_steps;
    let bar = ProgressBar::new(steps as u64).with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let step = |bar: &ProgressBar, what: String| {
        bar.inc(1);
        bar.set_message(what.clone());
        if bar.is_hidden() {
            eprintln!("[{}/{steps}] {what}", bar.position());
        }
    };

    for round in 0..plan.rounds {
        for r in &mut results {
            step(
                &bar,
                format!("round {} {} flat out", round + 1, r.case.name()),
            );
            let sample = measure(&r.case, &mut testbed, 0, plan.secs, false)
                .with_context(|| r.case.name())?;
            r.max.push(sample);
        }
    }
    // One fixed offered load per traffic for every case (`half_load`), in interleaved rounds;
    // `--half-load PPS` sets it by hand (to compare builds run one after the other at one load).
    let rates: Vec<u64> = results
        .iter()
        .map(|r| half_rate.unwrap_or_else(|| half_load(&results, &r.case)))
        .collect();
    for round in 0..plan.half_rounds {
        for (r, rate) in results.iter_mut().zip(&rates) {
            step(
                &bar,
                format!(
                    "half-load round {} {} at {rate} pps",
                    round + 1,
                    r.case.name()
                ),
            );
            let latency = r.case.receiver.reads_payloads();
            let sample = measure(&r.case, &mut testbed, *rate, plan.half_secs, latency)
                .with_context(|| r.case.name())?;
            r.half.push(sample);
        }
    }
    // The zero-loss searches, interleaved too: search 1 of every case, then search 2, ….
    for _ in 0..plan.searches {
        for r in results.iter_mut().filter(|r| searched(&r.case)) {
            // The zero-loss rate lies between 0 and the highest rate the sender offered.
            let case = r.case;
            let (_, trials) =
                search::zero_loss(r.offered_pps() as u64, plan.search_steps, |rate| {
                    step(
                        &bar,
                        format!("{} zero-loss search at {rate} pps", case.name()),
                    );
                    measure(&case, &mut testbed, rate, plan.search_secs, false)
                        .with_context(|| case.name())
                })?;
            r.search.push(trials);
        }
    }
    bar.finish_and_clear();
    drop(testbed);

    let accounted = report::print(&results);
    println!(
        "\n({} round(s) of {} s flat out per case, medians; half load {} round(s) of {} s, \
         medians; {} zero-loss search(es) of {} steps of {} s, median (range); {} flows; took \
         {:.0} s)",
        plan.rounds,
        plan.secs,
        plan.half_rounds,
        plan.half_secs,
        plan.searches,
        plan.search_steps,
        plan.search_secs,
        cases::FLOWS,
        started.elapsed().as_secs_f64()
    );
    match moderation {
        Some(m) => println!(
            "(NAPI moderation on the receiving veth for every case of this run, kernel cases \
             included: {m})"
        ),
        None => println!("(no NAPI moderation: the receiving veth's defaults)"),
    }
    match sender {
        Sender::Live => println!(
            "(sender: live frames, BPF_PROG_RUN of `bench_send` on the sender's veth: the \
             receiving veth gets xdp_frames, no skb)"
        ),
        _ => {
            println!("(sender: demux-gen, AF_XDP in copy mode: veth copies each frame before XDP)")
        }
    }
    if let Some(path) = json_path {
        let path = Path::new(&path);
        report::write_json(path, quick, moderation, &results)?;
        report::plot(path, &results)?;
        println!(
            "wrote {}, {} and {}",
            path.display(),
            path.with_extension("svg").display(),
            path.with_extension("png").display()
        );
    }
    Ok(accounted)
}
