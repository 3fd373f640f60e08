//! `demux-gen`, the traffic generator of the demo and the benchmarks: send a bounded burst of
//! UDP datagrams or TCP SYNs as whole Ethernet frames, through an AF_XDP socket (`--mode xdp`, the fastest sender on veth) or an AF_PACKET socket
//! (`--mode packet`), or UDP datagrams through the kernel's stack with sendmmsg (`--mode
//! sendmmsg`, for comparison), as fast as possible or at `--rate` pps. Each UDP payload starts with a
//! sequence number and a send time (CLOCK_MONOTONIC), for loss and latency. It only sends to the
//! benchmarking ranges (198.18.0.0/15, 2001:2::/48) unless `--allow-any-address` says otherwise.
#![deny(unsafe_code)]

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Parser;

// The frame builder is test support (`demux::testing::frame`, behind the `testing` feature);
// the generator compiles the same file into itself rather than ship the testing module.
#[path = "../../testing/frame.rs"]
#[allow(
    dead_code,
    unreachable_pub,
    reason = "the generator uses part of the frame builder, which is public in `demux::testing`"
)]
mod frame;

use frame::FrameSpec;

#[allow(unsafe_code)]
mod sys;

mod args;
mod pace;

use args::{BadChecksum, GenArgs, Mode};

impl BadChecksum {
    fn corrupt(self) -> frame::Corrupt {
        match self {
            Self::Ipv4Header => frame::Corrupt::Ipv4Header,
            Self::Udp => frame::Corrupt::Udp,
            Self::UdpZero => frame::Corrupt::UdpZero,
            Self::Tcp => frame::Corrupt::Tcp,
        }
    }
}

fn benchmarking_range(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 198 && (v4.octets()[1] & 0xfe) == 18,
        IpAddr::V6(v6) => v6.segments()[..3] == [0x2001, 2, 0],
    }
}

fn parse_mac(text: &str) -> anyhow::Result<[u8; 6]> {
    frame::parse_mac(text)
        .with_context(|| format!("--dst-mac: `{text}` is not a MAC address like 02:00:00:00:00:02"))
}

fn main() -> ExitCode {
    match run(GenArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demux-gen: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: GenArgs) -> anyhow::Result<()> {
    if !args.allow_any_address && !benchmarking_range(args.dst.ip()) {
        bail!(
            "--dst {}: not in 198.18.0.0/15 or 2001:2::/48, the ranges set aside for benchmarks; \
             pass --allow-any-address if this network is yours",
            args.dst
        );
    }
    if args.count > 100_000_000 || args.flows == 0 || args.dst_ports == 0 {
        bail!("--count must be at most 100,000,000, and --flows and --dst-ports at least 1");
    }
    if !(1..=1 << 20).contains(&args.src_addrs) || args.src_addrs > 1 && args.mode == Mode::Sendmmsg
    {
        bail!("--src-addrs must be 1 to 1048576, and 1 with --mode sendmmsg");
    }
    let last_src = nth_address(args.src.ip(), args.src_addrs - 1);
    if !args.allow_any_address && !benchmarking_range(last_src) {
        bail!(
            "--src-addrs {}: the last source address, {last_src}, is outside 198.18.0.0/15 and \
             2001:2::/48; give fewer or pass --allow-any-address",
            args.src_addrs
        );
    }
    if args.mode == Mode::Sendmmsg && args.tcp {
        bail!("--mode sendmmsg sends UDP datagrams only; drop --tcp or pick --mode xdp");
    }
    if let Some(bad) = args.bad_checksum {
        let fits = match bad {
            BadChecksum::Ipv4Header => args.dst.is_ipv4(),
            BadChecksum::Udp | BadChecksum::UdpZero => !args.tcp,
            BadChecksum::Tcp => args.tcp,
        };
        if !fits || args.mode == Mode::Sendmmsg {
            bail!(
                "--bad-checksum {bad:?}: needs --mode xdp or packet, and an IPv4 destination \
                 (ipv4-header), UDP (udp, udp-zero) or --tcp (tcp)"
            );
        }
    }
    if args.payload < 16 && !args.tcp || args.payload > 9000 {
        bail!("--payload must be 16 (sequence number and send time) to 9000 bytes");
    }
    let ifindex = demux::attach::ifindex(&args.iface)?;
    let src_mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", args.iface))
        .context("reading the interface's MAC address")?;
    let mut spec = if args.tcp {
        FrameSpec::tcp(args.src, args.dst, &[])
    } else {
        FrameSpec::udp(args.src, args.dst, &vec![0x5a; args.payload])
    };
    spec.dst_mac = parse_mac(&args.dst_mac)?;
    spec.src_mac = parse_mac(src_mac.trim())?;
    let distinct = u32::from(args.flows.max(args.dst_ports)).max(args.src_addrs);
    let frames: Vec<Vec<u8>> = (0..distinct)
        .map(|i| {
            let mut flow = spec.clone();
            flow.src
                .set_ip(nth_address(args.src.ip(), i % args.src_addrs));
            flow.src.set_port(
                args.src
                    .port()
                    .wrapping_add((i % u32::from(args.flows)) as u16),
            );
            flow.dst.set_port(
                args.dst
                    .port()
                    .wrapping_add((i % u32::from(args.dst_ports)) as u16),
            );
            flow.build()
        })
        .collect();

    // Open the socket before the clock starts, or a paced run would begin with a burst of
    // everything due while it opened.
    let mut output = match args.mode {
        Mode::Xdp => Output::Xdp(Box::new(open_xdp(&args.iface)?)),
        Mode::Packet => Output::Packet(open_packet()?),
        Mode::Sendmmsg => Output::Sendmmsg(udp_sockets(&args)?),
    };
    let stamp = !args.tcp;
    let corrupt = args.bad_checksum.map(BadChecksum::corrupt);
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut pacer = pace::Pacer::new(args.rate, args.count, args.max_burst);
    let fill = |buf: &mut [u8], seq: u64| -> usize {
        let frame = &frames[(seq % frames.len() as u64) as usize];
        buf[..frame.len()].copy_from_slice(frame);
        if stamp {
            frame::stamp_udp(&mut buf[..frame.len()], seq, demux::sys::monotonic_ns());
        }
        if let Some(what) = corrupt {
            frame::corrupt_checksum(&mut buf[..frame.len()], what);
        }
        frame.len()
    };
    match &mut output {
        Output::Xdp(socket) => {
            while sent < args.count && Instant::now() < deadline {
                let burst = (pacer.allowed(sent) - sent).min(64) as u32;
                if burst == 0 {
                    std::hint::spin_loop();
                    continue;
                }
                let mut seq = sent;
                sent += u64::from(socket.send(burst, |buf| {
                    let len = fill(buf, seq);
                    seq += 1;
                    len
                }));
            }
            // Let what is queued leave before reporting.
            while socket.in_flight() > 0 && Instant::now() < deadline + Duration::from_secs(1) {
                socket.send(0, |_| 0);
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        Output::Packet(socket) => {
            let addr = sys::LinkAddr::new(ifindex, spec.dst_mac);
            let mut buf = vec![0u8; 2048];
            while sent < args.count && Instant::now() < deadline {
                if pacer.allowed(sent) == sent {
                    std::hint::spin_loop();
                    continue;
                }
                let len = fill(&mut buf, sent);
                match sys::send_frame(socket, &buf[..len], &addr) {
                    Ok(_) => sent += 1,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                    Err(e) => return Err(e).context("sending"),
                }
            }
        }
        Output::Sendmmsg(sockets) => {
            sent = sendmmsg(&args, sockets, deadline, &mut pacer)?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let pps = sent as f64 / secs.max(1e-9);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "sent": sent, "seconds": secs, "pps": pps, "forgiven": pacer.forgiven()
            })
        );
    } else {
        println!("sent {sent} frames in {secs:.3} s ({pps:.0} pps)");
        if pacer.forgiven() > 0 {
            println!(
                "{} frames not sent: the sender fell behind by more than --max-burst {}",
                pacer.forgiven(),
                args.max_burst
            );
        }
    }
    if sent < args.count {
        bail!(
            "sent only {sent} of {} frames within {} s",
            args.count,
            args.duration
        );
    }
    Ok(())
}

/// Where the frames go.
enum Output {
    Xdp(Box<demux::xsk::TxSocket>),
    Packet(OwnedFd),
    Sendmmsg(Vec<std::net::UdpSocket>),
}

fn open_xdp(iface: &str) -> anyhow::Result<demux::xsk::TxSocket> {
    // The kernel frees a closed AF_XDP socket's queue asynchronously: a run right after
    // another may find it busy for a moment.
    let mut attempts = 0;
    loop {
        match demux::xsk::TxSocket::open(iface, 0, 4096) {
            Err(e) if e.to_string().contains("busy") && attempts < 100 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

/// `ip` plus `n`, counting in the address's last 32 bits (wrapping).
fn nth_address(ip: std::net::IpAddr, n: u32) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V4(a) => std::net::Ipv4Addr::from(u32::from(a).wrapping_add(n)).into(),
        std::net::IpAddr::V6(a) => {
            let bits = u128::from(a);
            let low = (bits as u32).wrapping_add(n);
            std::net::Ipv6Addr::from(bits & !0xffff_ffff | u128::from(low)).into()
        }
    }
}

fn open_packet() -> anyhow::Result<OwnedFd> {
    sys::packet_socket().context("opening an AF_PACKET socket (needs root)")
}

/// `--mode sendmmsg`: a UDP socket per flow, bound to its source address.
fn udp_sockets(args: &GenArgs) -> anyhow::Result<Vec<std::net::UdpSocket>> {
    (0..args.flows)
        .map(|i| {
            let mut src = args.src;
            src.set_port(args.src.port().wrapping_add(i));
            std::net::UdpSocket::bind(src)
                .with_context(|| format!("--src: binding a UDP socket to {src}"))
        })
        .collect()
}

/// `--mode sendmmsg`: one UDP socket per flow, batches of 64 datagrams, each stamped; returns
/// datagrams sent.
fn sendmmsg(
    args: &GenArgs,
    sockets: &[std::net::UdpSocket],
    deadline: Instant,
    pacer: &mut pace::Pacer,
) -> anyhow::Result<u64> {
    const BATCH: usize = 64;
    let destinations: Vec<SocketAddr> = (0..args.dst_ports)
        .map(|i| {
            let mut dst = args.dst;
            dst.set_port(args.dst.port().wrapping_add(i));
            dst
        })
        .collect();
    let mut payloads = vec![vec![0x5au8; args.payload]; BATCH];
    let mut sent = 0u64;
    let mut batch_no = 0usize;
    while sent < args.count && Instant::now() < deadline {
        let burst = (pacer.allowed(sent) - sent).min(BATCH as u64) as usize;
        if burst == 0 {
            std::hint::spin_loop();
            continue;
        }
        let now = demux::sys::monotonic_ns();
        for (i, payload) in payloads.iter_mut().take(burst).enumerate() {
            payload[..8].copy_from_slice(&(sent + i as u64).to_le_bytes());
            payload[8..16].copy_from_slice(&now.to_le_bytes());
        }
        let socket = &sockets[batch_no % sockets.len()];
        batch_no += 1;
        match sys::send_batch(socket, &payloads[..burst], &destinations, sent as usize) {
            Ok(n) => sent += n as u64,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)) => {
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(e) => return Err(e).context("sendmmsg"),
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_benchmarking_ranges() {
        for ok in [
            "198.18.0.1",
            "198.19.255.255",
            "2001:2::1",
            "2001:2:0:ffff::1",
        ] {
            assert!(benchmarking_range(ok.parse().unwrap()), "{ok}");
        }
        for no in [
            "198.20.0.1",
            "10.0.0.1",
            "2001:3::1",
            "2001:2:1::1",
            "127.0.0.1",
        ] {
            assert!(!benchmarking_range(no.parse().unwrap()), "{no}");
        }
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:00:00:00:00:0a").unwrap(), [2, 0, 0, 0, 0, 10]);
        assert!(parse_mac("02:00:00:00:00").is_err());
        assert!(parse_mac("zz:00:00:00:00:00").is_err());
    }
}
