//! Only what is addressed to this host is steered, end to end: the daemon on a veth, an
//! endpoint on `0.0.0.0:9100`, and datagrams from the peer namespace to 198.18.0.6, which the
//! peer reaches through the veth at the daemon side's MAC (a route and a static neighbour) but
//! which is no address of the daemon's namespace. They pass (`pass_not_local`) and the kernel
//! drops them. After `ip addr add 198.18.0.6/32` the daemon's local-address follower writes the
//! address into `LOCAL_ADDRS` and the datagrams are steered within a second; after
//! `ip addr del` they pass again.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure};
use demux::{
    client::Endpoint,
    control::{client::Client, Request, Response},
    testing::testbed::{TempDir, VethPair, A_ADDR},
};

use crate::daemon::RunningDaemon;

pub(crate) fn tests() -> Vec<libtest_mimic::Trial> {
    trials![the_follower_steers_an_address_once_it_is_local_and_not_after]
}

const EXTRA: &str = "198.18.0.6";
const PORT: u16 = 9100;
const BATCH: u64 = 10;
/// How long the follower may take to see an address change.
const FOLLOW_LIMIT: Duration = Duration::from_secs(1);

fn verdict(client: &mut Client, name: &str) -> anyhow::Result<u64> {
    let Response::Stats(stats) = client.call(Request::Stats)? else {
        bail!("no stats answer");
    };
    Ok(stats.verdicts.get(name).copied().unwrap_or(0))
}

/// Sends `count` datagrams from namespace `a` to 198.18.0.6:9100.
fn send(net: &VethPair, count: u64) -> anyhow::Result<()> {
    net.a.run_in(|| {
        let socket = std::net::UdpSocket::bind((A_ADDR, 0))?;
        for i in 0..count {
            socket.send_to(format!("to {EXTRA} #{i}").as_bytes(), (EXTRA, PORT))?;
        }
        Ok(())
    })
}

/// Datagrams the endpoint receives until 200 ms pass without one (at most 1,000).
fn drain(endpoint: &mut Endpoint) -> anyhow::Result<u64> {
    let mut n = 0;
    while n < 1_000
        && endpoint
            .recv_from(Some(Duration::from_millis(200)))?
            .is_some()
    {
        n += 1;
    }
    Ok(n)
}

/// Sends one datagram every 20 ms until verdict `name` moves, within [`FOLLOW_LIMIT`] (plus
/// a little for the sends themselves); how long it took.
fn until_counted(net: &VethPair, client: &mut Client, name: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let before = verdict(client, name)?;
    while start.elapsed() < FOLLOW_LIMIT + Duration::from_millis(500) {
        send(net, 1)?;
        thread::sleep(Duration::from_millis(20));
        if verdict(client, name)? > before {
            return Ok(start.elapsed());
        }
    }
    bail!("{name} did not move within {FOLLOW_LIMIT:?} of the address change")
}

pub(crate) fn the_follower_steers_an_address_once_it_is_local_and_not_after() -> anyhow::Result<()>
{
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let daemon = RunningDaemon::start(&net, &dir, &[])?;
    let mut client = daemon.client()?;
    let mut endpoint = daemon.endpoint(&format!("0.0.0.0:{PORT}"))?;
    net.a
        .ip(&["route", "add", &format!("{EXTRA}/32"), "dev", &net.a_if])?;
    net.a.ip(&[
        "neigh",
        "replace",
        EXTRA,
        "lladdr",
        &net.b_mac,
        "dev",
        &net.a_if,
        "nud",
        "permanent",
    ])?;

    // Not local: passed and counted, and the kernel (no forwarding) delivers it to nobody.
    let not_local = verdict(&mut client, "pass_not_local")?;
    let redirected = verdict(&mut client, "redirected")?;
    send(&net, BATCH)?;
    ensure!(drain(&mut endpoint)? == 0, "a datagram to {EXTRA} arrived");
    ensure!(
        verdict(&mut client, "pass_not_local")? - not_local == BATCH,
        "pass_not_local moved by {}, not {BATCH}",
        verdict(&mut client, "pass_not_local")? - not_local
    );
    ensure!(verdict(&mut client, "redirected")? == redirected);

    // Local: steered within a second of `ip addr add`, every datagram through the ring.
    net.b
        .ip(&["addr", "add", &format!("{EXTRA}/32"), "dev", &net.b_if])?;
    let took = until_counted(&net, &mut client, "redirected")?;
    ensure!(took <= FOLLOW_LIMIT, "steered only after {took:?}");
    println!("  local: {EXTRA} steered {took:?} after `ip addr add`");
    drain(&mut endpoint)?;
    let redirected = verdict(&mut client, "redirected")?;
    let via_kernel = endpoint.via_kernel();
    send(&net, BATCH)?;
    let got = drain(&mut endpoint)?;
    ensure!(got == BATCH, "the endpoint received {got} of {BATCH}");
    ensure!(
        verdict(&mut client, "redirected")? - redirected == BATCH,
        "not every datagram was steered"
    );
    ensure!(
        endpoint.via_kernel() == via_kernel,
        "datagrams came through the backing socket, not the ring"
    );

    // Gone again: passed within a second of `ip addr del`.
    net.b
        .ip(&["addr", "del", &format!("{EXTRA}/32"), "dev", &net.b_if])?;
    let took = until_counted(&net, &mut client, "pass_not_local")?;
    ensure!(took <= FOLLOW_LIMIT, "passed only after {took:?}");
    println!("  local: {EXTRA} passed again {took:?} after `ip addr del`");
    drain(&mut endpoint)?;
    let (not_local, redirected) = (
        verdict(&mut client, "pass_not_local")?,
        verdict(&mut client, "redirected")?,
    );
    send(&net, BATCH)?;
    ensure!(drain(&mut endpoint)? == 0, "a datagram arrived after del");
    ensure!(verdict(&mut client, "pass_not_local")? - not_local == BATCH);
    ensure!(verdict(&mut client, "redirected")? == redirected);
    let log: Vec<String> = daemon.log.try_iter().collect();
    ensure!(
        log.iter().any(|l| l.contains("local addresses:")),
        "no `local addresses:` line: {log:#?}"
    );
    Ok(())
}
