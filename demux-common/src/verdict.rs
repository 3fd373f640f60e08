//! Verdicts: what the XDP program did with a packet. Every packet that enters the program is
//! counted in exactly one verdict slot of the `VERDICTS` per-CPU array, indexed by the
//! `#[repr(u32)]` value below.

/// What the program did with one packet, and why.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Matched a binding and redirected to an AF_XDP socket.
    Redirected = 0,
    /// Parsed completely, but no binding matched: passed to the kernel.
    PassNoMatch = 1,
    /// Not IPv4 or IPv6 (ARP, LLDP, …): passed to the kernel.
    PassNotIp = 2,
    /// IPv4 or IPv6, but the transport is neither UDP nor TCP (ICMP, …): passed.
    PassOtherProtocol = 3,
    /// An IPv4 or IPv6 fragment: passed, the kernel reassembles.
    PassFragment = 4,
    /// Truncated or inconsistent headers: passed, the kernel decides.
    PassMalformed = 5,
    /// Matched, but the AF_XDP slot was empty (daemon gone, socket closed): passed.
    PassNoSocket = 6,
    /// Matched, but the driver cannot carry XDP metadata (`bpf_xdp_adjust_meta` failed): passed.
    PassNoMetadata = 7,
    /// The destination is not this host's: the IP is not a local address of the namespace
    /// (`LOCAL_ADDRS`), or the destination MAC is neither the interface's own (`IFACE_MACS`)
    /// nor broadcast/multicast. Passed: the kernel forwards or drops it.
    PassNotLocal = 8,
    /// Broadcast or multicast (destination IP 224.0.0.0/4, ff00::/8, 255.255.255.255 or a
    /// subnet broadcast address, or destination MAC broadcast/multicast): passed, the kernel
    /// gives a copy to every listener, endpoints through their backing sockets.
    PassMulticast = 9,
    /// A martian source or destination (loopback, unspecified, "this network", IPv4-mapped
    /// IPv6 on the wire; a multicast or broadcast source): passed, the kernel drops it.
    PassMartian = 10,
    /// IPv4 with options (IHL > 5), or IPv6 with a hop-by-hop or destination options header
    /// (and no routing header): passed, the kernel's IP layer judges them (source routes,
    /// router alert, over-long padding, unknown options with the discard bits, jumbograms, …).
    PassIpOptions = 11,
    /// IPv6 with a routing header (whatever other extension headers it has): passed, the kernel forwards, drops or delivers it.
    PassRoutingHeader = 12,
    /// A VLAN-tagged frame: passed, the kernel delivers it through its VLAN device, if any.
    PassVlan = 13,
    /// Longer than the AF_XDP socket of the ingress queue takes: more than one UMEM frame
    /// ([`crate::meta::MAX_XSK_FRAME`]) or split over several buffers (multi-buffer XDP), unless
    /// the socket is bound with `XDP_USE_SG`, and then more than its `XSK_FRAME_LIMITS` entry
    /// (the length from `bpf_xdp_get_buff_len`). Passed, checked before anything else, so the
    /// kernel delivers it (through the backing socket, for an endpoint) instead of the AF_XDP
    /// socket dropping it after the redirect.
    PassTooLarge = 14,
}

impl Verdict {
    /// Number of verdict slots: the `max_entries` of the `VERDICTS` map.
    pub const COUNT: u32 = 15;

    /// Every verdict, in slot order.
    pub const ALL: [Verdict; Self::COUNT as usize] = [
        Verdict::Redirected,
        Verdict::PassNoMatch,
        Verdict::PassNotIp,
        Verdict::PassOtherProtocol,
        Verdict::PassFragment,
        Verdict::PassMalformed,
        Verdict::PassNoSocket,
        Verdict::PassNoMetadata,
        Verdict::PassNotLocal,
        Verdict::PassMulticast,
        Verdict::PassMartian,
        Verdict::PassIpOptions,
        Verdict::PassRoutingHeader,
        Verdict::PassVlan,
        Verdict::PassTooLarge,
    ];

    /// Stable name, used in logs, statistics and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Redirected => "redirected",
            Verdict::PassNoMatch => "pass_no_match",
            Verdict::PassNotIp => "pass_not_ip",
            Verdict::PassOtherProtocol => "pass_other_protocol",
            Verdict::PassFragment => "pass_fragment",
            Verdict::PassMalformed => "pass_malformed",
            Verdict::PassNoSocket => "pass_no_socket",
            Verdict::PassNoMetadata => "pass_no_metadata",
            Verdict::PassNotLocal => "pass_not_local",
            Verdict::PassMulticast => "pass_multicast",
            Verdict::PassMartian => "pass_martian",
            Verdict::PassIpOptions => "pass_ip_options",
            Verdict::PassRoutingHeader => "pass_routing_header",
            Verdict::PassVlan => "pass_vlan",
            Verdict::PassTooLarge => "pass_too_large",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_dense_and_in_order() {
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i, "{} is not in slot {i}", v.name());
        }
    }
}
