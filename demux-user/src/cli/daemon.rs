//! `demux daemon`: load the XDP program, attach it, report verdicts, detach on SIGINT/SIGTERM.

use std::{future::pending, io, time::Duration};

use anyhow::Context as _;
use aya_log::EbpfLogger;
use clap::Args;
use demux::{
    attach::{attach, AttachMode},
    program::{BpfLogLevel, Loaded},
    verdicts::VerdictCounts,
};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    time::{interval, Interval, MissedTickBehavior},
};
use tracing::{info, warn};

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Interface to attach the XDP program to; repeat for several.
    #[arg(long = "iface", short = 'i', required = true, value_name = "IFACE")]
    ifaces: Vec<String>,
    /// XDP mode: `auto` tries driver mode and falls back to skb mode with a warning.
    #[arg(long, value_enum, default_value_t)]
    mode: AttachMode,
    /// How often to log the verdict counters (e.g. 500ms, 5s); 0 turns it off.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = super::parse_duration)]
    stats_interval: Duration,
    /// Log level of the XDP program's own records (aya-log). `off` compiles logging out.
    #[arg(long, value_enum, default_value_t)]
    bpf_log: BpfLogLevel,
}

pub fn run(args: DaemonArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(args))
}

async fn serve(args: DaemonArgs) -> anyhow::Result<()> {
    let mut loaded = Loaded::load(args.bpf_log)?;
    info!(
        bytes = demux::program::OBJECT.len(),
        "XDP program loaded and verified"
    );
    let logger =
        EbpfLogger::init(loaded.ebpf_mut()).context("opening the XDP program's log ring")?;
    // SAFETY: the logger owns its ring buffer's fd and keeps it open, unchanged, until dropped.
    let mut bpf_log = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(io::Error::from)
        .context("watching the XDP program's log ring")?;

    let mut attachments = Vec::with_capacity(args.ifaces.len());
    for iface in &args.ifaces {
        // On error, `loaded` drops and detaches what was attached so far.
        let attachment = attach(loaded.program_mut(), iface, args.mode)?;
        info!(iface = %attachment.iface, mode = %attachment.mode, "attached");
        attachments.push(attachment);
    }

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut ticker = (!args.stats_interval.is_zero()).then(|| {
        let mut ticker = interval(args.stats_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker
    });
    let mut last = VerdictCounts::default();
    loop {
        tokio::select! {
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            ready = bpf_log.readable_mut() => {
                let mut ready = ready.context("reading the XDP program's log ring")?;
                ready.get_inner_mut().flush();
                ready.clear_ready();
            }
            _ = tick(&mut ticker) => {
                let now = VerdictCounts::read(loaded.ebpf()).context("reading verdict counters")?;
                info!("verdicts: {now} (+{} packets)", now.since(&last).total());
                last = now;
            }
        }
    }

    for attachment in attachments {
        match loaded.program_mut().detach(attachment.link) {
            Ok(()) => info!(iface = %attachment.iface, "detached"),
            Err(e) => warn!(iface = %attachment.iface, "detaching failed: {e}"),
        }
    }
    let last = VerdictCounts::read(loaded.ebpf()).context("reading verdict counters")?;
    info!("final verdicts: {last}");
    Ok(())
}

/// The next stats tick, or never when stats are off.
async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => pending().await,
    }
}
