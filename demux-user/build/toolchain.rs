//! Where the BPF toolchain is on this machine: which route can build `demux-ebpf`, and where
//! bpf-linker is. Shared, as source, by `demux-user/build.rs` (which builds the program) and
//! the xtask (which installs what is missing), so both agree on what "present" means.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

pub(crate) const BPF_TARGET: &str = "bpfel-unknown-none";
pub(crate) const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
/// Debian's prebuilt `core` for the BPF target (package libstd-rust-web-dev-bpf).
pub(crate) const DEBIAN_BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
/// The LLVM that bpf-linker is built against (package llvm-22-dev).
pub(crate) const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Debian packages for the Debian route, and the LLVM to build bpf-linker.
pub(crate) const RUST_PACKAGES: [&str; 2] = ["rustc-web", "libstd-rust-web-dev-bpf"];
pub(crate) const LLVM_PACKAGE: &str = "llvm-22-dev";
/// `cargo install` arguments for bpf-linker (run with `LLVM_PREFIX` set).
pub(crate) const BPF_LINKER_INSTALL: [&str; 7] = [
    "install",
    "bpf-linker",
    "--version",
    "^0.13",
    "--no-default-features",
    "--features",
    "llvm-22",
];

/// How `demux-ebpf` gets built for the BPF target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// rustup's nightly with rust-src: `-Z build-std=core`.
    Nightly,
    /// Debian's rustc-web (>= 1.96) with the prebuilt BPF core, `RUSTC_BOOTSTRAP=1`.
    Debian,
}

/// The first route whose pieces are all present.
pub(crate) fn pick_route() -> Option<Route> {
    let nightly_has_rust_src = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .is_some_and(|sysroot| sysroot.join("lib/rustlib/src/rust/library/core").is_dir());
    if nightly_has_rust_src {
        return Some(Route::Nightly);
    }
    let debian_minor = Command::new(DEBIAN_RUSTC)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| rustc_minor(&String::from_utf8_lossy(&out.stdout)));
    if debian_minor.is_some_and(|minor| minor >= 96) && Path::new(DEBIAN_BPF_CORE).is_dir() {
        return Some(Route::Debian);
    }
    None
}

/// The minor version out of `rustc 1.96.0 (…)`.
fn rustc_minor(version: &str) -> Option<u32> {
    version
        .split_whitespace()
        .nth(1)?
        .split('.')
        .nth(1)?
        .parse()
        .ok()
}

/// `$PATH` with cargo's install directory appended, where `cargo install` puts bpf-linker.
pub(crate) fn path_with_cargo_bin() -> OsString {
    let mut dirs: Vec<PathBuf> =
        env::split_paths(&env::var_os("PATH").unwrap_or_default()).collect();
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    if let Some(bin) = cargo_home.map(|home| home.join("bin")) {
        if !dirs.contains(&bin) {
            dirs.push(bin);
        }
    }
    env::join_paths(dirs).unwrap_or_default()
}

/// The bpf-linker that a build would use, if any.
pub(crate) fn bpf_linker() -> Option<PathBuf> {
    env::split_paths(&path_with_cargo_bin())
        .map(|dir| dir.join("bpf-linker"))
        .find(|p| p.is_file())
}
