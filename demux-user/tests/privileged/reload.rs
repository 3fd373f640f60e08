//! Reload (SIGHUP, `demux reload`): the daemon reads its config file again and applies the
//! difference — endpoints closed and created, limits, interfaces attached and detached — while
//! an endpoint that did not change keeps receiving without a gap and keeps its id and counters;
//! a bad file is refused whole with its line and field; only root may ask; a daemon without a
//! config file says it has none.

use std::{
    net::UdpSocket,
    process::Output,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use demux::{
    control::{EndpointInfo, Request, Response},
    testing::testbed::{enter_netns, TempDir, VethPair, A_ADDR, B_ADDR},
};

use crate::daemon::RunningDaemon;

pub(crate) fn tests() -> Vec<libtest_mimic::Trial> {
    trials![
        reload_applies_the_difference_and_leaves_the_rest_running,
        only_root_may_reload,
        reload_without_a_config_file_says_so,
    ]
}

/// The endpoint that stays in every file, under traffic throughout.
const KEPT: u16 = 7400;
/// The endpoint the second file drops, and the one it adds.
const DROPPED: u16 = 7401;
const ADDED: u16 = 7402;
/// A second interface in the daemon's namespace (a veth pair of its own).
const EXTRA: &str = "rlx0";
const EXTRA_PEER: &str = "rlx1";
/// The steady stream to [`KEPT`]: datagrams per millisecond, and for how long.
const PER_MS: u64 = 4;
const STREAM: Duration = Duration::from_millis(2500);

fn endpoint(port: u16) -> String {
    format!("[[endpoint]]\nprotocol = \"udp\"\nlocal = \"{B_ADDR}:{port}\"\nto = \"count\"\n")
}

/// The file the daemon starts with: no interface of its own (the tests' `--iface` adds the
/// veth), endpoints [`KEPT`] and [`DROPPED`].
fn first_file() -> String {
    format!("interfaces = []\n{}{}", endpoint(KEPT), endpoint(DROPPED))
}

/// The file after: [`KEPT`] unchanged, [`DROPPED`] gone, [`ADDED`] new, interface [`EXTRA`]
/// added, one endpoint per uid.
fn second_file() -> String {
    format!(
        "interfaces = [\"{EXTRA}\"]\n{}{}[limits]\nendpoints_per_uid = 1\n",
        endpoint(KEPT),
        endpoint(ADDED)
    )
}

fn list(daemon: &RunningDaemon) -> anyhow::Result<Vec<EndpointInfo>> {
    let Response::Endpoints { endpoints } = daemon.client()?.call(Request::List)? else {
        bail!("no answer to list")
    };
    Ok(endpoints)
}

fn find(endpoints: &[EndpointInfo], port: u16) -> Option<&EndpointInfo> {
    let local = format!("{B_ADDR}:{port}");
    endpoints.iter().find(|e| e.local == local)
}

/// The ports of the daemon's endpoints, sorted.
fn ports(endpoints: &[EndpointInfo]) -> Vec<String> {
    let mut ports: Vec<String> = endpoints.iter().map(|e| e.local.clone()).collect();
    ports.sort();
    ports
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Whether the program is attached to `iface` in the daemon's namespace (`ip link` shows an
/// `xdp` program on it).
fn attached(net: &VethPair, iface: &str) -> anyhow::Result<bool> {
    Ok(net.b.ip(&["link", "show", iface])?.contains("prog/xdp"))
}

/// Sends `PER_MS` datagrams each millisecond from the `a` side to `B_ADDR:port` for
/// [`STREAM`] (or until `stop`); returns how many.
fn stream(netns: &str, port: u16, stop: &AtomicBool) -> anyhow::Result<u64> {
    enter_netns(netns)?;
    let socket = UdpSocket::bind((A_ADDR, 0)).context("binding the sender")?;
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < STREAM && !stop.load(Ordering::Relaxed) {
        let due = start + Duration::from_micros(sent / PER_MS * 1000);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        socket
            .send_to(b"steady", (B_ADDR, port))
            .with_context(|| format!("sending datagram {sent}"))?;
        sent += 1;
    }
    Ok(sent)
}

pub(crate) fn reload_applies_the_difference_and_leaves_the_rest_running() -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    net.b.ip(&[
        "link", "add", EXTRA, "type", "veth", "peer", "name", EXTRA_PEER,
    ])?;
    net.b.ip(&["link", "set", EXTRA, "up"])?;
    net.b.ip(&["link", "set", EXTRA_PEER, "up"])?;
    let dir = TempDir::new("demux-test")?;
    let file = dir.join("demux.toml");
    std::fs::write(&file, first_file())?;
    let config = file.to_str().context("a UTF-8 temp path")?;
    let mut daemon = RunningDaemon::start(
        &net,
        &dir,
        &["--config", config, "--control-group", "nogroup"],
    )?;
    let before = list(&daemon)?;
    let kept = find(&before, KEPT)
        .context("the configured endpoint is not listed")?
        .clone();
    ensure!(
        find(&before, DROPPED).is_some() && !attached(&net, EXTRA)?,
        "unexpected start: {:?}",
        ports(&before)
    );

    // A steady stream to the endpoint that stays, with the reload in its middle.
    std::fs::write(&file, second_file())?;
    let stop = AtomicBool::new(false);
    let (sent, reloaded) = thread::scope(|scope| {
        let sender = scope.spawn(|| stream(net.a.name(), KEPT, &stop));
        thread::sleep(STREAM / 3);
        let reloaded = daemon.cli(&["reload"]).output();
        if reloaded.as_ref().map_or(true, |o| !o.status.success()) {
            stop.store(true, Ordering::Relaxed);
        }
        let sent = sender
            .join()
            .unwrap_or_else(|_| bail!("the sender panicked"));
        (sent, reloaded)
    });
    let (sent, reloaded) = (sent?, reloaded.context("running demux reload")?);
    let said = String::from_utf8_lossy(&reloaded.stdout).into_owned();
    ensure!(
        reloaded.status.success(),
        "demux reload exited {}: {}{said}",
        reloaded.status,
        stderr(&reloaded)
    );
    println!("demux reload said:\n{said}");
    // Everything sent reaches the endpoint that stayed.
    let deadline = Instant::now() + Duration::from_secs(3);
    let after = loop {
        let after = list(&daemon)?;
        let delivered = find(&after, KEPT).map_or(0, |e| e.delivered + e.via_kernel);
        if delivered >= kept.delivered + sent || Instant::now() > deadline {
            break after;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let now = find(&after, KEPT).context("the unchanged endpoint is gone")?;
    println!(
        "unchanged endpoint under {sent} datagrams: id {} -> {}, delivered {} -> {}, via_kernel \
         {}, redirected {}, dropped {}/{}",
        kept.id,
        now.id,
        kept.delivered,
        now.delivered,
        now.via_kernel,
        now.redirected,
        now.dropped_sink_full,
        now.dropped_sink_error
    );
    ensure!(
        now.id == kept.id,
        "the unchanged endpoint changed id {} -> {}",
        kept.id,
        now.id
    );
    ensure!(
        now.delivered == kept.delivered + sent && now.redirected == now.delivered,
        "the unchanged endpoint got {} of {sent} through XDP during the reload (redirected {}; \
         via the kernel {}): a gap",
        now.delivered - kept.delivered,
        now.redirected,
        now.via_kernel
    );
    ensure!(
        now.via_kernel == 0,
        "{} datagrams reached the unchanged endpoint through the kernel: it was not steered for \
         a while",
        now.via_kernel
    );
    ensure!(
        find(&after, DROPPED).is_none() && find(&after, ADDED).is_some(),
        "endpoints after the reload: {:?} (want {KEPT} and {ADDED})",
        ports(&after)
    );
    for needle in [
        format!("{B_ADDR}:{DROPPED} -> count) closed"),
        format!("{B_ADDR}:{ADDED} -> count) created"),
        format!("interface {EXTRA} attached"),
        "endpoints_per_uid: 1".to_owned(),
    ] {
        ensure!(
            said.contains(&needle),
            "demux reload did not say `{needle}`"
        );
    }
    ensure!(attached(&net, EXTRA)?, "{EXTRA} is not attached");
    let Response::Stats(stats) = daemon.client()?.call(Request::Stats)? else {
        bail!("no answer to stats")
    };
    ensure!(
        stats.sockets.iter().any(|s| s.iface == EXTRA),
        "no AF_XDP socket on {EXTRA}: {:?}",
        stats.sockets
    );
    // The new limit holds: nobody may have one endpoint, not two.
    let bind = |port: u16| {
        daemon
            .nobody_cli(&[
                "bind",
                "udp",
                &format!("{B_ADDR}:{port}"),
                "--to",
                "count",
                "--persistent",
            ])
            .output()
    };
    let first = bind(7500)?;
    ensure!(
        first.status.success(),
        "nobody's first bind: {}",
        stderr(&first)
    );
    let second = bind(7501)?;
    ensure!(
        second.status.code() == Some(7) && stderr(&second).contains("limits.endpoints_per_uid"),
        "nobody's second bind under endpoints_per_uid = 1: exit {:?}: {}",
        second.status.code(),
        stderr(&second)
    );

    // A bad file is refused whole, naming its line and field; nothing changes.
    let listed = ports(&list(&daemon)?);
    for (text, needles) in [
        (
            format!("interfaces = []\nmod = \"skb\"\n{}", endpoint(KEPT)),
            vec!["line 2", "mod"],
        ),
        (
            format!("interfaces = []\nframes = 1000\n{}", endpoint(KEPT)),
            vec!["frames:", "power of two"],
        ),
        (
            format!("interfaces = [\"nosuch0\"]\n{}", endpoint(KEPT)),
            vec!["nosuch0", "does not exist"],
        ),
    ] {
        std::fs::write(&file, &text)?;
        let output = daemon.cli(&["reload"]).output()?;
        let error = stderr(&output);
        ensure!(
            output.status.code() == Some(2)
                && error.contains("nothing changed")
                && needles.iter().all(|n| error.contains(n)),
            "a bad file: exit {:?}: {error} (want 2, naming {needles:?})",
            output.status.code()
        );
        ensure!(
            ports(&list(&daemon)?) == listed && attached(&net, EXTRA)?,
            "a refused reload changed something"
        );
    }

    // SIGHUP, with RELOADING=1 then READY=1: the extra interface goes, the unchanged endpoint
    // stays.
    std::fs::write(&file, first_file())?;
    // What the reloads above said is not what this one says.
    daemon.notify.drain();
    daemon.child.signal(libc::SIGHUP)?;
    daemon
        .notify
        .wait_for(&mut daemon.child, "RELOADING=1", Duration::from_secs(5))?;
    let status = daemon
        .notify
        .wait_for(&mut daemon.child, "READY=1", Duration::from_secs(10))?;
    ensure!(
        status.starts_with("reloaded"),
        "READY=1 after SIGHUP with status {status:?}"
    );
    ensure!(!attached(&net, EXTRA)?, "{EXTRA} is still attached");
    ensure!(attached(&net, &net.b_if)?, "{} was detached", net.b_if);
    let last = list(&daemon)?;
    ensure!(
        find(&last, KEPT).map(|e| e.id) == Some(kept.id)
            && find(&last, DROPPED).is_some()
            && find(&last, ADDED).is_none(),
        "endpoints after SIGHUP: {:?}",
        ports(&last)
    );
    drop(daemon);
    Ok(())
}

pub(crate) fn only_root_may_reload() -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let file = dir.join("demux.toml");
    std::fs::write(&file, first_file())?;
    let config = file.to_str().context("a UTF-8 temp path")?;
    let daemon = RunningDaemon::start(
        &net,
        &dir,
        &["--config", config, "--control-group", "nogroup"],
    )?;
    let before = ports(&list(&daemon)?);
    std::fs::write(&file, format!("interfaces = []\n{}", endpoint(ADDED)))?;
    let output = daemon.nobody_cli(&["reload"]).output()?;
    let error = stderr(&output);
    ensure!(
        output.status.code() == Some(4) && error.contains("only root"),
        "nobody's reload: exit {:?}: {error} (want 4, permission denied)",
        output.status.code()
    );
    ensure!(
        ports(&list(&daemon)?) == before,
        "nobody's reload changed the endpoints: {before:?} -> {:?}",
        ports(&list(&daemon)?)
    );
    // Root's is taken, so the refusal above was nobody's alone.
    let output = daemon.cli(&["reload"]).output()?;
    ensure!(
        output.status.success(),
        "root's reload: {}",
        stderr(&output)
    );
    ensure!(
        ports(&list(&daemon)?) == [format!("{B_ADDR}:{ADDED}")],
        "root's reload was not applied"
    );
    drop(daemon);
    Ok(())
}

pub(crate) fn reload_without_a_config_file_says_so() -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let daemon = RunningDaemon::start(&net, &dir, &[])?;
    let output = daemon.cli(&["reload"]).output()?;
    let error = stderr(&output);
    ensure!(
        output.status.code() == Some(2)
            && error.contains("without --config")
            && error.contains("no file to read again"),
        "reload without a config file: exit {:?}: {error}",
        output.status.code()
    );
    drop(daemon);
    Ok(())
}
