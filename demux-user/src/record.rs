//! The datagram record: how one received datagram travels from the daemon to its application,
//! through a `unix:` sink (one record per Unix datagram) or a shared-memory ring (one record
//! per slot, [`crate::ring`]). The daemon encodes ([`encode_header`]); the client library
//! decodes ([`decode`]) into a [`DatagramView`].
//!
//! ## Format (version 1)
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
#![deny(missing_docs)]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{SystemTime, UNIX_EPOCH},
};

use demux_common::binding::{PROTO_TCP, PROTO_UDP};
use thiserror::Error;

use crate::binding::{addr16, Protocol};

/// Bytes in front of the payload.
pub const HEADER_LEN: usize = 64;
/// The format version in the first two bytes.
pub const FORMAT_VERSION: u16 = 1;

/// A received datagram, borrowing its payload from the ring slot or buffer it was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatagramView<'a> {
    /// UDP or TCP.
    pub protocol: Protocol,
    /// The sender's socket address.
    pub peer: SocketAddr,
    /// The local socket address it was sent to.
    pub local: SocketAddr,
    /// Receive time, ns since the Unix epoch (CLOCK_REALTIME).
    pub received_ns: u64,
    /// UDP: the payload. TCP: the whole segment, header included.
    pub payload: &'a [u8],
}

/// A record that cannot be decoded.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RecordError {
    /// Fewer bytes than the header needs.
    #[error("record: {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    Short {
        /// Bytes present.
        len: usize,
    },
    /// Another format version or header length.
    #[error("record: format version {version} with a {header_len}-byte header is not version {FORMAT_VERSION}; update the client library to the daemon's version")]
    Version {
        /// The version found.
        version: u16,
        /// The header length found.
        header_len: usize,
    },
    /// Neither UDP nor TCP.
    #[error("record: IP protocol {0} is neither UDP (17) nor TCP (6)")]
    Protocol(u8),
    /// Neither 4 nor 6.
    #[error("record: address family {0} is neither 4 nor 6")]
    Family(u8),
}

/// The header of one record, for `endpoint`, received at `received`.
pub fn encode_header(
    endpoint: u32,
    protocol: u8,
    peer: SocketAddr,
    local: SocketAddr,
    received: SystemTime,
) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..2].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[2..4].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
    h[4] = protocol;
    h[5] = if peer.is_ipv4() { 4 } else { 6 };
    h[8..12].copy_from_slice(&endpoint.to_le_bytes());
    let ns = received
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| t.as_nanos() as u64);
    h[16..24].copy_from_slice(&ns.to_le_bytes());
    h[24..40].copy_from_slice(&addr16(peer.ip()));
    h[40..56].copy_from_slice(&addr16(local.ip()));
    h[56..58].copy_from_slice(&peer.port().to_le_bytes());
    h[58..60].copy_from_slice(&local.port().to_le_bytes());
    h
}

/// Decodes one record (header and payload).
pub fn decode(bytes: &[u8]) -> Result<DatagramView<'_>, RecordError> {
    if bytes.len() < HEADER_LEN {
        return Err(RecordError::Short { len: bytes.len() });
    }
    let version = u16::from_le_bytes([bytes[0], bytes[1]]);
    let header_len = usize::from(u16::from_le_bytes([bytes[2], bytes[3]]));
    if version != FORMAT_VERSION || header_len < HEADER_LEN || bytes.len() < header_len {
        return Err(RecordError::Version {
            version,
            header_len,
        });
    }
    let protocol = match bytes[4] {
        PROTO_UDP => Protocol::Udp,
        PROTO_TCP => Protocol::Tcp,
        other => return Err(RecordError::Protocol(other)),
    };
    let family = bytes[5];
    let addr = |at: usize| -> Result<IpAddr, RecordError> {
        let raw: [u8; 16] = bytes[at..at + 16].try_into().expect("16 bytes");
        match family {
            4 => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(raw))),
            other => Err(RecordError::Family(other)),
        }
    };
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    Ok(DatagramView {
        protocol,
        received_ns: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
        peer: SocketAddr::new(addr(24)?, u16_at(56)),
        local: SocketAddr::new(addr(40)?, u16_at(58)),
        payload: &bytes[header_len..],
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn header_round_trips() {
        let peer: SocketAddr = "[2001:2::1]:40000".parse().unwrap();
        let local: SocketAddr = "[2001:2::2]:53".parse().unwrap();
        let at = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let mut wire = encode_header(9, 17, peer, local, at).to_vec();
        assert_eq!(u32::from_le_bytes(wire[8..12].try_into().unwrap()), 9);
        wire.extend_from_slice(b"query");
        let back = decode(&wire).unwrap();
        assert_eq!((back.peer, back.local), (peer, local));
        assert_eq!(back.protocol, Protocol::Udp);
        assert_eq!(back.payload, b"query");
        assert_eq!(back.received_ns, 1_700_000_000_123_456_789);
        assert_eq!(decode(&wire[..10]), Err(RecordError::Short { len: 10 }));
        wire[4] = 1;
        assert_eq!(decode(&wire), Err(RecordError::Protocol(1)));
        wire[4] = 6;
        wire[5] = 5;
        assert_eq!(decode(&wire), Err(RecordError::Family(5)));
        wire[0] = 2;
        assert!(matches!(
            decode(&wire),
            Err(RecordError::Version { version: 2, .. })
        ));
    }
}
