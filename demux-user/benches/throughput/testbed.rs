//! The testbed: a sender namespace and a receiver namespace joined by a veth pair, and the
//! probes the cases read from it (veth, UDP and CPU counters, BPF run time). Dropping the
//! `Testbed` stops what it started, by PID, and deletes the namespaces; so does Ctrl-C
//! (`cleanup_on_signal`).

use std::{
    collections::BTreeMap,
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

pub const NS_A: &str = "dmxb-a";
pub const NS_B: &str = "dmxb-b";
pub const IF_A: &str = "bench-a";
pub const IF_B: &str = "bench-b";
/// The receiving side's CPU: the veth NAPI thread and every receiver run there.
pub const RX_CPU: usize = 1;

/// PIDs of the daemons running now, for the signal thread to stop.
static RUNNING: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// A command whose process gets SIGINT and SIGTERM back (the bench blocks them in its own
/// threads, and a child inherits the mask).
pub fn with_signals(mut command: Command) -> Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    command
}

/// Notes a process the testbed started, so Ctrl-C stops it too.
pub fn started(child: Child, testbed: &mut Testbed) {
    RUNNING.lock().expect("pid list").push(child.id());
    testbed.children.push(child);
}

/// Blocks SIGINT and SIGTERM in this thread and every thread it starts later, and leaves one
/// thread waiting for them: on either it stops the daemons by PID, deletes the namespaces and
/// the scratch directory, and exits 130. Call before any other thread starts. (The generator
/// stops by itself: every run is bounded by its --duration.)
pub fn cleanup_on_signal(dir: PathBuf) {
    // SAFETY: a fresh signal set with two signals, masked for this thread (and inherited).
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    thread::spawn(move || {
        let mut signal = 0;
        // SAFETY: waits for a signal of the blocked set.
        unsafe { libc::sigwait(&set, &mut signal) };
        eprintln!("\nbench throughput: interrupted; removing the testbed");
        for pid in RUNNING.lock().map(|p| p.clone()).unwrap_or_default() {
            // SAFETY: signalling a daemon this benchmark started, by its PID.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        thread::sleep(Duration::from_millis(500));
        for ns in [NS_A, NS_B] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::process::exit(130);
    });
}

pub struct Testbed {
    pub children: Vec<Child>,
    pub dir: PathBuf,
    pub b_mac: String,
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for child in &mut self.children {
            stop(child);
        }
        for ns in [NS_A, NS_B] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stops a process this benchmark started: SIGTERM by PID, then SIGKILL after 5 s.
pub fn stop(child: &mut Child) {
    RUNNING
        .lock()
        .expect("pid list")
        .retain(|pid| *pid != child.id());
    if let Ok(None) = child.try_wait() {
        // SAFETY: signalling a process this benchmark started, by its PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Runs a command; its stdout, or an error with its stderr.
pub fn sh(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("starting {}", args[0]))?;
    if !output.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn read_in(ns: &str, path: &str) -> anyhow::Result<String> {
    Ok(sh(&["ip", "netns", "exec", ns, "cat", path])?
        .trim()
        .to_owned())
}

/// Where the run keeps its control socket and daemon log.
pub fn scratch_dir() -> PathBuf {
    std::env::temp_dir().join(format!("demux-bench-{}", std::process::id()))
}

/// Builds the testbed, printing each step so it can be rebuilt by hand.
pub fn setup() -> anyhow::Result<Testbed> {
    for ns in [NS_A, NS_B] {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
    let dir = scratch_dir();
    std::fs::create_dir_all(&dir)?;
    let mut testbed = Testbed {
        children: Vec::new(),
        dir,
        b_mac: String::new(),
    };
    let link = format!("ip -n {NS_A} link add {IF_A} type veth peer name {IF_B} netns {NS_B}");
    let mut steps: Vec<String> = vec![
        format!("ip netns add {NS_A}"),
        format!("ip netns add {NS_B}"),
        // The sender sends nothing but the generator's frames: no IPv6 chatter, static ARP.
        format!("ip netns exec {NS_A} sysctl -q -w net.ipv6.conf.all.disable_ipv6=1"),
        format!("ip netns exec {NS_A} sysctl -q -w net.ipv6.conf.default.disable_ipv6=1"),
        link,
        format!("ip -n {NS_A} addr add 198.18.0.1/24 dev {IF_A}"),
        format!("ip -n {NS_B} addr add 198.18.0.2/24 dev {IF_B}"),
        format!("ip -n {NS_B} addr add 2001:2::2/64 dev {IF_B} nodad"),
        format!("ip -n {NS_A} link set {IF_A} up"),
        format!("ip -n {NS_B} link set {IF_B} up"),
    ];
    println!("testbed (to reproduce by hand):");
    for step in &steps {
        println!("  {step}");
        sh(&step.split(' ').collect::<Vec<_>>())?;
    }
    testbed.b_mac = read_in(NS_B, &format!("/sys/class/net/{IF_B}/address"))?;
    let a_mac = read_in(NS_A, &format!("/sys/class/net/{IF_A}/address"))?;
    steps = vec![
        format!(
            "ip -n {NS_A} neigh replace 198.18.0.2 lladdr {} dev {IF_A} nud permanent",
            testbed.b_mac
        ),
        format!("ip -n {NS_B} neigh replace 198.18.0.1 lladdr {a_mac} dev {IF_B} nud permanent"),
    ];
    for step in &steps {
        println!("  {step}");
        sh(&step.split(' ').collect::<Vec<_>>())?;
    }
    println!(
        "  (with an XDP program attached: echo 1 > /sys/class/net/{IF_B}/threaded in {NS_B}, \
         its napi/{IF_B} thread pinned to CPU {RX_CPU}; sender on CPU 0, receivers on CPU {RX_CPU}; Ctrl-C removes it all)"
    );
    Ok(testbed)
}

/// Makes the receiving veth's NAPI threaded and pins its thread to the receiving CPU (veth
/// takes threaded NAPI only while an XDP program is attached).
pub fn threaded_napi() -> anyhow::Result<()> {
    let path = format!("/sys/class/net/{IF_B}/threaded");
    sh(&[
        "ip",
        "netns",
        "exec",
        NS_B,
        "sh",
        "-c",
        &format!("echo 1 > {path}"),
    ])?;
    for entry in std::fs::read_dir("/proc")?.filter_map(Result::ok) {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim().starts_with(&format!("napi/{IF_B}")) {
            let pid = entry.file_name().to_string_lossy().into_owned();
            sh(&["taskset", "-p", "-c", &RX_CPU.to_string(), &pid])?;
        }
    }
    Ok(())
}

/// Runs `f` on a thread inside namespace B (and on the receiving CPU if `pin`).
pub fn in_b<T: Send>(pin: bool, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(NS_B)?;
                if pin {
                    pin_cpu(RX_CPU);
                }
                f()
            })
            .join()
            .expect("namespace thread panicked")
    })
}

/// Moves the calling thread into a namespace.
pub fn enter(ns: &str) -> anyhow::Result<()> {
    let file = File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: a valid namespace fd; only this thread changes namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

pub fn pin_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Frames the veth pair dropped before the receiving XDP program (both ends' counters).
pub fn veth_drops() -> u64 {
    let read = |ns: &str, iface: &str, stat: &str| -> u64 {
        read_in(ns, &format!("/sys/class/net/{iface}/statistics/{stat}"))
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    read(NS_A, IF_A, "tx_dropped") + read(NS_B, IF_B, "rx_dropped")
}

/// The UDP counters of namespace B for one family (`/proc/net/snmp` or `snmp6`), under the
/// IPv4 names (InDatagrams, NoPorts, InErrors, RcvbufErrors).
pub fn udp_counters(ipv6: bool) -> BTreeMap<String, u64> {
    if ipv6 {
        let text = read_in(NS_B, "/proc/net/snmp6").unwrap_or_default();
        return text
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(char::is_whitespace)?;
                let name = name.strip_prefix("Udp6")?;
                Some((name.to_owned(), value.trim().parse().ok()?))
            })
            .collect();
    }
    let text = read_in(NS_B, "/proc/net/snmp").unwrap_or_default();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap_or(""), udp.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter_map(|(n, v)| Some((n.to_owned(), v.parse().ok()?)))
        .collect()
}

/// Busy and total time of the receiving CPU so far, in clock ticks (`/proc/stat`).
#[derive(Clone, Copy)]
pub struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let line = stat
            .lines()
            .find(|l| l.starts_with(&format!("cpu{RX_CPU} ")))
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
    pub fn since(self, before: CpuTimes) -> (f64, f64) {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let busy = (self.busy - before.busy) as f64;
        (
            busy / ((self.total - before.total) as f64).max(1.0),
            busy / hz,
        )
    }
}

/// Run time (ns) and run count of the BPF programs a process holds (`/proc/PID/fdinfo`; the
/// kernel counts them while BPF_STATS_RUN_TIME is on).
pub fn bpf_run_stats(pid: u32) -> (u64, u64) {
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
pub fn map_ids(pid: u32) -> Vec<u32> {
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
