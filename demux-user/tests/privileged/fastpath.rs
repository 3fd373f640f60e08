//! The fast path (a client reading a leased interface's AF_XDP queues itself, see "The fast
//! path" in docs/ARCHITECTURE.md), as uid 65534 in-process (`NetNs::run_as`) beside root: its
//! datagrams arrive whole with their sender and never through the daemon's ring; a lease is
//! refused while another uid's endpoint is bound; while a lease holds, another uid's bind is
//! refused and its kernel socket serves it, until the lease ends and it binds again. In every
//! case each client receives exactly its own datagrams, and the fast path never reads a frame
//! of another endpoint. The accounting holds through a lease: the daemon counts the frames
//! handed to the client from the leased rx rings' producer index.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use demux::{
    client::{Endpoint, ErrorCode},
    control::{BindRequest, Request, Response, SinkSpec, Stats},
    testing::testbed::{NetNs, A_ADDR, B_ADDR},
};

use demux::testing::testbed::{TempDir, VethPair};

use crate::daemon::RunningDaemon;

/// Nobody's uid.
const NOBODY: u32 = 65534;

pub(crate) fn tests() -> Vec<libtest_mimic::Trial> {
    trials![
        a_fast_path_client_receives_whole_datagrams_with_their_sender,
        a_fast_path_is_refused_while_another_uids_endpoint_is_bound,
        another_uid_is_served_by_its_kernel_socket_while_a_lease_holds,
        a_fast_path_client_that_stops_reading_loses_only_its_own_datagrams,
        only_the_configured_uid_may_take_a_fast_path,
        demux_recv_takes_the_fast_path,
        an_idle_fast_path_receive_sleeps_instead_of_spinning,
        a_batch_wait_keeps_every_datagram_and_never_naps_while_idle,
    ]
}

/// A daemon in a veth pair of its own whose control socket nobody may use, and which lets
/// nobody (only) take a fast path; `extra` arguments after those. Drop in reverse order.
fn daemon_for_nobodys_fast_path(
    extra: &[&str],
) -> anyhow::Result<(VethPair, TempDir, RunningDaemon)> {
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let mut args = vec!["--control-group", "nogroup", "--fast-path-uid", "65534"];
    args.extend_from_slice(extra);
    let daemon = RunningDaemon::start(&net, &dir, &args)?;
    Ok((net, dir, daemon))
}

/// A ring endpoint on `local`, bound as uid `uid` from a thread in `ns`, and with a fast path
/// on `iface` asked for when `fast` (the answer is returned beside it).
fn endpoint_as(
    ns: &NetNs,
    uid: u32,
    daemon: &RunningDaemon,
    local: &str,
    fast: Option<&str>,
) -> anyhow::Result<(Endpoint, Option<Result<(), demux::client::Error>>)> {
    let control = daemon.control.clone();
    ns.run_as(uid, || {
        let request = BindRequest::udp(
            local,
            SinkSpec::Ring {
                slots: demux::ring::DEFAULT_SLOTS,
            },
        );
        let mut endpoint = Endpoint::bind_with(&control, request, None)?;
        let answer = fast.map(|iface| endpoint.fast_path(iface));
        Ok((endpoint, answer))
    })
}

/// Nobody's ring endpoint on `B_ADDR:port`, with the fast path on `net.b_if` asked for and
/// granted (an error otherwise).
fn fast_endpoint_as_nobody(
    net: &VethPair,
    daemon: &RunningDaemon,
    port: u16,
) -> anyhow::Result<Endpoint> {
    let (endpoint, answer) = endpoint_as(
        &net.b,
        NOBODY,
        daemon,
        &format!("{B_ADDR}:{port}"),
        Some(&net.b_if),
    )?;
    answer
        .context("asked")?
        .context("the fast path was refused")?;
    Ok(endpoint)
}

/// Sends each of `payloads` from `A_ADDR:src_port` to `B_ADDR:dst_port`, 1 ms apart in bursts
/// of 50 (the kernel socket behind a fallback must not overflow).
fn send_payloads(
    ns: &NetNs,
    src_port: u16,
    dst_port: u16,
    payloads: &[Vec<u8>],
) -> anyhow::Result<()> {
    ns.run_in(|| {
        let socket = UdpSocket::bind((A_ADDR, src_port))?;
        for (i, payload) in payloads.iter().enumerate() {
            socket.send_to(payload, (B_ADDR, dst_port))?;
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    })
}

/// Payload `i` to port `port`: its label, padded to `len` bytes.
fn payload(port: u16, i: usize, len: usize) -> Vec<u8> {
    let mut bytes = format!("to {port} #{i} ").into_bytes();
    bytes.resize(len.max(bytes.len()), b'.');
    bytes
}

/// Receives until `want` datagrams came or 5 s pass (no datagram for 1 s ends it early once
/// `want` is reached; more than `want` are read too, to catch extras).
fn receive(endpoint: &mut Endpoint, want: usize) -> anyhow::Result<Vec<demux::client::Datagram>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let wait = if got.len() >= want {
            Duration::from_millis(300)
        } else {
            Duration::from_millis(200)
        };
        match endpoint.recv_from(Some(wait))? {
            Some(datagram) => got.push(datagram),
            None if got.len() >= want => break,
            None => {}
        }
    }
    Ok(got)
}

fn stats(daemon: &RunningDaemon) -> anyhow::Result<Stats> {
    match daemon.client()?.call(Request::Stats)? {
        Response::Stats(stats) => Ok(stats),
        other => bail!("stats: {other:?}"),
    }
}

/// Checks that `got` is exactly `sent`, in order, each from `A_ADDR:src` to `B_ADDR:dst`.
fn exactly(
    who: &str,
    got: &[demux::client::Datagram],
    sent: &[Vec<u8>],
    src: u16,
    dst: u16,
) -> anyhow::Result<()> {
    let peer: SocketAddr = format!("{A_ADDR}:{src}").parse()?;
    let local: SocketAddr = format!("{B_ADDR}:{dst}").parse()?;
    for (i, d) in got.iter().enumerate() {
        ensure!(
            d.peer == peer && d.local == local,
            "{who}: datagram {i} from {} to {} (expected {peer} to {local}): {:?}",
            d.peer,
            d.local,
            String::from_utf8_lossy(&d.payload[..d.payload.len().min(24)])
        );
        ensure!(
            sent.get(i) == Some(&d.payload),
            "{who}: datagram {i} ({} bytes, {:?}…) is not the {i}th sent",
            d.payload.len(),
            String::from_utf8_lossy(&d.payload[..d.payload.len().min(24)])
        );
    }
    ensure!(
        got.len() == sent.len(),
        "{who}: received {} of {} datagrams",
        got.len(),
        sent.len()
    );
    Ok(())
}

/// As nobody, with the daemon's only endpoint: the lease is granted, datagrams of 1 to 1,472
/// bytes arrive whole, in order, with their sender and destination, through the fast path
/// alone (the daemon delivers nothing to the ring, the kernel socket gets nothing), and the
/// program redirected each of them.
pub(crate) fn a_fast_path_client_receives_whole_datagrams_with_their_sender() -> anyhow::Result<()>
{
    let (net, _dir, daemon) = daemon_for_nobodys_fast_path(&[])?;
    let mut endpoint = fast_endpoint_as_nobody(&net, &daemon, 9800)?;
    ensure!(endpoint.is_fast(), "the fast path is not on");
    let sent: Vec<Vec<u8>> = (0..300)
        .map(|i| payload(9800, i, [1, 64, 1000, 1472][i % 4]))
        .collect();
    send_payloads(&net.a, 41000, 9800, &sent)?;
    let got = receive(&mut endpoint, sent.len())?;
    exactly("the fast path", &got, &sent, 41000, 9800)?;
    ensure!(
        endpoint.via_kernel() == 0,
        "{} datagrams came through the kernel socket",
        endpoint.via_kernel()
    );
    ensure!(
        endpoint.fast_dropped() == (0, 0),
        "the fast path dropped {:?}",
        endpoint.fast_dropped()
    );
    let stats = stats(&daemon)?;
    let listed = stats
        .endpoints
        .iter()
        .find(|e| e.id == endpoint.id().unwrap_or(0))
        .context("the endpoint is not listed")?;
    ensure!(
        listed.redirected == sent.len() as u64 && listed.delivered == 0,
        "redirected {} (want {}), delivered through the daemon {} (want 0)",
        listed.redirected,
        sent.len(),
        listed.delivered
    );
    ensure!(
        stats.sockets.iter().all(|s| s.leased),
        "not every queue is leased: {:?}",
        stats.sockets
    );
    // The async receive waits on the leased queue too: datagrams sent while it waits arrive.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let later: Vec<Vec<u8>> = (300..310).map(|i| payload(9800, i, 200)).collect();
    let got = std::thread::scope(|scope| -> anyhow::Result<Vec<demux::client::Datagram>> {
        let sender = scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            send_payloads(&net.a, 41000, 9800, &later)
        });
        let got = runtime.block_on(async {
            let mut got = Vec::new();
            while got.len() < later.len() {
                let next = tokio::time::timeout(Duration::from_secs(5), endpoint.recv_from_async());
                got.push(next.await.context("async receive timed out")??);
            }
            anyhow::Ok(got)
        })?;
        sender
            .join()
            .map_err(|_| anyhow::anyhow!("the sender panicked"))??;
        Ok(got)
    })?;
    exactly("the fast path, async", &got, &later, 41000, 9800)?;
    ensure!(
        endpoint.via_kernel() == 0,
        "async: through the kernel socket"
    );
    // Every frame is accounted for: the daemon counts what the kernel put on the leased rx
    // rings (their producer index), which is what the client received or dropped itself.
    let (foreign, bad) = endpoint.fast_dropped();
    let received = (sent.len() + later.len()) as u64 + foreign + bad;
    accounting_holds(&daemon, received, "during the lease")?;
    // The lease ends with the connection: the count stays, carried over to the queue's own
    // socket, and the equation still holds.
    drop(endpoint);
    let deadline = Instant::now() + Duration::from_secs(5);
    while self::stats(&daemon)?.sockets.iter().any(|s| s.leased) {
        ensure!(
            Instant::now() < deadline,
            "the lease did not end within 5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    accounting_holds(&daemon, received, "after the lease")?;
    Ok(())
}

/// Waits (up to 3 s: workers publish every 100 ms) until `stats` says
/// seen = delivered + handed to fast-path clients + passed + dropped, with `handed` frames
/// handed to fast-path clients.
fn accounting_holds(daemon: &RunningDaemon, handed: u64, when: &str) -> anyhow::Result<Stats> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let stats = stats(daemon)?;
        let balanced = stats.seen()
            == stats.delivered() + stats.handed_to_clients() + stats.passed() + stats.dropped();
        if (balanced && stats.handed_to_clients() == handed) || Instant::now() > deadline {
            ensure!(
                balanced && stats.handed_to_clients() == handed,
                "{when}: seen {} = delivered {} + handed to fast-path clients {} (want {handed}) \
                 + passed {} + dropped {}? verdicts {:?}, sockets {:?}",
                stats.seen(),
                stats.delivered(),
                stats.handed_to_clients(),
                stats.passed(),
                stats.dropped(),
                stats.verdicts,
                stats.sockets
            );
            return Ok(stats);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Root binds first; nobody's lease is refused (its endpoint stays on the ring) and both
/// receive exactly their own datagrams. Without the rule, nobody's queue would carry root's
/// frames: the lease would be granted, and root would receive nothing.
pub(crate) fn a_fast_path_is_refused_while_another_uids_endpoint_is_bound() -> anyhow::Result<()> {
    let (net, _dir, daemon) = daemon_for_nobodys_fast_path(&[])?;
    let mut roots = daemon.endpoint(&format!("{B_ADDR}:9811"))?;
    let (mut nobodys, answer) = endpoint_as(
        &net.b,
        NOBODY,
        &daemon,
        &format!("{B_ADDR}:9810"),
        Some(&net.b_if),
    )?;
    match answer.context("asked")? {
        Err(e) if e.code() == ErrorCode::PermissionDenied && e.to_string().contains("uid 0") => {}
        other => bail!("nobody's fast path beside root's endpoint: {other:?}"),
    }
    ensure!(!nobodys.is_fast(), "the fast path is on");
    let (to_nobody, to_root): (Vec<_>, Vec<_>) = (
        (0..200).map(|i| payload(9810, i, 100)).collect(),
        (0..200).map(|i| payload(9811, i, 100)).collect(),
    );
    send_payloads(&net.a, 41010, 9810, &to_nobody)?;
    send_payloads(&net.a, 41011, 9811, &to_root)?;
    exactly(
        "nobody",
        &receive(&mut nobodys, 200)?,
        &to_nobody,
        41010,
        9810,
    )?;
    exactly("root", &receive(&mut roots, 200)?, &to_root, 41011, 9811)?;
    ensure!(
        nobodys.fast_dropped() == (0, 0),
        "nobody's fast path read {:?} frames not its own",
        nobodys.fast_dropped()
    );
    Ok(())
}

/// Nobody holds a lease; root's bind is refused as busy and its kernel socket serves it
/// (its endpoint has no session); neither receives a datagram of the other, and nobody's fast
/// path reads no frame not its own. When nobody's endpoint goes, the lease ends: root's
/// endpoint binds again by itself and receives through the daemon's ring.
pub(crate) fn another_uid_is_served_by_its_kernel_socket_while_a_lease_holds() -> anyhow::Result<()>
{
    let (net, _dir, daemon) = daemon_for_nobodys_fast_path(&[])?;
    let mut nobodys = fast_endpoint_as_nobody(&net, &daemon, 9820)?;
    ensure!(nobodys.is_fast(), "the fast path is not on");
    let mut roots = daemon.endpoint(&format!("{B_ADDR}:9821"))?;
    let roots_bound = roots.id();
    let (to_nobody, to_root): (Vec<_>, Vec<_>) = (
        (0..200).map(|i| payload(9820, i, 100)).collect(),
        (0..200).map(|i| payload(9821, i, 100)).collect(),
    );
    send_payloads(&net.a, 41020, 9820, &to_nobody)?;
    send_payloads(&net.a, 41021, 9821, &to_root)?;
    exactly(
        "nobody",
        &receive(&mut nobodys, 200)?,
        &to_nobody,
        41020,
        9820,
    )?;
    ensure!(
        nobodys.fast_dropped() == (0, 0),
        "nobody's fast path read {:?} frames not its own",
        nobodys.fast_dropped()
    );
    exactly("root", &receive(&mut roots, 200)?, &to_root, 41021, 9821)?;
    ensure!(
        roots_bound.is_none(),
        "root's endpoint was bound on the daemon ({roots_bound:?}) while nobody's lease holds",
    );
    ensure!(
        roots.via_kernel() == 200,
        "root received {} of 200 through its kernel socket",
        roots.via_kernel()
    );
    // The lease ends with nobody's endpoint; root's binds again within a few seconds.
    drop(nobodys);
    let deadline = Instant::now() + Duration::from_secs(5);
    while roots.id().is_none() && Instant::now() < deadline {
        roots.recv_from(Some(Duration::from_millis(50)))?;
    }
    ensure!(
        roots.id().is_some(),
        "root's endpoint did not bind again after the lease ended"
    );
    // Steered again once the queue's own socket is back (the worker retries every 100 ms).
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats(&daemon)?
        .sockets
        .iter()
        .any(|s| s.leased || s.frames == 0)
    {
        ensure!(
            Instant::now() < deadline,
            "the daemon did not take its queue back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let again: Vec<_> = (200..300).map(|i| payload(9821, i, 100)).collect();
    send_payloads(&net.a, 41021, 9821, &again)?;
    exactly(
        "root, after the lease",
        &receive(&mut roots, 100)?,
        &again,
        41021,
        9821,
    )?;
    ensure!(
        roots.via_kernel() == 200,
        "after the lease root received {} through its kernel socket, not the ring",
        roots.via_kernel() - 200
    );
    Ok(())
}

/// Nobody holds a lease (the daemon's 256 frames per queue) and reads nothing while 2,000
/// datagrams arrive for it: its queue's rings hold at most 256, the kernel drops the rest on
/// nobody's socket (counted: `rx_dropped` or `rx_ring_full` of the leased queue), and root,
/// served by its kernel socket meanwhile, receives every one of its own. Then nobody reads: at
/// most 256 of its own datagrams, in order, and nothing of root's; new ones arrive again.
pub(crate) fn a_fast_path_client_that_stops_reading_loses_only_its_own_datagrams(
) -> anyhow::Result<()> {
    let (net, _dir, daemon) = daemon_for_nobodys_fast_path(&["--frames", "256"])?;
    let mut nobodys = fast_endpoint_as_nobody(&net, &daemon, 9830)?;
    let mut roots = daemon.endpoint(&format!("{B_ADDR}:9831"))?;
    let flood: Vec<_> = (0..2000).map(|i| payload(9830, i, 100)).collect();
    let to_root: Vec<_> = (0..200).map(|i| payload(9831, i, 100)).collect();
    send_payloads(&net.a, 41030, 9830, &flood)?;
    send_payloads(&net.a, 41031, 9831, &to_root)?;
    exactly("root", &receive(&mut roots, 200)?, &to_root, 41031, 9831)?;
    let got = receive(&mut nobodys, 256)?;
    ensure!(
        !got.is_empty() && got.len() <= 256,
        "nobody received {} datagrams after stalling (its rings hold 256)",
        got.len()
    );
    let mut next = 0;
    for d in &got {
        let at = flood[next..]
            .iter()
            .position(|p| *p == d.payload)
            .with_context(|| {
                format!(
                    "nobody received {:?}, not one of its own in order",
                    String::from_utf8_lossy(&d.payload[..d.payload.len().min(24)])
                )
            })?;
        next += at + 1;
    }
    ensure!(
        nobodys.fast_dropped() == (0, 0),
        "nobody's fast path read {:?} frames not its own",
        nobodys.fast_dropped()
    );
    let lost: u64 = stats(&daemon)?
        .sockets
        .iter()
        .map(|s| s.rx_dropped.max(s.rx_ring_full))
        .sum();
    ensure!(
        lost + got.len() as u64 >= 2000,
        "of 2,000 sent, {} received and only {lost} counted as dropped on the leased socket",
        got.len()
    );
    let after: Vec<_> = (2000..2010).map(|i| payload(9830, i, 100)).collect();
    send_payloads(&net.a, 41030, 9830, &after)?;
    exactly(
        "nobody, reading again",
        &receive(&mut nobodys, 10)?,
        &after,
        41030,
        9830,
    )?;
    // The lease ends; the queue's own socket is back, and the drops counted on the leased one
    // stay in `stats` (the accounting never goes back).
    drop(nobodys);
    let deadline = Instant::now() + Duration::from_secs(5);
    let counted = loop {
        let sockets = stats(&daemon)?.sockets;
        if sockets.iter().all(|s| !s.leased && s.frames > 0) {
            break sockets
                .iter()
                .map(|s| s.rx_dropped.max(s.rx_ring_full))
                .sum::<u64>();
        }
        ensure!(
            Instant::now() < deadline,
            "the daemon did not take its queue back"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    ensure!(
        counted >= lost,
        "after the lease, stats count {counted} drops, {lost} during it"
    );
    Ok(())
}

/// The daemon lets nobody (65534) take a lease: root, alone on the daemon, is refused and reads
/// its ring; without `--fast-path-uid`, nobody alone on the daemon is refused too. Each still
/// receives its datagrams, through the ring.
pub(crate) fn only_the_configured_uid_may_take_a_fast_path() -> anyhow::Result<()> {
    let refused = |who: &str, answer: Option<Result<(), demux::client::Error>>| match answer {
        Some(Err(e))
            if e.code() == ErrorCode::PermissionDenied
                && e.to_string().contains("may not lease") =>
        {
            Ok(())
        }
        other => bail!("{who}'s fast path: {other:?}"),
    };
    {
        let (net, _dir, daemon) = daemon_for_nobodys_fast_path(&[])?;
        let (mut roots, answer) = endpoint_as(
            &net.b,
            0,
            &daemon,
            &format!("{B_ADDR}:9840"),
            Some(&net.b_if),
        )?;
        refused("root", answer)?;
        ensure!(!roots.is_fast(), "root's fast path is on");
        let sent: Vec<_> = (0..50).map(|i| payload(9840, i, 100)).collect();
        send_payloads(&net.a, 41040, 9840, &sent)?;
        exactly("root", &receive(&mut roots, 50)?, &sent, 41040, 9840)?;
    }
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let daemon = RunningDaemon::start(&net, &dir, &["--control-group", "nogroup"])?;
    let (mut nobodys, answer) = endpoint_as(
        &net.b,
        NOBODY,
        &daemon,
        &format!("{B_ADDR}:9841"),
        Some(&net.b_if),
    )?;
    refused("nobody, without --fast-path-uid", answer)?;
    let sent: Vec<_> = (0..50).map(|i| payload(9841, i, 100)).collect();
    send_payloads(&net.a, 41041, 9841, &sent)?;
    exactly("nobody", &receive(&mut nobodys, 50)?, &sent, 41041, 9841)?;
    Ok(())
}

/// `demux recv --fast-path IFACE` (root, named by the daemon) says the fast path is on and
/// prints every datagram, each from its sender.
pub(crate) fn demux_recv_takes_the_fast_path() -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let daemon = RunningDaemon::start(&net, &dir, &["--fast-path-uid", "0"])?;
    let out = dir.join("recv.out");
    let err = dir.join("recv.err");
    let mut recv = demux::testing::testbed::ChildGuard::spawn(
        daemon
            .cli(&[
                "recv",
                "udp",
                &format!("{B_ADDR}:9850"),
                "--fast-path",
                &net.b_if,
                "--count",
                "20",
                "--timeout",
                "10",
                "--format",
                "json",
            ])
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?),
    )?;
    // Until the lease is on (every queue leased), then send.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stats(&daemon)?.sockets.iter().all(|s| s.leased) {
        ensure!(
            Instant::now() < deadline,
            "no lease within 5 s: {}",
            std::fs::read_to_string(&err)?
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent: Vec<_> = (0..20).map(|i| payload(9850, i, 64)).collect();
    send_payloads(&net.a, 41050, 9850, &sent)?;
    let status = recv.wait_exit(Duration::from_secs(15))?;
    let said = std::fs::read_to_string(&err)?;
    ensure!(status.success(), "demux recv exited {status}: {said}");
    ensure!(
        said.contains(&format!("fast path on {}", net.b_if)),
        "demux recv said: {said}"
    );
    let lines: Vec<String> = std::fs::read_to_string(&out)?
        .lines()
        .map(str::to_owned)
        .collect();
    ensure!(
        lines.len() == 20,
        "demux recv printed {} of 20",
        lines.len()
    );
    for (i, line) in lines.iter().enumerate() {
        let d: serde_json::Value = serde_json::from_str(line)?;
        let want: String = sent[i].iter().map(|b| format!("{b:02x}")).collect();
        ensure!(
            d["payload_hex"] == want.as_str() && d["peer"] == format!("{A_ADDR}:41050").as_str(),
            "datagram {i}: {line}"
        );
    }
    Ok(())
}

/// CPU time the calling thread has used (`/proc/thread-self/stat`: utime + stime, in clock
/// ticks of 10 ms).
fn thread_cpu() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
    // The fields after the command name (in parentheses, and it may hold spaces): utime and
    // stime are the 14th and 15th of the line.
    let after = stat.rsplit_once(')').context("no ')' in stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .context("stat too short")?
        .iter()
        .map(|f| f.parse::<u64>())
        .sum::<Result<u64, _>>()?;
    Ok(Duration::from_millis(ticks * 10))
}

/// The fast path spins a bounded while on its rx rings before it sleeps (`FAST_SPIN`), then
/// sleeps in poll(2): a receive that waits 1 s with no traffic uses little CPU (a spin
/// without a bound would use the whole second), and a datagram sent while it sleeps wakes it,
/// through the fast path or (passed by the program) through the backing socket.
pub(crate) fn an_idle_fast_path_receive_sleeps_instead_of_spinning() -> anyhow::Result<()> {
    let (net, _dir, daemon) = daemon_for_nobodys_fast_path(&[])?;
    let mut endpoint = fast_endpoint_as_nobody(&net, &daemon, 9860)?;
    ensure!(endpoint.is_fast(), "the fast path is not on");
    let before = thread_cpu()?;
    let idle = endpoint.recv_from(Some(Duration::from_secs(1)))?;
    let used = thread_cpu()?.saturating_sub(before);
    ensure!(idle.is_none(), "a datagram arrived with no traffic");
    ensure!(
        used <= Duration::from_millis(200),
        "an idle receive of 1 s used {used:?} of CPU: it spun instead of sleeping"
    );
    // Asleep in poll, it wakes for a datagram sent 300 ms later, still through the fast path.
    let later = vec![payload(9860, 0, 64)];
    let before = thread_cpu()?;
    let got = std::thread::scope(|scope| -> anyhow::Result<_> {
        let sender = scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            send_payloads(&net.a, 41060, 9860, &later)
        });
        let got = endpoint.recv_from(Some(Duration::from_secs(5)))?;
        sender
            .join()
            .map_err(|_| anyhow::anyhow!("the sender panicked"))??;
        Ok(got)
    })?;
    let used = thread_cpu()?.saturating_sub(before);
    let got: Vec<_> = got.into_iter().collect();
    exactly("the fast path, woken", &got, &later, 41060, 9860)?;
    ensure!(
        used <= Duration::from_millis(100),
        "waiting 300 ms for a datagram used {used:?} of CPU"
    );
    ensure!(endpoint.via_kernel() == 0, "through the kernel socket");
    // A datagram the program passes (3,000 bytes: fragmented on the 1,500-byte veth) reaches
    // the backing socket, and the sleeping receive reads it although the fast path serves.
    let fragmented = vec![payload(9860, 1, 3000)];
    send_payloads(&net.a, 41060, 9860, &fragmented)?;
    let got: Vec<_> = endpoint
        .recv_from(Some(Duration::from_secs(2)))?
        .into_iter()
        .collect();
    exactly("the backing socket", &got, &fragmented, 41060, 9860)?;
    ensure!(
        endpoint.via_kernel() == 1,
        "the fragmented datagram did not come through the kernel socket"
    );
    Ok(())
}

/// This thread's voluntary context switches so far (each a sleep it went into).
fn thread_sleeps() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .context("no voluntary_ctxt_switches in status")?;
    Ok(line.trim().parse()?)
}

/// With a batch wait set (`Endpoint::set_batch_wait`), a burst arrives whole and in order, and
/// an idle receive sleeps in poll once instead of napping again and again.
pub(crate) fn a_batch_wait_keeps_every_datagram_and_never_naps_while_idle() -> anyhow::Result<()> {
    let (net, _dir, daemon) = daemon_for_nobodys_fast_path(&[])?;
    let mut endpoint = fast_endpoint_as_nobody(&net, &daemon, 9861)?;
    ensure!(endpoint.is_fast(), "the fast path is not on");
    endpoint.set_batch_wait(Duration::from_micros(200));
    let burst: Vec<Vec<u8>> = (0..200).map(|i| payload(9861, i, 64)).collect();
    send_payloads(&net.a, 41061, 9861, &burst)?;
    let got = receive(&mut endpoint, burst.len())?;
    exactly("the fast path with a batch wait", &got, &burst, 41061, 9861)?;
    // Idle after the burst: one batch wait at most, then a sleep in poll until the timeout.
    let (sleeps, cpu) = (thread_sleeps()?, thread_cpu()?);
    let idle = endpoint.recv_from(Some(Duration::from_secs(1)))?;
    let (sleeps, cpu) = (
        thread_sleeps()?.saturating_sub(sleeps),
        thread_cpu()?.saturating_sub(cpu),
    );
    ensure!(idle.is_none(), "a datagram arrived with no traffic");
    ensure!(
        sleeps <= 20,
        "an idle receive of 1 s went to sleep {sleeps} times: it napped instead of polling"
    );
    ensure!(
        cpu <= Duration::from_millis(200),
        "an idle receive of 1 s used {cpu:?} of CPU"
    );
    Ok(())
}
