//! `cargo xtask run`: build, then run the daemon with root privileges (directly when root,
//! else through sudo), passing the arguments through.

use std::process::Command;

use anyhow::{bail, Context as _};
use clap::Args;

use crate::{build, has_program, is_root, show, workspace_root};

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Arguments for `demux daemon`, e.g. `-- --iface veth0 --mode skb`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub(crate) fn run(args: RunArgs) -> anyhow::Result<()> {
    build::run()?;
    let daemon = workspace_root().join("target/release/demux");
    let mut cmd = if is_root() {
        Command::new(&daemon)
    } else if has_program("sudo") {
        let mut cmd = Command::new("sudo");
        cmd.arg("--preserve-env=DEMUX_LOG").arg(&daemon);
        cmd
    } else {
        bail!(
            "the daemon needs root (CAP_BPF and CAP_NET_ADMIN) and sudo is not installed: \
             run `{} daemon …` as root",
            daemon.display()
        );
    };
    cmd.arg("daemon").args(&args.args);
    println!("$ {}", show(&cmd));
    let status = cmd.status().context("could not start the daemon")?;
    if !status.success() {
        bail!("the daemon exited with {status}");
    }
    Ok(())
}
