//! The client library's outside contract, checked as an application would meet it: a fresh
//! crate that depends on `demux-user` with `default-features = false` (and the workspace's
//! `Cargo.lock`, so versions stay within rust-version) and calls
//! `demux::client::Endpoint::bind` must build where no `bpf-linker` exists anywhere — not on
//! `PATH`, not in cargo's bin directory — and pull at most [`MAX_CRATES`] crates.

use std::{
    collections::BTreeSet,
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _};

use crate::{show, workspace_root};

/// The most crates (the application's own included) a client-only dependency may pull.
pub(crate) const MAX_CRATES: usize = 30;

const MAIN: &str = r#"//! Binds an endpoint where no daemon listens: the client library builds and reports it.
use demux::{binding::Protocol, client::{Endpoint, ErrorCode}};

fn main() {
    let error = Endpoint::bind("/nonexistent/demux.sock", Protocol::Udp, "198.18.0.2:9000")
        .err()
        .expect("no daemon listens there");
    assert_eq!(error.code(), ErrorCode::Unavailable, "{error}");
    println!("light client: {error}");
}
"#;

/// Generates, builds and runs the crate, and counts its dependencies.
pub(crate) fn check() -> anyhow::Result<()> {
    let root = workspace_root();
    let dir = root.join("target/light-client");
    let _ = fs::remove_dir_all(dir.join("src"));
    fs::create_dir_all(dir.join("src")).context("creating target/light-client")?;
    fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"light-client\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             publish = false\n\n[dependencies]\n\
             demux-user = {{ path = \"{}\", default-features = false }}\n\n[workspace]\n",
            root.join("demux-user").display()
        ),
    )?;
    fs::write(dir.join("src/main.rs"), MAIN)?;
    fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).context("copying Cargo.lock")?;

    // A cargo home without bin/ (so without bpf-linker) that shares the downloaded registry.
    let home = dir.join("cargo-home");
    let _ = fs::remove_dir_all(&home);
    fs::create_dir_all(&home)?;
    let real_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    std::os::unix::fs::symlink(real_home.join("registry"), home.join("registry"))
        .context("linking the registry into the stripped cargo home")?;
    let path = path_without("bpf-linker")?;
    for dir in env::split_paths(&path).chain([home.join("bin")]) {
        ensure!(
            !dir.join("bpf-linker").exists(),
            "bpf-linker is still reachable in {}",
            dir.display()
        );
    }

    let run = |args: &[&str]| -> anyhow::Result<String> {
        let mut cmd = Command::new(cargo_binary());
        cmd.current_dir(&dir)
            .args(args)
            .env("PATH", &path)
            .env("CARGO_HOME", &home)
            .env("CARGO_TARGET_DIR", dir.join("target"))
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("RUSTC_WRAPPER");
        if let Some(rustc) = sibling_rustc() {
            cmd.env("RUSTC", rustc);
        }
        println!("$ {} (PATH and CARGO_HOME without bpf-linker)", show(&cmd));
        let output = cmd
            .output()
            .with_context(|| format!("running {}", show(&cmd)))?;
        if !output.status.success() {
            bail!(
                "`{}` failed in {}:\n{}",
                show(&cmd),
                dir.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    run(&["build", "--offline"])?;
    print!("{}", run(&["run", "--offline", "--quiet"])?);
    let tree = run(&[
        "tree",
        "--offline",
        "-e",
        "normal,build",
        "--prefix",
        "none",
    ])?;
    let crates = crates_in(&tree);
    println!(
        "light client: {} crates (at most {MAX_CRATES}): {}",
        crates.len(),
        crates.iter().cloned().collect::<Vec<_>>().join(", ")
    );
    ensure!(
        crates.len() <= MAX_CRATES,
        "a client-only dependency on demux-user pulls {} crates, more than {MAX_CRATES}",
        crates.len()
    );
    Ok(())
}

/// The distinct `name vX.Y.Z` lines of `cargo tree --prefix none`.
fn crates_in(tree: &str) -> BTreeSet<String> {
    tree.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            Some(format!("{} {}", words.next()?, words.next()?))
        })
        .collect()
}

/// `$PATH` without the directories that hold `program`, nor cargo's bin directory.
fn path_without(program: &str) -> anyhow::Result<OsString> {
    let dirs = env::split_paths(&env::var_os("PATH").unwrap_or_default())
        .filter(|dir| !dir.join(program).exists() && !dir.ends_with(".cargo/bin"))
        .collect::<Vec<_>>();
    Ok(env::join_paths(dirs)?)
}

/// The cargo running this xtask (the real binary, not rustup's proxy in cargo's bin).
fn cargo_binary() -> PathBuf {
    env::var_os("CARGO").map_or_else(|| "cargo".into(), PathBuf::from)
}

/// The rustc beside that cargo, when it is a toolchain directory's.
fn sibling_rustc() -> Option<PathBuf> {
    let rustc = Path::new(&cargo_binary()).with_file_name("rustc");
    rustc.is_file().then_some(rustc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_crate_once() {
        let tree = "light-client v0.0.0 (/x)\ndemux-user v0.1.0 (/y)\nlibc v0.2.1\n\
                    serde v1.0.0\nlibc v0.2.1 (*)\n\nthiserror v2.0.0\n";
        let crates = crates_in(tree);
        assert_eq!(crates.len(), 5, "{crates:?}");
        assert!(crates.contains("libc v0.2.1"));
    }
}
