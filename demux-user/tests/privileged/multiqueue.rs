//! Multi-queue: the daemon opens an AF_XDP socket on every rx queue of the interface it
//! attaches to, and a redirect reaches only the socket of the queue the packet arrived on. On a
//! veth with 2 rx queues, datagrams of several flows arrive on both queues (the sender's
//! kernel picks a tx queue per socket, and veth hands a frame to the peer's rx queue of the same
//! number), and every one of them must reach the endpoint through XDP: none passed for want of
//! a socket on its queue.

use std::{collections::BTreeMap, net::UdpSocket, time::Duration};

use anyhow::{bail, ensure, Context as _};
use demux::{
    control::{Request, Response},
    testing::testbed::{PairSpec, TempDir, VethPair, A_ADDR, B_ADDR},
};

use crate::daemon::RunningDaemon;

const PORT: u16 = 7004;
/// Sending sockets (flows), each on its own source port and so, likely, its own tx queue.
const FLOWS: u16 = 16;
const EACH: u64 = 25;

pub(crate) fn tests() -> Vec<libtest_mimic::Trial> {
    trials![both_rx_queues_of_a_veth_are_served]
}

pub(crate) fn both_rx_queues_of_a_veth_are_served() -> anyhow::Result<()> {
    let net = VethPair::new(PairSpec {
        queues: 2,
        ..PairSpec::unique(
            "dmxq",
            &[&format!("{A_ADDR}/30")],
            &[&format!("{B_ADDR}/30")],
        )
    })?;
    let rx_queues = net
        .b
        .command("ls")
        .arg(format!("/sys/class/net/{}/queues", net.b_if))
        .output()?;
    let rx_queues = String::from_utf8_lossy(&rx_queues.stdout);
    ensure!(
        rx_queues.contains("rx-0") && rx_queues.contains("rx-1"),
        "the veth has not 2 rx queues: {rx_queues}"
    );
    let dir = TempDir::new("demux-test")?;
    let daemon = RunningDaemon::start(&net, &dir, &[])?;
    let mut endpoint = daemon.endpoint(&format!("{B_ADDR}:{PORT}"))?;

    let sent = net.a.run_in(|| {
        let mut sent = 0u64;
        for flow in 0..FLOWS {
            let socket = UdpSocket::bind((A_ADDR, 41000 + flow)).context("binding a sender")?;
            for _ in 0..EACH {
                socket.send_to(b"multi-queue", (B_ADDR, PORT))?;
                sent += 1;
            }
        }
        Ok(sent)
    })?;

    let mut received = 0u64;
    while received < sent {
        match endpoint.recv_from(Some(Duration::from_secs(2)))? {
            Some(_) => received += 1,
            None => break,
        }
    }
    ensure!(received == sent, "received {received} of {sent} datagrams");

    // Where they arrived: veth counts XDP runs per rx queue.
    let ethtool = net.b.command("ethtool").args(["-S", &net.b_if]).output()?;
    let ethtool = String::from_utf8_lossy(&ethtool.stdout);
    let per_queue: BTreeMap<u32, u64> = (0..2)
        .map(|queue| {
            let name = format!("rx_queue_{queue}_xdp_packets:");
            let count = ethtool
                .lines()
                .find_map(|line| line.trim().strip_prefix(&name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            (queue, count)
        })
        .collect();
    ensure!(
        per_queue.values().all(|&n| n > 0),
        "the datagrams did not arrive on both rx queues (XDP runs per queue {per_queue:?}); \
         ethtool -S: {ethtool}"
    );

    let mut client = daemon.client()?;
    let Response::Stats(stats) = client.call(Request::Stats)? else {
        bail!("no stats");
    };
    let verdict = |name: &str| stats.verdicts.get(name).copied().unwrap_or(0);
    ensure!(
        verdict("redirected") >= sent && verdict("pass_no_socket") == 0,
        "not every datagram was steered to its queue's socket: {:?}",
        stats.verdicts
    );
    let queues: Vec<u32> = stats.sockets.iter().map(|s| s.queue).collect();
    ensure!(
        queues.contains(&0) && queues.contains(&1),
        "the daemon has no socket on each queue: {queues:?}"
    );
    println!(
        "  {sent} datagrams over {FLOWS} flows, XDP runs per rx queue {per_queue:?}, all \
         delivered"
    );
    Ok(())
}
