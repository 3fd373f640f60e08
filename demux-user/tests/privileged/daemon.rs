//! The `demux daemon` binary end to end, in namespaces of its own: it attaches to a veth,
//! counts the packets sent to it, and detaches cleanly on SIGTERM.

use std::{
    io::{BufRead, BufReader},
    net::UdpSocket,
    process::Stdio,
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};

use crate::netns::{ChildGuard, NetNs, TempDir, VethPair, A_ADDR, B_ADDR};

pub const DAEMON: &str = env!("CARGO_BIN_EXE_demux");
const DATAGRAMS: u64 = 5;

pub fn counts_packets_on_a_veth_and_detaches() -> anyhow::Result<()> {
    let net = VethPair::new()?;
    let dir = TempDir::new()?;
    let control = dir.join("control.sock");
    let mut daemon = ChildGuard(
        net.b
            .command(DAEMON)
            .args([
                "daemon",
                "--iface",
                &net.b_if,
                "--stats-interval",
                "100ms",
                "--control",
            ])
            .arg(&control)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the daemon")?,
    );
    let log = lines_of(daemon.0.stderr.take().expect("piped"));
    wait_for(&log, Duration::from_secs(10), |line| {
        line.contains("attached")
    })?;
    ensure!(
        net.b.ip(&["link", "show", &net.b_if])?.contains("xdp"),
        "no XDP program on {} after `attached`",
        net.b_if
    );

    send_udp(&net.a, DATAGRAMS)?;
    wait_for(&log, Duration::from_secs(5), |line| {
        line.contains("verdicts:") && counter(line, "pass_no_match") >= Some(DATAGRAMS)
    })?;

    // SAFETY: signalling the child this test started, by its PID.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut daemon, Duration::from_secs(5))?;
    ensure!(
        status.success(),
        "the daemon exited with {status} after SIGTERM"
    );
    let rest: Vec<String> = log.try_iter().collect();
    ensure!(
        rest.iter().any(|l| l.contains("detached")),
        "no `detached` line: {rest:#?}"
    );
    let last = rest
        .iter()
        .rev()
        .find(|l| l.contains("verdicts:"))
        .with_context(|| format!("no verdicts line after shutdown: {rest:#?}"))?;
    ensure!(
        counter(last, "pass_no_match") == Some(DATAGRAMS),
        "expected exactly {DATAGRAMS} UDP packets counted as no match: {last}"
    );
    ensure!(
        !net.b.ip(&["link", "show", &net.b_if])?.contains("xdp"),
        "the XDP program is still attached to {} after SIGTERM",
        net.b_if
    );
    ensure!(
        !control.exists(),
        "the control socket is still there after SIGTERM"
    );
    Ok(())
}

pub fn unknown_interface_is_one_clear_line() -> anyhow::Result<()> {
    let ns = NetNs::new(format!("dmxt-{}-lone", std::process::id()))?;
    let dir = TempDir::new()?;
    let output = ns
        .command(DAEMON)
        .args(["daemon", "--iface", "dmx-missing", "--control"])
        .arg(dir.join("control.sock"))
        .output()
        .context("running the daemon")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(1),
        "exit {} (want 1): {stderr}",
        output.status
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("demux: error:"))
        .collect();
    ensure!(
        errors == ["demux: error: interface `dmx-missing` does not exist (list interfaces with `ip link`)"],
        "unexpected error output: {stderr}"
    );
    Ok(())
}

/// Sends `count` UDP datagrams from namespace `ns` (198.18.0.1) to 198.18.0.2:9.
pub fn send_udp(ns: &NetNs, count: u64) -> anyhow::Result<()> {
    thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<()> {
                ns.enter_thread()?;
                let socket = UdpSocket::bind((A_ADDR, 0)).context("binding the sender")?;
                for _ in 0..count {
                    socket
                        .send_to(b"demux test", (B_ADDR, 9))
                        .context("sending")?;
                }
                Ok(())
            })
            .join()
            .expect("sender thread panicked")
    })
}

/// The lines a child writes, as a channel fed by a reader thread.
pub fn lines_of(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits up to `limit` for a line that satisfies `want`.
pub fn wait_for(
    log: &Receiver<String>,
    limit: Duration,
    want: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match log.recv_timeout(left) {
            Ok(line) if want(&line) => return Ok(line),
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    bail!("the expected line did not appear within {limit:?}; the daemon said: {seen:#?}")
}

pub fn wait_exit(
    child: &mut ChildGuard,
    limit: Duration,
) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.0.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!("the daemon did not exit within {limit:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The value of `name=N` in a verdicts line.
fn counter(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
        .and_then(|n| n.parse().ok())
}
