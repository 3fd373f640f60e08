//! The package test of `cargo xtask test` (root): packages the binaries the test run built
//! (`super::package` with profile `dev`), checks the package's control file and contents,
//! unpacks it into a scratch root (`dpkg -x`), renders every man page in it (`man -l`), and
//! runs the unpacked daemon: once with the packaged configuration as it is (no interface: it
//! must start), once on a veth in namespaces of its own (never the host's interfaces) for one
//! bind and receive round trip through the XDP program, with the CLI from the package. Each
//! daemon is stopped by its PID. Under `strace` (when installed) the second run also records
//! every system call the daemon and the CLI make, and each must be one the DaemonSet's
//! seccomp profile (`dist/k8s/seccomp-demux.json`) allows.
//!
//! Why `dpkg -x` and not `dpkg -i`: installing into the machine would register the package in
//! the host's dpkg database, put files in /usr/bin and /etc of the machine that runs the tests
//! (a developer's, or CI's), and run the maintainer scripts, which reload the host's systemd.
//! A failed run could leave all of that behind. The scratch root holds the same files, and
//! the maintainer scripts are the ones cargo-deb generates for every systemd package.

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io::{Read as _, Write as _},
    net::{TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};

use super::{package, Profile};
use crate::{
    has_program, is_root,
    testbed::{self, ChildGuard, NetNs, NotifySocket, PairSpec, TempDir, VethPair},
};

/// One check's result, as the test summary counts it.
#[derive(Debug)]
pub(crate) enum Outcome {
    Passed,
    Skipped(String),
    Failed(anyhow::Error),
}

/// The files the package must hold (paths as `dpkg-deb --contents` shows them, less `./`).
const EXPECTED_FILES: &[&str] = &[
    "usr/bin/demux",
    "usr/bin/demux-gen",
    "etc/demux/demux.toml",
    "usr/lib/systemd/system/demux.service",
    "usr/share/man/man1/demux.1.gz",
    "usr/share/man/man1/demux-daemon.1.gz",
    "usr/share/man/man1/demux-bind.1.gz",
    "usr/share/man/man1/demux-recv.1.gz",
    "usr/share/man/man1/demux-close.1.gz",
    "usr/share/man/man1/demux-list.1.gz",
    "usr/share/man/man1/demux-stats.1.gz",
    "usr/share/man/man1/demux-reload.1.gz",
    "usr/share/man/man1/demux-detach.1.gz",
    "usr/share/man/man1/demux-completions.1.gz",
    "usr/share/man/man1/demux-gen.1.gz",
    "usr/share/bash-completion/completions/demux",
    "usr/share/zsh/vendor-completions/_demux",
    "usr/share/fish/vendor_completions.d/demux.fish",
];

/// The round trip's endpoint, on the receiving side of the veth.
const LOCAL: &str = "198.18.0.2:7000";
/// Where the round trip's daemon serves its metrics.
const METRICS: &str = "198.18.0.2:9464";

/// Runs the package test and the seccomp coverage check: `(name, outcome)` each.
pub(crate) fn run(install: bool) -> Vec<(&'static str, Outcome)> {
    const PACKAGE: &str = "dist::package_installs_starts_and_steers";
    const SECCOMP: &str = "dist::seccomp_profile_allows_every_system_call";
    if !is_root() {
        let why = "not root: the package test runs the daemon in network namespaces";
        return vec![
            (PACKAGE, Outcome::Skipped(why.into())),
            (SECCOMP, Outcome::Skipped(why.into())),
        ];
    }
    if let Some(missing) = ["dpkg-deb", "man", "ip", "ethtool"]
        .into_iter()
        .find(|program| !has_program(program))
    {
        let why = format!("`{missing}` is not installed");
        return vec![
            (PACKAGE, Outcome::Skipped(why.clone())),
            (SECCOMP, Outcome::Skipped(why)),
        ];
    }
    let traced = has_program("strace");
    match package_test(install, traced) {
        Ok(calls) => {
            let seccomp = match calls {
                None => Outcome::Skipped("`strace` is not installed".into()),
                Some(calls) => match check_seccomp(&calls) {
                    Ok(()) => Outcome::Passed,
                    Err(e) => Outcome::Failed(e),
                },
            };
            vec![(PACKAGE, Outcome::Passed), (SECCOMP, seccomp)]
        }
        Err(e) => vec![
            (PACKAGE, Outcome::Failed(e)),
            (
                SECCOMP,
                Outcome::Skipped("the package test failed before the trace".into()),
            ),
        ],
    }
}

/// The package test; returns the system calls traced, when `traced`.
fn package_test(install: bool, traced: bool) -> anyhow::Result<Option<BTreeSet<String>>> {
    let deb = package(Profile::Dev, install)?;
    check_control(&deb)?;
    check_contents(&deb)?;
    let dir = TempDir::new("dmxpkg")?;
    let root = dir.join("root");
    testbed::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))
        .context("unpacking the package (dpkg -x)")?;
    check_man_pages(&root)?;
    starts_with_packaged_config(&root, &dir)?;
    round_trip(&root, &dir, traced)
}

/// `Package`, `Depends` on the C library, and the configuration file marked a conffile.
fn check_control(deb: &Path) -> anyhow::Result<()> {
    let control = dpkg_deb(&["--field"], deb)?;
    let field = |name: &str| {
        control
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .map(str::to_owned)
    };
    ensure!(
        field("Package").as_deref() == Some("demux"),
        "control: Package is {:?}, not demux:\n{control}",
        field("Package")
    );
    let depends = field("Depends").unwrap_or_default();
    ensure!(
        depends.contains("libc6"),
        "control: Depends `{depends}` does not name libc6 (the binaries link it)"
    );
    let conffiles = dir_of_control(deb)?.join("conffiles");
    let conffiles = fs::read_to_string(&conffiles).context("the package has no conffiles")?;
    ensure!(
        conffiles
            .lines()
            .any(|line| line == "/etc/demux/demux.toml"),
        "conffiles does not hold /etc/demux/demux.toml (an upgrade would overwrite the \
         operator's configuration): {conffiles}"
    );
    Ok(())
}

/// The control area unpacked (`dpkg-deb --control`) into a directory beside the package.
fn dir_of_control(deb: &Path) -> anyhow::Result<PathBuf> {
    let dir = deb.with_extension("control");
    let _ = fs::remove_dir_all(&dir);
    testbed::run(Command::new("dpkg-deb").arg("--control").arg(deb).arg(&dir))?;
    Ok(dir)
}

fn dpkg_deb(args: &[&str], deb: &Path) -> anyhow::Result<String> {
    testbed::run(Command::new("dpkg-deb").args(args).arg(deb))
}

/// Every file of [`EXPECTED_FILES`] is in the package, the binaries executable.
fn check_contents(deb: &Path) -> anyhow::Result<()> {
    let listing = dpkg_deb(&["--contents"], deb)?;
    let files: Vec<(&str, &str)> = listing
        .lines()
        .filter_map(|line| {
            let mode = line.split_whitespace().next()?;
            let path = line.split_whitespace().last()?;
            Some((mode, path.trim_start_matches("./")))
        })
        .collect();
    for expected in EXPECTED_FILES {
        let Some((mode, _)) = files.iter().find(|(_, path)| path == expected) else {
            bail!("the package lacks {expected}; it holds:\n{listing}");
        };
        if expected.starts_with("usr/bin/") {
            ensure!(mode == &"-rwxr-xr-x", "{expected} has mode {mode}, not 755");
        }
    }
    Ok(())
}

/// `man -l` renders each page without a warning, with its name in the NAME section.
fn check_man_pages(root: &Path) -> anyhow::Result<()> {
    let dir = root.join("usr/share/man/man1");
    let mut rendered = 0;
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let page = entry?.path();
        let name = page
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".1.gz"))
            .with_context(|| format!("{} is not a section 1 page", page.display()))?
            .to_owned();
        let output = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&page)
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running man -l {}", page.display()))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let warnings = String::from_utf8_lossy(&output.stderr);
        ensure!(
            output.status.success() && warnings.trim().is_empty(),
            "man -l {} failed ({}): {warnings}",
            page.display(),
            output.status
        );
        let name_line = text
            .lines()
            .skip_while(|line| line.trim() != "NAME")
            .nth(1)
            .unwrap_or("");
        ensure!(
            name_line
                .split_whitespace()
                .take(2)
                .eq([name.as_str(), "-"]),
            "man -l {}: the NAME section says `{name_line}`, not `{name} - …`",
            page.display()
        );
        rendered += 1;
    }
    ensure!(
        rendered >= 9,
        "only {rendered} man pages in {}",
        dir.display()
    );
    println!("dist: man -l rendered {rendered} pages without a warning");
    Ok(())
}

/// The unpacked daemon with the packaged `/etc/demux/demux.toml` (no interface) starts and
/// says READY=1, in a namespace of its own (its control socket moved to the scratch dir).
fn starts_with_packaged_config(root: &Path, dir: &TempDir) -> anyhow::Result<()> {
    let ns = NetNs::unique("dmxq")?;
    let notify = NotifySocket::bind(dir.join("notify-default.sock"))?;
    let control = dir.join("default.sock");
    let mut cmd = ns.command(root.join("usr/bin/demux"));
    cmd.arg("daemon")
        .arg("--config")
        .arg(root.join("etc/demux/demux.toml"))
        .arg("--control")
        .arg(&control)
        .env(NotifySocket::VAR, notify.path())
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("default.log"))?);
    let mut daemon = ChildGuard::spawn(&mut cmd)?;
    let ready = notify.wait_ready(&mut daemon, Duration::from_secs(10));
    let log = fs::read_to_string(dir.join("default.log")).unwrap_or_default();
    ready.with_context(|| format!("the packaged configuration does not start: {log}"))?;
    ensure!(
        control.exists(),
        "no control socket at {}",
        control.display()
    );
    daemon.signal(libc::SIGTERM)?;
    let status = daemon.wait_exit(Duration::from_secs(10))?;
    ensure!(
        status.success(),
        "the daemon exited with {status} on SIGTERM"
    );
    println!("dist: the packaged configuration starts the daemon on no interface");
    Ok(())
}

/// The round trip: daemon on `b`'s veth end, `demux recv` on [`LOCAL`], one datagram from
/// `a`, steered by XDP (the `redirected` verdict counts it), daemon stopped by PID.
fn round_trip(
    root: &Path,
    dir: &TempDir,
    traced: bool,
) -> anyhow::Result<Option<BTreeSet<String>>> {
    let net = VethPair::new(PairSpec::unique(
        "dmxp",
        &[&format!("{}/30", testbed::A_ADDR)],
        &[&format!("{}/30", testbed::B_ADDR)],
    ))?;
    let demux = root.join("usr/bin/demux");
    let control = dir.join("control.sock");
    let notify = NotifySocket::bind(dir.join("notify.sock"))?;
    let trace = dir.join("daemon.strace");
    let mut cmd = if traced {
        let mut cmd = net.b.command("strace");
        cmd.args(["-f", "-qq", "-o"])
            .arg(&trace)
            .arg("--")
            .arg(&demux);
        cmd
    } else {
        net.b.command(&demux)
    };
    cmd.arg("daemon")
        .arg("--config")
        .arg(root.join("etc/demux/demux.toml"))
        .args([
            "--iface",
            &net.b_if,
            "--stats-interval",
            "0",
            "--metrics",
            METRICS,
        ])
        .arg("--control")
        .arg(&control)
        .env(NotifySocket::VAR, notify.path())
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("daemon.log"))?);
    let mut daemon = ChildGuard::spawn(&mut cmd)?;
    let log = || fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    notify
        .wait_ready(&mut daemon, Duration::from_secs(30))
        .with_context(|| format!("the packaged daemon is not ready: {}", log()))?;
    ensure!(
        log().contains(": features on: "),
        "the daemon did not report the kernel's features at start-up: {}",
        log()
    );

    // The CLI from the package, in the daemon's namespace, under strace too.
    let cli = |args: &[&str], out: &str| {
        let mut cmd = if traced {
            let mut cmd = net.b.command("strace");
            cmd.args(["-f", "-qq", "-o"])
                .arg(dir.join(&format!("{out}.strace")))
                .arg("--")
                .arg(&demux);
            cmd
        } else {
            net.b.command(&demux)
        };
        cmd.args(args).arg("--control").arg(&control);
        cmd
    };
    let mut recv = cli(
        &["recv", "udp", LOCAL, "--count", "1", "--timeout", "10"],
        "recv",
    );
    let mut recv = ChildGuard::spawn(recv.stdout(Stdio::piped()).stderr(Stdio::piped()))?;
    // Send until it arrives: `recv` binds after it starts, and a datagram sent before that
    // passes to the kernel (no endpoint yet). Bounded: 50 datagrams, 10 s.
    let payload = b"demux package round trip";
    let deadline = Instant::now() + Duration::from_secs(10);
    let sender = net.a.run_in(|| {
        UdpSocket::bind(format!("{}:40000", testbed::A_ADDR)).context("binding the sender")
    })?;
    let mut sent = 0;
    let status = loop {
        if let Some(status) = recv.child().try_wait()? {
            break status;
        }
        ensure!(
            sent < 50 && Instant::now() < deadline,
            "demux recv got nothing after {sent} datagrams; the daemon said: {}",
            log()
        );
        sender.send_to(payload, LOCAL).context("sending")?;
        sent += 1;
        thread::sleep(Duration::from_millis(200));
    };
    let mut out = String::new();
    let mut err = String::new();
    recv.child()
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut out)?;
    recv.child()
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut err)?;
    ensure!(
        status.success() && out.contains("demux package round trip"),
        "demux recv ({status}) printed `{out}`, said `{err}`"
    );
    let stats = testbed::run(&mut cli(&["stats", "--json"], "stats"))?;
    let stats: serde_json::Value = serde_json::from_str(&stats).context("demux stats --json")?;
    let redirected = stats["verdicts"]["redirected"].as_u64().unwrap_or(0);
    ensure!(
        redirected >= 1,
        "the datagram did not go through XDP (redirected = {redirected}): {stats}"
    );
    testbed::run(&mut cli(&["list"], "list"))?;
    // One scrape of the metrics, from the other side of the veth.
    let scrape = net.a.run_in(|| {
        let mut stream = TcpStream::connect(METRICS).context("connecting to --metrics")?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    })?;
    ensure!(
        scrape.contains("demux_verdicts_total{verdict=\"redirected\"}"),
        "the metrics scrape has no verdicts: {scrape}"
    );

    // Stop the daemon by its PID: under strace, the traced child's.
    let pid = if traced {
        traced_child(daemon.id())?
    } else {
        daemon.id()
    };
    testbed::terminate(pid as i32).with_context(|| format!("SIGTERM to the daemon ({pid})"))?;
    let status = daemon.wait_exit(Duration::from_secs(15))?;
    ensure!(
        status.success(),
        "the daemon exited with {status} on SIGTERM: {}",
        log()
    );
    ensure!(
        !control.exists(),
        "the daemon left its control socket behind"
    );
    println!(
        "dist: the packaged daemon steered a datagram to `demux recv` ({sent} sent, \
         {redirected} redirected) and stopped on SIGTERM"
    );
    if !traced {
        return Ok(None);
    }
    let mut calls = BTreeSet::new();
    for name in ["daemon", "recv", "stats", "list"] {
        let text = fs::read_to_string(dir.join(&format!("{name}.strace")))
            .with_context(|| format!("reading the trace of {name}"))?;
        calls.extend(syscalls(&text));
    }
    Ok(Some(calls))
}

/// The one child of the process `pid` (strace's tracee).
fn traced_child(pid: u32) -> anyhow::Result<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let children = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let pids: Vec<u32> = children
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    match pids.as_slice() {
        [child] => Ok(*child),
        other => bail!("strace ({pid}) has {} children, not one", other.len()),
    }
}

/// The system call names in an `strace -f` log: `PID name(…`, `PID <... name resumed>…`.
fn syscalls(trace: &str) -> BTreeSet<String> {
    trace
        .lines()
        .filter_map(|line| {
            let rest = line.split_once(' ')?.1.trim_start();
            let rest = rest.strip_prefix("<... ").unwrap_or(rest);
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let next = rest[name.len()..].chars().next();
            (!name.is_empty() && matches!(next, Some('(') | Some(' '))).then_some(name)
        })
        .collect()
}

/// Every traced call is one `dist/k8s/seccomp-demux.json` allows.
fn check_seccomp(calls: &BTreeSet<String>) -> anyhow::Result<()> {
    let allowed = super::seccomp_allowed()?;
    let missing: Vec<&String> = calls.iter().filter(|c| !allowed.contains(*c)).collect();
    ensure!(
        missing.is_empty(),
        "dist/k8s/seccomp-demux.json does not allow {} system call(s) the daemon or the CLI \
         made: {missing:?}",
        missing.len()
    );
    println!(
        "dist: the seccomp profile allows all {} system calls the daemon and the CLI made",
        calls.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_system_call_names_from_strace() {
        let trace = "12 bpf(BPF_PROG_LOAD, {...}, 148) = 5\n\
                     13 futex(0x7f, FUTEX_WAIT <unfinished ...>\n\
                     13 <... futex resumed>) = 0\n\
                     12 --- SIGTERM {si_signo=SIGTERM} ---\n\
                     12 +++ exited with 0 +++\n\
                     14 exit_group(0) = ?\n";
        let names: Vec<String> = syscalls(trace).into_iter().collect();
        assert_eq!(names, ["bpf", "exit_group", "futex"]);
    }
}
