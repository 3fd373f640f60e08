//! Builds the XDP program (`demux-ebpf`) for `bpfel-unknown-none` so that a plain `cargo build`
//! builds both sides; the daemon embeds the object from `$OUT_DIR/demux.bpf.o`, the `testing`
//! feature the benchmarks' object from `$OUT_DIR/bench.bpf.o`.
//!
//! Two routes, tried in order:
//! 1. rustup's nightly with `rust-src`: `cargo +nightly build -Z build-std=core`.
//! 2. Debian's `rustc-web` (rustc >= 1.96 at /usr/bin/rustc) with the prebuilt BPF `core` from
//!    `libstd-rust-web-dev-bpf`: `RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1`, no build-std.
//!
//! Both need `bpf-linker`. When a piece is missing the build stops with one message that names
//! it and the command that installs it (`cargo xtask build` installs everything). Without the
//! `daemon` feature (the client library alone) it does nothing and needs nothing.

#[path = "build/toolchain.rs"]
#[allow(
    dead_code,
    reason = "shared with the xtask, which uses the install constants"
)]
mod toolchain;

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{exit, Command, Stdio},
};

use toolchain::{Route, BPF_TARGET, DEBIAN_RUSTC};

const INSTALL_HINT: &str = "run `cargo xtask build` (it installs what is missing), or by hand:\n  \
     apt-get install rustc-web libstd-rust-web-dev-bpf llvm-22-dev\n  \
     LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --no-default-features --features llvm-22";

fn main() {
    // The client library (`default-features = false`) embeds no program: nothing to build.
    if env::var_os("CARGO_FEATURE_DAEMON").is_none() {
        return;
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .expect("demux-user sits in the workspace")
        .to_owned();
    println!("cargo:rerun-if-changed=build/toolchain.rs");
    for watched in [
        "demux-ebpf/src",
        "demux-ebpf/Cargo.toml",
        "demux-common/src",
        "Cargo.lock",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    if let Err(message) = build(&workspace, &out_dir) {
        eprintln!("\nerror: cannot build the XDP program (demux-ebpf): {message}\n");
        exit(1);
    }
}

fn build(workspace: &Path, out_dir: &Path) -> Result<(), String> {
    if toolchain::bpf_linker().is_none() {
        return Err(format!("bpf-linker is not installed.\n{INSTALL_HINT}"));
    }
    let route = toolchain::pick_route().ok_or_else(|| {
        format!(
            "no Rust toolchain here can build for {BPF_TARGET}: neither a rustup nightly with \
             rust-src nor Debian's rustc-web (rustc >= 1.96) with libstd-rust-web-dev-bpf.\n\
             {INSTALL_HINT}"
        )
    })?;

    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = match route {
        Route::Nightly => {
            let mut cmd = Command::new("rustup");
            cmd.args(["run", "nightly", "cargo", "build", "-Z", "build-std=core"]);
            cmd
        }
        Route::Debian => {
            let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            cmd.arg("build");
            cmd
        }
    };
    // The outer cargo's compiler, wrappers (clippy) and flags are for the host: drop them.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    if let Route::Debian = route {
        cmd.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
    }
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ]
    .join("\x1f");
    cmd.current_dir(workspace)
        .args([
            "--package",
            "demux-ebpf",
            "--release",
            "--target",
            BPF_TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env("PATH", toolchain::path_with_cargo_bin())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());

    let output = cmd
        .output()
        .map_err(|e| format!("could not start cargo: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "cargo build failed ({}):\n{}",
            output.status,
            tail.join("\n")
        ));
    }
    // Every bin of demux-ebpf: the daemon's program, and the benchmarks' programs (embedded
    // only by the `testing` feature, `demux::testing::bench_object`).
    for (bin, object) in [("demux", "demux.bpf.o"), ("bench", "bench.bpf.o")] {
        let built = target_dir.join(BPF_TARGET).join("release").join(bin);
        fs::copy(&built, out_dir.join(object))
            .map_err(|e| format!("copying {} failed: {e}", built.display()))?;
    }
    Ok(())
}
