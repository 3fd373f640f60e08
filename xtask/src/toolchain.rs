//! The idempotent toolchain check-and-install that runs before every xtask command.
//!
//! It checks, prints and (on Debian, as root, unless `--no-install`/`DEMUX_NO_INSTALL`)
//! installs: a Rust route to the BPF target (Debian's rustc-web and libstd-rust-web-dev-bpf),
//! bpf-linker (built against Debian's llvm-22-dev), and iproute2, ethtool and xdp-tools (with
//! libxdp1's dispatcher object) for the network tests.
//! Elsewhere it prints the exact commands to run instead.

#[path = "../../demux-user/build/toolchain.rs"]
#[allow(
    dead_code,
    reason = "shared with demux-user/build.rs, which uses the build helpers"
)]
mod shared;

use std::{path::Path, process::Command};

use anyhow::bail;
use shared::{Route, BPF_LINKER_INSTALL, LLVM_PACKAGE, LLVM_PREFIX, RUST_PACKAGES};

use crate::{has_program, is_root, step};

/// What is missing, as the Debian packages and cargo installs that provide it.
#[derive(Debug, Default)]
struct Missing {
    apt: Vec<&'static str>,
    bpf_linker: bool,
}

impl Missing {
    fn is_empty(&self) -> bool {
        self.apt.is_empty() && !self.bpf_linker
    }

    /// The shell commands that install everything missing.
    fn commands(&self) -> Vec<String> {
        let mut commands = Vec::new();
        if !self.apt.is_empty() {
            commands.push("apt-get update".to_owned());
            commands.push(format!("apt-get install -y {}", self.apt.join(" ")));
        }
        if self.bpf_linker {
            commands.push(format!(
                "LLVM_PREFIX={LLVM_PREFIX} cargo {}",
                BPF_LINKER_INSTALL.join(" ")
            ));
        }
        commands
    }
}

/// Checks the toolchain, installs what is missing when allowed, and fails if anything is still
/// missing afterwards.
pub(crate) fn ensure(install: bool) -> anyhow::Result<()> {
    let missing = check(true);
    if missing.is_empty() {
        return Ok(());
    }
    let commands = missing.commands();
    let why_not = if !install {
        Some("installing is turned off (--no-install / DEMUX_NO_INSTALL)")
    } else if !Path::new("/etc/debian_version").exists() {
        Some("this is not Debian")
    } else if !is_root() {
        Some("this is not root")
    } else {
        None
    };
    if let Some(why_not) = why_not {
        bail!(
            "the BPF toolchain is incomplete and {why_not}; run these commands, then retry:\n  {}",
            commands.join("\n  ")
        );
    }
    if !missing.apt.is_empty() {
        println!("toolchain: installing {}", missing.apt.join(" "));
        step(Command::new("apt-get").args(["update", "-q"]))?;
        step(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing.apt)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if missing.bpf_linker {
        println!("toolchain: building bpf-linker against LLVM 22 (about a minute)");
        step(
            crate::cargo()
                .args(BPF_LINKER_INSTALL)
                .env("LLVM_PREFIX", LLVM_PREFIX),
        )?;
    }
    let still = check(false);
    if !still.is_empty() {
        bail!(
            "the toolchain is still incomplete after installing: {:?}",
            still
        );
    }
    println!("toolchain: ready");
    Ok(())
}

const PLOT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// What is missing; with `report`, prints one line per piece.
fn check(report: bool) -> Missing {
    let say = |piece: &str, state: &str| {
        if report {
            println!("toolchain: {piece:<32} {state}");
        }
    };
    let mut missing = Missing::default();
    match shared::pick_route() {
        Some(Route::Nightly) => say(
            "rustc for bpfel-unknown-none",
            "ok (rustup nightly + rust-src)",
        ),
        Some(Route::Debian) => say("rustc for bpfel-unknown-none", "ok (Debian rustc-web)"),
        None => {
            say("rustc for bpfel-unknown-none", "missing");
            missing.apt.extend(RUST_PACKAGES);
        }
    }
    match shared::bpf_linker() {
        Some(path) => say("bpf-linker", &format!("ok ({})", path.display())),
        None => {
            say("bpf-linker", "missing");
            missing.bpf_linker = true;
            if !Path::new(LLVM_PREFIX).join("lib/libLLVM.so").exists() {
                say("LLVM 22 (to build bpf-linker)", "missing");
                missing.apt.push(LLVM_PACKAGE);
            }
        }
    }
    // The benchmark plots' font (plotters draws text with it, in the SVG and the PNG).
    if Path::new(PLOT_FONT).exists() {
        say("DejaVu Sans (benchmark plots)", "ok");
    } else {
        say("DejaVu Sans (benchmark plots)", "missing");
        missing.apt.push("fonts-dejavu-core");
    }
    if has_program("ip") {
        say("ip (iproute2, for network tests)", "ok");
    } else {
        say("ip (iproute2, for network tests)", "missing");
        missing.apt.push("iproute2");
    }
    // The testbed turns TX checksum offload off on its veths, or what kernel sockets send
    // would arrive with partial checksums, which demux drops as bad.
    if has_program("ethtool") {
        say("ethtool (for network tests)", "ok");
    } else {
        say("ethtool (for network tests)", "missing");
        missing.apt.push("ethtool");
    }
    // The multiprog tests load libxdp's dispatcher object (libxdp1) and run xdp-filter and
    // xdp-loader next to demux.
    if has_program("xdp-filter") {
        say("xdp-tools (libxdp dispatcher tests)", "ok");
    } else {
        say("xdp-tools (libxdp dispatcher tests)", "missing");
        missing.apt.push("xdp-tools");
    }
    missing
}
