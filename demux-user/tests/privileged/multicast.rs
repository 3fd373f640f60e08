//! Multicast as the kernel delivers it: an endpoint that joins a group (`demux recv --join`)
//! makes the host a member while it lives (`ip maddr`) and receives the group's datagrams to
//! its port; a group nobody joined reaches no endpoint; binding a group address does not join
//! by itself.

use std::{
    net::{Ipv4Addr, UdpSocket},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::ensure;
use demux::testing::testbed::{ChildGuard, NetNs, TempDir, VethPair, A_ADDR};
use socket2::{Domain, Socket, Type};

use crate::daemon::RunningDaemon;

pub(crate) fn tests() -> Vec<libtest_mimic::Trial> {
    trials![an_endpoint_that_joins_gets_its_group_and_no_other]
}

const JOINED: Ipv4Addr = Ipv4Addr::new(239, 18, 0, 1);
const NOT_JOINED: Ipv4Addr = Ipv4Addr::new(239, 18, 0, 2);
const PORT: u16 = 9700;

/// Whether namespace `ns` is a member of `group` on `iface` (`ip maddr show dev IFACE`).
fn member(ns: &NetNs, iface: &str, group: Ipv4Addr) -> anyhow::Result<bool> {
    let listed = ns.ip(&["maddr", "show", "dev", iface])?;
    Ok(listed
        .split_whitespace()
        .any(|word| word == group.to_string()))
}

/// Sends `count` datagrams to `group`:PORT from `ns`, out of its interface address `A_ADDR`.
fn send_group(ns: &NetNs, group: Ipv4Addr, tag: &str, count: u32) -> anyhow::Result<()> {
    ns.run_in(|| {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
        socket.set_multicast_if_v4(&A_ADDR.parse()?)?;
        socket.bind(&std::net::SocketAddr::new(A_ADDR.parse()?, 0).into())?;
        let socket = UdpSocket::from(socket);
        for i in 0..count {
            socket.send_to(format!("{tag} #{i}").as_bytes(), (group, PORT))?;
        }
        Ok(())
    })
}

pub(crate) fn an_endpoint_that_joins_gets_its_group_and_no_other() -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let daemon = RunningDaemon::start(&net, &dir, &[])?;
    ensure!(
        !member(&net.b, &net.b_if, JOINED)?,
        "{JOINED} joined before anyone asked"
    );
    let out = dir.join("recv.out");
    let join = format!("{JOINED}%{}", net.b_if);
    let mut recv = ChildGuard::spawn(
        daemon
            .cli(&[
                "recv",
                "udp",
                &format!("0.0.0.0:{PORT}"),
                "--join",
                &join,
                "--format",
                "text",
            ])
            .stdout(std::fs::File::create(&out)?)
            .stderr(Stdio::null()),
    )?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !member(&net.b, &net.b_if, JOINED)? && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(
        member(&net.b, &net.b_if, JOINED)?,
        "the endpoint did not make the host join {JOINED}"
    );
    send_group(&net.a, NOT_JOINED, "not joined", 5)?;
    send_group(&net.a, JOINED, "joined", 5)?;
    let deadline = Instant::now() + Duration::from_secs(3);
    while std::fs::read_to_string(&out)?.lines().count() < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // A moment more for anything that should not come.
    std::thread::sleep(Duration::from_millis(200));
    let lines: Vec<String> = std::fs::read_to_string(&out)?
        .lines()
        .map(str::to_owned)
        .collect();
    let other = lines
        .iter()
        .filter(|l| l.contains(": not joined #"))
        .count();
    let joined = lines.iter().filter(|l| l.contains(": joined #")).count();
    ensure!(
        joined == 5 && other == 0,
        "the joined endpoint got {joined} of its group's 5 and {other} of a group it did not \
         join: {lines:#?}"
    );
    ensure!(
        lines
            .iter()
            .all(|l| l.contains(&format!("-> {JOINED}:{PORT}"))),
        "local addresses: {lines:#?}"
    );
    recv.stop(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(5);
    while member(&net.b, &net.b_if, JOINED)? && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(
        !member(&net.b, &net.b_if, JOINED)?,
        "the host is still a member of {JOINED} after the endpoint left"
    );
    drop(daemon);
    let _ = net;
    Ok(())
}
