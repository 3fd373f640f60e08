//! Clients on shared-memory rings: a client process receives a burst through the daemon with
//! every datagram accounted for; a client killed mid-stream frees its endpoint and stalls
//! nothing; the library's blocking, batch and async receives; a client scribbling over its
//! ring harms no one else; binds racing closes leave the daemon's state consistent.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use demux::{
    control::{client::Client, BindRequest, ErrorCode, Request, Response, SinkSpec},
    sys::shm::Mapping,
};

use demux::testing::testbed::{ChildGuard, TempDir, VethPair, B_ADDR};

use crate::{
    daemon::RunningDaemon,
    endpoints::{kernel_socket, send, settle},
};

pub(crate) fn tests() -> Vec<libtest_mimic::Trial> {
    trials![
        a_client_process_receives_a_burst_with_every_datagram_accounted,
        a_killed_client_frees_its_endpoint_and_stalls_nothing,
        the_library_receives_blocking_batch_and_async,
        a_client_scribbling_over_its_ring_harms_no_one_else,
        binds_racing_closes_leave_a_consistent_state,
    ]
}

const BURST: u64 = 2000;

pub(crate) fn a_client_process_receives_a_burst_with_every_datagram_accounted() -> anyhow::Result<()>
{
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let daemon = RunningDaemon::start(&net, &dir, &[])?;
    let mut recv = ChildGuard::spawn(
        daemon
            .cli(&[
                "recv",
                "udp",
                &format!("{B_ADDR}:9000"),
                "--count",
                &BURST.to_string(),
                "--timeout",
                "20",
                "--format",
                "json",
            ])
            // A file, not a pipe: nobody reads a pipe until the client is done.
            .stdout(std::fs::File::create(dir.join("recv.out"))?)
            .stderr(Stdio::null()),
    )
    .context("starting demux recv")?;
    // Wait until the endpoint exists, then send.
    let mut client = daemon.client()?;
    settle(|| {
        let Response::Endpoints { endpoints } = client.call(Request::List)? else {
            bail!("no list")
        };
        Ok(!endpoints.is_empty())
    })?;
    send(&net.a, 40000, 9000, BURST)?;
    let status = recv.wait_exit(Duration::from_secs(25));
    if status.is_err() {
        recv.stop(Duration::ZERO);
    }
    let lines: Vec<String> = BufReader::new(std::fs::File::open(dir.join("recv.out"))?)
        .lines()
        .collect::<Result<_, _>>()?;
    let Response::Stats(stats) = client.call(Request::Stats)? else {
        bail!("no stats")
    };
    let redirected = stats.verdicts["redirected"];
    ensure!(
        redirected == stats.delivered() + stats.dropped(),
        "redirected {redirected} != delivered {} + dropped {}",
        stats.delivered(),
        stats.dropped()
    );
    let status =
        status.with_context(|| format!("demux recv printed {} lines; {stats:?}", lines.len()))?;
    ensure!(
        redirected == BURST,
        "the program redirected {redirected} of {BURST}"
    );
    ensure!(
        status.success(),
        "demux recv exited {status} after {} lines",
        lines.len()
    );
    ensure!(
        lines.len() as u64 == BURST,
        "the client printed {} of {BURST} datagrams",
        lines.len()
    );
    for (i, line) in lines.iter().enumerate() {
        let d: serde_json::Value = serde_json::from_str(line)?;
        let want: String = format!("40000->9000 #{i}")
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        ensure!(
            d["payload_hex"] == want.as_str(),
            "datagram {i} out of order or changed: {line}"
        );
    }
    Ok(())
}

pub(crate) fn a_killed_client_frees_its_endpoint_and_stalls_nothing() -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let daemon = RunningDaemon::start(&net, &dir, &[])?;
    let mut recv = ChildGuard::spawn(
        daemon
            .cli(&["recv", "udp", &format!("{B_ADDR}:9000"), "--format", "hex"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let mut client = daemon.client()?;
    let count_endpoints = |client: &mut demux::control::client::Client| -> anyhow::Result<usize> {
        let Response::Endpoints { endpoints } = client.call(Request::List)? else {
            bail!("no list")
        };
        Ok(endpoints.len())
    };
    settle(|| Ok(count_endpoints(&mut client)? == 1))?;
    send(&net.a, 40000, 9000, 500)?;
    recv.signal(libc::SIGKILL)?;
    recv.wait_exit(Duration::from_secs(5))?;
    let mut left = usize::MAX;
    settle(|| {
        left = count_endpoints(&mut client)?;
        Ok(left == 0)
    })?;
    ensure!(left == 0, "the killed client's endpoint is still there");
    // The port is free again: traffic passes to the kernel, and another client can bind it.
    let mut endpoint = daemon.endpoint(&format!("{B_ADDR}:9000"))?;
    send(&net.a, 40000, 9000, 3)?;
    for _ in 0..3 {
        endpoint
            .recv_from(Some(Duration::from_secs(5)))?
            .context("a datagram after the kill")?;
    }
    Ok(())
}

pub(crate) fn the_library_receives_blocking_batch_and_async() -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let daemon = RunningDaemon::start(&net, &dir, &[])?;
    let mut endpoint = daemon.endpoint("0.0.0.0:9500")?;
    ensure!(
        endpoint
            .recv_from(Some(Duration::from_millis(100)))?
            .is_none(),
        "a datagram from nowhere"
    );

    send(&net.a, 40000, 9500, 10)?;
    let first = endpoint
        .recv_from(Some(Duration::from_secs(5)))?
        .context("blocking receive")?;
    ensure!(
        first.payload == b"40000->9500 #0" && first.peer.port() == 40000,
        "{first:?}"
    );
    ensure!(
        first.local == format!("{B_ADDR}:9500").parse()?,
        "{first:?}"
    );
    let mut batch = Vec::new();
    settle(|| {
        endpoint.recv_batch(64, |d| batch.push(d.payload.to_vec()))?;
        Ok(batch.len() == 9)
    })?;
    ensure!(
        batch.len() == 9 && batch[8] == b"40000->9500 #9",
        "batch got {}",
        batch.len()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sender = std::thread::scope(|scope| -> anyhow::Result<demux::client::Datagram> {
        let handle = scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            send(&net.a, 40001, 9500, 1)
        });
        let got = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), endpoint.recv_from_async()).await
        })??;
        handle.join().expect("sender panicked")?;
        Ok(got)
    })?;
    ensure!(sender.peer.port() == 40001, "async receive got {sender:?}");
    Ok(())
}

/// The endpoints' descriptors, as root lists them.
fn listed(client: &mut Client) -> anyhow::Result<Vec<u32>> {
    let Response::Endpoints { endpoints } = client.call(Request::List)? else {
        bail!("no list")
    };
    Ok(endpoints.iter().map(|e| e.id).collect())
}

/// `list` on a fresh connection, answered within `limit` (a hung daemon fails the test, it
/// does not hang it: the daemon's guard kills it, and the stranded thread sees EOF).
fn answers_list_within(daemon: &RunningDaemon, limit: Duration) -> anyhow::Result<Vec<u32>> {
    let mut client = daemon.client()?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(listed(&mut client));
    });
    rx.recv_timeout(limit)
        .map_err(|_| anyhow::anyhow!("the daemon did not answer `list` within {limit:?}"))?
}

fn udp_bind(local: &str, to: SinkSpec) -> Request {
    Request::Bind(BindRequest::udp(local, to))
}

/// xorshift64: cheap pseudo-random bytes, the same every run.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

const SCRIBBLED: u64 = 1000;

/// A client overwrites its whole ring (control words, slots, everything) with pseudo-random
/// bytes, again and again, while datagrams flow to it and to another client's ring: the other
/// client receives every one of its datagrams in order, the daemon stays alive and answers,
/// and its accounting still adds up. The scribbler may lose its own datagrams.
pub(crate) fn a_client_scribbling_over_its_ring_harms_no_one_else() -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let mut daemon = RunningDaemon::start(&net, &dir, &[])?;
    // The scribbler: a ring bound by hand, its memfd mapped here.
    let mut scribbler = daemon.client()?;
    let (response, fds) = scribbler.call_with_fds(
        udp_bind(
            &format!("{B_ADDR}:9800"),
            SinkSpec::Ring {
                slots: demux::ring::DEFAULT_SLOTS,
            },
        ),
        &[],
    )?;
    ensure!(
        matches!(response, Response::Bound { .. }),
        "bind: {response:?}"
    );
    let [memory, _wake]: [std::os::fd::OwnedFd; 2] = fds
        .try_into()
        .map_err(|fds: Vec<_>| anyhow::anyhow!("{} descriptors, not 2", fds.len()))?;
    let memory = std::fs::File::from(memory);
    let len = usize::try_from(memory.metadata()?.len())?;
    let ring = Mapping::shared(&memory, len).context("mapping the ring")?;
    // The bystander: a well-behaved client on another port.
    let mut bystander = daemon.endpoint(&format!("{B_ADDR}:9801"))?;

    let sending = AtomicBool::new(true);
    let (mut scribbles, mut amid_traffic) = (0u32, 0u32);
    thread::scope(|scope| -> anyhow::Result<()> {
        let sender = scope.spawn(|| {
            // Interleaved rounds, paced so that the scribbling overlaps the traffic.
            let result = net.a.run_in(|| {
                let socket = std::net::UdpSocket::bind((demux::testing::testbed::A_ADDR, 0))?;
                for i in 0..SCRIBBLED {
                    for port in [9800u16, 9801] {
                        socket.send_to(format!("{port} #{i}").as_bytes(), (B_ADDR, port))?;
                    }
                    if i % 10 == 9 {
                        thread::sleep(Duration::from_millis(10));
                    }
                }
                Ok(())
            });
            sending.store(false, Ordering::Release);
            result
        });
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut noise = vec![0u8; len];
        let deadline = Instant::now() + Duration::from_secs(15);
        // While the sender sends, and a few times after: at least 20, at most 400 passes.
        while scribbles < 400
            && Instant::now() < deadline
            && (scribbles < 20 || sending.load(Ordering::Acquire))
        {
            for chunk in noise.chunks_exact_mut(8) {
                chunk.copy_from_slice(&xorshift(&mut state).to_ne_bytes());
            }
            ring.write(0, &[&noise]);
            scribbles += 1;
            if sending.load(Ordering::Acquire) {
                amid_traffic = scribbles;
            }
        }
        sender.join().expect("the sender panicked")
    })?;

    ensure!(
        amid_traffic > 0,
        "no scribble overlapped the traffic ({scribbles} in all)"
    );
    ensure!(
        daemon.child.child().try_wait()?.is_none(),
        "the daemon exited after {scribbles} scribbles"
    );
    answers_list_within(&daemon, Duration::from_secs(5))?;
    for i in 0..SCRIBBLED {
        let d = bystander
            .recv_from(Some(Duration::from_secs(5)))?
            .with_context(|| format!("the bystander got {i} of {SCRIBBLED}"))?;
        ensure!(
            d.payload == format!("9801 #{i}").as_bytes(),
            "the bystander's datagram {i} is {:?}",
            String::from_utf8_lossy(&d.payload)
        );
    }
    let mut client = daemon.client()?;
    let mut last = None;
    settle(|| {
        let Response::Stats(stats) = client.call(Request::Stats)? else {
            bail!("no stats")
        };
        let done = stats.seen() >= 2 * SCRIBBLED
            && stats.seen() == stats.delivered() + stats.passed() + stats.dropped();
        last = Some(stats);
        Ok(done)
    })?;
    let stats = last.context("no stats")?;
    ensure!(
        stats.seen() >= 2 * SCRIBBLED
            && stats.seen() == stats.delivered() + stats.passed() + stats.dropped(),
        "after {scribbles} scribbles: seen {} delivered {} passed {} dropped {}: {stats:?}",
        stats.seen(),
        stats.delivered(),
        stats.passed(),
        stats.dropped()
    );
    // Still serving: the scribbler's connection closes its endpoint, the port is free again.
    drop((ring, scribbler));
    let mut left = Vec::new();
    settle(|| {
        left = listed(&mut client)?;
        Ok(left == Vec::from_iter(bystander.id()))
    })?;
    ensure!(
        left == Vec::from_iter(bystander.id()),
        "after the scribbler left: {left:?}"
    );
    let mut again = daemon.endpoint(&format!("{B_ADDR}:9800"))?;
    send(&net.a, 40000, 9800, 1)?;
    again
        .recv_from(Some(Duration::from_secs(5)))?
        .context("a datagram on the scribbler's port after it left")?;
    Ok(())
}

const RACES: usize = 200;

/// Many times over, two clients of one uid race to bind the same `udp 198.18.0.2:9700` while
/// a third closes every endpoint as soon as it appears: each bind either succeeds or is
/// refused as `address_in_use`, every endpoint bound is closed exactly once, and none is left.
/// Afterwards the port goes to the kernel, then to the one endpoint that binds it, and `list`
/// shows just that endpoint.
pub(crate) fn binds_racing_closes_leave_a_consistent_state() -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let daemon = RunningDaemon::start(&net, &dir, &[])?;
    let local = format!("{B_ADDR}:9700");
    let mut binders = [daemon.client()?, daemon.client()?];
    let mut closer = daemon.client()?;
    let started = Instant::now();
    let (mut bound_total, mut refused_total) = (0, 0);
    for race in 0..RACES {
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "{race} races took over a minute"
        );
        let finished = AtomicUsize::new(0);
        let (bound, closed) = thread::scope(|scope| -> anyhow::Result<_> {
            let handles: Vec<_> = binders
                .iter_mut()
                .zip([0, (race % 20) as u64])
                .map(|(client, lag)| {
                    let (local, finished) = (&local, &finished);
                    scope.spawn(move || -> anyhow::Result<Option<u32>> {
                        // The second binder lags by 0 to 1.9 ms, so that its bind lands
                        // before, during or after the close of the first one's endpoint.
                        thread::sleep(Duration::from_micros(100 * lag));
                        let answer = client.call(udp_bind(local, SinkSpec::Count));
                        finished.fetch_add(1, Ordering::AcqRel);
                        match answer {
                            Ok(Response::Bound { id }) => Ok(Some(id)),
                            Err(e) if e.code() == ErrorCode::AddressInUse => Ok(None),
                            other => bail!("bind {local}: {other:?}"),
                        }
                    })
                })
                .collect();
            // The closer: closes whatever it sees, until both binds are answered and nothing
            // is left.
            let mut closed = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let done = finished.load(Ordering::Acquire) == 2;
                let ids = listed(&mut closer)?;
                if done && ids.is_empty() {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "race {race}: endpoints {ids:?} still there"
                );
                for id in ids {
                    match closer.call(Request::Close { id })? {
                        Response::Closed { id: gone } if gone == id => closed.push(id),
                        other => bail!("race {race}: close {id}: {other:?}"),
                    }
                }
            }
            let mut bound = Vec::new();
            for handle in handles {
                bound.extend(handle.join().expect("a binder panicked")?);
            }
            Ok((bound, closed))
        })?;
        ensure!(!bound.is_empty(), "race {race}: both binds were refused");
        let bound_set: BTreeSet<u32> = bound.iter().copied().collect();
        let closed_set: BTreeSet<u32> = closed.iter().copied().collect();
        ensure!(
            bound_set == closed_set && closed.len() == closed_set.len(),
            "race {race}: bound {bound:?}, closed {closed:?}"
        );
        bound_total += bound.len();
        refused_total += 2 - bound.len();
    }
    ensure!(
        listed(&mut closer)?.is_empty(),
        "endpoints left after the races"
    );

    // No endpoint: the kernel's socket gets the port's traffic.
    let kernel = kernel_socket(&net.b, 9700)?;
    send(&net.a, 40000, 9700, 5)?;
    let mut kernel_got = 0;
    settle(|| {
        kernel_got += drain(&kernel);
        Ok(kernel_got == 5)
    })?;
    ensure!(
        kernel_got == 5,
        "with no endpoint the kernel got {kernel_got} of 5 \
         ({bound_total} bound, {refused_total} refused)"
    );
    // A fresh bind succeeds (its backing socket takes the port from the kernel socket, which
    // goes) and holds the port alone.
    drop(kernel);
    let mut endpoint = daemon.endpoint(&local)?;
    let ids = answers_list_within(&daemon, Duration::from_secs(5))?;
    ensure!(ids == Vec::from_iter(endpoint.id()), "list shows {ids:?}");
    match binders[0].call(udp_bind(&local, SinkSpec::Count)) {
        Err(e) if e.code() == ErrorCode::AddressInUse => {}
        other => bail!("a second bind on the held port: {other:?}"),
    }
    send(&net.a, 40001, 9700, 5)?;
    for i in 0..5 {
        let d = endpoint
            .recv_from(Some(Duration::from_secs(5)))?
            .with_context(|| format!("the endpoint got {i} of 5"))?;
        ensure!(d.peer.port() == 40001, "{d:?}");
    }
    ensure!(
        endpoint.via_kernel() == 0,
        "{} datagrams came through the backing socket, not the ring",
        endpoint.via_kernel()
    );
    Ok(())
}

fn drain(socket: &std::net::UdpSocket) -> u64 {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while n < 10_000 && socket.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}
