//! The daemon as a user runs it, in namespaces of its own: endpoints bound over the control
//! socket receive exactly the traffic the kernel's precedence gives them, unsteered traffic
//! still reaches kernel sockets, a SIGKILLed daemon leaves the host's networking working,
//! refused requests and config files change nothing, another uid binds nothing over root's
//! wildcard, and a user is held to the limits.

use std::{
    net::UdpSocket,
    os::unix::net::UnixDatagram,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use demux::{
    control::{client::Client, BindRequest, Request, Response, SinkSpec},
    record,
    testing::testbed::{ChildGuard, NetNs, TempDir, VethPair, A_ADDR, B_ADDR},
};

use crate::daemon::{lines_of, RunningDaemon, DAEMON};

pub(crate) fn tests() -> Vec<libtest_mimic::Trial> {
    trials![
        precedence_end_to_end_and_the_kernel_keeps_the_rest,
        sigkill_falls_back_to_the_kernel_and_a_restart_is_clean,
        refused_requests_change_nothing,
        another_uid_takes_nothing_from_roots_wildcard,
        the_daemon_opens_no_sink_for_a_caller,
        a_user_sees_only_their_own_endpoints_and_an_endless_line_is_cut_off,
        a_bad_config_file_is_refused_by_line,
        a_user_is_held_to_the_limits_while_root_is_served,
    ]
}

fn bind(
    client: &mut Client,
    local: &str,
    connect: Option<&str>,
    group: Option<&str>,
    to: SinkSpec,
) -> anyhow::Result<u32> {
    bind_v6only(client, local, connect, group, to, false)
}

fn bind_v6only(
    client: &mut Client,
    local: &str,
    connect: Option<&str>,
    group: Option<&str>,
    to: SinkSpec,
    v6only: bool,
) -> anyhow::Result<u32> {
    let request = Request::Bind(BindRequest {
        connect: connect.map(Into::into),
        group: group.map(Into::into),
        v6only,
        ..BindRequest::udp(local, to)
    });
    match client.call(request)? {
        Response::Bound { id } => Ok(id),
        other => bail!("bind {local}: {other:?}"),
    }
}

/// A Unix datagram socket the daemon delivers to, and what it has received.
struct SinkSocket {
    socket: UnixDatagram,
    path: PathBuf,
    got: Vec<demux::client::Datagram>,
}

impl SinkSocket {
    fn new(dir: &TempDir, name: &str) -> anyhow::Result<Self> {
        let path = dir.join(name);
        let socket = UnixDatagram::bind(&path)?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket,
            path,
            got: Vec::new(),
        })
    }

    fn spec(&self) -> SinkSpec {
        SinkSpec::Unix(self.path.clone())
    }

    fn drain(&mut self) -> anyhow::Result<()> {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            self.got.push(record::decode(&buf[..n])?.into());
        }
        Ok(())
    }
}

/// A kernel UDP socket bound inside `ns`.
pub(crate) fn kernel_socket(ns: &NetNs, port: u16) -> anyhow::Result<UdpSocket> {
    ns.run_in(|| {
        let socket = UdpSocket::bind((B_ADDR, port))?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    })
}

fn drain_kernel(socket: &UdpSocket) -> u64 {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while socket.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

/// Sends `count` datagrams from 198.18.0.1:`src_port` (namespace `a`) to 198.18.0.2:`dst_port`.
pub(crate) fn send(ns: &NetNs, src_port: u16, dst_port: u16, count: u64) -> anyhow::Result<()> {
    ns.run_in(|| {
        let socket = UdpSocket::bind((A_ADDR, src_port))?;
        for i in 0..count {
            socket.send_to(
                format!("{src_port}->{dst_port} #{i}").as_bytes(),
                (B_ADDR, dst_port),
            )?;
        }
        Ok(())
    })
}

/// Polls `done` until it holds or two seconds pass.
pub(crate) fn settle(mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !done()? {
        if Instant::now() > deadline {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

pub(crate) fn precedence_end_to_end_and_the_kernel_keeps_the_rest() -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let daemon = RunningDaemon::start(&net, &dir, &["--metrics", "127.0.0.1:9464"])?;
    let mut client = daemon.client()?;
    let mut sinks: Vec<SinkSocket> = ["wild", "bound", "connected", "wild2", "prefix", "g1", "g2"]
        .iter()
        .map(|name| SinkSocket::new(&dir, name))
        .collect::<Result<_, _>>()?;
    bind(&mut client, "0.0.0.0:9000", None, None, sinks[0].spec())?;
    bind(
        &mut client,
        &format!("{B_ADDR}:9000"),
        None,
        None,
        sinks[1].spec(),
    )?;
    bind(
        &mut client,
        &format!("{B_ADDR}:9000"),
        Some(&format!("{A_ADDR}:40001")),
        None,
        sinks[2].spec(),
    )?;
    bind(&mut client, "0.0.0.0:9100", None, None, sinks[3].spec())?;
    bind(
        &mut client,
        "198.18.0.0/15:9100",
        None,
        None,
        sinks[4].spec(),
    )?;
    bind(
        &mut client,
        &format!("{B_ADDR}:9200"),
        None,
        Some("g"),
        sinks[5].spec(),
    )?;
    bind(
        &mut client,
        &format!("{B_ADDR}:9200"),
        None,
        Some("g"),
        sinks[6].spec(),
    )?;
    let kernel = kernel_socket(&net.b, 9001)?;
    // Dual stack, with IPv4 packets: an IPv4 wildcard beats an IPv6 one, an IPv6 wildcard
    // receives IPv4 unless v6only; and a pcap sink records whole frames.
    let mut dual: Vec<SinkSocket> = ["v4", "v6", "dual", "v6only"]
        .iter()
        .map(|name| SinkSocket::new(&dir, name))
        .collect::<Result<_, _>>()?;
    bind(&mut client, "0.0.0.0:9300", None, None, dual[0].spec())?;
    bind(&mut client, "[::]:9300", None, None, dual[1].spec())?;
    bind(&mut client, "[::]:9301", None, None, dual[2].spec())?;
    bind_v6only(&mut client, "[::]:9302", None, None, dual[3].spec(), true)?;
    let pcap = dir.join("capture.pcap");
    bind(
        &mut client,
        "0.0.0.0:9400",
        None,
        None,
        SinkSpec::Pcap(pcap.clone()),
    )?;
    let kernel_v6only = kernel_socket(&net.b, 9302)?;

    send(&net.a, 40001, 9000, 5)?; // connected beats bound and wildcard
    send(&net.a, 40002, 9000, 5)?; // bound beats wildcard
    send(&net.a, 40002, 9100, 5)?; // prefix beats wildcard
    send(&net.a, 40002, 9001, 5)?; // no binding: the kernel's socket

    // Group: each flow sticks to one member. The flow hash key is new at every start, so one
    // member may get most flows: drain flow by flow, or its socket's queue
    // (net.unix.max_dgram_qlen, 10) would overflow.
    for (flows, port) in (1..).zip(41000..41010) {
        send(&net.a, port, 9200, 2)?;
        settle(|| {
            for sink in &mut sinks[5..] {
                sink.drain()?;
            }
            Ok(sinks[5].got.len() + sinks[6].got.len() >= 2 * flows)
        })?;
    }
    send(&net.a, 40003, 9300, 3)?; // IPv4 wildcard beats the IPv6 one
    send(&net.a, 40003, 9301, 3)?; // a dual-stack IPv6 wildcard receives IPv4
    send(&net.a, 40003, 9302, 3)?; // v6only does not: the kernel's socket
    send(&net.a, 40003, 9400, 4)?; // into the pcap file
    let mut kernel_got = 0;
    settle(|| {
        for sink in sinks.iter_mut() {
            sink.drain()?;
        }
        kernel_got += drain_kernel(&kernel);
        Ok(sinks.iter().map(|s| s.got.len()).sum::<usize>() == 35 && kernel_got == 5)
    })?;

    let counts: Vec<usize> = sinks.iter().map(|s| s.got.len()).collect();
    ensure!(
        counts[..5] == [0, 5, 5, 0, 5],
        "wild, bound, connected, wild2, prefix got {counts:?}"
    );
    ensure!(
        counts[5] + counts[6] == 20,
        "the group got {} of 20",
        counts[5] + counts[6]
    );
    for sink in &sinks[5..] {
        for d in &sink.got {
            let other = if sink.path == sinks[5].path {
                &sinks[6]
            } else {
                &sinks[5]
            };
            ensure!(
                other.got.iter().all(|o| o.peer != d.peer),
                "flow {} reached both group members",
                d.peer
            );
        }
    }
    ensure!(
        sinks[2].got.iter().all(|d| d.peer.port() == 40001),
        "the connected endpoint got another flow"
    );
    ensure!(
        kernel_got == 5,
        "the kernel socket on 9001 got {kernel_got} of 5"
    );
    let mut v6only_kernel = 0;
    settle(|| {
        for sink in dual.iter_mut() {
            sink.drain()?;
        }
        v6only_kernel += drain_kernel(&kernel_v6only);
        Ok(v6only_kernel == 3 && dual.iter().map(|s| s.got.len()).sum::<usize>() == 6)
    })?;
    let dual_counts: Vec<usize> = dual.iter().map(|s| s.got.len()).collect();
    ensure!(
        dual_counts == [3, 0, 3, 0],
        "v4, v6, dual, v6only got {dual_counts:?}"
    );
    ensure!(
        v6only_kernel == 3,
        "the kernel socket behind v6only got {v6only_kernel} of 3"
    );

    // The pcap sink counts a datagram once written, which may come after the other sinks had
    // theirs: wait (bounded) for the daemon's count to settle before checking it.
    let mut stats = None;
    settle(|| {
        let Response::Stats(now) = client.call(Request::Stats)? else {
            bail!("no stats")
        };
        let done = now.delivered() >= 45;
        stats = Some(now);
        Ok(done)
    })?;
    let stats = stats.context("stats were read")?;
    ensure!(
        stats.delivered() == 45 && stats.dropped() == 0,
        "{}",
        stats_line(&stats)
    );
    ensure!(
        stats.seen() == stats.delivered() + stats.passed() + stats.dropped(),
        "{}",
        stats_line(&stats)
    );
    ensure!(stats.passed() >= 5, "{}", stats_line(&stats));

    // The same figures over OpenMetrics, from inside the daemon's namespace.
    let metrics = net.b.run_in(|| {
        use std::io::{Read, Write};
        let mut http = std::net::TcpStream::connect("127.0.0.1:9464")?;
        http.write_all(b"GET /metrics HTTP/1.1\r\nHost: demux\r\n\r\n")?;
        let mut body = String::new();
        http.read_to_string(&mut body)?;
        Ok(body)
    })?;
    ensure!(
        metrics.contains("demux_verdicts_total{verdict=\"redirected\"} 45"),
        "metrics: {metrics}"
    );

    // Closing the connection closes its endpoints (none was persistent), pcap flushed.
    drop(client);
    let mut other = daemon.client()?;
    let mut left = usize::MAX;
    settle(|| {
        let Response::Endpoints { endpoints } = other.call(Request::List)? else {
            bail!("no list")
        };
        left = endpoints.len();
        Ok(left == 0)
    })?;
    ensure!(left == 0, "{left} endpoints outlived their connection");
    let mut reader = pcap_file::pcap::PcapReader::new(std::fs::File::open(&pcap)?)?;
    let mut frames = 0;
    while let Some(packet) = reader.next_packet() {
        ensure!(
            packet?.data.len() >= 14 + 20 + 8,
            "a truncated frame in the pcap"
        );
        frames += 1;
    }
    ensure!(frames == 4, "the pcap file holds {frames} of 4 frames");
    drop(daemon);
    Ok(())
}

fn stats_line(stats: &demux::control::Stats) -> String {
    format!(
        "seen {} delivered {} passed {} dropped {}: {:?}",
        stats.seen(),
        stats.delivered(),
        stats.passed(),
        stats.dropped(),
        stats.verdicts
    )
}

pub(crate) fn sigkill_falls_back_to_the_kernel_and_a_restart_is_clean() -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let steered_kernel = kernel_socket(&net.b, 9000)?;
    let other_kernel = kernel_socket(&net.b, 9001)?;
    let mut sink = SinkSocket::new(&dir, "s")?;
    let mut daemon = RunningDaemon::start(&net, &dir, &[])?;
    let mut client = daemon.client()?;
    bind(&mut client, "0.0.0.0:9000", None, None, sink.spec())?;

    send(&net.a, 40000, 9000, 5)?;
    send(&net.a, 40000, 9001, 5)?;
    settle(|| sink.drain().map(|()| sink.got.len() == 5))?;
    let (before_steered, before_other) =
        (drain_kernel(&steered_kernel), drain_kernel(&other_kernel));
    ensure!(
        sink.got.len() == 5 && before_steered == 0,
        "steered: sink {} kernel {before_steered}",
        sink.got.len()
    );

    daemon.child.signal(libc::SIGKILL)?;
    daemon.child.wait_exit(Duration::from_secs(5))?;
    send(&net.a, 40000, 9000, 5)?;
    send(&net.a, 40000, 9001, 5)?;
    let (mut after_steered, mut after_other) = (0, 0);
    settle(|| {
        after_steered += drain_kernel(&steered_kernel);
        after_other += drain_kernel(&other_kernel);
        Ok(after_steered == 5 && before_other + after_other == 10)
    })?;
    ensure!(
        after_steered == 5,
        "after SIGKILL the kernel socket on 9000 got {after_steered} of 5"
    );
    ensure!(
        before_other + after_other == 10,
        "the unsteered port got {} of 10",
        before_other + after_other
    );

    // A new daemon attaches again and replaces the stale control socket.
    let daemon = RunningDaemon::start(&net, &dir, &[])?;
    let mut client = daemon.client()?;
    bind(&mut client, "0.0.0.0:9000", None, None, sink.spec())?;
    send(&net.a, 40000, 9000, 3)?;
    settle(|| sink.drain().map(|()| sink.got.len() == 8))?;
    ensure!(
        sink.got.len() == 8,
        "after the restart the sink got {} of 3",
        sink.got.len() - 5
    );
    drop(daemon);
    Ok(())
}

pub(crate) fn refused_requests_change_nothing() -> anyhow::Result<()> {
    let (_net, _dir, daemon) = daemon_for_nobody()?;
    let mut root = daemon.client()?;
    let held = bind(
        &mut root,
        &format!("{B_ADDR}:9000"),
        None,
        None,
        SinkSpec::Count,
    )?;
    // Each refusal has its own exit status (`demux --help`), from the wire's error code.
    let nobody = |args: &[&str], status: i32| -> anyhow::Result<String> {
        let (code, stderr) = nobody_runs(&daemon, args)?;
        ensure!(
            code == Some(status),
            "{args:?} as nobody exited {code:?}, not {status}: {stderr}"
        );
        Ok(stderr)
    };
    let error = nobody(&["bind", "udp", &format!("{B_ADDR}:80"), "--persistent"], 4)?;
    ensure!(error.contains("below 1024"), "privileged port: {error}");
    let error = nobody(
        &["bind", "udp", &format!("{B_ADDR}:9000"), "--persistent"],
        5,
    )?;
    ensure!(
        error.contains(&format!("held by endpoint {held}")),
        "duplicate: {error}"
    );
    let error = nobody(&["close", &held.to_string()], 4)?;
    ensure!(error.contains("belongs to uid 0"), "foreign close: {error}");
    let error = nobody(&["close", "999"], 6)?;
    ensure!(
        error.contains("does not exist"),
        "no such endpoint: {error}"
    );
    // Refused before connecting: the daemon never sees it.
    let error = nobody(&["bind", "udp", "300.1.1.1:5"], 2)?;
    ensure!(
        error.contains("local address `300.1.1.1:5`")
            && error.matches("local address").count() == 1,
        "invalid address: {error}"
    );

    // Malformed and mismatched requests get an error line with a code; the connection stays
    // usable.
    let mut raw = std::os::unix::net::UnixStream::connect(&daemon.control)?;
    let mut reader = std::io::BufReader::new(raw.try_clone()?);
    for (line, code, expect) in [
        ("this is not json\n", "invalid_argument", "request:"),
        ("{\"version\":99,\"op\":\"list\"}\n", "version_mismatch", "upgrade the daemon"),
        ("{\"version\":1,\"op\":\"list\"}\n", "version_mismatch", "upgrade the client"),
        ("{\"version\":2,\"op\":\"list\"}\n", "version_mismatch", "upgrade the client"),
        ("{\"version\":3,\"op\":\"list\"}\n", "version_mismatch", "upgrade the client"),
        ("{\"version\":4,\"op\":\"bind\",\"protocol\":\"udp\",\"local\":\"nowhere\",\"to\":\"count\"}\n", "invalid_argument", "local address"),
        ("{\"version\":4,\"op\":\"close\",\"id\":999}\n", "not_found", "does not exist"),
        // A pcap: sink without its descriptor, or a declared descriptor that never came.
        ("{\"version\":4,\"op\":\"bind\",\"protocol\":\"udp\",\"local\":\"0.0.0.0:9500\",\"to\":\"pcap:/tmp/demux-never.pcap\"}\n", "invalid_argument", "opens no path for a caller"),
        ("{\"version\":4,\"fds\":1,\"op\":\"bind\",\"protocol\":\"udp\",\"local\":\"0.0.0.0:9500\",\"to\":\"pcap:/tmp/demux-never.pcap\"}\n", "invalid_argument", "but 0 came with it"),
    ] {
        use std::io::{BufRead, Write};
        raw.write_all(line.as_bytes())?;
        let mut answer = String::new();
        reader.read_line(&mut answer)?;
        ensure!(
            answer.contains("\"error\"")
                && answer.contains(&format!("\"code\":\"{code}\""))
                && answer.contains(expect),
            "{line:?} -> {answer}"
        );
    }
    let Response::Endpoints { endpoints } = root.call(Request::List)? else {
        bail!("no list")
    };
    ensure!(
        endpoints.len() == 1 && endpoints[0].id == held,
        "endpoints changed: {endpoints:?}"
    );
    drop(daemon);
    Ok(())
}

/// Root binds `0.0.0.0:P`; as uid nobody, a specific address, a connected binding and a /24
/// prefix on P are refused (the kernel's bind would refuse the first two; prefixes are root's),
/// and P's datagrams still reach root's endpoint.
pub(crate) fn another_uid_takes_nothing_from_roots_wildcard() -> anyhow::Result<()> {
    const PORT: u16 = 9400;
    let (net, dir, daemon) = daemon_for_nobody()?;
    let mut root = daemon.client()?;
    let mut sink = SinkSocket::new(&dir, "root")?;
    let roots = bind(
        &mut root,
        &format!("0.0.0.0:{PORT}"),
        None,
        None,
        sink.spec(),
    )?;
    let specific = format!("{B_ADDR}:{PORT}");
    let remote = format!("{A_ADDR}:40000");
    let held = format!("held by endpoint {roots} of uid 0");
    for (args, status, expect) in [
        (vec!["bind", "udp", &specific], 5, held.as_str()),
        (
            vec!["bind", "udp", &specific, "--connect", &remote],
            5,
            &held,
        ),
        (
            vec!["bind", "udp", &format!("198.18.0.0/24:{PORT}")],
            4,
            "only root may make",
        ),
    ] {
        // Persistent, so that a bind let through would return rather than hold; within 10 s.
        let mut args = args.clone();
        args.push("--persistent");
        let output = within(daemon.nobody_cli(&args), 10)?;
        let error = String::from_utf8_lossy(&output.stderr);
        ensure!(
            output.status.code() == Some(status) && error.contains(expect),
            "{args:?} as nobody: {}, not {status}: {error}",
            output.status
        );
    }
    let Response::Endpoints { endpoints } = root.call(Request::List)? else {
        bail!("no list")
    };
    ensure!(
        endpoints.len() == 1 && endpoints[0].id == roots,
        "endpoints changed: {endpoints:?}"
    );
    // From the remote the connected binding named, too: all of it reaches root's endpoint.
    send(&net.a, 40000, PORT, 5)?;
    send(&net.a, 40001, PORT, 5)?;
    settle(|| sink.drain().map(|()| sink.got.len() == 10))?;
    ensure!(
        sink.got.len() == 10,
        "root's endpoint got {} of 10",
        sink.got.len()
    );
    drop(daemon);
    Ok(())
}

/// A daemon in a veth pair of its own whose control socket group `nogroup` may use, so the
/// CLI can run as uid 65534 ([`RunningDaemon::nobody_cli`]). Drop in reverse order: daemon, dir, net.
pub(crate) fn daemon_for_nobody() -> anyhow::Result<(VethPair, TempDir, RunningDaemon)> {
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let daemon = RunningDaemon::start(&net, &dir, &["--control-group", "nogroup"])?;
    Ok((net, dir, daemon))
}

/// Runs `cmd` under `timeout SECS` and returns its output.
fn within(cmd: Command, secs: u32) -> anyhow::Result<std::process::Output> {
    Ok(Command::new("timeout")
        .arg(secs.to_string())
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .output()?)
}

/// The CLI as nobody: its exit status and stderr.
fn nobody_runs(daemon: &RunningDaemon, args: &[&str]) -> anyhow::Result<(Option<i32>, String)> {
    let output = daemon.nobody_cli(args).output()?;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// A file's bytes and modification time, to show it unchanged.
fn snapshot(path: &std::path::Path) -> anyhow::Result<(Vec<u8>, std::time::SystemTime)> {
    Ok((std::fs::read(path)?, std::fs::metadata(path)?.modified()?))
}

/// The daemon answers root's `list` within two seconds: nothing a caller passed holds it.
fn still_answers(daemon: &RunningDaemon) -> anyhow::Result<usize> {
    let control = daemon.control.clone();
    let (done, answer) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let listed = Client::connect(&control)
            .map_err(anyhow::Error::from)
            .and_then(|mut client| match client.call(Request::List)? {
                Response::Endpoints { endpoints } => Ok(endpoints.len()),
                other => bail!("list: {other:?}"),
            });
        let _ = done.send(listed);
    });
    answer
        .recv_timeout(Duration::from_secs(2))
        .context("the daemon did not answer root within 2 s")?
}

pub(crate) fn the_daemon_opens_no_sink_for_a_caller() -> anyhow::Result<()> {
    use std::os::{
        fd::AsFd,
        unix::fs::{OpenOptionsExt, PermissionsExt},
    };
    let (net, dir, daemon) = daemon_for_nobody()?;
    // A directory everyone may write, as /tmp.
    let public = dir.join("public");
    std::fs::create_dir(&public)?;
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o777))?;
    let secret = public.join("root-only");
    std::fs::write(&secret, b"root's, not a capture")?;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
    std::os::unix::fs::symlink(&secret, public.join("link"))?;
    let before = snapshot(&secret)?;
    let local = format!("{B_ADDR}:9500");
    let to = |path: &std::path::Path| format!("pcap:{}", path.display());

    // nobody cannot have the daemon write root's file, directly or through a symlink: it opens
    // the file itself, and may not.
    for target in [secret.clone(), public.join("link")] {
        let (status, error) = nobody_runs(
            &daemon,
            &["bind", "udp", &local, "--to", &to(&target), "--persistent"],
        )?;
        ensure!(
            status == Some(4) && error.contains("Permission denied"),
            "pcap to {}: exit {status:?}: {error}",
            target.display()
        );
        ensure!(snapshot(&secret)? == before, "{} changed", secret.display());
    }

    // A FIFO: without a reader the CLI's open fails at once; with one, the daemon refuses the
    // descriptor, and never waits on it.
    let fifo = public.join("fifo");
    ensure!(
        Command::new("mkfifo").arg(&fifo).status()?.success(),
        "mkfifo"
    );
    std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o666))?;
    let (status, error) = nobody_runs(
        &daemon,
        &["bind", "udp", &local, "--to", &to(&fifo), "--persistent"],
    )?;
    ensure!(
        status == Some(2),
        "FIFO without a reader: exit {status:?}: {error}"
    );
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)?;
    let (status, error) = nobody_runs(
        &daemon,
        &["bind", "udp", &local, "--to", &to(&fifo), "--persistent"],
    )?;
    ensure!(
        status == Some(2) && error.contains("to: pcap:") && error.contains("a FIFO"),
        "FIFO: exit {status:?}: {error}"
    );
    // The same descriptor passed by hand, and a device.
    let writer = std::fs::OpenOptions::new().write(true).open(&fifo)?;
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    let mut root = daemon.client()?;
    let pcap_bind = |path: &std::path::Path| {
        Request::Bind(BindRequest::udp(local.clone(), SinkSpec::Pcap(path.into())))
    };
    for fd in [writer.as_fd(), null.as_fd()] {
        match root.call_with_fds(pcap_bind(&fifo), &[fd]) {
            Err(e) if e.code() == demux::control::ErrorCode::InvalidArgument => {}
            other => bail!("a FIFO or a device passed as a pcap file: {other:?}"),
        }
    }
    drop((reader, writer));
    ensure!(still_answers(&daemon)? == 0, "something was bound");

    // unix: to a socket only root may connect to.
    let root_socket = public.join("root.sock");
    let listener = UnixDatagram::bind(&root_socket)?;
    listener.set_nonblocking(true)?;
    std::fs::set_permissions(&root_socket, std::fs::Permissions::from_mode(0o600))?;
    let (status, error) = nobody_runs(
        &daemon,
        &[
            "bind",
            "udp",
            &local,
            "--to",
            &format!("unix:{}", root_socket.display()),
            "--persistent",
        ],
    )?;
    ensure!(
        status == Some(4) && error.contains("Permission denied"),
        "unix to a root-only socket: exit {status:?}: {error}"
    );

    // What nobody may open works: a pcap file of its own, and a socket that lets it connect,
    // whose records say they come from nobody, not from the daemon's root.
    let own = public.join("nobody.pcap");
    let pcap_id = as_nobody(
        &daemon,
        &["bind", "udp", &local, "--to", &to(&own), "--persistent"],
    )?;
    let open_socket = public.join("open.sock");
    let receiver = UnixDatagram::bind(&open_socket)?;
    receiver.set_read_timeout(Some(Duration::from_secs(2)))?;
    demux::sys::scm::set_passcred(&receiver)?;
    std::fs::set_permissions(&open_socket, std::fs::Permissions::from_mode(0o666))?;
    let unix_id = as_nobody(
        &daemon,
        &[
            "bind",
            "udp",
            &format!("{B_ADDR}:9501"),
            "--to",
            &format!("unix:{}", open_socket.display()),
            "--persistent",
        ],
    )?;
    ensure!(
        still_answers(&daemon)? == 2,
        "nobody's two endpoints are not there"
    );
    send(&net.a, 40000, 9500, 3)?;
    send(&net.a, 40000, 9501, 1)?;
    let mut buf = [0u8; 2048];
    let (n, creds) = demux::sys::scm::recv_with_credentials(&receiver, &mut buf)
        .context("no record on nobody's unix: sink")?;
    ensure!(record::decode(&buf[..n]).is_ok(), "not a record");
    ensure!(
        matches!(creds, Some(c) if c.uid == 65534 && c.gid == 65534),
        "the record came as {creds:?}, not as nobody"
    );
    ensure!(
        listener.recv(&mut buf).is_err(),
        "the root-only socket received something"
    );
    // The writer thread flushes the file header with its first batch: until then (and while a
    // frame is half written) the file does not parse, which is "not yet", not a failure.
    let count = || -> anyhow::Result<usize> {
        let mut reader = pcap_file::pcap::PcapReader::new(std::fs::File::open(&own)?)?;
        let mut frames = 0;
        while let Some(packet) = reader.next_packet() {
            packet?;
            frames += 1;
        }
        Ok(frames)
    };
    settle(|| Ok(count().is_ok_and(|frames| frames == 3)))?;
    let frames = count().context("reading nobody's pcap")?;
    ensure!(frames == 3, "nobody's pcap holds {frames} of 3 frames");
    ensure!(
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&own)?) == 65534,
        "nobody's pcap file is not nobody's"
    );
    for id in [pcap_id, unix_id] {
        root.call(Request::Close {
            id: id.trim().parse()?,
        })?;
    }
    ensure!(snapshot(&secret)? == before, "{} changed", secret.display());
    drop(daemon);
    Ok(())
}

/// Runs the CLI as uid/gid 65534 (nobody/nogroup) and returns its stdout, failing unless it
/// exits 0.
fn as_nobody(daemon: &RunningDaemon, args: &[&str]) -> anyhow::Result<String> {
    let output = daemon.nobody_cli(args).output()?;
    ensure!(
        output.status.success(),
        "{args:?} as nobody: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub(crate) fn a_user_sees_only_their_own_endpoints_and_an_endless_line_is_cut_off(
) -> anyhow::Result<()> {
    let (_net, _dir, daemon) = daemon_for_nobody()?;
    let mut root = daemon.client()?;
    let roots = bind(
        &mut root,
        &format!("{B_ADDR}:9000"),
        None,
        None,
        SinkSpec::Count,
    )?;
    let nobodys: u32 = as_nobody(
        &daemon,
        &["bind", "udp", &format!("{B_ADDR}:9100"), "--persistent"],
    )?
    .trim()
    .parse()
    .context("the descriptor nobody's bind printed")?;

    // nobody lists and stats its own endpoint only; root sees both.
    let ids = |json: &str, stats: bool| -> anyhow::Result<Vec<u32>> {
        let value: serde_json::Value = serde_json::from_str(json)?;
        let list = if stats { &value["endpoints"] } else { &value };
        Ok(list
            .as_array()
            .context("an array of endpoints")?
            .iter()
            .filter_map(|e| e["id"].as_u64().map(|id| id as u32))
            .collect())
    };
    let listed = ids(&as_nobody(&daemon, &["list", "--json"])?, false)?;
    ensure!(listed == [nobodys], "nobody lists {listed:?}");
    let stated = ids(&as_nobody(&daemon, &["stats", "--json"])?, true)?;
    ensure!(stated == [nobodys], "nobody's stats show {stated:?}");
    let Response::Endpoints { endpoints } = root.call(Request::List)? else {
        bail!("no list")
    };
    let all: Vec<u32> = endpoints.iter().map(|e| e.id).collect();
    ensure!(all == [roots, nobodys], "root lists {all:?}");

    // A line that never ends is refused at 64 KiB and the connection closed, not buffered.
    use std::io::{BufRead, Write};
    let mut raw = std::os::unix::net::UnixStream::connect(&daemon.control)?;
    raw.set_read_timeout(Some(Duration::from_secs(5)))?;
    let chunk = vec![b'x'; 16 * 1024];
    for _ in 0..16 {
        if raw.write_all(&chunk).is_err() {
            break; // the daemon closed the connection meanwhile: as intended
        }
    }
    let mut reader = std::io::BufReader::new(raw);
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    ensure!(
        answer.contains("\"code\":\"limit_reached\""),
        "an endless line got {answer:?}"
    );
    answer.clear();
    ensure!(
        reader.read_line(&mut answer).unwrap_or(0) == 0,
        "the connection stayed open: {answer:?}"
    );
    // The daemon still serves everyone.
    let Response::Endpoints { endpoints } = daemon.client()?.call(Request::List)? else {
        bail!("no list after the long line")
    };
    ensure!(endpoints.len() == 2, "endpoints changed: {endpoints:?}");
    drop(daemon);
    Ok(())
}

pub(crate) fn a_bad_config_file_is_refused_by_line() -> anyhow::Result<()> {
    let ns = NetNs::unique("dmxt")?;
    let dir = TempDir::new("demux-test")?;
    let config = dir.join("bad.toml");
    std::fs::write(&config, "interfaces = [\"lo\"]\nmode = \"fast\"\n")?;
    let output = ns
        .command(DAEMON)
        .args(["daemon", "--config"])
        .arg(&config)
        .arg("--control")
        .arg(dir.join("control.sock"))
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(1),
        "exit {}: {stderr}",
        output.status
    );
    ensure!(
        stderr.contains("line 2") && stderr.contains("fast"),
        "{stderr}"
    );
    ensure!(
        !ns.ip(&["link", "show", "lo"])?.contains("xdp"),
        "something was attached"
    );
    Ok(())
}

/// With small limits (2 endpoints and 2 connections per uid, 1 s idle), as nobody: a third
/// endpoint and a third connection are refused with exit status 7 naming their keys; a
/// connection whose endpoint root closed is closed after the idle time, freeing its place,
/// while one that holds an endpoint stays; an idle connection gets a `limit_reached` line. Root
/// is held to none of the counts and served throughout.
pub(crate) fn a_user_is_held_to_the_limits_while_root_is_served() -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let config = dir.join("limits.toml");
    std::fs::write(
        &config,
        "[limits]\nendpoints_per_uid = 2\nconnections_per_uid = 2\nidle = \"1s\"\n",
    )?;
    let config = config.to_str().context("a UTF-8 temp path")?;
    let daemon = RunningDaemon::start(
        &net,
        &dir,
        &["--control-group", "nogroup", "--config", config],
    )?;
    // Root: three endpoints on one connection, which then never idles.
    let mut root = daemon.client()?;
    let mut roots = Vec::new();
    for port in 9000..9003 {
        let local = format!("{B_ADDR}:{port}");
        roots.push(bind(&mut root, &local, None, None, SinkSpec::Count)?);
    }
    let listed = |root: &mut Client| -> anyhow::Result<Vec<u32>> {
        let Response::Endpoints { endpoints } = root.call(Request::List)? else {
            bail!("no list")
        };
        Ok(endpoints.iter().map(|e| e.id).collect())
    };
    let nobody = |args: &[&str]| nobody_runs(&daemon, args);
    // `demux bind` as nobody, running: an endpoint on a connection of its own.
    let holder = |port: u16| -> anyhow::Result<(ChildGuard, u32)> {
        let mut child = ChildGuard::spawn(
            daemon
                .nobody_cli(&["bind", "udp", &format!("{B_ADDR}:{port}")])
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        )?;
        let lines = lines_of(child.child().stdout.take().expect("piped"));
        let id = lines
            .recv_timeout(Duration::from_secs(5))
            .with_context(|| format!("nobody's bind on {port} printed no descriptor"))?;
        Ok((child, id.trim().parse()?))
    };

    let persistent: u32 = as_nobody(
        &daemon,
        &["bind", "udp", &format!("{B_ADDR}:9100"), "--persistent"],
    )?
    .trim()
    .parse()?;
    let (mut kept, kept_id) = holder(9101)?;
    let (status, error) = nobody(&["bind", "udp", &format!("{B_ADDR}:9102"), "--persistent"])?;
    ensure!(
        status == Some(7) && error.contains("limits.endpoints_per_uid"),
        "a third endpoint: exit {status:?}: {error}"
    );
    as_nobody(&daemon, &["close", &persistent.to_string()])?;
    let (_idled, idled_id) = holder(9102)?;
    // Two connections held: a third is refused as it is accepted.
    let (status, error) = nobody(&["list"])?;
    ensure!(
        status == Some(7) && error.contains("limits.connections_per_uid"),
        "a third connection: exit {status:?}: {error}"
    );
    let all = listed(&mut root)?;
    ensure!(
        all == [roots.clone(), vec![kept_id, idled_id]].concat(),
        "root lists {all:?}"
    );

    // Without its endpoint the second connection idles: it goes within the idle time and one
    // more look, and nobody has a place again.
    root.call(Request::Close { id: idled_id })?;
    let closed = Instant::now();
    loop {
        let (status, error) = nobody(&["list"])?;
        if status == Some(0) {
            break;
        }
        ensure!(
            status == Some(7) && closed.elapsed() < Duration::from_secs(5),
            "the idle connection is still open after {:?}: exit {status:?}: {error}",
            closed.elapsed()
        );
        thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        closed.elapsed() >= Duration::from_millis(900),
        "the connection went after {:?}, before the idle time",
        closed.elapsed()
    );
    // The first connection, holding its endpoint, outlived the idle time several times.
    ensure!(kept.child().try_wait()?.is_none(), "nobody's holder exited");
    let all = listed(&mut root)?;
    ensure!(
        all == [roots.clone(), vec![kept_id]].concat(),
        "root lists {all:?}"
    );

    // An idle connection is told why it goes, with the code.
    use std::io::BufRead;
    let raw = std::os::unix::net::UnixStream::connect(&daemon.control)?;
    raw.set_read_timeout(Some(Duration::from_secs(5)))?;
    let opened = Instant::now();
    let mut reader = std::io::BufReader::new(raw);
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    ensure!(
        answer.contains("\"code\":\"limit_reached\"")
            && answer.contains("limits.idle")
            && opened.elapsed() >= Duration::from_millis(900),
        "an idle connection got {answer:?} after {:?}",
        opened.elapsed()
    );
    answer.clear();
    ensure!(
        reader.read_line(&mut answer).unwrap_or(0) == 0,
        "the idle connection stayed open: {answer:?}"
    );
    // Root, over nobody's counts, is still served.
    ensure!(
        listed(&mut daemon.client()?)?.len() == 4,
        "root's new connection"
    );
    drop(daemon);
    Ok(())
}
