//! What a run reports: the tables on stdout (with the ratios and the targets), the JSON file,
//! and the plot (SVG and PNG): delivered against offered pps, and latency percentiles.

use std::path::Path;

use anyhow::{anyhow, Context as _};
use plotters::{coord::Shift, prelude::*};
use serde_json::json;

use crate::{
    cases::{median, percentile, Case, Receiver, Sample, Traffic},
    generator::MAX_BURST,
    probes::NapiModeration,
};

/// Everything measured for one case.
pub(crate) struct CaseResult {
    pub case: Case,
    /// Flat-out runs, one per round.
    pub max: Vec<Sample>,
    /// The runs at the half-load rate (one fixed rate per traffic for every case: half the best
    /// kernel case's flat-out delivered rate, `main::half_load`), one per round.
    pub half: Vec<Sample>,
    /// The zero-loss searches' trials, one list per search, in order.
    pub search: Vec<Vec<Sample>>,
}

impl CaseResult {
    pub(crate) fn delivered_pps(&self) -> f64 {
        median(self.max.iter().map(Sample::delivered_pps).collect())
    }

    pub(crate) fn offered_pps(&self) -> f64 {
        median(self.max.iter().map(Sample::offered_pps).collect())
    }

    /// The most this case delivered in any run of this bench run (flat out, half load or a
    /// zero-loss trial). A receiver that livelocks when offered far more than it can take (the
    /// kernel's sockets under the live sender, when NAPI takes the reader's CPU) peaks at a paced
    /// rate, above what it delivers flat out.
    pub(crate) fn peak_pps(&self) -> f64 {
        self.samples()
            .map(Sample::delivered_pps)
            .fold(0.0, f64::max)
    }

    /// Each search's highest offered rate with no loss (0 if none), in order: what the generator
    /// sent over the time it took, which is below the rate asked when it fell behind.
    pub(crate) fn zero_loss_each(&self) -> Vec<f64> {
        self.search
            .iter()
            .map(|trials| {
                trials
                    .iter()
                    .filter(|s| s.lossless())
                    .map(Sample::offered_pps)
                    .fold(0.0, f64::max)
            })
            .collect()
    }

    /// The median of the searches' zero-loss rates.
    pub(crate) fn zero_loss_pps(&self) -> Option<f64> {
        let each = self.zero_loss_each();
        (!each.is_empty()).then(|| median(each))
    }

    /// The median over the half-load rounds of `f`, if any round gives it.
    fn half_median(&self, f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        let values: Vec<f64> = self.half.iter().filter_map(f).collect();
        (!values.is_empty()).then(|| median(values))
    }

    /// p50, p99, p99.9 of the half-load latencies in µs: each the median over the rounds of
    /// that round's percentile (one unlucky round cannot decide it).
    pub(crate) fn latency_us(&self) -> Option<[f64; 3]> {
        let p = |q| self.half_median(|s| s.latency_percentile(q).map(|ns| ns as f64 / 1000.0));
        Some([p(50.0)?, p(99.0)?, p(99.9)?])
    }

    /// The receiving CPU's busy time per delivered packet at half load, median over the rounds.
    pub(crate) fn rx_ns_per_packet(&self) -> Option<f64> {
        self.half_median(|s| Some(s.cpu_secs * 1e9 / s.delivered.max(1) as f64))
    }

    /// The same from the receiving side's own threads' CPU time (NAPI and receivers: other
    /// processes on the receiving CPU do not count), median over the rounds.
    pub(crate) fn threads_ns_per_packet(&self) -> Option<f64> {
        self.half_median(|s| Some(s.threads_cpu_secs? * 1e9 / s.delivered.max(1) as f64))
    }

    /// The NAPI thread's part of `threads_ns_per_packet`, median over the rounds.
    pub(crate) fn napi_ns_per_packet(&self) -> Option<f64> {
        self.half_median(|s| Some(s.napi_cpu_secs? * 1e9 / s.delivered.max(1) as f64))
    }

    /// Offered rate, loss % and system calls per million datagrams at half load (medians).
    pub(crate) fn half_offered_pps(&self) -> Option<f64> {
        self.half_median(|s| Some(s.offered_pps()))
    }

    pub(crate) fn half_loss_percent(&self) -> Option<f64> {
        self.half_median(|s| {
            Some(100.0 * s.sent.saturating_sub(s.delivered) as f64 / s.sent.max(1) as f64)
        })
    }

    pub(crate) fn half_syscalls_per_million(&self) -> Option<f64> {
        self.half_median(Sample::syscalls_per_million)
    }

    fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.max
            .iter()
            .chain(&self.half)
            .chain(self.search.iter().flatten())
    }

    pub(crate) fn accounted(&self) -> bool {
        self.samples().all(Sample::accounted)
    }
}

/// The result of `receiver` under the same traffic as `case` (and one endpoint, no fillers).
fn peer<'a>(results: &'a [CaseResult], case: &Case, receiver: Receiver) -> Option<&'a CaseResult> {
    results.iter().find(|r| {
        r.case.receiver == receiver
            && r.case.fillers == 0
            && r.case.traffic
                == Traffic {
                    ports: 1,
                    ..case.traffic
                }
    })
}

/// "kernel" in every ratio: the kernel case (recvmmsg, reuseport, io_uring) that delivered the
/// most under the same traffic as `case`, in this run.
fn best_kernel<'a>(results: &'a [CaseResult], case: &Case) -> Option<&'a CaseResult> {
    Receiver::KERNEL
        .iter()
        .filter_map(|k| peer(results, case, *k))
        .max_by(|a, b| a.delivered_pps().total_cmp(&b.delivered_pps()))
}

fn ratio(a: f64, b: Option<f64>) -> String {
    b.filter(|b| *b > 0.0)
        .map_or("-".to_owned(), |b| format!("{:.2}", a / b))
}

/// Prints the tables and the targets; returns whether every sample was accounted for.
pub(crate) fn print(results: &[CaseResult]) -> bool {
    println!(
        "\n{:<40} {:>11} {:>11} {:>11} {:>7} {:>7} {:>7} {:>5} {:>6} {:>9}  accounting",
        "case (flat out)",
        "offered pps",
        "deliv. pps",
        "peak pps",
        "loss %",
        "÷kernel",
        "÷xdpdrop",
        "cpu%",
        "bpf ns",
        "sys/Mdgm"
    );
    let mut all_accounted = true;
    for r in results {
        let delivered = r.delivered_pps();
        let (sent, got) = r
            .max
            .iter()
            .fold((0, 0), |(a, b), s| (a + s.sent, b + s.delivered));
        let loss = 100.0 * sent.saturating_sub(got) as f64 / sent.max(1) as f64;
        let kernel = best_kernel(results, &r.case).map(|k| k.delivered_pps());
        let limit = peer(results, &r.case, Receiver::XdpDrop).map(|k| k.delivered_pps());
        let cpu = median(r.max.iter().map(|s| s.cpu_busy * 100.0).collect());
        let bpf: Vec<f64> = r.max.iter().filter_map(|s| s.bpf_ns).collect();
        let syscalls: Vec<f64> = r
            .max
            .iter()
            .filter_map(Sample::syscalls_per_million)
            .collect();
        let accounted = r.accounted();
        all_accounted &= accounted;
        println!(
            "{:<40} {:>11.0} {:>11.0} {:>11.0} {:>7.2} {:>7} {:>7} {:>5.0} {:>6} {:>9}  {}",
            r.case.name(),
            r.offered_pps(),
            delivered,
            r.peak_pps(),
            loss,
            ratio(delivered, kernel),
            ratio(delivered, limit),
            cpu,
            if bpf.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.0}", median(bpf))
            },
            if syscalls.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.0}", median(syscalls))
            },
            if accounted {
                "ok".to_owned()
            } else {
                mismatches(r)
            }
        );
    }
    println!(
        "\n{:<40} {:>11} {:>7} {:>9} {:>10} {:>10} {:>8} {:>8} {:>8} {:>23} {:>9}",
        "case (half load, medians)",
        "offered pps",
        "loss %",
        "rx ns/pkt",
        "thr ns/pkt",
        "napi ns/pkt",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "zero-loss pps (range)",
        "sys/Mdgm"
    );
    for r in results {
        let Some(offered) = r.half_offered_pps() else {
            continue;
        };
        let lat = r.latency_us();
        let show = |i: usize| lat.map_or("-".to_owned(), |l| format!("{:.1}", l[i]));
        let each = r.zero_loss_each();
        let zero_loss = match (r.zero_loss_pps(), each.len()) {
            (None, _) => "-".to_owned(),
            (Some(z), 1) => format!("{z:.0}"),
            (Some(z), _) => format!(
                "{z:.0} ({:.0}–{:.0})",
                each.iter().copied().fold(f64::INFINITY, f64::min),
                each.iter().copied().fold(0.0, f64::max)
            ),
        };
        println!(
            "{:<40} {:>11.0} {:>7.2} {:>9.0} {:>10} {:>10} {:>8} {:>8} {:>8} {:>23} {:>9}",
            r.case.name(),
            offered,
            r.half_loss_percent().unwrap_or(0.0),
            r.rx_ns_per_packet().unwrap_or(0.0),
            r.threads_ns_per_packet()
                .map_or("-".to_owned(), |t| format!("{t:.0}")),
            r.napi_ns_per_packet()
                .map_or("-".to_owned(), |t| format!("{t:.0}")),
            show(0),
            show(1),
            show(2),
            zero_loss,
            r.half_syscalls_per_million()
                .map_or("-".to_owned(), |s| format!("{s:.0}")),
        );
    }
    let paced = results
        .iter()
        .flat_map(CaseResult::samples)
        .filter(|s| s.rate > 0);
    let (sent, forgiven) = paced.fold((0, 0), |(a, b), s| (a + s.sent, b + s.forgiven));
    println!(
        "paced runs: the generator fell behind its rate and skipped {forgiven} of {} frames \
         ({:.3}%; a sender more than {MAX_BURST} frames behind sends a gap, not a burst: \
         demux-gen --max-burst, the live sender's catch-up bound)",
        sent + forgiven,
        100.0 * forgiven as f64 / (sent + forgiven).max(1) as f64
    );
    print_targets(results);
    all_accounted
}

fn mismatches(r: &CaseResult) -> String {
    let gaps: Vec<String> = r
        .samples()
        .filter(|s| !s.accounted())
        .map(|s| {
            format!(
                "sent {} counted {} ({:+}) {:?}",
                s.sent,
                s.counted(),
                s.counted() as i64 - s.sent as i64,
                s.dropped
            )
        })
        .collect();
    format!("MISMATCH {}", gaps.join("; "))
}

fn print_targets(results: &[CaseResult]) {
    let find = |receiver: Receiver, ports: u16, fillers: u32| {
        results.iter().find(|r| {
            r.case.receiver == receiver
                && r.case.traffic.ports == ports
                && r.case.fillers == fillers
                && !r.case.traffic.ipv6
                && r.case.traffic.frame == 60
                && r.case.traffic.sender != crate::cases::Sender::Sendmmsg
        })
    };
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("\ntargets (v4 64B, same run):");
    let kernel = Receiver::KERNEL
        .iter()
        .filter_map(|k| find(*k, 1, 0))
        .max_by(|a, b| a.delivered_pps().total_cmp(&b.delivered_pps()));
    // The kernel case that delivered the most in any of its runs (its peak, which under a
    // sender that overloads it flat out is a paced run's).
    let kernel_peak = Receiver::KERNEL
        .iter()
        .filter_map(|k| find(*k, 1, 0))
        .max_by(|a, b| a.peak_pps().total_cmp(&b.peak_pps()));
    // For the half-load targets, each kernel figure is the best any kernel case reached in
    // this run (the strictest reading of "the best kernel case's").
    let kernels: Vec<&CaseResult> = Receiver::KERNEL
        .iter()
        .filter_map(|k| find(*k, 1, 0))
        .collect();
    let best = |f: &dyn Fn(&CaseResult) -> Option<f64>, lowest: bool| {
        let values = kernels.iter().filter_map(|k| f(k));
        if lowest {
            values.reduce(f64::min)
        } else {
            values.reduce(f64::max)
        }
    };
    let kernel_rx_ns = best(&|k| k.rx_ns_per_packet(), true);
    let kernel_threads_ns = best(&|k| k.threads_ns_per_packet(), true);
    let kernel_p50 = best(&|k| Some(k.latency_us()?[0]), true);
    let kernel_p99 = best(&|k| Some(k.latency_us()?[1]), true);
    let kernel_zero_loss = best(&|k| k.zero_loss_pps(), false);
    if let Some(k) = kernel {
        println!(
            "  kernel = the best kernel case of this run: {} ({:.0} pps); at half load, the best \
             kernel figure of each kind",
            k.case.receiver.name(),
            k.delivered_pps()
        );
    }
    let limit = find(Receiver::XdpDrop, 1, 0);
    for receiver in [
        Receiver::DemuxCount,
        Receiver::DemuxRing,
        Receiver::DemuxClientFast,
        Receiver::DemuxClientFastWait,
    ] {
        let Some(r) = find(receiver, 1, 0) else {
            continue;
        };
        let name = receiver.name();
        if let Some(k) = kernel {
            let x = r.delivered_pps() / k.delivered_pps();
            println!(
                "  {name:<17} ≥ 2.0× kernel:                {x:.2}× ({})",
                verdict(x >= 2.0)
            );
        }
        if let Some(k) = kernel_peak {
            let x = r.delivered_pps() / k.peak_pps();
            println!(
                "  {name:<17} ≥ 2.0× the kernel's peak:     {x:.2}× ({}; {} peaked at {:.0} pps)",
                verdict(x >= 2.0),
                k.case.receiver.name(),
                k.peak_pps()
            );
        }
        if let Some(l) = limit {
            let x = r.delivered_pps() / l.delivered_pps();
            println!(
                "  {name:<17} ≥ 0.9× XDP_DROP:              {x:.2}× ({})",
                verdict(x >= 0.9)
            );
        }
        if let (Some(mine), Some(theirs)) = (r.rx_ns_per_packet(), kernel_rx_ns) {
            let x = mine / theirs;
            println!(
                "  {name:<17} rx ns/pkt at half load ≤ 0.6× kernel's: {mine:.0} vs {theirs:.0} \
                 = {x:.2}× ({})",
                verdict(x <= 0.6)
            );
        }
        if let (Some(mine), Some(theirs)) = (r.threads_ns_per_packet(), kernel_threads_ns) {
            let x = mine / theirs;
            println!(
                "  {name:<17} the same from its threads' CPU time: {mine:.0} vs {theirs:.0} \
                 = {x:.2}× ({})",
                verdict(x <= 0.6)
            );
        }
        if let Some(mine) = r.latency_us() {
            for (what, i, theirs) in [("p50", 0, kernel_p50), ("p99", 1, kernel_p99)] {
                if let Some(theirs) = theirs {
                    println!(
                        "  {name:<17} {what} at half load ≤ kernel's: {:.1} µs vs {theirs:.1} µs \
                         ({})",
                        mine[i],
                        verdict(mine[i] <= theirs)
                    );
                }
            }
        }
        if let (Some(mine), Some(theirs)) = (r.zero_loss_pps(), kernel_zero_loss) {
            println!(
                "  {name:<17} zero-loss rate ≥ kernel's: {mine:.0} vs {theirs:.0} pps ({})",
                verdict(mine >= theirs)
            );
        }
    }
    let Some(one) = find(Receiver::DemuxCount, 1, 0) else {
        return;
    };
    if let Some(backed) = find(Receiver::DemuxCountBacked, 1, 0) {
        let change = backed.delivered_pps() / one.delivered_pps() - 1.0;
        println!(
            "  {:<52} vs without backing sockets: {:+6.1}% (no loss: {})",
            backed.case.name(),
            100.0 * change,
            verdict(change >= -0.05)
        );
    }
    let bpf_ns = |r: &CaseResult| {
        let ns: Vec<f64> = r.max.iter().filter_map(|s| s.bpf_ns).collect();
        (!ns.is_empty()).then(|| median(ns))
    };
    let rx_ns = CaseResult::rx_ns_per_packet;
    for scale in results.iter().filter(|r| {
        r.case.receiver == Receiver::DemuxCount
            && (r.case.traffic.ports > 1 || r.case.fillers > 0 || r.case.traffic.sources > 1)
    }) {
        let change = scale.delivered_pps() / one.delivered_pps() - 1.0;
        let target = scale.case.traffic.ports >= 4096 && scale.case.fillers >= 1_000_000;
        println!(
            "  {:<52} vs 1 endpoint: {:+6.1}%{}",
            scale.case.name(),
            100.0 * change,
            if target {
                format!(" (within 10%: {})", verdict(change.abs() <= 0.10))
            } else {
                String::new()
            }
        );
        // A per-packet cost against 1 endpoint's; the scale target allows 25% more.
        let cost = |what: &str, mine: Option<f64>, theirs: Option<f64>| {
            let (Some(mine), Some(theirs)) = (mine, theirs) else {
                return;
            };
            let change = mine / theirs - 1.0;
            println!(
                "  {:<52} {what}: {mine:.0} vs {theirs:.0} ({:+.1}%){}",
                scale.case.name(),
                100.0 * change,
                if target {
                    format!(" (within 25%: {})", verdict(change <= 0.25))
                } else {
                    String::new()
                }
            );
        };
        cost("BPF ns/pkt vs 1 endpoint", bpf_ns(scale), bpf_ns(one));
        cost(
            "rx CPU ns/pkt at the same half load",
            rx_ns(scale),
            rx_ns(one),
        );
        let kib: Vec<f64> = scale
            .max
            .iter()
            .filter_map(|s| s.daemon_kib)
            .map(|k| k as f64)
            .collect();
        if scale.case.traffic.ports >= 4096 && !kib.is_empty() {
            let mib = median(kib) / 1024.0;
            println!(
                "  {:<52} daemon memory beyond its UMEM ≤ 32 MiB: {mib:.1} MiB ({})",
                scale.case.name(),
                verdict(mib <= 32.0)
            );
        }
    }
}

fn sample_json(s: &Sample) -> serde_json::Value {
    let mut sorted = s.latencies.clone();
    sorted.sort_unstable();
    json!({
        "rate": s.rate, "sent": s.sent, "delivered": s.delivered, "passed": s.passed,
        "dropped": s.dropped, "seconds": s.secs, "accounted": s.accounted(),
        "cpu_busy": s.cpu_busy, "cpu_seconds": s.cpu_secs,
        "receiving_threads_cpu_seconds": s.threads_cpu_secs,
        "napi_thread_cpu_seconds": s.napi_cpu_secs,
        "receiving_threads_runs": s.threads_runs, "napi_thread_runs": s.napi_runs,
        "bpf_ns_per_packet": s.bpf_ns,
        "daemon_kib_beyond_umem": s.daemon_kib, "syscalls": s.syscalls,
        "forgiven": s.forgiven,
        "latency_ns": (!sorted.is_empty()).then(|| json!({
            "count": sorted.len(), "p50": percentile(&sorted, 50.0),
            "p99": percentile(&sorted, 99.0), "p99.9": percentile(&sorted, 99.9),
            "max": sorted.last(),
        })),
    })
}

pub(crate) fn write_json(
    path: &Path,
    quick: bool,
    moderation: Option<NapiModeration>,
    results: &[CaseResult],
) -> anyhow::Result<()> {
    let cases: Vec<_> = results
        .iter()
        .map(|r| {
            json!({
                "case": r.case.name(), "receiver": r.case.receiver.name(),
                "ipv6": r.case.traffic.ipv6, "frame_bytes": r.case.traffic.frame_len() + 4,
                "endpoints": r.case.traffic.ports, "filler_bindings": r.case.fillers,
                "sender": format!("{:?}", r.case.traffic.sender).to_lowercase(),
                "offered_pps": r.offered_pps(), "delivered_pps": r.delivered_pps(), "peak_pps": r.peak_pps(),
                "zero_loss_pps": r.zero_loss_pps(), "zero_loss_pps_each_search": r.zero_loss_each(),
                "latency_us_p50_p99_p999": r.latency_us(), "rx_ns_per_packet_half_load": r.rx_ns_per_packet(),
                "accounted": r.accounted(),
                "max": r.max.iter().map(sample_json).collect::<Vec<_>>(),
                "half_load": r.half.iter().map(sample_json).collect::<Vec<_>>(),
                "zero_loss_searches": r.search.iter()
                    .map(|trials| trials.iter().map(sample_json).collect::<Vec<_>>())
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        path,
        serde_json::to_string_pretty(&json!({
            "bench": "throughput", "quick": quick,
            "napi_moderation": moderation.map(|m| json!({
                "napi_defer_hard_irqs": m.defer_hard_irqs,
                "gro_flush_timeout_ns": m.gro_flush_timeout_ns,
            })),
            "cases": cases,
        }))?,
    )?;
    Ok(())
}

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Writes `stem.svg` and `stem.png`.
pub(crate) fn plot(stem: &Path, results: &[CaseResult]) -> anyhow::Result<()> {
    let font = std::fs::read(FONT)
        .with_context(|| format!("reading the plot's font {FONT} (Debian: fonts-dejavu-core)"))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow!("{FONT} is not a font"))?;
    let size = (1400, 560);
    let svg = stem.with_extension("svg");
    draw(SVGBackend::new(&svg, size).into_drawing_area(), results)?;
    let png = stem.with_extension("png");
    draw(BitMapBackend::new(&png, size).into_drawing_area(), results)?;
    Ok(())
}

/// One color per receiver, the same in both charts.
fn color_of(receiver: Receiver) -> RGBAColor {
    let index = [
        Receiver::XdpDrop,
        Receiver::KernelRecvmmsg,
        Receiver::KernelReuseport,
        Receiver::DemuxCount,
        Receiver::DemuxRing,
        Receiver::DemuxCountBacked,
        Receiver::KernelIouring,
        Receiver::DemuxClientFast,
        Receiver::DemuxClientFastWait,
    ]
    .iter()
    .position(|r| *r == receiver)
    .unwrap_or(0);
    Palette99::pick(index).to_rgba()
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    results: &[CaseResult],
) -> anyhow::Result<()> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plot: {e:?}");
    root.fill(&WHITE).map_err(e)?;
    let (left, right) = root.split_horizontally(760);

    // Delivered against offered, every sample of the cases under the first traffic.
    let base = results[0].case.traffic;
    let series: Vec<(Receiver, Vec<(f64, f64)>)> = results
        .iter()
        .filter(|r| r.case.traffic == base && r.case.fillers == 0)
        .map(|r| {
            let mut points: Vec<(f64, f64)> = r
                .samples()
                .map(|s| (s.offered_pps() / 1e6, s.delivered_pps() / 1e6))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (r.case.receiver, points)
        })
        .collect();
    let top = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold(0.1, f64::max)
        * 1.05;
    let mut chart = ChartBuilder::on(&left)
        .caption(
            format!("delivered vs offered ({})", base.label()),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..top, 0f64..top)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("offered Mpps")
        .y_desc("delivered Mpps")
        .draw()
        .map_err(e)?;
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (top, top)], BLACK.mix(0.3)))
        .map_err(e)?;
    for (receiver, points) in &series {
        let color = color_of(*receiver);
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(e)?
            .label(receiver.name())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;

    // Latency percentiles at half load, the same traffic's cases that read payloads.
    let lat: Vec<(Receiver, String, [f64; 3])> = results
        .iter()
        .filter(|r| r.case.traffic == base && r.case.fillers == 0)
        .filter_map(|r| Some((r.case.receiver, r.case.name(), r.latency_us()?)))
        .collect();
    let high = lat.iter().flat_map(|(_, _, l)| *l).fold(1.0, f64::max) * 2.0;
    let low = lat
        .iter()
        .flat_map(|(_, _, l)| *l)
        .fold(high, f64::min)
        .max(0.1)
        / 2.0;
    let mut chart = ChartBuilder::on(&right)
        .caption(
            format!("latency at half load ({})", base.label()),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.2f64..2.2, (low..high).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_labels(3)
        .x_label_formatter(&|x| {
            ["p50", "p99", "p99.9"]
                .get(x.round() as usize)
                .unwrap_or(&"")
                .to_string()
        })
        .y_desc("µs (log)")
        .draw()
        .map_err(e)?;
    for (receiver, name, l) in &lat {
        let color = color_of(*receiver);
        let points: Vec<(f64, f64)> = l.iter().enumerate().map(|(x, y)| (x as f64, *y)).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(e)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 11))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
