//! `demux detach`: take demux's program out of the libxdp dispatchers of interfaces, removing
//! its pins under `/sys/fs/bpf/xdp/` — the cleanup after a daemon that could not do it itself
//! (killed, crashed), as the unit's `ExecStopPost`. Without `--iface`, every interface of the
//! network namespace (`/sys/class/net`), so the unit needs no interface names. Programs attached
//! directly need no cleanup: their link closes with the daemon. Run it only while no demux
//! daemon runs on those interfaces (without `--iface`: in the namespace).

use anyhow::Context as _;
use clap::Args;
use demux::{attach::ifindex, multiprog};
use demux_common::maps;

#[derive(Debug, Args)]
pub(crate) struct DetachArgs {
    /// Interface whose dispatcher demux's program leaves; repeat for several. Without it, every
    /// interface of the network namespace.
    #[arg(long = "iface", short = 'i', value_name = "IFACE")]
    ifaces: Vec<String>,
}

pub(crate) fn run(args: DetachArgs) -> anyhow::Result<()> {
    let every = args.ifaces.is_empty();
    let ifaces = if every { all_ifaces()? } else { args.ifaces };
    let mut total = 0;
    for iface in &ifaces {
        let index = match ifindex(iface) {
            Ok(index) => index,
            // Gone between the listing and now.
            Err(_) if every => continue,
            Err(e) => return Err(e.into()),
        };
        let removed = multiprog::leave(index, maps::PROGRAM)
            .with_context(|| format!("taking demux out of the dispatcher on {iface}"))?;
        total += removed;
        if removed > 0 {
            println!("{iface}: removed {removed} demux program(s) and their pins");
        } else if !every {
            println!("{iface}: no demux program in a dispatcher");
        }
    }
    if every && total == 0 {
        println!("no demux program in a dispatcher on any interface");
    }
    Ok(())
}

/// The interfaces of this network namespace, by name.
fn all_ifaces() -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .context("listing /sys/class/net")?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}
