//! `demux stats`: verdicts, per-endpoint counters, AF_XDP socket counters, and the accounting
//! (seen = delivered + handed to fast-path clients + passed + dropped). `--watch` redraws it
//! every second, like `top`.

use std::time::Duration;

use clap::Args;
use demux::control::{Request, Response, Stats};

use super::ControlArgs;

#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    #[arg(long)]
    pub json: bool,
    /// Redraw every second until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

pub(crate) fn run(args: StatsArgs) -> anyhow::Result<()> {
    let mut client = args.control.connect()?;
    loop {
        let Response::Stats(stats) = client.call(Request::Stats)? else {
            anyhow::bail!("the daemon answered stats with something else");
        };
        if args.json {
            println!("{}", serde_json::to_string(&stats)?);
        } else {
            if args.watch {
                print!("\x1b[H\x1b[2J");
            }
            print!("{}", report(&stats));
        }
        if !args.watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub(crate) fn report(stats: &Stats) -> String {
    let mut out = String::from("verdicts:");
    for (name, n) in &stats.verdicts {
        out += &format!(" {name}={n}");
    }
    out += &format!(
        "\naccounting: seen {} = delivered {} + handed to fast-path clients {} + passed {} + \
         dropped {} (+ {} in flight)\n\n",
        stats.seen(),
        stats.delivered(),
        stats.handed_to_clients(),
        stats.passed(),
        stats.dropped(),
        stats.seen() as i128 - i128::from(stats.accounted()),
    );
    out += &super::list::table(&stats.endpoints);
    out += "\nsockets:\n";
    for s in &stats.sockets {
        out += &format!(
            "  {} queue {}: rx_dropped={} rx_ring_full={} fill_ring_empty={} frames={} free={} \
             fill_ring={} rx_ring={} handed_to_client={} frame_limit={}{}\n",
            s.iface,
            s.queue,
            s.rx_dropped,
            s.rx_ring_full,
            s.rx_fill_ring_empty,
            s.frames,
            s.frames_free,
            s.frames_fill_ring,
            s.frames_rx_ring,
            s.handed_to_client,
            s.frame_limit,
            if s.leased { " (leased)" } else { "" }
        );
    }
    out += &format!(
        "worker drops: no_endpoint={} bad_metadata={} bad_checksum={} bad_chain={}\n",
        stats.dropped_no_endpoint,
        stats.dropped_bad_metadata,
        stats.dropped_bad_checksum,
        stats.dropped_bad_chain
    );
    out
}
