//! Follows the namespace's local routing table into `LOCAL_ADDRS`, so that the XDP program
//! steers only packets the kernel would deliver to a local socket.
//!
//! The kernel's table 255 (`local`) holds one `RTN_LOCAL` route per local address, the
//! prefixes added with `ip route add local PREFIX`, and one `RTN_BROADCAST` route per subnet
//! broadcast address; IPv4 and IPv6 alike. The follower subscribes to route changes
//! (`RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE`) first, then dumps the table (`RTM_GETROUTE`) and
//! writes the difference to the map: new and changed entries first, then the gone ones
//! removed, so that an address present before and after never disappears in between. On any
//! change message it drains the subscription and dumps again: a dump is cheap (tens of routes
//! on most hosts), and dumping the whole table is correct whatever the messages said or lost
//! (a subscription overrun, `ENOBUFS`, is one more reason to dump).
//!
//! Parsing is safe code over byte slices, every length checked against what is left; the
//! socket calls are in `crate::sys::netlink`. Nothing blocks the runtime: both sockets are
//! non-blocking and awaited through tokio's `AsyncFd`, a dump is bounded in time
//! ([`DUMP_TIMEOUT`]) and in size ([`MAX_LOCAL_ADDRS`]), and an interrupted dump
//! (`NLM_F_DUMP_INTR`) is retried at most [`DUMP_ATTEMPTS`] times.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::Duration,
};

use demux_common::local::MAX_LOCAL_ADDRS;
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tracing::{debug, info, warn};

use super::state::State;
use crate::{
    dataplane::{Dataplane, LocalKind, LocalPrefix},
    sys::netlink::{self, RouteSocket, NLMSG_HDRLEN, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE},
    tables::TableError,
};

/// The local routes by prefix.
pub type LocalRoutes = BTreeMap<LocalPrefix, LocalKind>;

/// How long one dump may take before it counts as failed.
pub const DUMP_TIMEOUT: Duration = Duration::from_secs(5);
/// Dumps tried when the kernel marks them interrupted (the table changed during the dump).
pub const DUMP_ATTEMPTS: u32 = 3;
/// Subscription datagrams read in one go before dumping again.
const DRAIN_MAX: usize = 1024;
/// Wait after a failed dump before the next try.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Receive buffer: a netlink dump datagram is at most a page or two; 64 KiB is plenty.
const RECV_BUFFER: usize = 64 * 1024;

const RTMSG_LEN: usize = 12;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_DUMP_INTR: u16 = 0x10;
const RTA_DST: u16 = 1;
const RTA_TABLE: u16 = 15;
const RT_TABLE_LOCAL: u32 = 255;
const RTN_LOCAL: u8 = 2;
const RTN_BROADCAST: u8 = 3;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// A failure of the follower, naming the step.
#[derive(Debug, Error)]
pub enum FollowError {
    #[error("local addresses: opening the rtnetlink socket: {0}")]
    Open(#[source] io::Error),
    #[error("local addresses: sending the route dump request: {0}")]
    Send(#[source] io::Error),
    #[error("local addresses: reading rtnetlink: {0}")]
    Recv(#[source] io::Error),
    #[error("local addresses: the kernel refused the route dump: {0}")]
    Kernel(#[source] io::Error),
    #[error("local addresses: malformed rtnetlink message: {what} at byte {at}")]
    Malformed { what: &'static str, at: usize },
    #[error("local addresses: no complete route dump within {0:?}")]
    Timeout(Duration),
    #[error("local addresses: the route dump was interrupted {0} times in a row")]
    Interrupted(u32),
    #[error("local addresses: more than {MAX_LOCAL_ADDRS} local routes (LOCAL_ADDRS is full)")]
    TooMany,
    #[error("local addresses: writing {prefix}: {source}")]
    Write {
        prefix: LocalPrefix,
        #[source]
        source: TableError,
    },
}

/// The `RTM_GETROUTE` dump request for every family, with sequence number `seq`.
pub fn dump_request(seq: u32) -> Vec<u8> {
    // rtmsg: AF_UNSPEC, every table.
    netlink::message(
        RTM_GETROUTE,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        &[0; RTMSG_LEN],
    )
}

/// One dump in progress: feed it the datagrams that answer request `seq`.
#[derive(Debug)]
pub struct Dump {
    seq: u32,
    routes: LocalRoutes,
    interrupted: bool,
}

/// Where a dump stands after a datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// More datagrams to come.
    More,
    /// Complete.
    Done,
    /// Complete, but the kernel says the table changed during it: dump again.
    Interrupted,
}

impl Dump {
    /// A dump answering request `seq`.
    pub fn new(seq: u32) -> Self {
        Self {
            seq,
            routes: LocalRoutes::new(),
            interrupted: false,
        }
    }

    /// The local routes read so far.
    pub fn routes(self) -> LocalRoutes {
        self.routes
    }

    /// Reads one datagram of netlink messages. Messages of another sequence number (an older
    /// dump's) are skipped.
    pub fn feed(&mut self, datagram: &[u8]) -> Result<Progress, FollowError> {
        let mut at = 0;
        while datagram.len() - at >= NLMSG_HDRLEN {
            let header = &datagram[at..at + NLMSG_HDRLEN];
            let len = ne_u32(&header[0..4]) as usize;
            let kind = ne_u16(&header[4..6]);
            let flags = ne_u16(&header[6..8]);
            let seq = ne_u32(&header[8..12]);
            if len < NLMSG_HDRLEN || len > datagram.len() - at {
                return Err(FollowError::Malformed {
                    what: "message length",
                    at,
                });
            }
            let body = &datagram[at + NLMSG_HDRLEN..at + len];
            at += align4(len).min(datagram.len() - at);
            if seq != self.seq {
                continue;
            }
            self.interrupted |= flags & NLM_F_DUMP_INTR != 0;
            match kind {
                NLMSG_DONE => {
                    return Ok(if self.interrupted {
                        Progress::Interrupted
                    } else {
                        Progress::Done
                    })
                }
                NLMSG_ERROR => {
                    let errno = body.get(..4).map(ne_i32).ok_or(FollowError::Malformed {
                        what: "error message",
                        at,
                    })?;
                    if errno != 0 {
                        return Err(FollowError::Kernel(io::Error::from_raw_os_error(-errno)));
                    }
                }
                RTM_NEWROUTE => {
                    if let Some((prefix, kind)) = parse_route(body, at)? {
                        self.routes.insert(prefix, kind);
                        if self.routes.len() > MAX_LOCAL_ADDRS as usize {
                            return Err(FollowError::TooMany);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Progress::More)
    }
}

/// One `RTM_NEWROUTE` body: a local route of table 255 (`RTN_LOCAL` or `RTN_BROADCAST`), or
/// `None` for any other route. `at` is for the error message.
fn parse_route(body: &[u8], at: usize) -> Result<Option<(LocalPrefix, LocalKind)>, FollowError> {
    let malformed = |what| FollowError::Malformed { what, at };
    let rtmsg = body.get(..RTMSG_LEN).ok_or(malformed("short rtmsg"))?;
    let (family, dst_len, table, kind) = (rtmsg[0], rtmsg[1], rtmsg[4], rtmsg[7]);
    let mut table = u32::from(table);
    let mut dst: Option<&[u8]> = None;
    for attr in netlink::attributes(&body[RTMSG_LEN..]) {
        match attr.map_err(|_| malformed("attribute length"))? {
            (RTA_TABLE, value) if value.len() >= 4 => table = ne_u32(&value[..4]),
            (RTA_DST, value) => dst = Some(value),
            _ => {}
        }
    }
    let kind = match kind {
        RTN_LOCAL => LocalKind::Local,
        RTN_BROADCAST => LocalKind::Broadcast,
        _ => return Ok(None),
    };
    if table != RT_TABLE_LOCAL {
        return Ok(None);
    }
    let addr: IpAddr = match (family, dst) {
        (AF_INET, None) => Ipv4Addr::UNSPECIFIED.into(),
        (AF_INET6, None) => Ipv6Addr::UNSPECIFIED.into(),
        (AF_INET, Some(b)) if b.len() == 4 => Ipv4Addr::new(b[0], b[1], b[2], b[3]).into(),
        (AF_INET6, Some(b)) if b.len() == 16 => {
            Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes")).into()
        }
        (AF_INET | AF_INET6, Some(_)) => return Err(malformed("destination length")),
        _ => return Ok(None),
    };
    let bits = if addr.is_ipv4() { 32 } else { 128 };
    if dst_len > bits {
        return Err(malformed("prefix length"));
    }
    let addr = crate::binding::mask(addr, dst_len);
    Ok(Some((LocalPrefix { addr, len: dst_len }, kind)))
}

fn ne_u16(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}

fn ne_u32(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

fn ne_i32(b: &[u8]) -> i32 {
    i32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// What one [`apply`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
}

/// Writes `wanted` over `current` into `dataplane`: new and changed routes first, then the
/// gone ones removed. `current` follows every successful write, so after a failure it still
/// says what the map holds.
pub fn apply<D: Dataplane + ?Sized>(
    dataplane: &mut D,
    current: &mut LocalRoutes,
    wanted: &LocalRoutes,
) -> Result<Changes, FollowError> {
    let mut changes = Changes::default();
    for (prefix, kind) in wanted {
        if current.get(prefix) != Some(kind) {
            dataplane
                .set_local(*prefix, *kind)
                .map_err(|source| FollowError::Write {
                    prefix: *prefix,
                    source,
                })?;
            current.insert(*prefix, *kind);
            changes.added += 1;
        }
    }
    let gone: Vec<LocalPrefix> = current
        .keys()
        .filter(|prefix| !wanted.contains_key(prefix))
        .copied()
        .collect();
    for prefix in gone {
        match dataplane.remove_local(prefix) {
            Ok(()) | Err(TableError::NotFound { .. }) => {}
            Err(source) => return Err(FollowError::Write { prefix, source }),
        }
        current.remove(&prefix);
        changes.removed += 1;
    }
    Ok(changes)
}

/// Dumps the local routes once, blocking the calling thread (at most [`DUMP_TIMEOUT`] per
/// attempt): for tests and tools that write `LOCAL_ADDRS` without the daemon.
pub fn dump_blocking() -> Result<LocalRoutes, FollowError> {
    let socket = RouteSocket::open(0).map_err(FollowError::Open)?;
    let mut buf = vec![0u8; RECV_BUFFER];
    for attempt in 1..=DUMP_ATTEMPTS {
        let mut dump = Dump::new(attempt);
        socket
            .send(&dump_request(attempt))
            .map_err(FollowError::Send)?;
        let deadline = std::time::Instant::now() + DUMP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(FollowError::Timeout(DUMP_TIMEOUT));
            }
            let mut fds = [crate::sys::pollfd(&socket, libc::POLLIN)];
            crate::sys::poll(&mut fds, left.as_millis().max(1) as i32)
                .map_err(FollowError::Recv)?;
            let len = match socket.recv(&mut buf) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FollowError::Recv(e)),
            };
            match dump.feed(&buf[..len])? {
                Progress::More => {}
                Progress::Done => return Ok(dump.routes()),
                Progress::Interrupted => break,
            }
        }
    }
    Err(FollowError::Interrupted(DUMP_ATTEMPTS))
}

/// The follower: a subscription to route changes, a socket for dumps, and what the map holds.
pub struct Follower {
    events: AsyncFd<RouteSocket>,
    dumps: AsyncFd<RouteSocket>,
    seq: u32,
    current: LocalRoutes,
    buf: Vec<u8>,
}

impl Follower {
    /// Subscribes to route changes, dumps the local table and writes it into the dataplane of
    /// `state`: when this returns, `LOCAL_ADDRS` holds the namespace's local routes.
    pub async fn start<D: Dataplane>(state: &Mutex<State<D>>) -> Result<Self, FollowError> {
        let open = |groups| {
            RouteSocket::open(groups)
                .and_then(crate::sys::async_readable)
                .map_err(FollowError::Open)
        };
        let mut follower = Self {
            events: open(RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)?,
            dumps: open(0)?,
            seq: 0,
            current: LocalRoutes::new(),
            buf: vec![0u8; RECV_BUFFER],
        };
        follower.sync(state).await?;
        Ok(follower)
    }

    /// The local routes the map holds.
    pub fn routes(&self) -> &LocalRoutes {
        &self.current
    }

    /// Follows changes until the task is dropped: on every change message, dump and write the
    /// difference. A failed dump or write is logged and tried again after [`RETRY_AFTER`].
    pub async fn run<D: Dataplane>(mut self, state: Arc<Mutex<State<D>>>) {
        loop {
            match self.wait_for_change().await {
                Ok(()) => {}
                Err(e) => {
                    warn!("{e}");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
            while let Err(e) = self.sync(&state).await {
                warn!("{e}; trying again in {RETRY_AFTER:?}");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }

    /// Waits for at least one route change message and drains the subscription (bounded).
    async fn wait_for_change(&mut self) -> Result<(), FollowError> {
        let mut guard = self.events.readable().await.map_err(FollowError::Recv)?;
        for _ in 0..DRAIN_MAX {
            match guard.get_inner().recv(&mut self.buf) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Messages were lost: the dump that follows reads the whole table anyway.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(e) => return Err(FollowError::Recv(e)),
            }
        }
        Ok(())
    }

    /// Dumps the table (retrying an interrupted dump) and writes the difference.
    async fn sync<D: Dataplane>(&mut self, state: &Mutex<State<D>>) -> Result<(), FollowError> {
        let wanted = tokio::time::timeout(DUMP_TIMEOUT, self.dump())
            .await
            .map_err(|_| FollowError::Timeout(DUMP_TIMEOUT))??;
        let changes = {
            let mut state = state.lock().expect("state lock");
            apply(state.dataplane_mut(), &mut self.current, &wanted)?
        };
        if changes != Changes::default() {
            let broadcast = wanted
                .values()
                .filter(|kind| **kind == LocalKind::Broadcast)
                .count();
            info!(
                added = changes.added,
                removed = changes.removed,
                "local addresses: {} prefixes ({broadcast} broadcast)",
                wanted.len()
            );
        } else {
            debug!("local addresses: unchanged ({} prefixes)", wanted.len());
        }
        Ok(())
    }

    async fn dump(&mut self) -> Result<LocalRoutes, FollowError> {
        for _ in 0..DUMP_ATTEMPTS {
            self.seq = self.seq.wrapping_add(1);
            let mut dump = Dump::new(self.seq);
            self.dumps
                .get_ref()
                .send(&dump_request(self.seq))
                .map_err(FollowError::Send)?;
            loop {
                let mut guard = self.dumps.readable().await.map_err(FollowError::Recv)?;
                let len = match guard.try_io(|socket| socket.get_ref().recv(&mut self.buf)) {
                    Ok(Ok(len)) => len,
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Ok(Err(e)) => return Err(FollowError::Recv(e)),
                    Err(_would_block) => continue,
                };
                match dump.feed(&self.buf[..len])? {
                    Progress::More => {}
                    Progress::Done => return Ok(dump.routes()),
                    Progress::Interrupted => break,
                }
            }
        }
        Err(FollowError::Interrupted(DUMP_ATTEMPTS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{
        memory::{MemoryDataplane, Op},
        prefix,
    };

    /// One `RTM_NEWROUTE` message as the kernel writes it.
    fn route(seq: u32, family: u8, dst_len: u8, kind: u8, table: u32, dst: &[u8]) -> Vec<u8> {
        let mut body = vec![family, dst_len, 0, 0, table.min(255) as u8, 2, 0xfe, kind];
        body.extend_from_slice(&0u32.to_ne_bytes());
        for (attr, value) in [(RTA_TABLE, &table.to_ne_bytes()[..]), (RTA_DST, dst)] {
            body.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
            body.extend_from_slice(&attr.to_ne_bytes());
            body.extend_from_slice(value);
            body.resize(align4(body.len()), 0);
        }
        message(seq, RTM_NEWROUTE, 0, &body)
    }

    fn message(seq: u32, kind: u16, flags: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn a_dump_keeps_local_and_broadcast_routes_of_table_255() {
        let mut datagram = Vec::new();
        datagram.extend(route(7, AF_INET, 32, RTN_LOCAL, 255, &[198, 18, 0, 2]));
        datagram.extend(route(7, AF_INET, 32, RTN_BROADCAST, 255, &[198, 18, 0, 3]));
        datagram.extend(route(7, AF_INET, 24, RTN_LOCAL, 255, &[198, 18, 8, 0]));
        // The main table's unicast route and an older dump's message are not ours.
        datagram.extend(route(7, AF_INET, 30, 1, 254, &[198, 18, 0, 0]));
        datagram.extend(route(6, AF_INET, 32, RTN_LOCAL, 255, &[198, 18, 0, 9]));
        let mut v6 = [0u8; 16];
        v6[..4].copy_from_slice(&[0x20, 0x01, 0, 2]);
        v6[15] = 2;
        datagram.extend(route(7, AF_INET6, 128, RTN_LOCAL, 255, &v6));
        // Multicast routes of the local table are not local addresses.
        datagram.extend(route(7, AF_INET6, 8, 5, 255, &[0xff; 16]));
        let mut dump = Dump::new(7);
        assert_eq!(dump.feed(&datagram).unwrap(), Progress::More);
        assert_eq!(
            dump.feed(&message(7, NLMSG_DONE, 0, &[0; 4])).unwrap(),
            Progress::Done
        );
        let routes: Vec<(String, LocalKind)> = dump
            .routes()
            .into_iter()
            .map(|(p, k)| (p.to_string(), k))
            .collect();
        assert_eq!(
            routes,
            vec![
                ("198.18.0.2/32".to_owned(), LocalKind::Local),
                ("198.18.0.3/32".to_owned(), LocalKind::Broadcast),
                ("198.18.8.0/24".to_owned(), LocalKind::Local),
                ("2001:2::2/128".to_owned(), LocalKind::Local),
            ]
        );
    }

    #[test]
    fn interrupted_errors_and_bad_lengths_are_reported() {
        let mut dump = Dump::new(1);
        let intr = message(1, NLMSG_DONE, NLM_F_DUMP_INTR, &[0; 4]);
        assert_eq!(dump.feed(&intr).unwrap(), Progress::Interrupted);
        let mut dump = Dump::new(1);
        let error = message(1, NLMSG_ERROR, 0, &(-libc::EPERM).to_ne_bytes());
        assert!(matches!(dump.feed(&error), Err(FollowError::Kernel(_))));
        // A message claiming more bytes than the datagram holds.
        let mut short = route(1, AF_INET, 32, RTN_LOCAL, 255, &[198, 18, 0, 2]);
        short[0] = 200;
        assert!(matches!(
            Dump::new(1).feed(&short),
            Err(FollowError::Malformed { .. })
        ));
        // An attribute longer than its message.
        let mut attr = route(1, AF_INET, 32, RTN_LOCAL, 255, &[198, 18, 0, 2]);
        attr[NLMSG_HDRLEN + RTMSG_LEN] = 0xf0;
        assert!(matches!(
            Dump::new(1).feed(&attr),
            Err(FollowError::Malformed { .. })
        ));
        // A prefix longer than the address, a destination of the wrong size.
        for bad in [
            route(1, AF_INET, 33, RTN_LOCAL, 255, &[198, 18, 0, 2]),
            route(1, AF_INET, 32, RTN_LOCAL, 255, &[198, 18, 0]),
        ] {
            assert!(matches!(
                Dump::new(1).feed(&bad),
                Err(FollowError::Malformed { .. })
            ));
        }
        // Random bytes never panic.
        let mut seed = 1u64;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 56) as u8
                })
                .collect();
            let _ = Dump::new(0).feed(&bytes);
        }
    }

    #[test]
    fn apply_adds_first_then_removes_and_tracks_failures() {
        let mut dataplane = MemoryDataplane::default();
        let mut current = LocalRoutes::new();
        let first: LocalRoutes = [
            (prefix("198.18.0.2/32"), LocalKind::Local),
            (prefix("198.18.0.3/32"), LocalKind::Broadcast),
        ]
        .into();
        let changes = apply(&mut dataplane, &mut current, &first).unwrap();
        assert_eq!(
            changes,
            Changes {
                added: 2,
                removed: 0
            }
        );
        assert_eq!(dataplane.local().len(), 2);
        // Unchanged: no write at all.
        let events = dataplane.events().len();
        assert_eq!(
            apply(&mut dataplane, &mut current, &first).unwrap(),
            Changes::default()
        );
        assert_eq!(dataplane.events().len(), events);
        // One gone, one new, one changed kind.
        let second: LocalRoutes = [
            (prefix("198.18.0.3/32"), LocalKind::Local),
            (prefix("198.18.0.6/32"), LocalKind::Local),
        ]
        .into();
        let changes = apply(&mut dataplane, &mut current, &second).unwrap();
        assert_eq!(
            changes,
            Changes {
                added: 2,
                removed: 1
            }
        );
        let local: LocalRoutes = dataplane.local().iter().map(|(p, k)| (*p, *k)).collect();
        assert_eq!(local, second);
        // A failing write leaves `current` saying what the map holds.
        dataplane.fail(Op::Local, 0);
        let error = apply(&mut dataplane, &mut current, &first).unwrap_err();
        assert!(error.to_string().contains("198.18.0.2/32"), "{error}");
        let local: LocalRoutes = dataplane.local().iter().map(|(p, k)| (*p, *k)).collect();
        assert_eq!(local, current);
        apply(&mut dataplane, &mut current, &first).unwrap();
        let local: LocalRoutes = dataplane.local().iter().map(|(p, k)| (*p, *k)).collect();
        assert_eq!(local, first);
    }

    #[test]
    fn the_request_dumps_every_family() {
        let request = dump_request(9);
        assert_eq!(request.len(), 28);
        assert_eq!(ne_u32(&request[0..4]), 28);
        assert_eq!(ne_u16(&request[4..6]), RTM_GETROUTE);
        assert_eq!(ne_u16(&request[6..8]), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(ne_u32(&request[8..12]), 9);
        assert_eq!(request[16], 0);
    }
}
