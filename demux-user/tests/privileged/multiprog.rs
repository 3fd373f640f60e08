//! Sharing an interface through libxdp's multi-program dispatcher (`demux::multiprog`).
//!
//! - The rtnetlink side and the dispatcher object run on every kernel: libxdp's installed
//!   dispatcher loads through aya with its configuration, is attached, atomically replaced
//!   (`XDP_FLAGS_REPLACE`) and removed over netlink, and its configuration reads back.
//! - Joining and leaving, with stand-in components (libxdp's dispatcher entry loaded as an
//!   extension), as `xdp-loader` sees it; and demux next to `xdp-filter`. Both need a kernel
//!   that loads extension programs (`BPF_PROG_TYPE_EXT`), the second also `xdp-tools`; where
//!   one is missing they are skipped with the reason. They mount a bpffs of their own
//!   (`LIBXDP_BPFFS`), so the host's `/sys/fs/bpf` is never touched.

use std::{
    net::UdpSocket,
    path::Path,
    process::{Command, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use demux::{
    attach::{attach, ifindex, AttachMode},
    client::Endpoint,
    control::{BindRequest, SinkSpec},
    multiprog::{
        self,
        config::{DispatcherConfig, Slot},
        link::{self, Attached},
        Dispatcher,
    },
    program::{BpfLogLevel, LoadOptions, Loaded},
    testing::testbed::{
        enter_netns, ChildGuard, FdStore, NotifySocket, TempDir, VethPair, A_ADDR, B_ADDR,
    },
};

use crate::daemon::{lines_of, DAEMON};

pub(crate) fn tests() -> Vec<libtest_mimic::Trial> {
    trials![
        a_dispatcher_is_attached_replaced_and_read_back,
        components_join_and_leave_as_libxdp_sees_them,
        demux_runs_after_xdp_filter_and_leaves_it_working
    ]
    .into_iter()
    .map(|t| {
        let ignored = skip_reason(t.name()).is_some();
        t.with_ignored_flag(ignored)
    })
    .collect()
}

/// Why test `name` (`multiprog::…`) cannot run here, if it cannot (each probe runs once).
pub(crate) fn skip_reason(name: &str) -> Option<&'static str> {
    static OBJECT: OnceLock<Option<String>> = OnceLock::new();
    static SHARED: OnceLock<Option<String>> = OnceLock::new();
    let object = OBJECT
        .get_or_init(|| {
            if demux::sys::euid() != 0 {
                return Some("not root".into());
            }
            let found = multiprog::DISPATCHER_OBJECTS
                .iter()
                .any(|path| Path::new(path).exists());
            (!found)
                .then(|| "libxdp's dispatcher object is not installed (apt install libxdp1)".into())
        })
        .as_deref();
    if object.is_some() || name.ends_with("a_dispatcher_is_attached_replaced_and_read_back") {
        return object;
    }
    static EXTENSIONS: OnceLock<Option<String>> = OnceLock::new();
    let extensions = EXTENSIONS
        .get_or_init(|| StandIn::load().err().map(|e| format!("{e:#}")))
        .as_deref();
    if extensions.is_some() || name.ends_with("components_join_and_leave_as_libxdp_sees_them") {
        return extensions.map(|_| {
            "the kernel refuses extension programs (BPF_PROG_TYPE_EXT): the stand-in \
             component does not load"
        });
    }
    SHARED
        .get_or_init(|| {
            if Command::new("xdp-filter").arg("--help").output().is_err() {
                return Some("xdp-filter is not installed (apt install xdp-tools)".into());
            }
            // demux's own program as an extension: what the daemon will load.
            Loaded::load_with(LoadOptions {
                extension: true,
                ..LoadOptions::default()
            })
            .err()
            .map(|e| format!("{e:#}"))
        })
        .as_deref()
}

fn two_slots() -> DispatcherConfig {
    DispatcherConfig {
        is_xdp_frags: false,
        slots: vec![
            Slot {
                run_prio: 10,
                chain_call_actions: 1 << 2,
                flags: 0,
            },
            Slot {
                run_prio: multiprog::RUN_PRIORITY,
                chain_call_actions: multiprog::CHAIN_CALL_ACTIONS,
                flags: 0,
            },
        ],
    }
}

pub(crate) fn a_dispatcher_is_attached_replaced_and_read_back() -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<()> {
                net.b.enter_thread()?;
                let index = ifindex(&net.b_if)?;
                let config = two_slots();
                let first = Dispatcher::load(&config)?;
                let second = Dispatcher::load(&DispatcherConfig::default())?;
                let (first_fd, second_fd) = (first.fd()?, second.fd()?);
                use std::os::fd::AsFd as _;
                let driver = link::FLAGS_DRV_MODE;
                link::set(
                    index,
                    Some(first_fd.as_fd()),
                    driver | link::FLAGS_UPDATE_IF_NOEXIST,
                    None,
                )?;
                let state = link::query(index)?;
                ensure!(state.attached == Attached::Driver, "{state:?}");
                ensure!(state.prog_id == first.id()?, "{state:?}");
                ensure!(multiprog::has_dispatcher(index)?);
                let read = multiprog::read_config(&multiprog::program_info(state.prog_id)?)?;
                ensure!(read == config, "read back {read:?}, loaded {config:?}");

                // Not over a program that is there; not replacing the wrong one.
                let busy = link::set(
                    index,
                    Some(second_fd.as_fd()),
                    driver | link::FLAGS_UPDATE_IF_NOEXIST,
                    None,
                );
                ensure!(
                    busy.as_ref().map_err(|e| e.raw_os_error()) == Err(Some(libc::EBUSY)),
                    "{busy:?}"
                );
                let wrong = link::set(
                    index,
                    Some(second_fd.as_fd()),
                    driver | link::FLAGS_REPLACE,
                    Some(second_fd.as_fd()),
                );
                ensure!(wrong.is_err(), "replaced a program that was not attached");
                ensure!(link::query(index)?.prog_id == first.id()?);

                link::set(
                    index,
                    Some(second_fd.as_fd()),
                    driver | link::FLAGS_REPLACE,
                    Some(first_fd.as_fd()),
                )?;
                ensure!(link::query(index)?.prog_id == second.id()?);
                let read = multiprog::read_config(&multiprog::program_info(second.id()?)?)?;
                ensure!(read.slots.is_empty(), "{read:?}");

                link::set(
                    index,
                    None,
                    driver | link::FLAGS_REPLACE,
                    Some(second_fd.as_fd()),
                )?;
                let state = link::query(index)?;
                ensure!(
                    state.attached == Attached::None && state.prog_id == 0,
                    "{state:?}"
                );

                // demux attached directly is a program, not a dispatcher.
                let (mut loaded, _maps) = Loaded::load(BpfLogLevel::Off)?;
                attach(loaded.program_mut(), &net.b_if, AttachMode::Driver)?;
                ensure!(link::query(index)?.prog_id != 0);
                ensure!(!multiprog::has_dispatcher(index)?);
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| bail!("the test thread panicked"))
    })
}

/// A bpffs mounted on a temp dir for this test, unmounted when dropped.
struct Bpffs {
    dir: TempDir,
}

impl Bpffs {
    fn mount() -> anyhow::Result<Self> {
        let dir = TempDir::new("demux-bpffs")?;
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(dir.path())
            .status()?;
        ensure!(status.success(), "mount -t bpf: {status}");
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Runs `args` in namespace `netns` with `LIBXDP_BPFFS=bpffs`; its stdout, or an error with
/// what it said.
fn xdp_tool(netns: &str, bpffs: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .env("LIBXDP_BPFFS", bpffs)
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "{args:?}: {}: {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

/// Sends `count` datagrams from namespace a, from source port `from_port` (0: any), to
/// `B_ADDR:to_port`.
fn send(net: &VethPair, from_port: u16, to_port: u16, count: usize) -> anyhow::Result<()> {
    thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<()> {
                net.a.enter_thread()?;
                let socket = UdpSocket::bind((A_ADDR, from_port))?;
                for i in 0..count {
                    socket.send_to(&[i as u8; 32], (B_ADDR, to_port))?;
                    thread::sleep(Duration::from_millis(2));
                }
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| bail!("the sending thread panicked"))
    })
}

/// Datagrams a kernel socket (made in namespace b on `port`) receives within `within`.
fn kernel_socket(net: &VethPair, port: u16) -> anyhow::Result<UdpSocket> {
    thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<UdpSocket> {
                net.b.enter_thread()?;
                let socket = UdpSocket::bind((B_ADDR, port))?;
                socket.set_read_timeout(Some(Duration::from_millis(200)))?;
                Ok(socket)
            })
            .join()
            .unwrap_or_else(|_| bail!("the binding thread panicked"))
    })
}

fn drain(socket: &UdpSocket) -> usize {
    let mut buf = [0u8; 64];
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && socket.recv(&mut buf).is_ok() {
        got += 1;
    }
    got
}

fn drain_endpoint(endpoint: &mut Endpoint) -> anyhow::Result<usize> {
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match endpoint.recv_from(Some(Duration::from_millis(200)))? {
            Some(_) => got += 1,
            None => break,
        }
    }
    Ok(got)
}

const FILTERED_PORT: u16 = 7777;
const ENDPOINT_PORT: u16 = 9000;
const KERNEL_PORT: u16 = 9001;
const COUNT: usize = 20;

pub(crate) fn demux_runs_after_xdp_filter_and_leaves_it_working() -> anyhow::Result<()> {
    let bpffs = Bpffs::mount()?;
    let net = VethPair::standard()?;
    let ns = net.b.name().to_owned();
    let b_if = net.b_if.clone();
    xdp_tool(
        &ns,
        bpffs.path(),
        &["xdp-filter", "load", "--mode", "native", &b_if],
    )?;
    // Whatever happens below, the filter goes (the namespace goes with the pair anyway).
    struct Unload<'a>(&'a str, &'a Path, &'a str);
    impl Drop for Unload<'_> {
        fn drop(&mut self) {
            let _ = xdp_tool(self.0, self.1, &["xdp-filter", "unload", "--all"]);
            let _ = self.2;
        }
    }
    let _unload = Unload(&ns, bpffs.path(), &b_if);
    let port = FILTERED_PORT.to_string();
    xdp_tool(
        &ns,
        bpffs.path(),
        &[
            "xdp-filter",
            "port",
            &port,
            "--mode",
            "src",
            "--proto",
            "udp",
        ],
    )?;
    let status = xdp_tool(&ns, bpffs.path(), &["xdp-loader", "status", &b_if])?;
    ensure!(
        status.contains("xdp_dispatcher"),
        "xdp-filter did not load through a dispatcher: {status}"
    );

    // The daemon, in auto mode: it finds the dispatcher and joins it.
    let dir = TempDir::new("demux-test")?;
    let control = dir.join("control.sock");
    let notify = NotifySocket::bind(dir.join("notify.sock"))?;
    let mut command = net.b.command(DAEMON);
    command
        .args([
            "daemon",
            "--iface",
            &b_if,
            "--stats-interval",
            "0",
            "--control",
        ])
        .arg(&control)
        .env("LIBXDP_BPFFS", bpffs.path())
        .env(NotifySocket::VAR, notify.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut daemon = ChildGuard::spawn(&mut command)?;
    let log = lines_of(daemon.child().stderr.take().expect("piped"));
    if let Err(error) = notify.wait_ready(&mut daemon, Duration::from_secs(10)) {
        let said: Vec<String> = log.try_iter().collect();
        bail!("the daemon is not ready: {error:#}; it said: {said:#?}");
    }
    let status = xdp_tool(&ns, bpffs.path(), &["xdp-loader", "status", &b_if])?;
    let filter_at = status.find("xdpfilt").context(status.clone())?;
    let demux_at = status.find(" demux ").context(status.clone())?;
    ensure!(
        filter_at < demux_at,
        "demux does not run after xdp-filter: {status}"
    );

    let request = BindRequest::udp(
        format!("{B_ADDR}:{ENDPOINT_PORT}"),
        SinkSpec::Ring {
            slots: demux::ring::DEFAULT_SLOTS,
        },
    );
    let mut endpoint = thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<Endpoint> {
                enter_netns(&ns)?;
                Ok(Endpoint::bind_with(&control, request, None)?)
            })
            .join()
            .unwrap_or_else(|_| bail!("the binding thread panicked"))
    })?;
    let kernel = kernel_socket(&net, KERNEL_PORT)?;

    send(&net, FILTERED_PORT, ENDPOINT_PORT, COUNT)?;
    ensure!(
        drain_endpoint(&mut endpoint)? == 0 && endpoint.via_kernel() == 0,
        "a datagram from the filtered port reached the endpoint"
    );
    send(&net, 0, ENDPOINT_PORT, COUNT)?;
    let got = drain_endpoint(&mut endpoint)?;
    ensure!(got == COUNT, "the endpoint received {got} of {COUNT}");
    send(&net, 0, KERNEL_PORT, COUNT)?;
    let got = drain(&kernel);
    ensure!(
        got == COUNT,
        "unbound traffic: the kernel socket received {got} of {COUNT}"
    );

    daemon.signal(libc::SIGTERM)?;
    // As systemd: the notify socket served (the endpoint's handover answered) until it exits.
    let exit = notify
        .serve_store(
            &mut FdStore::default(),
            &mut daemon,
            None,
            Duration::from_secs(5),
        )?
        .context("no exit status")?;
    ensure!(exit.success(), "the daemon exited with {exit}");
    let status = xdp_tool(&ns, bpffs.path(), &["xdp-loader", "status", &b_if])?;
    ensure!(
        !status.contains(" demux "),
        "demux is still in the dispatcher: {status}"
    );
    ensure!(
        status.contains("xdpfilt"),
        "xdp-filter went with demux: {status}"
    );
    // demux's pins are gone: one dispatcher directory, with the filter's slot only.
    let dirs: Vec<_> = std::fs::read_dir(bpffs.path().join("xdp"))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("dispatch-"))
        .collect();
    ensure!(dirs.len() == 1, "dispatcher directories left: {dirs:?}");
    let pins: Vec<String> = std::fs::read_dir(dirs[0].path())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ensure!(pins.len() == 2, "pins left after demux stopped: {pins:?}");
    // The filter still filters, and what it passes reaches the kernel.
    send(&net, FILTERED_PORT, KERNEL_PORT, COUNT)?;
    ensure!(
        drain(&kernel) == 0,
        "the filter stopped dropping after demux left"
    );
    send(&net, 0, KERNEL_PORT, COUNT)?;
    let got = drain(&kernel);
    ensure!(
        got == COUNT,
        "after demux left the kernel socket received {got} of {COUNT}"
    );

    // A killed daemon leaves its program pinned in the dispatcher: the unit's
    // `ExecStopPost=-/usr/bin/demux detach`, naming no interface, takes it out.
    let mut killed = ChildGuard::spawn(&mut command)?;
    let _log = lines_of(killed.child().stderr.take().expect("piped"));
    notify.wait_ready(&mut killed, Duration::from_secs(10))?;
    killed.signal(libc::SIGKILL)?;
    killed.wait_exit(Duration::from_secs(5))?;
    let status = xdp_tool(&ns, bpffs.path(), &["xdp-loader", "status", &b_if])?;
    ensure!(
        status.contains(" demux "),
        "demux left the dispatcher though killed: {status}"
    );
    let mut detach = net.b.command(DAEMON);
    detach.arg("detach").env("LIBXDP_BPFFS", bpffs.path());
    let said = demux::testing::testbed::run(&mut detach)?;
    let status = xdp_tool(&ns, bpffs.path(), &["xdp-loader", "status", &b_if])?;
    println!("demux detach after SIGKILL: {said:?}; then: {status}");
    ensure!(
        !status.contains(" demux ") && status.contains("xdpfilt"),
        "`demux detach` did not take demux alone out: {status}"
    );
    ensure!(
        said.contains(&format!("{b_if}: removed 1 demux program")),
        "`demux detach` said {said:?}"
    );
    Ok(())
}

/// A stand-in component: libxdp's dispatcher entry function (its `conf` all zero, so it returns
/// `XDP_PASS`) loaded as an extension, which kernels that refuse demux's program as one still
/// load. It drives join and leave through the whole protocol without demux's program.
struct StandIn {
    ebpf: aya::Ebpf,
    _template: Dispatcher,
}

impl StandIn {
    fn load() -> anyhow::Result<Self> {
        let template = Dispatcher::template()?;
        let mut ebpf = aya::EbpfLoader::new()
            .extension(multiprog::DISPATCHER_PROGRAM)
            .load_file(multiprog::dispatcher_object()?)?;
        let program: &mut aya::programs::Extension = ebpf
            .program_mut(multiprog::DISPATCHER_PROGRAM)
            .context("no entry function")?
            .try_into()?;
        program.load(template.fd()?, "prog0")?;
        Ok(Self {
            ebpf,
            _template: template,
        })
    }

    fn extension(&mut self) -> &mut aya::programs::Extension {
        self.ebpf
            .program_mut(multiprog::DISPATCHER_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("loaded")
    }
}

fn dispatch_dirs(bpffs: &Path) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(bpffs.join("xdp"))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("dispatch-") {
            let mut pins: Vec<String> = std::fs::read_dir(entry.path())?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            pins.sort();
            dirs.push((name, pins));
        }
    }
    Ok(dirs)
}

pub(crate) fn components_join_and_leave_as_libxdp_sees_them() -> anyhow::Result<()> {
    let bpffs = Bpffs::mount()?;
    if let Err(other) = multiprog::use_bpffs(bpffs.path().to_owned()) {
        bail!("this process already uses the bpffs {}", other.display());
    }
    let net = VethPair::standard()?;
    let kernel = kernel_socket(&net, KERNEL_PORT)?;
    let ns = net.b.name().to_owned();
    let loader_status = || xdp_tool(&ns, bpffs.path(), &["xdp-loader", "status", &net.b_if]);
    let index = thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<u32> {
                net.b.enter_thread()?;
                let index = ifindex(&net.b_if)?;
                let mut first = StandIn::load()?;
                let joined = multiprog::join(
                    index,
                    first.extension(),
                    "a",
                    multiprog::DispatcherMode::Driver,
                )?;
                ensure!(joined.slot == 0 && joined.others.is_empty(), "{joined:?}");
                ensure!(link::query(index)?.prog_id == joined.dispatcher_id);
                let dirs = dispatch_dirs(bpffs.path())?;
                ensure!(
                    dirs == [(
                        format!("dispatch-{index}-{}", joined.dispatcher_id),
                        vec!["prog0-link".to_owned(), "prog0-prog".to_owned()]
                    )],
                    "{dirs:?}"
                );
                drop(first); // the pins hold it now

                let mut second = StandIn::load()?;
                let again = multiprog::join(
                    index,
                    second.extension(),
                    "b",
                    multiprog::DispatcherMode::Driver,
                )?;
                ensure!(again.dispatcher_id != joined.dispatcher_id);
                ensure!(link::query(index)?.prog_id == again.dispatcher_id);
                let described = multiprog::describe(index)?.context("no dispatcher")?;
                ensure!(described.slots.len() == 2, "{described:?}");
                ensure!(
                    described
                        .slots
                        .iter()
                        .all(|(_, slot)| slot.run_prio == multiprog::RUN_PRIORITY
                            && slot.chain_call_actions == multiprog::CHAIN_CALL_ACTIONS),
                    "{described:?}"
                );
                let dirs = dispatch_dirs(bpffs.path())?;
                ensure!(
                    dirs.len() == 1
                        && dirs[0].0 == format!("dispatch-{index}-{}", again.dispatcher_id)
                        && dirs[0].1.len() == 4,
                    "the old dispatcher's pins are not replaced by the new one's: {dirs:?}"
                );
                Ok(index)
            })
            .join()
            .unwrap_or_else(|_| bail!("the test thread panicked"))
    })?;
    // libxdp reads what we wrote: its dispatcher, two components at priority 100.
    let status = loader_status()?;
    ensure!(
        status.contains("xdp_dispatcher") && status.matches(" 100 ").count() == 2,
        "xdp-loader does not see the dispatcher and its two components: {status}"
    );
    // Packets run through both components and reach the kernel.
    send(&net, 0, KERNEL_PORT, COUNT)?;
    let got = drain(&kernel);
    ensure!(
        got == COUNT,
        "through the dispatcher the kernel socket received {got} of {COUNT}"
    );

    thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<()> {
                net.b.enter_thread()?;
                let removed = multiprog::leave(index, multiprog::DISPATCHER_PROGRAM)?;
                ensure!(removed == 2, "removed {removed}");
                let state = link::query(index)?;
                ensure!(state.prog_id == 0, "a program is left: {state:?}");
                ensure!(multiprog::leave(index, multiprog::DISPATCHER_PROGRAM)? == 0);
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| bail!("the test thread panicked"))
    })?;
    let dirs = dispatch_dirs(bpffs.path())?;
    ensure!(
        dirs.is_empty(),
        "pins left after the last component left: {dirs:?}"
    );
    Ok(())
}
