//! `cargo xtask`: the developer commands of demux. Each command that needs the BPF toolchain
//! first runs the idempotent toolchain check-and-install in `toolchain`.
#![deny(unsafe_code)]

mod bench;
mod build;
mod demo;
mod dist;
mod fuzz;
mod light_client;
mod run;
mod soak;
mod test;
mod unit_file;
// The testbed is shared as source with demux-user's tests and benchmarks
// (`demux::testing::testbed`): the xtask cannot depend on demux-user, whose build script needs
// the toolchain the xtask installs.
#[path = "../../demux-user/src/testing/testbed.rs"]
#[allow(
    unsafe_code,
    dead_code,
    unreachable_pub,
    reason = "shared with the tests and benchmarks, which use more of it, as `demux::testing::testbed`"
)]
mod testbed;
mod toolchain;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

/// Developer commands for demux. On a fresh Debian machine each command installs the
/// toolchain pieces it needs (rustc-web, libstd-rust-web-dev-bpf, llvm-22-dev, bpf-linker)
/// before it runs.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    /// Do not install missing toolchain pieces: only report them and the commands that would.
    #[arg(long, global = true, env = "DEMUX_NO_INSTALL")]
    no_install: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The first command to run: set up, build, and show demux steering traffic in a testbed
    /// of two network namespaces (root).
    Demo(demo::DemoArgs),
    /// Build the XDP program and the daemon (release).
    Build,
    /// Build, then run the `demux` daemon as root, passing the arguments after `--` through,
    /// e.g. `cargo xtask run -- --iface veth0`.
    Run(run::RunArgs),
    /// Run every check: rustfmt, clippy, unit tests and the privileged tests (as root).
    Test(test::TestArgs),
    /// Run a benchmark (as root): `cargo xtask bench classifier [--quick]`.
    Bench(bench::BenchArgs),
    /// Build the Debian package (cargo-deb): binaries, systemd unit, default configuration,
    /// man pages, shell completions, into target/debian/release/.
    Dist(dist::DistArgs),
    /// Fuzz the XDP program against its reference model (as root): random and mutated frames
    /// through BPF_PROG_TEST_RUN, 10,000,000 by default.
    Fuzz(fuzz::FuzzArgs),
    /// Soak the daemon (as root): N minutes (10 by default) at the highest zero-loss rate with
    /// endpoints binding and closing every second; fails on any leak or accounting error.
    Soak(soak::SoakArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = toolchain::ensure(!cli.no_install).and_then(|()| match cli.command {
        Cmd::Demo(args) => demo::run(args),
        Cmd::Build => build::run(),
        Cmd::Run(args) => run::run(args),
        Cmd::Test(args) => test::run(args),
        Cmd::Bench(args) => bench::run(args),
        Cmd::Fuzz(args) => fuzz::run(args),
        Cmd::Soak(args) => soak::run(args),
        Cmd::Dist(args) => dist::run(args, !cli.no_install),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of `xtask/`).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

/// `cargo` as invoked by `cargo xtask`, run from the workspace root.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Prints `$ command` and runs it, failing with the command's name if it fails.
fn step(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = show(cmd);
    println!("$ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

fn show(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(cmd.get_program())
        .to_string_lossy()
        .into_owned();
    std::iter::once(program)
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether this process runs as root.
fn is_root() -> bool {
    testbed::is_root()
}

/// Whether `program` is on `$PATH`.
fn has_program(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}
