//! `demux reload`: have the daemon read its config file again and apply the difference (root
//! only; the same as sending it SIGHUP, but answered: what changed, or why nothing did).

use clap::Args;
use demux::control::{Request, Response};

use super::ControlArgs;

#[derive(Debug, Args)]
pub(crate) struct ReloadArgs {
    #[command(flatten)]
    pub control: ControlArgs,
}

pub(crate) fn run(args: ReloadArgs) -> anyhow::Result<()> {
    let Response::Reloaded { changes } = args.control.connect()?.call(Request::Reload)? else {
        anyhow::bail!("the daemon answered reload with something else than `reloaded`");
    };
    if changes.is_empty() {
        println!("reloaded: nothing changed");
    }
    for change in changes {
        println!("{change}");
    }
    Ok(())
}
