//! The control protocol between the `demux` CLI (or any client) and the daemon: JSON, one
//! request and one response per line, over a Unix stream socket.
//!
//! ```text
//! → {"version":4,"op":"hello","software":"demux 0.1.0"}
//! ← {"result":"hello","version":4,"software":"demux 0.1.0"}
//! → {"version":4,"fds":1,"op":"bind","protocol":"udp","local":"0.0.0.0:5353","backed":true,"to":"count"}
//! ← {"result":"bound","id":1}
//! → {"version":4,"fds":2,"op":"bind","protocol":"udp","local":"0.0.0.0:5354","backed":true,"to":"pcap:/tmp/x.pcap"}
//! ← {"result":"bound","id":2}
//! → {"version":4,"op":"close","id":1}
//! ← {"result":"closed","id":1}
//! → {"version":4,"op":"list"}     ← {"result":"endpoints","endpoints":[…]}
//! → {"version":4,"op":"stats"}    ← {"result":"stats",…}
//! → {"version":4,"op":"reload"}   ← {"result":"reloaded","changes":["endpoint 3 udp 0.0.0.0:53 closed",…]}
//! → {"version":4,"fds":1,"op":"attach","id":2}   ← {"result":"attached","id":2}
//! → {"version":4,"op":"fast_path","iface":"eth0"}   ← {"result":"fast_path","queues":1,"frames":4096,"frame_size":4096} + 2 fds per queue
//! → {"version":4,"op":"fast_path_ready"}            ← {"result":"fast_path_on"}
//! ← {"result":"error","code":"address_in_use","message":"…"}
//! ```
//!
//! **Fast path** (`fast_path`, `fast_path_ready`): a lease on every rx queue of an interface for
//! a connection holding every endpoint of the daemon; see "The fast path" in
//! docs/ARCHITECTURE.md. While one holds, other connections' binds are refused as `busy`.
//!
//! **Backing sockets.** A UDP endpoint on an address (not a prefix) is backed by a kernel
//! socket the caller created and bound (and connected, for a connected binding) itself
//! ([`crate::backing::open`]) and passes as the request's first descriptor (`"backed":true`).
//! The daemon derives the binding from the socket ([`crate::backing::inspect`]); `local`,
//! `connect` and `v6only` must say the same. `SO_REUSEPORT` on the socket makes equal bindings
//! of one uid a group, as the kernel's reuseport groups. Only root may bind without one (and
//! prefix, all-ports and TCP bindings, root's only, have none).
//!
//! **Descriptors with a request.** The daemon opens no path for a caller: a `pcap:PATH` or
//! `unix:PATH` sink is opened by the caller, with its own credentials (the file created or
//! truncated for writing; a Unix datagram socket connected to PATH), and its descriptor sent
//! with the request line (SCM_RIGHTS, attached to the line's first byte), after the backing
//! socket; the line says how many it carries (`"fds":2`, [`Envelope::fds`]). PATH is then only a label for `list`. The
//! daemon takes that many of the descriptors received with the line, refuses the request if
//! fewer came (`invalid_argument`), and closes any beyond. Send one request with descriptors at
//! a time (wait for its answer), as [`client::Client`] does. [`SinkSpec::open_for_caller`]
//! opens a sink the way the daemon expects it.
//!
//! **Versions.** Every request carries the protocol [`VERSION`] it is written in. The daemon
//! reads that field alone first ([`version_of`]) and answers any other version with one
//! `version_mismatch` error naming both sides' protocol and software versions and which side
//! to upgrade, never with a parse error. The client library opens every connection with
//! `hello`, so a mismatch is found before the first real request. The error answer's shape
//! (`result`, `code`, `message`) never changes between versions.
//!
//! **Errors.** Every refusal carries an [`ErrorCode`] an application can match, beside a
//! message for people.
//!
//! The daemon identifies the caller with SO_PEERCRED. An endpoint lives as long as the
//! connection that created it, unless it was created `persistent`. A `bound` answer to a bind
//! with `"to":"ring"` carries two descriptors (SCM_RIGHTS): the ring's memfd, then its eventfd
//! ([`crate::ring`], passed with [`crate::sys::scm`]); only the caller gets them.
//!
//! **Restarts.** A daemon stopped gracefully under systemd hands its client endpoints (ring,
//! backing socket, request, owner) to the next one through the service manager's file
//! descriptor store (`daemon::handover`). The client keeps its ring mapped and, once the new
//! daemon listens, sends `attach` with the endpoint's id and its backing socket: the daemon
//! checks that the caller (SO_PEERCRED) is the owner and that the socket is the endpoint's
//! own (same `SO_COOKIE`), and the session goes on with the same ring and id. An endpoint
//! nobody attaches to within `daemon::handover::GRACE` closes (unless persistent).
#![deny(missing_docs)]

pub mod client;
mod error;
mod sink_spec;

pub use error::ErrorCode;
pub use sink_spec::{SinkOpenError, SinkSpec, SinkSpecError};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use std::net::SocketAddr;

use crate::binding::{Binding, BindingError, Local, Protocol, Receiver};

/// The protocol version this build speaks. Version 2 added `hello` and error codes; version 3
/// descriptors with requests (`fds`): `pcap:` and `unix:` sinks are opened by the caller;
/// version 4 backing sockets (`backed`).
pub const VERSION: u32 = 4;

/// This build's software version, as `hello` reports it.
pub const SOFTWARE: &str = concat!("demux ", env!("CARGO_PKG_VERSION"));

/// Default path of the control socket.
pub const DEFAULT_SOCKET: &str = "/run/demux/control.sock";

/// A request with its protocol version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The protocol version the request is written in ([`VERSION`]).
    pub version: u32,
    /// How many descriptors came with the request line (SCM_RIGHTS): a bind's backing socket
    /// and its `pcap:` or `unix:` sink, in that order; none otherwise. Left out when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fds: u32,
    /// The request itself.
    #[serde(flatten)]
    pub request: Request,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The `version` field of a request line, read before anything else.
#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

/// The protocol version a request line is written in, if it has one.
pub fn version_of(line: &str) -> Option<u32> {
    serde_json::from_str::<VersionOnly>(line)
        .ok()
        .map(|v| v.version)
}

/// Which side of a version mismatch should upgrade: the one with the older protocol.
pub(crate) fn upgrade(client: u32, daemon: u32) -> &'static str {
    if client < daemon {
        "upgrade the client (the demux library or CLI it uses)"
    } else {
        "upgrade the daemon"
    }
}

/// The refusal for a request in protocol version `theirs`, naming which side should upgrade.
pub fn version_mismatch(theirs: u32) -> Response {
    let upgrade = upgrade(theirs, VERSION);
    Response::Error {
        code: ErrorCode::VersionMismatch,
        message: format!(
            "control protocol: the client speaks version {theirs}, this daemon ({SOFTWARE}) \
             speaks version {VERSION}: {upgrade}"
        ),
    }
}

/// One request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Say who we are; answered with [`Response::Hello`].
    Hello {
        /// The client's software version, e.g. `demux 0.1.0`.
        software: String,
    },
    /// Create an endpoint with a binding (`connect` makes it a connected binding).
    Bind(BindRequest),
    /// Close an endpoint (its owner or root).
    Close {
        /// The endpoint's descriptor.
        id: u32,
    },
    /// The endpoints.
    List,
    /// Counters and the accounting.
    Stats,
    /// Read the daemon's config file again and apply the difference (root only); answered
    /// with [`Response::Reloaded`].
    Reload,
    /// Take up again, after a daemon restart, endpoint `id` that the previous daemon handed
    /// over to this one (its ring and backing socket): the request carries the endpoint's
    /// backing socket (`"fds":1`), the caller must be its owner. Answered with
    /// [`Response::Attached`]; the endpoint then closes with this connection, as it did with
    /// the one that bound it. Added within protocol version 4: a daemon that does not know it
    /// answers `invalid_argument`, and the client binds afresh.
    Attach {
        /// The endpoint's descriptor, as the previous daemon gave it.
        id: u32,
    },
    /// Lease every rx queue of `iface` to this connection for a fast path (see "The fast path"
    /// in docs/ARCHITECTURE.md): granted only while every endpoint of the daemon is this
    /// connection's. Answered with [`Response::FastPath`] and, per queue, the queue's AF_XDP
    /// socket (not bound yet) and its UMEM memfd (read-only).
    FastPath {
        /// The interface.
        iface: String,
    },
    /// The client has mapped the leased sockets' rings: bind them and steer the queues to
    /// them. Answered with [`Response::FastPathOn`].
    FastPathReady,
}

/// What `bind` asks for: a binding and where its datagrams go. Unknown keys are refused, on
/// the control socket and in the config file's `[[endpoint]]` tables alike (a misspelt
/// `persistant` must not be ignored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindRequest {
    /// UDP or TCP.
    pub protocol: Protocol,
    /// `198.18.0.1:9000`, `[::]:53`, `198.18.0.0/15:53`, `198.18.0.0/15:*`, …
    pub local: String,
    /// A remote `ADDR:PORT`: only packets from it (a connected binding).
    #[serde(default)]
    pub connect: Option<String>,
    /// Unbacked (root's) endpoints binding the same address with the same group name share it
    /// by flow hash. A backed endpoint's group is its socket's `SO_REUSEPORT` group: the daemon
    /// names it (`reuseport udp ADDR:PORT`) and refuses a name from the request.
    #[serde(default)]
    pub group: Option<String>,
    /// For `[::]:PORT`: do not receive IPv4.
    #[serde(default)]
    pub v6only: bool,
    /// The request's first descriptor is the endpoint's backing socket.
    #[serde(default, skip_serializing_if = "is_false")]
    pub backed: bool,
    /// Where the datagrams go.
    pub to: SinkSpec,
    /// Keep the endpoint when the connection that created it closes.
    #[serde(default)]
    pub persistent: bool,
}

/// One answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// The daemon's versions.
    Hello {
        /// The protocol version the daemon speaks.
        version: u32,
        /// The daemon's software version.
        software: String,
    },
    /// The endpoint exists now.
    Bound {
        /// Its descriptor.
        id: u32,
    },
    /// The caller holds the endpoint again (its ring, as before the restart).
    Attached {
        /// Its descriptor.
        id: u32,
    },
    /// The endpoint is gone.
    Closed {
        /// Its descriptor.
        id: u32,
    },
    /// The answer to `list`.
    Endpoints {
        /// The endpoints the caller may see.
        endpoints: Vec<EndpointInfo>,
    },
    /// The answer to `stats`.
    Stats(Stats),
    /// The config file was read again and applied.
    Reloaded {
        /// What changed, one line each (empty: nothing did).
        changes: Vec<String>,
    },
    /// A fast-path lease: `queues` pairs of descriptors (socket, UMEM) came with it.
    FastPath {
        /// Rx queues leased, in order 0, 1, ….
        queues: u32,
        /// UMEM frames per queue; also the size of its fill and rx rings.
        frames: u32,
        /// Bytes per UMEM frame.
        frame_size: u32,
    },
    /// The leased queues are bound and steered: frames arrive on their rx rings.
    FastPathOn,
    /// A refusal.
    Error {
        /// What an application matches on.
        code: ErrorCode,
        /// What a person reads: names the field and the fix.
        message: String,
    },
}

impl BindRequest {
    /// A UDP endpoint on `local` delivering to `to`: not connected, no group, not v6only, not
    /// persistent (set the fields for more). `backed` is set by [`client::Client::bind`] from
    /// whether a backing socket goes with it.
    pub fn udp(local: impl Into<String>, to: SinkSpec) -> Self {
        Self {
            protocol: Protocol::Udp,
            local: local.into(),
            connect: None,
            group: None,
            v6only: false,
            backed: false,
            to,
            persistent: false,
        }
    }

    /// The binding this request asks for, checked as far as the request alone allows (syntax,
    /// families, ports, prefix host bits): what a client can refuse before it connects. The
    /// daemon checks again, and adds what only it knows (who holds what, who may).
    pub fn binding(&self) -> Result<Binding, BindingError> {
        let local: Local = self.local.parse()?;
        let remote = match &self.connect {
            None => None,
            Some(text) => Some(
                text.parse::<SocketAddr>()
                    .map_err(|_| BindingError::Remote(text.clone()))?,
            ),
        };
        let binding = Binding {
            protocol: self.protocol,
            local,
            remote,
            v6only: self.v6only,
        };
        binding.encode(Receiver::Endpoint(1))?;
        Ok(binding)
    }
}

/// One endpoint, as `list` and `stats` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    /// The endpoint's descriptor.
    pub id: u32,
    /// UDP or TCP.
    pub protocol: Protocol,
    /// The local address as requested.
    pub local: String,
    /// The remote address of a connected binding.
    pub connect: Option<String>,
    /// The group it shares its binding with.
    pub group: Option<String>,
    /// IPv6 only.
    pub v6only: bool,
    /// Where its datagrams go.
    pub sink: SinkSpec,
    /// The uid of the client that created it.
    pub owner: u32,
    /// Outlives the connection that created it.
    pub persistent: bool,
    /// Redirected to this endpoint by the XDP program.
    pub redirected: u64,
    /// Handed to its sink.
    pub delivered: u64,
    /// Payload bytes handed to its sink.
    pub delivered_bytes: u64,
    /// Dropped because the sink was full (its reader is too slow).
    pub dropped_sink_full: u64,
    /// Dropped because the sink failed (reader gone, file not writable).
    pub dropped_sink_error: u64,
    /// Read from its backing socket into its sink by the daemon (endpoints the daemon holds,
    /// not rings): datagrams the kernel delivered (fragmented, sent by the host itself, or
    /// arriving while nothing was steered), so part of "passed", not of "delivered".
    #[serde(default)]
    pub via_kernel: u64,
}

/// One AF_XDP socket's kernel counters (XDP_STATISTICS) and frames.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketInfo {
    /// The interface.
    pub iface: String,
    /// The rx queue.
    pub queue: u32,
    /// Frames the kernel dropped for this socket (`rx_dropped`).
    pub rx_dropped: u64,
    /// Frames dropped because the rx ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty.
    pub rx_fill_ring_empty: u64,
    /// Invalid rx descriptors.
    pub rx_invalid_descs: u64,
    /// UMEM frames of the socket.
    pub frames: u32,
    /// UMEM frames on the worker's free list.
    pub frames_free: u64,
    /// UMEM frames on the fill ring, offered to the kernel and not taken yet.
    #[serde(default)]
    pub frames_fill_ring: u64,
    /// UMEM frames on the rx ring, received and not read by the worker yet. While no frame is
    /// being received, `frames_free + frames_fill_ring + frames_rx_ring == frames`: a frame
    /// missing from the three is lost.
    #[serde(default)]
    pub frames_rx_ring: u64,
    /// Leased to a client's fast path: the client reads the queue (the frame counts are 0).
    #[serde(default, skip_serializing_if = "is_false")]
    pub leased: bool,
    /// The longest frame the queue's own socket takes through AF_XDP beyond one UMEM frame
    /// (bound with `XDP_USE_SG`: `demux_common::meta::MAX_XSK_SG_FRAME`); 0 when it takes one
    /// UMEM frame (`meta::MAX_XSK_FRAME` bytes) at most, and while leased.
    #[serde(default)]
    pub frame_limit: u32,
    /// Frames the kernel put on the rx rings of this queue's leased sockets, for fast-path
    /// clients, over every lease so far: read from each ring's producer index, which its client
    /// can write too, so this is the client's own claim about its own lease (see
    /// docs/SECURITY.md). Part of the accounting beside `delivered`.
    #[serde(default)]
    pub handed_to_client: u64,
}

/// The answer to `stats`: verdicts, endpoints, sockets and the accounting
/// `seen = delivered + handed to fast-path clients + passed + dropped` (+ in flight).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The XDP program's verdicts by name.
    pub verdicts: BTreeMap<String, u64>,
    /// The endpoints the caller may see.
    pub endpoints: Vec<EndpointInfo>,
    /// The AF_XDP sockets, one per (interface, rx queue).
    pub sockets: Vec<SocketInfo>,
    /// Frames a queue worker could not deliver because the endpoint closed meanwhile.
    pub dropped_no_endpoint: u64,
    /// Frames a queue worker could not deliver because their metadata was unusable.
    pub dropped_bad_metadata: u64,
    /// Frames a queue worker did not deliver because a checksum was bad (IPv4 header, UDP,
    /// TCP) or an IPv6 UDP datagram had none, as the kernel drops them.
    #[serde(default)]
    pub dropped_bad_checksum: u64,
    /// Multi-buffer frames a queue worker dropped because their chain of descriptors was
    /// broken (more descriptors than it gathers, or one outside its UMEM frame).
    #[serde(default)]
    pub dropped_bad_chain: u64,
    /// What endpoints that are closed by now delivered, so the accounting adds up.
    pub closed_delivered: u64,
    /// What endpoints that are closed by now dropped.
    pub closed_dropped: u64,
}

impl Stats {
    /// Packets the XDP program has seen.
    pub fn seen(&self) -> u64 {
        self.verdicts.values().sum()
    }

    /// Packets passed to the kernel, all reasons.
    pub fn passed(&self) -> u64 {
        self.verdicts
            .iter()
            .filter(|(name, _)| name.starts_with("pass_"))
            .map(|(_, n)| n)
            .sum()
    }

    /// Packets handed to sinks, closed endpoints included.
    pub fn delivered(&self) -> u64 {
        self.closed_delivered + self.endpoints.iter().map(|e| e.delivered).sum::<u64>()
    }

    /// Packets the kernel put on leased queues' rx rings for fast-path clients (what a client
    /// then drops, it counts itself). Saturating: the figures come from client-writable memory.
    pub fn handed_to_clients(&self) -> u64 {
        self.sockets
            .iter()
            .fold(0, |sum, s| sum.saturating_add(s.handed_to_client))
    }

    /// The right-hand side of the accounting: delivered + handed to fast-path clients + passed
    /// + dropped (saturating). Equal to [`Stats::seen`] when nothing is in flight.
    pub fn accounted(&self) -> u64 {
        self.delivered()
            .saturating_add(self.handed_to_clients())
            .saturating_add(self.passed())
            .saturating_add(self.dropped())
    }

    /// Redirected packets that did not reach a sink, each for a named reason.
    pub fn dropped(&self) -> u64 {
        let sinks: u64 = self
            .endpoints
            .iter()
            .map(|e| e.dropped_sink_full + e.dropped_sink_error)
            .sum();
        let sockets: u64 = self.sockets.iter().map(|s| s.rx_dropped).sum();
        sinks
            + sockets
            + self.dropped_no_endpoint
            + self.dropped_bad_metadata
            + self.dropped_bad_checksum
            + self.dropped_bad_chain
            + self.closed_dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let bind = Envelope {
            version: VERSION,
            fds: 0,
            request: Request::Bind(BindRequest {
                protocol: Protocol::Udp,
                local: "0.0.0.0:53".into(),
                connect: None,
                group: None,
                v6only: false,
                backed: false,
                to: SinkSpec::Count,
                persistent: false,
            }),
        };
        let line = serde_json::to_string(&bind).unwrap();
        assert_eq!(
            line,
            r#"{"version":4,"op":"bind","protocol":"udp","local":"0.0.0.0:53","connect":null,"group":null,"v6only":false,"to":"count","persistent":false}"#
        );
        let minimal: Envelope = serde_json::from_str(
            r#"{"version":4,"op":"bind","protocol":"tcp","local":"[::]:80","to":"unix:/x"}"#,
        )
        .unwrap();
        assert_eq!(minimal.fds, 0);
        assert!(
            matches!(&minimal.request, Request::Bind(b) if !b.persistent && b.to == SinkSpec::Unix("/x".into()))
        );
        let with_fd = Envelope { fds: 1, ..minimal };
        let line = serde_json::to_string(&with_fd).unwrap();
        assert!(
            line.starts_with(r#"{"version":4,"fds":1,"op":"bind""#),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<Envelope>(&line).unwrap(), with_fd);
        assert!(
            serde_json::from_str::<Envelope>(r#"{"version":1,"op":"close","id":1,"extra":2}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<Envelope>(
            r#"{"version":1,"op":"bind","protocol":"sctp","local":"x","to":"count"}"#
        )
        .is_err());
    }

    #[test]
    fn another_version_is_one_refusal_naming_both_sides() {
        // A future request shape this build cannot parse still yields its version.
        let future = r#"{"version":4,"op":"bind","socket_fd":0,"new_field":[1]}"#;
        assert_eq!(version_of(future), Some(4));
        assert_eq!(version_of("not json"), None);
        let Response::Error { code, message } = version_mismatch(4) else {
            panic!("not an error");
        };
        assert_eq!(code, ErrorCode::VersionMismatch);
        assert!(
            message.contains("version 4")
                && message.contains(&format!("version {VERSION}"))
                && message.contains("upgrade the daemon"),
            "{message}"
        );
        let Response::Error { message, .. } = version_mismatch(2) else {
            panic!("not an error");
        };
        assert!(message.contains("upgrade the client"), "{message}");
        let wire = serde_json::to_string(&version_mismatch(1)).unwrap();
        assert!(
            wire.starts_with(r#"{"result":"error","code":"version_mismatch","message":"#),
            "{wire}"
        );
    }
}
