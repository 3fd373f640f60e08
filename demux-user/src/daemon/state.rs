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

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, PoisonError, RwLock,
    },
};

use demux_common::binding::{Target, MAX_ENDPOINTS, MAX_GROUPS};
use tracing::{info, warn};

use super::view::{Listing, View};
use crate::{
    binding::{Binding, Entry, Local, Receiver},
    control::SinkSpec,
    control::{BindRequest, EndpointInfo, Request, Response, SocketInfo, Stats},
    daemon::error::ControlError,
    dataplane::{maps::Maps, Dataplane},
    ring::ClientFds,
    sink::Sink,
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
}

/// What a queue worker needs of an endpoint: its sink and its delivery counters.
pub struct EndpointHandle {
    pub sink: Sink,
    pub delivered: AtomicU64,
    pub delivered_bytes: AtomicU64,
    pub dropped_sink_full: AtomicU64,
    pub dropped_sink_error: AtomicU64,
}

/// Endpoint id → handle, read by the queue workers for every batch.
pub type Directory = RwLock<HashMap<u32, Arc<EndpointHandle>>>;

/// Drops the workers count that belong to no endpoint.
#[derive(Default)]
pub struct WorkerCounters {
    pub dropped_no_endpoint: AtomicU64,
    pub dropped_bad_metadata: AtomicU64,
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
}

impl<D: Dataplane> State<D> {
    /// No endpoints yet, over `dataplane`.
    pub fn new(dataplane: D) -> Self {
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
        }
    }

    /// Answers one control request; a ring endpoint's descriptors come along for the caller.
    pub fn handle(&mut self, request: Request, caller: Caller) -> (Response, Option<ClientFds>) {
        let mut fds = None;
        let result = match request {
            Request::Bind(bind) => self.bind(bind, caller).map(|(id, ring)| {
                fds = ring;
                Response::Bound { id }
            }),
            Request::Close { id } => self.close(id, caller).map(|()| Response::Closed { id }),
            Request::List => Ok(Response::Endpoints {
                endpoints: self.view.list(),
            }),
            Request::Stats => Ok(Response::Stats(self.view.stats())),
            Request::Hello { .. } => Ok(Response::Hello {
                version: crate::control::VERSION,
                software: crate::control::SOFTWARE.into(),
            }),
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
        let id = self.free_endpoint_id()?;
        // Validate the binding before touching anything.
        let (own_entry, own_target) = binding.encode(Receiver::Endpoint(id))?;
        if matches!(request.to, SinkSpec::Ring { .. })
            && caller.connection == Caller::DAEMON.connection
        {
            return Err(ControlError::RingForDaemon);
        }
        let (sink, ring) = Sink::open(&request.to)?;
        let handle = Arc::new(EndpointHandle {
            sink,
            delivered: AtomicU64::new(0),
            delivered_bytes: AtomicU64::new(0),
            dropped_sink_full: AtomicU64::new(0),
            dropped_sink_error: AtomicU64::new(0),
        });
        self.dataplane.reset_endpoint_stats(id)?;
        self.directory_mut().insert(id, handle.clone());

        let placement = match &request.group {
            None => self
                .claim(own_entry, own_target, format!("endpoint {id}"))
                .map(|()| Placement::Own(own_entry)),
            Some(name) => self
                .join_group(name, &binding, own_entry, id)
                .map(|()| Placement::Member(name.clone())),
        };
        let placement = match placement {
            Ok(placement) => placement,
            Err(error) => {
                self.directory_mut().remove(&id);
                return Err(error);
            }
        };
        info!(id, local = %request.local, to = %request.to, owner = caller.uid, "endpoint bound");
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
            },
        );
        self.next_endpoint = id + 1;
        Ok((id, ring))
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

    fn join_group(
        &mut self,
        name: &str,
        binding: &Binding,
        own_entry: Entry,
        id: u32,
    ) -> Result<(), ControlError> {
        if let Some(group) = self.groups.get_mut(name) {
            let (entry, _) = binding.encode(Receiver::Group(group.id))?;
            if entry != group.entry {
                return Err(ControlError::GroupAddress { name: name.into() });
            }
            let mut members = group.members.clone();
            members.push(id);
            self.dataplane.set_group(group.id, &members)?;
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
        // Members first, so the binding never points at an empty group.
        self.dataplane.set_group(group_id, &[id])?;
        if let Err(error) = self.claim(entry, target, format!("group {name}")) {
            let _ = self.dataplane.set_group(group_id, &[]);
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
            Placement::Member(name) => self.leave_group(name, id),
        };
        self.directory_mut().remove(&id);
        // The worker no longer sees the endpoint: its counters are final.
        self.view.retire(id);
        info!(id, "endpoint closed");
        result
    }

    fn release(&mut self, entry: &Entry) -> Result<(), ControlError> {
        self.holders.remove(entry);
        Ok(self.tables.remove(&mut self.dataplane, entry)?)
    }

    fn leave_group(&mut self, name: &str, id: u32) -> Result<(), ControlError> {
        let Some(group) = self.groups.get_mut(name) else {
            return Ok(());
        };
        group.members.retain(|m| *m != id);
        let (gid, entry, members) = (group.id, group.entry, group.members.clone());
        if members.is_empty() {
            self.groups.remove(name);
            // Binding first, so no packet looks into the emptied group.
            let result = self.release(&entry);
            let _ = self.dataplane.set_group(gid, &[]);
            return result;
        }
        Ok(self.dataplane.set_group(gid, &members)?)
    }

    /// Closes the endpoints a connection created, except persistent ones.
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

    /// Shows the statistics of one more AF_XDP socket.
    pub fn add_socket(&self, cell: Arc<std::sync::Mutex<SocketInfo>>) {
        self.view.add_socket(cell);
    }

    fn directory_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u32, Arc<EndpointHandle>>> {
        self.directory
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
