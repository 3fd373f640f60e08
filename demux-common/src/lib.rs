//! The ABI shared by the demux XDP program (`demux-ebpf`) and the daemon (`demux-user`).
//!
//! Everything here is `no_std`, `#[repr(C)]` or `#[repr(u32)]`, with explicit padding and no
//! `bool`, so both sides agree on every byte. The byte layout of each type is documented in
//! `docs/ARCHITECTURE.md`; any change to it bumps [`ABI_VERSION`].
#![no_std]

pub mod maps;
pub mod verdict;

pub use verdict::Verdict;

/// Version of the byte layout of every type and map in this crate: bumped on any change.
pub const ABI_VERSION: u32 = 1;
