//! Restarts and the kernel path: a client endpoint keeps its stream across a daemon restart —
//! every numbered datagram exactly once after a graceful stop (SIGTERM, the endpoint handed to
//! the next daemon through the service manager's file descriptor store, emulated here per
//! sd_notify(3) and sd_listen_fds(3): same id, same ring), at most what the dead daemon held
//! after SIGKILL (the client binds afresh) — reading its backing socket while the daemon is
//! away; a tampered store is refused at pickup; and a datagram the kernel had to fragment
//! arrives whole, both at a client endpoint and at a daemon-held one, without the kernel
//! answering port unreachable.

use std::{
    net::UdpSocket,
    os::unix::net::UnixDatagram,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use demux::{
    client::Endpoint,
    control::{EndpointInfo, Request, Response},
    testing::testbed::{enter_netns, FdStore, TempDir, VethPair, A_ADDR, B_ADDR},
};

use crate::daemon::RunningDaemon;

pub(crate) fn tests() -> Vec<libtest_mimic::Trial> {
    trials![
        a_graceful_restart_loses_no_datagram,
        a_sigkilled_daemon_loses_at_most_what_was_in_flight,
        three_restarts_at_100_kpps_to_three_clients_lose_nothing,
        a_tampered_fd_store_is_refused_at_pickup,
        a_fragmented_datagram_arrives_whole,
    ]
}

/// Datagrams per second the sender keeps up: steady, well below what one queue worker and one
/// receiving thread handle, so only the restart itself can lose anything.
const RATE: u64 = 2_000;
/// Traffic through the ring before the daemon is stopped, and after the endpoint is back.
const RING_PHASE: Duration = Duration::from_secs(1);
/// How long nothing runs between the old daemon's exit and the new one's start.
const GAP: Duration = Duration::from_millis(300);
/// The highest-numbered datagrams, all of which must have come through the ring (the endpoint
/// is back on the daemon): a quarter second of traffic, well inside [`RING_PHASE`].
const TAIL: usize = (RATE / 4) as usize;
/// Bound on the sender: it stops when told, or after this long (or this long's worth of its
/// rate).
const MAX_SENDING: Duration = Duration::from_secs(20);
/// The receiver stops once the sender is done and nothing came for this long, or at the cap.
const QUIET: Duration = Duration::from_millis(500);
const MAX_RECEIVING: Duration = Duration::from_secs(30);
/// `--frames` of the daemon that is SIGKILLed: the UMEM frames of each rx queue, and the size of
/// its AF_XDP rx ring. A datagram the daemon holds sits in one of these frames, so a daemon
/// killed mid-stream loses at most this many per queue.
const KILLED_FRAMES: u64 = 256;
const TAG: &[u8] = b" demux restart";

pub(crate) fn a_graceful_restart_loses_no_datagram() -> anyhow::Result<()> {
    let run = restart_mid_stream(7100, libc::SIGTERM, &[])?;
    ensure!(
        run.lost.is_empty(),
        "a graceful restart lost {} of {} datagrams: {}",
        run.lost.len(),
        run.sent,
        ranges(&run.lost)
    );
    run.check_common()?;
    run.check_picked_up()
}

pub(crate) fn a_sigkilled_daemon_loses_at_most_what_was_in_flight() -> anyhow::Result<()> {
    let frames = KILLED_FRAMES.to_string();
    let run = restart_mid_stream(7200, libc::SIGKILL, &["--frames", &frames])?;
    let bound = KILLED_FRAMES * run.rx_queues;
    ensure!(
        run.lost.len() as u64 <= bound,
        "SIGKILL lost {} of {} datagrams, more than the {bound} frames the daemon had ({} rx \
         queue(s) x --frames {KILLED_FRAMES}): {}",
        run.lost.len(),
        run.sent,
        run.rx_queues,
        ranges(&run.lost)
    );
    run.check_common()?;
    run.check_bound_afresh()
}

/// What one restart run saw.
struct Run {
    sent: u64,
    lost: Vec<u64>,
    duplicates: u64,
    /// Datagrams whose payload was not one the sender sent.
    strangers: u64,
    via_kernel: u64,
    /// Ring datagrams before the endpoint lost its session, and after it got one again.
    ring_before: u64,
    ring_after: u64,
    /// How often the receiver saw the endpoint without a session and then with one again.
    rebinds: u32,
    /// Of the [`TAIL`] highest-numbered datagrams received, those that came through the socket.
    kernel_in_tail: usize,
    /// The new daemon's account of the endpoint.
    after: EndpointInfo,
    rx_queues: u64,
    /// The endpoint's id before the stop and at the end.
    ids: (u32, Option<u32>),
    /// How often it attached again to an endpoint the new daemon picked up.
    reattached: u32,
    /// Ring datagrams in all, and what the old daemon delivered in all (its last log line).
    ring_total: u64,
    old_delivered: u64,
}

impl Run {
    /// What both kinds of restart must show besides their loss.
    fn check_common(&self) -> anyhow::Result<()> {
        ensure!(
            self.duplicates == 0 && self.strangers == 0,
            "{} duplicate and {} unknown datagrams",
            self.duplicates,
            self.strangers
        );
        ensure!(
            self.via_kernel > 0,
            "nothing came through the backing socket while the daemon was away"
        );
        ensure!(
            self.ring_before > 0,
            "nothing came through the ring before the stop"
        );
        ensure!(
            self.rebinds == 1,
            "the endpoint lost and regained its connection {} times (want once)",
            self.rebinds
        );
        ensure!(
            self.after.redirected == self.after.delivered
                && self.after.dropped_sink_full == 0
                && self.after.dropped_sink_error == 0,
            "the new daemon lost datagrams on their way to the ring: {:?}",
            self.after
        );
        ensure!(
            self.kernel_in_tail == 0,
            "{} of the last {TAIL} datagrams came through the socket, not the ring",
            self.kernel_in_tail
        );
        Ok(())
    }

    /// A graceful restart: the new daemon picked the endpoint up (same id, same ring) and the
    /// client attached to it again, and every ring datagram is one of the two daemons'.
    fn check_picked_up(&self) -> anyhow::Result<()> {
        ensure!(
            self.reattached == 1 && self.ids.1 == Some(self.ids.0),
            "the endpoint attached again {} times (want once) and has id {:?} (was {})",
            self.reattached,
            self.ids.1,
            self.ids.0
        );
        ensure!(
            self.ring_total == self.old_delivered + self.after.delivered,
            "the ring brought {} datagrams; the old daemon delivered {}, the new one {}",
            self.ring_total,
            self.old_delivered,
            self.after.delivered
        );
        Ok(())
    }

    /// After SIGKILL nothing was handed over: the client bound afresh, its new ring brought
    /// exactly what the new daemon delivered.
    fn check_bound_afresh(&self) -> anyhow::Result<()> {
        ensure!(
            self.reattached == 0,
            "attached {} times to a daemon that picked nothing up",
            self.reattached
        );
        ensure!(
            self.ring_after > 0 && self.ring_after == self.after.delivered,
            "after the restart the ring brought {} datagrams; the new daemon delivered {} \
             (redirected {})",
            self.ring_after,
            self.after.delivered,
            self.after.redirected
        );
        Ok(())
    }
}

/// Runs a steady numbered stream to a client endpoint on `B_ADDR:port`; mid-stream stops the
/// daemon with `signal`, starts a new one (with `extra` arguments, as the first) on the same
/// veth and control path, and lets the stream run on until the endpoint is back on it.
fn restart_mid_stream(port: u16, signal: i32, extra: &[&str]) -> anyhow::Result<Run> {
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let local = format!("{B_ADDR}:{port}");
    let rx_queues = net
        .b
        .exec(&["ls", &format!("/sys/class/net/{}/queues", net.b_if)])?
        .split_whitespace()
        .filter(|q| q.starts_with("rx-"))
        .count() as u64;
    let daemon = RunningDaemon::start(&net, &dir, extra)?;
    let endpoint = daemon.endpoint(&local)?;
    let first_id = endpoint.id().context("no session after bind")?;
    let udp_before = net.b.udp_counters(false)?;

    let stop_sending = AtomicBool::new(false);
    let sending_over = AtomicBool::new(false);
    let name = if signal == libc::SIGKILL {
        "SIGKILL"
    } else {
        "SIGTERM"
    };
    let (sent, received, orchestrated) = thread::scope(|scope| {
        let sender = scope.spawn(|| send_paced(net.a.name(), &[port], RATE, &stop_sending));
        let receiver = scope.spawn(|| receive(endpoint, &sending_over));
        let orchestrated = (|| -> anyhow::Result<(RunningDaemon, Duration, u64)> {
            thread::sleep(RING_PHASE);
            let mut old = daemon;
            let mut store = FdStore::default();
            let stopped = Instant::now();
            let old_delivered = if signal == libc::SIGTERM {
                let status = old.stop_handing_over(&mut store)?;
                ensure!(
                    status.success(),
                    "the daemon exited with {status} after SIGTERM"
                );
                ensure!(
                    store.fds.len() == 4,
                    "the daemon stored {:?} (want the record and the endpoint's socket, ring \
                     and eventfd)",
                    store.names()
                );
                counted_at_exit(&old, "delivered")?
            } else {
                old.child.signal(signal)?;
                old.child.wait_exit(Duration::from_secs(10))?;
                0
            };
            // Its notify socket goes before the new daemon binds one at the same path.
            drop(old);
            thread::sleep(GAP);
            let new = RunningDaemon::start_handed(&net, &dir, extra, &mut store)?;
            ensure!(
                store.fds.is_empty(),
                "the new daemon left {:?} in the store",
                store.names()
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while endpoint_info(&new, &local)?.is_none() {
                ensure!(
                    Instant::now() < deadline,
                    "the endpoint did not bind again within 5 s of the new daemon's READY=1"
                );
                thread::sleep(Duration::from_millis(20));
            }
            let away = stopped.elapsed();
            thread::sleep(RING_PHASE);
            Ok((new, away, old_delivered))
        })();
        stop_sending.store(true, Ordering::Relaxed);
        let sent = sender
            .join()
            .unwrap_or_else(|_| bail!("the sender panicked"));
        sending_over.store(true, Ordering::Relaxed);
        let received = receiver
            .join()
            .unwrap_or_else(|_| bail!("the receiver panicked"));
        (sent, received, orchestrated)
    });
    let (daemon, away, old_delivered) = orchestrated?;
    let sent = sent?;
    let (got, endpoint, windows) = received?;
    let udp_after = net.b.udp_counters(false)?;
    let after = endpoint_info(&daemon, &local)?.context("the endpoint is gone from list")?;

    let mut seen = vec![0u32; sent as usize];
    let (mut duplicates, mut strangers) = (0, 0);
    for g in &got {
        match seen.get_mut(g.seq as usize) {
            Some(n) => {
                *n += 1;
                if *n > 1 {
                    duplicates += 1;
                }
            }
            None => strangers += 1,
        }
    }
    let lost: Vec<u64> = (0..sent).filter(|&s| seen[s as usize] == 0).collect();
    let via_kernel = got.iter().filter(|g| g.via_kernel).count() as u64;
    let ring = |epoch| {
        got.iter()
            .filter(|g| !g.via_kernel && g.epoch == epoch)
            .count() as u64
    };
    let rebinds = got.iter().map(|g| g.epoch).max().unwrap_or(0);
    let mut by_seq: Vec<&Got> = got.iter().collect();
    by_seq.sort_by_key(|g| g.seq);
    let kernel_in_tail = by_seq
        .iter()
        .rev()
        .take(TAIL)
        .filter(|g| g.via_kernel)
        .count();
    let kernel_seqs: Vec<u64> = got.iter().filter(|g| g.via_kernel).map(|g| g.seq).collect();
    let delta = |name: &str| {
        let value = |counters: &std::collections::BTreeMap<String, u64>| {
            counters.get(name).copied().unwrap_or(0)
        };
        value(&udp_after).saturating_sub(value(&udp_before))
    };
    println!(
        "{name} restart: sent {sent} at {RATE}/s; received {} ({} unique), lost {} [{}], \
         duplicates {duplicates}, unknown {strangers}; via ring before {} / via kernel {via_kernel} \
         (seq {}..={}) / via ring after {}; endpoint.via_kernel() {}; id {first_id} -> {:?}; \
         stop to listed by the new daemon {away:?}; client without connection {windows:?}; \
         attached again {} times; old daemon delivered {old_delivered}; new daemon: \
         redirected {} delivered {}; net.b UDP InDatagrams +{} NoPorts +{} RcvbufErrors +{}; \
         rx queues {rx_queues}",
        got.len(),
        sent as usize - lost.len(),
        lost.len(),
        ranges(&lost),
        ring(0),
        kernel_seqs.iter().min().unwrap_or(&0),
        kernel_seqs.iter().max().unwrap_or(&0),
        ring(1),
        endpoint.via_kernel(),
        endpoint.id(),
        endpoint.reattached(),
        after.redirected,
        after.delivered,
        delta("InDatagrams"),
        delta("NoPorts"),
        delta("RcvbufErrors"),
    );
    ensure!(
        endpoint.via_kernel() == via_kernel,
        "endpoint.via_kernel() says {}, the receiver counted {via_kernel}",
        endpoint.via_kernel()
    );
    ensure!(endpoint.id().is_some(), "no session at the end");
    Ok(Run {
        sent,
        lost,
        duplicates,
        strangers,
        via_kernel,
        ring_before: ring(0),
        ring_after: ring(1),
        rebinds,
        kernel_in_tail,
        after,
        rx_queues,
        ids: (first_id, endpoint.id()),
        reattached: endpoint.reattached(),
        ring_total: got.iter().filter(|g| !g.via_kernel).count() as u64,
        old_delivered,
    })
}

/// One received datagram: its number, whether it came through the backing socket, and how many
/// times the endpoint had regained a control connection before it.
struct Got {
    seq: u64,
    via_kernel: bool,
    epoch: u32,
}

/// Sends numbered datagrams (an 8-byte big-endian number, then [`TAG`]) from `A_ADDR` in
/// namespace `netns` to `B_ADDR`, datagram `seq` to port `ports[seq % ports.len()]`, at `rate`
/// per second until `stop` (or the caps); returns how many. A datagram that is due is sent at
/// once: a sleep that overran is made up by a burst.
fn send_paced(netns: &str, ports: &[u16], rate: u64, stop: &AtomicBool) -> anyhow::Result<u64> {
    enter_netns(netns)?;
    let socket = UdpSocket::bind((A_ADDR, 0)).context("binding the sender")?;
    let start = Instant::now();
    let mut payload = vec![0u8; 8 + TAG.len()];
    payload[8..].copy_from_slice(TAG);
    let max_sent = rate * MAX_SENDING.as_secs();
    let mut seq = 0;
    while seq < max_sent && !stop.load(Ordering::Relaxed) && start.elapsed() < MAX_SENDING {
        let due = start + Duration::from_nanos(seq * 1_000_000_000 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        payload[..8].copy_from_slice(&seq.to_be_bytes());
        let port = ports[(seq % ports.len() as u64) as usize];
        socket
            .send_to(&payload, (B_ADDR, port))
            .with_context(|| format!("sending datagram {seq}"))?;
        seq += 1;
    }
    Ok(seq)
}

/// What a receiver saw: the datagrams, the endpoint, and how long each time it was without a
/// control connection (from the daemon's stop until it attached or bound again).
type Received = (Vec<Got>, Endpoint, Vec<Duration>);

/// Receives on `endpoint` until `over` is set and nothing came for [`QUIET`] (at most
/// [`MAX_RECEIVING`]); returns what came, the endpoint, and its times without a connection.
fn receive(mut endpoint: Endpoint, over: &AtomicBool) -> anyhow::Result<Received> {
    let start = Instant::now();
    let mut last = Instant::now();
    let mut got = Vec::new();
    let mut epoch = 0;
    let mut windows = Vec::new();
    let mut since: Option<Instant> = None;
    while start.elapsed() < MAX_RECEIVING {
        let before = endpoint.via_kernel();
        let datagram = endpoint.recv_from(Some(Duration::from_millis(50)))?;
        match (endpoint.connected(), since) {
            (false, None) => since = Some(Instant::now()),
            (true, Some(t)) => {
                windows.push(t.elapsed());
                since = None;
                epoch += 1;
            }
            _ => {}
        }
        let Some(datagram) = datagram else {
            if over.load(Ordering::Relaxed) && last.elapsed() > QUIET {
                break;
            }
            continue;
        };
        last = Instant::now();
        let seq = match datagram.payload.split_at_checked(8) {
            Some((seq, TAG)) => u64::from_be_bytes(seq.try_into().expect("8 bytes")),
            _ => u64::MAX,
        };
        got.push(Got {
            seq,
            via_kernel: endpoint.via_kernel() > before,
            epoch,
        });
    }
    Ok((got, endpoint, windows))
}

/// The steady stream of [`three_restarts_at_100_kpps_to_three_clients_count_every_loss`]:
/// datagrams per second over all endpoints, the endpoints' first port, how many endpoints and
/// restarts.
const FAST_RATE: u64 = 100_000;
const FAST_PORT: u16 = 7600;
const FAST_ENDPOINTS: u16 = 3;
const RESTARTS: u32 = 3;
/// `--frames` of its daemons: the UMEM frames (and the fill and rx rings) of the one rx queue,
/// so at 100 kpps its worker may be kept off the CPU for 16384 / 100,000 s = 164 ms before
/// the kernel finds the fill ring empty (`rx_dropped`). With the default 4,096 (41 ms), runs
/// alongside the other privileged tests on 2 cores lost 1,127 and 5,973 datagrams that way, in
/// a running daemon, never in a restart window.
const FAST_FRAMES: &str = "16384";
/// Ring slots of its endpoints: at a third of 100 kpps each, 16,384 slots hold 490 ms of
/// datagrams, so a receiving thread may be kept off the CPU that long (sink_full). With the
/// default 4,096 (120 ms), the whole privileged suite running beside it on 2 cores cost one
/// endpoint 123 datagrams that way, in a running daemon.
const FAST_SLOTS: u32 = 16384;

/// The measure of a planned restart: a steady 100 kpps stream spread over three client
/// endpoints, the daemon stopped (SIGTERM) and started again three times in its middle, each
/// time as systemd's `restart` does with `FileDescriptorStoreMax=` (the store emulated here).
/// It prints sent, received and lost per endpoint, the windows, and where any loss was
/// counted. What it requires: every datagram received, none twice or unknown, every endpoint
/// picked up by each new daemon (same id, attached again, three times) and fed by its backing
/// socket meanwhile; a loss would also have to be one a counter shows — a backing socket's
/// full buffer (`RcvbufErrors`) or a daemon's own drop (`dropped=` in its last log line).
pub(crate) fn three_restarts_at_100_kpps_to_three_clients_lose_nothing() -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let extra = ["--frames", FAST_FRAMES];
    let first = RunningDaemon::start(&net, &dir, &extra)?;
    let ports: Vec<u16> = (0..FAST_ENDPOINTS).map(|k| FAST_PORT + k).collect();
    let locals: Vec<String> = ports.iter().map(|p| format!("{B_ADDR}:{p}")).collect();
    let endpoints = locals
        .iter()
        .map(|local| {
            let request = demux::control::BindRequest::udp(
                local.as_str(),
                demux::control::SinkSpec::Ring { slots: FAST_SLOTS },
            );
            first.b_side(|control| Ok(Endpoint::bind_with(control, request, None)?))
        })
        .collect::<anyhow::Result<Vec<Endpoint>>>()?;
    let first_ids: Vec<Option<u32>> = endpoints.iter().map(Endpoint::id).collect();
    let daemon = first;
    let udp_before = net.b.udp_counters(false)?;
    let stop_sending = AtomicBool::new(false);
    let sending_over = AtomicBool::new(false);
    let started = Instant::now();
    let softnet_before = softnet_drops()?;
    let mut drops = Vec::new();
    let mut kinds = Vec::new();
    let (sent, received, orchestrated) = thread::scope(|scope| {
        let sender = scope.spawn(|| send_paced(net.a.name(), &ports, FAST_RATE, &stop_sending));
        let receivers: Vec<_> = endpoints
            .into_iter()
            .map(|endpoint| {
                let over = &sending_over;
                scope.spawn(move || receive(endpoint, over))
            })
            .collect();
        let orchestrated = (|| -> anyhow::Result<(Vec<Duration>, Option<RunningDaemon>)> {
            let mut away = Vec::new();
            let mut running = Some(daemon);
            for _ in 0..RESTARTS {
                thread::sleep(RING_PHASE);
                let mut old = running.take().context("a daemon runs")?;
                kinds.push(drop_kinds(&old)?);
                let stopped = Instant::now();
                let mut store = FdStore::default();
                let status = old.stop_handing_over(&mut store)?;
                ensure!(
                    status.success(),
                    "the daemon exited with {status} after SIGTERM"
                );
                ensure!(
                    store.fds.len() == 1 + 3 * usize::from(FAST_ENDPOINTS),
                    "the daemon stored {:?}",
                    store.names()
                );
                drops.push(counted_at_exit(&old, "dropped")?);
                // Its notify socket goes before the new daemon binds one at the same path.
                drop(old);
                thread::sleep(GAP);
                let daemon =
                    running.insert(RunningDaemon::start_handed(&net, &dir, &extra, &mut store)?);
                ensure!(
                    store.fds.is_empty(),
                    "the new daemon left {:?} in the store",
                    store.names()
                );
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let mut listed = 0;
                    for local in &locals {
                        listed += usize::from(endpoint_info(daemon, local)?.is_some());
                    }
                    if listed == locals.len() {
                        break;
                    }
                    ensure!(
                        Instant::now() < deadline,
                        "{listed} of {} endpoints bound again within 5 s of READY=1",
                        locals.len()
                    );
                    thread::sleep(Duration::from_millis(20));
                }
                away.push(stopped.elapsed());
            }
            thread::sleep(RING_PHASE);
            Ok((away, running))
        })();
        stop_sending.store(true, Ordering::Relaxed);
        let sent = sender
            .join()
            .unwrap_or_else(|_| bail!("the sender panicked"));
        let sending = started.elapsed();
        sending_over.store(true, Ordering::Relaxed);
        let received: Vec<_> = receivers
            .into_iter()
            .map(|r| r.join().unwrap_or_else(|_| bail!("a receiver panicked")))
            .collect();
        ((sent, sending), received, orchestrated)
    });
    let (away, daemon) = orchestrated?;
    // The last daemon's account, once the stream is over.
    let mut daemon = daemon.context("no daemon after the restarts")?;
    kinds.push(drop_kinds(&daemon)?);
    daemon.stop_handing_over(&mut FdStore::default())?;
    drops.push(counted_at_exit(&daemon, "dropped")?);
    let (sent, sending) = (sent.0?, sent.1);
    let udp_after = net.b.udp_counters(false)?;
    let delta = |name: &str| {
        let value = |counters: &std::collections::BTreeMap<String, u64>| {
            counters.get(name).copied().unwrap_or(0)
        };
        value(&udp_after).saturating_sub(value(&udp_before))
    };
    let n = u64::from(FAST_ENDPOINTS);
    let mut report = Vec::new();
    let mut failures = Vec::new();
    let mut total_lost = 0u64;
    for (k, result) in received.into_iter().enumerate() {
        let (got, endpoint, windows) = result?;
        let k = k as u64;
        let expected: u64 = (0..sent).filter(|s| s % n == k).count() as u64;
        let mut seen = vec![false; sent as usize];
        let (mut duplicates, mut strangers) = (0u64, 0u64);
        for g in &got {
            match seen.get_mut(g.seq as usize) {
                Some(slot) if g.seq % n == k => {
                    duplicates += u64::from(*slot);
                    *slot = true;
                }
                _ => strangers += 1,
            }
        }
        let lost: Vec<u64> = (0..sent)
            .filter(|s| s % n == k && !seen[*s as usize])
            .collect();
        total_lost += lost.len() as u64;
        let via_kernel = got.iter().filter(|g| g.via_kernel).count();
        let rebinds = got.iter().map(|g| g.epoch).max().unwrap_or(0);
        report.push(format!(
            "endpoint {}: sent {expected}, received {} (lost {} [its datagrams {}], duplicates {duplicates}, unknown {strangers}), via kernel {via_kernel}, attached again {} times, without connection {windows:.2?}, id {:?} (was {:?})",
            locals[k as usize],
            got.len(),
            lost.len(),
            ranges(&lost.iter().map(|s| s / n).collect::<Vec<_>>()),
            endpoint.reattached(),
            endpoint.id(),
            first_ids[k as usize],
        ));
        if endpoint.reattached() != RESTARTS || endpoint.id() != first_ids[k as usize] {
            failures.push(format!(
                "{}: attached again {} times (want {RESTARTS}), id {:?} (was {:?}): not picked up",
                locals[k as usize],
                endpoint.reattached(),
                endpoint.id(),
                first_ids[k as usize],
            ));
        }
        if duplicates > 0 || strangers > 0 {
            failures.push(format!(
                "{}: duplicates {duplicates}, unknown {strangers}",
                locals[k as usize],
            ));
        }
        if rebinds != RESTARTS || via_kernel == 0 {
            failures.push(format!(
                "{}: regained its session {rebinds} times (want {RESTARTS}), {via_kernel} via the kernel (want some: the daemon was away)",
                locals[k as usize]
            ));
        }
    }
    println!(
        "{RESTARTS} graceful restarts under {FAST_RATE}/s to {FAST_ENDPOINTS} client endpoints: sent {sent} in {sending:.2?} ({:.0}/s achieved); SIGTERM to all listed by the new daemon {away:.2?}; net.b UDP InDatagrams +{} RcvbufErrors +{} InErrors +{} NoPorts +{}; \
         softnet backlog drops +{}; each daemon's `dropped` at its exit: {drops:?}, by kind just before its stop: {kinds:?}\n  {}",
        sent as f64 / sending.as_secs_f64(),
        delta("InDatagrams"),
        delta("RcvbufErrors"),
        delta("InErrors"),
        delta("NoPorts"),
        softnet_drops()?.saturating_sub(softnet_before),
        report.join("\n  ")
    );
    // Every datagram lost is one a counter shows: a backing socket's full buffer (the kernel's
    // RcvbufErrors, while no daemon ran) or a daemon's own drop.
    let counted = delta("RcvbufErrors") + drops.iter().sum::<u64>();
    println!(
        "lost {total_lost} of {sent} ({:.3}%); counted drops {counted}",
        total_lost as f64 * 100.0 / sent.max(1) as f64
    );
    if total_lost != counted {
        failures.push(format!(
            "{total_lost} datagrams lost, but the counters show {counted}: a loss nobody counted"
        ));
    }
    if total_lost > 0 {
        failures.push(format!(
            "{total_lost} of {sent} datagrams lost across {RESTARTS} restarts (want none)"
        ));
    }
    ensure!(failures.is_empty(), "{}", failures.join("; "));
    drop(daemon);
    Ok(())
}

/// What a daemon that exited counted as `key` in all, from its last verdicts line: `dropped`
/// (sinks full or failing, AF_XDP `rx_dropped`, bad metadata or checksums, no endpoint) or
/// `delivered`.
fn counted_at_exit(daemon: &RunningDaemon, key: &str) -> anyhow::Result<u64> {
    let line = crate::daemon::wait_for(&daemon.log, Duration::from_secs(5), |line| {
        line.contains("verdicts:")
    })?;
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no {key}= in {line:?}"))
}

/// Where a running daemon's drops are, from its `stats`: the AF_XDP sockets' kernel counters
/// (`rx_dropped`, `rx_ring_full`, `fill_ring_empty`) and the endpoints' full sinks.
fn drop_kinds(daemon: &RunningDaemon) -> anyhow::Result<String> {
    let Response::Stats(stats) = daemon.client()?.call(Request::Stats)? else {
        bail!("no answer to stats")
    };
    let sum = |f: fn(&demux::control::SocketInfo) -> u64| stats.sockets.iter().map(f).sum::<u64>();
    Ok(format!(
        "rx_dropped {} rx_ring_full {} fill_ring_empty {} sink_full {}",
        sum(|s| s.rx_dropped),
        sum(|s| s.rx_ring_full),
        sum(|s| s.rx_fill_ring_empty),
        stats
            .endpoints
            .iter()
            .map(|e| e.dropped_sink_full)
            .sum::<u64>()
    ))
}

/// Packets the host's CPUs dropped from their input backlogs (`/proc/net/softnet_stat`, second
/// column, all CPUs).
fn softnet_drops() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/net/softnet_stat")?;
    text.lines()
        .map(|line| {
            let column = line
                .split_whitespace()
                .nth(1)
                .context("a short softnet_stat line")?;
            Ok(u64::from_str_radix(column, 16)?)
        })
        .sum()
}

/// The daemon's `list` entry for the endpoint on `local`, if there is one.
fn endpoint_info(daemon: &RunningDaemon, local: &str) -> anyhow::Result<Option<EndpointInfo>> {
    let Response::Endpoints { endpoints } = daemon.client()?.call(Request::List)? else {
        bail!("no answer to list")
    };
    Ok(endpoints.into_iter().find(|e| e.local == local))
}

/// `[3, 4, 5, 9]` as `3..=5, 9` (the first 20 runs).
fn ranges(seqs: &[u64]) -> String {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &s in seqs {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == s => *end = s,
            _ => runs.push((s, s)),
        }
    }
    let shown: Vec<String> = runs
        .iter()
        .take(20)
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}..={b}")
            }
        })
        .collect();
    let more = if runs.len() > 20 { ", …" } else { "" };
    format!("{}{more}", shown.join(", "))
}

/// nobody/nogroup.
const NOBODY: u32 = 65534;

/// The store a stopping daemon left, tampered with endpoint by endpoint, is refused at pickup
/// for those endpoints only: a ring memfd without its seals (A, the record re-sealed to name
/// its inode), a TCP socket in place of a backing socket (B), a record re-sealed to say root
/// owns nobody's endpoint (C); the intact
/// ones (D root's, E nobody's) are picked up. Then the attach rules, tried as nobody: nobody
/// cannot take up its own endpoint with another socket, nor root's with root's own socket;
/// root cannot take up nobody's (only the owner); nobody with its socket can.
pub(crate) fn a_tampered_fd_store_is_refused_at_pickup() -> anyhow::Result<()> {
    use demux::{
        control::{client::Client, BindRequest, ErrorCode, SinkSpec},
        daemon::handover::{self, STATE_NAME},
    };
    use std::os::fd::OwnedFd;

    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let extra = ["--control-group", "nogroup"];
    let mut daemon = RunningDaemon::start(&net, &dir, &extra)?;
    let local = |port: u16| format!("{B_ADDR}:{port}");
    let ring = || SinkSpec::Ring {
        slots: demux::ring::DEFAULT_SLOTS,
    };
    let control = daemon.control.clone();
    let nobody_bind = |port: u16| {
        net.b.run_as(NOBODY, || {
            Ok(Endpoint::bind_with(
                &control,
                BindRequest::udp(local(port), ring()),
                None,
            )?)
        })
    };
    let a = daemon.endpoint(&local(7400))?;
    let b = daemon.endpoint(&local(7401))?;
    let c = nobody_bind(7402)?;
    let d = daemon.endpoint(&local(7403))?;
    let e = nobody_bind(7404)?;
    let ids: Vec<u32> = [&a, &b, &c, &d, &e]
        .iter()
        .map(|ep| ep.id().context("an endpoint without id"))
        .collect::<anyhow::Result<_>>()?;
    let [ia, ib, ic, id, ie] = ids[..] else {
        bail!("five ids")
    };

    let mut store = FdStore::default();
    let status = daemon.stop_handing_over(&mut store)?;
    ensure!(status.success(), "the daemon exited with {status}");
    drop(daemon);
    ensure!(
        store.fds.len() == 16,
        "the daemon stored {:?} (want a record and 3 per endpoint)",
        store.names()
    );
    let mut take = |name: &str| -> anyhow::Result<OwnedFd> {
        let at = store
            .fds
            .iter()
            .position(|(n, _)| n == name)
            .with_context(|| format!("{name} is not in the store"))?;
        Ok(store.fds.remove(at).1)
    };
    // A: its ring memfd swapped for an unsealed one of the same size.
    let real = std::fs::File::from(take(&handover::fd_name(ia, "ring"))?);
    let fake = demux::sys::memfd(c"not-a-ring")?;
    fake.set_len(real.metadata()?.len())?;
    // B: its backing socket swapped for a TCP socket.
    take(&handover::fd_name(ib, "sock"))?;
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
    // C: the record re-sealed, saying root owns nobody's endpoint.
    let mut record = handover::read_sealed_record(&take(STATE_NAME)?)?;
    let forged = record
        .endpoints
        .iter_mut()
        .find(|s| s.id == ic)
        .context("C is not in the record")?;
    ensure!(
        forged.owner == NOBODY,
        "C's recorded owner is {}",
        forged.owner
    );
    forged.owner = 0;
    // A's record names the fake's inode, so that only the missing seals can refuse it.
    use std::os::unix::fs::MetadataExt as _;
    let fake_inode = fake.metadata()?.ino();
    record
        .endpoints
        .iter_mut()
        .find(|s| s.id == ia)
        .context("A is not in the record")?
        .ring_inode = fake_inode;
    store.fds.extend([
        (handover::fd_name(ia, "ring"), OwnedFd::from(fake)),
        (handover::fd_name(ib, "sock"), OwnedFd::from(tcp)),
        (STATE_NAME.to_owned(), handover::seal_record(&record)?),
    ]);

    let daemon = RunningDaemon::start_handed(&net, &dir, &extra, &mut store)?;
    let Response::Endpoints { endpoints } = daemon.client()?.call(Request::List)? else {
        bail!("no answer to list")
    };
    let mut picked: Vec<u32> = endpoints.iter().map(|e| e.id).collect();
    picked.sort();
    let mut said = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        match daemon.log.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => said.push(line),
            Err(_) => continue,
        }
    }
    let refused = |id: u32, why: &str| {
        said.iter().any(|line| {
            line.contains("not picked up")
                && line.contains(&format!("id={id}"))
                && line.contains(why)
        })
    };
    println!(
        "tampered store: A {ia} (unsealed ring) B {ib} (TCP socket) C {ic} (forged owner) D {id} \
         E {ie}; picked up {picked:?}; store left {:?}",
        store.names()
    );
    ensure!(
        picked == [id, ie],
        "picked up {picked:?}, want only the intact {id} and {ie}; the daemon said {said:#?}"
    );
    for (which, why) in [(ia, "seals"), (ib, "cookie"), (ic, "belongs to uid 65534")] {
        ensure!(
            refused(which, why),
            "no log line refusing endpoint {which} for `{why}`: {said:#?}"
        );
    }

    // The attach rules.
    let attach = |socket: OwnedFd, to: u32| -> anyhow::Result<Result<Response, ErrorCode>> {
        let mut client = Client::connect(&daemon.control)?;
        use std::os::fd::AsFd as _;
        Ok(client
            .call_with_fds(Request::Attach { id: to }, &[socket.as_fd()])
            .map(|(response, _)| response)
            .map_err(|e| e.code()))
    };
    let e_socket = || -> anyhow::Result<OwnedFd> { Ok(OwnedFd::from(e.socket().try_clone()?)) };
    let d_socket = OwnedFd::from(d.socket().try_clone()?);
    let (own_with_other, roots_with_its_socket) = net.b.run_as(NOBODY, || {
        let other = OwnedFd::from(UdpSocket::bind((B_ADDR, 0))?);
        Ok((attach(other, ie)?, attach(d_socket, id)?))
    })?;
    let root_to_nobodys = attach(e_socket()?, ie)?;
    let e_socket = e_socket()?;
    let nobody_to_own = net.b.run_as(NOBODY, || attach(e_socket, ie))?;
    println!(
        "attach: nobody to its own with another socket {own_with_other:?}; nobody to root's \
         with its socket {roots_with_its_socket:?}; root to nobody's {root_to_nobodys:?}; \
         nobody to its own {nobody_to_own:?}"
    );
    for (what, result) in [
        ("nobody's own endpoint with another socket", own_with_other),
        (
            "root's endpoint by nobody with root's socket",
            roots_with_its_socket,
        ),
        ("nobody's endpoint by root", root_to_nobodys),
    ] {
        ensure!(
            result == Err(ErrorCode::PermissionDenied),
            "attach to {what}: {result:?} (want permission_denied)"
        );
    }
    ensure!(
        nobody_to_own == Ok(Response::Attached { id: ie }),
        "nobody attaching to its own endpoint with its socket: {nobody_to_own:?}"
    );
    drop((a, b, c, d));
    Ok(())
}

/// The size of the fragmented datagram: twice the veth's 1500-byte MTU, so three fragments.
const BIG: usize = 3_000;

/// `len` bytes no two positions of which within 251 bytes are alike, from `seed`.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

pub(crate) fn a_fragmented_datagram_arrives_whole() -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let daemon = RunningDaemon::start(&net, &dir, &[])?;
    let (client_port, held_port) = (7300, 7301);
    let mut endpoint = daemon.endpoint(&format!("{B_ADDR}:{client_port}"))?;

    // A daemon-held endpoint delivering records to a Unix datagram socket of ours.
    let sink_path = dir.join("sink.sock");
    let sink = UnixDatagram::bind(&sink_path)?;
    sink.set_read_timeout(Some(Duration::from_millis(100)))?;
    let held_local = format!("{B_ADDR}:{held_port}");
    let to = format!("unix:{}", sink_path.display());
    let output = daemon
        .cli(&["bind", "udp", &held_local, "--to", &to, "--persistent"])
        .output()
        .context("running demux bind")?;
    ensure!(
        output.status.success(),
        "demux bind exited {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        endpoint_info(&daemon, &held_local)?.is_some(),
        "the daemon-held endpoint is not in list"
    );

    let counters_before = net.b.udp_counters(false)?;
    let (big_client, big_held) = (pattern(BIG, 0x5a), pattern(BIG, 0xa5));
    net.a.run_in(|| {
        let socket = UdpSocket::bind((A_ADDR, 40100))?;
        socket.send_to(&big_client, (B_ADDR, client_port))?;
        socket.send_to(b"small", (B_ADDR, client_port))?;
        socket.send_to(&big_held, (B_ADDR, held_port))?;
        socket.send_to(b"small held", (B_ADDR, held_port))?;
        Ok(())
    })?;

    // The client endpoint: both, the big one through its socket.
    let mut client_got: Vec<Vec<u8>> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while client_got.len() < 2 && Instant::now() < deadline {
        if let Some(d) = endpoint.recv_from(Some(Duration::from_millis(100)))? {
            client_got.push(d.payload);
        }
    }
    // The daemon-held one: both records in the sink.
    let mut held_got: Vec<Vec<u8>> = Vec::new();
    let mut buf = vec![0u8; 70_000];
    let deadline = Instant::now() + Duration::from_secs(5);
    while held_got.len() < 2 && Instant::now() < deadline {
        if let Ok(n) = sink.recv(&mut buf) {
            held_got.push(demux::record::decode(&buf[..n])?.payload.to_vec());
        }
    }
    // Anything more that should not be there.
    thread::sleep(Duration::from_millis(200));
    while let Some(d) = endpoint.recv_from(Some(Duration::ZERO))? {
        client_got.push(d.payload);
    }
    while let Ok(n) = sink.recv(&mut buf) {
        held_got.push(demux::record::decode(&buf[..n])?.payload.to_vec());
    }
    let held = endpoint_info(&daemon, &held_local)?.context("the held endpoint is gone")?;
    let counters_after = net.b.udp_counters(false)?;
    let delta = |name: &str| -> u64 {
        let value = |counters: &std::collections::BTreeMap<String, u64>| {
            counters.get(name).copied().unwrap_or(0)
        };
        value(&counters_after).saturating_sub(value(&counters_before))
    };
    let lens = |got: &[Vec<u8>]| got.iter().map(Vec::len).collect::<Vec<_>>();
    println!(
        "fragments: client endpoint got lengths {:?}, via_kernel {}; daemon-held endpoint got \
         lengths {:?}, list via_kernel {} delivered {} redirected {}; net.b UDP InDatagrams +{} \
         NoPorts +{} InErrors +{}",
        lens(&client_got),
        endpoint.via_kernel(),
        lens(&held_got),
        held.via_kernel,
        held.delivered,
        held.redirected,
        delta("InDatagrams"),
        delta("NoPorts"),
        delta("InErrors"),
    );

    let by_len = |got: &[Vec<u8>], len| got.iter().filter(|p| p.len() == len).count();
    ensure!(
        client_got.len() == 2 && by_len(&client_got, BIG) == 1,
        "the client endpoint got lengths {:?} (want one of {BIG} bytes and b\"small\")",
        lens(&client_got)
    );
    ensure!(
        client_got.contains(&big_client),
        "the client's {BIG}-byte datagram arrived changed"
    );
    ensure!(
        client_got.iter().any(|p| p == b"small"),
        "the client's small datagram is missing"
    );
    ensure!(
        endpoint.via_kernel() == 1,
        "the client endpoint read {} datagrams from its socket (want 1: the reassembled one)",
        endpoint.via_kernel()
    );
    ensure!(
        held_got.len() == 2 && by_len(&held_got, BIG) == 1,
        "the daemon-held endpoint's sink got lengths {:?}",
        lens(&held_got)
    );
    ensure!(
        held_got.contains(&big_held),
        "the daemon-held endpoint's {BIG}-byte datagram arrived changed"
    );
    ensure!(
        held_got.iter().any(|p| p == b"small held"),
        "the daemon-held endpoint's small datagram is missing"
    );
    ensure!(
        held.via_kernel == 1 && held.delivered == 1,
        "list says via_kernel {} delivered {} for the daemon-held endpoint (want 1 and 1)",
        held.via_kernel,
        held.delivered
    );
    ensure!(
        delta("NoPorts") == 0,
        "the kernel found no socket for {} datagrams (it answered port unreachable)",
        delta("NoPorts")
    );
    ensure!(
        delta("InDatagrams") == 2,
        "the kernel's sockets took {} datagrams (want 2: the two reassembled ones)",
        delta("InDatagrams")
    );
    Ok(())
}
