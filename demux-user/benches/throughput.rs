//! `cargo xtask bench throughput`: demux side by side with the kernel's UDP sockets and the
//! XDP_DROP limit, on a two-namespace veth testbed, with the same generator for every case.
//!
//! Testbed: namespace `dmxb-a` sends (AF_XDP `demux gen`, pinned to CPU 0) over the veth pair
//! `bench-a`/`bench-b` to namespace `dmxb-b`, whose receive NAPI is threaded and pinned to CPU 1
//! with the receiver; static neighbour entries. veth accepts threaded NAPI only while an XDP
//! program is attached, so the kernel-socket cases run with the bare `baseline_pass` program
//! attached (about 5 ns a packet, see `bench classifier`). Cases, run in rounds (A B C … A B C):
//!
//! - `xdp_drop`: `bench_drop` counts and drops: the limit of the hook here.
//! - `kernel_recvmmsg`: one UDP socket, a thread reading with recvmmsg (batches of 64).
//! - `kernel_reuseport`: one SO_REUSEPORT socket per core, a thread each.
//! - `demux_count`: the daemon delivering to a counting sink.
//! - `demux_ring`: the daemon delivering to a client's shared-memory ring.
//!
//! Each case reports offered and delivered pps and loss, and checks the accounting: every frame
//! sent is delivered, passed, or dropped with a named reason (a socket buffer, the veth ring,
//! the AF_XDP rx ring, a full sink); a mismatch fails the run.
//!
//! Flags: `--quick` (one round of 2 s per case), `--json PATH`.

use std::{
    collections::BTreeMap,
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use aya::{
    maps::PerCpuArray,
    programs::{Xdp, XdpMode},
    Ebpf,
};
use demux::{
    binding::Protocol,
    client::Endpoint,
    control::{client::Client, BindRequest, Request, Response},
    sink::SinkSpec,
};
use demux_common::maps;
use serde_json::json;

const NS_A: &str = "dmxb-a";
const NS_B: &str = "dmxb-b";
const IF_A: &str = "bench-a";
const IF_B: &str = "bench-b";
const DAEMON: &str = env!("CARGO_BIN_EXE_demux");
const PORT: u16 = 7000;
const FLOWS: u16 = 64;

fn main() -> ExitCode {
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

/// The namespaces and processes of the run; dropping it stops the processes by PID and
/// deletes the namespaces.
struct Testbed {
    children: Vec<Child>,
    dir: PathBuf,
    b_mac: String,
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

fn stop(child: &mut Child) {
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

fn sh(args: &[&str]) -> anyhow::Result<String> {
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

fn setup() -> anyhow::Result<Testbed> {
    for ns in [NS_A, NS_B] {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
    let dir = std::env::temp_dir().join(format!("demux-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut testbed = Testbed {
        children: Vec::new(),
        dir,
        b_mac: String::new(),
    };
    let steps: &[&[&str]] = &[
        &["ip", "netns", "add", NS_A],
        &["ip", "netns", "add", NS_B],
        &[
            "ip", "-n", NS_A, "link", "add", IF_A, "type", "veth", "peer", "name", IF_B, "netns",
            NS_B,
        ],
        &[
            "ip",
            "-n",
            NS_A,
            "addr",
            "add",
            "198.18.0.1/24",
            "dev",
            IF_A,
        ],
        &[
            "ip",
            "-n",
            NS_B,
            "addr",
            "add",
            "198.18.0.2/24",
            "dev",
            IF_B,
        ],
        &["ip", "-n", NS_A, "link", "set", IF_A, "up"],
        &["ip", "-n", NS_B, "link", "set", IF_B, "up"],
    ];
    println!("testbed (to reproduce by hand):");
    for step in steps {
        println!("  {}", step.join(" "));
        sh(step)?;
    }
    // No IPv6 autoconfiguration chatter: every frame counted is one the generator sent.
    for ns in [NS_A, NS_B] {
        for key in ["all", "default"] {
            let setting = format!("net.ipv6.conf.{key}.disable_ipv6=1");
            let step = ["ip", "netns", "exec", ns, "sysctl", "-q", "-w", &setting];
            println!("  {}", step.join(" "));
            sh(&step)?;
        }
    }
    testbed.b_mac = sh(&[
        "ip",
        "netns",
        "exec",
        NS_B,
        "cat",
        &format!("/sys/class/net/{IF_B}/address"),
    ])?
    .trim()
    .to_owned();
    let a_mac = sh(&[
        "ip",
        "netns",
        "exec",
        NS_A,
        "cat",
        &format!("/sys/class/net/{IF_A}/address"),
    ])?
    .trim()
    .to_owned();
    for step in [
        vec![
            "ip",
            "-n",
            NS_A,
            "neigh",
            "replace",
            "198.18.0.2",
            "lladdr",
            &testbed.b_mac,
            "dev",
            IF_A,
            "nud",
            "permanent",
        ],
        vec![
            "ip",
            "-n",
            NS_B,
            "neigh",
            "replace",
            "198.18.0.1",
            "lladdr",
            &a_mac,
            "dev",
            IF_B,
            "nud",
            "permanent",
        ],
    ] {
        println!("  {}", step.join(" "));
        sh(&step)?;
    }
    println!("  (threaded NAPI on {IF_B} and its thread pinned to CPU 1 once XDP is attached; sender on CPU 0, receiver on CPU 1)");
    Ok(testbed)
}

/// Makes the receiving veth's NAPI threaded and pins its thread to CPU 1 (XDP must be attached).
fn threaded_napi() -> anyhow::Result<()> {
    sh(&[
        "ip",
        "netns",
        "exec",
        NS_B,
        "sh",
        "-c",
        &format!("echo 1 > /sys/class/net/{IF_B}/threaded"),
    ])?;
    for entry in std::fs::read_dir("/proc")?.filter_map(Result::ok) {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim().starts_with(&format!("napi/{IF_B}")) {
            let pid = entry.file_name().to_string_lossy().into_owned();
            sh(&["taskset", "-p", "-c", "1", &pid])?;
        }
    }
    Ok(())
}

/// Runs `f` on a thread inside namespace B (and CPU 1 if `pin`).
fn in_b<T: Send>(pin: bool, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(NS_B)?;
                if pin {
                    pin_cpu(1);
                }
                f()
            })
            .join()
            .expect("namespace thread panicked")
    })
}

fn enter(ns: &str) -> anyhow::Result<()> {
    let file = File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: a valid namespace fd; only this thread changes namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn pin_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Sends for `secs` seconds as fast as the generator goes; returns frames sent and the
/// seconds the generator took.
fn generate(testbed: &Testbed, secs: f64) -> anyhow::Result<(u64, f64)> {
    let output = Command::new("ip")
        .args([
            "netns", "exec", NS_A, "taskset", "-c", "0", DAEMON, "gen", "--iface", IF_A,
        ])
        .args([
            "--src",
            "198.18.0.1:40000",
            "--dst",
            &format!("198.18.0.2:{PORT}"),
        ])
        .args([
            "--dst-mac",
            &testbed.b_mac,
            "--count",
            "10000000",
            "--flows",
            &FLOWS.to_string(),
        ])
        .args(["--duration", &secs.to_string(), "--json"])
        .output()
        .context("starting the generator")?;
    // Reaching the duration before the count ends the run with a non-zero exit; the JSON line
    // is printed either way.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .with_context(|| {
            format!(
                "the generator said: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )
        })?;
    let sent = report["sent"]
        .as_u64()
        .context("the generator's report has no `sent`")?;
    let seconds = report["seconds"]
        .as_f64()
        .context("the generator's report has no `seconds`")?;
    Ok((sent, seconds))
}

/// Frames the veth pair dropped before the receiving XDP program (both ends' counters).
fn veth_drops() -> u64 {
    let read = |ns: &str, iface: &str, stat: &str| -> u64 {
        sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "cat",
            &format!("/sys/class/net/{iface}/statistics/{stat}"),
        ])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
    };
    read(NS_A, IF_A, "tx_dropped") + read(NS_B, IF_B, "rx_dropped")
}

/// The UDP counters of namespace B (/proc/net/snmp).
fn udp_counters() -> BTreeMap<String, u64> {
    let text = sh(&["ip", "netns", "exec", NS_B, "cat", "/proc/net/snmp"]).unwrap_or_default();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap_or(""), udp.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter_map(|(n, v)| Some((n.to_owned(), v.parse().ok()?)))
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    XdpDrop,
    KernelRecvmmsg,
    KernelReuseport,
    DemuxCount,
    DemuxRing,
}

impl Case {
    const ALL: [Case; 5] = [
        Case::XdpDrop,
        Case::KernelRecvmmsg,
        Case::KernelReuseport,
        Case::DemuxCount,
        Case::DemuxRing,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::XdpDrop => "xdp_drop",
            Case::KernelRecvmmsg => "kernel_recvmmsg",
            Case::KernelReuseport => "kernel_reuseport",
            Case::DemuxCount => "demux_count",
            Case::DemuxRing => "demux_ring",
        }
    }
}

/// One measurement.
struct Sample {
    sent: u64,
    delivered: u64,
    secs: f64,
    /// Dropped, by reason.
    dropped: BTreeMap<&'static str, u64>,
    /// Passed to the kernel without being delivered to the case's receiver.
    passed: u64,
}

impl Sample {
    fn accounted(&self) -> bool {
        self.sent == self.delivered + self.passed + self.dropped.values().sum::<u64>()
    }
}

/// Loads the object for the XDP_DROP and kernel cases and attaches `program` to bench-b.
fn attach_plain(program: &str) -> anyhow::Result<Ebpf> {
    in_b(false, || {
        let mut ebpf = Ebpf::load(demux::program::OBJECT).context("loading the object")?;
        let prog: &mut Xdp = ebpf.program_mut(program).context("program")?.try_into()?;
        prog.load()?;
        prog.attach(IF_B, XdpMode::Driver)
            .with_context(|| format!("attaching {program}"))?;
        Ok(ebpf)
    })
}

/// Kernel UDP receivers: `sockets` SO_REUSEPORT sockets on 198.18.0.2:PORT, a thread each.
fn kernel_receivers(
    sockets: usize,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> anyhow::Result<Vec<thread::JoinHandle<()>>> {
    let mut handles = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    for i in 0..sockets {
        let (stop, count, ready) = (stop.clone(), count.clone(), ready_tx.clone());
        handles.push(thread::spawn(move || {
            let setup = || -> anyhow::Result<std::net::UdpSocket> {
                enter(NS_B)?;
                if sockets == 1 {
                    pin_cpu(1);
                }
                // SAFETY: plain socket calls on a fresh socket; the fd is owned right after.
                let socket = unsafe {
                    let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                    let one: libc::c_int = 1;
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_REUSEPORT,
                        (&raw const one).cast(),
                        4,
                    );
                    let addr = libc::sockaddr_in {
                        sin_family: libc::AF_INET as u16,
                        sin_port: PORT.to_be(),
                        sin_addr: libc::in_addr {
                            s_addr: u32::from_ne_bytes([198, 18, 0, 2]),
                        },
                        sin_zero: [0; 8],
                    };
                    let size = std::mem::size_of::<libc::sockaddr_in>() as u32;
                    if libc::bind(fd, (&raw const addr).cast(), size) != 0 {
                        let error = std::io::Error::last_os_error();
                        libc::close(fd);
                        bail!("bind socket {i}: {error}");
                    }
                    use std::os::fd::FromRawFd;
                    std::net::UdpSocket::from_raw_fd(fd)
                };
                socket.set_read_timeout(Some(Duration::from_millis(50)))?;
                Ok(socket)
            };
            let socket = match setup() {
                Ok(s) => {
                    let _ = ready.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            const BATCH: usize = 64;
            let mut bufs = vec![[0u8; 2048]; BATCH];
            let mut iovs: Vec<libc::iovec> = bufs
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                })
                .collect();
            // SAFETY: mmsghdr is plain data; each points at its iovec below.
            let mut msgs: Vec<libc::mmsghdr> = iovs
                .iter_mut()
                .map(|iov| {
                    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    m.msg_hdr.msg_iov = iov;
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            while !stop.load(Relaxed) {
                // SAFETY: msgs, iovs and bufs live across the call.
                let n = unsafe {
                    libc::recvmmsg(
                        socket.as_raw_fd(),
                        msgs.as_mut_ptr(),
                        BATCH as u32,
                        libc::MSG_WAITFORONE,
                        std::ptr::null_mut(),
                    )
                };
                if n > 0 {
                    count.fetch_add(n as u64, Relaxed);
                }
            }
        }));
    }
    for _ in 0..sockets {
        ready_rx.recv().context("a receiver thread died")??;
    }
    Ok(handles)
}

/// Starts the daemon in namespace B on CPU 1; returns it and its control socket path.
fn start_daemon(testbed: &mut Testbed) -> anyhow::Result<PathBuf> {
    let control = testbed.dir.join("control.sock");
    let _ = std::fs::remove_file(&control);
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            NS_B,
            "taskset",
            "-c",
            "1",
            DAEMON,
            "daemon",
            "--iface",
            IF_B,
            "--stats-interval",
            "0",
            "--control",
        ])
        .arg(&control)
        .stdout(Stdio::null())
        .stderr(File::create(testbed.dir.join("daemon.log"))?)
        .spawn()?;
    testbed.children.push(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !control.exists() {
        ensure!(
            Instant::now() < deadline,
            "the daemon did not start; see {}",
            testbed.dir.join("daemon.log").display()
        );
        thread::sleep(Duration::from_millis(20));
    }
    Ok(control)
}

fn stats(client: &mut Client) -> anyhow::Result<demux::control::Stats> {
    match client.call(Request::Stats)? {
        Response::Stats(stats) => Ok(stats),
        other => bail!("stats: {other:?}"),
    }
}

fn measure(case: Case, testbed: &mut Testbed, secs: f64) -> anyhow::Result<Sample> {
    let veth_before = veth_drops();
    let drain = Duration::from_millis(300);
    match case {
        Case::XdpDrop => {
            let ebpf = attach_plain(maps::BENCH_DROP_PROGRAM)?;
            threaded_napi()?;
            let (sent, secs) = generate(testbed, secs)?;
            thread::sleep(drain);
            let drops: PerCpuArray<_, u64> =
                PerCpuArray::try_from(ebpf.map(maps::BENCH_DROPS).context("BENCH_DROPS")?)?;
            let delivered: u64 = drops.get(&0, 0)?.iter().sum();
            let mut dropped = BTreeMap::new();
            dropped.insert("veth", veth_drops() - veth_before);
            Ok(Sample {
                sent,
                delivered,
                secs,
                dropped,
                passed: 0,
            })
        }
        Case::KernelRecvmmsg | Case::KernelReuseport => {
            let _ebpf = attach_plain(maps::BASELINE_PROGRAM)?;
            threaded_napi()?;
            let sockets = if case == Case::KernelRecvmmsg {
                1
            } else {
                thread::available_parallelism().map_or(2, |n| n.get())
            };
            let (stop, count) = (
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicU64::new(0)),
            );
            let receivers = kernel_receivers(sockets, stop.clone(), count.clone())?;
            let udp_before = udp_counters();
            let (sent, secs) = generate(testbed, secs)?;
            thread::sleep(drain);
            stop.store(true, Relaxed);
            for r in receivers {
                let _ = r.join();
            }
            let udp_after = udp_counters();
            let delta = |k: &str| udp_after.get(k).unwrap_or(&0) - udp_before.get(k).unwrap_or(&0);
            let mut dropped = BTreeMap::new();
            dropped.insert("veth", veth_drops() - veth_before);
            dropped.insert("socket_buffer", delta("RcvbufErrors"));
            dropped.insert("udp_other", delta("InErrors") - delta("RcvbufErrors"));
            dropped.insert("no_port", delta("NoPorts"));
            // Datagrams queued but still unread when the receivers stopped.
            let passed = delta("InDatagrams") - count.load(Relaxed);
            Ok(Sample {
                sent,
                delivered: count.load(Relaxed),
                secs,
                dropped,
                passed,
            })
        }
        Case::DemuxCount | Case::DemuxRing => {
            let control = start_daemon(testbed)?;
            let result = measure_demux(case, testbed, &control, secs, drain, veth_before);
            if let Some(mut daemon) = testbed.children.pop() {
                stop(&mut daemon);
            }
            result
        }
    }
}

fn measure_demux(
    case: Case,
    testbed: &Testbed,
    control: &Path,
    secs: f64,
    drain: Duration,
    veth_before: u64,
) -> anyhow::Result<Sample> {
    let mut client = Client::connect(control)?;
    let stop = Arc::new(AtomicBool::new(false));
    let ring_count = Arc::new(AtomicU64::new(0));
    let mut ring_thread = None;
    if case == Case::DemuxCount {
        let request = BindRequest {
            protocol: Protocol::Udp,
            local: format!("0.0.0.0:{PORT}"),
            connect: None,
            group: None,
            v6only: false,
            to: SinkSpec::Count,
            persistent: false,
        };
        client.call(Request::Bind(request))?;
    } else {
        let (control, stop, count) = (control.to_owned(), stop.clone(), ring_count.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        ring_thread = Some(thread::spawn(move || {
            pin_cpu(1);
            let mut endpoint =
                match Endpoint::bind(&control, Protocol::Udp, &format!("0.0.0.0:{PORT}")) {
                    Ok(e) => {
                        let _ = ready_tx.send(Ok(()));
                        e
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
            while !stop.load(Relaxed) {
                match endpoint.recv_batch(256, |_| {}) {
                    Ok(0) => {
                        if let Ok(Some(_)) = endpoint.recv_from(Some(Duration::from_millis(50))) {
                            count.fetch_add(1, Relaxed);
                        }
                    }
                    Ok(n) => {
                        count.fetch_add(n as u64, Relaxed);
                    }
                    Err(_) => break,
                }
            }
        }));
        ready_rx.recv().context("the ring client died")??;
    }
    threaded_napi()?;
    let (sent, secs) = generate(testbed, secs)?;
    thread::sleep(drain);
    stop.store(true, Relaxed);
    if let Some(t) = ring_thread {
        let _ = t.join();
    }
    let s = stats(&mut client)?;
    let mut dropped = BTreeMap::new();
    // veth counts a failed redirect (the AF_XDP rx ring full) as its own rx drop too: count
    // those once, under the socket.
    let xsk_rx: u64 = s.sockets.iter().map(|x| x.rx_dropped).sum();
    dropped.insert("veth", (veth_drops() - veth_before).saturating_sub(xsk_rx));
    dropped.insert("xsk_rx", xsk_rx);
    dropped.insert(
        "sink",
        s.endpoints
            .iter()
            .map(|e| e.dropped_sink_full + e.dropped_sink_error)
            .sum(),
    );
    dropped.insert("worker", s.dropped_no_endpoint + s.dropped_bad_metadata);
    // What the sink took: for the ring, the client then read it (it stops a little after the
    // generator and may leave a few unread; those were delivered all the same).
    let read = ring_count.load(Relaxed);
    ensure!(
        case != Case::DemuxRing || read <= s.delivered(),
        "the client read {read} of {} delivered",
        s.delivered()
    );
    Ok(Sample {
        sent,
        delivered: s.delivered(),
        secs,
        dropped,
        passed: s.passed(),
    })
}

fn run() -> anyhow::Result<bool> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .cloned();
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "needs root: namespaces, XDP and AF_XDP"
    );
    let (rounds, secs) = if quick { (1, 2.0) } else { (3, 5.0) };
    let mut testbed = setup()?;
    let mut samples: BTreeMap<&'static str, Vec<Sample>> = BTreeMap::new();
    let total = rounds * Case::ALL.len();
    let mut done = 0;
    for round in 0..rounds {
        for case in Case::ALL {
            done += 1;
            eprintln!(
                "[{done}/{total}] round {} {} ({secs} s)",
                round + 1,
                case.name()
            );
            let sample = measure(case, &mut testbed, secs).with_context(|| case.name())?;
            samples.entry(case.name()).or_default().push(sample);
        }
    }
    drop(testbed);

    println!(
        "\n{:<18} {:>12} {:>12} {:>8} {:>9} {:>9}  accounting",
        "case", "offered pps", "delivered pps", "loss %", "÷kernel", "÷xdp_drop"
    );
    let median_pps = |name: &str| -> f64 {
        let mut v: Vec<f64> = samples[name]
            .iter()
            .map(|s| s.delivered as f64 / s.secs)
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let kernel = median_pps("kernel_recvmmsg");
    let limit = median_pps("xdp_drop");
    let mut all_accounted = true;
    let mut rows = Vec::new();
    for case in Case::ALL {
        let list = &samples[case.name()];
        let delivered = median_pps(case.name());
        let mut offered: Vec<f64> = list.iter().map(|s| s.sent as f64 / s.secs).collect();
        offered.sort_by(f64::total_cmp);
        let offered = offered[offered.len() / 2];
        let (sent, got): (u64, u64) = list
            .iter()
            .fold((0, 0), |(a, b), s| (a + s.sent, b + s.delivered));
        let loss = 100.0 * (sent - got.min(sent)) as f64 / sent.max(1) as f64;
        let accounted = list.iter().all(Sample::accounted);
        all_accounted &= accounted;
        let dropped: BTreeMap<&str, u64> =
            list.iter()
                .flat_map(|s| s.dropped.iter())
                .fold(BTreeMap::new(), |mut m, (k, v)| {
                    *m.entry(*k).or_default() += v;
                    m
                });
        println!(
            "{:<18} {:>12.0} {:>12.0} {:>8.2} {:>9.2} {:>9.2}  {}",
            case.name(),
            offered,
            delivered,
            loss,
            delivered / kernel,
            delivered / limit,
            if accounted {
                "ok".to_owned()
            } else {
                let gaps: Vec<String> = list
                    .iter()
                    .map(|s| {
                        let counted = s.delivered + s.passed + s.dropped.values().sum::<u64>();
                        format!(
                            "sent {} counted {} ({:+})",
                            s.sent,
                            counted,
                            counted as i64 - s.sent as i64
                        )
                    })
                    .collect();
                format!("MISMATCH {dropped:?} {}", gaps.join("; "))
            }
        );
        rows.push(json!({
            "case": case.name(), "offered_pps": offered, "delivered_pps": delivered, "loss_percent": loss,
            "ratio_to_kernel_recvmmsg": delivered / kernel, "ratio_to_xdp_drop": delivered / limit,
            "accounted": accounted, "dropped": dropped,
            "samples": list.iter().map(|s| json!({"sent": s.sent, "delivered": s.delivered, "passed": s.passed,
                "seconds": s.secs, "dropped": s.dropped})).collect::<Vec<_>>(),
        }));
    }
    println!("\n(64-byte IPv4 UDP frames, {FLOWS} flows, {rounds} round(s) of {secs} s per case, medians)");
    if let Some(path) = json_path {
        if let Some(dir) = Path::new(&path).parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&json!({
                "bench": "throughput", "quick": quick, "rounds": rounds, "seconds": secs, "frame_bytes": 64,
                "flows": FLOWS, "rows": rows,
            }))?,
        )?;
        println!("wrote {path}");
    }
    Ok(all_accounted)
}
