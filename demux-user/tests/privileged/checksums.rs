//! Checksums as the kernel checks them, end to end: frames with a bad IPv4 header checksum, a
//! bad UDP checksum (IPv4 and IPv6) or an IPv6 UDP checksum of 0, sent by `demux-gen` beside
//! good ones, reach neither a demux endpoint (the worker drops them, counted as
//! `dropped_bad_checksum`) nor a kernel socket (the kernel drops them, counted as UDP
//! `InCsumErrors`, or in IP for the header).

use std::{collections::BTreeMap, net::UdpSocket, time::Duration};

use anyhow::{bail, ensure, Context as _};
use demux::{
    client::Endpoint,
    control::{Request, Response},
    testing::testbed::{run, PairSpec, TempDir, VethPair},
};

use crate::daemon::RunningDaemon;

const DEMUX_GEN: &str = env!("CARGO_BIN_EXE_demux-gen");
/// Frames per kind.
const EACH: u64 = 20;
/// Ports: endpoints on one, kernel sockets (nothing steered) on the other.
const ENDPOINT_PORT: u16 = 7001;
const KERNEL_PORT: u16 = 7002;

pub(crate) fn tests() -> Vec<libtest_mimic::Trial> {
    trials![bad_checksums_reach_neither_an_endpoint_nor_a_kernel_socket]
}

/// What is sent to each destination: `--bad-checksum` (none for good frames), the payload
/// length that tells the kind apart on arrival, and whether the kernel accepts it.
const KINDS_V4: [(Option<&str>, usize, bool); 4] = [
    (None, 20, true),
    (Some("ipv4-header"), 21, false),
    (Some("udp"), 22, false),
    // "No checksum": valid over IPv4.
    (Some("udp-zero"), 23, true),
];
const KINDS_V6: [(Option<&str>, usize, bool); 3] = [
    (None, 30, true),
    (Some("udp"), 31, false),
    (Some("udp-zero"), 32, false),
];

pub(crate) fn bad_checksums_reach_neither_an_endpoint_nor_a_kernel_socket() -> anyhow::Result<()> {
    let net = VethPair::new(PairSpec::unique(
        "dmxc",
        &["198.18.0.1/30", "2001:2::1/64"],
        &["198.18.0.2/30", "2001:2::2/64"],
    ))?;
    let dir = TempDir::new("demux-test")?;
    let daemon = RunningDaemon::start(&net, &dir, &[])?;
    let mut endpoints = [
        daemon.endpoint(&format!("198.18.0.2:{ENDPOINT_PORT}"))?,
        daemon.endpoint(&format!("[2001:2::2]:{ENDPOINT_PORT}"))?,
    ];
    let kernel = net.b.run_in(|| {
        let bind = |addr: &str| -> anyhow::Result<UdpSocket> {
            let socket = UdpSocket::bind(addr).with_context(|| format!("binding {addr}"))?;
            socket.set_read_timeout(Some(Duration::from_millis(300)))?;
            Ok(socket)
        };
        Ok([
            bind(&format!("198.18.0.2:{KERNEL_PORT}"))?,
            bind(&format!("[2001:2::2]:{KERNEL_PORT}"))?,
        ])
    })?;
    let before = [net.b.udp_counters(false)?, net.b.udp_counters(true)?];

    for port in [ENDPOINT_PORT, KERNEL_PORT] {
        for (kind, payload, _) in KINDS_V4 {
            generate(
                &net,
                "198.18.0.1:40000",
                &format!("198.18.0.2:{port}"),
                kind,
                payload,
            )?;
        }
        for (kind, payload, _) in KINDS_V6 {
            generate(
                &net,
                "[2001:2::1]:40000",
                &format!("[2001:2::2]:{port}"),
                kind,
                payload,
            )?;
        }
    }

    // What arrived, as payload length → datagrams, per destination.
    let want = |kinds: &[(Option<&str>, usize, bool)]| -> BTreeMap<usize, u64> {
        kinds
            .iter()
            .filter(|(_, _, good)| *good)
            .map(|(_, payload, _)| (*payload, EACH))
            .collect()
    };
    let (want_v4, want_v6) = (want(&KINDS_V4), want(&KINDS_V6));
    for (endpoint, want) in endpoints.iter_mut().zip([&want_v4, &want_v6]) {
        let got = from_endpoint(endpoint)?;
        ensure!(
            got == *want,
            "endpoint {:?} received (payload length → datagrams) {got:?}, want {want:?}",
            endpoint.socket().local_addr()?
        );
    }
    for (socket, want) in kernel.iter().zip([&want_v4, &want_v6]) {
        let got = from_socket(socket);
        ensure!(
            got == *want,
            "kernel socket {:?} received {got:?}, want {want:?}",
            socket.local_addr()?
        );
    }

    let mut client = daemon.client()?;
    let Response::Stats(stats) = client.call(Request::Stats)? else {
        bail!("no stats");
    };
    let bad = |kinds: &[(Option<&str>, usize, bool)]| {
        kinds.iter().filter(|(_, _, good)| !good).count() as u64 * EACH
    };
    ensure!(
        stats.dropped_bad_checksum == bad(&KINDS_V4) + bad(&KINDS_V6),
        "dropped_bad_checksum {} (want {}): {stats:?}",
        stats.dropped_bad_checksum,
        bad(&KINDS_V4) + bad(&KINDS_V6)
    );
    ensure!(
        stats.seen() == stats.delivered() + stats.passed() + stats.dropped(),
        "the accounting does not add up: {stats:?}"
    );

    // The kernel drops the same frames sent to its own sockets: the UDP ones as checksum
    // errors (the bad IPv4 headers never reach UDP), and none of those steered to endpoints.
    let after = [net.b.udp_counters(false)?, net.b.udp_counters(true)?];
    let csum_errors = |i: usize| {
        after[i].get("InCsumErrors").copied().unwrap_or(0)
            - before[i].get("InCsumErrors").copied().unwrap_or(0)
    };
    ensure!(
        (csum_errors(0), csum_errors(1)) == (EACH, 2 * EACH),
        "UDP InCsumErrors rose by {} (IPv4) and {} (IPv6), want {EACH} and {}",
        csum_errors(0),
        csum_errors(1),
        2 * EACH
    );
    Ok(())
}

/// Sends `EACH` frames from `src` to `dst` with demux-gen (AF_PACKET), with the checksum
/// `bad` names broken, if any.
fn generate(
    net: &VethPair,
    src: &str,
    dst: &str,
    bad: Option<&str>,
    payload: usize,
) -> anyhow::Result<()> {
    let mut cmd = net.a.command(DEMUX_GEN);
    cmd.args(["--iface", &net.a_if, "--dst-mac", &net.b_mac])
        .args(["--src", src, "--dst", dst, "--mode", "packet"])
        .args(["--count", &EACH.to_string()])
        .args(["--payload", &payload.to_string(), "--rate", "20000"]);
    if let Some(bad) = bad {
        cmd.args(["--bad-checksum", bad]);
    }
    run(&mut cmd).map(drop)
}

/// Datagrams by payload length, read until nothing comes for half a second.
fn from_endpoint(endpoint: &mut Endpoint) -> anyhow::Result<BTreeMap<usize, u64>> {
    let mut got = BTreeMap::new();
    for _ in 0..10_000 {
        match endpoint.recv_from(Some(Duration::from_millis(500)))? {
            Some(datagram) => *got.entry(datagram.payload.len()).or_default() += 1,
            None => break,
        }
    }
    Ok(got)
}

/// As [`from_endpoint`], from a kernel socket.
fn from_socket(socket: &UdpSocket) -> BTreeMap<usize, u64> {
    let mut got = BTreeMap::new();
    let mut buf = [0u8; 2048];
    for _ in 0..10_000 {
        match socket.recv_from(&mut buf) {
            Ok((n, _)) => *got.entry(n).or_default() += 1,
            Err(_) => break,
        }
    }
    got
}
