//! `demux manuals --out DIR` (hidden): writes the man pages and shell completions of `demux`
//! and `demux-gen` from their clap definitions, for the Debian package (`cargo xtask dist`).
//! `DIR/man/` gets `demux.1`, one `demux-VERB.1` per verb and `demux-gen.1`;
//! `DIR/completions/` gets the bash, zsh and fish scripts of both commands.

use std::{fs, path::PathBuf};

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use super::Cli;

// demux-gen's command line, compiled in as source: the generator is another binary.
#[path = "../bin/demux-gen/args.rs"]
#[allow(
    dead_code,
    reason = "only the clap definition is used here; the generator reads the fields"
)]
mod gen_args;

#[derive(Debug, Args)]
pub(crate) struct ManualsArgs {
    /// Directory to write `man/` and `completions/` into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub(crate) fn run(args: ManualsArgs) -> anyhow::Result<()> {
    let man = args.out.join("man");
    let completions = args.out.join("completions");
    for dir in [&man, &completions] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let commands = [
        ("demux", Cli::command()),
        ("demux-gen", gen_args::GenArgs::command()),
    ];
    for (name, command) in commands {
        clap_mangen::generate_to(command.clone(), &man)
            .with_context(|| format!("writing the man pages of {name} to {}", man.display()))?;
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            clap_complete::generate_to(shell, &mut command.clone(), name, &completions)
                .with_context(|| {
                    format!(
                        "writing the {shell} completions of {name} to {}",
                        completions.display()
                    )
                })?;
        }
    }
    println!("{}", man.display());
    println!("{}", completions.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_page_per_verb_and_completions_for_three_shells() {
        let out = std::env::temp_dir().join(format!("demux-manuals-{}", std::process::id()));
        run(ManualsArgs { out: out.clone() }).unwrap();
        let mut pages: Vec<String> = fs::read_dir(out.join("man"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        pages.sort();
        assert_eq!(
            pages,
            [
                "demux-bind.1",
                "demux-close.1",
                "demux-completions.1",
                "demux-daemon.1",
                "demux-detach.1",
                "demux-gen.1",
                "demux-list.1",
                "demux-recv.1",
                "demux-reload.1",
                "demux-stats.1",
                "demux.1",
            ],
            "one page per visible verb; the hidden `manuals` verb has none"
        );
        let bind = fs::read_to_string(out.join("man/demux-bind.1")).unwrap();
        assert!(
            bind.starts_with(".ie") || bind.contains(".TH demux-bind 1"),
            "{bind}"
        );
        assert!(
            bind.contains("\\-\\-reuseport"),
            "the options are documented"
        );
        let mut scripts: Vec<String> = fs::read_dir(out.join("completions"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        scripts.sort();
        assert_eq!(
            scripts,
            [
                "_demux",
                "_demux-gen",
                "demux-gen.bash",
                "demux-gen.fish",
                "demux.bash",
                "demux.fish"
            ]
        );
        fs::remove_dir_all(&out).unwrap();
    }
}
