//! The `demux` command line: one file per verb.

pub(crate) mod bind;
pub(crate) mod close;
pub(crate) mod daemon;
pub(crate) mod detach;
pub(crate) mod list;
pub(crate) mod manuals;
pub(crate) mod recv;
pub(crate) mod reload;
pub(crate) mod stats;

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};
use demux::control::{client::Client, DEFAULT_SOCKET};

/// Exit codes, shown in `--help`.
const EXIT_CODES: &str = "Exit codes: 0 success; 1 the command failed (the message says why); \
                          2 bad command line or invalid request; 3 the daemon is not reachable; \
                          4 permission denied; 5 address in use; 6 no such endpoint; 7 a limit is \
                          reached; 8 the CLI and the daemon speak different protocol versions.\n\
                          Environment: DEMUX_LOG log filter (default `info`, e.g. debug); \
                          DEMUX_CONTROL control socket path.";

/// demux: an eBPF-accelerated packet demultiplexer. An XDP program reads the socket address
/// of every incoming packet and steers packets that match a binding to user-space endpoints;
/// everything else passes to the kernel untouched.
#[derive(Debug, Parser)]
#[command(name = "demux", version, after_help = EXIT_CODES)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the daemon: load the XDP program, attach it to interfaces, open an AF_XDP socket per
    /// rx queue, serve the control socket, until SIGINT or SIGTERM. Needs root.
    Daemon(daemon::DaemonArgs),
    /// Take demux's program out of the interfaces' libxdp dispatchers and remove its pins: the
    /// cleanup after a daemon in `--xdp-mode multiprog` that was killed (a unit's
    /// `ExecStopPost`). Needs root; run it only while no daemon runs on those interfaces.
    Detach(detach::DetachArgs),
    /// Create an endpoint with a binding and print its descriptor.
    Bind(bind::BindArgs),
    /// Bind an endpoint for this command's lifetime and print what it receives.
    Recv(recv::RecvArgs),
    /// Close an endpoint.
    Close(close::CloseArgs),
    /// List the endpoints.
    List(list::ListArgs),
    /// Show verdicts, per-endpoint and per-socket counters, and the accounting.
    Stats(stats::StatsArgs),
    /// Have the daemon read its config file again and apply the difference (root only; as
    /// SIGHUP): endpoints, limits and interfaces that changed; the rest keeps running.
    Reload(reload::ReloadArgs),
    /// Print a shell completion script: `demux completions bash > /etc/bash_completion.d/demux`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages and shell completions of `demux` and `demux-gen` into a directory
    /// (the Debian package's, `cargo xtask dist`).
    #[command(hide = true)]
    Manuals(manuals::ManualsArgs),
}

pub(crate) fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Daemon(args) => daemon::run(args),
        Command::Detach(args) => detach::run(args),
        Command::Bind(args) => bind::run(args),
        Command::Recv(args) => recv::run(args),
        Command::Close(args) => close::run(args),
        Command::List(args) => list::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Reload(args) => reload::run(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "demux", &mut std::io::stdout());
            Ok(())
        }
        Command::Manuals(args) => manuals::run(args),
    }
}

/// Where the daemon's control socket is.
#[derive(Debug, Args)]
pub(crate) struct ControlArgs {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", env = "DEMUX_CONTROL", default_value = DEFAULT_SOCKET)]
    pub control: PathBuf,
}

impl ControlArgs {
    pub(crate) fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.control)?)
    }
}

/// Blocks until SIGINT or SIGTERM.
pub(crate) fn wait_for_signal() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            Ok(())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
