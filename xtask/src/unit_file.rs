//! The systemd unit `dist/demux.service`, checked by `systemd-analyze verify` (systemd 252 on
//! Debian 12 has no `Type=notify-reload`, so this also catches settings too new for it). The
//! unit names `/usr/bin/demux`, where the package installs the daemon; verify checks that every
//! command exists, so it runs on a copy whose `ExecStart` names the binary `cargo test` just
//! built (`target/debug/demux`), under `target/unit-check/demux.service`. Any line of output
//! (an unknown key, a bad value) fails the check, not only a failing exit status.

use std::{fs, path::Path, process::Command};

use anyhow::{bail, ensure, Context as _};

use crate::{show, workspace_root};

/// The command the shipped unit starts.
pub(crate) const INSTALLED: &str = "/usr/bin/demux";

/// What the check found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// `systemd-analyze verify` accepted the unit without a word.
    Passed,
    /// It could not run here, and why.
    Skipped(String),
}

/// Verifies the unit against the binary `built` (which must exist).
pub(crate) fn check(built: &Path) -> anyhow::Result<Outcome> {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        return Ok(Outcome::Skipped(
            "systemd-analyze not found (Debian: apt-get install systemd)".into(),
        ));
    }
    ensure!(
        built.is_file(),
        "{} is missing: build the daemon first",
        built.display()
    );
    let root = workspace_root();
    let unit = fs::read_to_string(root.join("dist/demux.service"))
        .context("reading dist/demux.service")?;
    let copy = with_binary(&unit, built)?;
    let dir = root.join("target/unit-check");
    fs::create_dir_all(&dir).context("creating target/unit-check")?;
    let path = dir.join("demux.service");
    fs::write(&path, copy).with_context(|| format!("writing {}", path.display()))?;
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["verify", "--man=no"]).arg(&path);
    println!("$ {}", show(&cmd));
    let output = cmd.output().context("running systemd-analyze verify")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() || !said.trim().is_empty() {
        bail!(
            "systemd-analyze verify dist/demux.service ({}): {}",
            output.status,
            said.trim()
        );
    }
    Ok(Outcome::Passed)
}

/// The unit with its commands' [`INSTALLED`] replaced by `built`: the one `ExecStart`, and
/// any other `Exec…=` line that runs it (`ExecStopPost=-/usr/bin/demux detach`, with or without
/// a `-` prefix).
fn with_binary(unit: &str, built: &Path) -> anyhow::Result<String> {
    let mut found = 0;
    let lines: Vec<String> = unit
        .lines()
        .map(|line| {
            let Some((key, value)) = line.split_once('=').filter(|(k, _)| k.starts_with("Exec"))
            else {
                return line.to_owned();
            };
            let (prefix, command) =
                value.split_at(value.len() - value.trim_start_matches('-').len());
            match command.strip_prefix(INSTALLED) {
                Some(rest) if rest.is_empty() || rest.starts_with(' ') => {
                    found += usize::from(key == "ExecStart");
                    format!("{key}={prefix}{}{rest}", built.display())
                }
                _ => line.to_owned(),
            }
        })
        .collect();
    ensure!(
        found == 1,
        "dist/demux.service: expected one `ExecStart={INSTALLED} …` line, found {found}"
    );
    Ok(lines.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_starts_the_built_binary_and_keeps_the_rest() {
        let unit = "[Service]\nExecStart=/usr/bin/demux daemon --config /etc/demux/demux.toml\n\
                    ExecReload=/bin/kill -HUP $MAINPID\n";
        let copy = with_binary(unit, Path::new("/w/target/debug/demux")).unwrap();
        assert_eq!(
            copy,
            "[Service]\nExecStart=/w/target/debug/demux daemon --config /etc/demux/demux.toml\n\
             ExecReload=/bin/kill -HUP $MAINPID\n"
        );
        assert!(with_binary("[Service]\nExecStart=/opt/demux daemon\n", Path::new("/x")).is_err());
    }

    #[test]
    fn exec_stop_post_runs_the_built_binary_too() {
        let unit =
            "[Service]\nExecStart=/usr/bin/demux daemon\nExecStopPost=-/usr/bin/demux detach\n\
                    ExecStopPost=/usr/bin/demuxer x\n";
        let copy = with_binary(unit, Path::new("/w/demux")).unwrap();
        assert_eq!(
            copy,
            "[Service]\nExecStart=/w/demux daemon\nExecStopPost=-/w/demux detach\n\
             ExecStopPost=/usr/bin/demuxer x\n"
        );
    }
}
