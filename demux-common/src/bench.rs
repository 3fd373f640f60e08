//! The benchmarks' live-frames sender (`bench_send` in the benchmarks' object, not the daemon's):
//! the one value of its map `BENCH_SEND`, which the bench writes before a run and the program
//! updates per frame.
//!
//! Layout (72 bytes, native-endian): 0 interval_ns u64 · 8 max_lag_ns u64 · 16 next_ns u64 ·
//! 24 seq u64 · 32 forgiven u64 · 40 distinct u32 · 44 flows u32 · 48 dst_ports u32 ·
//! 52 src_addrs u32 · 56 src_low u32 · 60 src_port u16 · 62 dst_port u16 · 64 family u8 ·
//! 65 _pad [u8; 7].

/// Name of the sender's map: an array of one [`SendState`].
pub const SEND_MAP: &str = "BENCH_SEND";
/// Name of the sender's XDP program.
pub const SEND_PROGRAM: &str = "bench_send";

/// The live sender's settings and state. Frame `seq` is the `seq % distinct`-th of the
/// generator's frame set: source port `src_port + i % flows`, destination port
/// `dst_port + i % dst_ports`, source address (its last 32 bits) `src_low + i % src_addrs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendState {
    /// Nanoseconds between frames; 0: as fast as it goes.
    pub interval_ns: u64,
    /// How far the sender may fall behind its schedule before it forgives the rest (the
    /// catch-up bound: `interval_ns` × the longest burst).
    pub max_lag_ns: u64,
    /// The next frame's send time (`bpf_ktime_get_ns`); 0 before the first.
    pub next_ns: u64,
    /// Frames sent so far (the next frame's sequence number).
    pub seq: u64,
    /// Frames forgiven: due while the sender was behind by more than `max_lag_ns`.
    pub forgiven: u64,
    pub distinct: u32,
    pub flows: u32,
    pub dst_ports: u32,
    pub src_addrs: u32,
    /// The first source address's last 32 bits (host order).
    pub src_low: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// 4 or 6: where the fields sit in the frame (no VLAN, no options).
    pub family: u8,
    pub _pad: [u8; 7],
}
