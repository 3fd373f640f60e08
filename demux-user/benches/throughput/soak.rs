//! The soak (`--soak MINUTES [--rate PPS]`, run by `cargo xtask soak`): the daemon on the
//! throughput testbed for MINUTES at a sustained rate while endpoints bind and close every
//! second, checking at rest, periodically and at the end, that nothing leaks.
//!
//! - Endpoints: three the daemon holds from a configuration file for the whole run (a
//!   wildcard and a two-member reuseport group, persistent), and the churn's (`churn`): a
//!   client's ring endpoint, a reuseport group of persistent backed endpoints, a named group of
//!   unbacked ones, bound and closed every second. The generator (`demux-gen`, AF_XDP) sends
//!   64-byte UDP frames round robin to their five ports, 64 flows.
//! - Rate: `--rate PPS`, or by default the highest zero-loss rate of this setup found first
//!   with the throughput cases' binary search (`search::zero_loss`: 7 trials of 1 s between 0
//!   and the flat-out rate, every churn endpoint bound), on a daemon of its own; the soak then
//!   starts a fresh daemon, so its counters are the soak's alone.
//! - Checks: the traffic runs in intervals (60 s; a third of the run when it is shorter than
//!   3 minutes); after each, the generator has stopped, the churn rests with its endpoints
//!   closed, and the soak reads the daemon: the accounting exact (frames sent by the
//!   generator = delivered + passed + dropped by named reason, as the throughput cases count:
//!   `daemon::dropped`), every UMEM frame of every queue on the worker's free list, the fill
//!   ring or the rx ring (`stats`: `frames_free + frames_fill_ring + frames_rx_ring ==
//!   frames`), only the configured endpoints left, its descriptors (`/proc/PID/fd`) and its
//!   `RssAnon` (`/proc/PID/status`: anonymous memory; ring memory is shared and comes and
//!   goes with the endpoints). At the end: no more descriptors than after the first interval,
//!   `RssAnon` within 4 MiB of its level then, no bind or close of the churn refused, and a
//!   clean exit on SIGTERM. Each violation prints one `soak: VIOLATION:` line; any makes the
//!   exit status non-zero.

use std::{
    collections::BTreeMap,
    path::Path,
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use demux::control::{client::Client, Request, Response, Stats};

use crate::{
    cases::{Sample, Sender, Traffic},
    churn::{self, Churn},
    daemon::{dropped, start_daemon},
    generator::generate,
    probes::{self, Testbed},
    search,
};

/// How far `RssAnon` may move from its level after the first interval.
const RSS_SLACK_KIB: u64 = 4096;
/// The zero-loss search: trials and seconds per trial.
const SEARCH_STEPS: usize = 7;
const SEARCH_SECS: f64 = 1.0;

/// The configured endpoints: held by the daemon for the whole run.
const CONFIG: &str = r#"# The soak's daemon-held endpoints (docs/CONFIG.md).
[[endpoint]]
protocol = "udp"
local = "0.0.0.0:7000"
to = "count"

[[endpoint]]
protocol = "udp"
local = "198.18.0.2:7001"
group = "configured"
to = "count"

[[endpoint]]
protocol = "udp"
local = "198.18.0.2:7001"
group = "configured"
to = "count"
"#;
const CONFIGURED: usize = 3;

/// The soak's traffic: 64-byte IPv4 UDP frames to ports 7000..7004.
const TRAFFIC: Traffic = Traffic {
    ipv6: false,
    frame: 60,
    ports: 5,
    sources: 1,
    sender: Sender::Xdp,
};

pub(crate) fn main() -> ExitCode {
    let result = args().and_then(|(minutes, rate)| run(minutes, rate));
    match result {
        Ok(violations) if violations.is_empty() => {
            println!("soak: passed");
            ExitCode::SUCCESS
        }
        Ok(violations) => {
            eprintln!("soak: FAILED, {} violation(s):", violations.len());
            for v in &violations {
                eprintln!("soak: VIOLATION: {v}");
            }
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("soak: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn args() -> anyhow::Result<(f64, Option<u64>)> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let minutes: f64 = value("--soak")
        .context("--soak needs the minutes to run, e.g. --soak 10")?
        .parse()
        .context("--soak: not a number of minutes")?;
    ensure!(
        minutes > 0.0 && minutes <= 24.0 * 60.0,
        "--soak: between 0 and 1440 minutes"
    );
    let rate = match value("--rate") {
        Some(r) => Some(
            r.parse()
                .context("--rate: not a number of packets per second")?,
        ),
        None => None,
    };
    ensure!(rate != Some(0), "--rate: at least 1 pps");
    Ok((minutes, rate))
}

/// The daemon's counters at one moment, with the veth pair's drops since the daemon started.
fn accounting(stats: &Stats, veth: u64) -> (u64, u64, BTreeMap<&'static str, u64>) {
    (stats.delivered(), stats.passed(), dropped(stats, veth))
}

fn ask_stats(client: &mut Client) -> anyhow::Result<Stats> {
    match client.call(Request::Stats)? {
        Response::Stats(stats) => Ok(stats),
        other => bail!("stats: {other:?}"),
    }
}

/// Finds the highest zero-loss rate of the soak's setup, every churn endpoint bound, on a daemon
/// of its own.
fn search_rate(testbed: &Testbed, config: &Path) -> anyhow::Result<u64> {
    let (daemon, notify, control) = start_daemon(testbed, Some(config))?;
    testbed.threaded_napi()?;
    let veth_start = testbed.veth_drops();
    let held = churn::hold(&control, testbed.pair.b.name())?;
    let mut client = Client::connect(&control)?;
    let mut trial = |rate: u64, secs: f64| -> anyhow::Result<Sample> {
        let before = ask_stats(&mut client)?;
        let (d0, p0, x0) = accounting(&before, testbed.veth_drops() - veth_start);
        let (sent, secs, _) = generate(testbed, &TRAFFIC, rate, secs)?;
        thread::sleep(Duration::from_millis(300));
        let after = ask_stats(&mut client)?;
        let (d1, p1, x1) = accounting(&after, testbed.veth_drops() - veth_start);
        let sample = Sample {
            rate,
            sent,
            delivered: d1 - d0,
            passed: p1 - p0,
            dropped: x1
                .iter()
                .map(|(k, v)| (*k, v - x0.get(k).copied().unwrap_or(0)))
                .collect(),
            secs,
            ..Sample::default()
        };
        println!(
            "  {:>9} pps offered: sent {} delivered {} passed {} dropped {:?}{}",
            if rate == 0 {
                "flat-out".to_owned()
            } else {
                rate.to_string()
            },
            sample.sent,
            sample.delivered,
            sample.passed,
            sample.dropped,
            if sample.lossless() { "  lossless" } else { "" }
        );
        Ok(sample)
    };
    println!("zero-loss search (every churn endpoint bound, {SEARCH_SECS} s a trial):");
    let flat = trial(0, SEARCH_SECS)?;
    let (rate, _) = search::zero_loss(flat.offered_pps() as u64, SEARCH_STEPS, |rate| {
        trial(rate, SEARCH_SECS)
    })?;
    drop(held);
    drop(client);
    drop(daemon);
    drop(notify);
    ensure!(
        rate > 0,
        "the search found no rate without loss (flat out: {:.0} pps offered)",
        flat.offered_pps()
    );
    Ok(rate)
}

/// What the soak read at rest after one interval.
#[derive(Clone)]
struct Rest {
    secs: f64,
    sent: u64,
    delivered: u64,
    passed: u64,
    dropped: BTreeMap<&'static str, u64>,
    fds: usize,
    rss_anon_kib: u64,
}

impl Rest {
    fn counted(&self) -> u64 {
        self.delivered + self.passed + self.dropped.values().sum::<u64>()
    }
}

/// Descriptors the process holds now (the fewest of three looks 100 ms apart: a descriptor
/// the runtime holds for a moment is not a leak).
fn fd_count(pid: u32) -> anyhow::Result<usize> {
    let mut fewest = usize::MAX;
    for _ in 0..3 {
        let n = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("reading /proc/{pid}/fd"))?
            .count();
        fewest = fewest.min(n);
        thread::sleep(Duration::from_millis(100));
    }
    Ok(fewest)
}

/// `RssAnon` of the process, in KiB.
fn rss_anon_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no RssAnon in /proc/PID/status")
}

/// Reads the daemon at rest: waits (at most 3 s) until the accounting adds up, every frame is
/// back and only the configured endpoints are left, then records what it found, adding a
/// violation for what never settled.
fn at_rest(
    control: &Path,
    testbed: &Testbed,
    pid: u32,
    veth_start: u64,
    sent: u64,
    secs: f64,
    violations: &mut Vec<String>,
) -> anyhow::Result<Rest> {
    // A connection of its own each time: the daemon closes one idle for longer than
    // `limits.idle` (60 s), root's too.
    let mut client = Client::connect(control)?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let (stats, veth) = loop {
        let stats = ask_stats(&mut client)?;
        let veth = testbed.veth_drops() - veth_start;
        let (delivered, passed, dropped) = accounting(&stats, veth);
        let settled = sent == delivered + passed + dropped.values().sum::<u64>()
            && stats.endpoints.len() == CONFIGURED
            && stats.sockets.iter().all(frames_back);
        if settled || Instant::now() > deadline {
            break (stats, veth);
        }
        thread::sleep(Duration::from_millis(200));
    };
    let (delivered, passed, dropped) = accounting(&stats, veth);
    let rest = Rest {
        secs,
        sent,
        delivered,
        passed,
        dropped,
        fds: fd_count(pid)?,
        rss_anon_kib: rss_anon_kib(pid)?,
    };
    let at = format!("after {:.1} min", secs / 60.0);
    if rest.sent != rest.counted() {
        violations.push(format!(
            "{at}: accounting: sent {} but delivered {} + passed {} + dropped {} = {} \
             (difference {})",
            rest.sent,
            rest.delivered,
            rest.passed,
            rest.dropped.values().sum::<u64>(),
            rest.counted(),
            rest.counted() as i64 - rest.sent as i64
        ));
    }
    for s in stats.sockets.iter().filter(|s| !frames_back(s)) {
        violations.push(format!(
            "{at}: UMEM frames of {} queue {}: free list {} + fill ring {} + rx ring {} = {} \
             of {} (a frame is lost)",
            s.iface,
            s.queue,
            s.frames_free,
            s.frames_fill_ring,
            s.frames_rx_ring,
            s.frames_free + s.frames_fill_ring + s.frames_rx_ring,
            s.frames
        ));
    }
    if stats.endpoints.len() != CONFIGURED {
        let open: Vec<String> = stats
            .endpoints
            .iter()
            .map(|e| format!("{} {}", e.id, e.local))
            .collect();
        violations.push(format!(
            "{at}: {} endpoints open with the churn at rest, {CONFIGURED} expected (the \
             configured ones): {}",
            stats.endpoints.len(),
            open.join(", ")
        ));
    }
    let frames: Vec<String> = stats
        .sockets
        .iter()
        .map(|s| {
            format!(
                "q{} {}+{}+{}/{}",
                s.queue, s.frames_free, s.frames_fill_ring, s.frames_rx_ring, s.frames
            )
        })
        .collect();
    println!(
        "soak {:5.1} min: sent {} = delivered {} + passed {} + dropped {} {:?}; frames \
         free+fill+rx/all {}; fds {}; RssAnon {} KiB",
        secs / 60.0,
        rest.sent,
        rest.delivered,
        rest.passed,
        rest.dropped.values().sum::<u64>(),
        rest.dropped,
        frames.join(" "),
        rest.fds,
        rest.rss_anon_kib
    );
    Ok(rest)
}

fn frames_back(s: &demux::control::SocketInfo) -> bool {
    s.frames_free + s.frames_fill_ring + s.frames_rx_ring == u64::from(s.frames)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(minutes: f64, rate: Option<u64>) -> anyhow::Result<Vec<String>> {
    ensure!(
        demux::sys::euid() == 0,
        "needs root: namespaces, XDP and AF_XDP"
    );
    let started = Instant::now();
    demux::testing::testbed::remove_on_signal("soak");
    let testbed = probes::setup(None)?;
    let config = testbed.dir.join("soak.toml");
    std::fs::write(&config, CONFIG).context("writing the soak's configuration")?;
    println!("load average at the start: {}", load_average());
    let rate = match rate {
        Some(rate) => {
            println!("rate: {rate} pps (--rate)");
            rate
        }
        None => {
            let rate = search_rate(&testbed, &config)?;
            println!("rate: {rate} pps, the highest zero-loss rate the search found");
            rate
        }
    };

    let (mut daemon, notify, control) = start_daemon(&testbed, Some(&config))?;
    testbed.threaded_napi()?;
    let pid = daemon.id();
    let veth_start = testbed.veth_drops();
    let churn = Churn::start(&control, testbed.pair.b.name())?;
    let total = minutes * 60.0;
    let interval = if total >= 180.0 { 60.0 } else { total / 3.0 };
    println!(
        "soak: {minutes} min at {rate} pps to ports 7000-7004 ({} flows, {}-byte frames), \
         checks every {interval:.0} s; daemon pid {pid}",
        crate::cases::FLOWS,
        TRAFFIC.frame_len() + 4
    );
    let mut violations = Vec::new();
    let (mut sent, mut secs) = (0u64, 0.0f64);
    let mut first: Option<Rest> = None;
    let mut last = None;
    let mut churned = churn::Counts::default();
    while secs < total - 0.5 {
        let chunk = interval.min(total - secs);
        let (n, _, _) = generate(&testbed, &TRAFFIC, rate, chunk)?;
        sent += n;
        secs += chunk;
        if let Ok(Some(status)) = daemon.child().try_wait() {
            violations.push(format!(
                "the daemon exited ({status}) after {:.1} min; see {}",
                secs / 60.0,
                testbed.dir.join("daemon.log").display()
            ));
            return Ok(violations);
        }
        thread::sleep(Duration::from_millis(300));
        churned = churn.pause()?;
        let rest = at_rest(
            &control,
            &testbed,
            pid,
            veth_start,
            sent,
            secs,
            &mut violations,
        )?;
        println!(
            "           churn: {} cycles, {} endpoints bound, {} closed, {} refused; ring \
             clients read {}",
            churned.cycles, churned.bound, churned.closed, churned.failed, churned.ring_read
        );
        if secs < total - 0.5 {
            churn.resume();
        }
        if first.is_none() {
            first = Some(rest);
        } else {
            last = Some(rest);
        }
    }
    churn.stop();
    let first = first.context("no interval ran")?;
    let last = last.unwrap_or_else(|| first.clone());
    if last.fds > first.fds {
        violations.push(format!(
            "the daemon's descriptors grew from {} after {:.1} min to {} at the end",
            first.fds,
            first.secs / 60.0,
            last.fds
        ));
    }
    if last.rss_anon_kib.abs_diff(first.rss_anon_kib) > RSS_SLACK_KIB {
        violations.push(format!(
            "the daemon's RssAnon moved from {} KiB after {:.1} min to {} KiB at the end \
             (more than {RSS_SLACK_KIB} KiB)",
            first.rss_anon_kib,
            first.secs / 60.0,
            last.rss_anon_kib
        ));
    }
    if churned.failed > 0 {
        violations.push(format!(
            "{} of the churn's binds and closes failed; first: {}",
            churned.failed,
            churned.errors.join("; ")
        ));
    }
    match daemon.stop(Duration::from_secs(5)) {
        Some(status) if status.success() => {}
        other => violations.push(format!(
            "the daemon did not exit cleanly on SIGTERM: {other:?}; see {}",
            testbed.dir.join("daemon.log").display()
        )),
    }
    drop(notify);
    println!(
        "\nsoak summary: {minutes} min at {rate} pps; sent {}, delivered {} ({:.4}%), passed {}, \
         dropped {} {:?}; churn {} cycles, {} endpoints bound and {} closed; fds {} -> {}; \
         RssAnon {} -> {} KiB; load average at the end {}; took {:.0} s",
        last.sent,
        last.delivered,
        100.0 * last.delivered as f64 / last.sent.max(1) as f64,
        last.passed,
        last.dropped.values().sum::<u64>(),
        last.dropped,
        churned.cycles,
        churned.bound,
        churned.closed,
        first.fds,
        last.fds,
        first.rss_anon_kib,
        last.rss_anon_kib,
        load_average(),
        started.elapsed().as_secs_f64()
    );
    Ok(violations)
}
