//! The XDP program in the kernel without an interface: the verifier accepts it. (What it does
//! with each frame is tested against the model in `classifier.rs`.)

use anyhow::Context as _;
use demux::program::{BpfLogLevel, Loaded};

pub(crate) fn tests() -> Vec<libtest_mimic::Trial> {
    trials![verifier_accepts_the_program]
}

pub(crate) fn verifier_accepts_the_program() -> anyhow::Result<()> {
    // Both log settings: with logging compiled out, and with every log call live.
    for level in [BpfLogLevel::Off, BpfLogLevel::Trace] {
        Loaded::load(level).with_context(|| format!("loading with bpf log level {level:?}"))?;
    }
    Ok(())
}
