//! The kernel's reuseport choice follows demux's: `demux_reuseport`, attached to a group's
//! kernel reuseport group, picks for what XDP passes the member the XDP program picks for the
//! same 4-tuple, so every flow stays on one member however its datagrams arrive.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::IoSlice,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsFd as _,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use demux::{
    binding::{addr16, Binding, Local, Protocol, Receiver},
    dataplane::Dataplane as _,
    program::{random_flow_key, LoadOptions, Loaded},
    tables::Tables,
    testing::{
        frame::FrameSpec,
        model::fixtures,
        testbed::{PairSpec, TempDir, VethPair, A_ADDR, B_ADDR},
    },
};
use demux_common::{hash::flow_hash, maps::reuseport_slot};
use socket2::{Domain, MsgHdr, SockAddr, Socket, Type};

use crate::{classifier::run_frame, daemon::RunningDaemon, oracle::cmsg};

pub(crate) fn tests() -> Vec<libtest_mimic::Trial> {
    trials![
        the_kernel_picks_the_member_the_xdp_program_picks,
        every_flow_stays_on_one_member_fragmented_or_with_options,
    ]
}

/// Members of each group in these tests.
const MEMBERS: usize = 4;
/// Flows per family.
const FLOWS: u16 = 64;

/// Without any XDP program attached (so every datagram takes the kernel's path), a reuseport
/// group of four sockets with `demux_reuseport` attached gets each flow on the member the XDP
/// program's metadata names for the same tuple (BPF_PROG_TEST_RUN, same load, same key): the
/// two programs hash alike, IPv4 and IPv6.
pub(crate) fn the_kernel_picks_the_member_the_xdp_program_picks() -> anyhow::Result<()> {
    let net = VethPair::new(PairSpec::unique(
        "dmxr",
        &[&format!("{A_ADDR}/30"), "2001:2::1/64"],
        &[&format!("{B_ADDR}/30"), "2001:2::2/64"],
    ))?;
    let key = random_flow_key()?;
    let (mut loaded, mut maps) = Loaded::load_with(LoadOptions {
        flow_key: Some(key),
        ..LoadOptions::default()
    })?;
    fixtures::host().install(&mut maps)?;
    let servers: [SocketAddr; 2] = ["198.18.0.2:7600".parse()?, "[2001:2::2]:7600".parse()?];
    for (family, server) in servers.into_iter().enumerate() {
        let gid = 3 + family as u32;
        // Member ids 1..=4 (IPv4) and 11..=14 (IPv6); member i's socket in slot i.
        let members: Vec<u32> = (1..=MEMBERS as u32)
            .map(|m| m + 10 * family as u32)
            .collect();
        let sockets = net.b.run_in(|| {
            (0..MEMBERS)
                .map(|_| reuseport_socket(server))
                .collect::<anyhow::Result<Vec<Socket>>>()
        })?;
        for (i, socket) in sockets.iter().enumerate() {
            maps.set_reuseport_socket(reuseport_slot(gid, i as u32), socket.as_fd())?;
            maps.set_reuseport_cookie(demux::sys::socket::cookie(socket)?, gid)?;
        }
        maps.set_group(gid, &members)?;
        maps.attach_reuseport(sockets[0].as_fd())?;
        let binding = Binding {
            protocol: Protocol::Udp,
            local: Local::Addr(server),
            remote: None,
            v6only: false,
        }
        .encode(Receiver::Group(gid))?;
        Tables::default().insert_all(&mut maps, &[binding])?;

        let client_ip: IpAddr = match family {
            0 => A_ADDR.parse()?,
            _ => "2001:2::1".parse()?,
        };
        let clients: Vec<SocketAddr> = (0..FLOWS)
            .map(|i| SocketAddr::new(client_ip, 41000 + i))
            .collect();
        net.a.run_in(|| {
            for client in &clients {
                UdpSocket::bind(client)?.send_to(b"flow", server)?;
            }
            Ok(())
        })?;
        let got = drain(&sockets, clients.len())?;
        for client in &clients {
            let frame = FrameSpec::udp(*client, server, b"flow").build();
            let meta = run_frame(&mut loaded, &maps, &frame)?
                .meta
                .context("no metadata for a frame to the group")?;
            let want = flow_hash(
                &key,
                &addr16(client.ip()),
                &addr16(server.ip()),
                client.port(),
                server.port(),
            );
            ensure!(meta.flow_hash == want, "XDP hashed {client} otherwise");
            let xdp_member = members
                .iter()
                .position(|m| *m == meta.endpoint)
                .context("XDP picked no member")?;
            let kernel_member = got.get(client).context("the kernel delivered nothing")?;
            ensure!(
                *kernel_member == BTreeSet::from([xdp_member]),
                "{client} -> {server}: XDP picks member {xdp_member}, the kernel's path gave \
                 {kernel_member:?}"
            );
        }
        maps.detach_reuseport(sockets[0].as_fd())?;
    }
    Ok(())
}

/// Through the daemon: three backed endpoints with SO_REUSEPORT on one address form a group;
/// 64 flows each send a small datagram (steered by XDP), a 3,000-byte one (fragmented: the
/// kernel's path) and one with IPv4 options (passed by XDP: the kernel's path). Every flow's
/// three datagrams reach one member.
pub(crate) fn every_flow_stays_on_one_member_fragmented_or_with_options() -> anyhow::Result<()> {
    let net = VethPair::standard()?;
    let dir = TempDir::new("demux-test")?;
    let daemon = RunningDaemon::start(&net, &dir, &[])?;
    let local = format!("{B_ADDR}:7610");
    let mut endpoints = (0..3)
        .map(|_| daemon.endpoint_with(&local, true))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let server: SocketAddr = local.parse()?;
    let big = vec![0x5a; 3000];
    let options = cmsg(libc::IPPROTO_IP, libc::IP_RETOPTS, &[1, 1, 1, 1]);
    let clients: Vec<SocketAddr> = (0..FLOWS)
        .map(|i| SocketAddr::new(A_ADDR.parse().expect("address"), 42000 + i))
        .collect();
    net.a.run_in(|| {
        let to = SockAddr::from(server);
        for client in &clients {
            let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
            socket.bind(&SockAddr::from(*client))?;
            socket.send_to(b"small", &to)?;
            socket.send_to(&big, &to)?;
            let payload = [IoSlice::new(b"options")];
            let message = MsgHdr::new()
                .with_addr(&to)
                .with_buffers(&payload)
                .with_control(&options);
            socket.sendmsg(&message, 0)?;
        }
        Ok(())
    })?;
    let want = 3 * clients.len();
    let mut got: BTreeMap<SocketAddr, BTreeMap<usize, Vec<usize>>> = BTreeMap::new();
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while count < want && Instant::now() < deadline {
        for (i, endpoint) in endpoints.iter_mut().enumerate() {
            while let Some(d) = endpoint.recv_from(Some(Duration::from_millis(20)))? {
                got.entry(d.peer)
                    .or_default()
                    .entry(i)
                    .or_default()
                    .push(d.payload.len());
                count += 1;
            }
        }
    }
    ensure!(count == want, "{count} of {want} datagrams arrived");
    let split: Vec<String> = got
        .iter()
        .filter(|(_, members)| members.len() > 1)
        .map(|(flow, members)| format!("{flow}: {members:?}"))
        .collect();
    ensure!(
        split.is_empty(),
        "{} flows on more than one member (member: datagram sizes): {split:?}",
        split.len()
    );
    let used: BTreeSet<usize> = got.values().flat_map(|m| m.keys().copied()).collect();
    ensure!(used.len() == 3, "only members {used:?} got flows");
    Ok(())
}

/// A UDP socket with SO_REUSEPORT bound to `addr` (IPv6: v6-only).
fn reuseport_socket(addr: SocketAddr) -> anyhow::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(addr))?;
    Ok(socket)
}

/// Reads `want` datagrams from `sockets` (within 5 s): each sender, with the members that got
/// its datagrams.
fn drain(sockets: &[Socket], want: usize) -> anyhow::Result<BTreeMap<SocketAddr, BTreeSet<usize>>> {
    let mut got: BTreeMap<SocketAddr, BTreeSet<usize>> = BTreeMap::new();
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 64];
    while count < want && Instant::now() < deadline {
        for (i, socket) in sockets.iter().enumerate() {
            while let Ok((_, from)) = socket.recv_from(&mut buf) {
                let from = from.as_socket().context("a sender without an address")?;
                got.entry(from).or_default().insert(i);
                count += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    ensure!(count == want, "{count} of {want} datagrams arrived");
    Ok(got)
}
