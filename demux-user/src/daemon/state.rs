//! The daemon's endpoints, groups and bindings, and the rules of who may do what.
//!
//! Every change keeps three things in step: the BPF tables (through `Tables`), the directory the
//! queue workers read (endpoint id → sink), and the records here. The directory learns of an
//! endpoint before its binding reaches the tables and forgets it after, so a steered frame
//! always finds its sink, save for frames already in flight when an endpoint closes (counted as
//! `dropped_no_endpoint`).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, RwLock,
    },
};

use demux_common::{binding::MAX_ENDPOINTS, Verdict};
use tracing::{info, warn};

use crate::{
    binding::{Binding, Entry, Local, Receiver},
    control::SinkSpec,
    control::{BindRequest, EndpointInfo, Request, Response, SocketInfo, Stats},
    daemon::error::ControlError,
    endpoint_stats,
    program::Loaded,
    ring::ClientFds,
    sink::Sink,
    tables::Tables,
    verdicts::VerdictCounts,
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
    fn dropped(&self) -> u64 {
        self.dropped_sink_full.load(Relaxed) + self.dropped_sink_error.load(Relaxed)
    }
}

/// The latest XDP_STATISTICS of each AF_XDP socket, written by its worker.
pub type SocketCells = Vec<Arc<std::sync::Mutex<SocketInfo>>>;

struct Endpoint {
    request: BindRequest,
    owner: u32,
    connection: u64,
    handle: Arc<EndpointHandle>,
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

pub struct State {
    loaded: Loaded,
    tables: Tables,
    endpoints: BTreeMap<u32, Endpoint>,
    groups: HashMap<String, Group>,
    /// Which endpoint (or group) holds each table entry.
    holders: HashMap<Entry, String>,
    next_endpoint: u32,
    /// Delivered and dropped by endpoints closed by now.
    closed_delivered: u64,
    closed_dropped: u64,
    pub directory: Arc<Directory>,
    pub workers: Arc<WorkerCounters>,
    pub sockets: SocketCells,
}

impl State {
    pub fn new(loaded: Loaded, sockets: SocketCells) -> Self {
        Self {
            loaded,
            tables: Tables::default(),
            endpoints: BTreeMap::new(),
            groups: HashMap::new(),
            holders: HashMap::new(),
            next_endpoint: 1,
            closed_delivered: 0,
            closed_dropped: 0,
            directory: Arc::default(),
            workers: Arc::default(),
            sockets,
        }
    }

    pub fn loaded_mut(&mut self) -> &mut Loaded {
        &mut self.loaded
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
                endpoints: self.list(),
            }),
            Request::Stats => Ok(Response::Stats(self.stats())),
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
        endpoint_stats::reset(self.loaded.ebpf_mut(), id)
            .map_err(|e| ControlError::Statistics(e.to_string()))?;
        self.directory
            .write()
            .expect("directory lock")
            .insert(id, handle.clone());

        let placement = match &request.group {
            None => self
                .claim(own_entry, own_target, format!("endpoint {id}"))
                .map(|()| Placement::Own(own_entry)),
            Some(name) => self
                .join_group(name, &binding, own_entry, id)
                .map(|()| Placement::Member(name.clone())),
        };
        if let Err(error) = placement {
            self.directory.write().expect("directory lock").remove(&id);
            return Err(error);
        }
        info!(id, local = %request.local, to = %request.to, owner = caller.uid, "endpoint bound");
        self.endpoints.insert(
            id,
            Endpoint {
                request,
                owner: caller.uid,
                connection: caller.connection,
                handle,
                placement: placement.expect("checked"),
            },
        );
        self.next_endpoint = id + 1;
        Ok((id, ring))
    }

    /// Inserts `entry` for `holder`, or says who holds it already.
    fn claim(
        &mut self,
        entry: Entry,
        target: demux_common::binding::Target,
        holder: String,
    ) -> Result<(), ControlError> {
        if let Some(current) = self.holders.get(&entry) {
            return Err(ControlError::InUse {
                holder: current.clone(),
            });
        }
        self.tables.insert(self.loaded.ebpf_mut(), &entry, target)?;
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
            crate::tables::set_group(self.loaded.ebpf_mut(), group.id, &members)?;
            group.members = members;
            return Ok(());
        }
        let group_id = (0..demux_common::binding::MAX_GROUPS)
            .find(|gid| self.groups.values().all(|g| g.id != *gid))
            .ok_or(ControlError::NoGroup)?;
        let (entry, target) = binding.encode(Receiver::Group(group_id))?;
        debug_assert_eq!(
            std::mem::discriminant(&entry),
            std::mem::discriminant(&own_entry)
        );
        // Members first, so the binding never points at an empty group.
        crate::tables::set_group(self.loaded.ebpf_mut(), group_id, &[id])?;
        if let Err(error) = self.claim(entry, target, format!("group {name}")) {
            let _ = crate::tables::set_group(self.loaded.ebpf_mut(), group_id, &[]);
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
        let endpoint = self
            .endpoints
            .get(&id)
            .ok_or(ControlError::NoEndpoint { id })?;
        if caller.uid != 0 && caller.uid != endpoint.owner {
            return Err(ControlError::NotOwner {
                id,
                owner: endpoint.owner,
            });
        }
        let endpoint = self.endpoints.remove(&id).expect("checked");
        let result = match &endpoint.placement {
            Placement::Own(entry) => self.release(entry),
            Placement::Member(name) => self.leave_group(name, id),
        };
        self.directory.write().expect("directory lock").remove(&id);
        // The worker no longer sees the endpoint: its counters are final.
        self.closed_delivered += endpoint.handle.delivered.load(Relaxed);
        self.closed_dropped += endpoint.handle.dropped();
        info!(id, "endpoint closed");
        result
    }

    fn release(&mut self, entry: &Entry) -> Result<(), ControlError> {
        self.holders.remove(entry);
        Ok(self.tables.remove(self.loaded.ebpf_mut(), entry)?)
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
            let _ = crate::tables::set_group(self.loaded.ebpf_mut(), gid, &[]);
            return result;
        }
        Ok(crate::tables::set_group(
            self.loaded.ebpf_mut(),
            gid,
            &members,
        )?)
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

    pub fn list(&self) -> Vec<EndpointInfo> {
        self.endpoints
            .iter()
            .map(|(id, e)| {
                let redirected = endpoint_stats::read(self.loaded.ebpf(), *id)
                    .map(|s| s.packets)
                    .unwrap_or(0);
                EndpointInfo {
                    id: *id,
                    protocol: e.request.protocol,
                    local: e.request.local.clone(),
                    connect: e.request.connect.clone(),
                    group: e.request.group.clone(),
                    v6only: e.request.v6only,
                    sink: e.request.to.clone(),
                    owner: e.owner,
                    persistent: e.request.persistent,
                    redirected,
                    delivered: e.handle.delivered.load(Relaxed),
                    delivered_bytes: e.handle.delivered_bytes.load(Relaxed),
                    dropped_sink_full: e.handle.dropped_sink_full.load(Relaxed),
                    dropped_sink_error: e.handle.dropped_sink_error.load(Relaxed),
                }
            })
            .collect()
    }

    pub fn stats(&self) -> Stats {
        let verdicts = VerdictCounts::read(self.loaded.ebpf()).unwrap_or_default();
        Stats {
            verdicts: Verdict::ALL
                .iter()
                .map(|v| (v.name().to_owned(), verdicts.get(*v)))
                .collect(),
            endpoints: self.list(),
            sockets: self
                .sockets
                .iter()
                .map(|cell| cell.lock().expect("socket cell").clone())
                .collect(),
            dropped_no_endpoint: self.workers.dropped_no_endpoint.load(Relaxed),
            dropped_bad_metadata: self.workers.dropped_bad_metadata.load(Relaxed),
            closed_delivered: self.closed_delivered,
            closed_dropped: self.closed_dropped,
        }
    }
}
