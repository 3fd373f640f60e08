//! The demux XDP program: reads each packet's socket address tuple and decides its verdict.
//!
//! The entry point stays trivial: `classify` does the work, `counters::count` records the
//! verdict, and the packet gets the matching XDP action. Anything that is not ours passes to
//! the kernel untouched.
#![no_std]
#![no_main]

mod counters;
mod cursor;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use aya_log_ebpf::debug;
use demux_common::Verdict;

#[xdp]
pub fn demux(ctx: XdpContext) -> u32 {
    let verdict = classify(&ctx);
    counters::count(verdict);
    match verdict {
        Verdict::Redirected => xdp_action::XDP_REDIRECT,
        _ => xdp_action::XDP_PASS,
    }
}

/// The verdict for one packet. No bindings exist yet, so a packet that parses completely
/// passes as "no match".
#[inline(always)]
fn classify(ctx: &XdpContext) -> Verdict {
    match parse::parse(ctx) {
        Ok(_packet) => Verdict::PassNoMatch,
        Err(verdict) => {
            debug!(ctx, "pass: {}", verdict.name());
            verdict
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible licence: the program calls GPL-only helpers.
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
