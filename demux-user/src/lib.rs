//! demux: steers packets from XDP straight to user-space endpoints.
//!
//! This crate is the daemon side: it embeds and loads the XDP program built from `demux-ebpf`
//! ([`program`]), attaches it to interfaces ([`attach`]) and reads its verdict counters
//! ([`verdicts`]). The `demux` binary's command line lives in `cli`.

pub mod attach;
pub mod binding;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datagram;
pub mod endpoint_stats;
pub mod frame;
pub mod model;
pub mod program;
pub mod ring;
pub mod sink;
pub mod sockaddr;
pub mod tables;
pub mod verdicts;
pub mod xsk;
