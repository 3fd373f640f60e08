//! `demux close ID`: close an endpoint and its binding (its owner or root only).

use clap::Args;
use demux::control::Request;

use super::ControlArgs;

#[derive(Debug, Args)]
pub(crate) struct CloseArgs {
    /// The endpoint's descriptor, as `demux bind` printed it or `demux list` shows it.
    pub id: u32,
    #[command(flatten)]
    pub control: ControlArgs,
}

pub(crate) fn run(args: CloseArgs) -> anyhow::Result<()> {
    args.control
        .connect()?
        .call(Request::Close { id: args.id })?;
    println!("closed {}", args.id);
    Ok(())
}
