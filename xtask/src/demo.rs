//! `cargo xtask demo`: the first thing to run. It builds demux, makes a two-namespace veth
//! testbed (198.18.0.0/15, 2001:2::/48), starts the daemon on the receiving side, binds
//! endpoints that show the lookup precedence, sends a bounded mix of traffic, shows the
//! statistics, checks that every endpoint got exactly its traffic and that unmatched traffic
//! reached the kernel, and removes everything it created, also on failure.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    thread,
    time::Duration,
};

use anyhow::{bail, ensure, Context as _};

use crate::{
    build, is_root, show,
    testbed::{self, ChildGuard, Echo, NotifySocket, PairSpec, VethPair},
    workspace_root,
};

const NS_A: &str = "demux-demo-a";
const NS_B: &str = "demux-demo-b";
const IF_A: &str = "demo-a";
const IF_B: &str = "demo-b";
const STATE_DIR: &str = "/run/demux-demo";

/// Stops a daemon left running by `--keep` (found by its PID file, and only if that PID still
/// runs the demo's daemon), deletes both namespaces and the state directory.
fn clean() {
    let pid = std::fs::read_to_string(Path::new(STATE_DIR).join("daemon.pid")).ok();
    if let Some(pid) = pid.and_then(|p| p.trim().parse::<i32>().ok()) {
        // Only the demo's own daemon: check what the PID runs before signalling it.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(IF_B) {
            let _ = testbed::terminate(pid);
            thread::sleep(Duration::from_millis(500));
        }
    }
    for ns in [NS_A, NS_B] {
        testbed::delete_netns(ns);
    }
    let _ = std::fs::remove_dir_all(STATE_DIR);
    println!("demo: testbed removed");
}

/// The demo's state directory (control socket, notify socket, log, PID file), removed on drop
/// with a last word: it goes after the daemon and the namespaces.
struct StateDir;

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(STATE_DIR);
        println!("demo: testbed removed");
    }
}

/// Runs and prints a command; fails with its stderr.
fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    println!("$ {}", show(&cmd));
    testbed::run(&mut cmd)
}

/// One kind of traffic, and the endpoint (by name) that must receive it, if any.
struct Flow {
    what: &'static str,
    src: &'static str,
    dst: &'static str,
    tcp: bool,
    count: u64,
    flows: u16,
    receiver: Option<&'static str>,
}

/// Endpoints: name, protocol, local, connect.
const ENDPOINTS: [(&str, &str, &str, Option<&str>); 6] = [
    ("wildcard", "udp", "0.0.0.0:5000", None),
    ("exact", "udp", "198.18.0.2:5000", None),
    (
        "connected",
        "udp",
        "198.18.0.2:5000",
        Some("198.18.0.1:41000"),
    ),
    ("prefix", "udp", "198.18.0.0/24:6000", None),
    ("ipv6", "udp", "[2001:2::2]:5000", None),
    ("tcp", "tcp", "198.18.0.2:8080", None),
];

const FLOWS: [Flow; 8] = [
    Flow {
        what: "UDP to the second address, port 5000",
        src: "198.18.0.1:40000",
        dst: "198.18.0.3:5000",
        tcp: false,
        count: 100,
        flows: 4,
        receiver: Some("wildcard"),
    },
    Flow {
        what: "UDP to 198.18.0.2:5000",
        src: "198.18.0.1:40000",
        dst: "198.18.0.2:5000",
        tcp: false,
        count: 100,
        flows: 4,
        receiver: Some("exact"),
    },
    Flow {
        what: "UDP from 198.18.0.1:41000 to 198.18.0.2:5000",
        src: "198.18.0.1:41000",
        dst: "198.18.0.2:5000",
        tcp: false,
        count: 100,
        flows: 1,
        receiver: Some("connected"),
    },
    Flow {
        what: "UDP to 198.18.0.2:6000",
        src: "198.18.0.1:40000",
        dst: "198.18.0.2:6000",
        tcp: false,
        count: 50,
        flows: 4,
        receiver: Some("prefix"),
    },
    Flow {
        what: "UDP to 198.18.0.3:6000",
        src: "198.18.0.1:40000",
        dst: "198.18.0.3:6000",
        tcp: false,
        count: 50,
        flows: 4,
        receiver: Some("prefix"),
    },
    Flow {
        what: "UDP over IPv6",
        src: "[2001:2::1]:40000",
        dst: "[2001:2::2]:5000",
        tcp: false,
        count: 100,
        flows: 4,
        receiver: Some("ipv6"),
    },
    Flow {
        what: "TCP SYNs to 198.18.0.2:8080",
        src: "198.18.0.1:42000",
        dst: "198.18.0.2:8080",
        tcp: true,
        count: 100,
        flows: 100,
        receiver: Some("tcp"),
    },
    Flow {
        what: "UDP to a port nobody bound (the kernel's)",
        src: "198.18.0.1:40000",
        dst: "198.18.0.2:9999",
        tcp: false,
        count: 50,
        flows: 1,
        receiver: None,
    },
];

/// `cargo xtask demo [--keep | --clean]`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Leave the testbed and the daemon running afterwards (to try the CLI and the examples).
    #[arg(long, conflicts_with = "clean")]
    keep: bool,
    /// Remove a testbed left by `--keep`, and stop its daemon.
    #[arg(long)]
    clean: bool,
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.clean {
        if !is_root() {
            bail!("removing the demo testbed needs root");
        }
        clean();
        return Ok(());
    }
    if !is_root() {
        bail!("the demo creates network namespaces and loads BPF: run `cargo xtask demo` as root");
    }
    build::run()?;
    let demux = workspace_root().join("target/release/demux");
    let demux_gen = workspace_root().join("target/release/demux-gen");
    let control = PathBuf::from(STATE_DIR).join("control.sock");
    // A testbed left by an earlier `--keep`.
    for ns in [NS_A, NS_B] {
        testbed::delete_netns(ns);
    }
    testbed::remove_on_signal("demo");
    let state = StateDir;
    println!("\ndemo: building the testbed (two namespaces joined by a veth pair)");
    let net = VethPair::new(PairSpec {
        queues: 1,
        namespaces: [NS_A.into(), NS_B.into()],
        ifaces: [IF_A.into(), IF_B.into()],
        addrs: [
            vec!["198.18.0.1/24".into(), "2001:2::1/64".into()],
            vec![
                "198.18.0.2/24".into(),
                "198.18.0.3/24".into(),
                "2001:2::2/64".into(),
            ],
        ],
        echo: Echo::Show("$ "),
    })?;

    println!("\ndemo: starting the daemon in {NS_B}");
    std::fs::create_dir_all(STATE_DIR)?;
    let log = std::fs::File::create(Path::new(STATE_DIR).join("daemon.log"))?;
    let notify = NotifySocket::bind(Path::new(STATE_DIR).join("notify.sock"))?;
    let mut daemon_cmd = net.b.command(&demux);
    daemon_cmd
        .args([
            "daemon",
            "--iface",
            IF_B,
            "--stats-interval",
            "0",
            "--control",
        ])
        .arg(&control)
        .env(NotifySocket::VAR, notify.path())
        .stdout(Stdio::null())
        .stderr(log);
    println!("$ {}", show(&daemon_cmd));
    let mut daemon = ChildGuard::spawn(&mut daemon_cmd).context("starting the daemon")?;
    std::fs::write(
        Path::new(STATE_DIR).join("daemon.pid"),
        daemon.id().to_string(),
    )?;
    let status = notify
        .wait_ready(&mut daemon, Duration::from_secs(15))
        .with_context(|| format!("the daemon did not come up; its log: {STATE_DIR}/daemon.log"))?;
    println!("   ready: {status}");
    let ctl = control.to_string_lossy().into_owned();
    let demux_s = demux.to_string_lossy().into_owned();
    let demux_gen_s = demux_gen.to_string_lossy().into_owned();

    println!("\ndemo: binding endpoints");
    let mut ids = Vec::new();
    for (name, protocol, local, connect) in ENDPOINTS {
        // In the daemon's namespace: a UDP endpoint's backing socket is bound there.
        let mut args = vec![
            "netns",
            "exec",
            NS_B,
            &demux_s,
            "bind",
            protocol,
            local,
            "--to",
            "count",
            "--persistent",
            "--control",
            &ctl,
        ];
        if let Some(remote) = connect {
            args.extend(["--connect", remote]);
        }
        // One owner's wildcard, address and connected sockets share port 5000: SO_REUSEPORT,
        // as a server's kernel sockets would.
        if protocol == "udp" && !local.contains('/') {
            args.push("--reuseport");
        }
        let id: u32 = sh("ip", &args)?
            .trim()
            .parse()
            .context("reading the descriptor")?;
        println!("   endpoint {id}: {name}");
        ids.push((name, id));
    }

    let no_ports_before = udp_no_ports(&net)?;
    println!("\ndemo: sending traffic from {NS_A}");
    for flow in &FLOWS {
        println!("   {} ({} frames)", flow.what, flow.count);
        let count = flow.count.to_string();
        let flows = flow.flows.to_string();
        let mut args = vec![
            "netns",
            "exec",
            NS_A,
            &demux_gen_s,
            "--iface",
            IF_A,
            "--src",
            flow.src,
            "--dst",
            flow.dst,
            "--dst-mac",
            &net.b_mac,
            "--count",
            &count,
            "--flows",
            &flows,
        ];
        if flow.tcp {
            args.push("--tcp");
        }
        sh("ip", &args)?;
    }
    thread::sleep(Duration::from_millis(300));

    println!("\ndemo: statistics (`demux stats`)");
    print!("{}", sh(&demux_s, &["stats", "--control", &ctl])?);
    let stats: serde_json::Value =
        serde_json::from_str(&sh(&demux_s, &["stats", "--json", "--control", &ctl])?)?;

    println!("\ndemo: checking");
    let mut problems = Vec::new();
    for (name, id) in &ids {
        let want: u64 = FLOWS
            .iter()
            .filter(|f| f.receiver == Some(*name))
            .map(|f| f.count)
            .sum();
        let got = stats["endpoints"]
            .as_array()
            .and_then(|eps| eps.iter().find(|e| e["id"] == *id))
            .and_then(|e| e["delivered"].as_u64())
            .unwrap_or(0);
        let mark = if got == want { "ok" } else { "WRONG" };
        println!("   {name:<10} endpoint {id}: received {got} of {want} ... {mark}");
        if got != want {
            problems.push(format!("{name} received {got}, expected {want}"));
        }
    }
    let unmatched: u64 = FLOWS
        .iter()
        .filter(|f| f.receiver.is_none())
        .map(|f| f.count)
        .sum();
    let no_ports = udp_no_ports(&net)? - no_ports_before;
    let mark = if no_ports == unmatched { "ok" } else { "WRONG" };
    println!(
        "   the kernel saw {no_ports} of {unmatched} unmatched datagrams (UDP NoPorts) ... {mark}"
    );
    if no_ports != unmatched {
        problems.push(format!(
            "the kernel saw {no_ports} unmatched datagrams, expected {unmatched}"
        ));
    }
    if args.keep && problems.is_empty() {
        // Hand the daemon over to `--clean`, which finds it by its PID file; the notify
        // socket stays for its STOPPING=1 and goes with the state directory.
        daemon.keep();
        std::mem::forget(notify);
        net.a.keep();
        net.b.keep();
        std::mem::forget(state);
        println!(
            "\ndemo: the testbed stays up: namespaces {NS_A} and {NS_B}, control socket {ctl}\n\
             try:   {demux_s} stats --control {ctl}\n\
             \x20      cargo run --release --example udp_sink -- {ctl} 0.0.0.0:7000 10\n\
             remove it with: cargo xtask demo --clean"
        );
        return Ok(());
    }
    drop(daemon);
    drop(notify);
    drop(net);
    drop(state);
    ensure!(problems.is_empty(), "demo failed: {}", problems.join("; "));
    println!("\ndemo: OK: every endpoint received exactly its traffic, and the unmatched traffic reached the kernel");
    Ok(())
}

/// The kernel's count of UDP datagrams to ports without a socket, in the receiving namespace.
fn udp_no_ports(net: &VethPair) -> anyhow::Result<u64> {
    net.b
        .udp_counters(false)?
        .get("NoPorts")
        .copied()
        .context("reading Udp NoPorts from /proc/net/snmp")
}
