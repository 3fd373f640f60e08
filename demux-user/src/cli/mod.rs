//! The `demux` command line: one file per verb.

pub mod daemon;

use std::time::Duration;

use clap::{Parser, Subcommand};

/// Exit codes, shown in `--help`.
const EXIT_CODES: &str = "Exit codes: 0 success, 1 the command failed (the message says why), \
                          2 bad command line.\nLog filter: DEMUX_LOG (default `info`), e.g. \
                          DEMUX_LOG=debug.";

/// demux: an eBPF-accelerated packet demultiplexer. An XDP program reads the socket address
/// of every incoming packet and steers packets that match a binding to user-space endpoints;
/// everything else passes to the kernel untouched.
#[derive(Debug, Parser)]
#[command(name = "demux", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: load the XDP program, attach it to interfaces and report its verdicts
    /// until SIGINT or SIGTERM, then detach. Needs root (CAP_BPF and CAP_NET_ADMIN).
    Daemon(daemon::DaemonArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Daemon(args) => daemon::run(args),
    }
}

/// Parses `0`, `250ms`, `5s` or `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let err = || format!("`{text}` is not a duration: write e.g. 500ms, 5s or 2m (0 for never)");
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |at| text.split_at(at));
    let n: u64 = number.parse().map_err(|_| err())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "" if n == 0 => Ok(Duration::ZERO),
        _ => Err(err()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "5", "s", "5h", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
