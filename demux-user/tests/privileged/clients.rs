//! Clients on shared-memory rings: a client process receives a burst through the daemon with
//! every datagram accounted for; a client killed mid-stream frees its endpoint and stalls
//! nothing; the library's blocking, batch and async receives.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::Duration,
};

use anyhow::{bail, ensure, Context as _};
use demux::{
    binding::Protocol,
    client::Endpoint,
    control::{Request, Response},
};

use demux::testing::testbed::{ChildGuard, TempDir, VethPair, B_ADDR};

use crate::{
    daemon::{RunningDaemon, DAEMON},
    endpoints::{send, settle},
};

pub(crate) fn tests() -> Vec<libtest_mimic::Trial> {
    trials![
        a_client_process_receives_a_burst_with_every_datagram_accounted,
        a_killed_client_frees_its_endpoint_and_stalls_nothing,
        the_library_receives_blocking_batch_and_async,
    ]
}

const BURST: u64 = 2000;

pub(crate) fn a_client_process_receives_a_burst_with_every_datagram_accounted() -> anyhow::Result<()>
{
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let daemon = RunningDaemon::start(&net, &dir, &[])?;
    let mut recv = ChildGuard::spawn(
        std::process::Command::new(DAEMON)
            .args([
                "recv",
                "udp",
                &format!("{B_ADDR}:9000"),
                "--count",
                &BURST.to_string(),
            ])
            .args(["--timeout", "20", "--format", "json", "--control"])
            .arg(&daemon.control)
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
        std::process::Command::new(DAEMON)
            .args([
                "recv",
                "udp",
                &format!("{B_ADDR}:9000"),
                "--format",
                "hex",
                "--control",
            ])
            .arg(&daemon.control)
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
    let mut endpoint = Endpoint::bind(&daemon.control, Protocol::Udp, &format!("{B_ADDR}:9000"))?;
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
    let mut endpoint = Endpoint::bind(&daemon.control, Protocol::Udp, "0.0.0.0:9500")?;
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
