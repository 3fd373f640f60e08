//! `demux detach`: take demux's program out of the libxdp dispatchers of interfaces, removing
//! its pins under `/sys/fs/bpf/xdp/` — the cleanup after a daemon that could not do it itself
//! (killed, crashed), as a unit's `ExecStopPost`. Programs attached directly need no cleanup:
//! their link closes with the daemon. Run it only while no daemon runs on those interfaces.

use anyhow::Context as _;
use clap::Args;
use demux::{attach::ifindex, multiprog};
use demux_common::maps;

#[derive(Debug, Args)]
pub(crate) struct DetachArgs {
    /// Interface whose dispatcher demux's program leaves; repeat for several.
    #[arg(long = "iface", short = 'i', value_name = "IFACE", required = true)]
    ifaces: Vec<String>,
}

pub(crate) fn run(args: DetachArgs) -> anyhow::Result<()> {
    for iface in &args.ifaces {
        let index = ifindex(iface)?;
        let removed = multiprog::leave(index, maps::PROGRAM)
            .with_context(|| format!("taking demux out of the dispatcher on {iface}"))?;
        if removed == 0 {
            println!("{iface}: no demux program in a dispatcher");
        } else {
            println!("{iface}: removed {removed} demux program(s) and their pins");
        }
    }
    Ok(())
}
