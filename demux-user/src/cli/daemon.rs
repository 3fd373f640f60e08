//! `demux daemon`: run the daemon (see `demux::daemon`), from flags and/or a config file.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;
use demux::{attach::AttachMode, config, control::DEFAULT_SOCKET, daemon, program::BpfLogLevel};

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Interface to attach the XDP program to; repeat for several (adds to the config file's).
    #[arg(long = "iface", short = 'i', value_name = "IFACE")]
    ifaces: Vec<String>,
    /// XDP mode: `auto` tries driver mode and falls back to skb mode with a warning; `driver`;
    /// `skb` (generic) [default: auto].
    #[arg(long, value_name = "MODE")]
    mode: Option<AttachMode>,
    /// Config file (TOML): interfaces, control socket, endpoints to create at start.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Control socket path [default: /run/demux/control.sock].
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Group that may use the control socket (mode 0660).
    #[arg(long, value_name = "GROUP")]
    control_group: Option<String>,
    /// How often to log the verdict counters (e.g. 500ms, 5s); 0 turns it off [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = super::parse_duration)]
    stats_interval: Option<Duration>,
    /// Log level of the XDP program's own records (aya-log): off, error, warn, info, debug,
    /// trace. `off` compiles logging out.
    #[arg(long, value_name = "LEVEL", default_value = "off")]
    bpf_log: BpfLogLevel,
    /// UMEM frames per rx queue (a power of two) [default: 4096].
    #[arg(long, value_name = "N")]
    frames: Option<u32>,
    /// Serve the statistics in OpenMetrics format over HTTP, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
}

pub fn run(args: DaemonArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => config::load(path)?,
        None => config::File::default(),
    };
    let stats_interval = match (args.stats_interval, &file.stats_interval) {
        (Some(interval), _) => interval,
        (None, Some(text)) => super::parse_duration(text)
            .map_err(|e| anyhow::anyhow!("config stats_interval: {e}"))?,
        (None, None) => Duration::from_secs(5),
    };
    let mut ifaces = file.interfaces;
    ifaces.extend(args.ifaces);
    if ifaces.is_empty() {
        anyhow::bail!("no interface: give --iface IFACE (repeatable) or `interfaces` in --config");
    }
    let frames = args.frames.or(file.frames).unwrap_or(4096);
    if !frames.is_power_of_two() || frames < 64 {
        anyhow::bail!("--frames: {frames} is not a power of two of at least 64");
    }
    let config = daemon::Config {
        ifaces,
        mode: args.mode.or(file.mode).unwrap_or_default(),
        control: args
            .control
            .or(file.control)
            .unwrap_or_else(|| DEFAULT_SOCKET.into()),
        control_group: args.control_group.or(file.control_group),
        stats_interval,
        bpf_log: args.bpf_log,
        frames,
        endpoints: file.endpoints,
        metrics: args.metrics.or(file.metrics),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(daemon::run(config))
}
