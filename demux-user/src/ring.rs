//! A single-producer single-consumer ring in shared memory (a memfd), from the daemon's queue
//! worker to one client endpoint, and the eventfd that wakes a sleeping client.
//!
//! The daemon produces, the client consumes; neither makes a system call per datagram while the
//! other keeps up. The client sets `need_wakeup` before it sleeps on the eventfd; the daemon
//! writes the eventfd only when that flag is set (as AF_XDP's need-wakeup does), at most once
//! per batch ([`Producer::flush`]). A full ring drops the datagram (counted on the endpoint);
//! the producer never waits.
//!
//! **The client is not trusted.** The memfd is sealed against shrinking and growing before it
//! is handed over, so the daemon's mapping can never fault. The producer keeps its own producer
//! index and only ever writes the shared one; the consumer index it reads is untrusted: a value
//! that is not between the last one seen and the producer index counts as no progress. Slot
//! offsets come from the producer's own index alone, and every access is bounds-checked
//! ([`crate::sys::shm`]). A client that scribbles over the ring loses its own datagrams, no
//! more; one that sets `need_wakeup` forever costs one eventfd write per batch.
//!
//! ## Layout (version 2; little-endian; offsets in bytes)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `0x52584d44` ("DMXR") |
//! | 4 | 4 | layout version (2) |
//! | 8 | 4 | slots (a power of two) |
//! | 12 | 4 | slot size in bytes (a multiple of 64) |
//! | 64 | 8 | producer index: slots published, ever (written by the daemon only, never read back) |
//! | 128 | 8 | consumer index: slots released, ever (written by the client only; wrapping) |
//! | 192 | 4 | need_wakeup: 1 while the client sleeps or is about to |
//! | 256 | slots × slot size | the slots; index `i` is slot `i % slots` |
//!
//! A record starts at a slot with a `u32` record length and 4 reserved bytes, then the record:
//! the 64-byte header of the Unix datagram format (`crate::sink`) followed by the payload. A
//! record longer than one slot takes as many consecutive slots as it needs (`8 + length`
//! rounded up to slots, at most a quarter of the ring), never wrapping past the last slot:
//! when it would, the producer writes the length `0xffff_ffff` (skip) in the current slot and
//! the record starts at slot 0. So with the default 2,048-byte slots a datagram of any size the
//! queue's UMEM frame holds (3,840 bytes of frame) reaches the client, and small datagrams still
//! take one slot each. The producer fills the slots, then publishes them with a release store
//! of the producer index; the consumer reads the producer index with acquire, reads the
//! records, and releases their slots with a release store of the consumer index, so no slot is
//! ever read while being written. Version 1 (one slot per record, longer records dropped) is
//! refused.
#![deny(missing_docs)]

use std::{
    fs::File,
    io::{self, Read, Write},
    os::fd::OwnedFd,
    sync::atomic::{fence, Ordering},
};

use thiserror::Error;

use crate::sys::{self, shm::Mapping};

/// The first word of every ring (`DMXR` little-endian).
pub const MAGIC: u32 = 0x52584d44;
/// The layout version in the header.
pub const VERSION: u32 = 2;
/// Bytes of the header before the first slot.
pub const HEADER: usize = 256;
const PRODUCER: usize = 64;
const CONSUMER: usize = 128;
const NEED_WAKEUP: usize = 192;
/// Bytes before the record in its first slot.
const SLOT_PREFIX: usize = 8;
/// The length that says: no record here, the next one starts at slot 0.
const SKIP: u32 = u32::MAX;

/// Default ring geometry: 4,096 slots of 2,048 bytes (8 MiB); a record of up to 1,976 bytes of
/// payload takes one slot, a longer one several.
pub const DEFAULT_SLOTS: u32 = 4096;
/// Default slot size in bytes.
pub const DEFAULT_SLOT_SIZE: u32 = 2048;

/// A ring that cannot be created or opened.
#[derive(Debug, Error)]
pub enum RingError {
    /// A system call on the memfd or eventfd failed.
    #[error("ring: {0}")]
    Io(#[from] io::Error),
    /// Not a demux ring.
    #[error("ring: not a demux ring (magic {0:#x})")]
    Magic(u32),
    /// Another layout version.
    #[error("ring: layout version {found}, but this build reads version {VERSION}; use a client built with the daemon's version")]
    Version {
        /// The version in the header.
        found: u32,
    },
    /// A geometry this build does not accept.
    #[error("ring: {slots} slots of {slot_size} bytes is not a valid geometry (slots a power of two, slot size a multiple of 64 from 128 to 65,536)")]
    Geometry {
        /// Slots in the header.
        slots: u32,
        /// Slot size in the header.
        slot_size: u32,
    },
    /// A handed-over memfd without the seals that keep its size fixed.
    #[error("ring: the memfd's seals are {seals:#x}; a ring is sealed against shrinking, growing and new seals")]
    Seals {
        /// `F_GET_SEALS`.
        seals: i32,
    },
    /// A handed-over wakeup descriptor that is not an eventfd.
    #[error("ring: the wakeup descriptor is not an eventfd")]
    NotEventfd,
    /// The memory is not as large as the header says.
    #[error("ring: the shared memory is {actual} bytes, the header says {expected}")]
    Size {
        /// The memfd's size.
        actual: u64,
        /// What the header implies.
        expected: u64,
    },
}

fn check_geometry(slots: u32, slot_size: u32) -> Result<(), RingError> {
    if !slots.is_power_of_two()
        || !slot_size.is_multiple_of(64)
        || !(128..=65_536).contains(&slot_size)
        || slots > 1 << 20
    {
        return Err(RingError::Geometry { slots, slot_size });
    }
    Ok(())
}

fn ring_len(slots: u32, slot_size: u32) -> usize {
    HEADER + slots as usize * slot_size as usize
}

/// Where slot `index` (a free-running index) starts. Slots hold a 4-aligned length prefix.
fn slot_offset(index: u64, slots: u32, slot_size: u32) -> usize {
    HEADER + (index % u64::from(slots)) as usize * slot_size as usize
}

/// The most slots one record may take: a quarter of the ring, at least one.
fn max_span(slots: u32) -> u64 {
    u64::from((slots / 4).max(1))
}

/// Slots a record of `len` bytes takes (its prefix included).
fn span(len: usize, slot_size: u32) -> u64 {
    (SLOT_PREFIX + len).div_ceil(slot_size as usize) as u64
}

/// The daemon's end: writes records, wakes the client when it asked.
pub struct Producer {
    map: Mapping,
    /// The memfd behind `map`, kept to hand the ring over to the next daemon ([`Producer::handover`]).
    memory: File,
    slots: u32,
    slot_size: u32,
    wake: File,
    /// Records published, ever: the daemon's own count, never read from the mapping.
    produced: u64,
    /// The last plausible consumer index, refreshed only when the ring looks full.
    consumer: u64,
    /// Records published since the last [`Producer::flush`].
    unflushed: bool,
}

/// A ring's shape and position, as a daemon hands it over to the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Slots (a power of two).
    pub slots: u32,
    /// Bytes per slot.
    pub slot_size: u32,
    /// The producer index: slots published, ever.
    pub produced: u64,
}

/// The file descriptors a client needs: the ring's memfd and the wakeup eventfd.
pub struct ClientFds {
    /// The ring's shared memory.
    pub memory: OwnedFd,
    /// The eventfd the producer writes to wake a sleeping consumer.
    pub wake: OwnedFd,
}

impl Producer {
    /// Creates a ring and returns the producer and the descriptors for the client.
    pub fn create(slots: u32, slot_size: u32) -> Result<(Self, ClientFds), RingError> {
        check_geometry(slots, slot_size)?;
        let len = ring_len(slots, slot_size);
        let memory = sys::memfd(c"demux-ring")?;
        memory.set_len(len as u64)?;
        sys::seal_size(&memory)?;
        let wake = sys::eventfd()?;
        let map = Mapping::shared(&memory, len)?;
        map.u32_at(0).store(MAGIC, Ordering::Relaxed);
        map.u32_at(4).store(VERSION, Ordering::Relaxed);
        map.u32_at(8).store(slots, Ordering::Relaxed);
        map.u32_at(12).store(slot_size, Ordering::Release);
        let fds = ClientFds {
            memory: OwnedFd::from(memory.try_clone()?),
            wake: OwnedFd::from(wake.try_clone()?),
        };
        Ok((
            Self {
                map,
                memory,
                slots,
                slot_size,
                wake,
                produced: 0,
                consumer: 0,
                unflushed: false,
            },
            fds,
        ))
    }

    /// Takes over a ring a previous daemon created and handed over (the systemd fd store):
    /// `slots`, `slot_size` and `produced` come from its own state record, never from the
    /// shared memory, which the client may have written. The memfd must be sealed against
    /// shrinking, growing and new seals and be exactly as large as the geometry says (so the
    /// mapping can never fault); `wake` must be an eventfd. The consumer index is read as
    /// untrusted, as always: until it proves progress, the ring counts as full.
    pub fn resume(
        memory: OwnedFd,
        wake: OwnedFd,
        slots: u32,
        slot_size: u32,
        produced: u64,
    ) -> Result<Self, RingError> {
        check_geometry(slots, slot_size)?;
        let memory = File::from(memory);
        let seals = sys::seals(&memory)?;
        let needed = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        if seals & needed != needed {
            return Err(RingError::Seals { seals });
        }
        let len = ring_len(slots, slot_size);
        let actual = memory.metadata()?.len();
        if actual != len as u64 {
            return Err(RingError::Size {
                actual,
                expected: len as u64,
            });
        }
        if !sys::is_eventfd(&wake)? {
            return Err(RingError::NotEventfd);
        }
        let map = Mapping::shared(&memory, len)?;
        Ok(Self {
            map,
            memory,
            slots,
            slot_size,
            wake: File::from(wake),
            produced,
            consumer: produced.wrapping_sub(u64::from(slots)),
            unflushed: false,
        })
    }

    /// What the next daemon needs to [`Producer::resume`] this ring: copies of its memfd and
    /// eventfd, its geometry and the producer index.
    pub fn handover(&self) -> io::Result<(ClientFds, Geometry)> {
        Ok((
            ClientFds {
                memory: OwnedFd::from(self.memory.try_clone()?),
                wake: OwnedFd::from(self.wake.try_clone()?),
            },
            Geometry {
                slots: self.slots,
                slot_size: self.slot_size,
                produced: self.produced,
            },
        ))
    }

    /// The largest record the ring takes (several slots' worth).
    pub fn max_record(&self) -> usize {
        max_span(self.slots) as usize * self.slot_size as usize - SLOT_PREFIX
    }

    /// Publishes one record made of `parts`; `false` (nothing written) when the ring is full or
    /// the record is longer than [`Producer::max_record`]. Call [`Producer::flush`] after a
    /// batch to wake the client if it sleeps.
    pub fn push(&mut self, parts: &[&[u8]]) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > self.max_record() {
            return false;
        }
        let slots = u64::from(self.slots);
        let need = span(len, self.slot_size);
        // A record never wraps: the slots left before the end are skipped when it would.
        let at = self.produced % slots;
        let skip = if at + need > slots { slots - at } else { 0 };
        if self.produced.wrapping_sub(self.consumer) + skip + need > slots {
            // Untrusted: only a value between the last one seen and `produced` is progress.
            let seen = self.map.u64_at(CONSUMER).load(Ordering::Acquire);
            if seen.wrapping_sub(self.consumer) <= self.produced.wrapping_sub(self.consumer) {
                self.consumer = seen;
            }
            if self.produced.wrapping_sub(self.consumer) + skip + need > slots {
                return false;
            }
        }
        // The consumer has released these slots (index check above); they do not wrap.
        if skip > 0 {
            let slot = slot_offset(self.produced, self.slots, self.slot_size);
            self.map.u32_at(slot).store(SKIP, Ordering::Relaxed);
            self.produced = self.produced.wrapping_add(skip);
        }
        let slot = slot_offset(self.produced, self.slots, self.slot_size);
        self.map.u32_at(slot).store(len as u32, Ordering::Relaxed);
        self.map.write(slot + SLOT_PREFIX, parts);
        self.produced = self.produced.wrapping_add(need);
        self.map
            .u64_at(PRODUCER)
            .store(self.produced, Ordering::Release);
        self.unflushed = true;
        true
    }

    /// Wakes the client if it asked and records arrived since the last flush: at most one
    /// eventfd write per call, however the client sets `need_wakeup`.
    pub fn flush(&mut self) {
        if !std::mem::take(&mut self.unflushed) {
            return;
        }
        // Pairs with the client's fence between setting need_wakeup and re-checking the ring.
        fence(Ordering::SeqCst);
        if self.map.u32_at(NEED_WAKEUP).load(Ordering::Relaxed) != 0 {
            self.wake();
        }
    }

    fn wake(&self) {
        // EAGAIN (the counter is saturated) is harmless: the client is woken either way.
        let _ = (&self.wake).write(&1u64.to_ne_bytes());
    }
}

/// The client's end: reads records without system calls while there are any.
pub struct Consumer {
    map: Mapping,
    slots: u32,
    slot_size: u32,
    wake: File,
    /// Cached producer index.
    producer: u64,
}

impl Consumer {
    /// Maps a ring received from the daemon, checking its magic, version and geometry.
    pub fn open(fds: ClientFds) -> Result<Self, RingError> {
        let actual = File::from(fds.memory.try_clone()?).metadata()?.len();
        if actual < HEADER as u64 {
            return Err(RingError::Size {
                actual,
                expected: HEADER as u64,
            });
        }
        let header = Mapping::shared(&fds.memory, HEADER)?;
        let magic = header.u32_at(0).load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(RingError::Magic(magic));
        }
        let found = header.u32_at(4).load(Ordering::Relaxed);
        if found != VERSION {
            return Err(RingError::Version { found });
        }
        let (slots, slot_size) = (
            header.u32_at(8).load(Ordering::Relaxed),
            header.u32_at(12).load(Ordering::Relaxed),
        );
        check_geometry(slots, slot_size)?;
        let expected = ring_len(slots, slot_size) as u64;
        if actual != expected {
            return Err(RingError::Size { actual, expected });
        }
        drop(header);
        let map = Mapping::shared(&fds.memory, expected as usize)?;
        Ok(Self {
            map,
            slots,
            slot_size,
            wake: File::from(fds.wake),
            producer: 0,
        })
    }

    /// No record waiting.
    pub fn is_empty(&mut self) -> bool {
        self.available() == 0
    }

    /// Slots published and not yet released, as of the last look at the producer index (at most
    /// a ring's worth).
    fn available(&mut self) -> u64 {
        let consumer = self.map.u64_at(CONSUMER).load(Ordering::Relaxed);
        self.available_from(consumer)
    }

    fn available_from(&mut self, consumer: u64) -> u64 {
        if self.producer == consumer {
            self.producer = self.map.u64_at(PRODUCER).load(Ordering::Acquire);
        }
        self.producer
            .wrapping_sub(consumer)
            .min(u64::from(self.slots))
    }

    /// Calls `each` with up to `max` records, then releases their slots. Returns how many.
    pub fn consume(&mut self, max: usize, mut each: impl FnMut(&[u8])) -> usize {
        let slots = u64::from(self.slots);
        let start = self.map.u64_at(CONSUMER).load(Ordering::Relaxed);
        let mut consumer = start;
        let mut n = 0;
        while n < max {
            let available = self.available_from(consumer);
            if available == 0 {
                break;
            }
            // Published by the producer (acquire above), not released yet. The lengths are the
            // producer's, but every span is bounded by what was published and by the ring's
            // end, so a corrupt ring cannot make this read outside the slots.
            let at = consumer % slots;
            let slot = slot_offset(consumer, self.slots, self.slot_size);
            let len = self.map.u32_at(slot).load(Ordering::Relaxed);
            if len == SKIP {
                consumer = consumer.wrapping_add((slots - at).min(available));
                continue;
            }
            let need = span(len as usize, self.slot_size)
                .min(max_span(self.slots))
                .min(slots - at)
                .min(available)
                .max(1);
            let len = (len as usize).min(need as usize * self.slot_size as usize - SLOT_PREFIX);
            each(self.map.bytes(slot + SLOT_PREFIX, len));
            consumer = consumer.wrapping_add(need);
            n += 1;
        }
        if consumer != start {
            self.map.u64_at(CONSUMER).store(consumer, Ordering::Release);
        }
        n
    }

    /// Announces that the client is about to sleep; `true` if records arrived meanwhile (do not
    /// sleep then). Pair with [`Consumer::stop_waiting`].
    pub fn prepare_to_sleep(&mut self) -> bool {
        self.map.u32_at(NEED_WAKEUP).store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.available() > 0
    }

    /// Clears the wakeup request and drains the eventfd, after a sleep or a change of mind.
    pub fn stop_waiting(&mut self) {
        self.map.u32_at(NEED_WAKEUP).store(0, Ordering::Relaxed);
        // Drains the non-blocking eventfd; EAGAIN when it is zero already.
        let _ = (&self.wake).read(&mut [0u8; 8]);
    }

    /// Clears the wakeup request without reading the eventfd (no system call): after a sleep
    /// that something else ended, or a change of mind for frames the daemon does not announce.
    /// A write to the eventfd keeps it readable, so the next sleep returns at once.
    pub fn cancel_wait(&mut self) {
        self.map.u32_at(NEED_WAKEUP).store(0, Ordering::Relaxed);
    }

    /// The eventfd to wait on (readable once the daemon wrote after `prepare_to_sleep`).
    pub fn wake_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.wake.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair(slots: u32, slot_size: u32) -> (Producer, Consumer) {
        let (producer, fds) = Producer::create(slots, slot_size).unwrap();
        (producer, Consumer::open(fds).unwrap())
    }

    fn drain(consumer: &mut Consumer) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        consumer.consume(usize::MAX, |r| out.push(r.to_vec()));
        out
    }

    #[test]
    fn wraps_around_and_reports_full() {
        let (mut p, mut c) = pair(4, 128);
        for round in 0..10u8 {
            for i in 0..4u8 {
                assert!(p.push(&[&[round, i]]), "round {round} slot {i}");
            }
            assert!(!p.push(&[b"x"]), "a fifth record fit in four slots");
            let got = drain(&mut c);
            assert_eq!(got, (0..4u8).map(|i| vec![round, i]).collect::<Vec<_>>());
        }
        assert!(
            !p.push(&[&[0u8; 121]]),
            "a record longer than a quarter of 4 slots"
        );
        assert!(p.push(&[&[0u8; 120]]));
    }

    #[test]
    fn long_records_span_slots_and_never_wrap() {
        // 16 slots of 128 bytes: records of up to 4 slots (504 bytes).
        let (mut p, mut c) = pair(16, 128);
        assert_eq!(p.max_record(), 4 * 128 - 8);
        assert!(
            !p.push(&[&[0u8; 505]]),
            "a record longer than a quarter of the ring"
        );
        let record = |round: usize, len: usize| -> Vec<u8> {
            (0..len).map(|j| (round * 7 + j) as u8).collect()
        };
        // Lengths that leave every possible remainder before the ring's end.
        let lens = [300, 120, 504, 121, 0, 250, 380, 504, 7, 200];
        for round in 0..40 {
            let len = lens[round % lens.len()];
            assert!(p.push(&[&record(round, len)]), "round {round}");
            let got = drain(&mut c);
            assert_eq!(got, vec![record(round, len)], "round {round}");
        }
        // A full ring refuses a record that needs more slots than are free: three or four
        // 4-slot records fit in 16 slots, depending on the skip before the ring's end.
        let fitted = (0..10).take_while(|_| p.push(&[&[1u8; 504]])).count();
        assert!(
            (3..=4).contains(&fitted),
            "{fitted} four-slot records in 16 slots"
        );
        assert_eq!(drain(&mut c), vec![vec![1u8; 504]; fitted]);
        assert!(p.push(&[&[2u8; 504]]), "room again after the drain");
    }

    #[test]
    fn refuses_bad_headers() {
        let (_p, fds) = Producer::create(8, 128).unwrap();
        let map = Mapping::shared(&fds.memory, HEADER).unwrap();
        map.u32_at(4).store(1, Ordering::Relaxed);
        let error = Consumer::open(ClientFds {
            memory: fds.memory.try_clone().unwrap(),
            wake: fds.wake.try_clone().unwrap(),
        })
        .err()
        .expect("version 1 accepted");
        assert!(error.to_string().contains("version 1"), "{error}");
        map.u32_at(0).store(7, Ordering::Relaxed);
        assert!(matches!(Consumer::open(fds), Err(RingError::Magic(7))));
        assert!(Producer::create(6, 128).is_err() && Producer::create(8, 100).is_err());
    }

    #[test]
    fn the_client_cannot_resize_the_sealed_memory() {
        let (_p, fds) = Producer::create(8, 128).unwrap();
        let memory = File::from(fds.memory);
        let len = memory.metadata().unwrap().len();
        for size in [0, 1, len + 4096] {
            let error = memory.set_len(size).expect_err("resized a sealed ring");
            assert_eq!(error.raw_os_error(), Some(libc::EPERM), "set_len({size})");
        }
    }

    #[test]
    fn a_client_asleep_forever_costs_one_wakeup_per_flush() {
        let (mut p, mut c) = pair(64, 128);
        assert!(!c.prepare_to_sleep());
        let mut counter = [0u8; 8];
        for _ in 0..3 {
            for _ in 0..10 {
                assert!(p.push(&[b"x"]));
            }
            p.flush();
            p.flush();
            // The eventfd counter is the number of writes since the last read.
            (&File::from(c.wake_fd().try_clone_to_owned().unwrap()))
                .read_exact(&mut counter)
                .unwrap();
            assert_eq!(u64::from_ne_bytes(counter), 1);
            drain(&mut c);
        }
    }

    #[test]
    fn a_scribbling_client_cannot_move_the_producer_out_of_its_ring() {
        let (mut p, fds) = Producer::create(8, 128).unwrap();
        let len = ring_len(8, 128);
        let client = Mapping::shared(&fds.memory, len).unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..2_000 {
            // Random bytes over random places, the indices and the flag included.
            for _ in 0..16 {
                let at = (random() as usize) % (len - 8);
                client.write(at, &[&random().to_ne_bytes()]);
            }
            client.u64_at(CONSUMER).store(random(), Ordering::Relaxed);
            client
                .u32_at(NEED_WAKEUP)
                .store(random() as u32, Ordering::Relaxed);
            // Pushing never panics, and never publishes more than a ring's worth past the
            // last plausible consumer index.
            let accepted = (0..20).filter(|_| p.push(&[&[round as u8; 100]])).count();
            p.flush();
            assert!(
                accepted <= 8,
                "round {round}: {accepted} records in 8 slots"
            );
            assert!(p.produced.wrapping_sub(p.consumer) <= 8);
        }
        // A well-behaved consumer index still makes progress afterwards.
        client.u64_at(CONSUMER).store(p.produced, Ordering::Release);
        assert!(p.push(&[b"after"]));
    }

    #[test]
    fn wakes_only_when_asked() {
        let (mut p, mut c) = pair(8, 128);
        let readable = |c: &Consumer| {
            crate::sys::poll(&mut [crate::sys::pollfd(&c.wake_fd(), libc::POLLIN)], 0).unwrap() == 1
        };
        assert!(p.push(&[b"a"]));
        p.flush();
        assert!(!readable(&c), "woken without asking");
        drain(&mut c);
        assert!(!c.prepare_to_sleep());
        assert!(p.push(&[b"b"]));
        p.flush();
        assert!(readable(&c), "not woken after asking");
        c.stop_waiting();
        assert!(!readable(&c));
        assert_eq!(drain(&mut c), vec![b"b".to_vec()]);
    }

    proptest! {
        /// A producer and a consumer thread: every record arrives whole, in order, or was
        /// refused as full; none is torn, lost or duplicated.
        #[test]
        fn concurrent_records_arrive_whole_and_in_order(sizes in proptest::collection::vec(0usize..500, 1..400)) {
            let (mut p, mut c) = pair(16, 256);
            let total = sizes.len();
            let sizes2 = sizes.clone();
            let producer = std::thread::spawn(move || {
                let mut pushed = Vec::new();
                for (i, size) in sizes2.iter().enumerate() {
                    let record: Vec<u8> = (0..*size).map(|j| (i + j) as u8).collect();
                    let header = (i as u32).to_le_bytes();
                    // Retry a bounded number of times when full, so most records get through.
                    for _ in 0..1000 {
                        if p.push(&[&header, &record]) {
                            pushed.push(i);
                            break;
                        }
                        std::thread::yield_now();
                    }
                }
                pushed
            });
            let mut seen = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                c.consume(usize::MAX, |r| {
                    let i = u32::from_le_bytes(r[..4].try_into().unwrap()) as usize;
                    let body = &r[4..];
                    assert_eq!(body.len(), sizes[i], "record {i} has the wrong length");
                    assert!(body.iter().enumerate().all(|(j, b)| *b == (i + j) as u8), "record {i} is torn");
                    seen.push(i);
                });
                if producer.is_finished() && c.available() == 0 {
                    break;
                }
            }
            let pushed = producer.join().unwrap();
            c.consume(usize::MAX, |r| seen.push(u32::from_le_bytes(r[..4].try_into().unwrap()) as usize));
            prop_assert_eq!(&seen, &pushed);
            prop_assert!(pushed.len() <= total);
        }
    }
}
