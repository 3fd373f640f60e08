//! The demux cases: the daemon in the receiving namespace, delivering to counting sinks or to
//! a client's ring. For the scale case the bench writes filler bindings straight into the
//! daemon's CONNECTED table (the daemon's map, found by id from its `/proc/PID/fdinfo`): a
//! connected binding per filler, from addresses the traffic never uses, with its port-index
//! bit. On the endpoints' own ports every packet probes that table and misses before its
//! wildcard match (the worst case); on other ports the port index spares the probe.

use std::{
    collections::BTreeMap,
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        mpsc, Arc,
    },
    thread,
    time::Duration,
};

use anyhow::{bail, ensure, Context as _};
use aya::maps::{Array, HashMap, Map, MapData, MapInfo};
use demux::{
    backing,
    binding::{addr16, Protocol},
    client::Endpoint,
    control::{client::Client, BindRequest, Request, Response, SinkSpec, Stats},
    testing::testbed::{enter_netns, ChildGuard, NotifySocket},
};
use demux_common::{
    binding::{ConnectedKey, Target, FAMILY_IPV4, FAMILY_IPV6, PROTO_UDP},
    maps,
    ports::{port_bit, port_index, PortEntry, TABLE_CONNECTED},
    presence,
};

use crate::{
    cases::{Case, Receiver, Sample, BATCH_WAIT, PORT},
    generator::{generate, DEMUX},
    probes::{bpf_run_stats, map_ids, threads_cpu_ns, threads_runs, CpuTimes, Testbed, RX_CPU},
    sys::pin_cpu,
    syscalls::{thread_id, threads_of},
};

/// UMEM frames per queue the daemon runs with (its default), of `demux::xsk::FRAME_SIZE`.
const FRAMES: u64 = 4096;

/// The daemon binary: this build's, or the one `DEMUX_BENCH_DAEMON` names (another build's,
/// with a copy of that build's bench binary, to compare two builds in one interleaved session).
fn daemon_binary() -> String {
    std::env::var("DEMUX_BENCH_DAEMON").unwrap_or_else(|_| DEMUX.to_owned())
}

/// Starts the daemon in namespace B on the receiving CPU (with the configuration file
/// `config`, if given) and waits for its `READY=1` (sd_notify); returns it (dropping it stops
/// it), its notify socket (to keep until it has stopped) and its control socket.
pub(crate) fn start_daemon(
    testbed: &Testbed,
    config: Option<&Path>,
) -> anyhow::Result<(ChildGuard, NotifySocket, PathBuf)> {
    let control = testbed.dir.join("control.sock");
    let log = testbed.dir.join("daemon.log");
    let notify = NotifySocket::bind(testbed.dir.join("notify.sock"))?;
    let mut command = testbed.pair.b.command("taskset");
    command
        .args(["-c", &RX_CPU.to_string()])
        .arg(daemon_binary())
        .args(["daemon", "--iface", &testbed.pair.b_if])
        .args(["--stats-interval", "0", "--frames", &FRAMES.to_string()])
        // The bench's client (root) may take the fast path; only demux_client_fast asks.
        .args(["--fast-path-uid", "0"])
        .arg("--control")
        .arg(&control);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let mut daemon = ChildGuard::spawn(
        command
            .env(NotifySocket::VAR, notify.path())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?),
    )?;
    notify
        .wait_ready(&mut daemon, Duration::from_secs(15))
        .with_context(|| format!("the daemon did not start; see {}", log.display()))?;
    Ok((daemon, notify, control))
}

/// Runs one demux case at `rate` pps (0: flat out) for `secs`.
pub(crate) fn measure(
    case: &Case,
    testbed: &mut Testbed,
    rate: u64,
    secs: f64,
    latency: bool,
) -> anyhow::Result<Sample> {
    let (daemon, notify, control) = start_daemon(testbed, None)?;
    let result = run_daemon_case(case, testbed, daemon.id(), &control, rate, secs, latency);
    drop(daemon);
    drop(notify);
    result
}

fn wildcard(case: &Case, port: u16) -> String {
    if case.traffic.ipv6 {
        format!("[::]:{port}")
    } else {
        format!("0.0.0.0:{port}")
    }
}

/// A client thread reading its endpoint's ring on the receiving CPU.
pub(crate) struct RingClient {
    stop: Arc<AtomicBool>,
    /// The receiving thread's id.
    tid: Option<u32>,
    thread: thread::JoinHandle<(u64, Vec<u64>)>,
}

impl RingClient {
    /// Binds `local` from a thread in namespace `netns` (its backing socket must be there);
    /// with `fast`, also leases that interface's queues (the fast path), failing if refused,
    /// and sets `batch_wait` if given.
    pub(crate) fn start(
        control: &Path,
        netns: &str,
        local: String,
        latency: bool,
        fast: Option<String>,
        batch_wait: Option<Duration>,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (control, flag, netns) = (control.to_owned(), stop.clone(), netns.to_owned());
        let thread = thread::spawn(move || {
            pin_cpu(RX_CPU);
            let bound = enter_netns(&netns).and_then(|()| {
                let mut endpoint = Endpoint::bind(&control, Protocol::Udp, &local)?;
                if let Some(iface) = &fast {
                    endpoint.fast_path(iface)?;
                }
                if let Some(wait) = batch_wait {
                    endpoint.set_batch_wait(wait);
                }
                Ok(endpoint)
            });
            let mut endpoint = match bound {
                Ok(e) => {
                    let _ = ready_tx.send(Ok(thread_id()));
                    e
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return (0, Vec::new());
                }
            };
            let (mut count, mut latencies) = (0u64, Vec::new());
            let mut note = |payload: &[u8], now: u64| {
                count += 1;
                if latency {
                    if let Some((_, sent)) = demux::testing::frame::read_stamp(payload) {
                        latencies.push(now.saturating_sub(sent));
                    }
                }
            };
            while !flag.load(Relaxed) {
                let now = demux::sys::monotonic_ns();
                match endpoint.recv_batch(256, |view| note(view.payload, now)) {
                    Ok(0) => {
                        if let Ok(Some(d)) = endpoint.recv_from(Some(Duration::from_millis(50))) {
                            note(&d.payload, demux::sys::monotonic_ns());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            (count, latencies)
        });
        let tid = ready_rx.recv().context("the ring client died")??;
        Ok(Self { stop, tid, thread })
    }

    /// Stops reading and drops the endpoint (which closes it); returns the datagrams read and
    /// their latencies.
    pub(crate) fn finish(self) -> (u64, Vec<u64>) {
        self.stop.store(true, Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

fn run_daemon_case(
    case: &Case,
    testbed: &Testbed,
    pid: u32,
    control: &Path,
    rate: u64,
    secs: f64,
    latency: bool,
) -> anyhow::Result<Sample> {
    let mut client = Client::connect(control)?;
    let mut ring = None;
    // Held until the case ends: the endpoints' backing sockets, for the backed count case.
    let mut backing_sockets = Vec::new();
    let fast = matches!(
        case.receiver,
        Receiver::DemuxClientFast | Receiver::DemuxClientFastWait
    );
    let batch_wait = (case.receiver == Receiver::DemuxClientFastWait).then_some(BATCH_WAIT);
    if matches!(
        case.receiver,
        Receiver::DemuxRing | Receiver::DemuxClientFast | Receiver::DemuxClientFastWait
    ) {
        ring = Some(RingClient::start(
            control,
            testbed.pair.b.name(),
            wildcard(case, PORT),
            latency,
            fast.then(|| testbed.pair.b_if.clone()),
            batch_wait,
        )?);
    } else {
        let mut endpoints = Vec::new();
        for i in 0..case.traffic.ports {
            let local = wildcard(case, PORT + i);
            let request = BindRequest::udp(local.clone(), SinkSpec::Count);
            // Root may bind without a backing socket: the switch between the two count cases.
            let socket =
                match case.receiver {
                    Receiver::DemuxCountBacked => Some(testbed.pair.b.run_in(|| {
                        Ok(backing::open(local.parse()?, &backing::Options::default())?)
                    })?),
                    _ => None,
                };
            match client.bind(request, socket.as_ref().map(AsFd::as_fd))?.0 {
                Response::Bound { id } => endpoints.push((PORT + i, id)),
                other => bail!("binding port {}: {other:?}", PORT + i),
            }
            backing_sockets.extend(socket);
        }
        if case.fillers > 0 {
            fill_connected(pid, &endpoints, case)?;
        }
    }
    let napi = testbed.threaded_napi()?;
    let (veth_before, cpu_before, bpf_before) =
        (testbed.veth_drops(), CpuTimes::now(), bpf_run_stats(pid));
    // The receiving side: every thread of the daemon, and the client's.
    let mut threads = threads_of(pid);
    threads.extend(ring.as_ref().and_then(|r| r.tid));
    testbed.count_syscalls(&threads);
    // Their CPU time, with the NAPI thread's.
    threads.extend_from_slice(&napi);
    let (threads_before, napi_before) = (threads_cpu_ns(&threads), threads_cpu_ns(&napi));
    let (runs_before, napi_runs_before) = (threads_runs(&threads), threads_runs(&napi));
    let (sent, secs, forgiven) = generate(testbed, &case.traffic, rate, secs)?;
    let syscalls = testbed.syscalls_counted();
    let (cpu_busy, cpu_secs) = CpuTimes::now().since(cpu_before);
    let threads_cpu_secs =
        Some(threads_cpu_ns(&threads).saturating_sub(threads_before) as f64 / 1e9);
    let napi_cpu_secs = Some(threads_cpu_ns(&napi).saturating_sub(napi_before) as f64 / 1e9);
    let napi_runs = Some(threads_runs(&napi).saturating_sub(napi_runs_before));
    let threads_runs = Some(threads_runs(&threads).saturating_sub(runs_before));
    thread::sleep(Duration::from_millis(300));
    let bpf_after = bpf_run_stats(pid);
    let (read, latencies) = ring.map(RingClient::finish).unwrap_or_default();
    let daemon_kib = daemon_memory_kib(pid);
    let s = match client.call(Request::Stats)? {
        Response::Stats(stats) => stats,
        other => bail!("stats: {other:?}"),
    };
    let dropped = dropped(&s, testbed.veth_drops() - veth_before);
    // The ring's client stops a little after the generator and may leave a few records unread;
    // those were delivered all the same. On the fast path the daemon delivers nothing: what
    // the client read is what was delivered.
    ensure!(
        fast || read <= s.delivered(),
        "the client read {read} of {} delivered",
        s.delivered()
    );
    let delivered = if fast { read } else { s.delivered() };
    let runs = bpf_after.1.saturating_sub(bpf_before.1);
    Ok(Sample {
        rate,
        sent,
        forgiven,
        delivered,
        secs,
        dropped,
        passed: s.passed(),
        cpu_busy,
        cpu_secs,
        threads_cpu_secs,
        napi_cpu_secs,
        threads_runs,
        napi_runs,
        bpf_ns: (runs > 0).then(|| (bpf_after.0 - bpf_before.0) as f64 / runs as f64),
        latencies,
        daemon_kib,
        syscalls,
    })
}

/// Frames dropped by named reason: the daemon's counters (`stats`: AF_XDP rx ring, sinks,
/// closed endpoints' sinks, workers) and `veth`, the veth pair's own drops over the same time.
pub(crate) fn dropped(s: &Stats, veth: u64) -> BTreeMap<&'static str, u64> {
    // veth counts a failed redirect as its own rx drop too: count those once, under the
    // socket. The kernel counts a full rx ring as `rx_ring_full` and everything else it could
    // not deliver (an empty fill ring, a frame too large) as `rx_dropped`, never both.
    let xsk_rx: u64 = s.sockets.iter().map(|x| x.rx_dropped).sum();
    let xsk_rx_full: u64 = s.sockets.iter().map(|x| x.rx_ring_full).sum();
    let sink: u64 = s
        .endpoints
        .iter()
        .map(|e| e.dropped_sink_full + e.dropped_sink_error)
        .sum();
    BTreeMap::from([
        ("veth", veth.saturating_sub(xsk_rx + xsk_rx_full)),
        ("xsk_rx", xsk_rx),
        ("xsk_rx_full", xsk_rx_full),
        ("sink", sink + s.closed_dropped),
        (
            "worker",
            s.dropped_no_endpoint + s.dropped_bad_metadata + s.dropped_bad_checksum,
        ),
    ])
}

/// The kernel's description of one of the daemon's maps, found by name.
fn daemon_map_info(pid: u32, name: &str) -> anyhow::Result<MapInfo> {
    for id in map_ids(pid) {
        let info = MapInfo::from_id(id)?;
        if info.name_as_str() == Some(name) {
            return Ok(info);
        }
    }
    bail!("the daemon (pid {pid}) holds no map named {name}")
}

/// Finds one of the daemon's maps by name.
fn daemon_map(pid: u32, name: &str) -> anyhow::Result<Map> {
    for id in map_ids(pid) {
        let info = MapInfo::from_id(id)?;
        if info.name_as_str() == Some(name) {
            return Ok(Map::from_map_data(MapData::from_id(id)?)?);
        }
    }
    bail!("the daemon (pid {pid}) holds no map named {name}")
}

/// Writes the case's filler bindings, spread evenly over the endpoints, on their ports or on as
/// many other ports, from remote ports the generator never uses (IPv4: their addresses, in
/// 198.19.0.0/16, are those of the 65,536-sources traffic, so its source presence probes say
/// "perhaps"), and sets their port-index and presence bits.
fn fill_connected(pid: u32, endpoints: &[(u16, u32)], case: &Case) -> anyhow::Result<()> {
    let ipv6 = case.traffic.ipv6;
    // Other ports: 20000 and up, never a destination of the traffic.
    let shift = if case.fillers_on_own_ports {
        0
    } else {
        20000 - PORT
    };
    let endpoints: Vec<(u16, u32)> = endpoints.iter().map(|&(p, id)| (p + shift, id)).collect();
    let mut connected: HashMap<_, ConnectedKey, Target> =
        HashMap::try_from(daemon_map(pid, maps::CONNECTED)?)?;
    let (family, local) = if ipv6 {
        (
            FAMILY_IPV6,
            IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2)),
        )
    } else {
        (FAMILY_IPV4, IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)))
    };
    // The presence filter's words as the fillers set them (each one's tuple and source keys):
    // the program skips the connected probe for a tuple or source whose bits are clear, so the
    // fillers' bits are set as the daemon would.
    let mut presence_words: std::collections::BTreeMap<u32, u64> = Default::default();
    // The filter's geometry is its size, which the daemon chose at load.
    let entries = daemon_map_info(pid, maps::PRESENCE)?.max_entries();
    let filter = presence::Filter::of_entries(entries)
        .with_context(|| format!("no presence filter has {entries} words"))?;
    for i in 0..case.fillers {
        let (port, id) = endpoints[i as usize % endpoints.len()];
        // 198.19.0.0/16 (or 2001:2:0:1::/64) and 16 ports: a million distinct remotes.
        let remote = if ipv6 {
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                2,
                0,
                1,
                0,
                0,
                (i >> 20) as u16,
                (i >> 4) as u16,
            ))
        } else {
            IpAddr::V4(Ipv4Addr::new(198, 19, (i >> 12) as u8, (i >> 4) as u8))
        };
        let key = ConnectedKey {
            protocol: PROTO_UDP,
            family,
            local_port: port,
            remote_port: 1024 + (i & 15) as u16,
            _pad: [0; 2],
            local_addr: addr16(local),
            remote_addr: addr16(remote),
        };
        let target = Target {
            id,
            flags: 0,
            prefix_len: 0,
            _pad: 0,
        };
        connected
            .insert(key, target, 0)
            .with_context(|| format!("filler binding {i}"))?;
        let probe = filter.connected(
            key.protocol,
            key.family,
            key.local_port,
            key.remote_port,
            &key.local_addr,
            &key.remote_addr,
        );
        *presence_words.entry(probe.word).or_default() |= probe.mask;
        let source = filter.source(key.protocol, key.family, &key.remote_addr);
        *presence_words.entry(source.word).or_default() |= source.mask;
    }
    let mut filter: Array<_, u64> = Array::try_from(daemon_map(pid, maps::PRESENCE)?)?;
    for (word, bits) in presence_words {
        let old = filter.get(&word, 0)?;
        filter.set(word, old | bits, 0)?;
    }
    let mut ports: Array<_, PortEntry> = Array::try_from(daemon_map(pid, maps::PORTS)?)?;
    for &(port, _) in &endpoints {
        let index = port_index(PROTO_UDP, port);
        let mut entry = ports.get(&index, 0)?;
        entry.tables |= port_bit(TABLE_CONNECTED, family) as u8;
        ports.set(index, entry, 0)?;
    }
    Ok(())
}

/// The daemon's resident memory in KiB, less its UMEM (the mappings of exactly the UMEM's
/// size): what the endpoints, tables' user-side state and runtime cost.
fn daemon_memory_kib(pid: u32) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let umem_kib = FRAMES * u64::from(demux::xsk::FRAME_SIZE) / 1024;
    let (mut total, mut size) = (0, 0);
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match (
            words.next(),
            words.next().and_then(|v| v.parse::<u64>().ok()),
        ) {
            (Some("Size:"), Some(kib)) => size = kib,
            (Some("Rss:"), Some(kib)) if size != umem_kib => total += kib,
            _ => {}
        }
    }
    Some(total)
}
