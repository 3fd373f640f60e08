//! The benchmark's testbed, a sender namespace and a receiver namespace joined by a veth pair
//! (built by `demux::testing::testbed`, with names of its own so that runs do not collide),
//! and the probes the cases read from it: veth, UDP and CPU counters, BPF run time. Dropping
//! the `Testbed` stops what it started, by PID, and deletes the namespaces; so does Ctrl-C
//! (`testbed::remove_on_signal`).

use std::time::{Duration, Instant};

use demux::testing::testbed::{Echo, PairSpec, TempDir, VethPair};

use crate::syscalls::SyscallCounter;

/// The receiving side's CPU: the veth NAPI thread and every receiver run there.
pub(crate) const RX_CPU: usize = 1;

/// The testbed: `pair.a` sends, `pair.b` receives; `dir` holds the control socket and logs.
pub(crate) struct Testbed {
    pub pair: VethPair,
    pub dir: TempDir,
    /// Counts the receiving threads' system calls, where tracefs allows.
    pub syscalls: Option<SyscallCounter>,
}

/// NAPI-level interrupt moderation on the receiving veth (Documentation/networking/napi.rst):
/// after a poll that found work, NAPI keeps veth's "interrupt" (its rx notification) masked
/// for up to `defer_hard_irqs` empty polls, each `gro_flush_timeout_ns` later from a timer,
/// so a sender's frames queue up instead of waking the NAPI thread one burst at a time. Set
/// once on the interface (`/sys/class/net/DEV/napi_defer_hard_irqs`, `gro_flush_timeout`),
/// which every NAPI instance veth creates afterwards (on each XDP attach) copies: so it holds
/// for every case of the run, the kernel's included.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct NapiModeration {
    pub defer_hard_irqs: u32,
    pub gro_flush_timeout_ns: u64,
}

impl std::fmt::Display for NapiModeration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "napi_defer_hard_irqs {} and gro_flush_timeout {} ns",
            self.defer_hard_irqs, self.gro_flush_timeout_ns
        )
    }
}

/// Builds the testbed, printing each step so it can be rebuilt by hand: the sender sends
/// nothing but the generator's frames (IPv6 off, static neighbours).
pub(crate) fn setup(moderation: Option<NapiModeration>) -> anyhow::Result<Testbed> {
    let dir = TempDir::new("demux-bench")?;
    println!("testbed (to reproduce by hand):");
    let mut pair = VethPair::new(PairSpec {
        echo: Echo::Show("  "),
        ..PairSpec::unique(
            "dmxb",
            &["198.18.0.1/24"],
            &["198.18.0.2/24", "2001:2::2/64"],
        )
    })?;
    println!(
        "  (with an XDP program attached: echo 1 > /sys/class/net/{b}/threaded in {ns}, \
         its napi/{b} thread pinned to CPU {RX_CPU}; sender on CPU 0, receivers on CPU {RX_CPU}; \
         Ctrl-C removes it all)",
        b = pair.b_if,
        ns = pair.b.name()
    );
    if let Some(m) = moderation {
        // Printed like the other steps (the pair echoes its commands here).
        let b_if = &pair.b_if;
        pair.b.exec(&[
            "sh",
            "-c",
            &format!(
                "echo {} > /sys/class/net/{b_if}/napi_defer_hard_irqs && \
                 echo {} > /sys/class/net/{b_if}/gro_flush_timeout",
                m.defer_hard_irqs, m.gro_flush_timeout_ns
            ),
        ])?;
        println!("  (NAPI moderation on {b_if}, every case: {m})");
    }
    // Only the steps that build it: the probes run quietly.
    pair.a.set_echo(Echo::Quiet);
    pair.b.set_echo(Echo::Quiet);
    let syscalls = SyscallCounter::new()
        .inspect_err(|e| println!("  (system calls not counted: {e:#})"))
        .ok();
    Ok(Testbed {
        pair,
        dir,
        syscalls,
    })
}

impl Testbed {
    /// Starts counting the system calls of `threads` (the receiving side of a case).
    pub(crate) fn count_syscalls(&self, threads: &[u32]) {
        if let Some(counter) = &self.syscalls {
            if let Err(e) = counter.start(threads) {
                eprintln!("system calls not counted: {e:#}");
            }
        }
    }

    /// The system calls counted since `count_syscalls`.
    pub(crate) fn syscalls_counted(&self) -> Option<u64> {
        self.syscalls.as_ref()?.stop().ok()
    }

    /// Makes the receiving veth's NAPI threaded and pins its thread to the receiving CPU
    /// (veth takes threaded NAPI only while an XDP program is attached); returns the NAPI
    /// threads' ids.
    pub(crate) fn threaded_napi(&self) -> anyhow::Result<Vec<u32>> {
        let mut napi = Vec::new();
        let b_if = &self.pair.b_if;
        self.pair.b.exec(&[
            "sh",
            "-c",
            &format!("echo 1 > /sys/class/net/{b_if}/threaded"),
        ])?;
        for entry in std::fs::read_dir("/proc")?.filter_map(Result::ok) {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if comm.trim().starts_with(&format!("napi/{b_if}")) {
                let pid = entry.file_name().to_string_lossy().into_owned();
                demux::testing::testbed::run(std::process::Command::new("taskset").args([
                    "-p",
                    "-c",
                    &RX_CPU.to_string(),
                    &pid,
                ]))?;
                napi.extend(pid.parse::<u32>());
            }
        }
        Ok(napi)
    }

    /// Runs `f` on a thread inside namespace B (and on the receiving CPU if `pin`).
    pub(crate) fn in_b<T: Send>(
        &self,
        pin: bool,
        f: impl FnOnce() -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        self.pair.b.run_in(|| {
            if pin {
                crate::sys::pin_cpu(RX_CPU);
            }
            f()
        })
    }

    /// Frames the veth pair dropped before the receiving XDP program (both ends' counters).
    pub(crate) fn veth_drops(&self) -> u64 {
        let read = |ns: &demux::testing::testbed::NetNs, iface: &str, stat: &str| -> u64 {
            ns.read(&format!("/sys/class/net/{iface}/statistics/{stat}"))
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        };
        // A frame the sender's veth could not hand on with XDP_TX (the live sender's, when the
        // receiving ring is full) is in both counters: once only.
        (read(&self.pair.a, &self.pair.a_if, "tx_dropped")
            + read(&self.pair.b, &self.pair.b_if, "rx_dropped"))
        .saturating_sub(self.xdp_xmit_errors())
    }

    /// Frames the sender's veth refused to hand on with XDP_TX (its
    /// `tx_queue_N_xdp_xmit_errors`); 0 if unread.
    fn xdp_xmit_errors(&self) -> u64 {
        let stats = self
            .pair
            .a
            .exec(&["ethtool", "-S", &self.pair.a_if])
            .unwrap_or_default();
        stats
            .lines()
            .filter_map(|line| line.trim().split_once(':'))
            .filter(|(name, _)| name.starts_with("tx_queue_") && name.ends_with("_xdp_xmit_errors"))
            .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
            .sum()
    }

    /// The UDP counters of namespace B for one family, under the IPv4 names (InDatagrams,
    /// NoPorts, InErrors, RcvbufErrors); empty if they cannot be read.
    pub(crate) fn udp_counters(&self, ipv6: bool) -> std::collections::BTreeMap<String, u64> {
        self.pair.b.udp_counters(ipv6).unwrap_or_default()
    }
}

/// Busy and total time of the receiving CPU so far, in clock ticks (`/proc/stat`).
#[derive(Clone, Copy)]
pub(crate) struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    /// The receiving CPU's times.
    pub(crate) fn now() -> Self {
        Self::of(&read_stat(), RX_CPU)
    }

    /// CPU `cpu`'s times in `stat`, the text of /proc/stat.
    fn of(stat: &str, cpu: usize) -> Self {
        let line = stat
            .lines()
            .find(|l| l.starts_with(&format!("cpu{cpu} ")))
            .unwrap_or("");
        // user nice system idle iowait irq softirq steal
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let get = |i: usize| v.get(i).copied().unwrap_or(0);
        let idle = get(3) + get(4);
        let total: u64 = v.iter().take(8).sum();
        Self {
            busy: total - idle,
            total,
        }
    }

    /// Busy share and busy seconds since `before`.
    pub(crate) fn since(self, before: CpuTimes) -> (f64, f64) {
        let hz = crate::sys::clock_ticks();
        let busy = (self.busy - before.busy) as f64;
        (
            busy / ((self.total - before.total) as f64).max(1.0),
            busy / hz,
        )
    }
}

fn read_stat() -> String {
    std::fs::read_to_string("/proc/stat").unwrap_or_default()
}

/// Waits (at most `MAX_SETTLE`) until both CPUs have been nearly idle for a while, so that a
/// case does not start while the kernel still tears down the previous one: a daemon that held
/// 1,000,000 bindings leaves seconds of map freeing behind it, which took CPU from the next
/// case's sender and receiver (the first cases of rounds 2 and 3 read ~45% low before this
/// wait). Says so when it gives up.
pub(crate) fn wait_until_quiet() {
    const WINDOW: Duration = Duration::from_millis(200);
    const IDLE_WINDOWS: u32 = 2;
    const MAX_BUSY: f64 = 0.10;
    const MAX_SETTLE: Duration = Duration::from_secs(20);
    let started = Instant::now();
    let mut quiet = 0;
    while quiet < IDLE_WINDOWS {
        if started.elapsed() > MAX_SETTLE {
            eprintln!(
                "warning: the CPUs were still busy after {} s; the next case starts anyway",
                MAX_SETTLE.as_secs()
            );
            break;
        }
        let before = read_stat();
        std::thread::sleep(WINDOW);
        let after = read_stat();
        let busy = [0, RX_CPU].map(|cpu| {
            CpuTimes::of(&after, cpu)
                .since(CpuTimes::of(&before, cpu))
                .0
        });
        quiet = if busy.iter().all(|&b| b <= MAX_BUSY) {
            quiet + 1
        } else {
            0
        };
    }
}

/// Run time (ns) and run count of the BPF programs a process holds (`/proc/PID/fdinfo`; the
/// kernel counts them while BPF_STATS_RUN_TIME is on).
pub(crate) fn bpf_run_stats(pid: u32) -> (u64, u64) {
    let mut sum = (0, 0);
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return sum;
    };
    for entry in dir.filter_map(Result::ok) {
        let info = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if !info.contains("prog_id:") {
            continue;
        }
        let field = |name: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        sum.0 += field("run_time_ns:");
        sum.1 += field("run_cnt:");
    }
    sum
}

/// The ids of the BPF maps a process holds.
pub(crate) fn map_ids(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| {
            let info = std::fs::read_to_string(entry.path()).ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// The time `threads` (ids) have run on a CPU so far, in ns (`/proc/TID/schedstat`'s first
/// field: precise, and unlike the CPU's busy share it does not count other processes that
/// happen to run on the receiving CPU). A thread gone since counts 0.
pub(crate) fn threads_cpu_ns(threads: &[u32]) -> u64 {
    schedstat_sum(threads, 0)
}

/// How many times `threads` (ids) were switched onto a CPU so far (`/proc/TID/schedstat`'s
/// third field): each wakeup is one, and so is each return after a preemption. Per datagram,
/// the wakeups a receiver pays for. A thread gone since counts 0.
pub(crate) fn threads_runs(threads: &[u32]) -> u64 {
    schedstat_sum(threads, 2)
}

/// The sum over `threads` of field `field` of `/proc/TID/schedstat`.
fn schedstat_sum(threads: &[u32], field: usize) -> u64 {
    threads
        .iter()
        .filter_map(|tid| {
            std::fs::read_to_string(format!("/proc/{tid}/schedstat"))
                .ok()?
                .split_whitespace()
                .nth(field)?
                .parse::<u64>()
                .ok()
        })
        .sum()
}
