//! The soak's endpoint churn: a thread in the receiving namespace that, every second, binds a
//! set of endpoints on ports the traffic reaches, holds them for half a second and closes
//! them again, each kind closed the way its users close it:
//!
//! - a client's ring endpoint (`demux::client::Endpoint`, read by a thread on the receiving
//!   CPU: [`RingClient`]), closed by dropping it;
//! - a reuseport group of backed, persistent count endpoints (each with its own
//!   `SO_REUSEPORT` backing socket, as a server's workers bind), closed one by one with
//!   `close`;
//! - a named group of root's unbacked count endpoints, closed by closing their control
//!   connection.
//!
//! Between cycles it can be paused (its endpoints all closed) so that the soak reads the
//! daemon at rest.

use std::{
    net::SocketAddr,
    os::fd::AsFd,
    path::Path,
    sync::mpsc::{self, Receiver, RecvTimeoutError, Sender},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use demux::{
    backing,
    control::{client::Client, BindRequest, Request, Response, SinkSpec},
    testing::testbed::enter_netns,
};

use crate::daemon::RingClient;

/// The ports the churn binds, on 198.18.0.2: a ring endpoint, a reuseport group, a named group.
pub(crate) const RING_PORT: u16 = 7002;
pub(crate) const REUSEPORT_PORT: u16 = 7003;
pub(crate) const NAMED_PORT: u16 = 7004;
/// Members of each group per cycle.
const MEMBERS: usize = 2;
/// How long a cycle holds its endpoints, of each second.
const HOLD: Duration = Duration::from_millis(500);

/// What the churn did so far.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counts {
    pub cycles: u64,
    pub bound: u64,
    pub closed: u64,
    /// Binds or closes refused or failed, with the first few errors.
    pub failed: u64,
    pub errors: Vec<String>,
    /// Datagrams the ring clients read.
    pub ring_read: u64,
}

impl Counts {
    fn fail(&mut self, what: String) {
        self.failed += 1;
        if self.errors.len() < 5 {
            self.errors.push(what);
        }
    }
}

enum Command {
    Pause,
    Resume,
    Stop,
}

/// The churn thread; dropping it stops it.
pub(crate) struct Churn {
    commands: Sender<Command>,
    paused: Receiver<Counts>,
    thread: Option<thread::JoinHandle<Counts>>,
}

impl Churn {
    /// Starts churning endpoints on the daemon at `control`, from namespace `netns`.
    pub(crate) fn start(control: &Path, netns: &str) -> anyhow::Result<Self> {
        let (commands, command_rx) = mpsc::channel();
        let (paused_tx, paused) = mpsc::channel();
        let (started_tx, started) = mpsc::channel();
        let (control, netns) = (control.to_owned(), netns.to_owned());
        let thread = thread::Builder::new()
            .name("soak-churn".into())
            .spawn(move || {
                if let Err(e) = enter_netns(&netns) {
                    let _ = started_tx.send(Err(e));
                    return Counts::default();
                }
                let _ = started_tx.send(Ok(()));
                churn(&control, &netns, &command_rx, &paused_tx)
            })?;
        started.recv().context("the churn thread died")??;
        Ok(Self {
            commands,
            paused,
            thread: Some(thread),
        })
    }

    /// Waits (at most 10 s) until the current cycle has closed its endpoints and the churn
    /// rests; returns what it did so far.
    pub(crate) fn pause(&self) -> anyhow::Result<Counts> {
        self.commands
            .send(Command::Pause)
            .context("the churn thread ended")?;
        self.paused
            .recv_timeout(Duration::from_secs(10))
            .context("the churn did not pause within 10 s")
    }

    pub(crate) fn resume(&self) {
        let _ = self.commands.send(Command::Resume);
    }

    /// Stops the churn after its current cycle; returns what it did.
    pub(crate) fn stop(mut self) -> Counts {
        let _ = self.commands.send(Command::Stop);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The cycles, until told to stop.
fn churn(
    control: &Path,
    netns: &str,
    commands: &Receiver<Command>,
    paused: &Sender<Counts>,
) -> Counts {
    let mut counts = Counts::default();
    let mut next = Instant::now();
    loop {
        // Between cycles: nothing of the churn is bound.
        match commands.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(Command::Pause) => {
                let _ = paused.send(counts.clone());
                if !matches!(commands.recv(), Ok(Command::Resume)) {
                    return counts;
                }
            }
            Ok(Command::Resume) => {}
            Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return counts,
            Err(RecvTimeoutError::Timeout) => {}
        }
        next = Instant::now() + Duration::from_secs(1);
        cycle(control, netns, &mut counts);
        counts.cycles += 1;
    }
}

/// One cycle: bind everything, hold it, close everything.
fn cycle(control: &Path, netns: &str, counts: &mut Counts) {
    let local = |port: u16| format!("198.18.0.2:{port}");
    let ring = match RingClient::start(control, netns, local(RING_PORT), false, None, None) {
        Ok(ring) => {
            counts.bound += 1;
            Some(ring)
        }
        Err(e) => {
            counts.fail(format!("ring endpoint {}: {e:#}", local(RING_PORT)));
            None
        }
    };
    let reuseport = bind_reuseport(control, &local(REUSEPORT_PORT), counts);
    let named = bind_named(control, &local(NAMED_PORT), counts);
    thread::sleep(HOLD);
    if let Some(ring) = ring {
        counts.ring_read += ring.finish().0;
        counts.closed += 1;
    }
    if let Some((mut client, members)) = reuseport {
        for (id, socket) in members {
            match client.call(Request::Close { id }) {
                Ok(Response::Closed { .. }) => counts.closed += 1,
                other => counts.fail(format!("closing reuseport member {id}: {other:?}")),
            }
            drop(socket);
        }
    }
    if let Some((client, bound)) = named {
        // The daemon closes them when it sees the connection go.
        drop(client);
        counts.closed += bound;
    }
}

/// A reuseport group of `MEMBERS` persistent count endpoints, each with its own backing
/// socket; returns the connection and (id, socket) of each member bound.
fn bind_reuseport(
    control: &Path,
    local: &str,
    counts: &mut Counts,
) -> Option<(Client, Vec<(u32, std::net::UdpSocket)>)> {
    let mut client = match Client::connect(control) {
        Ok(client) => client,
        Err(e) => {
            counts.fail(format!("connecting: {e}"));
            return None;
        }
    };
    let mut members = Vec::new();
    for _ in 0..MEMBERS {
        let bound = (|| -> anyhow::Result<(u32, std::net::UdpSocket)> {
            let addr: SocketAddr = local.parse()?;
            let options = backing::Options {
                reuseport: true,
                ..backing::Options::default()
            };
            let socket = backing::open(addr, &options)?;
            let request = BindRequest {
                persistent: true,
                ..BindRequest::udp(local, SinkSpec::Count)
            };
            match client.bind(request, Some(socket.as_fd()))?.0 {
                Response::Bound { id } => Ok((id, socket)),
                other => bail!("{other:?}"),
            }
        })();
        match bound {
            Ok(member) => {
                counts.bound += 1;
                members.push(member);
            }
            Err(e) => counts.fail(format!("reuseport member on {local}: {e:#}")),
        }
    }
    Some((client, members))
}

/// A named group of `MEMBERS` unbacked count endpoints (root's) on one connection; returns the
/// connection and how many members it bound.
fn bind_named(control: &Path, local: &str, counts: &mut Counts) -> Option<(Client, u64)> {
    let mut client = match Client::connect(control) {
        Ok(client) => client,
        Err(e) => {
            counts.fail(format!("connecting: {e}"));
            return None;
        }
    };
    let mut bound = 0;
    for _ in 0..MEMBERS {
        let request = BindRequest {
            group: Some("soak".into()),
            ..BindRequest::udp(local, SinkSpec::Count)
        };
        match client.call(Request::Bind(request)) {
            Ok(Response::Bound { .. }) => bound += 1,
            other => counts.fail(format!("named group member on {local}: {other:?}")),
        }
    }
    counts.bound += bound;
    Some((client, bound))
}

/// For the zero-loss search: every churn endpoint bound at once, closed when dropped.
pub(crate) struct Held {
    ring: Option<RingClient>,
    reuseport: Option<(Client, Vec<(u32, std::net::UdpSocket)>)>,
    _named: Option<(Client, u64)>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(ring) = self.ring.take() {
            ring.finish();
        }
        // Persistent: they outlive the connection unless closed.
        if let Some((mut client, members)) = self.reuseport.take() {
            for (id, _) in members {
                let _ = client.call(Request::Close { id });
            }
        }
    }
}

/// Binds the churn's endpoints once (from a thread in `netns`), to hold while the rate is
/// searched; fails if any bind fails.
pub(crate) fn hold(control: &Path, netns: &str) -> anyhow::Result<Held> {
    let local = |port: u16| format!("198.18.0.2:{port}");
    let ring = RingClient::start(control, netns, local(RING_PORT), false, None, None)?;
    let (reuseport, named, counts) = thread::scope(|scope| {
        scope
            .spawn(|| {
                enter_netns(netns)?;
                let mut counts = Counts::default();
                let reuseport = bind_reuseport(control, &local(REUSEPORT_PORT), &mut counts);
                let named = bind_named(control, &local(NAMED_PORT), &mut counts);
                anyhow::Ok((reuseport, named, counts))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the binding thread panicked"))?
    })?;
    let held = Held {
        ring: Some(ring),
        reuseport,
        _named: named,
    };
    if counts.failed > 0 {
        bail!(
            "binding the churn's endpoints: {}",
            counts.errors.join("; ")
        );
    }
    Ok(held)
}
