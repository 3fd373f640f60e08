//! Drives `demux gen` in the sender namespace, pinned to CPU 0.

use anyhow::Context as _;

use crate::{
    cases::{Sender, Traffic, FLOWS},
    probes::Testbed,
};

pub(crate) const DEMUX: &str = env!("CARGO_BIN_EXE_demux");
/// The traffic generator binary.
pub(crate) const DEMUX_GEN: &str = env!("CARGO_BIN_EXE_demux-gen");
/// Frames either sender may send back to back to catch up when it fell behind its rate
/// (`demux-gen --max-burst`, the live sender's `max_lag_ns`); beyond them it forgives frames.
pub(crate) const MAX_BURST: u64 = 64;

/// Sends `traffic` for `secs` seconds at `rate` pps (0: as fast as it goes); returns frames
/// sent, the seconds the generator took and the frames it did not send because it fell behind
/// (`demux-gen --max-burst`: a stalled sender does not catch up in a burst).
pub(crate) fn generate(
    testbed: &Testbed,
    traffic: &Traffic,
    rate: u64,
    secs: f64,
) -> anyhow::Result<(u64, f64, u64)> {
    let mode = match traffic.sender {
        Sender::Xdp => "xdp",
        Sender::Sendmmsg => "sendmmsg",
        Sender::Live => return crate::live::send(testbed, traffic, rate, secs),
    };
    let pair = &testbed.pair;
    let output = pair
        .a
        .command("taskset")
        .args(["-c", "0", DEMUX_GEN])
        .args([
            "--iface",
            &pair.a_if,
            "--mode",
            mode,
            "--dst-mac",
            &pair.b_mac,
        ])
        .args(["--src", &traffic.src().to_string()])
        .args(["--dst", &traffic.dst().to_string()])
        .args(["--dst-ports", &traffic.ports.to_string()])
        .args(["--flows", &FLOWS.to_string()])
        .args(["--src-addrs", &traffic.sources.to_string()])
        .args(["--payload", &traffic.payload().to_string()])
        .args(["--rate", &rate.to_string(), "--count", "100000000"])
        .args(["--max-burst", &MAX_BURST.to_string()])
        .args(["--duration", &secs.to_string(), "--json"])
        .output()
        .context("starting the generator")?;
    // Reaching the duration before the count ends the run with a non-zero exit; the JSON line
    // is printed either way.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .with_context(|| {
            format!(
                "the generator said: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )
        })?;
    let sent = report["sent"]
        .as_u64()
        .context("the generator's report has no `sent`")?;
    let seconds = report["seconds"]
        .as_f64()
        .context("the generator's report has no `seconds`")?;
    let forgiven = report["forgiven"].as_u64().unwrap_or(0);
    Ok((sent, seconds, forgiven))
}
