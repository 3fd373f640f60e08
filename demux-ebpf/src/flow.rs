//! The keyed flow hash of a parsed packet. The key is a read-only global (`.rodata`) that the
//! daemon overrides before load with the key it drew at start (`EbpfLoader::override_global`,
//! name `demux_common::hash::KEY_GLOBAL`); the verifier sees a frozen map value, so reading it
//! costs one load per packet and no helper call.

use aya_ebpf::Global;
use demux_common::hash::{flow_hash, FlowKey};

use crate::parse::Packet;

/// The flow hash key. The name is `demux_common::hash::KEY_GLOBAL`; the daemon requires the
/// symbol (`must_exist`), so a build without it fails to load instead of hashing unkeyed.
#[unsafe(no_mangle)]
static DEMUX_FLOW_KEY: Global<FlowKey> = Global::new(FlowKey::UNSET);

/// The keyed hash of `packet`'s 4-tuple (`demux_common::hash::flow_hash`).
#[inline(always)]
pub(crate) fn hash(packet: &Packet) -> u32 {
    hash_tuple(
        &packet.src_addr,
        &packet.dst_addr,
        packet.src_port,
        packet.dst_port,
    )
}

/// The keyed hash of a 4-tuple as [`hash`] takes it from a parsed packet: addresses 16 bytes
/// (IPv4 in the first 4, the rest zero), ports in host order. The reuseport program
/// (`reuseport.rs`) hashes through here too, so both programs pick the same member.
#[inline(always)]
pub(crate) fn hash_tuple(
    src_addr: &[u8; 16],
    dst_addr: &[u8; 16],
    src_port: u16,
    dst_port: u16,
) -> u32 {
    let key = DEMUX_FLOW_KEY.load();
    flow_hash(&key, src_addr, dst_addr, src_port, dst_port)
}
