//! Large datagrams reach a client endpoint whole: up to what the AF_XDP socket takes through
//! the ring (a record longer than a slot spans slots), and anything longer, or split over
//! several buffers where the socket is bound without `XDP_USE_SG`, through the backing socket
//! (the program passes it as `pass_too_large`), never dropped after the redirect. With
//! `XDP_USE_SG` (Linux 6.6+) every size at MTU 9,000 goes through the ring (`jumbo.rs`).

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use demux::{
    client::Endpoint,
    control::{Request, Response, Stats},
    testing::testbed::{TempDir, VethPair, A_ADDR, B_ADDR},
};

use crate::daemon::RunningDaemon;

pub(crate) fn tests() -> Vec<libtest_mimic::Trial> {
    trials![large_datagrams_reach_a_client_endpoint_whole]
}

/// Datagram `i` of `size` bytes: a pattern that tells datagrams and offsets apart.
fn payload(i: usize, size: usize) -> Vec<u8> {
    (0..size).map(|j| (i * 31 + j * 7) as u8).collect()
}

/// Sends one datagram of each size from namespace A to `port`; returns their payloads.
fn send_sizes(
    net: &VethPair,
    port: u16,
    first: usize,
    sizes: &[usize],
) -> anyhow::Result<Vec<Vec<u8>>> {
    let payloads: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, size)| payload(first + i, *size))
        .collect();
    net.a.run_in(|| {
        let socket = UdpSocket::bind((A_ADDR, 0))?;
        for p in &payloads {
            socket
                .send_to(p, (B_ADDR, port))
                .with_context(|| format!("sending {} bytes", p.len()))?;
        }
        Ok(())
    })?;
    Ok(payloads)
}

/// Receives up to `n` datagrams within five seconds, sorted (ring and backing socket are two
/// paths, and their order between each other is not kept).
pub(super) fn receive(endpoint: &mut Endpoint, n: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if let Some(d) = endpoint.recv_from(Some(left))? {
            got.push(d.payload);
        }
    }
    got.sort();
    Ok(got)
}

fn stats(daemon: &RunningDaemon) -> anyhow::Result<Stats> {
    let Response::Stats(stats) = daemon.client()?.call(Request::Stats)? else {
        bail!("no stats")
    };
    Ok(stats)
}

fn verdict(stats: &Stats, name: &str) -> u64 {
    stats.verdicts.get(name).copied().unwrap_or(0)
}

/// Compares what arrived with what was sent.
fn check(what: &str, mut sent: Vec<Vec<u8>>, got: &[Vec<u8>]) -> anyhow::Result<()> {
    sent.sort();
    let sizes = |v: &[Vec<u8>]| v.iter().map(Vec::len).collect::<Vec<_>>();
    ensure!(
        got == sent,
        "{what}: sent sizes {:?}, received {:?} (or changed bytes)",
        sizes(&sent),
        sizes(got)
    );
    Ok(())
}

pub(crate) fn large_datagrams_reach_a_client_endpoint_whole() -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let daemon = RunningDaemon::start(&net, &dir, &[])?;
    let mut endpoint = daemon.endpoint("0.0.0.0:9700")?;

    // MTU 1,500: the largest unfragmented IPv4 payload (1,472) and smaller through the ring;
    // larger ones leave the sender in fragments, which the kernel reassembles for the backing
    // socket.
    let before = stats(&daemon)?;
    let sent = send_sizes(&net, 9700, 0, &[1472, 1472, 1, 1000, 2000, 8000])?;
    let got = receive(&mut endpoint, sent.len())?;
    let after = stats(&daemon)?;
    check("MTU 1500", sent, &got)?;
    let redirected = verdict(&after, "redirected") - verdict(&before, "redirected");
    ensure!(
        redirected == 4,
        "{redirected} datagrams went through the ring, not the 4 that fit a frame"
    );
    ensure!(after.dropped() == 0, "dropped: {after:?}");

    // MTU 9,000 (the program takes multi-buffer frames, so veth allows it): up to what the
    // socket takes through the ring, records spanning slots; longer frames passed.
    for (ns, iface) in [(&net.b, &net.b_if), (&net.a, &net.a_if)] {
        ns.exec(&["ip", "link", "set", "dev", iface, "mtu", "9000"])
            .with_context(|| format!("MTU 9000 on {iface}"))?;
    }
    let before = stats(&daemon)?;
    let sizes = [2500, 3000, 3700, 3798, 5000, 8972];
    let sent = send_sizes(&net, 9700, 100, &sizes)?;
    let got = receive(&mut endpoint, sent.len())?;
    let after = stats(&daemon)?;
    let delta = |name| verdict(&after, name) - verdict(&before, name);
    let (redirected, too_large) = (delta("redirected"), delta("pass_too_large"));
    check("MTU 9000", sent, &got).with_context(|| {
        format!("redirected {redirected}, passed as too large {too_large}; {after:?}")
    })?;
    // With XDP_USE_SG everything goes through the ring; without, what fits one buffer of a
    // UMEM frame (2,500 and 3,000 at least; 3,700 and 3,798 may come split over two buffers).
    let mut published = after.clone();
    let deadline = Instant::now() + Duration::from_secs(3);
    // The workers publish their sockets' state every 100 ms.
    while published.sockets.iter().any(|s| s.frames == 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        published = stats(&daemon)?;
    }
    let multi_buffer = published.sockets.iter().all(|s| s.frame_limit > 0);
    let expected = if multi_buffer {
        redirected == sizes.len() as u64
    } else {
        redirected >= 2 && too_large >= 2
    };
    ensure!(
        expected && redirected + too_large == sizes.len() as u64,
        "redirected {redirected} and passed as too large {too_large} of {} (sockets bound with \
         XDP_USE_SG: {multi_buffer})",
        sizes.len()
    );
    ensure!(after.dropped() == 0, "dropped: {after:?}");
    println!(
        "  MTU 9000: {redirected} of {} through the ring, {too_large} passed as too large",
        sizes.len()
    );
    Ok(())
}
