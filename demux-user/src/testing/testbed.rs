//! The network testbed that the privileged tests, the throughput benchmark and `cargo xtask
//! demo` build on: network namespaces ([`NetNs`]), a veth pair joining two of them
//! ([`VethPair`]), scratch directories ([`TempDir`]), child processes ([`ChildGuard`]) and the
//! socket a daemon reports readiness on ([`NotifySocket`]).
//!
//! Rules it keeps (design §6): addresses only from 198.18.0.0/15 and 2001:2::/48
//! ([`check_test_address`]); every interface is created inside a namespace of its own, never
//! in the root namespace; names are unique per process and call ([`unique_name`]) so that
//! tests run in parallel; every guard removes what it made on drop, also when a test fails or
//! panics; processes are stopped by their PID, and only those this process started. For a
//! program interrupted by Ctrl-C, [`remove_on_signal`] removes whatever is still up.
//!
//! It depends on std, libc and anyhow only: the xtask, which cannot depend on demux-user
//! (it installs the toolchain demux-user's build script needs), includes this file as source
//! (`#[path = "../../demux-user/src/testing/testbed.rs"]`).

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fs::File,
    net::IpAddr,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::{net::UnixDatagram, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex, PoisonError,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};

/// The longest interface name the kernel takes (`IFNAMSIZ` less the terminating NUL).
pub const IFNAME_MAX: usize = 15;

/// How long a [`ChildGuard`] waits after SIGTERM before it sends SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Sends SIGTERM to `pid`. Only for a process the caller started and identified (the demo's
/// daemon, by its PID file and command line): never a search by name.
pub fn terminate(pid: i32) -> std::io::Result<()> {
    // SAFETY: kill takes plain integers; the caller vouches for the PID.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A name that no other call in this process, and no other process, gets: `prefix`, this
/// process's PID and a counter, in hex (`dmxt1f2e3-0`). With a prefix of at most 4 bytes and
/// one more byte appended, it fits an interface name ([`IFNAME_MAX`]).
pub fn unique_name(prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}-{n:x}", std::process::id())
}

/// Fails unless `cidr` (`ADDRESS/LEN` or `ADDRESS`) lies in 198.18.0.0/15 (IPv4) or
/// 2001:2::/48 (IPv6), the benchmarking ranges: a testbed never uses any other address.
pub fn check_test_address(cidr: &str) -> anyhow::Result<IpAddr> {
    let (addr, len) = match cidr.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (cidr, None),
    };
    let addr: IpAddr = addr
        .parse()
        .with_context(|| format!("`{cidr}` is not an address"))?;
    let (min_len, inside) = match addr {
        IpAddr::V4(v4) => (15, v4.octets()[0] == 198 && v4.octets()[1] & 0xfe == 18),
        IpAddr::V6(v6) => (48, v6.segments()[..3] == [0x2001, 2, 0]),
    };
    let len_ok = len.is_none_or(|len| len.parse::<u8>().is_ok_and(|len| len >= min_len));
    ensure!(
        inside && len_ok,
        "`{cidr}` is outside 198.18.0.0/15 and 2001:2::/48, the only ranges a testbed uses"
    );
    Ok(addr)
}

/// Whether the commands that build a testbed are printed, and after what prefix (`"$ "`).
#[derive(Clone, Copy, Debug, Default)]
pub enum Echo {
    /// Run them silently.
    #[default]
    Quiet,
    /// Print each command line after this prefix before running it.
    Show(&'static str),
}

impl Echo {
    fn print(self, cmd: &Command) {
        if let Echo::Show(prefix) = self {
            println!("{prefix}{}", command_line(cmd));
        }
    }
}

/// A command as one line: its program and arguments.
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|word| word.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command to completion: its stdout, or an error with its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting `{}`", command_line(cmd)))?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            command_line(cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// What is up now, for [`remove_on_signal`].
struct Live {
    namespaces: Vec<String>,
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
}

static LIVE: Mutex<Live> = Mutex::new(Live {
    namespaces: Vec::new(),
    pids: Vec::new(),
    dirs: Vec::new(),
});

fn live() -> std::sync::MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Blocks SIGINT and SIGTERM in the calling thread and in every thread it starts later, and
/// leaves one thread waiting for them: on either, it stops every child still held by a
/// [`ChildGuard`] (SIGTERM by PID), deletes every namespace and [`TempDir`] still up, and exits
/// with status 130. Call it before any other thread starts. Children spawned through
/// [`ChildGuard::spawn`] get the signals back.
pub fn remove_on_signal(program: &'static str) {
    // SAFETY: a zeroed signal set filled by sigemptyset/sigaddset, masked for this thread (and
    // inherited by the threads it starts).
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    thread::spawn(move || {
        let mut signal = 0;
        // SAFETY: waits for a signal of the set blocked above.
        unsafe { libc::sigwait(&set, &mut signal) };
        eprintln!("\n{program}: interrupted; removing the testbed");
        let Live {
            namespaces,
            pids,
            dirs,
        } = std::mem::replace(
            &mut *live(),
            Live {
                namespaces: Vec::new(),
                pids: Vec::new(),
                dirs: Vec::new(),
            },
        );
        for pid in pids {
            // SAFETY: signalling a child this process started and has not reaped, by its PID.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        thread::sleep(Duration::from_millis(500));
        for name in namespaces {
            delete_netns(&name);
        }
        for dir in dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        std::process::exit(130);
    });
}

/// A network namespace (`ip netns add`), deleted on drop with every interface in it.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    echo: Echo,
}

impl NetNs {
    /// Creates namespace `name` with its loopback up.
    pub fn new(name: &str, echo: Echo) -> anyhow::Result<Self> {
        let mut add = Command::new("ip");
        add.args(["netns", "add", name]);
        echo.print(&add);
        run(&mut add)?;
        live().namespaces.push(name.to_owned());
        let ns = Self {
            name: name.to_owned(),
            echo,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Creates a namespace with a [`unique_name`] (`prefix` at most 4 bytes), quietly.
    pub fn unique(prefix: &str) -> anyhow::Result<Self> {
        Self::new(&unique_name(prefix), Echo::Quiet)
    }

    /// The namespace's name (`/run/netns/NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the commands run from now on are printed.
    pub fn set_echo(&mut self, echo: Echo) {
        self.echo = echo;
    }

    /// `ip -n NAME ARGS…`: its stdout.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(args);
        self.echo.print(&cmd);
        run(&mut cmd)
    }

    /// `ip netns exec NAME ARGS…`: its stdout.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let (program, rest) = args.split_first().context("no command to run")?;
        let mut cmd = self.command(program);
        cmd.args(rest);
        self.echo.print(&cmd);
        run(&mut cmd)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME PROGRAM`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// The contents of a file as seen inside the namespace (`/sys/class/net/…`,
    /// `/proc/net/…`), trimmed.
    pub fn read(&self, path: &str) -> anyhow::Result<String> {
        Ok(run(self.command("cat").arg(path))?.trim().to_owned())
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Turns IPv6 off for every interface, present and future: no autoconfiguration or
    /// neighbour discovery chatter on a link where packets are counted exactly.
    pub fn disable_ipv6(&self) -> anyhow::Result<()> {
        for scope in ["all", "default"] {
            self.sysctl(&format!("net.ipv6.conf.{scope}.disable_ipv6"), "1")?;
        }
        Ok(())
    }

    /// Moves the calling thread into this namespace (use a thread of its own: it stays there).
    pub fn enter_thread(&self) -> anyhow::Result<()> {
        enter_netns(&self.name)
    }

    /// Runs `f` on a thread of its own inside this namespace, as uid and gid `id` with no
    /// supplementary groups, and returns what it returns: an unprivileged caller in-process.
    /// Only that thread changes credentials (raw `setresgid`/`setresuid`, not the C library's
    /// process-wide ones); sockets it connects carry `id` (SO_PEERCRED).
    pub fn run_as<T: Send>(
        &self,
        id: u32,
        f: impl FnOnce() -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        self.run_in(|| {
            drop_thread_credentials(id)?;
            f()
        })
    }

    /// Runs `f` on a thread of its own inside this namespace and returns what it returns.
    pub fn run_in<T: Send>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter_thread()?;
                    f()
                })
                .join()
                .unwrap_or_else(|_| bail!("the thread in namespace {} panicked", self.name))
        })
    }

    /// The kernel's UDP counters in this namespace (`/proc/net/snmp`, or `snmp6` for IPv6),
    /// under the IPv4 names: `InDatagrams`, `NoPorts`, `InErrors`, `RcvbufErrors`, ….
    pub fn udp_counters(&self, ipv6: bool) -> anyhow::Result<BTreeMap<String, u64>> {
        if ipv6 {
            let text = self.read("/proc/net/snmp6")?;
            return Ok(text
                .lines()
                .filter_map(|line| {
                    let (name, value) = line.split_once(char::is_whitespace)?;
                    Some((
                        name.strip_prefix("Udp6")?.to_owned(),
                        value.trim().parse().ok()?,
                    ))
                })
                .collect());
        }
        let text = self.read("/proc/net/snmp")?;
        let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
        let (names, values) = (udp.next().unwrap_or(""), udp.next().unwrap_or(""));
        Ok(names
            .split_whitespace()
            .zip(values.split_whitespace())
            .filter_map(|(n, v)| Some((n.to_owned(), v.parse().ok()?)))
            .collect())
    }

    /// Keeps the namespace when the guard goes (`demo --keep`); returns its name.
    pub fn keep(self) -> String {
        let name = self.name.clone();
        live().namespaces.retain(|n| *n != name);
        std::mem::forget(self);
        name
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let mut del = Command::new("ip");
        del.args(["netns", "del", &self.name]);
        self.echo.print(&del);
        delete_netns(&self.name);
        live().namespaces.retain(|n| *n != self.name);
    }
}

/// Moves the calling thread into namespace `name` (`setns`); other threads stay where they are.
pub fn enter_netns(name: &str) -> anyhow::Result<()> {
    let file =
        File::open(format!("/run/netns/{name}")).with_context(|| format!("namespace {name}"))?;
    // SAFETY: a valid namespace fd; setns changes only the calling thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns into {name}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the calling thread uid and gid `id` with no supplementary groups, for good.
fn drop_thread_credentials(id: u32) -> anyhow::Result<()> {
    // SAFETY: raw credential syscalls with integer arguments and a null group list; they change
    // only the calling thread, which never gets root back.
    let failed = unsafe {
        libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
            || libc::syscall(libc::SYS_setresgid, id, id, id) != 0
            || libc::syscall(libc::SYS_setresuid, id, id, id) != 0
    };
    if failed {
        bail!("becoming uid {id}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Deletes namespace `name` if it exists (`ip netns del`), with every interface in it.
pub fn delete_netns(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// How to build a [`VethPair`]: names, and addresses (`ADDRESS/LEN`) per side.
#[derive(Clone, Debug)]
pub struct PairSpec {
    /// Namespaces `a` and `b`.
    pub namespaces: [String; 2],
    /// The veth ends, `a`'s and `b`'s (at most [`IFNAME_MAX`] bytes).
    pub ifaces: [String; 2],
    /// Addresses of `a`'s and `b`'s end. A side without an IPv6 address gets IPv6 turned off.
    pub addrs: [Vec<String>; 2],
    /// Whether the commands are printed.
    pub echo: Echo,
    /// Rx and tx queues of each veth end (`numrxqueues`, `numtxqueues`); 1 is the kernel's
    /// default.
    pub queues: u32,
}

impl PairSpec {
    /// Unique names from `prefix` (at most 4 bytes): namespaces and interfaces `NAMEa`, `NAMEb`.
    pub fn unique(prefix: &str, a_addrs: &[&str], b_addrs: &[&str]) -> Self {
        let base = unique_name(prefix);
        let names = [format!("{base}a"), format!("{base}b")];
        Self {
            namespaces: names.clone(),
            ifaces: names,
            addrs: [a_addrs, b_addrs].map(|addrs| addrs.iter().map(|&a| a.to_owned()).collect()),
            echo: Echo::Quiet,
            queues: 1,
        }
    }
}

/// Two namespaces joined by a veth pair, `a_if` in `a` and `b_if` in `b`, both up, with their
/// addresses, TX checksum offload off on both ends (what their sockets send carries full
/// checksums), and static neighbour entries for each side's first IPv4 address (no ARP).
/// Dropping it deletes both namespaces, and with them the veth.
#[derive(Debug)]
pub struct VethPair {
    /// The sending side.
    pub a: NetNs,
    /// The receiving side.
    pub b: NetNs,
    /// `a`'s end of the veth.
    pub a_if: String,
    /// `b`'s end of the veth.
    pub b_if: String,
    /// `a_if`'s MAC address (`aa:bb:…`).
    pub a_mac: String,
    /// `b_if`'s MAC address.
    pub b_mac: String,
}

/// The sender's address in [`VethPair::standard`].
pub const A_ADDR: &str = "198.18.0.1";
/// The receiver's address in [`VethPair::standard`].
pub const B_ADDR: &str = "198.18.0.2";

impl VethPair {
    /// Builds the pair `spec` describes.
    pub fn new(spec: PairSpec) -> anyhow::Result<Self> {
        let PairSpec {
            namespaces,
            ifaces,
            addrs,
            echo,
            queues,
        } = spec;
        for iface in &ifaces {
            ensure!(
                !iface.is_empty() && iface.len() <= IFNAME_MAX,
                "interface name `{iface}` is longer than {IFNAME_MAX} bytes"
            );
        }
        let mut firsts = [None, None];
        for (side, list) in addrs.iter().enumerate() {
            for addr in list {
                if let IpAddr::V4(v4) = check_test_address(addr)? {
                    firsts[side].get_or_insert(v4);
                }
            }
        }
        let a = NetNs::new(&namespaces[0], echo)?;
        let b = NetNs::new(&namespaces[1], echo)?;
        for (ns, list) in [(&a, &addrs[0]), (&b, &addrs[1])] {
            if !list.iter().any(|addr| addr.contains(':')) {
                ns.disable_ipv6()?;
            }
        }
        let [a_if, b_if] = ifaces;
        let queues = queues.max(1).to_string();
        a.ip(&[
            "link",
            "add",
            &a_if,
            "numrxqueues",
            &queues,
            "numtxqueues",
            &queues,
            "type",
            "veth",
            "peer",
            "name",
            &b_if,
            "numrxqueues",
            &queues,
            "numtxqueues",
            &queues,
            "netns",
            &b.name,
        ])?;
        for (ns, iface, list) in [(&a, &a_if, &addrs[0]), (&b, &b_if, &addrs[1])] {
            // With TX checksum offload on, veth hands what local sockets send over with
            // partial checksums (CHECKSUM_PARTIAL: only the pseudo-header's sum in the field),
            // which demux, checking checksums as the kernel does, drops as bad.
            ns.exec(&["ethtool", "-K", iface, "tx", "off"])
                .context("turning TX checksum offload off (ethtool; `apt-get install ethtool`)")?;
            for addr in list {
                let mut args = vec!["addr", "add", addr.as_str(), "dev", iface.as_str()];
                if addr.contains(':') {
                    // No duplicate address detection: the address is usable at once.
                    args.push("nodad");
                }
                ns.ip(&args)?;
            }
            ns.ip(&["link", "set", iface, "up"])?;
        }
        let a_mac = a.read(&format!("/sys/class/net/{a_if}/address"))?;
        let b_mac = b.read(&format!("/sys/class/net/{b_if}/address"))?;
        for (ns, iface, peer, mac) in [
            (&a, &a_if, firsts[1], &b_mac),
            (&b, &b_if, firsts[0], &a_mac),
        ] {
            if let Some(peer) = peer {
                ns.ip(&[
                    "neigh",
                    "replace",
                    &peer.to_string(),
                    "lladdr",
                    mac,
                    "dev",
                    iface,
                    "nud",
                    "permanent",
                ])?;
            }
        }
        Ok(Self {
            a,
            b,
            a_if,
            b_if,
            a_mac,
            b_mac,
        })
    }

    /// The tests' pair: unique names, `a` 198.18.0.1/30 and `b` 198.18.0.2/30, IPv6 off.
    pub fn standard() -> anyhow::Result<Self> {
        Self::new(PairSpec::unique(
            "dmxt",
            &[&format!("{A_ADDR}/30")],
            &[&format!("{B_ADDR}/30")],
        ))
    }
}

/// A directory of this process's own under the temp dir (control sockets, logs, sinks),
/// removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/PREFIX-<unique>`.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(unique_name(&format!("{prefix}-")));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        live().dirs.push(path.clone());
        Ok(Self(path))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        live().dirs.retain(|d| *d != self.0);
    }
}

/// A child process this process started: on drop it is stopped by its PID (SIGTERM, then
/// SIGKILL after [`STOP_GRACE`]) and reaped, unless it has exited already.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    /// Spawns `cmd`, with SIGINT and SIGTERM unblocked in the child even where this process
    /// blocks them ([`remove_on_signal`]).
    pub fn spawn(cmd: &mut Command) -> anyhow::Result<Self> {
        // SAFETY: between fork and exec the closure calls only async-signal-safe functions
        // (sigemptyset, pthread_sigmask) on a set of its own.
        unsafe {
            cmd.pre_exec(|| {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting `{}`", command_line(cmd)))?;
        live().pids.push(child.id());
        Ok(Self { child })
    }

    /// As [`ChildGuard::spawn`], passing `fds` as the service manager passes its file
    /// descriptor store (sd_listen_fds(3)): at descriptors 3, 4, … of the child, close-on-exec
    /// cleared, with `LISTEN_FDS` and `LISTEN_FDNAMES` set here. `LISTEN_PID` must be the
    /// child's own pid after every exec: `cmd` must set it itself (a wrapper such as
    /// `sh -c 'LISTEN_PID=$$ exec "$@"'`, [`LISTEN_PID_WRAPPER`]).
    pub fn spawn_with_fds(cmd: &mut Command, fds: &[(String, OwnedFd)]) -> anyhow::Result<Self> {
        let names: Vec<&str> = fds.iter().map(|(name, _)| name.as_str()).collect();
        cmd.env("LISTEN_FDS", fds.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
        let raw: Vec<i32> = fds.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        // SAFETY: between fork and exec the closure calls only async-signal-safe functions
        // (fcntl, dup2) on descriptors of its own copy of the table: first every source moves
        // above any target (close-on-exec copies), then each goes to its place 3 + k, where
        // dup2 clears close-on-exec.
        unsafe {
            cmd.pre_exec(move || {
                let mut high = [0i32; 1024];
                if raw.len() > high.len() {
                    return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
                }
                for (k, fd) in raw.iter().enumerate() {
                    let copy = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3 + raw.len() as i32 + 64);
                    if copy < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    high[k] = copy;
                }
                for (k, copy) in high[..raw.len()].iter().enumerate() {
                    if libc::dup2(*copy, 3 + k as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Self::spawn(cmd)
    }

    /// The process's PID.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The process, for its pipes and `try_wait`.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Sends `signal` to the process by its PID, unless it has exited (and been reaped).
    pub fn signal(&mut self, signal: i32) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            // SAFETY: signalling the process this guard started and has not reaped, by its PID.
            if unsafe { libc::kill(self.child.id() as i32, signal) } != 0 {
                bail!(
                    "signal {signal} to {}: {}",
                    self.child.id(),
                    std::io::Error::last_os_error()
                );
            }
        }
        Ok(())
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.forget_pid();
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "process {} did not exit within {limit:?}",
                self.child.id()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the process: SIGTERM, up to `grace` to exit, then SIGKILL; reaps it.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let _ = self.signal(libc::SIGTERM);
        let status = self.wait_exit(grace).ok().or_else(|| {
            let _ = self.child.kill();
            self.child.wait().ok()
        });
        self.forget_pid();
        status
    }

    /// Leaves the process running when the guard goes (`demo --keep`); returns its PID.
    pub fn keep(mut self) -> u32 {
        self.forget_pid();
        let pid = self.child.id();
        std::mem::forget(self);
        pid
    }

    fn forget_pid(&mut self) {
        let pid = self.child.id();
        live().pids.retain(|p| *p != pid);
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(STOP_GRACE);
    }
}

/// One `recvmsg` on `socket` into `buf`, the descriptors that came along (SCM_RIGHTS, as many
/// as the control buffer holds) added to `fds`, close-on-exec. (This file is also built into xtask, without the
/// library's `sys` module.)
fn recv_with_fds(
    socket: &UnixDatagram,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> std::io::Result<usize> {
    use std::os::fd::FromRawFd as _;
    let mut control = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the fields set point at live buffers of the stated
    // sizes (the control buffer is u64-aligned, as cmsg headers need, and holds MAX fds).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: recvmsg into the buffers above; MSG_CMSG_CLOEXEC makes the fds close-on-exec.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: walking the control messages the kernel wrote, within msg_controllen; each
    // SCM_RIGHTS payload is an array of descriptors now ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<i32>();
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for k in 0..len / std::mem::size_of::<i32>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(k))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(n as usize)
}

/// A program and arguments that run the rest of the command line with `LISTEN_PID` set to
/// its own pid, kept through `exec` (as `ip netns exec` keeps it): what sd_listen_fds(3)
/// checks.
pub const LISTEN_PID_WRAPPER: [&str; 4] = [
    "sh",
    "-c",
    "LISTEN_PID=$$; export LISTEN_PID; exec \"$@\"",
    "sh",
];

/// The service manager's file descriptor store as the tests emulate it, per sd_notify(3):
/// `FDSTORE=1` with `FDNAME=` keeps the message's descriptors under that name,
/// `FDSTOREREMOVE=1` drops those of the name, and the descriptor of `BARRIER=1` is closed at
/// once (which answers the barrier). The next start passes what it holds
/// ([`ChildGuard::spawn_with_fds`]).
#[derive(Debug, Default)]
pub struct FdStore {
    /// The stored descriptors and their names, in the order they came.
    pub fds: Vec<(String, OwnedFd)>,
    /// `FDSTOREREMOVE=1` messages seen.
    pub removals: u32,
}

impl FdStore {
    /// Applies one message and its descriptors.
    fn apply(&mut self, message: &str, fds: Vec<OwnedFd>) {
        let has = |line: &str| message.lines().any(|l| l == line);
        let name = message
            .lines()
            .find_map(|l| l.strip_prefix("FDNAME="))
            .unwrap_or("stored")
            .to_owned();
        if has("FDSTORE=1") {
            self.fds
                .extend(fds.into_iter().map(|fd| (name.clone(), fd)));
        } else if has("FDSTOREREMOVE=1") {
            self.removals += 1;
            self.fds.retain(|(n, _)| *n != name);
        }
        // Anything else's descriptors (BARRIER=1's pipe) close here.
    }

    /// The names held, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.fds.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        names
    }
}

/// A Unix datagram socket a daemon reports to by the sd_notify protocol: start the daemon with
/// `NOTIFY_SOCKET` set to [`NotifySocket::path`], then [`NotifySocket::wait_ready`]. A path,
/// not an abstract name: abstract names belong to a network namespace, and the daemon runs in
/// another one. The socket file goes on drop.
#[derive(Debug)]
pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// The environment variable to pass the path in.
    pub const VAR: &'static str = "NOTIFY_SOCKET";

    /// Binds the socket at `path` (replacing a stale file).
    pub fn bind(path: PathBuf) -> anyhow::Result<Self> {
        let _ = std::fs::remove_file(&path);
        let socket =
            UnixDatagram::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(Self { socket, path })
    }

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `limit` for a message with `READY=1` and returns its `STATUS=` value (empty
    /// without one). Fails at once if `child` exits first.
    pub fn wait_ready(&self, child: &mut ChildGuard, limit: Duration) -> anyhow::Result<String> {
        self.wait_for(child, "READY=1", limit)
    }

    /// Reads and forgets every message waiting (up to 1000), so that the next wait sees only
    /// what comes after.
    pub fn drain(&self) {
        let mut buf = [0u8; 4096];
        for _ in 0..1000 {
            if self.socket.recv(&mut buf).is_err() {
                break;
            }
        }
    }

    /// Serves `store` (every message and its descriptors, [`FdStore`]) until `child` exits or
    /// sends `until` (a line such as `READY=1`; `None`: until it exits), at most `limit`.
    /// Returns the exit status if it exited.
    pub fn serve_store(
        &self,
        store: &mut FdStore,
        child: &mut ChildGuard,
        until: Option<&str>,
        limit: Duration,
    ) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        let mut exited = None;
        while Instant::now() < deadline {
            if exited.is_none() {
                if let Some(status) = child.child.try_wait()? {
                    child.forget_pid();
                    exited = Some(status);
                }
            }
            let mut fds = Vec::new();
            let n = match recv_with_fds(&self.socket, &mut buf, &mut fds) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    // Exited and nothing left to read.
                    if let Some(status) = exited {
                        ensure!(
                            until.is_none(),
                            "the process exited ({status}) before it reported {until:?}"
                        );
                        return Ok(Some(status));
                    }
                    continue;
                }
                Err(e) => return Err(e).context("reading the notify socket"),
            };
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            store.apply(&message, fds);
            if until.is_some_and(|line| message.lines().any(|l| l == line)) {
                return Ok(exited);
            }
        }
        bail!(
            "the process did not {} within {limit:?}",
            until.map_or("exit".to_owned(), |l| format!("report {l}"))
        )
    }

    /// Waits up to `limit` for a message with the line `line` (`RELOADING=1`, …), skipping
    /// others, and returns its `STATUS=` value (empty without one). Fails at once if `child`
    /// exits first.
    pub fn wait_for(
        &self,
        child: &mut ChildGuard,
        line: &str,
        limit: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Some(status) = child.child.try_wait()? {
                child.forget_pid();
                bail!("the process exited ({status}) before it reported {line}");
            }
            let n = match self.socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e).context("reading the notify socket"),
            };
            let message = String::from_utf8_lossy(&buf[..n]);
            if message.lines().any(|l| l == line) {
                return Ok(message
                    .lines()
                    .find_map(|l| l.strip_prefix("STATUS="))
                    .unwrap_or("")
                    .to_owned());
            }
        }
        bail!("no {line} within {limit:?}")
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_fit_an_interface_name_and_differ() {
        let (first, second) = (unique_name("dmxt"), unique_name("dmxt"));
        assert_ne!(first, second);
        assert!(format!("{first}a").len() <= IFNAME_MAX, "{first}");
    }

    #[test]
    fn only_the_benchmarking_ranges_are_test_addresses() {
        for good in [
            "198.18.0.1/30",
            "198.19.255.254",
            "2001:2::2/64",
            "2001:2:0:ff::1/128",
        ] {
            assert!(check_test_address(good).is_ok(), "{good}");
        }
        for bad in [
            "10.0.0.1/24",
            "198.20.0.1",
            "198.18.0.0/8",
            "2001:db8::1/64",
            "2001:3::1",
            "2001:2::/32",
            "nowhere",
        ] {
            assert!(check_test_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_child_guard_stops_its_child_by_pid_and_reports_its_exit() {
        let mut sleeper = ChildGuard::spawn(Command::new("sleep").arg("30")).expect("sleep");
        let pid = sleeper.id();
        assert!(live().pids.contains(&pid));
        let status = sleeper.stop(Duration::from_secs(5)).expect("reaped");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGTERM)
        );
        assert!(!live().pids.contains(&pid));
    }

    #[test]
    fn a_temp_dir_goes_with_its_guard() {
        let dir = TempDir::new("demux-testbed").expect("a temp dir");
        std::fs::write(dir.join("file"), b"x").expect("a file in it");
        let path = dir.path().to_owned();
        drop(dir);
        assert!(!path.exists());
    }
}
