//! The daemon's endpoints, groups and bindings, and the rules of who may do what.
//!
//! Every change keeps three things in step: the BPF tables (through `Tables`), the directory the
//! queue workers read (endpoint id → sink), and the records here. The directory learns of an
//! endpoint before its binding reaches the tables and forgets it after, so a steered frame
//! always finds its sink, save for frames already in flight when an endpoint closes (counted as
//! `dropped_no_endpoint`).

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, RwLock,
    },
};

use demux_common::{binding::MAX_ENDPOINTS, Verdict};
use tracing::{info, warn};

use crate::{
    binding::{Binding, Entry, Local, Receiver},
    control::{BindRequest, EndpointInfo, Request, Response, SocketInfo, Stats},
    endpoint_stats,
    program::Loaded,
    ring::ClientFds,
    sink::{Sink, SinkSpec},
    tables::{TableError, Tables},
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
        };
        (
            result.unwrap_or_else(|message| Response::Error { message }),
            fds,
        )
    }

    /// Creates an endpoint; returns its descriptor, and for a ring sink the client's end.
    pub fn bind(
        &mut self,
        request: BindRequest,
        caller: Caller,
    ) -> Result<(u32, Option<ClientFds>), String> {
        let local: Local = request.local.parse()?;
        let remote = match &request.connect {
            None => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                format!("connect: `{text}` is not a socket address; write ADDR:PORT or [ADDR]:PORT")
            })?),
        };
        let binding = Binding {
            protocol: request.protocol,
            local,
            remote,
            v6only: request.v6only,
        };
        let privileged_port = match local {
            Local::Addr(addr) => addr.port() < 1024,
            Local::Prefix { port, .. } => port.is_none_or(|p| p < 1024),
        };
        if caller.uid != 0 && privileged_port {
            return Err(format!(
                "local port: {} includes ports below 1024, which only root may bind",
                request.local
            ));
        }
        let id = self.free_endpoint_id()?;
        // Validate the binding before touching anything.
        let (own_entry, own_target) = binding
            .encode(Receiver::Endpoint(id))
            .map_err(|e| e.to_string())?;
        if matches!(request.to, SinkSpec::Ring { .. })
            && caller.connection == Caller::DAEMON.connection
        {
            return Err(
                "to: a ring goes to the client that binds over the control socket; \
                        configured endpoints use unix:PATH, count or pcap:PATH"
                    .into(),
            );
        }
        let (sink, ring) = Sink::open(&request.to).map_err(|e| e.to_string())?;
        let handle = Arc::new(EndpointHandle {
            sink,
            delivered: AtomicU64::new(0),
            delivered_bytes: AtomicU64::new(0),
            dropped_sink_full: AtomicU64::new(0),
            dropped_sink_error: AtomicU64::new(0),
        });
        endpoint_stats::reset(self.loaded.ebpf_mut(), id)
            .map_err(|e| format!("endpoint statistics: {e}"))?;
        self.directory
            .write()
            .expect("directory lock")
            .insert(id, handle.clone());

        let placement = match &request.group {
            None => self
                .claim(own_entry, own_target, id.to_string())
                .map(|()| Placement::Own(own_entry)),
            Some(name) => self
                .join_group(name, &binding, own_entry, id)
                .map(|()| Placement::Member(name.clone())),
        };
        if let Err(message) = placement {
            self.directory.write().expect("directory lock").remove(&id);
            return Err(message);
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
    ) -> Result<(), String> {
        if let Some(current) = self.holders.get(&entry) {
            return Err(format!(
                "address in use (EADDRINUSE): the binding is held by endpoint {current}"
            ));
        }
        self.tables
            .insert(self.loaded.ebpf_mut(), &entry, target)
            .map_err(|e| match e {
                TableError::Exists { .. } => "address in use (EADDRINUSE)".to_owned(),
                e => e.to_string(),
            })?;
        self.holders.insert(entry, holder);
        Ok(())
    }

    fn join_group(
        &mut self,
        name: &str,
        binding: &Binding,
        own_entry: Entry,
        id: u32,
    ) -> Result<(), String> {
        if let Some(group) = self.groups.get_mut(name) {
            let (entry, _) = binding
                .encode(Receiver::Group(group.id))
                .map_err(|e| e.to_string())?;
            if entry != group.entry {
                return Err(format!(
                    "group: `{name}` is bound to another address; members must bind the same one"
                ));
            }
            let mut members = group.members.clone();
            members.push(id);
            crate::tables::set_group(self.loaded.ebpf_mut(), group.id, &members)
                .map_err(|e| e.to_string())?;
            group.members = members;
            return Ok(());
        }
        let group_id = (0..demux_common::binding::MAX_GROUPS)
            .find(|gid| self.groups.values().all(|g| g.id != *gid))
            .ok_or("group: every group id is in use; close groups first")?;
        let (entry, target) = binding
            .encode(Receiver::Group(group_id))
            .map_err(|e| e.to_string())?;
        debug_assert_eq!(
            std::mem::discriminant(&entry),
            std::mem::discriminant(&own_entry)
        );
        // Members first, so the binding never points at an empty group.
        crate::tables::set_group(self.loaded.ebpf_mut(), group_id, &[id])
            .map_err(|e| e.to_string())?;
        if let Err(message) = self.claim(entry, target, format!("group {name}")) {
            let _ = crate::tables::set_group(self.loaded.ebpf_mut(), group_id, &[]);
            return Err(message);
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
    pub fn close(&mut self, id: u32, caller: Caller) -> Result<(), String> {
        let endpoint = self
            .endpoints
            .get(&id)
            .ok_or_else(|| format!("endpoint {id} does not exist (see `demux list`)"))?;
        if caller.uid != 0 && caller.uid != endpoint.owner {
            return Err(format!(
                "endpoint {id} belongs to uid {}; only its owner or root may close it",
                endpoint.owner
            ));
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

    fn release(&mut self, entry: &Entry) -> Result<(), String> {
        self.holders.remove(entry);
        self.tables
            .remove(self.loaded.ebpf_mut(), entry)
            .map_err(|e| e.to_string())
    }

    fn leave_group(&mut self, name: &str, id: u32) -> Result<(), String> {
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
        crate::tables::set_group(self.loaded.ebpf_mut(), gid, &members).map_err(|e| e.to_string())
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
            if let Err(message) = self.close(id, Caller::DAEMON) {
                warn!(id, "closing after its client left: {message}");
            }
        }
    }

    fn free_endpoint_id(&self) -> Result<u32, String> {
        (self.next_endpoint..MAX_ENDPOINTS)
            .chain(1..self.next_endpoint)
            .find(|id| !self.endpoints.contains_key(id))
            .ok_or_else(|| format!("endpoint: all {} descriptors are in use", MAX_ENDPOINTS - 1))
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
