//! Where an endpoint's datagrams go: a shared-memory ring to the client that owns the endpoint
//! (`crate::ring`, records in the format below), a Unix datagram socket (the format below), a
//! counter (for benchmarks), or a pcap file (for Wireshark).
//!
//! The record format of the `unix:` sink and the ring is [`crate::record`].

use std::{
    fs::File,
    io::{self, BufWriter},
    os::unix::net::UnixDatagram,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    DataLink,
};
use thiserror::Error;

use crate::control::SinkSpec;
use crate::{
    datagram::Datagram,
    record::encode_header,
    ring::{ClientFds, Producer},
};

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

    /// Ends a batch of deliveries: wakes a ring's client if it sleeps (once per batch).
    pub fn flush(&self) {
        if let Sink::Ring(producer) = self {
            if let Ok(mut producer) = producer.lock() {
                producer.flush();
            }
        }
    }

    /// Delivers one datagram; `frame` is the whole Ethernet frame, for pcap. A ring's client is
    /// woken by the next [`Sink::flush`].
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
                let header = encode_header(
                    endpoint,
                    datagram.protocol,
                    datagram.peer,
                    datagram.local,
                    received,
                );
                let mut producer = producer.lock().map_err(|_| DropReason::SinkError)?;
                if producer.push(&[&header, datagram.payload]) {
                    Ok(())
                } else {
                    Err(DropReason::SinkFull)
                }
            }
            Sink::Unix(socket) => {
                let header = encode_header(
                    endpoint,
                    datagram.protocol,
                    datagram.peer,
                    datagram.local,
                    received,
                );
                let parts = [
                    io::IoSlice::new(&header),
                    io::IoSlice::new(datagram.payload),
                ];
                crate::sys::send_dontwait(socket, &parts)
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(crate::record::decode(&buf[..n]).unwrap().payload, [7; 1000]);
        // Nobody reads: the buffer fills and the sink says so instead of blocking.
        let outcome = (0..10_000)
            .map(|_| sink.deliver(3, &d, &[], SystemTime::now()))
            .find(|r| r.is_err());
        assert_eq!(outcome, Some(Err(DropReason::SinkFull)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
