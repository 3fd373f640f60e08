//! The demux XDP program: reads each packet's socket address tuple and decides its verdict.
//!
//! The entry point stays trivial: `classify` passes a frame that no AF_XDP frame could hold
//! (`steer::fits_socket`), parses (`parse`), checks that the packet is
//! addressed to this host as the kernel would deliver it (`host`), finds the binding (`lookup`),
//! hashes the flow with the daemon's key (`flow`) and steers (`steer`); `counters::count`
//! records the verdict, and the packet gets the matching XDP action. Anything that is not ours
//! passes to the kernel untouched.
//!
//! The object's second program, `demux_reuseport` (`reuseport`), makes the kernel's own
//! reuseport selection pick the member this one picks, for what it passes.
#![no_std]
#![no_main]

mod counters;
mod cursor;
mod flow;
mod host;
mod lookup;
mod parse;
mod reuseport;
mod runtime;
mod steer;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use aya_log_ebpf::debug;
use demux_common::Verdict;

// `frags`: the program also sees multi-buffer frames (jumbo frames, Linux 6.6+ drivers), so an
// interface may carry an MTU larger than a page; `classify` passes those frames to the kernel.
#[xdp(frags)]
pub(crate) fn demux(ctx: XdpContext) -> u32 {
    let verdict = classify(&ctx);
    counters::count(verdict);
    match verdict {
        Verdict::Redirected => xdp_action::XDP_REDIRECT,
        _ => xdp_action::XDP_PASS,
    }
}

/// The verdict for one packet.
#[inline(always)]
fn classify(ctx: &XdpContext) -> Verdict {
    if !steer::fits_socket(ctx) {
        return Verdict::PassTooLarge;
    }
    let packet = match parse::parse(ctx) {
        Ok(packet) => packet,
        Err(verdict) => {
            debug!(ctx, "pass: {}", verdict.name());
            return verdict;
        }
    };
    // Always on in the daemon; off only in the benchmark's comparison load (`host::enabled`).
    let checks = host::enabled();
    if checks {
        if let Err(verdict) = host::plain(&packet) {
            return verdict;
        }
    }
    let Some(target) = lookup::lookup(&packet) else {
        return Verdict::PassNoMatch;
    };
    let Some((endpoint, hash)) = lookup::resolve(target, &packet) else {
        return Verdict::PassNoMatch;
    };
    let first_slot = if checks {
        host::local(ctx, &packet)
    } else {
        host::first_slot(ctx).ok_or(Verdict::PassNoSocket)
    };
    match first_slot {
        Ok(first_slot) => steer::steer(ctx, &packet, first_slot, endpoint, hash),
        Err(verdict) => verdict,
    }
}
