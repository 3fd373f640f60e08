//! demux: steers packets from XDP straight to user-space endpoints.
//!
//! Two builds of one crate:
//!
//! - **Client library** (`default-features = false`): what an application needs to own an
//!   endpoint and receive from it: [`client`] (bind, receive), [`backing`] (the kernel socket
//!   behind every UDP endpoint), [`control`] (the control
//!   protocol and its blocking client), [`ring`] (the shared-memory ring's consumer side),
//!   [`record`] (the datagram record format), [`binding`] (`Protocol`, `Local`). No BPF
//!   toolchain, no aya, no tokio unless the `async` feature asks for it.
//! - **Daemon** (feature `daemon`, the default): also embeds and loads the XDP program built
//!   from `demux-ebpf` (`program`), attaches it (`attach`), owns the AF_XDP sockets (`xsk`),
//!   the binding tables (`tables`, written through the `dataplane` seam), the sinks (`sink`)
//!   and the daemon itself (`daemon`). The `demux` binary's command line lives in `src/cli/`,
//!   the traffic generator in `src/bin/demux-gen/`.
//!
//! Test support (reference model, fixtures, frame builder) is in `testing`, behind the
//! `testing` feature. Every `unsafe` block of the library is in [`sys`]; the rest of the crate
//! denies `unsafe_code`.

#![deny(unsafe_code)]

pub mod backing;
pub mod binding;
pub mod client;
pub mod control;
pub mod record;
pub mod ring;
#[allow(unsafe_code)]
pub mod sys;

#[cfg(feature = "daemon")]
pub mod attach;
#[cfg(any(feature = "daemon", feature = "fast-path"))]
pub mod checksum;
#[cfg(feature = "daemon")]
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(any(feature = "daemon", feature = "fast-path"))]
pub mod datagram;
#[cfg(feature = "daemon")]
pub mod dataplane;
#[cfg(feature = "daemon")]
pub mod endpoint_stats;
#[cfg(feature = "fast-path")]
pub mod fastpath;
#[cfg(feature = "fast-path")]
pub mod fastwait;
#[cfg(feature = "daemon")]
pub mod multiprog;
#[cfg(feature = "daemon")]
pub mod program;
#[cfg(feature = "daemon")]
pub mod sink;
#[cfg(feature = "daemon")]
pub mod tables;
#[cfg(feature = "daemon")]
pub mod verdicts;
#[cfg(feature = "daemon")]
pub mod xsk;
#[cfg(feature = "daemon")]
pub mod zero_copy;

#[cfg(feature = "testing")]
pub mod testing;
