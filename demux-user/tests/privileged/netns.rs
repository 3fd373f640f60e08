//! Network fixtures: namespaces joined by a veth pair, and child processes, each an RAII guard
//! that removes what it made when dropped, also when a test fails or panics. Addresses come
//! only from 198.18.0.0/15; nothing touches the root namespace's interfaces.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Child, Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context as _};

/// A network namespace, deleted on drop (which also deletes the interfaces in it).
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(name: String) -> anyhow::Result<Self> {
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        // No IPv6 autoconfiguration chatter: tests count packets exactly.
        ns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"])?;
        ns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"])?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS…`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// `ip netns exec NAME ARGS…`
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        run(self.command(args[0]).args(&args[1..]))
    }

    /// A command that will run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Moves the calling thread into this namespace (use a dedicated thread).
    pub fn enter_thread(&self) -> anyhow::Result<()> {
        let file = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening namespace {}", self.name))?;
        // SAFETY: a valid namespace fd; setns only changes this thread's network namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "setns into {}: {}",
                self.name,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Two namespaces joined by a veth pair: `a` (198.18.0.1/30) sends to
/// `b` (198.18.0.2/30, iface `b_if`), with a static neighbour entry so no ARP is needed.
pub struct VethPair {
    pub a: NetNs,
    pub b: NetNs,
    pub b_if: String,
}

pub const A_ADDR: &str = "198.18.0.1";
pub const B_ADDR: &str = "198.18.0.2";

impl VethPair {
    pub fn new() -> anyhow::Result<Self> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let a = NetNs::new(format!("dmxt-{id}-a"))?;
        let b = NetNs::new(format!("dmxt-{id}-b"))?;
        let (a_if, b_if) = ("dmx-a".to_owned(), "dmx-b".to_owned());
        a.ip(&[
            "link", "add", &a_if, "type", "veth", "peer", "name", &b_if, "netns", &b.name,
        ])?;
        a.ip(&["addr", "add", &format!("{A_ADDR}/30"), "dev", &a_if])?;
        b.ip(&["addr", "add", &format!("{B_ADDR}/30"), "dev", &b_if])?;
        a.ip(&["link", "set", &a_if, "up"])?;
        b.ip(&["link", "set", &b_if, "up"])?;
        let b_mac = b.exec(&["cat", &format!("/sys/class/net/{b_if}/address")])?;
        a.ip(&[
            "neigh",
            "replace",
            B_ADDR,
            "lladdr",
            b_mac.trim(),
            "dev",
            &a_if,
            "nud",
            "permanent",
        ])?;
        Ok(Self { a, b, b_if })
    }
}

/// A directory of the test's own (control sockets, sink sockets), removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> anyhow::Result<Self> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("demux-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (by its PID) and reaped on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs a command to completion; fails with its stderr when it fails.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!(
            "{cmd:?} failed ({status}): {}",
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}
