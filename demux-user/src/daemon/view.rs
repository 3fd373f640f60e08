//! What `list`, `stats` and the metrics read, without the lock that binds and closes hold.
//!
//! The state publishes each endpoint here once it is bound and retires it when it closes (one
//! short write lock, no syscall under it); the counters come straight from the maps through
//! [`Counters`], which read through `&self`. So a scrape or a `demux stats` never waits for a
//! bind or close in progress, and a slow reader never holds up one.

use std::{
    collections::BTreeMap,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex, PoisonError, RwLock},
};

use demux_common::Verdict;

use super::state::{EndpointHandle, SocketCells, WorkerCounters};
use crate::{
    control::{BindRequest, EndpointInfo, Request, Response, SocketInfo, Stats},
    dataplane::Counters,
};

/// Whose endpoints a reader sees: everyone's (root, the log, the metrics endpoint, which has
/// no caller identity) or one user's own. Aggregate counters (verdicts, sockets, drops of
/// closed endpoints) are shown to everyone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Viewer {
    /// Root: every endpoint.
    All,
    /// A non-root caller: only the endpoints that uid owns.
    Uid(u32),
}

impl Viewer {
    /// The viewer for a caller with this uid.
    pub fn of(uid: u32) -> Self {
        if uid == 0 {
            Viewer::All
        } else {
            Viewer::Uid(uid)
        }
    }

    fn sees(self, owner: u32) -> bool {
        match self {
            Viewer::All => true,
            Viewer::Uid(uid) => uid == owner,
        }
    }
}

/// The published side of the daemon's state.
pub struct View {
    counters: Arc<dyn Counters>,
    listed: RwLock<Listed>,
    workers: Arc<WorkerCounters>,
    sockets: RwLock<SocketCells>,
}

/// The endpoints bound now, and what closed ones delivered and dropped: one lock, so a reader
/// never counts an endpoint both as open and as closed.
#[derive(Clone, Default)]
struct Listed {
    endpoints: BTreeMap<u32, Arc<Listing>>,
    closed_delivered: u64,
    closed_dropped: u64,
}

/// One bound endpoint as readers see it.
pub(super) struct Listing {
    /// What the caller asked for.
    pub request: BindRequest,
    /// Its owner's uid.
    pub owner: u32,
    /// Its delivery counters, moved by the queue workers.
    pub handle: Arc<EndpointHandle>,
}

impl View {
    /// An empty view over `counters` and the workers' drop counters.
    pub fn new(counters: Arc<dyn Counters>, workers: Arc<WorkerCounters>) -> Self {
        Self {
            counters,
            listed: RwLock::default(),
            workers,
            sockets: RwLock::default(),
        }
    }

    /// Shows the statistics of one more AF_XDP socket.
    pub fn add_socket(&self, cell: Arc<Mutex<SocketInfo>>) {
        self.sockets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(cell);
    }

    /// Answers the requests that change nothing, `hello`, `list` and `stats`, showing `viewer`
    /// what it may see; `None` for the others.
    pub fn answer(&self, request: &Request, viewer: Viewer) -> Option<Response> {
        match request {
            Request::Hello { .. } => Some(Response::Hello {
                version: crate::control::VERSION,
                software: crate::control::SOFTWARE.into(),
            }),
            Request::List => Some(Response::Endpoints {
                endpoints: self.infos(&self.snapshot(), viewer),
            }),
            Request::Stats => Some(Response::Stats(self.stats_for(viewer))),
            _ => None,
        }
    }

    /// Shows endpoint `id`.
    pub(super) fn publish(&self, id: u32, listing: Listing) {
        self.write().endpoints.insert(id, Arc::new(listing));
    }

    /// Hides endpoint `id`, its final counters going to the closed endpoints' totals.
    pub(super) fn retire(&self, id: u32) {
        let mut listed = self.write();
        if let Some(listing) = listed.endpoints.remove(&id) {
            listed.closed_delivered += listing.handle.delivered.load(Relaxed);
            listed.closed_dropped += listing.handle.dropped();
        }
    }

    /// The endpoints, by id, with their counters.
    pub fn list(&self) -> Vec<EndpointInfo> {
        self.infos(&self.snapshot(), Viewer::All)
    }

    /// The verdicts, the endpoints, the sockets and the drops, as one snapshot.
    pub fn stats(&self) -> Stats {
        self.stats_for(Viewer::All)
    }

    /// As [`View::stats`], with only the endpoints `viewer` may see.
    pub fn stats_for(&self, viewer: Viewer) -> Stats {
        let verdicts = self.counters.verdicts().unwrap_or_default();
        let listed = self.snapshot();
        Stats {
            verdicts: Verdict::ALL
                .iter()
                .map(|v| (v.name().to_owned(), verdicts.get(*v)))
                .collect(),
            endpoints: self.infos(&listed, viewer),
            sockets: self
                .sockets
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|cell| cell.lock().unwrap_or_else(PoisonError::into_inner).clone())
                .collect(),
            dropped_no_endpoint: self.workers.dropped_no_endpoint.load(Relaxed),
            dropped_bad_metadata: self.workers.dropped_bad_metadata.load(Relaxed),
            dropped_bad_checksum: self.workers.dropped_bad_checksum.load(Relaxed),
            dropped_bad_chain: self.workers.dropped_bad_chain.load(Relaxed),
            closed_delivered: listed.closed_delivered,
            closed_dropped: listed.closed_dropped,
        }
    }

    fn infos(&self, listed: &Listed, viewer: Viewer) -> Vec<EndpointInfo> {
        listed
            .endpoints
            .iter()
            .filter(|(_, e)| viewer.sees(e.owner))
            .map(|(id, e)| EndpointInfo {
                id: *id,
                protocol: e.request.protocol,
                local: e.request.local.clone(),
                connect: e.request.connect.clone(),
                group: e.request.group.clone(),
                v6only: e.request.v6only,
                sink: e.request.to.clone(),
                owner: e.owner,
                persistent: e.request.persistent,
                redirected: self
                    .counters
                    .endpoint_stats(*id)
                    .map(|s| s.packets)
                    .unwrap_or(0),
                delivered: e.handle.delivered.load(Relaxed),
                delivered_bytes: e.handle.delivered_bytes.load(Relaxed),
                via_kernel: e.handle.via_kernel.load(Relaxed),
                dropped_sink_full: e.handle.dropped_sink_full.load(Relaxed),
                dropped_sink_error: e.handle.dropped_sink_error.load(Relaxed),
            })
            .collect()
    }

    /// A copy of the listing (the lock is held for the copy only, never for a map read).
    fn snapshot(&self) -> Listed {
        self.listed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Listed> {
        self.listed.write().unwrap_or_else(PoisonError::into_inner)
    }
}
