//! Where an endpoint's datagrams go, as a request names it: `unix:PATH`, `count`, `pcap:PATH`,
//! or `ring[:SLOTS]`. The caller opens `pcap:` and `unix:` sinks itself and passes them with the
//! bind request ([`SinkSpec::open_for_caller`]); the daemon opens `count` and rings
//! (`crate::sink`, daemon builds only).
#![deny(missing_docs)]

use std::{
    fmt, io,
    os::{
        fd::OwnedFd,
        unix::{fs::OpenOptionsExt, net::UnixDatagram},
    },
    path::PathBuf,
    str::FromStr,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where to deliver, as given on the command line or in a request: `unix:PATH`, `count`,
/// `pcap:PATH`, or `ring` / `ring:SLOTS` (a shared-memory ring handed to the caller).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SinkSpec {
    /// Records (`crate::record`) to a Unix datagram socket.
    Unix(PathBuf),
    /// Count only (benchmarks).
    Count,
    /// A pcap file (Wireshark).
    Pcap(PathBuf),
    /// A shared-memory ring handed to the caller.
    Ring {
        /// Slots in the ring (a power of two).
        slots: u32,
    },
}

impl SinkSpec {
    /// Opens this sink as the caller, with the caller's own credentials, if it is one the
    /// caller passes to the daemon: a `pcap:` file is created or truncated for writing
    /// (`O_NONBLOCK`: a FIFO without a reader fails here instead of hanging), a `unix:` path
    /// gets a Unix datagram socket connected to it. `None` for `count` and rings, which the
    /// daemon makes.
    pub fn open_for_caller(&self) -> Result<Option<OwnedFd>, SinkOpenError> {
        let fail = |step, source| SinkOpenError {
            spec: self.clone(),
            step,
            source,
        };
        match self {
            SinkSpec::Count | SinkSpec::Ring { .. } => Ok(None),
            SinkSpec::Pcap(path) => std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map(|file| Some(file.into()))
                .map_err(|e| fail("opening for writing", e)),
            SinkSpec::Unix(path) => {
                let socket = UnixDatagram::unbound().map_err(|e| fail("creating a socket", e))?;
                socket.connect(path).map_err(|e| fail("connecting", e))?;
                Ok(Some(socket.into()))
            }
        }
    }
}

/// A sink the caller could not open (it lacks the permission, the path does not exist, …).
#[derive(Debug, Error)]
#[error("to: {spec}: {step}: {source}")]
pub struct SinkOpenError {
    /// The sink.
    pub spec: SinkSpec,
    /// What failed: `opening for writing`, `connecting`, …
    pub step: &'static str,
    /// Why.
    pub source: io::Error,
}

impl FromStr for SinkSpec {
    type Err = SinkSpecError;

    fn from_str(text: &str) -> Result<Self, SinkSpecError> {
        match text.split_once(':') {
            _ if text == "count" => Ok(SinkSpec::Count),
            _ if text == "ring" => Ok(SinkSpec::Ring {
                slots: crate::ring::DEFAULT_SLOTS,
            }),
            Some(("ring", slots)) => match slots.parse::<u32>() {
                Ok(slots) if slots.is_power_of_two() && (8..=1 << 20).contains(&slots) => {
                    Ok(SinkSpec::Ring { slots })
                }
                _ => Err(SinkSpecError::RingSlots(slots.into())),
            },
            Some(("unix", path)) if !path.is_empty() => Ok(SinkSpec::Unix(path.into())),
            Some(("pcap", path)) if !path.is_empty() => Ok(SinkSpec::Pcap(path.into())),
            _ => Err(SinkSpecError::Unknown(text.into())),
        }
    }
}

impl TryFrom<String> for SinkSpec {
    type Error = SinkSpecError;
    fn try_from(text: String) -> Result<Self, SinkSpecError> {
        text.parse()
    }
}

impl From<SinkSpec> for String {
    fn from(spec: SinkSpec) -> String {
        spec.to_string()
    }
}

impl fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkSpec::Unix(path) => write!(f, "unix:{}", path.display()),
            SinkSpec::Count => f.write_str("count"),
            SinkSpec::Pcap(path) => write!(f, "pcap:{}", path.display()),
            SinkSpec::Ring { slots } => write!(f, "ring:{slots}"),
        }
    }
}

/// A sink that is not one of the forms `SinkSpec` accepts.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SinkSpecError {
    /// `ring:SLOTS` with a bad slot count.
    #[error("sink: ring:{0}: the slots must be a power of two from 8 to 1048576")]
    RingSlots(String),
    /// Not a known form.
    #[error("sink: `{0}` is not one of unix:PATH, count, pcap:PATH, ring[:SLOTS]")]
    Unknown(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        for text in [
            "count",
            "unix:/run/app.sock",
            "pcap:/tmp/x.pcap",
            "ring:1024",
        ] {
            assert_eq!(text.parse::<SinkSpec>().unwrap().to_string(), text);
        }
        assert_eq!(
            "ring".parse::<SinkSpec>().unwrap(),
            SinkSpec::Ring {
                slots: crate::ring::DEFAULT_SLOTS
            }
        );
        for bad in ["", "unix:", "file:/x", "counter"] {
            assert_eq!(
                bad.parse::<SinkSpec>(),
                Err(SinkSpecError::Unknown(bad.into()))
            );
        }
        for bad in ["ring:1000", "ring:4", "ring:x"] {
            assert!(matches!(
                bad.parse::<SinkSpec>(),
                Err(SinkSpecError::RingSlots(_))
            ));
        }
    }
}
