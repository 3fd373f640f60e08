//! The ABI shared by the demux XDP program (`demux-ebpf`) and the daemon (`demux-user`).
//!
//! Everything here is `no_std`, `#[repr(C)]` or `#[repr(u32)]`, with explicit padding and no
//! `bool`, so both sides agree on every byte. The byte layout of each type is documented in
//! `docs/ARCHITECTURE.md`; any change to it bumps [`ABI_VERSION`].
#![no_std]

pub mod bench;
pub mod binding;
pub mod hash;
pub mod local;
pub mod maps;
pub mod meta;
pub mod ports;
pub mod presence;
pub mod verdict;

pub use verdict::Verdict;

/// Version of the byte layout of every type and map in this crate: bumped on any change.
pub const ABI_VERSION: u32 = 17;

/// `aya::Pod` for every map key and value, for the daemon side. Each is #[repr(C)] plain
/// integers and byte arrays with explicit padding fields, so every bit pattern is valid and
/// there are no implicit padding bytes (sizes and offsets are checked at compile time in
/// `layout`).
#[cfg(feature = "user")]
mod pod {
    use crate::{
        binding::*,
        hash::FlowKey,
        local::{IfaceSlot, LocalKey, LocalSlot},
        meta::PacketMeta,
    };

    // SAFETY: see the module comment.
    unsafe impl aya::Pod for crate::bench::SendState {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for ConnectedKey {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for BoundKey {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for PrefixKey {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for PrefixKeyV4 {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for crate::ports::PortEntry {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for Target {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for Group {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for EndpointStats {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for PacketMeta {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for LocalKey {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for IfaceSlot {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for LocalSlot {}
}

/// The byte layout documented in docs/ARCHITECTURE.md ("ABI"), checked at compile time: a
/// field that moves or a size that changes stops the build on both sides.
mod layout {
    use core::mem::{offset_of, size_of};

    use crate::{
        binding::*,
        hash::FlowKey,
        local::{IfaceSlot, LocalKey, LocalSlot},
        meta::PacketMeta,
    };

    /// `assert_layout!(Type, size; field @ offset, …)`
    macro_rules! assert_layout {
        ($ty:ty, $size:expr; $($field:ident @ $offset:expr),* $(,)?) => {
            const _: () = {
                assert!(size_of::<$ty>() == $size);
                $(assert!(offset_of!($ty, $field) == $offset);)*
            };
        };
    }

    assert_layout!(crate::bench::SendState, 72; interval_ns @ 0, max_lag_ns @ 8, next_ns @ 16,
        seq @ 24, forgiven @ 32, distinct @ 40, flows @ 44, dst_ports @ 48, src_addrs @ 52,
        src_low @ 56, src_port @ 60, dst_port @ 62, family @ 64, _pad @ 65);
    assert_layout!(ConnectedKey, 40; protocol @ 0, family @ 1, local_port @ 2,
        remote_port @ 4, _pad @ 6, local_addr @ 8, remote_addr @ 24);
    assert_layout!(BoundKey, 20; protocol @ 0, family @ 1, local_port @ 2, local_addr @ 4);
    assert_layout!(PrefixKey, 20; protocol @ 0, family @ 1, local_port @ 2, local_addr @ 4);
    assert_layout!(PrefixKeyV4, 8; protocol @ 0, _pad @ 1, local_port @ 2, local_addr @ 4);
    assert_layout!(WildcardKey, 4; protocol @ 0, family @ 1, local_port @ 2);
    assert_layout!(crate::ports::PortEntry, 8; tables @ 0, wildcard_flags @ 1, _pad @ 3,
        wildcard_id @ 4);
    const _: () = assert!(core::mem::align_of::<crate::ports::PortEntry>() == 8);
    assert_layout!(Target, 8; id @ 0, flags @ 4, prefix_len @ 6, _pad @ 7);
    assert_layout!(Group, 4 + 4 * MAX_GROUP_MEMBERS; count @ 0, members @ 4);
    assert_layout!(EndpointStats, 16; packets @ 0, bytes @ 8);
    assert_layout!(PacketMeta, 20; version @ 0, protocol @ 2, family @ 3, endpoint @ 4,
        flow_hash @ 8, l4_offset @ 12, payload_offset @ 14, l3_offset @ 16, _pad @ 18);
    assert_layout!(FlowKey, 16; k0 @ 0, k1 @ 8);
    assert_layout!(LocalKey, 20; family @ 0, _pad @ 1, addr @ 4);
    assert_layout!(IfaceSlot, 16; ifindex @ 0, first_slot @ 4, mac @ 8, _pad @ 14);
    assert_layout!(LocalSlot, 20; addr @ 0, family @ 16, state @ 17, _pad @ 18);
}
