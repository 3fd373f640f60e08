//! The ABI shared by the demux XDP program (`demux-ebpf`) and the daemon (`demux-user`).
//!
//! Everything here is `no_std`, `#[repr(C)]` or `#[repr(u32)]`, with explicit padding and no
//! `bool`, so both sides agree on every byte. The byte layout of each type is documented in
//! `docs/ARCHITECTURE.md`; any change to it bumps [`ABI_VERSION`].
#![no_std]

pub mod binding;
pub mod hash;
pub mod maps;
pub mod meta;
pub mod ports;
pub mod verdict;

pub use verdict::Verdict;

/// Version of the byte layout of every type and map in this crate: bumped on any change.
pub const ABI_VERSION: u32 = 5;

#[cfg(feature = "user")]
mod pod {
    use crate::{binding::*, meta::PacketMeta};

    // SAFETY: all are #[repr(C)] plain integers and byte arrays with explicit padding fields,
    // so every bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for ConnectedKey {}
    unsafe impl aya::Pod for BoundKey {}
    unsafe impl aya::Pod for PrefixKey {}
    unsafe impl aya::Pod for WildcardKey {}
    unsafe impl aya::Pod for Target {}
    unsafe impl aya::Pod for Group {}
    unsafe impl aya::Pod for EndpointStats {}
    unsafe impl aya::Pod for PacketMeta {}
}

#[cfg(test)]
mod layout_tests {
    use core::mem::size_of;

    use crate::{binding::*, meta::PacketMeta};

    #[test]
    fn sizes_match_the_documented_layout() {
        assert_eq!(size_of::<ConnectedKey>(), 40);
        assert_eq!(size_of::<BoundKey>(), 20);
        assert_eq!(size_of::<PrefixKey>(), 20);
        assert_eq!(size_of::<WildcardKey>(), 4);
        assert_eq!(size_of::<Target>(), 8);
        assert_eq!(size_of::<Group>(), 4 + 4 * MAX_GROUP_MEMBERS);
        assert_eq!(size_of::<EndpointStats>(), 16);
        assert_eq!(size_of::<PacketMeta>(), 20);
    }
}
