//! Steering for real: the program attached to a veth in a namespace, an AF_XDP socket on its
//! queue in `XSKS`, a UDP binding, and datagrams sent from the peer namespace. Every datagram
//! must arrive in the socket with its metadata (a peek at the waiting frames names their
//! endpoint and takes none), and the counters must add up.

use std::{
    net::UdpSocket,
    thread,
    time::{Duration, Instant},
};

use anyhow::ensure;
use demux::{
    attach::{attach, AttachMode},
    binding::{Binding, Local, Protocol, Receiver},
    daemon::local_addrs,
    dataplane::{maps::Maps, Dataplane as _},
    program::{BpfLogLevel, Loaded},
    tables::Tables,
    xsk::{BindMode, QueueSocket, Received},
};
use demux_common::Verdict;

use demux::testing::testbed::{VethPair, A_ADDR, B_ADDR};

pub(crate) fn tests() -> Vec<libtest_mimic::Trial> {
    trials![datagrams_reach_an_af_xdp_socket_with_metadata]
}

const STEERED: u64 = 20;
const UNBOUND: u64 = 3;
const ENDPOINT: u32 = 7;

/// Writes the host view as the daemon does (local routes; `iface`'s MAC, its slot block at 0)
/// and binds UDP `B_ADDR:9000` to `endpoint`.
pub(super) fn host_view_and_binding(
    maps: &mut Maps,
    iface: &str,
    endpoint: u32,
) -> anyhow::Result<()> {
    let routes = local_addrs::dump_blocking()?;
    local_addrs::apply(maps, &mut Default::default(), &routes)?;
    let mac = demux::sys::netlink::hardware_address(iface)?;
    maps.set_iface(demux::attach::ifindex(iface)?, 0, mac)?;
    let binding = Binding {
        protocol: Protocol::Udp,
        local: Local::Addr(format!("{B_ADDR}:9000").parse()?),
        remote: None,
        v6only: false,
    };
    let (entry, target) = binding.encode(Receiver::Endpoint(endpoint))?;
    Tables::default().insert(maps, &entry, target)?;
    Ok(())
}

pub(crate) fn datagrams_reach_an_af_xdp_socket_with_metadata() -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<()> {
                net.b.enter_thread()?;
                let (mut loaded, mut maps) = Loaded::load(BpfLogLevel::Off)?;
                attach(loaded.program_mut(), &net.b_if, AttachMode::Driver)?;
                let mut socket = QueueSocket::open(&net.b_if, 0, 256, BindMode::Copy)?;
                loaded.register_socket(0, 0, socket.fd(), socket.frame_limit())?;
                host_view_and_binding(&mut maps, &net.b_if, ENDPOINT)?;

                // Send from namespace a, on a thread of its own.
                let a = &net.a;
                thread::scope(|inner| {
                    inner
                        .spawn(|| -> anyhow::Result<()> {
                            a.enter_thread()?;
                            let sender = UdpSocket::bind((A_ADDR, 40000))?;
                            for i in 0..STEERED {
                                sender.send_to(format!("demux-{i}").as_bytes(), (B_ADDR, 9000))?;
                            }
                            for _ in 0..UNBOUND {
                                sender.send_to(b"not steered", (B_ADDR, 9001))?;
                            }
                            Ok(())
                        })
                        .join()
                        .expect("sender panicked")
                })?;

                // A peek (the worker's prefetch pass) names every waiting frame's endpoint and
                // takes none of them: the receive below still gets all.
                let deadline = Instant::now() + Duration::from_secs(5);
                while u64::from(socket.ring_frames().1) < STEERED && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(5));
                }
                for _ in 0..2 {
                    let mut peeked = Vec::new();
                    socket.peek_endpoints(64, |id| peeked.push(id));
                    ensure!(
                        peeked == vec![ENDPOINT; STEERED as usize],
                        "peeked endpoints {peeked:?}"
                    );
                    ensure!(
                        u64::from(socket.ring_frames().1) == STEERED,
                        "a peek took frames"
                    );
                }

                let mut payloads = Vec::new();
                let mut frame_bytes = 0u64;
                let mut problems = Vec::new();
                while (payloads.len() as u64) < STEERED && Instant::now() < deadline {
                    let read = socket.receive(64, |packet| match packet {
                        Received::Frame(frame, Some(meta)) if meta.endpoint == ENDPOINT => {
                            frame_bytes += frame.len() as u64;
                            payloads.push(frame[usize::from(meta.payload_offset)..].to_vec());
                            if frame[usize::from(meta.l4_offset) + 2..][..2]
                                != 9000u16.to_be_bytes()
                            {
                                problems
                                    .push("l4_offset does not point at the UDP header".to_owned());
                            }
                        }
                        other => problems.push(format!("not a frame with our metadata: {other:?}")),
                    });
                    if read == 0 {
                        thread::sleep(Duration::from_millis(5));
                    }
                }
                ensure!(problems.is_empty(), "{problems:?}");
                let expected: Vec<Vec<u8>> = (0..STEERED)
                    .map(|i| format!("demux-{i}").into_bytes())
                    .collect();
                ensure!(
                    payloads == expected,
                    "payloads differ: got {} of {STEERED}",
                    payloads.len()
                );

                let verdicts = maps.verdicts()?;
                ensure!(verdicts.get(Verdict::Redirected) == STEERED, "{verdicts}");
                ensure!(verdicts.get(Verdict::PassNoMatch) == UNBOUND, "{verdicts}");
                let stats = maps.endpoint_stats(ENDPOINT)?;
                ensure!(
                    stats.packets == STEERED && stats.bytes == frame_bytes,
                    "endpoint stats {stats:?}, frames {STEERED} of {frame_bytes} bytes"
                );
                let xdp_stats = socket.statistics().map_err(anyhow::Error::msg)?;
                ensure!(
                    xdp_stats.rx_dropped == 0,
                    "socket dropped frames: {xdp_stats:?}"
                );
                let (frames, free) = socket.frames();
                ensure!(
                    free == 0,
                    "{free} of {frames} frames were not returned to the fill ring"
                );
                Ok(())
            })
            .join()
            .expect("namespace thread panicked")
    })
}
