//! The fast path's client side (feature `fast-path`): a client that holds a lease on every rx
//! queue of an interface (see "The fast path" in docs/ARCHITECTURE.md) reads the queues'
//! AF_XDP rings itself, with no daemon thread between the kernel and it.
//!
//! For each queue the daemon hands over an AF_XDP socket, opened but not bound, and a read-only
//! descriptor of its UMEM (a memfd). [`FastPath::open`] maps the socket's rx and fill rings
//! (the kernel maps them only before the bind) and the UMEM, and gives every frame to the fill
//! ring; the daemon then binds the socket and steers the queue to it. [`FastPath::receive`]
//! reads rx descriptors, checks each frame as the daemon's worker would (the metadata's
//! version and endpoint, the checksums, as the kernel does), hands the payload and the sender
//! to the caller as a view into the UMEM, and gives the frame back to the fill ring right
//! after: a client holds no frame between two calls, and one that stops reading fills only its
//! own queues' rings (the kernel drops what does not fit: `rx_ring_full`, its traffic alone).

use std::{
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::atomic::Ordering::{Acquire, Relaxed, Release},
    time::SystemTime,
};

use demux_common::{binding::PROTO_TCP, meta::PacketMeta};
use thiserror::Error;

use crate::{
    binding::Protocol,
    checksum,
    datagram::Datagram,
    record::DatagramView,
    sys::{
        shm::Mapping,
        xdp::{mmap_offsets, RingOffsets},
    },
};

/// `struct xdp_desc`: addr u64 · len u32 · options u32.
const DESC: usize = 16;
/// The rx ring's mmap offset (`XDP_PGOFF_RX_RING`).
const RX_RING: u64 = libc::XDP_PGOFF_RX_RING as u64;
/// The fill ring's mmap offset (`XDP_UMEM_PGOFF_FILL_RING`).
const FILL_RING: u64 = libc::XDP_UMEM_PGOFF_FILL_RING;
/// The most frames per queue a lease may give (the daemon's own limit is lower).
const MAX_FRAMES: u32 = 1 << 20;

/// Why a lease's queues could not be mapped.
#[derive(Debug, Error)]
pub enum FastPathError {
    /// The answer does not describe queues this client can use.
    #[error("fast path: the daemon's answer is unusable: {0}")]
    Answer(String),
    /// A mapping or socket option failed.
    #[error("fast path: {step}: {source}")]
    Map {
        /// What was being done.
        step: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
}

/// One leased rx queue: its socket, rings and UMEM.
struct Queue {
    // Mappings before the socket: unmapped first.
    rx: Mapping,
    fill: Mapping,
    umem: Mapping,
    rx_offsets: RingOffsets,
    fill_offsets: RingOffsets,
    /// The next rx descriptor to read, and the next fill slot to write (free-running).
    rx_consumer: u32,
    fill_producer: u32,
    socket: OwnedFd,
}

/// The leased queues of one endpoint, and what it dropped.
pub struct FastPath {
    queues: Vec<Queue>,
    /// Ring entries per queue (a power of two), equal to the frames of its UMEM.
    frames: u32,
    frame_size: u32,
    endpoint: u32,
    /// Frames of another endpoint (none while the lease rule holds) or without valid metadata.
    pub dropped_foreign: u64,
    /// Frames with a bad checksum (the kernel would have dropped them too).
    pub dropped_bad_checksum: u64,
}

impl FastPath {
    /// Maps the queues of a lease for endpoint `endpoint`: `fds` holds, per queue, its socket
    /// and its UMEM; every ring has `frames` entries and every frame `frame_size` bytes. Hands
    /// every frame to each fill ring.
    pub fn open(
        endpoint: u32,
        frames: u32,
        frame_size: u32,
        fds: Vec<OwnedFd>,
    ) -> Result<Self, FastPathError> {
        if !frames.is_power_of_two() || frames > MAX_FRAMES {
            return Err(FastPathError::Answer(format!(
                "{frames} frames per queue (a power of two up to {MAX_FRAMES})"
            )));
        }
        if !frame_size.is_power_of_two() || !(2048..=65536).contains(&frame_size) {
            return Err(FastPathError::Answer(format!(
                "{frame_size}-byte frames (a power of two from 2,048 to 65,536)"
            )));
        }
        if fds.is_empty() || !fds.len().is_multiple_of(2) {
            return Err(FastPathError::Answer(format!(
                "{} descriptors (a socket and a UMEM per queue)",
                fds.len()
            )));
        }
        let map = |step| move |source| FastPathError::Map { step, source };
        let mut queues = Vec::new();
        let mut fds = fds.into_iter();
        while let (Some(socket), Some(umem)) = (fds.next(), fds.next()) {
            let (rx_offsets, fill_offsets) =
                mmap_offsets(&socket).map_err(map("reading the ring offsets"))?;
            let n = frames as u64;
            let rx = Mapping::shared_at(
                &socket,
                (rx_offsets.desc + n * DESC as u64) as usize,
                RX_RING,
                true,
            )
            .map_err(map("mapping the rx ring"))?;
            let fill = Mapping::shared_at(
                &socket,
                (fill_offsets.desc + n * 8) as usize,
                FILL_RING,
                true,
            )
            .map_err(map("mapping the fill ring"))?;
            let umem = Mapping::shared_at(&umem, (n * u64::from(frame_size)) as usize, 0, false)
                .map_err(map("mapping the UMEM"))?;
            let mut queue = Queue {
                rx_consumer: rx.u32_at(rx_offsets.consumer as usize).load(Acquire),
                fill_producer: fill.u32_at(fill_offsets.producer as usize).load(Acquire),
                rx,
                fill,
                umem,
                rx_offsets,
                fill_offsets,
                socket,
            };
            for frame in 0..frames {
                queue.give(u64::from(frame) * u64::from(frame_size), frames);
            }
            queue.publish_fill();
            queues.push(queue);
        }
        Ok(Self {
            queues,
            frames,
            frame_size,
            endpoint,
            dropped_foreign: 0,
            dropped_bad_checksum: 0,
        })
    }

    /// The queues' sockets, to poll for readability (rx ring not empty).
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.queues.iter().map(|q| q.socket.as_fd())
    }

    /// Whether any queue's rx ring holds a frame.
    pub fn has_frames(&self) -> bool {
        self.queues.iter().any(|q| q.available() > 0)
    }

    /// Hands up to `max` received datagrams to `each`, queue by queue, and gives their frames
    /// back to the fill rings. Returns how many it handed over.
    pub fn receive(&mut self, max: usize, mut each: impl FnMut(DatagramView<'_>)) -> usize {
        let mut handed = 0;
        // The clock only for a batch (an empty look, as in a spin's last one, reads none).
        if max == 0 || !self.has_frames() {
            return 0;
        }
        let received_ns = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let (frames, frame_size, endpoint) =
            (self.frames, u64::from(self.frame_size), self.endpoint);
        for queue in &mut self.queues {
            let n = (queue.available() as usize).min(max - handed);
            for _ in 0..n {
                let at = queue.rx_offsets.desc as usize
                    + (queue.rx_consumer & (frames - 1)) as usize * DESC;
                let addr = queue.rx.u64_at(at).load(Relaxed);
                let len = u64::from(queue.rx.u32_at(at + 8).load(Relaxed));
                queue.rx_consumer = queue.rx_consumer.wrapping_add(1);
                let chunk = addr - addr % frame_size;
                let in_umem = chunk + frame_size <= queue.umem.len() as u64;
                let in_frame = in_umem
                    && addr - chunk >= PacketMeta::LEN as u64
                    && addr + len <= chunk + frame_size;
                if in_frame {
                    let meta = PacketMeta::read(
                        queue
                            .umem
                            .bytes(addr as usize - PacketMeta::LEN, PacketMeta::LEN),
                    )
                    .filter(|m| m.version == PacketMeta::VERSION && m.endpoint == endpoint);
                    let frame = queue.umem.bytes(addr as usize, len as usize);
                    match meta.and_then(|meta| Some((meta, Datagram::from_frame(frame, &meta)?))) {
                        None => self.dropped_foreign += 1,
                        Some((meta, datagram)) => match checksum::verify(frame, &meta) {
                            Ok(()) => {
                                each(DatagramView {
                                    protocol: match datagram.protocol {
                                        PROTO_TCP => Protocol::Tcp,
                                        _ => Protocol::Udp,
                                    },
                                    peer: datagram.peer,
                                    local: datagram.local,
                                    received_ns,
                                    payload: datagram.payload,
                                });
                                handed += 1;
                            }
                            Err(_) => self.dropped_bad_checksum += 1,
                        },
                    }
                } else {
                    self.dropped_foreign += 1;
                }
                // The kernel never hands out a chunk outside the UMEM; if it did, it is no frame.
                if in_umem {
                    queue.give(chunk, frames);
                }
            }
            if n > 0 {
                queue
                    .rx
                    .u32_at(queue.rx_offsets.consumer as usize)
                    .store(queue.rx_consumer, Release);
                queue.publish_fill();
            }
            if handed == max {
                break;
            }
        }
        handed
    }
}

impl Queue {
    /// Descriptors on the rx ring not read yet.
    fn available(&self) -> u32 {
        self.rx
            .u32_at(self.rx_offsets.producer as usize)
            .load(Acquire)
            .wrapping_sub(self.rx_consumer)
    }

    /// Writes `chunk` into the next fill slot (published by [`Queue::publish_fill`]). The fill
    /// ring has a slot for every frame of the UMEM, and a frame is given back only after the
    /// kernel took it from the ring, so a slot is always free.
    fn give(&mut self, chunk: u64, frames: u32) {
        let at = self.fill_offsets.desc as usize + (self.fill_producer & (frames - 1)) as usize * 8;
        self.fill.u64_at(at).store(chunk, Relaxed);
        self.fill_producer = self.fill_producer.wrapping_add(1);
    }

    fn publish_fill(&self) {
        self.fill
            .u32_at(self.fill_offsets.producer as usize)
            .store(self.fill_producer, Release);
    }
}

/// The fast path's per-frame cost in user space, measured on rings in plain memory.
#[cfg(all(test, feature = "testing"))]
mod cost_probe {
    use super::*;
    use crate::testing::frame::FrameSpec;
    use std::time::Instant;

    fn build(v6: bool, payload: usize) -> Vec<u8> {
        let (src, dst) = if v6 {
            ("[2001:2::1]:40000", "[2001:2::2]:7000")
        } else {
            ("198.18.0.1:40000", "198.18.0.2:7000")
        };
        FrameSpec::udp(
            src.parse().unwrap(),
            dst.parse().unwrap(),
            &vec![7u8; payload],
        )
        .build()
    }

    /// A measurement, not a speed test: the receive loop's own cost per frame, with the kernel's
    /// part (writing frames and descriptors) taken out, for valid v4 64-byte, v6 82-byte and v4
    /// 1,400-byte UDP frames (docs/BENCHMARKS.md, "Application path, part 4"). Prints ns per
    /// frame (best of 7 runs of 4,000,000); asserts only that every frame was delivered. Run:
    /// `cargo test --release -p demux-user --features testing --lib cost_probe -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore = "a measurement; run with --release --ignored --nocapture"]
    fn per_packet_cost() {
        const FRAMES: u32 = 256;
        const FSZ: u32 = 4096;
        const HEAD: usize = 256;
        const BATCH: usize = 64;
        for (name, v6, payload) in [
            ("v4 64B", false, 18usize),
            ("v6 82B", true, 16),
            ("v4 1400B", false, 1354),
        ] {
            let frame = build(v6, payload);
            let meta = PacketMeta {
                version: PacketMeta::VERSION,
                protocol: 17,
                family: if v6 { 6 } else { 4 },
                endpoint: 7,
                flow_hash: 0,
                l4_offset: if v6 { 54 } else { 34 },
                payload_offset: if v6 { 62 } else { 42 },
                l3_offset: 14,
                _pad: 0,
            };
            let mut meta_bytes = [0u8; PacketMeta::LEN];
            meta_bytes[0..2].copy_from_slice(&meta.version.to_ne_bytes());
            meta_bytes[2] = meta.protocol;
            meta_bytes[3] = meta.family;
            meta_bytes[4..8].copy_from_slice(&meta.endpoint.to_ne_bytes());
            meta_bytes[12..14].copy_from_slice(&meta.l4_offset.to_ne_bytes());
            meta_bytes[14..16].copy_from_slice(&meta.payload_offset.to_ne_bytes());
            meta_bytes[16..18].copy_from_slice(&meta.l3_offset.to_ne_bytes());
            let mut umem = Mapping::anonymous((FRAMES * FSZ) as usize).unwrap();
            let mut rx = Mapping::anonymous(128 + FRAMES as usize * DESC).unwrap();
            let fill = Mapping::anonymous(128 + FRAMES as usize * 8).unwrap();
            for i in 0..FRAMES as usize {
                let addr = i * FSZ as usize + HEAD;
                umem.as_mut_slice()[addr - PacketMeta::LEN..addr].copy_from_slice(&meta_bytes);
                umem.as_mut_slice()[addr..addr + frame.len()].copy_from_slice(&frame);
                let d = 128 + i * DESC;
                rx.as_mut_slice()[d..d + 8].copy_from_slice(&(addr as u64).to_ne_bytes());
                rx.as_mut_slice()[d + 8..d + 12]
                    .copy_from_slice(&(frame.len() as u32).to_ne_bytes());
            }
            let offsets = RingOffsets {
                producer: 0,
                consumer: 64,
                desc: 128,
            };
            let socket: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
            let mut fast = FastPath {
                queues: vec![Queue {
                    rx,
                    fill,
                    umem,
                    rx_offsets: offsets,
                    fill_offsets: offsets,
                    rx_consumer: 0,
                    fill_producer: 0,
                    socket,
                }],
                frames: FRAMES,
                frame_size: FSZ,
                endpoint: 7,
                dropped_foreign: 0,
                dropped_bad_checksum: 0,
            };
            let mut best = f64::MAX;
            let mut sink = 0u64;
            for _ in 0..7 {
                let n = 4_000_000u64;
                let start = Instant::now();
                let mut produced = fast.queues[0].rx_consumer;
                let mut got = 0u64;
                while got < n {
                    produced = produced.wrapping_add(BATCH as u32);
                    fast.queues[0].rx.u32_at(0).store(produced, Release);
                    got += fast.receive(256, |v| {
                        sink = sink.wrapping_add(
                            v.payload.len() as u64 + u64::from(v.peer.port()) + v.payload[0] as u64,
                        );
                    }) as u64;
                }
                best = best.min(start.elapsed().as_nanos() as f64 / got as f64);
            }
            assert_eq!(fast.dropped_foreign + fast.dropped_bad_checksum, 0);
            println!("PROBE {name}: {best:.1} ns/pkt (sink {sink})");
        }
    }
}
