//! The daemon: loads and attaches the XDP program, opens an AF_XDP socket for every rx queue of
//! every interface and runs a worker for each, follows the namespace's local addresses
//! (`local_addrs`) and writes each interface's MAC address for the program's destination
//! checks, serves the control socket, logs the verdicts, and on SIGINT/SIGTERM detaches, stops
//! the workers and removes the control socket.

pub mod error;
pub mod kernel_path;
pub mod local_addrs;
pub mod metrics;
pub mod notify;
pub mod server;
pub mod state;
pub mod view;
pub mod worker;

use std::{
    fs,
    future::pending,
    sync::{atomic::AtomicBool, Arc, Mutex},
};

use anyhow::Context as _;
use aya_log::EbpfLogger;
use tokio::{
    signal::unix::{signal, SignalKind},
    time::{interval, Interval, MissedTickBehavior},
};
use tracing::{info, warn};

pub use crate::config::Config;
use crate::{
    attach::{attach_loaded, detach, ifindex},
    binding::{Local, Protocol},
    control::{BindRequest, SocketInfo},
    dataplane::Dataplane as _,
    program::Loaded,
};

use state::{Caller, Passed, State};

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    let (mut loaded, maps) = Loaded::load_with(crate::program::LoadOptions {
        log_level: config.bpf_log,
        extension: config.xdp_mode.uses_dispatcher(&config.ifaces)?,
        ..crate::program::LoadOptions::default()
    })?;
    info!(
        bytes = crate::program::OBJECT.len(),
        "XDP program loaded and verified"
    );
    let logger =
        EbpfLogger::init(loaded.ebpf_mut()).context("opening the XDP program's log ring")?;
    let mut bpf_log =
        crate::sys::async_readable(logger).context("watching the XDP program's log ring")?;

    // Sockets and workers first, so that no steered frame arrives before its queue has a socket.
    let state = Arc::new(Mutex::new(State::new(maps, config.limits)));
    let view = state.lock().expect("state lock").view.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    {
        let state = state.lock().expect("state lock");
        for (number, iface) in config.ifaces.iter().enumerate() {
            // An unknown interface fails here, with its own clear line.
            ifindex(iface)?;
            for queue in 0..rx_queues(iface) {
                let cell = Arc::new(Mutex::new(SocketInfo {
                    iface: iface.clone(),
                    queue,
                    ..SocketInfo::default()
                }));
                let (worker, fd) = worker::spawn(
                    iface,
                    queue,
                    config.frames,
                    state.directory.clone(),
                    state.workers.clone(),
                    cell.clone(),
                    stop.clone(),
                )?;
                workers.push(worker);
                state.add_socket(cell);
                loaded
                    .register_socket(number as u32, queue, fd)
                    .with_context(|| format!("registering the socket of {iface} queue {queue}"))?;
            }
        }
    }
    // The host's view before the first packet: local routes, then each interface's MAC.
    let follower = local_addrs::Follower::start(&state).await?;
    info!("local addresses: {} prefixes", follower.routes().len());
    let follower = tokio::spawn(follower.run(state.clone()));
    for (number, iface) in config.ifaces.iter().enumerate() {
        let mac = crate::sys::netlink::hardware_address(iface)
            .with_context(|| format!("reading the MAC address of {iface} (SIOCGIFHWADDR)"))?;
        state
            .lock()
            .expect("state lock")
            .dataplane_mut()
            .set_iface(ifindex(iface)?, number as u32, mac)
            .with_context(|| format!("writing the MAC address of {iface} to IFACE_SLOTS"))?;
    }
    let mut links = Vec::new();
    for iface in &config.ifaces {
        let attachment = attach_loaded(&mut loaded, iface, config.mode)?;
        info!(iface = %attachment.iface, mode = %attachment.mode, "attached");
        links.push(attachment);
    }
    for request in config.endpoints.clone() {
        let local = request.local.clone();
        let id = bind_configured(&state, request)
            .with_context(|| format!("creating the configured endpoint {local}"))?;
        info!(id, %local, "configured endpoint ready");
    }
    let listener = server::listen(&config.control, config.control_group.as_deref())?;
    info!(control = %config.control.display(), "control socket ready");
    let server = tokio::spawn(server::serve(
        listener,
        state.clone(),
        view.clone(),
        config.limits,
    ));
    let metrics = match config.metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics {addr}: cannot listen there"))?;
            info!(%addr, "serving OpenMetrics");
            Some(tokio::spawn(metrics::serve(listener, view.clone())))
        }
        None => None,
    };

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // Attached, sockets registered, control socket listening: tell the supervisor, if any.
    let notifier = notify::Notifier::from_env().unwrap_or_else(|e| {
        warn!("{e}");
        None
    });
    if let Some(notifier) = &notifier {
        let status = format!(
            "attached to {}; control socket {}",
            config.ifaces.join(", "),
            config.control.display()
        );
        if let Err(e) = notifier.ready(&status) {
            warn!("{e}");
        }
    }
    // Backing sockets whose owners changed them after registering lose their endpoints.
    let mut audit = interval(AUDIT_EVERY);
    audit.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ticker = (!config.stats_interval.is_zero()).then(|| {
        let mut ticker = interval(config.stats_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker
    });
    loop {
        tokio::select! {
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            ready = bpf_log.readable_mut() => {
                let mut ready = ready.context("reading the XDP program's log ring")?;
                ready.get_inner_mut().flush();
                ready.clear_ready();
            }
            _ = tick(&mut ticker) => log_stats(&view.stats()),
            _ = audit.tick() => {
                state.lock().expect("state lock").audit();
            }
        }
    }

    if let Some(Err(e)) = notifier.as_ref().map(notify::Notifier::stopping) {
        warn!("{e}");
    }
    // Detach first: from here on every packet goes to the kernel.
    server.abort();
    follower.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    for link in links {
        let iface = link.iface.clone();
        match detach(&mut loaded, link) {
            Ok(()) => info!(%iface, "detached"),
            Err(e) => warn!(%iface, "detaching failed: {e}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    if let Err(e) = fs::remove_file(&config.control) {
        warn!("removing {}: {e}", config.control.display());
    }
    log_stats(&view.stats());
    Ok(())
}

/// How often every backing socket is read again ([`State::audit`]).
const AUDIT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Creates a configured endpoint as the daemon's own. A UDP endpoint on an address gets a
/// backing socket the daemon binds itself (`SO_REUSEPORT` when the config names a group), so
/// the kernel judges its binding as any other socket's and delivers fragments to it.
fn bind_configured(state: &Mutex<State>, mut request: BindRequest) -> anyhow::Result<u32> {
    let binding = request.binding()?;
    let mut passed = Passed::default();
    if let (Protocol::Udp, Local::Addr(local)) = (binding.protocol, binding.local) {
        let options = crate::backing::Options {
            reuseport: request.group.take().is_some(),
            ..crate::backing::Options::of(&binding)
        };
        passed.backing = Some(crate::backing::open(local, &options)?.into());
    }
    let (id, _) = state.lock().expect("state lock").bind_passed(
        BindRequest {
            persistent: true,
            ..request
        },
        Caller::DAEMON,
        passed,
    )?;
    Ok(id)
}

/// One log line with the verdicts and the accounting: seen = delivered + passed + dropped
/// (+ frames still between the program and a sink).
fn log_stats(stats: &crate::control::Stats) {
    let verdicts: Vec<String> = stats
        .verdicts
        .iter()
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
    info!(
        "verdicts: total={} {} | delivered={} dropped={} (bad_checksum={})",
        stats.seen(),
        verdicts.join(" "),
        stats.delivered(),
        stats.dropped(),
        stats.dropped_bad_checksum
    );
}

/// Rx queues of `iface` (from sysfs; 1 when it cannot tell).
pub fn rx_queues(iface: &str) -> u32 {
    fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .max(1)
}

async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => pending().await,
    }
}
