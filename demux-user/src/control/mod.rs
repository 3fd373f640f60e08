//! The control protocol between the `demux` CLI (or any client) and the daemon: JSON, one
//! request and one response per line, over a Unix stream socket. Versioned: a request carries
//! `"version": 1`, and a daemon answers another version with an error that says which it speaks.
//!
//! ```text
//! → {"version":1,"op":"bind","protocol":"udp","local":"0.0.0.0:53","to":"count"}
//! ← {"result":"bound","id":1}
//! → {"version":1,"op":"close","id":1}
//! ← {"result":"closed","id":1}
//! → {"version":1,"op":"list"}     ← {"result":"endpoints","endpoints":[…]}
//! → {"version":1,"op":"stats"}    ← {"result":"stats",…}
//! ← {"result":"error","message":"…"}
//! ```
//!
//! The daemon identifies the caller with SO_PEERCRED. An endpoint lives as long as the
//! connection that created it, unless it was created `persistent`. A `bound` answer to a bind
//! with `"to":"ring"` carries two descriptors (SCM_RIGHTS): the ring's memfd, then its eventfd
//! (`crate::ring`); only the caller gets them.

pub mod client;
pub mod fds;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{binding::Protocol, sink::SinkSpec};

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;

/// Default path of the control socket.
pub const DEFAULT_SOCKET: &str = "/run/demux/control.sock";

/// A request with its protocol version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Create an endpoint with a binding (`connect` makes it a connected binding).
    Bind(BindRequest),
    Close {
        id: u32,
    },
    List,
    Stats,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindRequest {
    pub protocol: Protocol,
    /// `198.18.0.1:9000`, `[::]:53`, `198.18.0.0/15:53`, `198.18.0.0/15:*`, …
    pub local: String,
    #[serde(default)]
    pub connect: Option<String>,
    /// Endpoints binding the same address with the same group name share it by flow hash.
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub v6only: bool,
    pub to: SinkSpec,
    /// Keep the endpoint when the connection that created it closes.
    #[serde(default)]
    pub persistent: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Bound { id: u32 },
    Closed { id: u32 },
    Endpoints { endpoints: Vec<EndpointInfo> },
    Stats(Stats),
    Error { message: String },
}

/// One endpoint, as `list` and `stats` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    pub id: u32,
    pub protocol: Protocol,
    pub local: String,
    pub connect: Option<String>,
    pub group: Option<String>,
    pub v6only: bool,
    pub sink: SinkSpec,
    /// The uid of the client that created it.
    pub owner: u32,
    pub persistent: bool,
    /// Redirected to this endpoint by the XDP program.
    pub redirected: u64,
    pub delivered: u64,
    pub delivered_bytes: u64,
    pub dropped_sink_full: u64,
    pub dropped_sink_error: u64,
}

/// One AF_XDP socket's kernel counters (XDP_STATISTICS) and frames.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketInfo {
    pub iface: String,
    pub queue: u32,
    pub rx_dropped: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty: u64,
    pub rx_invalid_descs: u64,
    pub frames: u32,
    pub frames_free: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The XDP program's verdicts by name.
    pub verdicts: BTreeMap<String, u64>,
    pub endpoints: Vec<EndpointInfo>,
    pub sockets: Vec<SocketInfo>,
    /// Frames a queue worker could not deliver: endpoint closed meanwhile, or metadata unusable.
    pub dropped_no_endpoint: u64,
    pub dropped_bad_metadata: u64,
    /// What endpoints that are closed by now delivered and dropped, so the accounting adds up.
    pub closed_delivered: u64,
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

    pub fn delivered(&self) -> u64 {
        self.closed_delivered + self.endpoints.iter().map(|e| e.delivered).sum::<u64>()
    }

    /// Redirected packets that did not reach a sink, each for a named reason.
    pub fn dropped(&self) -> u64 {
        let sinks: u64 = self
            .endpoints
            .iter()
            .map(|e| e.dropped_sink_full + e.dropped_sink_error)
            .sum();
        let sockets: u64 = self.sockets.iter().map(|s| s.rx_dropped).sum();
        sinks + sockets + self.dropped_no_endpoint + self.dropped_bad_metadata + self.closed_dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let bind = Envelope {
            version: VERSION,
            request: Request::Bind(BindRequest {
                protocol: Protocol::Udp,
                local: "0.0.0.0:53".into(),
                connect: None,
                group: None,
                v6only: false,
                to: SinkSpec::Count,
                persistent: false,
            }),
        };
        let line = serde_json::to_string(&bind).unwrap();
        assert_eq!(
            line,
            r#"{"version":1,"op":"bind","protocol":"udp","local":"0.0.0.0:53","connect":null,"group":null,"v6only":false,"to":"count","persistent":false}"#
        );
        let minimal: Envelope = serde_json::from_str(
            r#"{"version":1,"op":"bind","protocol":"tcp","local":"[::]:80","to":"unix:/x"}"#,
        )
        .unwrap();
        assert!(
            matches!(minimal.request, Request::Bind(b) if !b.persistent && b.to == SinkSpec::Unix("/x".into()))
        );
        assert!(
            serde_json::from_str::<Envelope>(r#"{"version":1,"op":"close","id":1,"extra":2}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<Envelope>(
            r#"{"version":1,"op":"bind","protocol":"sctp","local":"x","to":"count"}"#
        )
        .is_err());
    }
}
