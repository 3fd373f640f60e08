//! The daemon: loads and attaches the XDP program, opens an AF_XDP socket for every rx queue of
//! every interface and runs a worker for each, follows the namespace's local addresses
//! (`local_addrs`) and writes each interface's MAC address for the program's destination
//! checks, serves the control socket, logs the verdicts, on SIGHUP (or `demux reload`) reads
//! its config file again and applies the difference (`reload`), and on SIGINT/SIGTERM
//! detaches, stops the workers, hands its client endpoints to the service manager for the
//! next daemon (`handover`) and removes the control socket.

pub mod directory;
pub mod error;
pub mod handover;
pub mod ifaces;
pub mod kernel_features;
pub mod kernel_path;
pub mod local_addrs;
pub mod metrics;
pub mod notify;
pub mod privileges;
pub mod reload;
pub mod server;
pub mod state;
pub mod view;
pub mod worker;

use std::{
    fs,
    future::pending,
    sync::{Arc, Mutex},
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
    binding::{Local, Protocol},
    control::BindRequest,
    program::{LoadOptions, Loaded},
};

use state::{Caller, Passed, State};

/// Runs the daemon until SIGINT or SIGTERM; it takes no reloads (as started without a config
/// file).
pub async fn run(config: Config) -> anyhow::Result<()> {
    run_reloadable(config, None).await
}

/// As [`run`]; on SIGHUP or root's `reload` request `reread` gives the configuration again and
/// the daemon applies the difference ([`reload`]).
pub async fn run_reloadable(config: Config, reread: Option<reload::Reread>) -> anyhow::Result<()> {
    run_with(config, reread, handover::Inherited::default()).await
}

/// As [`run_reloadable`], picking up the endpoints a previous daemon handed over in
/// `inherited` (the service manager's file descriptor store, [`handover`]); at a graceful stop
/// under a manager (`NOTIFY_SOCKET`) it hands its own over the same way.
pub async fn run_with(
    config: Config,
    reread: Option<reload::Reread>,
    inherited: handover::Inherited,
) -> anyhow::Result<()> {
    config.validate()?;
    privileges::check_load_time()?;
    kernel_features::log(&kernel_features::detect());
    if config.ifaces.is_empty() {
        warn!(
            "no interface configured: nothing is steered; set `interfaces` in the config file \
             and reload"
        );
    }
    let (mut loaded, maps) = Loaded::load_with(LoadOptions {
        log_level: config.bpf_log,
        bindings: Some(config.max_bindings),
        extension: config.xdp_mode.uses_dispatcher(&config.ifaces)?,
        ..LoadOptions::default()
    })?;
    info!(
        bytes = crate::program::OBJECT.len(),
        "XDP program loaded and verified"
    );
    let sizes = loaded.map_memory();
    let total: u64 = sizes.iter().map(|(_, bytes)| bytes).sum();
    info!(
        max_bindings = config.max_bindings,
        kernel_memory_mib = format!("{:.1}", total as f64 / 1048576.0),
        largest = largest_maps(&sizes).as_str(),
        "maps sized: connected, bound and prefix hold {} bindings each, wildcards one per port",
        config.max_bindings
    );
    let logger =
        EbpfLogger::init(loaded.ebpf_mut()).context("opening the XDP program's log ring")?;
    let mut bpf_log =
        crate::sys::async_readable(logger).context("watching the XDP program's log ring")?;

    let mut state = State::new(maps, config.limits);
    state.set_fast_path_uid(config.fast_path_uid);
    let state = Arc::new(Mutex::new(state));
    let view = state.lock().expect("state lock").view.clone();
    // The host's view before the first packet: local routes, then each interface (its
    // sockets and workers first, so that no steered frame arrives before its queue has a
    // socket; then its MAC; then the attach).
    let follower = local_addrs::Follower::start(&state).await?;
    info!("local addresses: {} prefixes", follower.routes().len());
    let follower = tokio::spawn(follower.run(state.clone()));
    let notifier = notify::Notifier::from_env().unwrap_or_else(|e| {
        warn!("{e}");
        None
    });
    // Endpoints handed over by the previous daemon, with their ids, before the configured
    // ones take ids and before the first packet is steered.
    if !inherited.is_empty() {
        pick_up(&state, inherited, notifier.as_ref());
    }
    let mut ifaces = ifaces::Ifaces::new(config.frames, config.mode, config.zero_copy);
    for iface in &config.ifaces {
        ifaces.bring_up(iface, &mut loaded, &state)?;
    }
    let mut configured = Vec::new();
    for request in config.endpoints.clone() {
        let local = request.local.clone();
        let id = bind_configured(&state, request.clone())
            .with_context(|| format!("creating the configured endpoint {local}"))?;
        info!(id, %local, "configured endpoint ready");
        configured.push((request, id));
    }
    let mut reloader = reload::Reloader::new(reread, &config, configured);
    let (reloads, mut asks) = tokio::sync::mpsc::channel::<reload::Ask>(4);
    let listener = server::listen(&config.control, config.control_group.as_deref())?;
    info!(control = %config.control.display(), "control socket ready");
    let server = tokio::spawn(server::serve(
        listener,
        state.clone(),
        view.clone(),
        reloads,
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
    // Loaded, attached, sockets open: keep only what the daemon still does from here on.
    let dropped = privileges::drop_to_run_time()?;
    info!(
        kept = %dropped.kept,
        dropped = %dropped.dropped,
        bounding_set_lowered = dropped.bounding_lowered,
        "capabilities lowered to the run-time set"
    );
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    // Attached, sockets registered, control socket listening: tell the supervisor, if any.
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
    let mut ticker = stats_ticker(config.stats_interval);
    loop {
        tokio::select! {
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = sighup.recv() => {
                info!("SIGHUP: reloading the configuration");
                let result = reload::reload_notified(
                    &mut reloader, notifier.as_ref(), &state, &mut ifaces, &mut loaded,
                ).await;
                if let Err(e) = result {
                    warn!("{e}");
                }
                ticker = stats_ticker(reloader.current().stats_interval);
            }
            Some(ask) = asks.recv() => {
                info!("reload asked for on the control socket");
                let result = reload::reload_notified(
                    &mut reloader, notifier.as_ref(), &state, &mut ifaces, &mut loaded,
                ).await;
                let _ = ask.reply.send(result);
                ticker = stats_ticker(reloader.current().stats_interval);
            }
            ready = bpf_log.readable_mut() => {
                let mut ready = ready.context("reading the XDP program's log ring")?;
                ready.get_inner_mut().flush();
                ready.clear_ready();
            }
            _ = tick(&mut ticker) => log_stats(&view.stats()),
            _ = audit.tick() => {
                let mut state = state.lock().expect("state lock");
                state.audit();
                state.expire_waiting(handover::GRACE);
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
    // From here on every packet goes to the kernel; the workers drain what was steered.
    ifaces.shut_down(&mut loaded).join();
    // Drained: the kernel delivers to the backing sockets now. Hand the client endpoints to
    // the next daemon, if a service manager keeps them.
    if let Some(notifier) = &notifier {
        hand_over(&state, notifier);
    }
    if let Err(e) = fs::remove_file(&config.control) {
        warn!("removing {}: {e}", config.control.display());
    }
    log_stats(&view.stats());
    Ok(())
}

/// Re-creates the endpoints the previous daemon handed over (each checked, [`handover`]) and
/// removes what the manager passed from its store: a stale backing socket there would hold
/// its port after its endpoint closed.
fn pick_up(
    state: &Mutex<State>,
    inherited: handover::Inherited,
    notifier: Option<&notify::Notifier>,
) {
    let names = inherited.names();
    let count = inherited.len();
    let picked = inherited.pickup(handover::udp_socket_uid);
    let mut restored = 0;
    for one in picked {
        let (id, local) = (one.stored.id, one.stored.request.local.clone());
        match state.lock().expect("state lock").restore(one) {
            Ok(_) => restored += 1,
            Err(error) => warn!(id, %local, "restart: endpoint not picked up: {error}"),
        }
    }
    info!(
        descriptors = count,
        endpoints = restored,
        "restart: endpoints picked up from the previous daemon; their clients attach again"
    );
    if let Some(notifier) = notifier {
        for name in &names {
            if let Err(e) = notifier.remove_fds(name) {
                warn!("{e}");
            }
        }
    }
}

/// Stores the client endpoints with the service manager for the next daemon.
fn hand_over(state: &Mutex<State>, notifier: &notify::Notifier) {
    let handed = state.lock().expect("state lock").handover();
    match handover::store(notifier, &handed, HANDOVER_BARRIER) {
        Ok(descriptors) => info!(
            endpoints = handed.len(),
            descriptors, "restart: endpoints handed to the service manager for the next daemon"
        ),
        Err(e) => warn!("restart: handing the endpoints over: {e}; their clients bind afresh"),
    }
}

/// How long a stopping daemon waits for the manager to take the stored descriptors.
const HANDOVER_BARRIER: std::time::Duration = std::time::Duration::from_secs(5);

/// The verdict log's ticker; none for a zero interval.
fn stats_ticker(every: std::time::Duration) -> Option<Interval> {
    (!every.is_zero()).then(|| {
        let mut ticker = interval(every);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker
    })
}

/// How often every backing socket is read again ([`State::audit`]).
const AUDIT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Creates a configured endpoint as the daemon's own. A UDP endpoint on an address gets a
/// backing socket the daemon binds itself (`SO_REUSEPORT` when the config names a group), so
/// the kernel judges its binding as any other socket's and delivers fragments to it.
pub(crate) fn bind_configured(
    state: &Mutex<State>,
    mut request: BindRequest,
) -> anyhow::Result<u32> {
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

/// One log line with the verdicts and the accounting: seen = delivered + handed to fast-path
/// clients + passed + dropped (+ frames still between the program and a sink).
fn log_stats(stats: &crate::control::Stats) {
    let verdicts: Vec<String> = stats
        .verdicts
        .iter()
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
    info!(
        "verdicts: total={} {} | delivered={} handed_to_clients={} dropped={} (bad_checksum={})",
        stats.seen(),
        verdicts.join(" "),
        stats.delivered(),
        stats.handed_to_clients(),
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

/// The five largest maps by kernel memory, as `NAME MiB` pairs.
fn largest_maps(sizes: &[(String, u64)]) -> String {
    let mut sizes = sizes.to_vec();
    sizes.sort_by_key(|size| std::cmp::Reverse(size.1));
    sizes
        .iter()
        .take(5)
        .map(|(name, bytes)| format!("{name} {:.1}", *bytes as f64 / 1048576.0))
        .collect::<Vec<_>>()
        .join(", ")
}
