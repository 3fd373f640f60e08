//! `cargo xtask build`: both sides, release. `demux-user/build.rs` builds the XDP program.

use crate::{cargo, step};

pub(crate) fn run() -> anyhow::Result<()> {
    step(cargo().args(["build", "--release"]))?;
    println!(
        "built: target/release/demux (the daemon and CLI, with the XDP program embedded), \
         target/release/demux-gen (the traffic generator)"
    );
    Ok(())
}
