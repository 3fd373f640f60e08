//! Why the daemon refused or failed a control request: one enum over the binding, table, sink
//! and ring errors and the daemon's own rules, each with the wire [`ErrorCode`] it answers with.

use thiserror::Error;

use crate::{
    backing::BackingError,
    binding::BindingError,
    control::ErrorCode,
    dataplane::{CounterError, ReuseportError},
    sink::SinkError,
    tables::TableError,
};

/// A refused or failed control request.
#[derive(Debug, Error)]
pub enum ControlError {
    /// `attach` names an endpoint that is not waiting for its client (it was not picked up
    /// from the previous daemon, or its client is back already).
    #[error("attach: endpoint {id} is not waiting for its client after a restart (bind afresh)")]
    NotWaiting {
        /// The endpoint asked for.
        id: u32,
    },
    /// `attach` from another uid than the endpoint's owner.
    #[error("attach: endpoint {id} belongs to uid {owner}; only its owner may attach to it")]
    AttachOwner {
        /// The endpoint asked for.
        id: u32,
        /// Its owner.
        owner: u32,
    },
    /// `attach` with another socket than the endpoint's backing socket.
    #[error("attach: the socket passed is not endpoint {id}'s backing socket; pass the socket the endpoint was bound with")]
    AttachSocket {
        /// The endpoint asked for.
        id: u32,
    },
    /// The binding in the request is invalid.
    #[error(transparent)]
    Binding(#[from] BindingError),
    /// A table update failed.
    #[error(transparent)]
    Table(#[from] TableError),
    /// The sink could not be opened, or the caller passed none or the wrong kind.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Another endpoint or group holds the binding.
    #[error("address in use (EADDRINUSE): the binding is held by {holder}")]
    InUse {
        /// `endpoint N` or `group NAME`.
        holder: String,
    },
    /// Another uid's endpoint or group holds a binding whose local addresses overlap this one's
    /// on a port they share.
    #[error(
        "address in use (EADDRINUSE): {local} overlaps {theirs}, held by {holder} of uid {owner}; \
         as the kernel's bind, demux refuses a binding that overlaps another uid's on its port \
         (a wildcard and an address inside it overlap; root is refused too)"
    )]
    Overlap {
        /// The local address asked for.
        local: String,
        /// The holder's local address.
        theirs: String,
        /// `endpoint N` or `group NAME`.
        holder: String,
        /// The holder's uid.
        owner: u32,
    },
    /// The group's members belong to another uid.
    #[error(
        "address in use (EADDRINUSE): group `{name}` belongs to uid {owner}; as the kernel's \
         SO_REUSEPORT, a group takes members of one uid only"
    )]
    GroupOwner {
        /// The group's name.
        name: String,
        /// Its members' uid.
        owner: u32,
    },
    /// A non-root caller asked for a prefix or all-ports binding.
    #[error(
        "local address: {local} is a prefix binding, which only root may make: no kernel socket \
         binds a prefix or all ports, so no kernel rule says which of their addresses are yours"
    )]
    PrefixForRoot {
        /// The local address asked for.
        local: String,
    },
    /// A non-root caller asked for a TCP endpoint.
    #[error(
        "protocol: only root may bind TCP endpoints until demux has a TCP stack of its own: an \
         endpoint receives every segment to its port, handshakes and all, which no unprivileged \
         kernel socket does"
    )]
    TcpForRoot,
    /// A non-root caller asked for ports below 1024.
    #[error("local port: {local} includes ports below 1024, which only root may bind")]
    PrivilegedPort {
        /// The local address asked for.
        local: String,
    },
    /// No such endpoint.
    #[error("endpoint {id} does not exist (see `demux list`)")]
    NoEndpoint {
        /// The descriptor asked for.
        id: u32,
    },
    /// The caller does not own the endpoint.
    #[error("endpoint {id} belongs to uid {owner}; only its owner or root may close it")]
    NotOwner {
        /// The endpoint.
        id: u32,
        /// Its owner's uid.
        owner: u32,
    },
    /// Every endpoint descriptor is taken.
    #[error("endpoint: all {max} descriptors are in use; close endpoints first")]
    NoDescriptor {
        /// How many there are.
        max: u32,
    },
    /// Every group id is taken.
    #[error("group: every group id is in use; close groups first")]
    NoGroup,
    /// A member binds another address than its group.
    #[error("group: `{name}` is bound to another address; members must bind the same one")]
    GroupAddress {
        /// The group's name.
        name: String,
    },
    /// A ring sink asked for by the daemon's own configuration.
    #[error(
        "to: a ring goes to the client that binds over the control socket; configured \
         endpoints use unix:PATH, count or pcap:PATH"
    )]
    RingForDaemon,
    /// A non-root uid already holds as many endpoints as it may.
    #[error(
        "endpoints: uid {uid} holds {max}, the most one uid may (limits.endpoints_per_uid); \
         close one first"
    )]
    EndpointsPerUid {
        /// The caller.
        uid: u32,
        /// The limit.
        max: u32,
    },
    /// A ring would take a non-root uid over its ring memory.
    #[error(
        "ring memory: this ring takes {asked} bytes and uid {uid} holds {held} already, over the \
         {max} one uid may (limits.ring_bytes_per_uid); close a ring or ask for fewer slots"
    )]
    RingBytesPerUid {
        /// The caller.
        uid: u32,
        /// The new ring's slots × slot size.
        asked: u64,
        /// What the caller's rings take already.
        held: u64,
        /// The limit.
        max: u64,
    },
    /// A non-root uid already has as many control connections open as it may.
    #[error(
        "control connections: uid {uid} has {max} open, the most one uid may \
         (limits.connections_per_uid); close one first"
    )]
    ConnectionsPerUid {
        /// The caller.
        uid: u32,
        /// The limit.
        max: u32,
    },
    /// The daemon has as many control connections open as it takes.
    #[error(
        "control connections: {max} open, the most the daemon takes (limits.connections); try \
         again later"
    )]
    Connections {
        /// The limit.
        max: u32,
    },
    /// A connection without endpoints sent no request for the idle time; it is closed.
    #[error(
        "idle: no request for {idle:?} and no endpoint that closes with this connection \
         (limits.idle); disconnected"
    )]
    Idle {
        /// The limit.
        idle: std::time::Duration,
    },
    /// The backing socket passed with the request is refused.
    #[error(transparent)]
    Backing(#[from] BackingError),
    /// A non-root UDP bind came without its backing socket.
    #[error(
        "backing socket: a UDP endpoint on {local} needs the kernel socket behind it: create a \
         UDP socket, bind it to {local} yourself and pass it with the request (`\"backed\":true`, \
         SCM_RIGHTS); the demux CLI and client library do this"
    )]
    BackingRequired {
        /// The local address asked for.
        local: String,
    },
    /// The backing socket is bound otherwise than the request says.
    #[error(
        "backing socket: bound as {socket}, but the request asks for {request}; bind the \
         socket as the request says (or ask for what it is bound to)"
    )]
    BackingMismatch {
        /// The binding the socket has.
        socket: String,
        /// The binding the request asks for.
        request: String,
    },
    /// A named group with a backing socket.
    #[error(
        "group: a backed endpoint's group is its socket's SO_REUSEPORT group (--reuseport): \
         equal bindings of one uid with SO_REUSEPORT share by flow, as the kernel's do; drop \
         the group name"
    )]
    GroupWithBacking,
    /// A reload asked for by a caller other than root, or where the daemon takes none.
    #[error(
        "reload: only root may have the daemon read its config file again (you are uid {uid}); \
         run `demux reload` as root or send the daemon SIGHUP"
    )]
    ReloadForRoot {
        /// The caller.
        uid: u32,
    },
    /// The endpoint's statistics slot could not be reset.
    #[error("endpoint statistics: {0}")]
    Statistics(#[from] CounterError),
    /// A reuseport member could not be written for the reuseport program.
    #[error(transparent)]
    Reuseport(#[from] ReuseportError),
    /// A bind while another connection's fast-path lease holds the daemon's queues.
    #[error(
        "busy: uid {uid}'s fast path holds the queues of {iface}, and every frame steered there \
         goes to it; your kernel socket serves you until it ends (the client library binds \
         again by itself)"
    )]
    Leased {
        /// The lease holder.
        uid: u32,
        /// The leased interface.
        iface: String,
    },
    /// A fast path asked for while an endpoint of another connection is steered.
    #[error(
        "fast path: endpoint {id} ({local}, uid {owner}) is not this connection's; a client \
         that maps a queue reads every frame the queue carries, so the fast path is only for \
         a connection holding every endpoint of the daemon (it uses the copying ring meanwhile)"
    )]
    FastPathShared {
        /// The other endpoint.
        id: u32,
        /// Its local address.
        local: String,
        /// Its owner.
        owner: u32,
    },
    /// A fast path asked for by a uid the configuration does not name.
    #[error(
        "fast path: uid {uid} may not lease queues; the administrator names the one uid that \
         may (`fast_path_uid` in the config file, `--fast-path-uid`); the ring serves you"
    )]
    FastPathNotAllowed {
        /// The caller.
        uid: u32,
    },
    /// A fast path on an interface the daemon does not serve, or one it cannot lease.
    #[error("fast path: {0}")]
    FastPathUnavailable(String),
}

impl ControlError {
    /// The code the wire answer carries.
    pub fn code(&self) -> ErrorCode {
        match self {
            ControlError::Backing(error) => error.code(),
            ControlError::Binding(_)
            | ControlError::BackingMismatch { .. }
            | ControlError::GroupWithBacking
            | ControlError::Reuseport(ReuseportError::InAnotherArray { .. })
            | ControlError::GroupAddress { .. }
            | ControlError::RingForDaemon => ErrorCode::InvalidArgument,
            ControlError::Table(TableError::Exists { .. })
            | ControlError::InUse { .. }
            | ControlError::Overlap { .. }
            | ControlError::GroupOwner { .. } => ErrorCode::AddressInUse,
            ControlError::Table(TableError::Full { .. } | TableError::GroupTooLarge { .. })
            | ControlError::NoDescriptor { .. }
            | ControlError::NoGroup
            | ControlError::EndpointsPerUid { .. }
            | ControlError::RingBytesPerUid { .. }
            | ControlError::ConnectionsPerUid { .. }
            | ControlError::Connections { .. }
            | ControlError::Idle { .. } => ErrorCode::LimitReached,
            ControlError::Table(TableError::NotFound { .. }) | ControlError::NoEndpoint { .. } => {
                ErrorCode::NotFound
            }
            ControlError::Table(TableError::BadGroup { .. } | TableError::IdTooLarge { .. }) => {
                ErrorCode::InvalidArgument
            }
            ControlError::PrivilegedPort { .. }
            | ControlError::PrefixForRoot { .. }
            | ControlError::TcpForRoot
            | ControlError::BackingRequired { .. }
            | ControlError::ReloadForRoot { .. }
            | ControlError::NotOwner { .. }
            | ControlError::AttachOwner { .. }
            | ControlError::AttachSocket { .. }
            | ControlError::FastPathShared { .. }
            | ControlError::FastPathNotAllowed { .. } => ErrorCode::PermissionDenied,
            ControlError::Leased { .. } => ErrorCode::Busy,
            ControlError::FastPathUnavailable(_) => ErrorCode::InvalidArgument,
            ControlError::NotWaiting { .. } => ErrorCode::NotFound,
            ControlError::Sink(error) => error.code(),
            ControlError::Table(TableError::Map { .. } | TableError::BadIface { .. })
            | ControlError::Statistics(_)
            | ControlError::Reuseport(_) => ErrorCode::Internal,
        }
    }
}
