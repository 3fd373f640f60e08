//! The `demux` binary: parses the command line, sets up logging, runs the verb and turns an
//! error into one line on stderr and exit code 1.

mod cli;

use std::{io::IsTerminal, process::ExitCode};

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // Also captures `log` records, which is how aya-log forwards the XDP program's logs.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("DEMUX_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demux: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
