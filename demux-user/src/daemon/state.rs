//! The daemon's endpoints, groups and bindings, and the rules of who may do what.
//!
//! Every change keeps four things in step: the BPF tables (through `Tables`, over a
//! [`Dataplane`]), the directory the queue workers read (endpoint id → sink), the records here,
//! and the [`View`] the statistics readers see. The directory learns of an endpoint before its
//! binding reaches the tables and forgets it after, so a steered frame always finds its sink,
//! save for frames already in flight when an endpoint closes (counted as `dropped_no_endpoint`).
//!
//! `State` is generic over the [`Dataplane`]: the daemon runs it over the loaded program's
//! [`Maps`], the unit tests at the end of this file over `MemoryDataplane`, one test per rule.
//!
//! The rule for who may bind what is design §7's: an endpoint receives only what a kernel
//! socket with the same binding, created by the same caller, would receive. So a binding that
//! overlaps another uid's on a port they share is refused as the kernel's bind refuses it
//! (EADDRINUSE; root included), a group takes one uid's members (SO_REUSEPORT), and what has
//! no kernel equivalent (prefix and all-ports bindings, TCP without a TCP stack) is root's.
//!
//! A caller's UDP endpoint is backed by the kernel socket the caller bound ([`Passed`],
//! [`crate::backing`]): the binding is the socket's, the kernel has already refused what it
//! refuses, and the socket's `SO_REUSEPORT` makes the group. The checks here stay as the second
//! line: the caller keeps its descriptor and may change the socket later, which [`State::audit`]
//! notices. A daemon-held endpoint's backing socket is read into its sink ([`kernel_path`]).
//!
//! What XDP passes (fragments, IP options, …) reaches a reuseport group through the kernel,
//! whose own choice of member would split a flow. So every backed member of a reuseport group
//! is also written where the `demux_reuseport` program finds it (its cookie, and the
//! `REUSEPORT_SOCKETS` slot of its place in the group's member order), and the program is
//! attached to its kernel group ([`Dataplane::attach_reuseport`], replacing a program the
//! caller may have attached). The kernel's group may hold sockets demux does not know (the
//! same uid's, never registered): the program leaves the choice to the kernel when the lookup
//! found one of those, and never selects them.
//!
//! It also holds each non-root uid to its [`Limits`]: the endpoints it holds (persistent ones
//! included) and their ring memory, checked before anything is opened. The connection limits
//! are the control socket's (`server.rs`), which asks [`State::holds_endpoints`] before closing
//! an idle connection.

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, PoisonError,
    },
};

use demux_common::{
    binding::{Target, MAX_ENDPOINTS, MAX_GROUPS},
    maps::reuseport_slot,
};
use tracing::{info, warn};

use super::{
    handover::{Handed, Picked},
    kernel_path,
    view::{Listing, View, Viewer},
    worker::QueueControl,
};
use crate::{
    backing::{self, Backed},
    binding::{mask, Binding, Entry, Local, Protocol, Receiver},
    config::Limits,
    control::SinkSpec,
    control::{BindRequest, EndpointInfo, Request, Response, SocketInfo, Stats},
    daemon::error::ControlError,
    dataplane::{maps::Maps, Dataplane, ReuseportError},
    ring::{ClientFds, Producer, DEFAULT_SLOT_SIZE},
    sink::{CallerSink, Sink},
    tables::Tables,
};

/// Who is asking: the peer's uid (SO_PEERCRED) and its control connection.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub connection: u64,
}

impl Caller {
    /// The daemon itself (endpoints from the config file).
    pub const DAEMON: Caller = Caller {
        uid: 0,
        connection: 0,
    };
    /// The connection of an endpoint picked up from the previous daemon until its client
    /// attaches: none of the control socket's (they count from 1).
    pub const RESTORED: u64 = u64::MAX;
}

/// What a queue worker needs of an endpoint: its sink and its delivery counters.
pub struct EndpointHandle {
    pub sink: Sink,
    pub delivered: AtomicU64,
    pub delivered_bytes: AtomicU64,
    pub dropped_sink_full: AtomicU64,
    pub dropped_sink_error: AtomicU64,
    /// Read from the backing socket into the sink by the daemon (the kernel delivered them).
    pub via_kernel: AtomicU64,
    /// Read from the backing socket but not taken by the sink.
    pub via_kernel_dropped: AtomicU64,
}

/// What a caller passed with a bind request: its backing socket and its `pcap:` or `unix:`
/// sink, each checked here before use.
#[derive(Debug, Default)]
pub struct Passed {
    /// The kernel socket behind the endpoint.
    pub backing: Option<OwnedFd>,
    /// The sink the caller opened.
    pub sink: Option<CallerSink>,
}

pub use super::directory::Directory;

/// Drops the workers count that belong to no endpoint.
#[derive(Default)]
pub struct WorkerCounters {
    pub dropped_no_endpoint: AtomicU64,
    pub dropped_bad_metadata: AtomicU64,
    /// Bad IPv4 header, UDP or TCP checksums, IPv6 UDP without one ([`crate::checksum`]).
    pub dropped_bad_checksum: AtomicU64,
    /// Broken chains of multi-buffer descriptors ([`crate::xsk::ChainError`]).
    pub dropped_bad_chain: AtomicU64,
}

impl EndpointHandle {
    /// Datagrams its sink did not take, all reasons.
    pub fn dropped(&self) -> u64 {
        self.dropped_sink_full.load(Relaxed) + self.dropped_sink_error.load(Relaxed)
    }
}

/// The latest XDP_STATISTICS of each AF_XDP socket, written by its worker.
pub type SocketCells = Vec<Arc<std::sync::Mutex<SocketInfo>>>;

struct Endpoint {
    request: BindRequest,
    owner: u32,
    connection: u64,
    /// The table entry this endpoint holds alone, or its group's name.
    placement: Placement,
    /// The kernel socket behind it, if any.
    backing: Option<Backing>,
    /// Picked up from the previous daemon at this time, its client not back yet
    /// ([`State::attach`]).
    waiting: Option<std::time::Instant>,
}

/// An endpoint's backing socket, what it said when registered, and the task reading it into a
/// daemon-held sink (stopped when the endpoint goes).
struct Backing {
    socket: OwnedFd,
    backed: Backed,
    /// The socket's cookie (`SO_COOKIE`), for a reuseport socket: `REUSEPORT_COOKIES` has it.
    cookie: Option<u64>,
    reader: Option<tokio::task::AbortHandle>,
}

impl Drop for Backing {
    fn drop(&mut self) {
        if let Some(reader) = &self.reader {
            reader.abort();
        }
    }
}

enum Placement {
    Own(Entry),
    Member(String),
}

struct Group {
    id: u32,
    entry: Entry,
    members: Vec<u32>,
}

/// The daemon's records over a dataplane `D` (the loaded program's [`Maps`] by default).
pub struct State<D: Dataplane = Maps> {
    dataplane: D,
    tables: Tables,
    endpoints: BTreeMap<u32, Endpoint>,
    groups: HashMap<String, Group>,
    /// Which endpoint (or group) holds each table entry.
    holders: HashMap<Entry, String>,
    next_endpoint: u32,
    /// Endpoint id → sink, for the queue workers.
    pub directory: Arc<Directory>,
    /// The queue workers' drops.
    pub workers: Arc<WorkerCounters>,
    /// What `list`, `stats` and the metrics read, without this state's lock.
    pub view: Arc<View>,
    /// What a non-root uid may hold.
    limits: Limits,
    /// The daemon's network namespace (`SO_NETNS_COOKIE`): backing sockets must live in it.
    netns: u64,
    /// Each interface's queue workers, for fast-path leases.
    queues: HashMap<String, Vec<QueueControl>>,
    /// The fast-path lease, if a connection holds one.
    lease: Option<Lease>,
    /// The uid that may take a lease (`fast_path_uid`); none: nobody.
    fast_path_uid: Option<u32>,
}

/// A fast-path lease: a connection reads every rx queue of `iface` itself (see "The fast path"
/// in docs/ARCHITECTURE.md).
struct Lease {
    connection: u64,
    uid: u32,
    iface: String,
}

impl<D: Dataplane> State<D> {
    /// No endpoints yet, over `dataplane`, holding callers to `limits`.
    pub fn new(dataplane: D, limits: Limits) -> Self {
        let workers = Arc::<WorkerCounters>::default();
        let view = Arc::new(View::new(dataplane.counters(), workers.clone()));
        Self {
            dataplane,
            tables: Tables::default(),
            endpoints: BTreeMap::new(),
            groups: HashMap::new(),
            holders: HashMap::new(),
            next_endpoint: 1,
            directory: Arc::default(),
            workers,
            view,
            limits,
            netns: own_netns(),
            queues: HashMap::new(),
            lease: None,
            fast_path_uid: None,
        }
    }

    /// The dataplane, for the host's view the program checks destinations against
    /// (the local routes, `IFACE_SLOTS`): maps no rule of this state reads or writes.
    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dataplane
    }

    /// Answers one control request; a ring endpoint's descriptors come along for the caller.
    pub fn handle(&mut self, request: Request, caller: Caller) -> (Response, Option<ClientFds>) {
        self.handle_passed(request, caller, Passed::default())
    }

    /// As [`State::handle`], with what the caller passed along with a bind request.
    pub fn handle_passed(
        &mut self,
        request: Request,
        caller: Caller,
        passed: Passed,
    ) -> (Response, Option<ClientFds>) {
        let mut fds = None;
        let result = match request {
            Request::Bind(bind) => self.bind_passed(bind, caller, passed).map(|(id, ring)| {
                fds = ring;
                Response::Bound { id }
            }),
            Request::Close { id } => self.close(id, caller).map(|()| Response::Closed { id }),
            Request::Attach { id } => self
                .attach(id, caller, passed.backing)
                .map(|()| Response::Attached { id }),
            // The control socket hands root's reload to the daemon's main task (`reload.rs`).
            Request::Reload => Err(ControlError::ReloadForRoot { uid: caller.uid }),
            // The control socket hands the workers their part (`server.rs`).
            Request::FastPath { .. } | Request::FastPathReady => Err(
                ControlError::FastPathUnavailable("answered by the control socket only".into()),
            ),
            Request::Hello { .. } | Request::List | Request::Stats => Ok(self
                .view
                .answer(&request, Viewer::of(caller.uid))
                .expect("hello, list and stats are answered by the view")),
        };
        (
            result.unwrap_or_else(|error| Response::Error {
                code: error.code(),
                message: error.to_string(),
            }),
            fds,
        )
    }

    /// Creates an endpoint; returns its descriptor, and for a ring sink the client's end.
    pub fn bind(
        &mut self,
        request: BindRequest,
        caller: Caller,
    ) -> Result<(u32, Option<ClientFds>), ControlError> {
        self.bind_passed(request, caller, Passed::default())
    }

    /// As [`State::bind`], with what the caller passed: its backing socket, whose binding the
    /// request must state, and its sink (a caller's `pcap:` and `unix:` sinks come this way only;
    /// the daemon's own, the config file's, are opened by path).
    pub fn bind_passed(
        &mut self,
        request: BindRequest,
        caller: Caller,
        passed: Passed,
    ) -> Result<(u32, Option<ClientFds>), ControlError> {
        self.replace_waiting(caller, &passed);
        self.bind_inner(request, caller, passed, None)
    }

    /// A client that binds again with the backing socket of an endpoint picked up after a
    /// restart (a client library without `attach`) gets a new endpoint in its place: the
    /// picked-up one, which it no longer reads, closes first (same owner, same socket cookie,
    /// so it is the same client).
    fn replace_waiting(&mut self, caller: Caller, passed: &Passed) {
        let Some(cookie) = passed
            .backing
            .as_ref()
            .and_then(|s| crate::sys::socket::cookie(s).ok())
        else {
            return;
        };
        let waiting: Vec<u32> = self
            .endpoints
            .iter()
            .filter(|(_, e)| e.waiting.is_some() && e.owner == caller.uid)
            .filter(|(_, e)| {
                e.backing
                    .as_ref()
                    .and_then(|b| crate::sys::socket::cookie(&b.socket).ok())
                    == Some(cookie)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            info!(
                id,
                "its client binds again instead of attaching: the picked-up endpoint is replaced"
            );
            if let Err(error) = self.close(id, Caller::DAEMON) {
                warn!(id, "closing: {error}");
            }
        }
    }

    /// Re-creates an endpoint the previous daemon handed over, with its id, ring and backing
    /// socket, checked as a new bind of its owner is (the socket inspected again, the binding,
    /// the overlaps, the limits); it waits for its client to [`State::attach`].
    pub fn restore(&mut self, picked: Picked) -> Result<u32, ControlError> {
        let Picked {
            stored,
            backing,
            ring,
        } = picked;
        let caller = Caller {
            uid: stored.owner,
            connection: Caller::RESTORED,
        };
        let passed = Passed {
            backing: Some(backing),
            sink: None,
        };
        // A backed endpoint's group name is the daemon's, derived from its socket again.
        let request = BindRequest {
            group: None,
            ..stored.request
        };
        let (id, _) = self.bind_inner(request, caller, passed, Some((stored.id, ring)))?;
        if let Some(endpoint) = self.endpoints.get_mut(&id) {
            endpoint.waiting = Some(std::time::Instant::now());
        }
        Ok(id)
    }

    /// The caller takes up again endpoint `id`, picked up after a restart: it must be its
    /// owner (SO_PEERCRED) and pass the endpoint's own backing socket (same `SO_COOKIE`), which
    /// only a holder of that socket can. The endpoint then belongs to the caller's connection.
    pub fn attach(
        &mut self,
        id: u32,
        caller: Caller,
        socket: Option<OwnedFd>,
    ) -> Result<(), ControlError> {
        let endpoint = self
            .endpoints
            .get_mut(&id)
            .filter(|e| e.waiting.is_some())
            .ok_or(ControlError::NotWaiting { id })?;
        if caller.uid != endpoint.owner {
            return Err(ControlError::AttachOwner {
                id,
                owner: endpoint.owner,
            });
        }
        let theirs = socket.and_then(|s| crate::sys::socket::cookie(&s).ok());
        let ours = endpoint
            .backing
            .as_ref()
            .and_then(|b| crate::sys::socket::cookie(&b.socket).ok());
        if theirs.is_none() || theirs != ours {
            return Err(ControlError::AttachSocket { id });
        }
        endpoint.waiting = None;
        endpoint.connection = caller.connection;
        info!(
            id,
            owner = caller.uid,
            "endpoint attached again after the restart"
        );
        Ok(())
    }

    /// Closes the picked-up endpoints whose client has not attached within `grace` (persistent
    /// ones stay: they do not need a connection). Returns them.
    pub fn expire_waiting(&mut self, grace: std::time::Duration) -> Vec<u32> {
        let expired: Vec<u32> = self
            .endpoints
            .iter()
            .filter(|(_, e)| {
                !e.request.persistent && e.waiting.is_some_and(|t| t.elapsed() > grace)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            warn!(
                id,
                "no client attached within {grace:?} of the restart: endpoint closed"
            );
            if let Err(error) = self.close(*id, Caller::DAEMON) {
                warn!(id, "closing: {error}");
            }
        }
        expired
    }

    /// The client ring endpoints, as the next daemon needs them ([`super::handover`]): their
    /// records, backing sockets and rings. Call once the workers have stopped (the producer
    /// indexes are final).
    pub fn handover(&self) -> Vec<Handed> {
        let directory = self.directory.read();
        let mut handed = Vec::new();
        for (id, endpoint) in &self.endpoints {
            let (Some(backing), Some(handle)) = (&endpoint.backing, directory.get(*id)) else {
                continue;
            };
            let Sink::Ring(producer) = &handle.sink else {
                continue;
            };
            let ring = producer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .handover();
            let one = ring.and_then(|ring| {
                Handed::new(
                    *id,
                    endpoint.owner,
                    endpoint.request.clone(),
                    backing.socket.try_clone()?,
                    ring,
                )
            });
            match one {
                Ok(one) => handed.push(one),
                Err(error) => warn!(id, "not handed over: {error}"),
            }
        }
        handed
    }

    /// As [`State::bind_passed`]; `resumed` is a picked-up endpoint's id and ring.
    fn bind_inner(
        &mut self,
        mut request: BindRequest,
        caller: Caller,
        passed: Passed,
        resumed: Option<(u32, Producer)>,
    ) -> Result<(u32, Option<ClientFds>), ControlError> {
        // While a lease holds the queues, everything steered goes to its holder: nobody else's
        // binding may reach the tables (the caller's kernel socket serves it meanwhile).
        if let Some(lease) = self
            .lease
            .as_ref()
            .filter(|lease| lease.connection != caller.connection)
        {
            return Err(ControlError::Leased {
                uid: lease.uid,
                iface: lease.iface.clone(),
            });
        }
        let Passed {
            backing: socket,
            sink: passed,
        } = passed;
        let backed = match &socket {
            Some(socket) => Some(self.adopt(&mut request, socket)?),
            None => None,
        };
        // An unconnected reuseport member's cookie: how the reuseport program finds its group.
        // A connected member is never the kernel's reuseport choice (its lookup takes connected
        // sockets by score, without running the group's program), and the kernel refuses it a
        // REUSEPORT_SOCKARRAY slot.
        let cookie = match (&socket, &backed) {
            (Some(socket), Some(backed)) if backed.reuseport && backed.binding.remote.is_none() => {
                Some(
                    crate::sys::socket::cookie(socket)
                        .map_err(|e| ControlError::Reuseport(ReuseportError::Cookie(e)))?,
                )
            }
            _ => None,
        };
        let binding = request.binding()?;
        let local = binding.local;
        let privileged_port = match local {
            Local::Addr(addr) => addr.port() < 1024,
            Local::Prefix { port, .. } => port.is_none_or(|p| p < 1024),
        };
        if caller.uid != 0 && privileged_port {
            return Err(ControlError::PrivilegedPort {
                local: request.local.clone(),
            });
        }
        if caller.uid != 0 && matches!(local, Local::Prefix { .. }) {
            return Err(ControlError::PrefixForRoot {
                local: request.local.clone(),
            });
        }
        if caller.uid != 0 && binding.protocol == Protocol::Tcp {
            return Err(ControlError::TcpForRoot);
        }
        if caller.uid != 0 {
            self.within_limits(&request.to, caller.uid)?;
        }
        let id = match &resumed {
            Some((id, _)) if self.endpoints.contains_key(id) => {
                return Err(ControlError::InUse {
                    holder: format!("endpoint {id}"),
                })
            }
            Some((id, _)) => *id,
            None => self.free_endpoint_id()?,
        };
        // Validate the binding before touching anything.
        let (own_entry, own_target) = binding.encode(Receiver::Endpoint(id))?;
        self.no_foreign_overlap(&request, &binding, caller.uid)?;
        if matches!(request.to, SinkSpec::Ring { .. })
            && caller.connection == Caller::DAEMON.connection
        {
            return Err(ControlError::RingForDaemon);
        }
        let (sink, ring) = if let Some((_, producer)) = resumed {
            (Sink::Ring(std::sync::Mutex::new(producer)), None)
        } else if caller.connection == Caller::DAEMON.connection {
            Sink::open(&request.to)?
        } else {
            Sink::passed(&request.to, passed)?
        };
        let handle = Arc::new(EndpointHandle {
            sink,
            delivered: AtomicU64::new(0),
            delivered_bytes: AtomicU64::new(0),
            dropped_sink_full: AtomicU64::new(0),
            dropped_sink_error: AtomicU64::new(0),
            via_kernel: AtomicU64::new(0),
            via_kernel_dropped: AtomicU64::new(0),
        });
        self.dataplane.reset_endpoint_stats(id)?;
        self.directory_mut().insert(id, handle.clone());

        let placement = match &request.group {
            None => self
                .claim(own_entry, own_target, format!("endpoint {id}"))
                .map(|()| Placement::Own(own_entry)),
            Some(name) => {
                let kernel = socket.as_ref().zip(cookie).map(|(s, c)| (s.as_fd(), c));
                self.join_group(name, &binding, own_entry, id, kernel)
                    .map(|()| Placement::Member(name.clone()))
            }
        };
        let placement = match placement {
            Ok(placement) => placement,
            Err(error) => {
                self.directory_mut().remove(id);
                return Err(error);
            }
        };
        let backing = match (socket, backed) {
            (Some(socket), Some(backed)) => {
                // A ring's client reads the socket itself; the daemon reads it for its own sinks.
                let reader = match &handle.sink {
                    Sink::Ring(_) => None,
                    _ => kernel_path::spawn(id, &backed, &socket, handle.clone()),
                };
                Some(Backing {
                    socket,
                    backed,
                    cookie,
                    reader,
                })
            }
            _ => None,
        };
        info!(id, local = %request.local, to = %request.to, owner = caller.uid,
              backed = backing.is_some(), "endpoint bound");
        self.view.publish(
            id,
            Listing {
                request: request.clone(),
                owner: caller.uid,
                handle,
            },
        );
        self.endpoints.insert(
            id,
            Endpoint {
                request,
                owner: caller.uid,
                connection: caller.connection,
                placement,
                backing,
                waiting: None,
            },
        );
        self.next_endpoint = id + 1;
        Ok((id, ring))
    }

    /// Takes `socket` as the backing socket of `request`: refuses what [`backing::inspect`]
    /// refuses, a request that says otherwise than the socket, and a group name (the socket's
    /// `SO_REUSEPORT` makes the group, named by the binding, as the kernel's group is).
    fn adopt(&self, request: &mut BindRequest, socket: &OwnedFd) -> Result<Backed, ControlError> {
        let backed = backing::inspect(socket, self.netns)?;
        let asked = request.binding()?;
        if asked != backed.binding {
            return Err(ControlError::BackingMismatch {
                socket: describe(&backed.binding),
                request: describe(&asked),
            });
        }
        if request.group.is_some() {
            return Err(ControlError::GroupWithBacking);
        }
        if backed.reuseport {
            request.group = Some(format!("reuseport {}", describe(&backed.binding)));
        }
        request.backed = true;
        Ok(backed)
    }

    /// Reads every backing socket again and closes the endpoints whose socket no longer says
    /// what it said when registered: its owner keeps a descriptor of it and may have connected,
    /// disconnected or set an option since. Returns the closed endpoints.
    pub fn audit(&mut self) -> Vec<u32> {
        let changed: Vec<(u32, u32, String)> = self
            .endpoints
            .iter()
            .filter_map(|(id, endpoint)| {
                let backing = endpoint.backing.as_ref()?;
                let why = match backing::inspect(&backing.socket, self.netns) {
                    Ok(now) if now == backing.backed => return None,
                    Ok(now) => format!("it is {} now", describe(&now.binding)),
                    Err(error) => error.to_string(),
                };
                Some((*id, endpoint.owner, why))
            })
            .collect();
        for (id, owner, why) in &changed {
            warn!(
                id,
                owner, "backing socket changed after registering ({why}): endpoint closed"
            );
            if let Err(error) = self.close(*id, Caller::DAEMON) {
                warn!(id, "closing: {error}");
            }
        }
        changed.into_iter().map(|(id, ..)| id).collect()
    }

    /// Refuses a new endpoint with sink `to` that would take `uid` over its endpoints or its
    /// ring memory.
    fn within_limits(&self, to: &SinkSpec, uid: u32) -> Result<(), ControlError> {
        let (held, held_bytes) = self
            .endpoints
            .values()
            .filter(|e| e.owner == uid)
            .fold((0u32, 0u64), |(n, bytes), e| {
                (n + 1, bytes + ring_bytes(&e.request.to))
            });
        let max = self.limits.endpoints_per_uid;
        if held >= max {
            return Err(ControlError::EndpointsPerUid { uid, max });
        }
        let (asked, max) = (ring_bytes(to), self.limits.ring_bytes_per_uid);
        if asked > 0 && held_bytes + asked > max {
            return Err(ControlError::RingBytesPerUid {
                uid,
                asked,
                held: held_bytes,
                max,
            });
        }
        Ok(())
    }

    /// Refuses what the kernel's bind would refuse `uid`: joining another uid's group, or a
    /// binding whose local addresses overlap another uid's on a port they share. Exact
    /// duplicates of the caller's own bindings are refused later, by [`State::claim`].
    ///
    /// A prefix binding (root's only) is not checked: it has no kernel equivalent, and root
    /// makes it to take its ports over, other users' endpoints included. Others' later
    /// bindings inside it are refused, as it is root's.
    fn no_foreign_overlap(
        &self,
        request: &BindRequest,
        binding: &Binding,
        uid: u32,
    ) -> Result<(), ControlError> {
        if let Some(name) = &request.group {
            let owner = self
                .groups
                .get(name)
                .and_then(|group| group.members.first())
                .and_then(|member| self.endpoints.get(member))
                .map(|member| member.owner);
            if let Some(owner) = owner.filter(|owner| *owner != uid) {
                return Err(ControlError::GroupOwner {
                    name: name.clone(),
                    owner,
                });
            }
        }
        if matches!(binding.local, Local::Prefix { .. }) {
            return Ok(());
        }
        for (id, endpoint) in &self.endpoints {
            if endpoint.owner == uid {
                continue;
            }
            // Every held request was valid when bound.
            let Ok(theirs) = endpoint.request.binding() else {
                continue;
            };
            if overlaps(binding, &theirs) {
                return Err(ControlError::Overlap {
                    local: request.local.clone(),
                    theirs: endpoint.request.local.clone(),
                    holder: match &endpoint.placement {
                        Placement::Own(_) => format!("endpoint {id}"),
                        Placement::Member(name) => format!("group {name}"),
                    },
                    owner: endpoint.owner,
                });
            }
        }
        Ok(())
    }

    /// Whether `connection` holds an endpoint that closes with it (a persistent one does not
    /// need its connection, so it does not count): such a connection is never idle.
    pub fn holds_endpoints(&self, connection: u64) -> bool {
        self.endpoints
            .values()
            .any(|e| e.connection == connection && !e.request.persistent)
    }

    /// Inserts `entry` for `holder`, or says who holds it already.
    fn claim(&mut self, entry: Entry, target: Target, holder: String) -> Result<(), ControlError> {
        if let Some(current) = self.holders.get(&entry) {
            return Err(ControlError::InUse {
                holder: current.clone(),
            });
        }
        self.tables.insert(&mut self.dataplane, &entry, target)?;
        self.holders.insert(entry, holder);
        Ok(())
    }

    /// Adds endpoint `id` to group `name` (created if new). `kernel` is its backing socket
    /// and cookie when it is a reuseport socket: written for the reuseport program (slot of its
    /// place, cookie, program attached) before `GROUPS` counts it.
    fn join_group(
        &mut self,
        name: &str,
        binding: &Binding,
        own_entry: Entry,
        id: u32,
        kernel: Option<(BorrowedFd<'_>, u64)>,
    ) -> Result<(), ControlError> {
        if let Some(group) = self.groups.get_mut(name) {
            let (entry, _) = binding.encode(Receiver::Group(group.id))?;
            if entry != group.entry {
                return Err(ControlError::GroupAddress { name: name.into() });
            }
            let mut members = group.members.clone();
            members.push(id);
            // Refused before any write, as `set_group` would refuse it.
            crate::dataplane::group_value(group.id, &members)?;
            let index = (members.len() - 1) as u32;
            if let Some((socket, cookie)) = kernel {
                join_kernel_group(&mut self.dataplane, group.id, index, socket, cookie)?;
            }
            if let Err(error) = self.dataplane.set_group(group.id, &members) {
                if let Some((_, cookie)) = kernel {
                    leave_kernel_group(&mut self.dataplane, group.id, index, cookie);
                }
                return Err(error.into());
            }
            group.members = members;
            return Ok(());
        }
        let group_id = (0..MAX_GROUPS)
            .find(|gid| self.groups.values().all(|g| g.id != *gid))
            .ok_or(ControlError::NoGroup)?;
        let (entry, target) = binding.encode(Receiver::Group(group_id))?;
        debug_assert_eq!(
            std::mem::discriminant(&entry),
            std::mem::discriminant(&own_entry)
        );
        // The kernel's side first, then members, so the binding never points at an empty
        // group.
        if let Some((socket, cookie)) = kernel {
            join_kernel_group(&mut self.dataplane, group_id, 0, socket, cookie)?;
        }
        let undo_kernel = |dataplane: &mut D| {
            if let Some((_, cookie)) = kernel {
                leave_kernel_group(dataplane, group_id, 0, cookie);
            }
        };
        if let Err(error) = self.dataplane.set_group(group_id, &[id]) {
            undo_kernel(&mut self.dataplane);
            return Err(error.into());
        }
        if let Err(error) = self.claim(entry, target, format!("group {name}")) {
            let _ = self.dataplane.set_group(group_id, &[]);
            undo_kernel(&mut self.dataplane);
            return Err(error);
        }
        self.groups.insert(
            name.to_owned(),
            Group {
                id: group_id,
                entry,
                members: vec![id],
            },
        );
        Ok(())
    }

    /// Closes endpoint `id`: only its owner or root may.
    pub fn close(&mut self, id: u32, caller: Caller) -> Result<(), ControlError> {
        let owner = self
            .endpoints
            .get(&id)
            .ok_or(ControlError::NoEndpoint { id })?
            .owner;
        if caller.uid != 0 && caller.uid != owner {
            return Err(ControlError::NotOwner { id, owner });
        }
        let Some(endpoint) = self.endpoints.remove(&id) else {
            return Err(ControlError::NoEndpoint { id });
        };
        let result = match &endpoint.placement {
            Placement::Own(entry) => self.release(entry),
            Placement::Member(name) => {
                let kernel = endpoint
                    .backing
                    .as_ref()
                    .and_then(|b| Some((b.socket.as_fd(), b.cookie?)));
                self.leave_group(name, id, kernel)
            }
        };
        self.directory_mut().remove(id);
        // The worker no longer sees the endpoint: its counters are final.
        self.view.retire(id);
        info!(id, "endpoint closed");
        result
    }

    fn release(&mut self, entry: &Entry) -> Result<(), ControlError> {
        self.holders.remove(entry);
        Ok(self.tables.remove(&mut self.dataplane, entry)?)
    }

    /// Takes endpoint `id` out of group `name` (removed with its last member). `kernel` is its
    /// reuseport backing socket and cookie: the cookie goes first, then `GROUPS`, then the
    /// slots of every member whose place changed; the last member detaches the program.
    fn leave_group(
        &mut self,
        name: &str,
        id: u32,
        kernel: Option<(BorrowedFd<'_>, u64)>,
    ) -> Result<(), ControlError> {
        let Some(group) = self.groups.get_mut(name) else {
            return Ok(());
        };
        let before = group.members.clone();
        group.members.retain(|m| *m != id);
        let (gid, entry, members) = (group.id, group.entry, group.members.clone());
        if let Some((_, cookie)) = kernel {
            if let Err(error) = self.dataplane.remove_reuseport_cookie(cookie) {
                warn!(id, group = name, "leaving the kernel's group: {error}");
            }
        }
        let result = if members.is_empty() {
            self.groups.remove(name);
            // Binding first, so no packet looks into the emptied group.
            let result = self.release(&entry);
            let _ = self.dataplane.set_group(gid, &[]);
            if let Some((socket, _)) = kernel {
                if let Err(error) = self.dataplane.detach_reuseport(socket) {
                    warn!(id, group = name, "leaving the kernel's group: {error}");
                }
            }
            result
        } else {
            self.dataplane.set_group(gid, &members).map_err(Into::into)
        };
        // Each member's slot follows its place in `members`.
        let sockets: Vec<Option<BorrowedFd<'_>>> = members
            .iter()
            .map(|m| {
                let backing = self.endpoints.get(m)?.backing.as_ref()?;
                backing.cookie.map(|_| backing.socket.as_fd())
            })
            .collect();
        if let Err(error) = rewrite_slots(&mut self.dataplane, gid, &before, &members, &sockets) {
            warn!(id, group = name, "rewriting the kernel's group: {error}");
        }
        result
    }

    /// Closes the endpoints a connection created, except persistent ones, and ends its
    /// fast-path lease.
    pub fn connection_closed(&mut self, connection: u64) {
        let ids: Vec<u32> = self
            .endpoints
            .iter()
            .filter(|(_, e)| e.connection == connection && !e.request.persistent)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Err(error) = self.close(id, Caller::DAEMON) {
                warn!(id, "closing after its client left: {error}");
            }
        }
        self.end_lease(connection);
    }

    /// Lets `uid` take fast-path leases (none: nobody may).
    pub fn set_fast_path_uid(&mut self, uid: Option<u32>) {
        self.fast_path_uid = uid;
    }

    /// Forgets the queue workers of `iface` (taken down, or brought up again: its new workers
    /// follow), ending a lease on it first: its slots are emptied while their numbers are still
    /// its own (another interface may take them next).
    pub fn forget_queues(&mut self, iface: &str) {
        if let Some(connection) = self
            .lease
            .as_ref()
            .filter(|lease| lease.iface == iface)
            .map(|lease| lease.connection)
        {
            self.end_lease(connection);
        }
        self.queues.remove(iface);
    }

    /// Takes the workers of one more rx queue, for fast-path leases.
    pub fn add_queue(&mut self, control: QueueControl) {
        self.queues
            .entry(control.iface.clone())
            .or_default()
            .push(control);
    }

    /// Grants `caller` a fast-path lease on every rx queue of `iface`, if every endpoint of the
    /// daemon is the caller's connection's: a client that maps a queue's UMEM reads every frame
    /// the queue carries, and on veth and under plain RSS any flow may land on any queue, while
    /// bindings hold on every interface. From now on other connections' binds are refused
    /// ([`ControlError::Leased`]). Returns the queues' workers, to hand the sockets over.
    pub fn grant_lease(
        &mut self,
        caller: Caller,
        iface: &str,
    ) -> Result<Vec<QueueControl>, ControlError> {
        if self.fast_path_uid != Some(caller.uid) {
            return Err(ControlError::FastPathNotAllowed { uid: caller.uid });
        }
        if let Some(lease) = &self.lease {
            return Err(match lease.connection == caller.connection {
                true => ControlError::FastPathUnavailable(format!(
                    "this connection holds the queues of {} already",
                    lease.iface
                )),
                false => ControlError::Leased {
                    uid: lease.uid,
                    iface: lease.iface.clone(),
                },
            });
        }
        let queues = self.queues.get(iface).cloned().ok_or_else(|| {
            ControlError::FastPathUnavailable(format!(
                "`{iface}` is not an interface this daemon serves"
            ))
        })?;
        // Two descriptors per queue in one answer.
        let most = crate::sys::scm::MAX_FDS / 2;
        if queues.len() > most {
            return Err(ControlError::FastPathUnavailable(format!(
                "`{iface}` has {} rx queues; a lease takes at most {most}",
                queues.len()
            )));
        }
        if let Some((id, other)) = self
            .endpoints
            .iter()
            .find(|(_, e)| e.connection != caller.connection)
        {
            return Err(ControlError::FastPathShared {
                id: *id,
                local: other.request.local.clone(),
                owner: other.owner,
            });
        }
        self.lease = Some(Lease {
            connection: caller.connection,
            uid: caller.uid,
            iface: iface.to_owned(),
        });
        info!(uid = caller.uid, iface, "fast-path lease granted");
        Ok(queues)
    }

    /// The leased queues' workers, if `caller`'s connection holds the lease.
    pub fn leased_queues(&self, caller: Caller) -> Result<Vec<QueueControl>, ControlError> {
        self.lease
            .as_ref()
            .filter(|lease| lease.connection == caller.connection)
            .and_then(|lease| self.queues.get(&lease.iface).cloned())
            .ok_or_else(|| {
                ControlError::FastPathUnavailable(
                    "this connection holds no lease; ask for `fast_path` first".into(),
                )
            })
    }

    /// Ends `connection`'s lease, if it holds one: empties the leased queues' slots first
    /// (the client may keep its descriptors, but no frame reaches them from now on), then
    /// tells the workers to open the queues' own sockets again.
    pub fn end_lease(&mut self, connection: u64) {
        let Some(lease) = self.lease.take_if(|lease| lease.connection == connection) else {
            return;
        };
        for queue in self.queues.get(&lease.iface).into_iter().flatten() {
            if let Err(error) = queue.slot.unset() {
                warn!(iface = %queue.iface, queue = queue.queue, "emptying a leased slot: {error}");
            }
            let _ = queue.commands.send(super::worker::Command::End);
        }
        info!(uid = lease.uid, iface = %lease.iface, "fast-path lease ended");
    }

    fn free_endpoint_id(&self) -> Result<u32, ControlError> {
        (self.next_endpoint..MAX_ENDPOINTS)
            .chain(1..self.next_endpoint)
            .find(|id| !self.endpoints.contains_key(id))
            .ok_or(ControlError::NoDescriptor {
                max: MAX_ENDPOINTS - 1,
            })
    }

    /// The endpoints, by id (also readable without this state's lock: [`View::list`]).
    pub fn list(&self) -> Vec<EndpointInfo> {
        self.view.list()
    }

    /// The statistics (also readable without this state's lock: [`View::stats`]).
    pub fn stats(&self) -> Stats {
        self.view.stats()
    }

    /// What a caller may hold now.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Holds callers to `limits` from now on (reload): what they hold already stays.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The request of endpoint `id` if it is one the daemon created from its config file (not a
    /// caller's, root's included: those have a connection of their own).
    pub fn configured(&self, id: u32) -> Option<&BindRequest> {
        self.endpoints
            .get(&id)
            .filter(|e| e.connection == Caller::DAEMON.connection)
            .map(|e| &e.request)
    }

    /// Shows the statistics of one more AF_XDP socket.
    pub fn add_socket(&self, cell: Arc<std::sync::Mutex<SocketInfo>>) {
        self.view.add_socket(cell);
    }

    fn directory_mut(&self) -> std::sync::RwLockWriteGuard<'_, super::directory::Table> {
        self.directory.write()
    }
}

/// Writes a joining reuseport member for the reuseport program: its socket in the slot of its
/// place `index` in group `gid`, its cookie, and the program attached to its kernel group (a
/// program the caller attached is replaced: its reuseport selection cannot be read back). On
/// failure nothing stays written.
fn join_kernel_group<D: Dataplane>(
    dataplane: &mut D,
    gid: u32,
    index: u32,
    socket: BorrowedFd<'_>,
    cookie: u64,
) -> Result<(), ControlError> {
    dataplane.set_reuseport_socket(reuseport_slot(gid, index), socket)?;
    let rest = dataplane
        .set_reuseport_cookie(cookie, gid)
        .and_then(|()| dataplane.attach_reuseport(socket));
    if let Err(error) = rest {
        leave_kernel_group(dataplane, gid, index, cookie);
        return Err(error.into());
    }
    Ok(())
}

/// Undoes [`join_kernel_group`]'s writes (the program stays attached: the group's other
/// members still need it), as far as they go.
fn leave_kernel_group<D: Dataplane>(dataplane: &mut D, gid: u32, index: u32, cookie: u64) {
    let _ = dataplane.remove_reuseport_cookie(cookie);
    let _ = dataplane.clear_reuseport_socket(reuseport_slot(gid, index));
}

/// Rewrites group `gid`'s `REUSEPORT_SOCKETS` slots from member order `before` to `after`,
/// `sockets[i]` being the reuseport socket of `after[i]` (none for a member without one). Only
/// places whose member changed are written; all of them are emptied first, because the kernel
/// keeps a socket in one slot at most.
fn rewrite_slots<D: Dataplane>(
    dataplane: &mut D,
    gid: u32,
    before: &[u32],
    after: &[u32],
    sockets: &[Option<BorrowedFd<'_>>],
) -> Result<(), ReuseportError> {
    let changed = |i: usize| before.get(i) != after.get(i);
    for i in (0..before.len()).filter(|i| changed(*i)) {
        dataplane.clear_reuseport_socket(reuseport_slot(gid, i as u32))?;
    }
    for (i, socket) in sockets.iter().enumerate().filter(|(i, _)| changed(*i)) {
        if let Some(socket) = socket {
            dataplane.set_reuseport_socket(reuseport_slot(gid, i as u32), *socket)?;
        }
    }
    Ok(())
}

/// Whether two bindings would conflict as kernel sockets' binds do: one protocol, a port in
/// common (an all-ports prefix has every port), and local addresses in common. A connected
/// binding counts by its local address, as its socket was bound before it connected.
fn overlaps(a: &Binding, b: &Binding) -> bool {
    let port = |local: Local| match local {
        Local::Addr(addr) => Some(addr.port()),
        Local::Prefix { port, .. } => port,
    };
    let ports = match (port(a.local), port(b.local)) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    };
    a.protocol == b.protocol && ports && addresses_overlap(a, b)
}

/// Whether two bindings' local address sets meet: within a family, when the shorter of the two
/// prefixes holds both (a wildcard is a prefix of length 0, an address one of full length);
/// across families, when one is an IPv6 wildcard without `v6only` (it receives IPv4 too).
fn addresses_overlap(a: &Binding, b: &Binding) -> bool {
    let net = |binding: &Binding| match binding.local {
        Local::Addr(addr) if addr.ip().is_unspecified() => (addr.ip(), 0),
        Local::Addr(addr) => (addr.ip(), if addr.is_ipv4() { 32 } else { 128 }),
        Local::Prefix { addr, len, .. } => (addr, len),
    };
    let dual_stack = |binding: &Binding| {
        !binding.v6only
            && matches!(binding.local, Local::Addr(std::net::SocketAddr::V6(addr)) if addr.ip().is_unspecified())
    };
    let ((x, x_len), (y, y_len)) = (net(a), net(b));
    if x.is_ipv4() == y.is_ipv4() {
        let len = x_len.min(y_len);
        return mask(x, len) == mask(y, len);
    }
    dual_stack(a) || dual_stack(b)
}

/// A binding as `list` and error messages show it: `udp 198.18.0.2:53 from 198.18.0.9:4000`.
fn describe(binding: &Binding) -> String {
    let mut text = format!("{} {}", binding.protocol, binding.local);
    if let Some(remote) = binding.remote {
        text += &format!(" connected to {remote}");
    }
    if binding.v6only {
        text += " v6only";
    }
    text
}

/// The cookie of the daemon's network namespace; 0 where the kernel has none (before 5.14),
/// and then every backing socket is refused with the kernel's error.
fn own_netns() -> u64 {
    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
        .and_then(|socket| crate::sys::socket::netns_cookie(&socket))
        .unwrap_or(0)
}

/// The ring memory a sink takes, as the limits count it: slots × slot size (the 256-byte
/// header aside); 0 for other sinks.
fn ring_bytes(to: &SinkSpec) -> u64 {
    match to {
        SinkSpec::Ring { slots } => u64::from(*slots) * u64::from(DEFAULT_SLOT_SIZE),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    //! One test per rule of the daemon, over the in-memory dataplane (no root, no kernel). The
    //! dataplane also checks after every write that no binding is without its port bit and no
    //! binding points at an empty group; [`consistent`] asserts it kept both.

    use std::{sync::Mutex, thread, time::Duration};

    use super::*;
    use crate::{
        binding::Protocol,
        control::ErrorCode,
        dataplane::memory::{Event, MemoryDataplane, Op},
        tables::TableError,
    };

    const ALICE: Caller = Caller {
        uid: 1000,
        connection: 1,
    };
    const BOB: Caller = Caller {
        uid: 1001,
        connection: 2,
    };
    const ROOT: Caller = Caller {
        uid: 0,
        connection: 3,
    };

    fn state() -> State<MemoryDataplane> {
        State::new(MemoryDataplane::default(), Limits::default())
    }

    /// As [`state`], with other limits.
    fn limited(limits: Limits) -> State<MemoryDataplane> {
        State::new(MemoryDataplane::default(), limits)
    }

    /// A UDP endpoint on `local`, counting only.
    fn request(local: &str) -> BindRequest {
        BindRequest::udp(local, SinkSpec::Count)
    }

    /// A member of group `name` on `local`.
    fn member(local: &str, name: &str) -> BindRequest {
        BindRequest {
            group: Some(name.into()),
            ..request(local)
        }
    }

    /// The table entry of a binding on `local` (whoever receives it).
    fn entry(local: &str) -> Entry {
        let binding = request(local).binding().expect("a valid binding");
        binding
            .encode(Receiver::Endpoint(1))
            .expect("an encodable binding")
            .0
    }

    fn bind(state: &mut State<MemoryDataplane>, request: BindRequest, caller: Caller) -> u32 {
        state.bind(request, caller).expect("bind").0
    }

    fn refuse(
        state: &mut State<MemoryDataplane>,
        request: BindRequest,
        caller: Caller,
    ) -> ControlError {
        match state.bind(request, caller) {
            Ok((id, _)) => panic!("bound as endpoint {id}, expected a refusal"),
            Err(error) => error,
        }
    }

    /// The promises to the program held after every write, and the directory, the records, the
    /// view and the tables agree on which endpoints exist.
    fn consistent(state: &State<MemoryDataplane>) {
        assert!(
            state.dataplane.violations().is_empty(),
            "{:?}",
            state.dataplane.violations()
        );
        let directory: Vec<u32> = state.directory.read().ids().collect();
        let records: Vec<u32> = state.endpoints.keys().copied().collect();
        let listed: Vec<u32> = state.view.list().iter().map(|e| e.id).collect();
        assert_eq!(directory, records);
        assert_eq!(listed, records);
        assert_eq!(state.dataplane.len(), state.holders.len());
    }

    /// Nothing at all: no endpoint anywhere, no binding, no port bit.
    fn empty(state: &State<MemoryDataplane>) {
        consistent(state);
        assert!(state.endpoints.is_empty() && state.holders.is_empty());
        assert!(state.dataplane.is_empty() && !state.dataplane.any_port_bits());
        assert!(state.groups.is_empty());
    }

    #[test]
    fn a_caller_passes_its_pcap_and_unix_sinks_the_daemon_opens_no_path_for_it() {
        let mut state = state();
        let dir = std::env::temp_dir().join(format!("demux-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.pcap");
        for to in [SinkSpec::Pcap(path.clone()), SinkSpec::Unix(dir.join("s"))] {
            let error = refuse(
                &mut state,
                BindRequest {
                    to,
                    ..request("198.18.0.2:5353")
                },
                ALICE,
            );
            assert_eq!(error.code(), ErrorCode::InvalidArgument, "{error}");
            assert!(error.to_string().contains("opens no path"), "{error}");
            empty(&state);
        }
        assert!(!path.exists(), "the daemon created the caller's file");
        // What the caller opened and passed is taken.
        let file = std::fs::File::create(&path).unwrap();
        let (id, _) = state
            .bind_passed(
                BindRequest {
                    to: SinkSpec::Pcap(path),
                    ..request("198.18.0.2:5353")
                },
                ALICE,
                Passed {
                    backing: None,
                    sink: Some(CallerSink {
                        fd: file.into(),
                        creds: crate::sys::scm::Credentials {
                            pid: 1,
                            uid: ALICE.uid,
                            gid: ALICE.uid,
                        },
                    }),
                },
            )
            .expect("bind");
        assert_eq!(state.list()[0].id, id);
        consistent(&state);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_claim_of_a_binding_is_refused_naming_the_holder() {
        let mut state = state();
        let id = bind(&mut state, request("198.18.0.2:5353"), ALICE);
        // Her own second claim: another uid's is refused earlier, as an overlap.
        for claim in [request("198.18.0.2:5353"), member("198.18.0.2:5353", "g")] {
            let error = refuse(&mut state, claim, ALICE);
            assert!(
                matches!(&error, ControlError::InUse { holder } if *holder == format!("endpoint {id}")),
                "{error}"
            );
            assert_eq!(error.code(), ErrorCode::AddressInUse);
        }
        assert_eq!(state.endpoints.len(), 1);
        assert!(state.groups.is_empty(), "the refused group is not kept");
        consistent(&state);
    }

    #[test]
    fn a_binding_held_by_a_group_is_refused_naming_the_group() {
        let mut state = state();
        bind(&mut state, member("198.18.0.2:5353", "mdns"), ALICE);
        let error = refuse(&mut state, request("198.18.0.2:5353"), ALICE);
        assert!(
            matches!(&error, ControlError::InUse { holder } if holder == "group mdns"),
            "{error}"
        );
        consistent(&state);
    }

    #[test]
    fn members_join_their_group_on_its_address_only() {
        let mut state = state();
        let first = bind(&mut state, member("198.18.0.2:5000", "g"), ALICE);
        let error = refuse(&mut state, member("198.18.0.2:5001", "g"), ALICE);
        assert!(
            matches!(error, ControlError::GroupAddress { .. }),
            "{error}"
        );
        assert_eq!(error.code(), ErrorCode::InvalidArgument);
        let second = bind(&mut state, member("198.18.0.2:5000", "g"), ALICE);
        let group = &state.groups["g"];
        assert_eq!(group.members, [first, second]);
        assert_eq!(state.dataplane.members(group.id), [first, second]);
        consistent(&state);
    }

    #[test]
    fn a_group_binding_goes_with_its_last_member_and_not_before() {
        let mut state = state();
        let local = "198.18.0.2:5000";
        let ids: Vec<u32> = (0..3)
            .map(|_| bind(&mut state, member(local, "g"), ALICE))
            .collect();
        let gid = state.groups["g"].id;
        let target = state.dataplane.target(&entry(local)).expect("bound");
        assert_eq!(
            (target.id, target.flags & 1),
            (gid, 1),
            "the group receives"
        );
        for (left, id) in ids.iter().enumerate().take(2) {
            state.close(*id, ALICE).expect("close");
            assert!(
                state.dataplane.target(&entry(local)).is_some(),
                "still bound with {} members left",
                2 - left
            );
            assert_eq!(state.dataplane.members(gid), &ids[left + 1..]);
        }
        state.close(ids[2], ALICE).expect("close the last");
        assert!(state.dataplane.target(&entry(local)).is_none());
        assert!(state.dataplane.members(gid).is_empty());
        empty(&state);
    }

    #[test]
    fn a_group_binding_never_points_at_an_empty_group() {
        let mut state = state();
        let id = bind(&mut state, member("198.18.0.2:5000", "g"), ALICE);
        let events = state.dataplane.events();
        let members_set = events
            .iter()
            .position(|e| matches!(e, Event::SetGroup { members, .. } if members == &[id]));
        let inserted = events.iter().position(|e| matches!(e, Event::Insert(..)));
        assert!(
            members_set < inserted && members_set.is_some(),
            "members before the binding: {events:?}"
        );
        state.close(id, ALICE).expect("close");
        let events = state.dataplane.events();
        let removed = events.iter().rposition(|e| matches!(e, Event::Remove(_)));
        let emptied = events
            .iter()
            .rposition(|e| matches!(e, Event::SetGroup { members, .. } if members.is_empty()));
        assert!(
            removed < emptied && removed.is_some(),
            "the binding before the members: {events:?}"
        );
        empty(&state);
    }

    #[test]
    fn group_ids_are_reused_once_their_group_is_gone() {
        let mut state = state();
        let a = bind(&mut state, member("198.18.0.2:5000", "a"), ALICE);
        bind(&mut state, member("198.18.0.2:5001", "b"), ALICE);
        assert_eq!((state.groups["a"].id, state.groups["b"].id), (0, 1));
        state.close(a, ALICE).expect("close");
        bind(&mut state, member("198.18.0.2:5002", "c"), ALICE);
        assert_eq!(state.groups["c"].id, 0, "the id of the gone group");
        consistent(&state);
    }

    #[test]
    fn a_refused_group_leaves_no_group_behind() {
        let mut state = state();
        bind(&mut state, request("198.18.0.2:5000"), ALICE);
        refuse(&mut state, member("198.18.0.2:5000", "g"), ALICE);
        assert!(state.groups.is_empty());
        assert!(state.dataplane.members(0).is_empty(), "its members emptied");
        bind(&mut state, member("198.18.0.2:5001", "h"), ALICE);
        assert_eq!(state.groups["h"].id, 0, "its id is free again");
        consistent(&state);
    }

    #[test]
    fn a_failed_insert_leaves_everything_as_before() {
        let mut state = state();
        let held = bind(&mut state, request("198.18.0.2:5000"), ALICE);
        let before = state.dataplane.len();
        state.dataplane.fail(Op::Insert, 0);
        let error = refuse(&mut state, request("198.18.0.2:5001"), ALICE);
        assert!(
            matches!(error, ControlError::Table(TableError::Map { .. })),
            "{error}"
        );
        assert_eq!(error.code(), ErrorCode::Internal);
        assert_eq!(state.endpoints.keys().copied().collect::<Vec<_>>(), [held]);
        assert_eq!(state.dataplane.len(), before);
        assert_eq!(
            state.dataplane.bits(
                entry("198.18.0.2:5001")
                    .port_slot()
                    .expect("a bound binding has a bit")
                    .0
            ),
            0,
            "the new port's bit is cleared again"
        );
        assert_eq!(
            bind(&mut state, request("198.18.0.2:5001"), ALICE),
            held + 1,
            "the id was not used up"
        );
        consistent(&state);
    }

    #[test]
    fn a_full_table_is_refused_and_rolled_back() {
        let mut state = State::new(MemoryDataplane::with_capacity(1), Limits::default());
        bind(&mut state, request("198.18.0.2:5000"), ALICE);
        let error = refuse(&mut state, request("198.18.0.2:5001"), ALICE);
        assert!(
            matches!(
                error,
                ControlError::Table(TableError::Full { table: "BOUND" })
            ),
            "{error}"
        );
        assert_eq!(error.code(), ErrorCode::LimitReached);
        assert_eq!(state.endpoints.len(), 1);
        consistent(&state);
    }

    #[test]
    fn a_failed_member_update_leaves_the_group_as_it_was() {
        let mut state = state();
        let first = bind(&mut state, member("198.18.0.2:5000", "g"), ALICE);
        state.dataplane.fail(Op::SetGroup, 0);
        refuse(&mut state, member("198.18.0.2:5000", "g"), ALICE);
        assert_eq!(state.groups["g"].members, [first]);
        assert_eq!(state.dataplane.members(state.groups["g"].id), [first]);
        consistent(&state);
    }

    #[test]
    fn a_failed_first_member_write_binds_nothing() {
        let mut state = state();
        state.dataplane.fail(Op::SetGroup, 0);
        refuse(&mut state, member("198.18.0.2:5000", "g"), ALICE);
        empty(&state);
    }

    #[test]
    fn a_failed_counter_reset_binds_nothing() {
        let mut state = state();
        state.dataplane.fail(Op::ResetStats, 0);
        let error = refuse(&mut state, request("198.18.0.2:5000"), ALICE);
        assert!(matches!(error, ControlError::Statistics(_)), "{error}");
        assert_eq!(error.code(), ErrorCode::Internal);
        empty(&state);
    }

    #[test]
    fn a_reused_id_starts_from_zeroed_counters() {
        let mut state = state();
        let id = bind(&mut state, request("198.18.0.2:5000"), ALICE);
        state.dataplane.memory_counters().redirect(id, 3, 300);
        assert_eq!(state.list()[0].redirected, 3);
        state.close(id, ALICE).expect("close");
        state.next_endpoint = id;
        assert_eq!(bind(&mut state, request("198.18.0.2:5000"), ALICE), id);
        assert_eq!(state.list()[0].redirected, 0);
    }

    #[test]
    fn only_the_owner_or_root_may_close() {
        let mut state = state();
        let id = bind(&mut state, request("198.18.0.2:5000"), ALICE);
        let error = state.close(id, BOB).expect_err("bob does not own it");
        assert!(
            matches!(error, ControlError::NotOwner { owner: 1000, .. }),
            "{error}"
        );
        assert_eq!(error.code(), ErrorCode::PermissionDenied);
        assert!(state.dataplane.target(&entry("198.18.0.2:5000")).is_some());
        state.close(id, ROOT).expect("root may");
        let id = bind(&mut state, request("198.18.0.2:5000"), ALICE);
        state.close(id, ALICE).expect("the owner may");
        let error = state.close(id, ALICE).expect_err("gone");
        assert_eq!(error.code(), ErrorCode::NotFound);
        empty(&state);
    }

    #[test]
    fn a_user_lists_only_their_own_endpoints_and_root_lists_all() {
        let mut state = state();
        let alice = bind(&mut state, request("198.18.0.2:5000"), ALICE);
        let bob = bind(&mut state, request("198.18.0.2:5001"), BOB);
        let ids = |response: Response| -> Vec<u32> {
            match response {
                Response::Endpoints { endpoints } => endpoints.iter().map(|e| e.id).collect(),
                Response::Stats(stats) => stats.endpoints.iter().map(|e| e.id).collect(),
                other => panic!("unexpected {other:?}"),
            }
        };
        for request in [Request::List, Request::Stats] {
            assert_eq!(ids(state.handle(request.clone(), ALICE).0), [alice]);
            assert_eq!(ids(state.handle(request.clone(), BOB).0), [bob]);
            assert_eq!(ids(state.handle(request, ROOT).0), [alice, bob]);
        }
    }

    #[test]
    fn ports_below_1024_are_for_root_only() {
        let mut state = state();
        for local in [
            "198.18.0.2:53",
            "198.18.0.2:1023",
            "198.18.0.0/15:*",
            "[::]:1",
        ] {
            let error = refuse(&mut state, request(local), ALICE);
            assert!(
                matches!(error, ControlError::PrivilegedPort { .. }),
                "{local}: {error}"
            );
            assert_eq!(error.code(), ErrorCode::PermissionDenied);
        }
        empty(&state);
        bind(&mut state, request("198.18.0.2:1024"), ALICE);
        bind(&mut state, request("198.18.0.2:53"), ROOT);
        bind(&mut state, request("198.18.0.0/15:*"), ROOT);
        consistent(&state);
    }

    #[test]
    fn endpoint_ids_count_up_skip_taken_ones_and_wrap() {
        let mut state = state();
        let port = |n: u32| format!("198.18.0.2:{}", 5000 + n);
        assert_eq!(bind(&mut state, request(&port(0)), ALICE), 1);
        assert_eq!(bind(&mut state, request(&port(1)), ALICE), 2);
        state.next_endpoint = MAX_ENDPOINTS - 1;
        assert_eq!(
            bind(&mut state, request(&port(2)), ALICE),
            MAX_ENDPOINTS - 1
        );
        assert_eq!(
            bind(&mut state, request(&port(3)), ALICE),
            3,
            "wrapped past the top, skipping 1 and 2"
        );
        state.close(1, ALICE).expect("close");
        assert_eq!(
            bind(&mut state, request(&port(4)), ALICE),
            4,
            "counts on first"
        );
        consistent(&state);
    }

    #[test]
    fn with_every_id_taken_a_bind_is_refused() {
        let mut state = state();
        // Root's, so that alice is under her own limit.
        let placeholder = Endpoint {
            request: request("198.18.0.2:5000"),
            owner: ROOT.uid,
            connection: ROOT.connection,
            placement: Placement::Member("placeholder".into()),
            backing: None,
            waiting: None,
        };
        for id in 1..MAX_ENDPOINTS {
            state.endpoints.insert(
                id,
                Endpoint {
                    request: placeholder.request.clone(),
                    placement: Placement::Member("placeholder".into()),
                    backing: None,
                    ..placeholder
                },
            );
        }
        let error = refuse(&mut state, request("198.18.0.2:6000"), ALICE);
        assert!(
            matches!(error, ControlError::NoDescriptor { .. }),
            "{error}"
        );
        assert_eq!(error.code(), ErrorCode::LimitReached);
        assert!(state.dataplane.is_empty());
    }

    /// `local` as a connected binding to `remote`.
    fn connected(local: &str, remote: &str) -> BindRequest {
        BindRequest {
            connect: Some(remote.into()),
            ..request(local)
        }
    }

    /// A TCP endpoint on `local`.
    fn tcp(local: &str) -> BindRequest {
        BindRequest {
            protocol: Protocol::Tcp,
            ..request(local)
        }
    }

    /// The IPv6 wildcard on `port`, dual-stack or `v6only`.
    fn v6_wildcard(port: u16, v6only: bool) -> BindRequest {
        BindRequest {
            v6only,
            ..request(&format!("[::]:{port}"))
        }
    }

    /// Asserts that `error` is an overlap with `holder` of uid `owner`, answered
    /// `address_in_use`.
    fn overlap(error: &ControlError, holder: &str, owner: u32) {
        assert!(
            matches!(error, ControlError::Overlap { holder: h, owner: o, .. } if h == holder && *o == owner),
            "{error}"
        );
        assert_eq!(error.code(), ErrorCode::AddressInUse);
        assert!(
            error.to_string().contains(&format!("held by {holder}")),
            "{error}"
        );
    }

    #[test]
    fn another_uids_address_inside_a_wildcard_is_refused_both_ways() {
        let mut state = state();
        let roots = bind(&mut state, request("0.0.0.0:5000"), ROOT);
        let holder = format!("endpoint {roots}");
        for claim in [
            request("198.18.7.2:5000"),
            connected("198.18.7.2:5000", "198.18.0.1:40000"),
            request("0.0.0.0:5000"),
            member("198.18.7.2:5000", "g"),
        ] {
            let error = refuse(&mut state, claim.clone(), BOB);
            overlap(&error, &holder, 0);
            let _ = refuse(&mut state, claim, ALICE);
        }
        // The other way round: root's specific address under alice's wildcard.
        let alices = bind(&mut state, request("0.0.0.0:5001"), ALICE);
        overlap(
            &refuse(&mut state, request("198.18.7.2:5001"), ROOT),
            &format!("endpoint {alices}"),
            1000,
        );
        overlap(
            &refuse(
                &mut state,
                connected("198.18.7.2:5001", "198.18.0.1:1"),
                BOB,
            ),
            &format!("endpoint {alices}"),
            1000,
        );
        assert_eq!(state.endpoints.len(), 2, "the refusals bound nothing");
        assert!(state.groups.is_empty());
        consistent(&state);
    }

    #[test]
    fn connected_bindings_overlap_by_their_local_address() {
        let mut state = state();
        let alices = bind(
            &mut state,
            connected("198.18.7.2:5000", "198.18.0.1:40000"),
            ALICE,
        );
        // Another remote, even: the kernel refuses the bind before the connect.
        for claim in [
            connected("198.18.7.2:5000", "198.18.0.9:40001"),
            request("198.18.7.2:5000"),
            request("0.0.0.0:5000"),
            v6_wildcard(5000, false),
        ] {
            overlap(
                &refuse(&mut state, claim, BOB),
                &format!("endpoint {alices}"),
                1000,
            );
        }
        // Another local address, port or protocol is free to take.
        bind(
            &mut state,
            connected("198.18.7.3:5000", "198.18.0.1:40000"),
            BOB,
        );
        bind(&mut state, request("198.18.7.2:5001"), BOB);
        bind(&mut state, tcp("198.18.7.2:5000"), ROOT);
        consistent(&state);
    }

    #[test]
    fn a_dual_stack_wildcard_overlaps_ipv4_and_a_v6only_one_does_not() {
        let mut state = state();
        let alices = bind(&mut state, request("0.0.0.0:5000"), ALICE);
        overlap(
            &refuse(&mut state, v6_wildcard(5000, false), BOB),
            &format!("endpoint {alices}"),
            1000,
        );
        let bobs = bind(&mut state, v6_wildcard(5000, true), BOB);
        // IPv6 addresses under bob's wildcard are his; IPv4 ones stay alice's.
        overlap(
            &refuse(&mut state, request("[2001:2::1]:5000"), ALICE),
            &format!("endpoint {bobs}"),
            1001,
        );
        // A dual-stack wildcard held first keeps IPv4 bindings of others out.
        let dual = bind(&mut state, v6_wildcard(5001, false), BOB);
        for claim in ["198.18.7.2:5001", "0.0.0.0:5001"] {
            overlap(
                &refuse(&mut state, request(claim), ALICE),
                &format!("endpoint {dual}"),
                1001,
            );
        }
        consistent(&state);
    }

    #[test]
    fn one_owner_may_hold_a_wildcard_and_addresses_inside_it() {
        let mut state = state();
        // On one connection and on two, the uid is what counts.
        bind(&mut state, request("0.0.0.0:5000"), ALICE);
        bind(&mut state, request("198.18.0.2:5000"), ALICE);
        bind(&mut state, request("198.18.0.3:5000"), ALICE_AGAIN);
        bind(
            &mut state,
            connected("198.18.0.2:5000", "198.18.0.1:40000"),
            ALICE_AGAIN,
        );
        bind(&mut state, v6_wildcard(5000, false), ALICE);
        bind(&mut state, member("198.18.0.4:5000", "g"), ALICE);
        bind(&mut state, member("198.18.0.4:5000", "g"), ALICE_AGAIN);
        // Someone else's port next to it is theirs.
        bind(&mut state, request("198.18.0.2:5001"), BOB);
        consistent(&state);
    }

    #[test]
    fn a_group_takes_members_of_one_uid_only() {
        let mut state = state();
        bind(&mut state, member("198.18.0.2:5000", "g"), ALICE);
        for caller in [BOB, ROOT] {
            let error = refuse(&mut state, member("198.18.0.2:5000", "g"), caller);
            assert!(
                matches!(&error, ControlError::GroupOwner { name, owner: 1000 } if name == "g"),
                "{error}"
            );
            assert_eq!(error.code(), ErrorCode::AddressInUse);
        }
        assert_eq!(state.groups["g"].members.len(), 1);
        bind(&mut state, member("198.18.0.2:5000", "g"), ALICE_AGAIN);
        assert_eq!(state.groups["g"].members.len(), 2);
        consistent(&state);
    }

    /// Reuseport sockets on 127.0.0.1 and a free port, as a caller binds them.
    fn reuseport_sockets(n: usize) -> (u16, Vec<OwnedFd>) {
        let socket = || {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
                .expect("a UDP socket");
            s.set_reuse_port(true).expect("SO_REUSEPORT");
            s
        };
        let first = socket();
        first
            .bind(
                &"127.0.0.1:0"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .expect("bind");
        let port = first.local_addr().unwrap().as_socket().unwrap().port();
        let mut sockets = vec![OwnedFd::from(first)];
        for _ in 1..n {
            let s = socket();
            s.bind(
                &format!("127.0.0.1:{port}")
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .expect("bind to the group's port");
            sockets.push(OwnedFd::from(s));
        }
        (port, sockets)
    }

    /// Member `i` of a reuseport group of backed endpoints is in slot `i` (what the reuseport
    /// program selects), its cookie names the group, and the program is attached through each
    /// joining socket; when a member leaves, the places that moved are rewritten (emptied
    /// first: the kernel keeps a socket in one slot), and the last one out detaches.
    #[test]
    fn reuseport_slots_follow_the_member_order() {
        use std::os::fd::AsRawFd as _;
        let mut state = state();
        let (port, sockets) = reuseport_sockets(3);
        let local = format!("127.0.0.1:{port}");
        let fds: Vec<i32> = sockets.iter().map(|s| s.as_raw_fd()).collect();
        let cookies: Vec<u64> = sockets
            .iter()
            .map(|s| crate::sys::socket::cookie(s).expect("SO_COOKIE"))
            .collect();
        let mut ids = Vec::new();
        for socket in sockets {
            let passed = Passed {
                backing: Some(socket),
                sink: None,
            };
            let request = BindRequest {
                backed: true,
                ..request(&local)
            };
            ids.push(state.bind_passed(request, ALICE, passed).expect("bind").0);
        }
        let gid = state.groups.values().next().expect("one group").id;
        let slots = |state: &State<MemoryDataplane>| -> Vec<(u32, i32)> {
            state
                .dataplane
                .reuseport_sockets()
                .iter()
                .map(|(slot, fd)| (*slot, *fd))
                .collect()
        };
        let slot = |i| reuseport_slot(gid, i);
        assert_eq!(
            slots(&state),
            [(slot(0), fds[0]), (slot(1), fds[1]), (slot(2), fds[2])]
        );
        for cookie in &cookies {
            assert_eq!(state.dataplane.reuseport_cookies().get(cookie), Some(&gid));
        }
        let attached = |state: &State<MemoryDataplane>| {
            state
                .dataplane
                .events()
                .iter()
                .filter(|e| matches!(e, Event::AttachReuseport(_)))
                .count()
        };
        assert_eq!(attached(&state), 3);

        // The first member leaves: the others move up one place each.
        state.close(ids[0], ALICE).expect("close");
        assert_eq!(state.dataplane.members(gid), &ids[1..]);
        assert_eq!(slots(&state), [(slot(0), fds[1]), (slot(1), fds[2])]);
        assert!(!state
            .dataplane
            .reuseport_cookies()
            .contains_key(&cookies[0]));
        consistent(&state);

        state.close(ids[2], ALICE).expect("close");
        state.close(ids[1], ALICE).expect("close");
        assert!(slots(&state).is_empty());
        assert!(state.dataplane.reuseport_cookies().is_empty());
        let detached = state
            .dataplane
            .events()
            .iter()
            .filter(|e| matches!(e, Event::DetachReuseport(_)))
            .count();
        assert_eq!(detached, 1, "only the last member out detaches");
        empty(&state);
    }

    /// A failed reuseport write refuses the bind and leaves nothing behind.
    #[test]
    fn a_failed_reuseport_write_binds_nothing() {
        let mut state = state();
        let (port, mut sockets) = reuseport_sockets(1);
        state.dataplane.fail(Op::Reuseport, 1);
        let passed = Passed {
            backing: sockets.pop(),
            sink: None,
        };
        let request = BindRequest {
            backed: true,
            ..request(&format!("127.0.0.1:{port}"))
        };
        let Err(error) = state.bind_passed(request, ALICE, passed) else {
            panic!("bound despite the failed write");
        };
        assert!(matches!(error, ControlError::Reuseport(_)), "{error}");
        assert!(state.dataplane.reuseport_sockets().is_empty());
        assert!(state.dataplane.reuseport_cookies().is_empty());
        empty(&state);
    }

    #[test]
    fn a_group_past_its_member_limit_is_refused_and_unchanged() {
        let mut state = state();
        let max = demux_common::binding::MAX_GROUP_MEMBERS;
        for _ in 0..max {
            bind(&mut state, member("198.18.0.2:5000", "g"), ROOT);
        }
        let error = refuse(&mut state, member("198.18.0.2:5000", "g"), ROOT);
        assert_eq!(error.code(), ErrorCode::LimitReached, "{error}");
        assert!(error.to_string().contains("members"), "{error}");
        assert_eq!(state.groups["g"].members.len(), max);
        assert_eq!(state.endpoints.len(), max);
        consistent(&state);
    }

    #[test]
    fn prefix_bindings_are_root_only_and_root_s_keep_others_out() {
        let mut state = state();
        bind(&mut state, request("0.0.0.0:5000"), ROOT);
        for local in [
            "198.18.7.2/32:5000",
            "198.18.7.0/24:5000",
            "198.18.7.0/24:6000",
            "[2001:2::]/48:5000",
        ] {
            let error = refuse(&mut state, request(local), ALICE);
            assert!(
                matches!(&error, ControlError::PrefixForRoot { local: l } if l == local),
                "{local}: {error}"
            );
            assert_eq!(error.code(), ErrorCode::PermissionDenied);
            assert!(error.to_string().contains("only root"), "{error}");
        }
        assert_eq!(state.endpoints.len(), 1);
        // Root's prefix takes its ports over, alice's endpoints there included (documented).
        bind(&mut state, request("198.18.8.2:6000"), ALICE);
        let all_ports = bind(&mut state, request("198.18.8.0/24:*"), ROOT);
        let on_port = bind(&mut state, request("198.18.9.0/24:7000"), ROOT);
        // And other uids bind nothing inside it afterwards.
        for (claim, holder) in [
            ("198.18.8.3:6001", all_ports),
            ("0.0.0.0:6002", all_ports),
            ("198.18.9.200:7000", on_port),
        ] {
            overlap(
                &refuse(&mut state, request(claim), ALICE),
                &format!("endpoint {holder}"),
                0,
            );
        }
        bind(&mut state, request("198.18.9.200:7001"), ALICE);
        consistent(&state);
    }

    #[test]
    fn tcp_endpoints_are_root_only() {
        let mut state = state();
        for local in ["198.18.0.2:5000", "0.0.0.0:5000", "[::]:5000"] {
            let error = refuse(&mut state, tcp(local), ALICE);
            assert!(matches!(error, ControlError::TcpForRoot), "{error}");
            assert_eq!(error.code(), ErrorCode::PermissionDenied);
            assert!(error.to_string().contains("TCP stack"), "{error}");
        }
        empty(&state);
        bind(&mut state, tcp("198.18.0.2:5000"), ROOT);
        bind(&mut state, tcp("198.18.0.0/24:*"), ROOT);
        // UDP on the same address and port is alice's to take: another protocol.
        bind(&mut state, request("198.18.0.2:5000"), ALICE);
        consistent(&state);
    }

    /// A picked-up endpoint of alice's on a fresh 127.0.0.1 socket, with id `id`; returns the
    /// socket (what alice's client holds).
    fn restore_alices(state: &mut State<MemoryDataplane>, id: u32) -> std::net::UdpSocket {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
        let local = socket.local_addr().expect("bound").to_string();
        let (ring, _client) = Producer::create(64, DEFAULT_SLOT_SIZE).expect("a ring");
        let picked = Picked {
            stored: crate::daemon::handover::Stored {
                id,
                owner: ALICE.uid,
                request: BindRequest {
                    backed: true,
                    ..BindRequest::udp(local, SinkSpec::Ring { slots: 64 })
                },
                cookie: 0,
                ring_inode: 0,
                slots: 64,
                slot_size: DEFAULT_SLOT_SIZE,
                produced: 0,
            },
            backing: OwnedFd::from(socket.try_clone().expect("a copy")),
            ring,
        };
        assert_eq!(state.restore(picked).expect("restored"), id);
        socket
    }

    /// A picked-up endpoint keeps its id, waits for its client, and is taken up only by its
    /// owner passing its own socket; until then it is nobody's connection's, and one nobody
    /// takes up closes after the grace time.
    #[test]
    fn a_picked_up_endpoint_is_taken_up_only_by_its_owner_with_its_socket() {
        let mut state = state();
        let socket = restore_alices(&mut state, 7);
        let own = || Some(OwnedFd::from(socket.try_clone().expect("a copy")));
        let other = || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
            Some(OwnedFd::from(s))
        };
        assert!(!state.holds_endpoints(ALICE.connection));
        let error = state
            .attach(7, BOB, own())
            .expect_err("bob is not the owner");
        assert!(
            matches!(error, ControlError::AttachOwner { id: 7, owner: 1000 }),
            "{error}"
        );
        let error = state.attach(7, ROOT, own()).expect_err("nor is root");
        assert!(matches!(error, ControlError::AttachOwner { .. }), "{error}");
        let error = state.attach(7, ALICE, other()).expect_err("another socket");
        assert!(
            matches!(error, ControlError::AttachSocket { id: 7 }),
            "{error}"
        );
        assert_eq!(error.code(), ErrorCode::PermissionDenied);
        let error = state.attach(7, ALICE, None).expect_err("no socket");
        assert!(
            matches!(error, ControlError::AttachSocket { .. }),
            "{error}"
        );
        let error = state.attach(8, ALICE, own()).expect_err("no such endpoint");
        assert!(
            matches!(error, ControlError::NotWaiting { id: 8 }),
            "{error}"
        );
        state
            .attach(7, ALICE, own())
            .expect("alice with her socket");
        assert!(state.holds_endpoints(ALICE.connection));
        let error = state.attach(7, ALICE, own()).expect_err("taken up already");
        assert!(matches!(error, ControlError::NotWaiting { .. }), "{error}");
        assert!(state.expire_waiting(std::time::Duration::ZERO).is_empty());
        state.connection_closed(ALICE.connection);
        empty(&state);

        // Nobody comes back: it closes after the grace time, not before.
        let _socket = restore_alices(&mut state, 9);
        assert!(state
            .expire_waiting(std::time::Duration::from_secs(60))
            .is_empty());
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(state.expire_waiting(std::time::Duration::ZERO), [9]);
        empty(&state);
    }

    /// A client library without `attach` binds again with the same socket: the picked-up
    /// endpoint it no longer reads makes room for the new one.
    #[test]
    fn binding_again_with_a_picked_up_endpoints_socket_replaces_it() {
        let mut state = state();
        let socket = restore_alices(&mut state, 7);
        let local = socket.local_addr().expect("bound").to_string();
        let again = BindRequest {
            backed: true,
            ..BindRequest::udp(local, SinkSpec::Ring { slots: 64 })
        };
        let passed = || Passed {
            backing: Some(OwnedFd::from(socket.try_clone().expect("a copy"))),
            sink: None,
        };
        // Bob's bind with it changes nothing of alice's (and the kernel would not let bob
        // hold alice's socket).
        assert!(state.bind_passed(again.clone(), BOB, passed()).is_err());
        assert_eq!(state.endpoints.keys().copied().collect::<Vec<_>>(), [7]);
        let (id, ring) = state
            .bind_passed(again, ALICE, passed())
            .expect("bound again");
        assert!(ring.is_some());
        assert_eq!(state.endpoints.keys().copied().collect::<Vec<_>>(), [id]);
        assert!(state.endpoints[&id].waiting.is_none());
        consistent(&state);
    }

    /// Alice on a second connection: the limits are per uid, not per connection.
    const ALICE_AGAIN: Caller = Caller {
        uid: 1000,
        connection: 4,
    };

    #[test]
    fn a_uid_holds_at_most_its_endpoints_and_closing_frees_one() {
        let mut state = limited(Limits {
            endpoints_per_uid: 2,
            ..Limits::default()
        });
        let port = |n: u16| format!("198.18.0.2:{}", 5000 + n);
        let first = bind(&mut state, request(&port(0)), ALICE);
        // Persistent endpoints and group members count too, whatever the connection.
        let persistent = BindRequest {
            persistent: true,
            ..member(&port(1), "g")
        };
        bind(&mut state, persistent, ALICE_AGAIN);
        for caller in [ALICE, ALICE_AGAIN] {
            let error = refuse(&mut state, request(&port(2)), caller);
            assert!(
                matches!(error, ControlError::EndpointsPerUid { uid: 1000, max: 2 }),
                "{error}"
            );
            assert_eq!(error.code(), ErrorCode::LimitReached);
            assert!(
                error.to_string().contains("limits.endpoints_per_uid"),
                "{error}"
            );
        }
        assert_eq!(state.endpoints.len(), 2, "the refusals bound nothing");
        consistent(&state);
        // Another uid has a count of its own; root has none.
        bind(&mut state, request(&port(3)), BOB);
        bind(&mut state, request(&port(4)), BOB);
        for n in 5..8 {
            bind(&mut state, request(&port(n)), ROOT);
        }
        state.close(first, ALICE).expect("close");
        bind(&mut state, request(&port(2)), ALICE);
        consistent(&state);
    }

    #[test]
    fn a_uids_rings_take_at_most_its_ring_memory() {
        let ring = |port: u16, slots: u32| BindRequest {
            to: SinkSpec::Ring { slots },
            ..request(&format!("198.18.0.2:{port}"))
        };
        let one = 64 * u64::from(DEFAULT_SLOT_SIZE);
        let mut state = limited(Limits {
            ring_bytes_per_uid: 2 * one,
            ..Limits::default()
        });
        let first = bind(&mut state, ring(5000, 64), ALICE);
        bind(&mut state, ring(5001, 64), ALICE_AGAIN);
        let error = refuse(&mut state, ring(5002, 64), ALICE);
        assert!(
            matches!(
                error,
                ControlError::RingBytesPerUid { uid: 1000, asked, held, max }
                    if asked == one && held == 2 * one && max == 2 * one
            ),
            "{error}"
        );
        assert_eq!(error.code(), ErrorCode::LimitReached);
        assert!(
            error.to_string().contains("limits.ring_bytes_per_uid"),
            "{error}"
        );
        // Other sinks take no ring memory; another uid has its own; root has no limit.
        bind(&mut state, request("198.18.0.2:5003"), ALICE);
        bind(&mut state, ring(5004, 128), BOB);
        bind(&mut state, ring(5005, 256), ROOT);
        state.close(first, ALICE).expect("close");
        let error = refuse(&mut state, ring(5002, 128), ALICE);
        assert!(
            matches!(error, ControlError::RingBytesPerUid { held, .. } if held == one),
            "one ring's room is not room for a ring twice its size: {error}"
        );
        bind(&mut state, ring(5002, 64), ALICE);
        consistent(&state);
    }

    #[test]
    fn a_connection_holds_the_endpoints_that_close_with_it() {
        let mut state = state();
        assert!(!state.holds_endpoints(ALICE.connection));
        let persistent = BindRequest {
            persistent: true,
            ..request("198.18.0.2:5000")
        };
        bind(&mut state, persistent, ALICE);
        assert!(
            !state.holds_endpoints(ALICE.connection),
            "a persistent endpoint does not need its connection"
        );
        let id = bind(&mut state, request("198.18.0.2:5001"), ALICE);
        assert!(state.holds_endpoints(ALICE.connection));
        assert!(!state.holds_endpoints(ALICE_AGAIN.connection));
        state.close(id, ROOT).expect("root closes it");
        assert!(!state.holds_endpoints(ALICE.connection));
    }

    #[test]
    fn a_closed_connection_closes_its_endpoints_except_persistent_ones() {
        let mut state = state();
        let gone = bind(&mut state, request("198.18.0.2:5000"), ALICE);
        let kept = bind(
            &mut state,
            BindRequest {
                persistent: true,
                ..request("198.18.0.2:5001")
            },
            ALICE,
        );
        let other = bind(&mut state, request("198.18.0.2:5002"), BOB);
        state.connection_closed(ALICE.connection);
        assert_eq!(
            state.endpoints.keys().copied().collect::<Vec<_>>(),
            [kept, other]
        );
        assert!(!state.endpoints.contains_key(&gone));
        assert!(state.dataplane.target(&entry("198.18.0.2:5000")).is_none());
        consistent(&state);
    }

    #[test]
    fn closed_endpoints_keep_counting_in_the_stats() {
        let mut state = state();
        let id = bind(&mut state, request("198.18.0.2:5000"), ALICE);
        let handle = state
            .directory
            .read()
            .get(id)
            .expect("in the directory")
            .clone();
        handle.delivered.store(5, Relaxed);
        handle.dropped_sink_full.store(2, Relaxed);
        assert_eq!((state.stats().delivered(), state.stats().dropped()), (5, 2));
        state.close(id, ALICE).expect("close");
        let stats = state.stats();
        assert!(stats.endpoints.is_empty());
        assert_eq!((stats.closed_delivered, stats.closed_dropped), (5, 2));
        assert_eq!((stats.delivered(), stats.dropped()), (5, 2));
    }

    #[test]
    fn stats_and_list_are_read_without_the_state_lock() {
        let state = state();
        state
            .dataplane
            .memory_counters()
            .set_verdicts(crate::verdicts::VerdictCounts([
                7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]));
        let view = state.view.clone();
        let state = Mutex::new(state);
        let mut guard = state.lock().expect("state");
        bind(&mut guard, request("198.18.0.2:5000"), ALICE);
        // A bind or close in progress holds the lock: readers must not wait for it.
        let (sender, answers) = std::sync::mpsc::channel();
        let reader = thread::spawn(move || {
            let _ = sender.send((view.stats(), view.list()));
        });
        let (stats, list) = answers
            .recv_timeout(Duration::from_secs(10))
            .expect("the readers did not wait for the state lock");
        assert_eq!((stats.seen(), list.len()), (7, 1));
        drop(guard);
        reader.join().expect("reader");
    }
}
