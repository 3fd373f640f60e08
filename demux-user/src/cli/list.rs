//! `demux list`: the endpoints, their bindings and sinks.

use clap::Args;
use demux::control::{EndpointInfo, Request, Response};

use super::ControlArgs;

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// One JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

pub(crate) fn run(args: ListArgs) -> anyhow::Result<()> {
    let Response::Endpoints { endpoints } = args.control.connect()?.call(Request::List)? else {
        anyhow::bail!("the daemon answered list with something else");
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&endpoints)?);
    } else {
        print!("{}", table(&endpoints));
    }
    Ok(())
}

/// A text table of endpoints: one line each.
pub(crate) fn table(endpoints: &[EndpointInfo]) -> String {
    let mut out = format!(
        "{:>5} {:<4} {:<24} {:<24} {:<10} {:<24} {:>5} {:>12} {:>12} {:>10} {:>10}\n",
        "ID",
        "PROTO",
        "LOCAL",
        "CONNECT",
        "GROUP",
        "SINK",
        "OWNER",
        "REDIRECTED",
        "DELIVERED",
        "DROPPED",
        "VIA_KERNEL"
    );
    for e in endpoints {
        out += &format!(
            "{:>5} {:<4} {:<24} {:<24} {:<10} {:<24} {:>5} {:>12} {:>12} {:>10} {:>10}\n",
            e.id,
            e.protocol,
            e.local,
            e.connect.as_deref().unwrap_or("-"),
            // A reuseport group is named by its binding, shown in the other columns already.
            e.group
                .as_deref()
                .map_or("-", |g| if g.starts_with("reuseport ") {
                    "reuseport"
                } else {
                    g
                }),
            e.sink.to_string(),
            e.owner,
            e.redirected,
            e.delivered,
            e.dropped_sink_full + e.dropped_sink_error,
            e.via_kernel,
        );
    }
    out
}
