//! The `demux` binary: parses the command line, sets up logging, runs the verb and turns an
//! error into one line on stderr and exit code 1.
#![deny(unsafe_code)]

mod cli;

use std::{io::IsTerminal, process::ExitCode};

use clap::Parser;
use demux::{
    binding::BindingError,
    client,
    control::{client::ClientError, ErrorCode},
};
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
            ExitCode::from(exit_status(&error))
        }
    }
}

/// The exit status for a failed command: from the error code when the daemon refused or could
/// not be reached, 2 for a request refused before connecting, 1 otherwise (`demux --help`).
fn exit_status(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<ClientError>() {
            return e.code().exit_status();
        }
        if let Some(e) = cause.downcast_ref::<client::Error>() {
            return e.code().exit_status();
        }
        if let Some(e) = cause.downcast_ref::<demux::backing::BackingError>() {
            return e.code().exit_status();
        }
        if cause.is::<BindingError>() {
            return ErrorCode::InvalidArgument.exit_status();
        }
    }
    1
}
