//! The `demux daemon` binary end to end, in namespaces of its own: it attaches to a veth,
//! counts the packets sent to it, and detaches cleanly on SIGTERM.

use std::{
    io::{BufRead, BufReader},
    net::UdpSocket,
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use demux::{
    client::Endpoint,
    control::{client::Client, BindRequest, SinkSpec},
    testing::testbed::{
        enter_netns, ChildGuard, FdStore, NetNs, NotifySocket, TempDir, VethPair, A_ADDR, B_ADDR,
        LISTEN_PID_WRAPPER,
    },
};

pub(crate) const DAEMON: &str = env!("CARGO_BIN_EXE_demux");
const DATAGRAMS: u64 = 5;

pub(crate) fn tests() -> Vec<libtest_mimic::Trial> {
    trials![
        counts_packets_on_a_veth_and_detaches,
        unknown_interface_is_one_clear_line,
        zero_copy_on_a_veth_fails_at_start_with_one_line,
        zero_copy_off_and_auto_deliver_as_before
    ]
}

/// A daemon on the `b` side of a veth pair, with its control socket in a temp dir, started
/// and ready: it has said `READY=1` on its notify socket (sd_notify). Dropping it stops the
/// daemon by its PID.
pub(crate) struct RunningDaemon {
    pub child: ChildGuard,
    /// The daemon's stderr, line by line. Kept so the reader thread keeps draining it (a
    /// closed pipe would kill the daemon with SIGPIPE).
    pub log: Receiver<String>,
    pub control: PathBuf,
    /// The namespace it runs in: its callers' backing sockets must be created there.
    pub netns: String,
    /// Its sd_notify socket (`RELOADING=1`, `READY=1` after start).
    pub notify: NotifySocket,
}

impl Drop for RunningDaemon {
    /// Stops the daemon as a service manager would: SIGTERM, then the notify socket served
    /// (its `BARRIER=1` answered) until it exits, so that a daemon with client endpoints to
    /// hand over does not wait for a manager that never reads. The guard kills it if not.
    fn drop(&mut self) {
        if self.child.signal(libc::SIGTERM).is_ok() {
            let _ = self.notify.serve_store(
                &mut FdStore::default(),
                &mut self.child,
                None,
                Duration::from_secs(5),
            );
        }
    }
}

impl RunningDaemon {
    /// Starts `demux daemon` on `net.b_if` with `extra` arguments (`--stats-interval 0`
    /// unless they say otherwise) and waits up to 10 s for its `READY=1`.
    pub(crate) fn start(net: &VethPair, dir: &TempDir, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_under(net, dir, &[], extra)
    }

    /// As [`RunningDaemon::start`], run through `wrapper` (a program and its arguments that
    /// exec the daemon, as `setpriv …` does; none when empty). The child's PID stays the
    /// daemon's: `ip netns exec` and the wrapper both exec.
    pub(crate) fn start_under(
        net: &VethPair,
        dir: &TempDir,
        wrapper: &[&str],
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_full(net, dir, wrapper, extra, None)
    }

    /// As [`RunningDaemon::start`], as a service manager starts it with its file descriptor
    /// store: `store`'s descriptors at 3, 4, … with `LISTEN_PID`, `LISTEN_FDS` and
    /// `LISTEN_FDNAMES`; what the daemon says to the store until `READY=1` is applied to it.
    pub(crate) fn start_handed(
        net: &VethPair,
        dir: &TempDir,
        extra: &[&str],
        store: &mut FdStore,
    ) -> anyhow::Result<Self> {
        Self::start_full(net, dir, &LISTEN_PID_WRAPPER, extra, Some(store))
    }

    /// Stops the daemon gracefully (SIGTERM) as systemd does, keeping what it stores
    /// (`FDSTORE=1`) in `store`; returns its exit status.
    pub(crate) fn stop_handing_over(
        &mut self,
        store: &mut FdStore,
    ) -> anyhow::Result<std::process::ExitStatus> {
        self.child.signal(libc::SIGTERM)?;
        let status =
            self.notify
                .serve_store(store, &mut self.child, None, Duration::from_secs(10))?;
        status.context("no exit status")
    }

    fn start_full(
        net: &VethPair,
        dir: &TempDir,
        wrapper: &[&str],
        extra: &[&str],
        store: Option<&mut FdStore>,
    ) -> anyhow::Result<Self> {
        let control = dir.join("control.sock");
        let notify = NotifySocket::bind(dir.join("notify.sock"))?;
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = net.b.command(program);
                command.args(args).arg(DAEMON);
                command
            }
            None => net.b.command(DAEMON),
        };
        command.args(["daemon", "--iface", &net.b_if, "--control"]);
        command.arg(&control).args(extra);
        if !extra.contains(&"--stats-interval") {
            command.args(["--stats-interval", "0"]);
        }
        command
            .env(NotifySocket::VAR, notify.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = match &store {
            Some(store) => ChildGuard::spawn_with_fds(&mut command, &store.fds)?,
            None => ChildGuard::spawn(&mut command)?,
        };
        let log = lines_of(child.child().stderr.take().expect("piped"));
        let ready = match store {
            Some(store) => notify
                .serve_store(store, &mut child, Some("READY=1"), Duration::from_secs(10))
                .map(drop),
            None => notify
                .wait_ready(&mut child, Duration::from_secs(10))
                .map(drop),
        };
        if let Err(error) = ready {
            let said: Vec<String> = log.try_iter().collect();
            bail!("the daemon is not ready: {error:#}; it said: {said:#?}");
        }
        Ok(Self {
            child,
            log,
            control,
            netns: net.b.name().to_owned(),
            notify,
        })
    }

    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.control)?)
    }

    /// The CLI, as root, in the daemon's namespace (where `demux bind` creates backing
    /// sockets), with `--control` pointing at this daemon after `args`.
    pub(crate) fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, DAEMON])
            .args(args)
            .arg("--control")
            .arg(&self.control);
        cmd
    }

    /// As [`RunningDaemon::cli`], as uid/gid 65534 (nobody/nogroup, no other groups).
    pub(crate) fn nobody_cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                DAEMON,
            ])
            .args(args)
            .arg("--control")
            .arg(&self.control);
        cmd
    }

    /// Runs `f` with the control socket's path on a thread inside the daemon's namespace
    /// (where a client's backing socket must be created).
    pub(crate) fn b_side<T: Send>(
        &self,
        f: impl FnOnce(&std::path::Path) -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        let (netns, control) = (&self.netns, &self.control);
        thread::scope(|scope| {
            scope
                .spawn(move || {
                    enter_netns(netns)?;
                    f(control)
                })
                .join()
                .unwrap_or_else(|_| bail!("the thread in the daemon's namespace panicked"))
        })
    }

    /// A client-library endpoint on UDP `local`, its backing socket created in the daemon's
    /// namespace (by a thread that entered it).
    pub(crate) fn endpoint(&self, local: &str) -> anyhow::Result<Endpoint> {
        self.endpoint_with(local, false)
    }

    /// As [`RunningDaemon::endpoint`], with `SO_REUSEPORT` if `reuseport`.
    pub(crate) fn endpoint_with(&self, local: &str, reuseport: bool) -> anyhow::Result<Endpoint> {
        let request = BindRequest::udp(
            local,
            SinkSpec::Ring {
                slots: demux::ring::DEFAULT_SLOTS,
            },
        );
        let (netns, control) = (&self.netns, &self.control);
        thread::scope(|scope| {
            scope
                .spawn(move || {
                    enter_netns(netns)?;
                    Ok(Endpoint::bind_with(
                        control,
                        request,
                        Some(demux::backing::Options {
                            reuseport,
                            ..Default::default()
                        }),
                    )?)
                })
                .join()
                .unwrap_or_else(|_| bail!("the thread binding {local} panicked"))
        })
    }
}

pub(crate) fn counts_packets_on_a_veth_and_detaches() -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let mut daemon = RunningDaemon::start(&net, &dir, &["--stats-interval", "100ms"])?;
    let (log, control) = (&daemon.log, daemon.control.clone());
    ensure!(
        net.b.ip(&["link", "show", &net.b_if])?.contains("xdp"),
        "no XDP program on {} after READY=1",
        net.b_if
    );

    send_udp(&net.a, DATAGRAMS)?;
    wait_for(log, Duration::from_secs(5), |line| {
        line.contains("verdicts:") && counter(line, "pass_no_match") >= Some(DATAGRAMS)
    })?;

    daemon.child.signal(libc::SIGTERM)?;
    let status = daemon.child.wait_exit(Duration::from_secs(5))?;
    ensure!(
        status.success(),
        "the daemon exited with {status} after SIGTERM"
    );
    let rest: Vec<String> = daemon.log.try_iter().collect();
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

pub(crate) fn unknown_interface_is_one_clear_line() -> anyhow::Result<()> {
    let ns = NetNs::unique("dmxt")?;
    let dir = TempDir::new("demux-test")?;
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

/// veth has no AF_XDP zero-copy: `--zero-copy on` must stop the daemon at start with one
/// error line naming the interface, the queue, the missing driver feature and the fix, and
/// leave no XDP program and no control socket behind.
pub(crate) fn zero_copy_on_a_veth_fails_at_start_with_one_line() -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let control = dir.join("control.sock");
    let mut command = net.b.command(DAEMON);
    command
        .args([
            "daemon",
            "--iface",
            &net.b_if,
            "--zero-copy",
            "on",
            "--control",
        ])
        .arg(&control)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::spawn(&mut command)?;
    let log = lines_of(child.child().stderr.take().expect("piped"));
    let status = child.wait_exit(Duration::from_secs(10))?;
    // The reader thread ends with the pipe; what it read is all there is.
    let mut stderr = Vec::new();
    while let Ok(line) = log.recv_timeout(Duration::from_secs(2)) {
        stderr.push(line);
    }
    ensure!(
        status.code() == Some(1),
        "exit {status} (want 1): {stderr:#?}"
    );
    let errors: Vec<&String> = stderr
        .iter()
        .filter(|l| l.starts_with("demux: error:"))
        .collect();
    let want = format!(
        "demux: error: AF_XDP on `{}` queue 0: the driver lacks AF_XDP zero-copy",
        net.b_if
    );
    ensure!(
        errors.len() == 1
            && errors[0].starts_with(&want)
            && errors[0].contains("--zero-copy off")
            && errors[0].contains("auto"),
        "want one line starting {want:?} naming the fix: {stderr:#?}"
    );
    ensure!(
        !net.b.ip(&["link", "show", &net.b_if])?.contains("xdp"),
        "an XDP program is attached to {} after the failed start",
        net.b_if
    );
    ensure!(!control.exists(), "the control socket stayed");
    Ok(())
}

/// `--zero-copy off` and `auto` (copy mode on a veth, `auto` saying why once) deliver
/// steered datagrams through the queue's AF_XDP socket as before.
pub(crate) fn zero_copy_off_and_auto_deliver_as_before() -> anyhow::Result<()> {
    for setting in ["off", "auto"] {
        let net = VethPair::standard()?;
        let dir = TempDir::new("demux-test")?;
        let daemon = RunningDaemon::start(&net, &dir, &["--zero-copy", setting])?;
        let said: Vec<String> = daemon.log.try_iter().collect();
        let because = format!(
            "zero-copy not used on {}: the queue also carries the host's traffic",
            net.b_if
        );
        let told = said.iter().filter(|l| l.contains(&because)).count();
        let want_told = usize::from(setting == "auto");
        ensure!(
            told == want_told,
            "--zero-copy {setting}: {told} lines saying {because:?} (want {want_told}): {said:#?}"
        );
        let mut endpoint = daemon.endpoint(&format!("{B_ADDR}:9700"))?;
        net.a.run_in(|| {
            let socket = UdpSocket::bind((A_ADDR, 0)).context("binding the sender")?;
            for i in 0..DATAGRAMS {
                socket
                    .send_to(format!("zc #{i}").as_bytes(), (B_ADDR, 9700))
                    .context("sending")?;
            }
            Ok(())
        })?;
        for i in 0..DATAGRAMS {
            let datagram = endpoint
                .recv_from(Some(Duration::from_secs(5)))?
                .with_context(|| format!("--zero-copy {setting}: datagram {i} did not arrive"))?;
            ensure!(
                datagram.payload == format!("zc #{i}").as_bytes(),
                "--zero-copy {setting}: {datagram:?}"
            );
        }
    }
    Ok(())
}

/// Sends `count` UDP datagrams from namespace `ns` (198.18.0.1) to 198.18.0.2:9.
pub(crate) fn send_udp(ns: &NetNs, count: u64) -> anyhow::Result<()> {
    ns.run_in(|| {
        let socket = UdpSocket::bind((A_ADDR, 0)).context("binding the sender")?;
        for _ in 0..count {
            socket
                .send_to(b"demux test", (B_ADDR, 9))
                .context("sending")?;
        }
        Ok(())
    })
}

/// The lines a child writes, as a channel fed by a reader thread.
pub(crate) fn lines_of(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
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
pub(crate) fn wait_for(
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

/// The value of `name=N` in a verdicts line.
fn counter(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
        .and_then(|n| n.parse().ok())
}
