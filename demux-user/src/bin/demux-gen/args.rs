//! `demux-gen`'s command line, apart from the generator so that `demux manuals` (the man
//! pages and completions of the Debian package, `cargo xtask dist`) includes it as source.

use std::net::SocketAddr;

use clap::Parser;

/// demux-gen: send a bounded burst of UDP datagrams or TCP SYNs as whole Ethernet frames, to
/// the benchmarking ranges only (198.18.0.0/15, 2001:2::/48). Each UDP payload starts with a
/// sequence number and a send time, for loss and latency. Needs root (AF_XDP, AF_PACKET).
#[derive(Debug, Parser)]
#[command(name = "demux-gen", version)]
pub(crate) struct GenArgs {
    /// Interface to send on.
    #[arg(long, value_name = "IFACE")]
    pub(crate) iface: String,
    /// Destination socket address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) dst: SocketAddr,
    /// Source socket address; with --flows, the port is the first of a range.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) src: SocketAddr,
    /// Destination MAC address (the receiving interface's).
    #[arg(long, value_name = "MAC")]
    pub(crate) dst_mac: String,
    /// Send TCP SYNs instead of UDP datagrams.
    #[arg(long)]
    pub(crate) tcp: bool,
    /// Frames to send (at most 100,000,000).
    #[arg(long, value_name = "N")]
    pub(crate) count: u64,
    /// Distinct flows: source ports SRC_PORT .. SRC_PORT+FLOWS-1, round robin.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) flows: u16,
    /// Destination ports DST_PORT .. DST_PORT+N-1, round robin (one endpoint each, say).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) dst_ports: u16,
    /// Source addresses SRC_ADDR .. SRC_ADDR+N-1 (counting in the address's last 32 bits),
    /// round robin: traffic spread over many senders. Modes xdp and packet only.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) src_addrs: u32,
    /// Payload bytes per frame.
    #[arg(long, value_name = "BYTES", default_value_t = 18)]
    pub(crate) payload: usize,
    /// Stop after this many seconds even if not all frames were sent.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Send to addresses outside 198.18.0.0/15 and 2001:2::/48 (they may belong to someone).
    #[arg(long)]
    pub(crate) allow_any_address: bool,
    /// How to send: `xdp` (AF_XDP, copy mode on veth), `packet` (AF_PACKET, one sendto each) or
    /// `sendmmsg` (UDP sockets bound to the source addresses, batches of 64 through the kernel's
    /// stack; the flow changes per batch; UDP only; the MAC addresses are the kernel's choice).
    #[arg(long, value_enum, default_value_t = Mode::Xdp)]
    pub(crate) mode: Mode,
    /// Target rate in packets per second; 0 sends as fast as possible.
    #[arg(long, value_name = "PPS", default_value_t = 0)]
    pub(crate) rate: u64,
    /// With `--rate`: the most overdue frames sent back to back after the sender fell behind
    /// (preempted, or its vCPU taken); the rest of the backlog is not sent and is counted
    /// (`forgiven`), so a stall of the sender reaches the receiver as a gap, not as a burst.
    #[arg(long, value_name = "FRAMES", default_value_t = 64)]
    pub(crate) max_burst: u64,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
    /// Break one checksum in every frame (tests: the kernel and demux drop them): the IPv4
    /// header's, the UDP checksum (set, then one bit off), the UDP checksum zeroed ("none":
    /// valid over IPv4, dropped over IPv6), or the TCP checksum. Modes xdp and packet only.
    #[arg(long, value_enum, value_name = "KIND")]
    pub(crate) bad_checksum: Option<BadChecksum>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BadChecksum {
    Ipv4Header,
    Udp,
    UdpZero,
    Tcp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    Xdp,
    Packet,
    Sendmmsg,
}
