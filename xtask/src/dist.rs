//! `cargo xtask dist`: the Debian package of demux, with cargo-deb (`[package.metadata.deb]`
//! in demux-user/Cargo.toml says what goes where): the `demux` and `demux-gen` binaries, the
//! systemd unit (`dist/demux.service`), the default configuration (`dist/demux.toml`, no
//! interface), the man pages and the bash, zsh and fish completions, which `demux manuals`
//! writes from the clap definitions into `target/dist` first.
//!
//! `cargo xtask test` packages the binaries its test run already built (profile `dev`, no
//! release build) and installs that package into a scratch root (`install_test`); the
//! manifests in `dist/k8s` are checked against the unit file by unit tests (`manifest`).

pub(crate) mod install_test;
#[cfg(test)]
mod manifest;

use std::{
    collections::BTreeSet,
    fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, ensure, Context as _};
use clap::Args;

use crate::{cargo, step, workspace_root};

/// The cargo-deb this xtask installs (`cargo install --locked`), when `cargo deb` is missing
/// or another version: pinned, so that every machine builds the same package. Without its
/// default features it compresses with gzip only and builds no C library (xz), which keeps
/// the install to about a minute of compilation.
pub(crate) const CARGO_DEB_VERSION: &str = "3.8.0";

/// The cargo profile whose binaries go into the package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Profile {
    /// `cargo xtask dist`: optimized binaries, built here.
    Release,
    /// `cargo xtask test`: the binaries its `cargo test` already built.
    Dev,
}

impl Profile {
    /// The profile's name for cargo and cargo-deb.
    fn name(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Dev => "dev",
        }
    }

    /// Its directory under `target/`.
    fn dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Dev => "debug",
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct DistArgs {
    /// Instead: build the debug binaries, package them and run the package test of `cargo
    /// xtask test` (root: unpack, render the man pages, run the daemon on a veth).
    #[arg(long)]
    test: bool,
}

/// `cargo xtask dist`: builds the release binaries, then the package; prints its path.
pub(crate) fn run(args: DistArgs, install: bool) -> anyhow::Result<()> {
    if args.test {
        step(cargo().args(["build", "--package", "demux-user", "--bins"]))?;
        let mut failed = 0;
        for (name, outcome) in install_test::run(install) {
            match outcome {
                install_test::Outcome::Passed => println!("test {name} ... ok"),
                install_test::Outcome::Skipped(why) => println!("test {name} ... skipped: {why}"),
                install_test::Outcome::Failed(e) => {
                    failed += 1;
                    println!("test {name} ... FAILED: {e:#}");
                }
            }
        }
        ensure!(failed == 0, "{failed} package test(s) failed");
        return Ok(());
    }
    step(cargo().args(["build", "--release", "--package", "demux-user", "--bins"]))?;
    let deb = package(Profile::Release, install)?;
    println!(
        "built: {} (install: `apt-get install ./{}`; then set `interfaces` in \
         /etc/demux/demux.toml and `systemctl enable --now demux`; docs/DEPLOYMENT.md)",
        deb.display(),
        deb.strip_prefix(workspace_root()).unwrap_or(&deb).display()
    );
    Ok(())
}

/// Writes the man pages and completions with the `profile`'s `demux`, then packages that
/// profile's binaries (already built) with cargo-deb into `target/debian/<profile>/`.
/// Returns the package's path.
pub(crate) fn package(profile: Profile, install: bool) -> anyhow::Result<PathBuf> {
    ensure_cargo_deb(install)?;
    let root = workspace_root();
    let demux = root.join("target").join(profile.dir()).join("demux");
    ensure!(
        demux.is_file(),
        "{} is missing: build it first (`cargo build --package demux-user --bins`)",
        demux.display()
    );
    // What `demux manuals` writes; the package's assets name these paths.
    let generated = root.join("target/dist");
    let _ = fs::remove_dir_all(&generated);
    step(
        Command::new(&demux)
            .arg("manuals")
            .arg("--out")
            .arg(&generated),
    )?;
    let out = root.join("target/debian").join(profile.dir());
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    step(
        cargo()
            .args(["deb", "--package", "demux-user", "--no-build", "--profile"])
            .arg(profile.name())
            .args(["--compress-type", "gz"])
            // The test's package: compressed fast (a minute less for the debug binaries).
            .args((profile == Profile::Dev).then_some("--fast"))
            .arg("--output")
            .arg(&out),
    )?;
    let debs: Vec<PathBuf> = fs::read_dir(&out)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .collect();
    match debs.as_slice() {
        [deb] => Ok(deb.clone()),
        other => bail!(
            "expected one .deb in {}, found {}",
            out.display(),
            other.len()
        ),
    }
}

/// Installs cargo-deb [`CARGO_DEB_VERSION`] unless `cargo deb --version` already says it.
fn ensure_cargo_deb(install: bool) -> anyhow::Result<()> {
    let version = cargo()
        .args(["deb", "--version"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned());
    if version
        .as_deref()
        .is_some_and(|v| v.split_whitespace().last() == Some(CARGO_DEB_VERSION))
    {
        return Ok(());
    }
    let mut cmd = cargo();
    cmd.args([
        "install",
        "cargo-deb",
        "--locked",
        "--version",
        CARGO_DEB_VERSION,
    ])
    .args(["--no-default-features", "--features", "gzip"]);
    if !install {
        bail!(
            "cargo-deb {CARGO_DEB_VERSION} is missing (found: {}); installing is turned off: \
             run `{}`",
            version.as_deref().unwrap_or("none"),
            crate::show(&cmd)
        );
    }
    step(&mut cmd)
}

/// The system calls `dist/k8s/seccomp-demux.json` allows (its `SCMP_ACT_ALLOW` rules).
pub(crate) fn seccomp_allowed() -> anyhow::Result<BTreeSet<String>> {
    let path = workspace_root().join("dist/k8s/seccomp-demux.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let profile: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let rules = profile["syscalls"]
        .as_array()
        .with_context(|| format!("{}: no `syscalls` list", path.display()))?;
    Ok(rules
        .iter()
        .filter(|rule| rule["action"] == "SCMP_ACT_ALLOW")
        .flat_map(|rule| rule["names"].as_array().into_iter().flatten())
        .filter_map(|name| name.as_str().map(str::to_owned))
        .collect())
}
