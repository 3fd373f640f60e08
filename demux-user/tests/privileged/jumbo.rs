//! Jumbo frames through AF_XDP: on a veth with MTU 9,000 and sockets bound with `XDP_USE_SG`
//! (Linux 6.6+), datagrams larger than one UMEM frame arrive whole through the daemon's ring
//! (gathered from several rx descriptors), IPv4 and IPv6, not through the backing socket; and
//! a frame longer than what the socket of its queue takes (its `XSK_FRAME_LIMITS` entry) is
//! passed to the kernel by the program and counted as `pass_too_large`, never redirected and
//! dropped: also while a fast-path lease holds the queue (its socket is bound without
//! `XDP_USE_SG`), and the daemon's own socket takes them again after the lease. Where the
//! kernel has no `XDP_USE_SG`, these are skipped with the reason.

use std::{
    net::UdpSocket,
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use demux::{
    attach::{attach, AttachMode},
    client::Endpoint,
    control::{BindRequest, SinkSpec},
    control::{Request, Response, SocketInfo, Stats},
    daemon::kernel_features::Release,
    program::{BpfLogLevel, Loaded},
    testing::testbed::{PairSpec, TempDir, VethPair, A_ADDR, B_ADDR},
    xsk::{BindMode, QueueSocket, Received},
};
use demux_common::{meta::MAX_XSK_FRAME, Verdict};

use crate::{daemon::RunningDaemon, large::receive, steer::host_view_and_binding};

pub(crate) fn tests() -> Vec<libtest_mimic::Trial> {
    trials![
        jumbo_datagrams_arrive_whole_through_the_ring,
        a_frame_longer_than_its_socket_takes_passes_to_the_kernel,
        a_leased_queue_passes_jumbo_frames_to_the_backing_socket
    ]
    .into_iter()
    .map(|t| t.with_ignored_flag(skip_reason().is_some()))
    .collect()
}

/// Why these tests cannot run here: copy-mode AF_XDP takes multi-buffer frames (`XDP_USE_SG`)
/// from Linux 6.6 on, and veth (copy mode only) has nothing else.
pub(crate) fn skip_reason() -> Option<&'static str> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON
        .get_or_init(|| match Release::running() {
            Some(release) if release >= Release(6, 6) => None,
            Some(release) => Some(format!(
                "kernel {release} has no multi-buffer AF_XDP (XDP_USE_SG, Linux 6.6+)"
            )),
            None => Some("the kernel release is unknown".into()),
        })
        .as_deref()
}

const MTU: &str = "9000";
/// UDP payloads: one byte more than a 1,500 MTU carries, two UMEM frames, three (the largest
/// an MTU of 9,000 carries unfragmented: 9,000 − 20 − 8 for IPv4, 9,000 − 40 − 8 for IPv6).
const SIZES_V4: [usize; 3] = [1473, 4000, 8972];
const SIZES_V6: [usize; 3] = [1473, 4000, 8952];

/// Datagram `i` of `size` bytes: a pattern that tells datagrams and offsets apart.
fn payload(i: usize, size: usize) -> Vec<u8> {
    (0..size)
        .map(|j| (i * 31 + j * 7 + j / 251) as u8)
        .collect()
}

fn set_mtu(net: &VethPair) -> anyhow::Result<()> {
    for (ns, iface) in [(&net.a, &net.a_if), (&net.b, &net.b_if)] {
        ns.exec(&["ip", "link", "set", "dev", iface, "mtu", MTU])
            .with_context(|| format!("MTU {MTU} on {iface}"))?;
    }
    Ok(())
}

fn stats(daemon: &RunningDaemon) -> anyhow::Result<Stats> {
    let Response::Stats(stats) = daemon.client()?.call(Request::Stats)? else {
        bail!("no stats")
    };
    Ok(stats)
}

/// Stats once every socket's state satisfies `ready` (the workers publish it every 100 ms;
/// within 3 s).
fn stats_when(
    daemon: &RunningDaemon,
    ready: impl Fn(&SocketInfo) -> bool,
) -> anyhow::Result<Stats> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut now = stats(daemon)?;
    while !now.sockets.iter().all(&ready) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        now = stats(daemon)?;
    }
    Ok(now)
}

/// Sends one datagram of each of `sizes` from namespace A to `B_ADDR:port`; returns them.
fn send_sizes(net: &VethPair, port: u16, sizes: &[usize]) -> anyhow::Result<Vec<Vec<u8>>> {
    let payloads: Vec<Vec<u8>> = sizes.iter().map(|s| payload(*s, *s)).collect();
    net.a.run_in(|| {
        let socket = UdpSocket::bind((A_ADDR, 0))?;
        for p in &payloads {
            socket.send_to(p, (B_ADDR, port))?;
        }
        Ok(())
    })?;
    Ok(payloads)
}

fn verdict(stats: &Stats, name: &str) -> u64 {
    stats.verdicts.get(name).copied().unwrap_or(0)
}

pub(crate) fn jumbo_datagrams_arrive_whole_through_the_ring() -> anyhow::Result<()> {
    let net = VethPair::new(PairSpec::unique(
        "dmxj",
        &["198.18.0.1/30", "2001:2::1/64"],
        &["198.18.0.2/30", "2001:2::2/64"],
    ))?;
    set_mtu(&net)?;
    let dir = TempDir::new("demux-test")?;
    let daemon = RunningDaemon::start(&net, &dir, &[])?;
    let locals = ["198.18.0.2:9800", "[2001:2::2]:9800"];
    let mut endpoints = [daemon.endpoint(locals[0])?, daemon.endpoint(locals[1])?];
    let before = stats_when(&daemon, |s| s.frames > 0)?;
    for socket in &before.sockets {
        ensure!(
            socket.frame_limit > MAX_XSK_FRAME,
            "the daemon's socket on {} queue {} is bound without XDP_USE_SG on a kernel that has \
             it: {socket:?}",
            socket.iface,
            socket.queue
        );
    }

    let mut sent = [Vec::new(), Vec::new()];
    net.a.run_in(|| {
        for (family, (from, to, sizes)) in [
            ("198.18.0.1:0", "198.18.0.2:9800", &SIZES_V4[..]),
            ("[2001:2::1]:0", "[2001:2::2]:9800", &SIZES_V6[..]),
        ]
        .into_iter()
        .enumerate()
        {
            let socket = UdpSocket::bind(from)?;
            for (i, size) in sizes.iter().enumerate() {
                let p = payload(family * 10 + i, *size);
                socket
                    .send_to(&p, to)
                    .with_context(|| format!("sending {size} bytes to {to}"))?;
                sent[family].push(p);
            }
        }
        Ok(())
    })?;
    for (family, endpoint) in endpoints.iter_mut().enumerate() {
        let got = receive(endpoint, sent[family].len())?;
        sent[family].sort();
        let sizes = |v: &[Vec<u8>]| v.iter().map(Vec::len).collect::<Vec<_>>();
        ensure!(
            got == sent[family],
            "{}: sent sizes {:?}, received {:?} (or changed bytes)",
            locals[family],
            sizes(&sent[family]),
            sizes(&got)
        );
    }

    // Through the ring, not the backing socket: the per-path counters.
    let after = stats(&daemon)?;
    for local in locals {
        let find = |s: &Stats| s.endpoints.iter().find(|e| e.local == local).cloned();
        let (Some(b), Some(a)) = (find(&before), find(&after)) else {
            bail!("endpoint {local} is not in the stats: {after:?}");
        };
        ensure!(
            a.delivered - b.delivered == 3 && a.via_kernel == b.via_kernel,
            "{local}: {} delivered through the ring and {} through the backing socket, not 3 and \
             0",
            a.delivered - b.delivered,
            a.via_kernel - b.via_kernel
        );
    }
    let delta = |name| verdict(&after, name) - verdict(&before, name);
    ensure!(
        delta("redirected") == 6 && delta("pass_too_large") == 0,
        "redirected {}, passed as too large {}",
        delta("redirected"),
        delta("pass_too_large")
    );
    ensure!(
        after.dropped() == 0 && after.dropped_bad_chain == 0,
        "dropped: {after:?}"
    );
    // Every frame of every chain went back: the worker publishes its counters every 100 ms.
    thread::sleep(Duration::from_millis(300));
    let settled = stats(&daemon)?;
    ensure!(
        settled.seen() == settled.accounted(),
        "seen {} ≠ accounted {}: {settled:?}",
        settled.seen(),
        settled.accounted()
    );
    for s in &settled.sockets {
        ensure!(
            s.frames_free + s.frames_fill_ring + s.frames_rx_ring == u64::from(s.frames),
            "frames lost on {} queue {}: {s:?}",
            s.iface,
            s.queue
        );
    }
    println!(
        "  MTU {MTU}: payloads {SIZES_V4:?} (IPv4) and {SIZES_V6:?} (IPv6) through the ring, \
         frames up to {} bytes",
        after.sockets.first().map_or(0, |s| s.frame_limit)
    );
    Ok(())
}

/// The program's side, without the daemon: a socket bound with XDP_USE_SG whose slot says it
/// takes frames up to `LIMIT` bytes. A longer frame is passed (the kernel socket bound to the
/// same port gets it) and counted; a shorter multi-buffer frame arrives whole.
pub(crate) fn a_frame_longer_than_its_socket_takes_passes_to_the_kernel() -> anyhow::Result<()> {
    const LIMIT: u32 = 6000;
    const ENDPOINT: u32 = 3;
    let net = VethPair::standard()?;
    set_mtu(&net)?;
    thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<()> {
                net.b.enter_thread()?;
                let kernel = UdpSocket::bind((B_ADDR, 9000))?;
                kernel.set_read_timeout(Some(Duration::from_millis(500)))?;
                let (mut loaded, mut maps) = Loaded::load(BpfLogLevel::Off)?;
                attach(loaded.program_mut(), &net.b_if, AttachMode::Driver)?;
                let mut socket = QueueSocket::open(&net.b_if, 0, 256, BindMode::Copy)?;
                ensure!(
                    socket.frame_limit() > LIMIT,
                    "{} (a kernel ≥ 6.6 takes XDP_USE_SG)",
                    socket.describe()
                );
                host_view_and_binding(&mut maps, &net.b_if, ENDPOINT)?;

                // Per round: the slot's limit, and the payload sizes the socket must get and
                // the kernel socket must get.
                let full = socket.frame_limit();
                let rounds: [(u32, &[usize], &[usize]); 3] = [
                    (LIMIT, &[4000], &[8972]),
                    (full, &[4000, 8972], &[]),
                    (0, &[1000], &[4000, 8972]),
                ];
                for (limit, to_socket, to_kernel) in rounds {
                    loaded.register_socket(0, 0, socket.fd(), limit)?;
                    let before = maps.verdicts()?;
                    let mut sizes: Vec<usize> = to_socket.iter().chain(to_kernel).copied().collect();
                    sizes.sort();
                    let a = &net.a;
                    thread::scope(|inner| {
                        inner
                            .spawn(|| -> anyhow::Result<()> {
                                a.enter_thread()?;
                                let sender = UdpSocket::bind((A_ADDR, 0))?;
                                for size in &sizes {
                                    sender.send_to(&payload(*size, *size), (B_ADDR, 9000))?;
                                }
                                Ok(())
                            })
                            .join()
                            .expect("sender panicked")
                    })?;
                    let mut through_socket = Vec::new();
                    let mut problems = Vec::new();
                    let deadline = Instant::now() + Duration::from_secs(3);
                    while through_socket.len() < to_socket.len() && Instant::now() < deadline {
                        let read = socket.receive(64, |packet| match packet {
                            Received::Frame(frame, Some(meta)) if meta.endpoint == ENDPOINT => {
                                through_socket.push(frame[usize::from(meta.payload_offset)..].to_vec());
                            }
                            other => problems.push(format!("{other:?}")),
                        });
                        if read == 0 {
                            thread::sleep(Duration::from_millis(5));
                        }
                    }
                    let mut through_kernel = Vec::new();
                    let mut buf = vec![0u8; 65536];
                    while through_kernel.len() < to_kernel.len() {
                        match kernel.recv(&mut buf) {
                            Ok(n) => through_kernel.push(buf[..n].to_vec()),
                            Err(_) => break,
                        }
                    }
                    // Nothing more on either path.
                    thread::sleep(Duration::from_millis(100));
                    socket.receive(64, |packet| problems.push(format!("late: {packet:?}")));
                    kernel.set_nonblocking(true)?;
                    if let Ok(n) = kernel.recv(&mut buf) {
                        problems.push(format!("late on the kernel socket: {n} bytes"));
                    }
                    kernel.set_nonblocking(false)?;
                    ensure!(problems.is_empty(), "limit {limit}: {problems:?}");
                    let want = |sizes: &[usize]| -> Vec<Vec<u8>> {
                        sizes.iter().map(|s| payload(*s, *s)).collect()
                    };
                    through_socket.sort();
                    through_kernel.sort();
                    let lens = |v: &[Vec<u8>]| v.iter().map(Vec::len).collect::<Vec<_>>();
                    ensure!(
                        through_socket == want(to_socket) && through_kernel == want(to_kernel),
                        "limit {limit}: AF_XDP got {:?}, the kernel socket {:?}; want {to_socket:?} \
                         and {to_kernel:?}",
                        lens(&through_socket),
                        lens(&through_kernel)
                    );
                    let after = maps.verdicts()?;
                    let delta = |v| after.get(v) - before.get(v);
                    ensure!(
                        delta(Verdict::Redirected) == to_socket.len() as u64
                            && delta(Verdict::PassTooLarge) == to_kernel.len() as u64,
                        "limit {limit}: redirected {}, passed as too large {}",
                        delta(Verdict::Redirected),
                        delta(Verdict::PassTooLarge)
                    );
                }
                let xdp_stats = socket.statistics().map_err(anyhow::Error::msg)?;
                ensure!(xdp_stats.rx_dropped == 0, "socket dropped frames: {xdp_stats:?}");
                let (frames, free) = socket.frames();
                ensure!(free == 0, "{free} of {frames} frames were not returned to the fill ring");
                Ok(())
            })
            .join()
            .expect("namespace thread panicked")
    })
}

/// A fast-path lease binds its sockets without XDP_USE_SG (the client reads one descriptor
/// per frame): while it holds, the slot's limit is 0 and a jumbo datagram to the client's
/// endpoint passes to the kernel (`pass_too_large`) and arrives through its backing socket,
/// none dropped; once the lease ends the daemon's own socket, bound with XDP_USE_SG again,
/// takes jumbo frames through the ring.
pub(crate) fn a_leased_queue_passes_jumbo_frames_to_the_backing_socket() -> anyhow::Result<()> {
    const NOBODY: u32 = 65534;
    let net = VethPair::standard()?;
    set_mtu(&net)?;
    let dir = TempDir::new("demux-test")?;
    let daemon = RunningDaemon::start(
        &net,
        &dir,
        &["--control-group", "nogroup", "--fast-path-uid", "65534"],
    )?;
    let control = daemon.control.clone();
    let iface = net.b_if.clone();
    let mut endpoint = net.b.run_as(NOBODY, || {
        let request = BindRequest::udp(
            format!("{B_ADDR}:9810"),
            SinkSpec::Ring {
                slots: demux::ring::DEFAULT_SLOTS,
            },
        );
        let mut endpoint = Endpoint::bind_with(&control, request, None)?;
        endpoint.fast_path(&iface)?;
        Ok(endpoint)
    })?;
    let before = stats_when(&daemon, |s| s.leased)?;
    ensure!(
        before
            .sockets
            .iter()
            .all(|s| s.leased && s.frame_limit == 0),
        "not leased, or a leased socket's limit is not 0: {:?}",
        before.sockets
    );
    let mut sent = send_sizes(&net, 9810, &[1000, 4000, 8972])?;
    let mut got = receive(&mut endpoint, sent.len())?;
    sent.sort();
    got.sort();
    let lens = |v: &[Vec<u8>]| v.iter().map(Vec::len).collect::<Vec<_>>();
    ensure!(
        got == sent,
        "during the lease: sent {:?}, received {:?}",
        lens(&sent),
        lens(&got)
    );
    let after = stats_when(&daemon, |s| s.leased)?;
    let delta = |name| verdict(&after, name) - verdict(&before, name);
    ensure!(
        delta("redirected") == 1 && delta("pass_too_large") == 2,
        "during the lease: redirected {}, passed as too large {}",
        delta("redirected"),
        delta("pass_too_large")
    );
    ensure!(
        after.sockets.iter().all(|s| s.rx_dropped == 0),
        "a leased socket dropped frames: {:?}",
        after.sockets
    );
    drop(endpoint);

    // The lease is over: the daemon's own socket again, with XDP_USE_SG and its limit.
    let reopened = stats_when(&daemon, |s| !s.leased && s.frames > 0)?;
    ensure!(
        reopened
            .sockets
            .iter()
            .all(|s| !s.leased && s.frame_limit > MAX_XSK_FRAME),
        "after the lease: {:?}",
        reopened.sockets
    );
    let mut endpoint = daemon.endpoint(&format!("{B_ADDR}:9811"))?;
    let before = stats(&daemon)?;
    let mut sent = send_sizes(&net, 9811, &[4000, 8972])?;
    let mut got = receive(&mut endpoint, sent.len())?;
    sent.sort();
    got.sort();
    ensure!(
        got == sent,
        "after the lease: sent {:?}, received {:?}",
        lens(&sent),
        lens(&got)
    );
    let after = stats(&daemon)?;
    let delta = |name| verdict(&after, name) - verdict(&before, name);
    ensure!(
        delta("redirected") == 2 && delta("pass_too_large") == 0 && after.dropped() == 0,
        "after the lease: redirected {}, passed as too large {}, {after:?}",
        delta("redirected"),
        delta("pass_too_large")
    );
    Ok(())
}
