//! `cargo xtask test`: rustfmt, clippy (both sides), rustdoc with warnings as errors (stale
//! intra-doc links), the light-client contract (`crate::light_client`), then every test: unit
//! tests and the privileged tests (BPF load, BPF_PROG_TEST_RUN, a veth in a network namespace),
//! `systemd-analyze verify` on the unit file (`crate::unit_file`), then a one-minute soak
//! (`crate::soak`), each counted as one test.
//!
//! It reads the test binaries' closing lines and ends with one summary line,
//! `summary: N passed, N failed, N skipped`, where a privileged test that could not run counts
//! as skipped, never as passed: the privileged harness (libtest-mimic) reports it as ignored,
//! and prints a `skipped: <reason>` line for it, which is repeated at the end.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
};

use anyhow::{bail, Context as _};
use clap::Args;

use crate::{
    cargo, dist::install_test::Outcome, light_client, show, soak, step, unit_file, workspace_root,
};

/// Minutes of the soak this command runs.
const SOAK_MINUTES: f64 = 1.0;

#[derive(Debug, Args)]
pub(crate) struct TestArgs {
    /// Run only the tests whose name contains this text (checks still run).
    filter: Option<String>,
}

/// Tests counted over all test binaries.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    passed: u64,
    failed: u64,
    skipped: u64,
}

pub(crate) fn run(args: TestArgs) -> anyhow::Result<()> {
    step(cargo().args(["fmt", "--all", "--", "--check"]))?;
    step(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The XDP crate is checked on the host; clippy needs panic=abort for a no_std binary.
    step(
        cargo()
            .args([
                "clippy",
                "--package",
                "demux-ebpf",
                "--target-dir",
                "target/clippy-ebpf",
            ])
            .args(["--", "-D", "warnings"])
            .env("RUSTFLAGS", "-C panic=abort"),
    )?;

    // Intra-doc links are checked: a stale reference fails the build.
    step(
        cargo()
            .args([
                "doc",
                "--no-deps",
                "--document-private-items",
                "--workspace",
            ])
            .args(["--exclude", "demux-ebpf"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    light_client::check()?;

    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--exclude", "demux-ebpf"]);
    cmd.args(args.filter.as_deref());
    // The XDP program against its model over a million random and mutated frames
    // (`cargo xtask fuzz` runs ten million).
    cmd.env("DEMUX_DIFF_FRAMES", "1000000");
    cmd.stdout(Stdio::piped());
    println!("$ {}", show(&cmd));
    let mut child = cmd.spawn().context("could not start cargo test")?;
    let mut tally = Tally::default();
    let mut skips = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        tally.add_closing_line(&line);
        if line.contains("skipped: ") {
            skips.push(line);
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    // The Debian package of the binaries just built, installed into a scratch root and run
    // (root; `dist::install_test`).
    if args.filter.is_none() {
        let install = std::env::var_os("DEMUX_NO_INSTALL").is_none();
        for (name, outcome) in crate::dist::install_test::run(install) {
            let line = match outcome {
                Outcome::Passed => {
                    tally.passed += 1;
                    format!("test {name} ... ok")
                }
                Outcome::Skipped(why) => {
                    tally.skipped += 1;
                    let line = format!("test {name} ... skipped: {why}");
                    skips.push(line.clone());
                    line
                }
                Outcome::Failed(error) => {
                    tally.failed += 1;
                    format!("test {name} ... FAILED: {error:#}")
                }
            };
            println!("{line}");
        }
    }

    // The systemd unit, against the daemon `cargo test` just built (`crate::unit_file`).
    match unit_file::check(&workspace_root().join("target/debug/demux")) {
        Ok(unit_file::Outcome::Passed) => {
            println!("test dist/demux.service (systemd-analyze verify) ... ok");
            tally.passed += 1;
        }
        Ok(unit_file::Outcome::Skipped(reason)) => {
            let line =
                format!("test dist/demux.service (systemd-analyze verify) ... skipped: {reason}");
            println!("{line}");
            skips.push(line);
            tally.skipped += 1;
        }
        Err(error) => {
            println!("test dist/demux.service (systemd-analyze verify) ... FAILED: {error:#}");
            tally.failed += 1;
        }
    }

    // One minute of the soak (`cargo xtask soak` runs ten), after the tests so that nothing
    // else competes with it for the CPUs.
    if args.filter.as_deref().is_none_or(|f| "soak".contains(f)) {
        if crate::is_root() {
            let mut soak = soak::test_command(SOAK_MINUTES);
            println!("$ {}", show(&soak));
            let passed = soak.status().context("could not start the soak")?.success();
            println!(
                "test soak ({SOAK_MINUTES} min) ... {}",
                if passed { "ok" } else { "FAILED" }
            );
            if passed {
                tally.passed += 1;
            } else {
                tally.failed += 1;
            }
        } else {
            let skip = "test soak ... skipped: not root (namespaces, XDP and AF_XDP)".to_owned();
            println!("{skip}");
            tally.skipped += 1;
            skips.push(skip);
        }
    }

    if !skips.is_empty() {
        println!("\nskipped tests (not counted as passed):");
        for skip in &skips {
            println!("  {skip}");
        }
    }
    println!(
        "\nsummary: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.skipped
    );
    if !status.success() || tally.failed > 0 {
        bail!("tests failed ({status})");
    }
    Ok(())
}

impl Tally {
    /// Adds the counts of a closing line, libtest's and libtest-mimic's (the privileged
    /// tests'): `test result: ok. 3 passed; 0 failed; 1 ignored; …`, where ignored counts as
    /// skipped.
    fn add_closing_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        let counts = rest.split_once(". ").map_or("", |(_, counts)| counts);
        for part in counts.split(';') {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.skipped += n,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libtest_and_libtest_mimic_closing_lines() {
        let mut tally = Tally::default();
        for line in [
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; \
             finished in 0.00s",
            "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
            // The privileged harness, not root: every test skipped.
            "test result: ok. 4 passed; 0 failed; 2 ignored; 0 measured; 8 filtered out; \
             finished in 0.00s",
            "test program::verifier_accepts_the_program ... skipped: not root",
            "test foo ... ok",
            "running 3 tests",
        ] {
            tally.add_closing_line(line);
        }
        assert_eq!(
            tally,
            Tally {
                passed: 9,
                failed: 1,
                skipped: 3
            }
        );
    }
}
