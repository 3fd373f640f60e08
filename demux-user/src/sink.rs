//! Where an endpoint's datagrams go: a shared-memory ring to the client that owns the endpoint
//! (`crate::ring`, records in the format below), a Unix datagram socket (the format below), a
//! counter (for benchmarks), or a pcap file (for Wireshark).
//!
//! The record format of the `unix:` sink and the ring is [`crate::record`].
//!
//! **Who opens what.** The daemon opens no path for a caller: a caller's `pcap:` file and
//! `unix:` socket are opened by the caller, with its own credentials, and passed with the bind
//! request ([`CallerSink`]); [`Sink::passed`] checks what it got (a regular file open for
//! writing; a connected `SOCK_DGRAM` `AF_UNIX` socket) and refuses anything else with the
//! field named. Only the daemon's own endpoints (the config file, root's) are opened by path
//! ([`Sink::open`]): `O_NOFOLLOW`, `O_NONBLOCK`, and regular files only.
//!
//! **Whose records.** A `unix:` sink's datagrams carry the endpoint owner's uid and gid
//! (SCM_CREDENTIALS), not the daemon's: a receiver with `SO_PASSCRED` sees who asked for them.
//!
//! **Never blocking.** A delivery never waits: sockets are written with `MSG_DONTWAIT`, a pcap
//! file by a writer thread of its own behind a bounded queue (regular files ignore
//! `O_NONBLOCK`), a full queue or socket buffer is a drop the worker counts
//! (`dropped_sink_full`), and no lock is held across a write.

use std::{
    cell::RefCell,
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    os::{
        fd::OwnedFd,
        unix::{
            fs::{FileTypeExt, OpenOptionsExt},
            net::UnixDatagram,
        },
    },
    sync::{
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Mutex,
    },
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    DataLink,
};
use thiserror::Error;
use tracing::warn;

use crate::control::{ErrorCode, SinkSpec};
use crate::{
    datagram::Datagram,
    record::encode_header,
    ring::{ClientFds, Producer},
    sys::scm::Credentials,
};

/// Frames a pcap sink's writer thread may have queued; more are dropped (`dropped_sink_full`).
pub const PCAP_QUEUE: usize = 4096;

/// Why a datagram was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The receiver's socket buffer or the file's queue is full (it takes too slowly).
    SinkFull,
    /// The receiver is gone or the file cannot be written.
    SinkError,
}

/// A sink that could not be opened, or a passed descriptor that is not what the sink needs.
#[derive(Debug, Error)]
pub enum SinkError {
    /// The daemon could not open one of its own (configured) sinks.
    #[error("sink {spec}: {step}: {source}")]
    Open {
        /// The sink.
        spec: SinkSpec,
        /// What failed: `opening`, `connecting`, `starting the writer thread`, …
        step: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The caller passed no descriptor, or one that is not what the sink needs.
    #[error("to: {spec}: {reason}")]
    Refused {
        /// The sink asked for.
        spec: SinkSpec,
        /// What is wrong and what to pass instead.
        reason: String,
    },
}

impl SinkError {
    /// The code the wire answer carries: a bad passed descriptor is the caller's
    /// (`invalid_argument`), a configured sink that does not open is the daemon's (`internal`).
    pub fn code(&self) -> ErrorCode {
        match self {
            SinkError::Open { .. } => ErrorCode::Internal,
            SinkError::Refused { .. } => ErrorCode::InvalidArgument,
        }
    }
}

/// A sink the caller opened and passed with its bind request (SCM_RIGHTS), and who passed it
/// (SO_PEERCRED): a `unix:` sink's records carry `creds`.
#[derive(Debug)]
pub struct CallerSink {
    /// The pcap file or the connected Unix datagram socket.
    pub fd: OwnedFd,
    /// The caller's uid and gid; the pid is the daemon's (the caller may be gone long before
    /// the endpoint, and its pid reused).
    pub creds: Credentials,
}

/// An open sink.
pub enum Sink {
    /// Records to a connected Unix datagram socket, stamped with `creds` if given (a caller's
    /// sink; the daemon's own go out as the daemon's).
    Unix {
        /// The connected socket.
        socket: UnixDatagram,
        /// Whose records these are.
        creds: Option<Credentials>,
    },
    /// Counted only.
    Count,
    /// Frames to a pcap file, written by a thread of its own.
    Pcap(PcapSink),
    /// Several queue workers may deliver to one endpoint: the lock makes them one producer.
    Ring(Mutex<Producer>),
}

impl Sink {
    /// Opens one of the daemon's own sinks (the config file's endpoints, root's), by path: a
    /// pcap file only if it is a regular file (`O_NOFOLLOW`, `O_NONBLOCK`, checked before it is
    /// truncated); for a ring, also returns the descriptors that go to the client.
    pub fn open(spec: &SinkSpec) -> Result<(Self, Option<ClientFds>), SinkError> {
        let fail = |step, source| SinkError::Open {
            spec: spec.clone(),
            step,
            source,
        };
        let sink = match spec {
            SinkSpec::Ring { slots } => {
                let (producer, fds) = Producer::create(*slots, crate::ring::DEFAULT_SLOT_SIZE)
                    .map_err(|e| fail("creating the ring", io::Error::other(e)))?;
                return Ok((Sink::Ring(Mutex::new(producer)), Some(fds)));
            }
            SinkSpec::Unix(path) => {
                let socket = UnixDatagram::unbound().map_err(|e| fail("creating a socket", e))?;
                socket.connect(path).map_err(|e| fail("connecting", e))?;
                Sink::Unix {
                    socket,
                    creds: None,
                }
            }
            SinkSpec::Count => Sink::Count,
            SinkSpec::Pcap(path) => {
                // No O_TRUNC here: a FIFO or a device is refused before anything is changed.
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .mode(0o640)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(path)
                    .map_err(|e| fail("opening (no symlinks)", e))?;
                let kind = file
                    .metadata()
                    .map_err(|e| fail("reading its type", e))?
                    .file_type();
                if !kind.is_file() {
                    return Err(fail(
                        "checking its type",
                        io::Error::other(format!("{}, not a regular file", describe(kind))),
                    ));
                }
                file.set_len(0).map_err(|e| fail("truncating", e))?;
                Sink::Pcap(PcapSink::start(file).map_err(|e| fail("starting the writer", e))?)
            }
        };
        Ok((sink, None))
    }

    /// Takes over the sink a caller opened and passed (`pcap:`, `unix:`), after checking that
    /// it is what the spec says; opens `count` and `ring` itself (and refuses a descriptor
    /// passed with them). A ring also returns the descriptors that go to the client.
    pub fn passed(
        spec: &SinkSpec,
        passed: Option<CallerSink>,
    ) -> Result<(Self, Option<ClientFds>), SinkError> {
        let refuse = |reason: String| SinkError::Refused {
            spec: spec.clone(),
            reason,
        };
        match (spec, passed) {
            (SinkSpec::Count | SinkSpec::Ring { .. }, None) => Sink::open(spec),
            (SinkSpec::Count | SinkSpec::Ring { .. }, Some(_)) => Err(refuse(
                "this sink takes no descriptor; pass one only with pcap: or unix:".into(),
            )),
            (SinkSpec::Pcap(_) | SinkSpec::Unix(_), None) => Err(refuse(
                "the caller opens this sink and passes its descriptor with the request                  (SCM_RIGHTS, \"fds\":1); the daemon opens no path for a caller"
                    .into(),
            )),
            (SinkSpec::Pcap(_), Some(passed)) => {
                let file = checked_pcap(passed.fd).map_err(refuse)?;
                let sink = PcapSink::start(file).map_err(|source| SinkError::Open {
                    spec: spec.clone(),
                    step: "starting the writer",
                    source,
                })?;
                Ok((Sink::Pcap(sink), None))
            }
            (SinkSpec::Unix(_), Some(passed)) => {
                let socket = checked_unix(passed.fd).map_err(refuse)?;
                Ok((
                    Sink::Unix {
                        socket,
                        creds: Some(passed.creds),
                    },
                    None,
                ))
            }
        }
    }

    /// Whether [`Sink::flush`] does anything: only a ring wakes its client after a batch.
    #[inline]
    pub fn wakes(&self) -> bool {
        matches!(self, Sink::Ring(_))
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
    /// woken by the next [`Sink::flush`]. Never waits.
    pub fn deliver(
        &self,
        endpoint: u32,
        datagram: &Datagram,
        frame: &[u8],
        received: SystemTime,
    ) -> Result<(), DropReason> {
        let header = || {
            encode_header(
                endpoint,
                datagram.protocol,
                datagram.peer,
                datagram.local,
                received,
            )
        };
        match self {
            Sink::Count => Ok(()),
            Sink::Ring(producer) => {
                let header = header();
                let mut producer = producer.lock().map_err(|_| DropReason::SinkError)?;
                if producer.push(&[&header, datagram.payload]) {
                    Ok(())
                } else {
                    Err(DropReason::SinkFull)
                }
            }
            Sink::Unix { socket, creds } => {
                let header = header();
                let parts = [
                    io::IoSlice::new(&header),
                    io::IoSlice::new(datagram.payload),
                ];
                match creds {
                    Some(creds) => crate::sys::scm::send_dontwait_as(socket, &parts, *creds),
                    None => crate::sys::scm::send_dontwait(socket, &parts),
                }
                .map(|_| ())
                .map_err(|e| match e.kind() {
                    io::ErrorKind::WouldBlock => DropReason::SinkFull,
                    _ => DropReason::SinkError,
                })
            }
            Sink::Pcap(sink) => sink.push(frame, received),
        }
    }
}

/// What a file type is, for a refusal.
fn describe(kind: std::fs::FileType) -> &'static str {
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// A passed pcap descriptor: a regular file (not a FIFO, device, directory or socket), open
/// for writing.
fn checked_pcap(fd: OwnedFd) -> Result<File, String> {
    let mode = crate::sys::access_mode(&fd).map_err(|e| format!("the descriptor: {e}"))?;
    let file = File::from(fd);
    let kind = file
        .metadata()
        .map_err(|e| format!("the descriptor: {e}"))?
        .file_type();
    if !kind.is_file() {
        return Err(format!(
            "the passed descriptor is {}; a pcap sink takes a regular file",
            describe(kind)
        ));
    }
    if mode != libc::O_WRONLY && mode != libc::O_RDWR {
        return Err("the passed file is not open for writing".into());
    }
    Ok(file)
}

/// A passed unix descriptor: a connected `SOCK_DGRAM` `AF_UNIX` socket.
fn checked_unix(fd: OwnedFd) -> Result<UnixDatagram, String> {
    match crate::sys::socket_kind(&fd) {
        Ok((libc::AF_UNIX, libc::SOCK_DGRAM)) => {}
        Ok(_) => {
            return Err(
                "the passed socket is not a Unix datagram socket (AF_UNIX, SOCK_DGRAM)".into(),
            )
        }
        Err(e) => return Err(format!("the passed descriptor is not a socket ({e})")),
    }
    let socket = UnixDatagram::from(fd);
    socket
        .peer_addr()
        .map_err(|e| format!("the passed socket is not connected ({e}); connect it first"))?;
    Ok(socket)
}

/// One frame on its way to the pcap writer thread.
struct Frame {
    since: Duration,
    bytes: Vec<u8>,
}

/// A pcap file written by a thread of its own: a queue worker only queues (up to
/// [`PCAP_QUEUE`] frames), so a slow disk never holds it. The thread ends, flushing, when the
/// sink is dropped; a write error ends it early, and later frames count as sink errors.
pub struct PcapSink {
    queue: SyncSender<Frame>,
}

impl PcapSink {
    /// Starts the writer thread over `file`.
    fn start(file: File) -> io::Result<Self> {
        Self::spawn(BufWriter::new(file), PCAP_QUEUE)
    }

    /// Starts a writer thread over `out` with room for `capacity` queued frames.
    fn spawn<W: Write + Send + 'static>(out: W, capacity: usize) -> io::Result<Self> {
        let (queue, frames) = mpsc::sync_channel(capacity);
        thread::Builder::new()
            .name("demux-pcap".into())
            .spawn(move || {
                // A file writer needs no capability: this thread may start before the
                // daemon lowers its own (a configured pcap endpoint), so it drops them all.
                if let Err(e) = crate::sys::caps::lower_thread(crate::sys::caps::CapSet(0)) {
                    warn!("pcap sink: dropping the writer's capabilities (capset): {e}");
                }
                if let Err(e) = write_frames(out, frames) {
                    warn!("pcap sink: writing: {e}; later frames are dropped");
                }
            })?;
        Ok(Self { queue })
    }

    /// Queues one frame; a full queue is a drop, never a wait.
    fn push(&self, frame: &[u8], received: SystemTime) -> Result<(), DropReason> {
        let since = received
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        self.queue
            .try_send(Frame {
                since,
                bytes: frame.to_vec(),
            })
            .map_err(|e| match e {
                TrySendError::Full(_) => DropReason::SinkFull,
                TrySendError::Disconnected(_) => DropReason::SinkError,
            })
    }
}

/// The writer thread: the header, then each frame as it comes, flushed whenever the queue
/// runs empty; returns when the sink is dropped.
fn write_frames<W: Write>(out: W, frames: Receiver<Frame>) -> Result<(), pcap_file::PcapError> {
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        ..PcapHeader::default()
    };
    let out = RefCell::new(out);
    let mut writer = PcapWriter::with_header(Shared(&out), header)?;
    let mut write = |frame: Frame| {
        let packet = PcapPacket::new(frame.since, frame.bytes.len() as u32, &frame.bytes);
        writer.write_packet(&packet).map(|_| ())
    };
    while let Ok(frame) = frames.recv() {
        write(frame)?;
        while let Ok(frame) = frames.try_recv() {
            write(frame)?;
        }
        out.borrow_mut()
            .flush()
            .map_err(pcap_file::PcapError::IoError)?;
    }
    Ok(())
}

/// The writer under a `PcapWriter` (which owns its writer), shared so that the thread can
/// flush it between batches.
struct Shared<'a, W>(&'a RefCell<W>);

impl<W: Write> Write for Shared<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::net::UnixStream,
        path::{Path, PathBuf},
        sync::Arc,
    };

    use super::*;
    use crate::sys::scm::{recv_with_credentials, set_passcred};

    fn datagram() -> Datagram<'static> {
        Datagram {
            protocol: 17,
            peer: "198.18.0.1:1".parse().unwrap(),
            local: "198.18.0.2:2".parse().unwrap(),
            payload: &[7; 1000],
        }
    }

    /// A fresh directory of this test's own.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("demux-sink-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn me() -> Credentials {
        Credentials {
            pid: std::process::id() as i32,
            uid: crate::sys::euid(),
            gid: 0,
        }
    }

    fn passed(fd: impl Into<OwnedFd>) -> Option<CallerSink> {
        Some(CallerSink {
            fd: fd.into(),
            creds: me(),
        })
    }

    /// The refusal's reason, asserting it is the caller's (`invalid_argument`, naming `to`).
    fn refused(result: Result<(Sink, Option<ClientFds>), SinkError>) -> String {
        match result {
            Err(error) => {
                assert_eq!(error.code(), ErrorCode::InvalidArgument, "{error}");
                let text = error.to_string();
                assert!(text.starts_with("to: "), "{text}");
                text
            }
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn only_a_ring_wakes_its_reader_after_a_batch() {
        // The worker flushes after a batch only the endpoints whose sink says so.
        let (ring, fds) = Sink::open(&SinkSpec::Ring { slots: 64 }).expect("ring");
        assert!(fds.is_some() && ring.wakes());
        assert!(!Sink::open(&SinkSpec::Count).expect("count").0.wakes());
        let (socket, _peer) = UnixDatagram::pair().expect("socketpair");
        let unix = Sink::Unix {
            socket,
            creds: None,
        };
        assert!(!unix.wakes());
    }

    #[test]
    fn unix_sink_delivers_and_reports_a_full_buffer() {
        let dir = scratch("full");
        let path = dir.join("s.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let (sink, _) = Sink::open(&SinkSpec::Unix(path.clone())).unwrap();
        let d = datagram();
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

    #[test]
    fn a_passed_pcap_must_be_a_regular_file_open_for_writing() {
        let dir = scratch("pcap-fd");
        let spec = SinkSpec::Pcap(dir.join("x.pcap"));
        let fifo = dir.join("fifo");
        mkfifo(&fifo);
        // O_RDWR opens a FIFO without waiting for a reader.
        let fifo = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        assert!(refused(Sink::passed(&spec, passed(fifo))).contains("a FIFO"));
        let directory = File::open(&dir).unwrap();
        assert!(refused(Sink::passed(&spec, passed(directory))).contains("a directory"));
        let null = OpenOptions::new().write(true).open("/dev/null").unwrap();
        assert!(refused(Sink::passed(&spec, passed(null))).contains("a device"));
        let (socket, _) = UnixDatagram::pair().unwrap();
        assert!(refused(Sink::passed(&spec, passed(socket))).contains("a socket"));
        std::fs::write(dir.join("ro"), b"keep").unwrap();
        let read_only = File::open(dir.join("ro")).unwrap();
        assert!(refused(Sink::passed(&spec, passed(read_only))).contains("not open for writing"));
        assert!(refused(Sink::passed(&spec, None)).contains("passes its descriptor"));
        assert_eq!(std::fs::read(dir.join("ro")).unwrap(), b"keep");

        let file = File::create(dir.join("x.pcap")).unwrap();
        let (sink, _) = Sink::passed(&spec, passed(file)).unwrap();
        let frame = [0xabu8; 60];
        assert_eq!(
            sink.deliver(1, &datagram(), &frame, SystemTime::now()),
            Ok(())
        );
        drop(sink);
        // The writer thread ends flushing once the sink is dropped.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let bytes = std::fs::read(dir.join("x.pcap")).unwrap();
            if bytes.len() == 24 + 16 + 60 {
                assert!(bytes.ends_with(&frame));
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} bytes",
                bytes.len()
            );
            thread::sleep(Duration::from_millis(10));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_passed_unix_sink_must_be_a_connected_datagram_socket() {
        let dir = scratch("unix-fd");
        let spec = SinkSpec::Unix(dir.join("s.sock"));
        let unconnected = UnixDatagram::unbound().unwrap();
        assert!(refused(Sink::passed(&spec, passed(unconnected))).contains("not connected"));
        let (stream, _peer) = UnixStream::pair().unwrap();
        assert!(refused(Sink::passed(&spec, passed(stream))).contains("not a Unix datagram socket"));
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.connect(udp.local_addr().unwrap()).unwrap();
        assert!(refused(Sink::passed(&spec, passed(udp))).contains("not a Unix datagram socket"));
        let file = File::create(dir.join("f")).unwrap();
        assert!(refused(Sink::passed(&spec, passed(file))).contains("not a socket"));
        assert!(refused(Sink::passed(&spec, None)).contains("opens no path for a caller"));
        let (a, _b) = UnixDatagram::pair().unwrap();
        assert!(refused(Sink::passed(&SinkSpec::Count, passed(a))).contains("takes no descriptor"));

        let (a, b) = UnixDatagram::pair().unwrap();
        let (sink, _) = Sink::passed(&spec, passed(a)).unwrap();
        assert_eq!(sink.deliver(1, &datagram(), &[], SystemTime::now()), Ok(()));
        let mut buf = [0u8; 2048];
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(crate::record::decode(&buf[..n]).unwrap().payload, [7; 1000]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_callers_unix_sink_sends_as_the_caller() {
        let (a, receiver) = UnixDatagram::pair().unwrap();
        set_passcred(&receiver).unwrap();
        // As root, records go out as nobody (uid and gid 65534), which only the stamp can do;
        // otherwise as this user, the one thing the kernel lets it claim.
        let caller = if crate::sys::euid() == 0 {
            Credentials {
                pid: 0,
                uid: 65534,
                gid: 65534,
            }
        } else {
            use std::os::unix::fs::MetadataExt;
            // /proc/self belongs to this process's effective uid and gid.
            let own = std::fs::metadata("/proc/self").unwrap();
            Credentials {
                pid: 0,
                uid: own.uid(),
                gid: own.gid(),
            }
        };
        let (sink, _) = Sink::passed(
            &SinkSpec::Unix("/caller.sock".into()),
            Some(CallerSink {
                fd: a.into(),
                creds: Credentials {
                    pid: std::process::id() as i32,
                    ..caller
                },
            }),
        )
        .unwrap();
        assert_eq!(sink.deliver(1, &datagram(), &[], SystemTime::now()), Ok(()));
        let mut buf = [0u8; 2048];
        let (n, creds) = recv_with_credentials(&receiver, &mut buf).unwrap();
        assert!(n > 0);
        assert_eq!(
            creds,
            Some(Credentials {
                pid: std::process::id() as i32,
                uid: caller.uid,
                gid: caller.gid,
            })
        );
    }

    /// A writer that holds its thread until the gate's sender is dropped.
    struct Gated {
        gate: mpsc::Receiver<()>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.gate.recv();
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_pcap_writer_drops_instead_of_waiting() {
        let (open, gate) = mpsc::channel();
        let out = Arc::<Mutex<Vec<u8>>>::default();
        let sink = Sink::Pcap(
            PcapSink::spawn(
                Gated {
                    gate,
                    out: out.clone(),
                },
                4,
            )
            .unwrap(),
        );
        let frame = [1u8; 60];
        // The thread is stuck writing the header: four frames queue, the fifth is a drop. A
        // delivery that waited instead would never return: give up after five seconds.
        let (done, outcomes) = mpsc::channel();
        let sink = Arc::new(sink);
        let delivering = sink.clone();
        thread::spawn(move || {
            let outcomes: Vec<_> = (0..6)
                .map(|_| delivering.deliver(1, &datagram(), &frame, SystemTime::now()))
                .collect();
            let _ = done.send(outcomes);
        });
        let outcomes = outcomes
            .recv_timeout(Duration::from_secs(5))
            .expect("a delivery waited for the writer");
        assert_eq!(outcomes[..4], [Ok(()); 4]);
        assert_eq!(outcomes[4..], [Err(DropReason::SinkFull); 2]);
        drop(open);
        drop(Arc::into_inner(sink));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while out.lock().unwrap().len() < 24 + 4 * (16 + 60) {
            assert!(std::time::Instant::now() < deadline);
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(out.lock().unwrap().len(), 24 + 4 * (16 + 60));
    }

    #[test]
    fn the_daemons_own_pcap_is_opened_safely() {
        let dir = scratch("own-pcap");
        let target = dir.join("precious");
        std::fs::write(&target, b"precious").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("link")).unwrap();
        let error = Sink::open(&SinkSpec::Pcap(dir.join("link"))).err().unwrap();
        assert!(
            error.to_string().contains("opening (no symlinks)"),
            "{error}"
        );
        let fifo = dir.join("fifo");
        mkfifo(&fifo);
        // No reader: O_NONBLOCK makes the open fail at once instead of waiting for one (a
        // wait is given five seconds, then fails the test).
        let (done, opened) = mpsc::channel();
        let spec = SinkSpec::Pcap(fifo.clone());
        thread::spawn(move || {
            let _ = done.send(Sink::open(&spec).is_err());
        });
        assert!(opened
            .recv_timeout(Duration::from_secs(5))
            .expect("opening a FIFO without a reader waited"));
        // With a reader the open succeeds, and the type check refuses it.
        let _reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let error = Sink::open(&SinkSpec::Pcap(fifo)).err().unwrap();
        assert!(
            error.to_string().contains("a FIFO, not a regular file"),
            "{error}"
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        let (sink, _) = Sink::open(&SinkSpec::Pcap(target.clone())).unwrap();
        drop(sink);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read(&target).unwrap().len() != 24 {
            assert!(std::time::Instant::now() < deadline);
            thread::sleep(Duration::from_millis(10));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
