//! The `SK_REUSEPORT` program `demux_reuseport`: what the XDP program passes to the kernel
//! (fragments, IPv4 options, IPv6 option headers, everything while no XDP program runs) reaches
//! a reuseport group through the kernel's socket lookup, which would pick the member by its own
//! hash. The daemon attaches this program to every kernel reuseport group of backing sockets
//! (`SO_ATTACH_REUSEPORT_EBPF`), and it picks the member the XDP program picks:
//!
//! 1. the demux group of the socket the kernel found (`md->sk`, a member of the kernel's group):
//!    `REUSEPORT_COOKIES[socket cookie]`;
//! 2. the flow hash of the datagram's 4-tuple, exactly as `flow::hash` computes it for a parsed
//!    packet (addresses from the network header, ports from the UDP header at `md->data`);
//! 3. member index `hash % GROUPS[group].count`, whose socket the daemon keeps in slot
//!    `reuseport_slot(group, index)` of `REUSEPORT_SOCKETS`, selected with
//!    `bpf_sk_select_reuseport`.
//!
//! Any miss (a socket demux does not know — the kernel's group may hold sockets of the same
//! uid that were never registered —, an empty slot, a slot whose socket is in another kernel
//! group) returns `SK_PASS` without selecting: the kernel's own choice.

use aya_ebpf::{
    bindings::{bpf_hdr_start_off::BPF_HDR_START_NET, sk_action::SK_PASS},
    cty::c_void,
    helpers::generated::{bpf_get_socket_cookie, bpf_skb_load_bytes, bpf_skb_load_bytes_relative},
    macros::{map, sk_reuseport},
    maps::{HashMap, ReusePortSockArray},
    programs::SkReuseportContext,
    EbpfContext as _,
};
use demux_common::maps::{reuseport_slot, REUSEPORT_SLOTS};

use crate::{flow, lookup::GROUPS};

/// `IPPROTO_UDP`.
const PROTO_UDP: u32 = 17;

/// Slot `reuseport_slot(group, index)` → the backing socket of member `index` of `group`.
#[map(name = "REUSEPORT_SOCKETS")]
static REUSEPORT_SOCKETS: ReusePortSockArray =
    ReusePortSockArray::with_max_entries(REUSEPORT_SLOTS, 0);

/// Socket cookie → demux group id, for every registered reuseport backing socket.
#[map(name = "REUSEPORT_COOKIES")]
static REUSEPORT_COOKIES: HashMap<u64, u32> =
    HashMap::with_max_entries(REUSEPORT_SLOTS, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

#[sk_reuseport]
pub(crate) fn demux_reuseport(ctx: SkReuseportContext) -> u32 {
    let _ = select(&ctx);
    SK_PASS
}

/// Selects the member the XDP program would pick; `None` on any miss.
#[inline(always)]
fn select(ctx: &SkReuseportContext) -> Option<()> {
    if ctx.ip_protocol() != PROTO_UDP {
        return None;
    }
    // SAFETY: `md->sk` is the (never null) socket the lookup found; the helper only reads it.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sk().sock.cast::<c_void>()) };
    // SAFETY: a valid map value pointer; `u32` is copied out at once.
    let group_id = unsafe { *REUSEPORT_COOKIES.get_ptr(cookie)? };
    let group = GROUPS.get(group_id)?;
    if group.count == 0 {
        return None;
    }
    let (src_addr, dst_addr) = addresses(ctx)?;
    let ports: [u8; 4] = load(ctx, 0)?;
    let hash = flow::hash_tuple(
        &src_addr,
        &dst_addr,
        u16::from_be_bytes([ports[0], ports[1]]),
        u16::from_be_bytes([ports[2], ports[3]]),
    );
    let slot = reuseport_slot(group_id, hash % group.count);
    REUSEPORT_SOCKETS.select_reuseport(ctx, slot).ok()
}

/// Source and destination address from the IP header, as the XDP parser lays them out (IPv4 in
/// the first 4 of 16 bytes).
#[inline(always)]
fn addresses(ctx: &SkReuseportContext) -> Option<([u8; 16], [u8; 16])> {
    let first: [u8; 1] = load_net(ctx, 0)?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    match first[0] >> 4 {
        4 => {
            let v4: [u8; 8] = load_net(ctx, 12)?;
            src[..4].copy_from_slice(&v4[..4]);
            dst[..4].copy_from_slice(&v4[4..]);
        }
        6 => {
            src = load_net(ctx, 8)?;
            dst = load_net(ctx, 24)?;
        }
        _ => return None,
    }
    Some((src, dst))
}

/// `N` bytes at `offset` from the network header.
#[inline(always)]
fn load_net<const N: usize>(ctx: &SkReuseportContext, offset: u32) -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    // SAFETY: the helper writes at most `N` bytes into the live local `bytes`.
    let rc = unsafe {
        bpf_skb_load_bytes_relative(
            ctx.as_ptr(),
            offset,
            bytes.as_mut_ptr().cast(),
            N as u32,
            BPF_HDR_START_NET,
        )
    };
    (rc == 0).then_some(bytes)
}

/// `N` bytes at `offset` from `md->data`, the UDP header.
#[inline(always)]
fn load<const N: usize>(ctx: &SkReuseportContext, offset: u32) -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    // SAFETY: the helper writes at most `N` bytes into the live local `bytes`.
    let rc =
        unsafe { bpf_skb_load_bytes(ctx.as_ptr(), offset, bytes.as_mut_ptr().cast(), N as u32) };
    (rc == 0).then_some(bytes)
}
