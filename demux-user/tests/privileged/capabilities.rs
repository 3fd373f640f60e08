//! Least privilege, end to end: the daemon started with a bounding set of exactly its load-time
//! set (`setpriv`), or with the capability settings of `dist/demux.service` (ambient
//! capabilities only, `noroot` securebits), serves a bind and delivers to a
//! non-root caller's `unix:` sink with that caller's credentials; once ready, every one of its
//! threads holds exactly the run-time set, with `no_new_privs`; and with any one capability of
//! the load-time set missing it refuses to start with one line naming it, before it attaches
//! anything.

use std::{
    os::unix::{fs::PermissionsExt as _, net::UnixDatagram},
    time::Duration,
};

use anyhow::{ensure, Context as _};
use demux::{
    control::{Request, Response},
    daemon::privileges::{set_of, LOAD_TIME, RUN_TIME},
    sys::caps::{CapSet, Capability},
    testing::testbed::{TempDir, VethPair, B_ADDR},
};

use crate::{
    daemon::{RunningDaemon, DAEMON},
    endpoints::{send, settle},
};

pub(crate) fn tests() -> Vec<libtest_mimic::Trial> {
    trials![
        the_load_time_set_suffices_and_the_run_time_set_is_kept,
        the_units_capability_settings_suffice,
        a_missing_capability_is_one_line_naming_it,
    ]
}

/// `setpriv` arguments that exec the next program with a bounding set of exactly `set` (and
/// nothing inheritable): as root, that program's permitted and effective sets are `set`.
fn setpriv(set: CapSet) -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all,{}", setpriv_list(set)),
        "--inh-caps=-all".into(),
    ]
}

/// `set` as setpriv's capability list: `+bpf,+net_admin,…`.
fn setpriv_list(set: CapSet) -> String {
    let caps: Vec<String> = set
        .iter()
        .map(|cap| {
            format!(
                "+{}",
                cap.to_string().trim_start_matches("CAP_").to_lowercase()
            )
        })
        .collect();
    caps.join(",")
}

/// `Name:\t<hex>` of a `/proc/…/status` file as a set.
fn status_set(status: &str, name: &str) -> anyhow::Result<CapSet> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .with_context(|| format!("no {name} in the status"))?;
    Ok(CapSet(u64::from_str_radix(line.trim(), 16)?))
}

/// `setpriv` arguments that set up what `dist/demux.service` asks systemd for: uid 0 without
/// root's automatic capabilities (`SecureBits=noroot-locked`), the load-time set as bounding,
/// inheritable and ambient set (`CapabilityBoundingSet=`, `AmbientCapabilities=`), and
/// `NoNewPrivileges=yes`.
fn setpriv_as_the_unit(set: CapSet) -> Vec<String> {
    let caps = setpriv_list(set);
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all,{caps}"),
        format!("--inh-caps=-all,{caps}"),
        format!("--ambient-caps=-all,{caps}"),
        "--securebits=+noroot,+noroot_locked".into(),
        "--no-new-privs".into(),
    ]
}

pub(crate) fn the_load_time_set_suffices_and_the_run_time_set_is_kept() -> anyhow::Result<()> {
    serves_with_the_run_time_set(&setpriv(set_of(&LOAD_TIME)))
}

/// The unit's way: no capability from being uid 0, only the ambient ones.
pub(crate) fn the_units_capability_settings_suffice() -> anyhow::Result<()> {
    serves_with_the_run_time_set(&setpriv_as_the_unit(set_of(&LOAD_TIME)))
}

/// Starts the daemon through `wrapper`, checks every thread holds the run-time set, and runs a
/// bind and receive round trip as nobody into a `unix:` sink.
fn serves_with_the_run_time_set(wrapper: &[String]) -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    // A control group exercises CAP_CHOWN; nobody's unix: sink exercises CAP_SETUID/SETGID.
    let daemon = RunningDaemon::start_under(&net, &dir, &wrapper, &["--control-group", "nogroup"])?;

    // Every thread of the daemon, the queue workers included, holds the run-time set.
    let pid = daemon.child.id();
    let run_time = set_of(&RUN_TIME);
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?.path();
        let status = std::fs::read_to_string(task.join("status"))?;
        let name = std::fs::read_to_string(task.join("comm"))?;
        let name = name.trim();
        for field in ["CapEff:", "CapPrm:"] {
            let set = status_set(&status, field)?;
            ensure!(
                set == run_time,
                "thread {name}: {field} {set}, expected the run-time set {run_time}"
            );
        }
        for field in ["CapInh:", "CapAmb:"] {
            let set = status_set(&status, field)?;
            ensure!(set == CapSet(0), "thread {name}: {field} {set}");
        }
        ensure!(
            status.lines().any(|l| l == "NoNewPrivs:\t1"),
            "thread {name}: no_new_privs is not set"
        );
        threads += 1;
    }
    ensure!(threads >= 2, "expected the main thread and a queue worker");
    ensure!(
        !run_time.has(Capability::PERFMON) && !run_time.has(Capability::CHOWN),
        "the run-time set should drop what only start-up needs"
    );
    // The log reaches the test through a reader thread: wait (bounded) for the line.
    let mut said = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let kept = |l: &String| l.contains("capabilities lowered") && l.contains(&run_time.to_string());
    while !said.iter().any(kept) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match daemon.log.recv_timeout(left) {
            Ok(line) => said.push(line),
            Err(_) => break,
        }
    }
    ensure!(
        said.iter().any(kept),
        "no log line with the capabilities kept: {said:#?}"
    );
    // The maps' kernel memory is read without CAP_SYS_ADMIN (through the daemon's own map
    // descriptors, not by id), so the start-up line has a figure, and nothing warned.
    ensure!(
        said.iter().any(|l| l.contains("maps sized")
            && !l.contains("kernel_memory_mib=\"0.0\"")
            && l.contains("kernel_memory_mib")),
        "no start-up line with the maps' kernel memory: {said:#?}"
    );
    ensure!(
        !said.iter().any(|l| l.contains(" WARN ")),
        "a warning at start under the run-time set: {said:#?}"
    );

    // Bind and receive as nobody, into a unix: sink: the records carry nobody's credentials,
    // which the daemon may only claim with CAP_SETUID and CAP_SETGID.
    let socket = dir.join("nobody.sock");
    let receiver = UnixDatagram::bind(&socket)?;
    receiver.set_read_timeout(Some(Duration::from_secs(3)))?;
    demux::sys::scm::set_passcred(&receiver)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
    let local = format!("{B_ADDR}:9700");
    let output = daemon
        .nobody_cli(&[
            "bind",
            "udp",
            &local,
            "--to",
            &format!("unix:{}", socket.display()),
            "--persistent",
        ])
        .output()?;
    ensure!(
        output.status.success(),
        "bind as nobody: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    send(&net.a, 41000, 9700, 3)?;
    let mut buf = [0u8; 2048];
    for i in 0..3 {
        let (n, creds) = demux::sys::scm::recv_with_credentials(&receiver, &mut buf)
            .with_context(|| format!("record {i} of 3 did not arrive on nobody's unix: sink"))?;
        ensure!(demux::record::decode(&buf[..n]).is_ok(), "not a record");
        ensure!(
            matches!(creds, Some(c) if c.uid == 65534 && c.gid == 65534),
            "record {i} came as {creds:?}, not as nobody"
        );
    }
    // Steered by XDP (not only caught by the backing socket): the program and the map writes
    // of the bind worked with the lowered set.
    let mut redirected = 0;
    settle(|| {
        let mut client = daemon.client()?;
        let Response::Endpoints { endpoints } = client.call(Request::List)? else {
            anyhow::bail!("list: not endpoints");
        };
        redirected = endpoints
            .iter()
            .find(|e| e.local == local)
            .map_or(0, |e| e.redirected);
        Ok(redirected == 3)
    })?;
    ensure!(redirected == 3, "{redirected} of 3 datagrams were steered");
    Ok(())
}

pub(crate) fn a_missing_capability_is_one_line_naming_it() -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    let ns = &net.b;
    let dir = TempDir::new("demux-test")?;
    for missing in LOAD_TIME {
        let set = set_of(&LOAD_TIME).without(CapSet::of(&[missing.cap]));
        let wrapper = setpriv(set);
        let output = ns
            .command(&wrapper[0])
            .args(&wrapper[1..])
            .arg(DAEMON)
            .args(["daemon", "--iface", &net.b_if, "--control"])
            .arg(dir.join("control.sock"))
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let want = format!(
            "missing capability {}: needed for {}",
            missing.cap, missing.step
        );
        ensure!(
            output.status.code() == Some(1) && lines.len() == 1 && lines[0].contains(&want),
            "without {}: exit {:?}, expected one line with `{want}`; it said: {stderr}",
            missing.cap,
            output.status.code()
        );
        ensure!(
            !ns.ip(&["link", "show", &net.b_if])?.contains("xdp"),
            "without {}: something was attached before the check",
            missing.cap
        );
    }
    Ok(())
}
