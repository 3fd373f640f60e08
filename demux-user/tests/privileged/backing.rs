//! Backing sockets as an attacker meets them: run as uid 65534 in-process (a thread with its
//! own credentials, `NetNs::run_as`), against a daemon whose control socket group lets nobody
//! in. A bind without a socket, a socket from another namespace, of the wrong kind, with
//! SO_REUSEADDR or SO_BINDTODEVICE, or saying otherwise than its request is refused; the kernel
//! refuses a port another user holds; a socket changed after registering loses its endpoint;
//! SO_REUSEPORT groups are one user's. Each row asserts the refusal and that nothing changed.

use std::{
    net::UdpSocket,
    os::{fd::AsFd, unix::net::UnixDatagram},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure};
use demux::{
    backing,
    control::{
        client::{Client, ClientError},
        BindRequest, EndpointInfo, ErrorCode, Request, Response, SinkSpec,
    },
    testing::testbed::{A_ADDR, B_ADDR},
};
use socket2::{Domain, SockRef, Socket, Type};

use crate::{
    daemon::RunningDaemon,
    endpoints::{daemon_for_nobody, send, settle},
};

/// Nobody's uid and gid.
const NOBODY: u32 = 65534;

pub(crate) fn tests() -> Vec<libtest_mimic::Trial> {
    trials![
        a_bind_without_a_fitting_socket_is_refused,
        the_kernel_refuses_nobody_a_port_another_user_holds,
        a_socket_changed_after_registering_loses_its_endpoint,
        a_reuseport_group_is_one_users,
    ]
}

/// A count endpoint on `local`, with the backing socket said by the caller.
fn count_on(local: &str) -> BindRequest {
    BindRequest::udp(local, SinkSpec::Count)
}

/// A UDP socket bound to `local` as the calling thread, with `SO_REUSEPORT` if asked.
fn udp(local: &str, reuseport: bool) -> anyhow::Result<UdpSocket> {
    Ok(backing::open(
        local.parse()?,
        &backing::Options {
            reuseport,
            ..backing::Options::default()
        },
    )?)
}

fn listed(daemon: &RunningDaemon) -> anyhow::Result<Vec<EndpointInfo>> {
    match daemon.client()?.call(Request::List)? {
        Response::Endpoints { endpoints } => Ok(endpoints),
        other => bail!("list: {other:?}"),
    }
}

/// Expects a refusal with `code` whose message contains `expect`.
fn refused(
    what: &str,
    answer: Result<(Response, Vec<std::os::fd::OwnedFd>), ClientError>,
    code: ErrorCode,
    expect: &str,
) -> anyhow::Result<()> {
    match answer {
        Err(e) if e.code() == code && e.to_string().contains(expect) => Ok(()),
        other => bail!("{what}: expected {code:?} saying `{expect}`, got {other:?}"),
    }
}

pub(crate) fn a_bind_without_a_fitting_socket_is_refused() -> anyhow::Result<()> {
    let (net, _dir, daemon) = daemon_for_nobody()?;
    let local = format!("{B_ADDR}:9600");
    let control = daemon.control.clone();
    net.b.run_as(NOBODY, || {
        let mut client = Client::connect(&control)?;
        refused(
            "no socket",
            client.bind(count_on(&local), None),
            ErrorCode::PermissionDenied,
            "needs the kernel socket behind it",
        )?;
        let tcp = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        tcp.bind(&local.parse::<std::net::SocketAddr>()?.into())?;
        refused(
            "a TCP socket",
            client.bind(count_on(&local), Some(tcp.as_fd())),
            ErrorCode::InvalidArgument,
            "not a datagram socket",
        )?;
        let (unix, _) = UnixDatagram::pair()?;
        refused(
            "a Unix socket",
            client.bind(count_on(&local), Some(unix.as_fd())),
            ErrorCode::InvalidArgument,
            "not an IP socket",
        )?;
        let file = std::fs::File::open("/dev/null")?;
        refused(
            "a file",
            client.bind(count_on(&local), Some(file.as_fd())),
            ErrorCode::InvalidArgument,
            "not a socket",
        )?;
        let unbound = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
        refused(
            "an unbound socket",
            client.bind(count_on(&local), Some(unbound.as_fd())),
            ErrorCode::InvalidArgument,
            "not bound",
        )?;
        let reuseaddr = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
        reuseaddr.set_reuse_address(true)?;
        reuseaddr.bind(&local.parse::<std::net::SocketAddr>()?.into())?;
        refused(
            "SO_REUSEADDR",
            client.bind(count_on(&local), Some(reuseaddr.as_fd())),
            ErrorCode::InvalidArgument,
            "SO_REUSEADDR",
        )?;
        drop(reuseaddr);
        let other_port = udp(&format!("{B_ADDR}:9601"), false)?;
        refused(
            "a socket on another port than the request's",
            client.bind(count_on(&local), Some(other_port.as_fd())),
            ErrorCode::InvalidArgument,
            "bound as udp 198.18.0.2:9601",
        )?;
        let right = udp(&local, false)?;
        refused(
            "a group name beside a socket",
            client.bind(
                BindRequest {
                    group: Some("mine".into()),
                    ..count_on(&local)
                },
                Some(right.as_fd()),
            ),
            ErrorCode::InvalidArgument,
            "drop the group name",
        )?;
        Ok(())
    })?;
    // A socket from the other namespace (as a container without host networking has).
    net.a.run_as(NOBODY, || {
        let foreign = udp(&format!("{A_ADDR}:9602"), false)?;
        refused(
            "a socket from another namespace",
            Client::connect(&control)?
                .bind(count_on(&format!("{A_ADDR}:9602")), Some(foreign.as_fd())),
            ErrorCode::InvalidArgument,
            "another network namespace",
        )
    })?;
    // SO_BINDTODEVICE takes CAP_NET_RAW: root's socket, root's request.
    net.b.run_in(|| {
        let device = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
        device.bind_device(Some(net.b_if.as_bytes()))?;
        device.bind(&local.parse::<std::net::SocketAddr>()?.into())?;
        refused(
            "SO_BINDTODEVICE",
            Client::connect(&control)?.bind(count_on(&local), Some(device.as_fd())),
            ErrorCode::InvalidArgument,
            "SO_BINDTODEVICE",
        )
    })?;
    let left = listed(&daemon)?;
    ensure!(left.is_empty(), "refused binds left endpoints: {left:?}");
    Ok(())
}

pub(crate) fn the_kernel_refuses_nobody_a_port_another_user_holds() -> anyhow::Result<()> {
    let (net, _dir, daemon) = daemon_for_nobody()?;
    // Root's own kernel socket, not demux's: the host's service on port 9610.
    let roots = net.b.run_in(|| {
        let socket = UdpSocket::bind((B_ADDR, 9610))?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    })?;
    let output = daemon
        .nobody_cli(&["bind", "udp", "0.0.0.0:9610", "--persistent"])
        .output()?;
    let error = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(5) && error.contains("another socket holds"),
        "nobody's wildcard over root's socket: {}: {error}",
        output.status
    );
    send(&net.a, 40000, 9610, 5)?;
    let mut got = 0;
    let mut buf = [0u8; 256];
    settle(|| {
        while roots.recv(&mut buf).is_ok() {
            got += 1;
        }
        Ok(got == 5)
    })?;
    ensure!(got == 5, "root's socket got {got} of 5");
    // Root's reuseport endpoint: SO_REUSEPORT shares with the same uid only.
    let control = daemon.control.clone();
    let root_endpoint = net.b.run_in(|| {
        let socket = udp(&format!("{B_ADDR}:9611"), true)?;
        let mut client = Client::connect(&control)?;
        client.bind(count_on(&format!("{B_ADDR}:9611")), Some(socket.as_fd()))?;
        Ok((client, socket))
    })?;
    let output = daemon
        .nobody_cli(&[
            "bind",
            "udp",
            &format!("{B_ADDR}:9611"),
            "--reuseport",
            "--persistent",
        ])
        .output()?;
    ensure!(
        output.status.code() == Some(5),
        "nobody joined root's reuseport port: {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let left = listed(&daemon)?;
    ensure!(left.len() == 1 && left[0].owner == 0, "endpoints: {left:?}");
    drop(root_endpoint);
    Ok(())
}

pub(crate) fn a_socket_changed_after_registering_loses_its_endpoint() -> anyhow::Result<()> {
    let (net, _dir, daemon) = daemon_for_nobody()?;
    let control = daemon.control.clone();
    let (connected, plain) = (format!("{B_ADDR}:9620"), format!("{B_ADDR}:9621"));
    let held = net.b.run_as(NOBODY, || {
        let mut client = Client::connect(&control)?;
        let first = backing::open(
            connected.parse()?,
            &backing::Options {
                connect: Some(format!("{A_ADDR}:40000").parse()?),
                ..backing::Options::default()
            },
        )?;
        client.bind(
            BindRequest {
                connect: Some(format!("{A_ADDR}:40000")),
                ..count_on(&connected)
            },
            Some(first.as_fd()),
        )?;
        let second = udp(&plain, false)?;
        client.bind(count_on(&plain), Some(second.as_fd()))?;
        Ok((client, first, second))
    })?;
    let (_client, first, second) = held;
    ensure!(listed(&daemon)?.len() == 2, "both endpoints bound");
    // Connected elsewhere: the binding it registered is not the socket's any more.
    first.connect((A_ADDR, 40001))?;
    // SO_REUSEADDR set afterwards: any user could now share its port.
    SockRef::from(&second).set_reuse_address(true)?;
    let started = Instant::now();
    let mut left = Vec::new();
    let deadline = started + Duration::from_secs(5);
    while Instant::now() < deadline {
        left = listed(&daemon)?;
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ensure!(
        left.is_empty(),
        "changed sockets kept their endpoints: {left:?}"
    );
    println!(
        "  both endpoints closed {} ms after their sockets changed",
        started.elapsed().as_millis()
    );
    let said: Vec<String> = daemon.log.try_iter().collect();
    ensure!(
        said.iter()
            .filter(|l| l.contains("changed after registering"))
            .count()
            == 2,
        "the daemon did not say why: {said:#?}"
    );
    Ok(())
}

pub(crate) fn a_reuseport_group_is_one_users() -> anyhow::Result<()> {
    let (net, _dir, daemon) = daemon_for_nobody()?;
    let control = daemon.control.clone();
    let local = format!("{B_ADDR}:9630");
    let members = net.b.run_as(NOBODY, || {
        let mut client = Client::connect(&control)?;
        let mut sockets = Vec::new();
        for _ in 0..2 {
            let socket = udp(&local, true)?;
            client.bind(count_on(&local), Some(socket.as_fd()))?;
            sockets.push(socket);
        }
        Ok((client, sockets))
    })?;
    let endpoints = listed(&daemon)?;
    let group = format!("reuseport udp {local}");
    ensure!(
        endpoints.len() == 2
            && endpoints
                .iter()
                .all(|e| e.group.as_deref() == Some(group.as_str()) && e.owner == NOBODY),
        "not one group of nobody's: {endpoints:?}"
    );
    // Root is another user: the kernel keeps it out of nobody's group.
    let root = net.b.run_in(|| {
        Ok(backing::open(
            local.parse()?,
            &backing::Options {
                reuseport: true,
                ..backing::Options::default()
            },
        ))
    });
    match root {
        Ok(Err(e)) if e.code() == ErrorCode::AddressInUse => {}
        other => bail!("root joined nobody's reuseport group: {other:?}"),
    }
    for port in 41000..41016 {
        send(&net.a, port, 9630, 5)?;
    }
    let mut delivered = Vec::new();
    settle(|| {
        delivered = listed(&daemon)?.iter().map(|e| e.delivered).collect();
        Ok(delivered.iter().sum::<u64>() == 80)
    })?;
    ensure!(
        delivered.iter().sum::<u64>() == 80 && delivered.iter().all(|n| *n > 0),
        "16 flows over the group: {delivered:?}"
    );
    drop(members);
    Ok(())
}
