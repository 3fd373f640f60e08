//! Where an endpoint's datagrams go: a shared-memory ring to the client that owns the endpoint
//! (`crate::ring`, records in the format below), a Unix datagram socket (the format below), a
//! counter (for benchmarks), or a pcap file (for Wireshark).
//!
//! ## Unix datagram format (version 1)
//!
//! Each datagram is a 64-byte header followed by the payload. Integers are little-endian;
//! addresses are 16 bytes, IPv4 in the first 4 with the rest zero.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | format version (1) |
//! | 2 | 2 | header length (64): the payload starts here |
//! | 4 | 1 | IP protocol (17 UDP: payload; 6 TCP: the whole segment, header included) |
//! | 5 | 1 | family (4 or 6) |
//! | 6 | 2 | reserved (0) |
//! | 8 | 4 | endpoint id |
//! | 12 | 4 | reserved (0) |
//! | 16 | 8 | receive time, ns since the Unix epoch (CLOCK_REALTIME) |
//! | 24 | 16 | peer address |
//! | 40 | 16 | local address |
//! | 56 | 2 | peer port |
//! | 58 | 2 | local port |
//! | 60 | 4 | reserved (0) |

use std::{
    fmt,
    fs::File,
    io::{self, BufWriter},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::net::UnixDatagram,
    path::PathBuf,
    str::FromStr,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    DataLink,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    binding::addr16,
    datagram::Datagram,
    ring::{ClientFds, Producer},
};

pub const HEADER_LEN: usize = 64;
pub const FORMAT_VERSION: u16 = 1;

/// Where to deliver, as given on the command line or in a request: `unix:PATH`, `count`,
/// `pcap:PATH`, or `ring` / `ring:SLOTS` (a shared-memory ring handed to the caller).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SinkSpec {
    Unix(PathBuf),
    Count,
    Pcap(PathBuf),
    Ring { slots: u32 },
}

impl FromStr for SinkSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            _ if text == "count" => Ok(SinkSpec::Count),
            _ if text == "ring" => Ok(SinkSpec::Ring {
                slots: crate::ring::DEFAULT_SLOTS,
            }),
            Some(("ring", slots)) => match slots.parse::<u32>() {
                Ok(slots) if slots.is_power_of_two() && (8..=1 << 20).contains(&slots) => {
                    Ok(SinkSpec::Ring { slots })
                }
                _ => Err(format!(
                    "sink: ring:{slots}: the slots must be a power of two from 8 to 1048576"
                )),
            },
            Some(("unix", path)) if !path.is_empty() => Ok(SinkSpec::Unix(path.into())),
            Some(("pcap", path)) if !path.is_empty() => Ok(SinkSpec::Pcap(path.into())),
            _ => Err(format!(
                "sink: `{text}` is not one of unix:PATH, count, pcap:PATH, ring[:SLOTS]"
            )),
        }
    }
}

impl TryFrom<String> for SinkSpec {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
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

/// Why a datagram was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The receiver's socket buffer is full (it reads too slowly).
    SinkFull,
    /// The receiver is gone or the file cannot be written.
    SinkError,
}

#[derive(Debug, Error)]
pub enum SinkError {
    #[error("sink {spec}: {source}")]
    Open { spec: SinkSpec, source: io::Error },
}

/// An open sink.
pub enum Sink {
    Unix(UnixDatagram),
    Count,
    Pcap(Mutex<PcapWriter<BufWriter<File>>>),
    /// Several queue workers may deliver to one endpoint: the lock makes them one producer.
    Ring(Mutex<Producer>),
}

impl Sink {
    /// Opens a sink; for a ring, also returns the descriptors that go to the client.
    pub fn open(spec: &SinkSpec) -> Result<(Self, Option<ClientFds>), SinkError> {
        let fail = |source| SinkError::Open {
            spec: spec.clone(),
            source,
        };
        if let SinkSpec::Ring { slots } = spec {
            let (producer, fds) = Producer::create(*slots, crate::ring::DEFAULT_SLOT_SIZE)
                .map_err(|e| fail(io::Error::other(e)))?;
            return Ok((Sink::Ring(Mutex::new(producer)), Some(fds)));
        }
        let sink = match spec {
            SinkSpec::Unix(path) => {
                let socket = UnixDatagram::unbound().map_err(fail)?;
                socket.connect(path).map_err(fail)?;
                socket.set_nonblocking(true).map_err(fail)?;
                Sink::Unix(socket)
            }
            SinkSpec::Count => Sink::Count,
            SinkSpec::Pcap(path) => {
                let file = File::create(path).map_err(fail)?;
                let header = PcapHeader {
                    datalink: DataLink::ETHERNET,
                    ..PcapHeader::default()
                };
                let writer = PcapWriter::with_header(BufWriter::new(file), header)
                    .map_err(|e| fail(io::Error::other(e)))?;
                Sink::Pcap(Mutex::new(writer))
            }
            SinkSpec::Ring { .. } => unreachable!("handled above"),
        };
        Ok((sink, None))
    }

    /// Delivers one datagram; `frame` is the whole Ethernet frame, for pcap.
    pub fn deliver(
        &self,
        endpoint: u32,
        datagram: &Datagram,
        frame: &[u8],
        received: SystemTime,
    ) -> Result<(), DropReason> {
        match self {
            Sink::Count => Ok(()),
            Sink::Ring(producer) => {
                let header = encode_header(endpoint, datagram, received);
                let mut producer = producer.lock().map_err(|_| DropReason::SinkError)?;
                if producer.push(&[&header, datagram.payload]) {
                    Ok(())
                } else {
                    Err(DropReason::SinkFull)
                }
            }
            Sink::Unix(socket) => {
                let header = encode_header(endpoint, datagram, received);
                let parts = [
                    io::IoSlice::new(&header),
                    io::IoSlice::new(datagram.payload),
                ];
                send_vectored(socket, &parts)
                    .map(|_| ())
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::WouldBlock => DropReason::SinkFull,
                        _ => DropReason::SinkError,
                    })
            }
            Sink::Pcap(writer) => {
                let since = received
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or(Duration::ZERO);
                let packet = PcapPacket::new(since, frame.len() as u32, frame);
                let mut writer = writer.lock().map_err(|_| DropReason::SinkError)?;
                writer
                    .write_packet(&packet)
                    .map(|_| ())
                    .map_err(|_| DropReason::SinkError)
            }
        }
    }
}

/// Sends one datagram gathered from `parts`, without copying the payload and without blocking.
fn send_vectored(socket: &UnixDatagram, parts: &[io::IoSlice]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = parts.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = parts.len() as _;
    // SAFETY: msg points at `parts` (IoSlice is ABI-compatible with iovec), which outlive the
    // call; the socket is connected.
    let sent = unsafe {
        libc::sendmsg(
            socket.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// The 64-byte header of the Unix datagram format.
pub fn encode_header(endpoint: u32, d: &Datagram, received: SystemTime) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..2].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[2..4].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
    h[4] = d.protocol;
    h[5] = if d.peer.is_ipv4() { 4 } else { 6 };
    h[8..12].copy_from_slice(&endpoint.to_le_bytes());
    let ns = received
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| t.as_nanos() as u64);
    h[16..24].copy_from_slice(&ns.to_le_bytes());
    h[24..40].copy_from_slice(&addr16(d.peer.ip()));
    h[40..56].copy_from_slice(&addr16(d.local.ip()));
    h[56..58].copy_from_slice(&d.peer.port().to_le_bytes());
    h[58..60].copy_from_slice(&d.local.port().to_le_bytes());
    h
}

/// A datagram read back from the record format (Unix sink or ring), borrowing its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub protocol: u8,
    pub endpoint: u32,
    pub received_ns: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub payload: &'a [u8],
}

/// Decodes one record.
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, String> {
    if bytes.len() < 4 {
        return Err(format!("{} bytes is shorter than a header", bytes.len()));
    }
    let version = u16::from_le_bytes([bytes[0], bytes[1]]);
    let header_len = usize::from(u16::from_le_bytes([bytes[2], bytes[3]]));
    if version != FORMAT_VERSION || header_len < HEADER_LEN || bytes.len() < header_len {
        return Err(format!("format version {version} with a {header_len}-byte header is not ours (version {FORMAT_VERSION})"));
    }
    let family = bytes[5];
    let addr = |at: usize| -> IpAddr {
        let raw: [u8; 16] = bytes[at..at + 16].try_into().expect("16 bytes");
        if family == 4 {
            IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(raw))
        }
    };
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    Ok(Record {
        protocol: bytes[4],
        endpoint: u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")),
        received_ns: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
        peer: SocketAddr::new(addr(24), u16_at(56)),
        local: SocketAddr::new(addr(40), u16_at(58)),
        payload: &bytes[header_len..],
    })
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
        for bad in [
            "",
            "unix:",
            "file:/x",
            "counter",
            "ring:1000",
            "ring:4",
            "ring:x",
        ] {
            assert!(bad.parse::<SinkSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn header_round_trips() {
        let d = Datagram {
            protocol: 17,
            peer: "[2001:2::1]:40000".parse().unwrap(),
            local: "[2001:2::2]:53".parse().unwrap(),
            payload: b"query",
        };
        let at = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let mut wire = encode_header(9, &d, at).to_vec();
        wire.extend_from_slice(d.payload);
        let back = decode(&wire).unwrap();
        assert_eq!(back.endpoint, 9);
        assert_eq!((back.peer, back.local), (d.peer, d.local));
        assert_eq!(back.payload, b"query");
        assert_eq!(back.received_ns, 1_700_000_000_123_456_789);
        assert!(decode(&wire[..10]).is_err());
    }

    #[test]
    fn unix_sink_delivers_and_reports_a_full_buffer() {
        let dir = std::env::temp_dir().join(format!("demux-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).unwrap();
        let (sink, _) = Sink::open(&SinkSpec::Unix(path.clone())).unwrap();
        let d = Datagram {
            protocol: 17,
            peer: "198.18.0.1:1".parse().unwrap(),
            local: "198.18.0.2:2".parse().unwrap(),
            payload: &[7; 1000],
        };
        assert_eq!(sink.deliver(3, &d, &[], SystemTime::now()), Ok(()));
        let mut buf = [0u8; 2048];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(decode(&buf[..n]).unwrap().payload, [7; 1000]);
        // Nobody reads: the buffer fills and the sink says so instead of blocking.
        let outcome = (0..10_000)
            .map(|_| sink.deliver(3, &d, &[], SystemTime::now()))
            .find(|r| r.is_err());
        assert_eq!(outcome, Some(Err(DropReason::SinkFull)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
