//! What the throughput benchmark measures: a case is a receiver (XDP_DROP, kernel sockets,
//! demux) under one kind of traffic; a sample is one run of a case at one offered load.

use std::{collections::BTreeMap, net::SocketAddr};

/// First destination port; the scale cases use PORT .. PORT+endpoints-1.
pub(crate) const PORT: u16 = 7000;
/// Source ports (flows) the generator cycles through.
pub(crate) const FLOWS: u16 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Receiver {
    /// `bench_drop` counts and drops: the limit of the hook.
    XdpDrop,
    /// One kernel UDP socket, a thread reading with recvmmsg.
    KernelRecvmmsg,
    /// One SO_REUSEPORT kernel socket per core, a thread each.
    KernelReuseport,
    /// One kernel UDP socket, a thread reading it through io_uring: one multishot recvmsg on
    /// provided buffers, `SINGLE_ISSUER | DEFER_TASKRUN`, no SQPOLL.
    KernelIouring,
    /// The daemon delivering to in-daemon counting sinks.
    DemuxCount,
    /// As `DemuxCount`, each endpoint backed by a kernel socket the bench created and passed,
    /// as every caller's endpoint is: the switch that shows what backing sockets cost.
    DemuxCountBacked,
    /// The daemon delivering to a client process's shared-memory ring.
    DemuxRing,
    /// The same client on the fast path: it leases the interface's queues and reads their
    /// AF_XDP rings itself, no daemon thread in between (`Endpoint::fast_path`).
    DemuxClientFast,
    /// The fast-path client with a batch wait of [`BATCH_WAIT`] (`Endpoint::set_batch_wait`:
    /// interrupt moderation in user space, off by default).
    DemuxClientFastWait,
}

/// The batch wait of `demux_client_fast_wait`.
pub(crate) const BATCH_WAIT: std::time::Duration = std::time::Duration::from_micros(30);

impl Receiver {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Receiver::XdpDrop => "xdp_drop",
            Receiver::KernelRecvmmsg => "kernel_recvmmsg",
            Receiver::KernelReuseport => "kernel_reuseport",
            Receiver::KernelIouring => "kernel_iouring",
            Receiver::DemuxCount => "demux_count",
            Receiver::DemuxCountBacked => "demux_count_backed",
            Receiver::DemuxRing => "demux_ring",
            Receiver::DemuxClientFast => "demux_client_fast",
            Receiver::DemuxClientFastWait => "demux_client_fast_wait",
        }
    }

    /// Whether the receiver reads payloads, so it can measure latency from the send stamps.
    pub(crate) fn reads_payloads(self) -> bool {
        matches!(
            self,
            Receiver::KernelRecvmmsg
                | Receiver::KernelReuseport
                | Receiver::KernelIouring
                | Receiver::DemuxRing
                | Receiver::DemuxClientFast
                | Receiver::DemuxClientFastWait
        )
    }

    /// The kernel's own sockets: the baselines.
    pub(crate) const KERNEL: [Receiver; 3] = [
        Receiver::KernelRecvmmsg,
        Receiver::KernelReuseport,
        Receiver::KernelIouring,
    ];
}

/// How the generator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sender {
    /// AF_XDP TX (copy mode on veth): the fastest sender here.
    Xdp,
    /// UDP sockets with sendmmsg, through the sender namespace's stack.
    Sendmmsg,
    /// BPF_PROG_RUN live frames (`live.rs`): the receiving veth gets `xdp_frame`s, no skb to
    /// copy before XDP, as from a NIC (`--sender live`, every case of the run but the
    /// sendmmsg one).
    Live,
}

/// The traffic of a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Traffic {
    pub ipv6: bool,
    /// Ethernet frame length without the FCS (64 on the wire = 60 here).
    pub frame: usize,
    /// Destination ports, one endpoint each.
    pub ports: u16,
    /// Source addresses, from `src()` up (198.19.0.0/16 or 2001:2:0:2::/64 when more than one).
    pub sources: u32,
    pub sender: Sender,
}

impl Traffic {
    pub(crate) const fn new(ipv6: bool, frame: usize) -> Self {
        Self {
            ipv6,
            frame,
            ports: 1,
            sources: 1,
            sender: Sender::Xdp,
        }
    }

    fn headers(&self) -> usize {
        14 + if self.ipv6 { 40 } else { 20 } + 8
    }

    /// UDP payload bytes: what makes the frame `frame` long, at least the 16-byte stamp.
    pub(crate) fn payload(&self) -> usize {
        self.frame.saturating_sub(self.headers()).max(16)
    }

    /// The frame length actually sent.
    pub(crate) fn frame_len(&self) -> usize {
        self.headers() + self.payload()
    }

    /// The first source address (the generator counts up from it, `sources` of them).
    pub(crate) fn src(&self) -> SocketAddr {
        match (self.ipv6, self.sources > 1) {
            (true, false) => "[2001:2::1]:40000".parse().expect("address"),
            (false, false) => "198.18.0.1:40000".parse().expect("address"),
            (true, true) => "[2001:2:0:2::]:40000".parse().expect("address"),
            (false, true) => "198.19.0.0:40000".parse().expect("address"),
        }
    }

    pub(crate) fn dst(&self) -> SocketAddr {
        if self.ipv6 {
            format!("[2001:2::2]:{PORT}").parse().expect("address")
        } else {
            format!("198.18.0.2:{PORT}").parse().expect("address")
        }
    }

    pub(crate) fn label(&self) -> String {
        format!(
            "{} {}B{}",
            if self.ipv6 { "v6" } else { "v4" },
            self.frame_len() + 4,
            if self.sender == Sender::Sendmmsg {
                " sendmmsg"
            } else {
                ""
            }
        )
    }
}

/// A receiver under one traffic, with the demux tables holding `fillers` bindings beyond the
/// endpoints' own: on the endpoints' own ports (every packet probes their table) or on other
/// ports (the port index skips their table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Case {
    pub receiver: Receiver,
    pub traffic: Traffic,
    pub fillers: u32,
    pub fillers_on_own_ports: bool,
}

impl Case {
    pub(crate) fn name(&self) -> String {
        let mut name = format!("{} {}", self.receiver.name(), self.traffic.label());
        if self.traffic.ports > 1 {
            name += &format!(" {}ep", self.traffic.ports);
        }
        if self.traffic.sources > 1 {
            name += &format!(" {}src", self.traffic.sources);
        }
        if self.fillers > 0 {
            name += &format!(
                " +{}k bindings {}",
                self.fillers / 1000,
                if self.fillers_on_own_ports {
                    "same ports"
                } else {
                    "other ports"
                }
            );
        }
        name
    }
}

/// One run of a case.
#[derive(Debug, Default)]
pub(crate) struct Sample {
    /// The offered rate asked of the generator (0: as fast as it goes).
    pub rate: u64,
    pub sent: u64,
    pub delivered: u64,
    pub secs: f64,
    /// Dropped, by reason.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Passed to the kernel without reaching the case's receiver.
    pub passed: u64,
    /// Busy share of the receiving CPU (1) while the generator ran, 0..1.
    pub cpu_busy: f64,
    /// Busy seconds of the receiving CPU while the generator ran.
    pub cpu_secs: f64,
    /// CPU seconds of the receiving side's own threads while the generator ran: the NAPI thread
    /// and the receiver threads (kernel cases) or every daemon thread and the client's (demux
    /// cases); spinning counts.
    pub threads_cpu_secs: Option<f64>,
    /// The part of `threads_cpu_secs` that the receiving veth's NAPI thread ran.
    pub napi_cpu_secs: Option<f64>,
    /// How many times the threads of `threads_cpu_secs`, and the NAPI thread alone, were
    /// switched onto the CPU while the generator ran (`probes::threads_runs`).
    pub threads_runs: Option<u64>,
    pub napi_runs: Option<u64>,
    /// Mean run time of the XDP program per packet (BPF_STATS_RUN_TIME), when known.
    pub bpf_ns: Option<f64>,
    /// Send-to-read latencies in ns, for receivers that read payloads at a set rate.
    pub latencies: Vec<u64>,
    /// The daemon's resident memory beyond its UMEMs, in KiB (demux cases).
    pub daemon_kib: Option<u64>,
    /// System calls of the receiving side while the generator ran: the receiver threads (kernel
    /// cases), the daemon's threads and the client's receiving thread (demux cases).
    pub syscalls: Option<u64>,
    /// Frames the generator did not send because it fell behind the rate (stalled longer than
    /// its `--max-burst` allows it to catch up); `sent` excludes them.
    pub forgiven: u64,
}

impl Sample {
    pub(crate) fn counted(&self) -> u64 {
        self.delivered + self.passed + self.dropped.values().sum::<u64>()
    }

    pub(crate) fn accounted(&self) -> bool {
        self.sent == self.counted()
    }

    pub(crate) fn offered_pps(&self) -> f64 {
        self.sent as f64 / self.secs
    }

    pub(crate) fn delivered_pps(&self) -> f64 {
        self.delivered as f64 / self.secs
    }

    /// System calls per million delivered datagrams.
    pub(crate) fn syscalls_per_million(&self) -> Option<f64> {
        Some(self.syscalls? as f64 * 1e6 / self.delivered.max(1) as f64)
    }

    pub(crate) fn lossless(&self) -> bool {
        self.accounted() && self.delivered == self.sent
    }

    /// The `p` (0..100) percentile of the latencies, in ns.
    pub(crate) fn latency_percentile(&self, p: f64) -> Option<u64> {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        percentile(&sorted, p)
    }
}

/// `p` (0..100) of sorted values.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The median of some values (of an even count, the mean of the middle two).
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
