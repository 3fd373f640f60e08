//! Restart without loss: a daemon stopped gracefully hands its client endpoints to the next one
//! through the service manager's file descriptor store (sd_notify `FDSTORE=1`, systemd's
//! `FileDescriptorStoreMax=`), and the next daemon, started with them (`LISTEN_FDS`,
//! sd_listen_fds(3)), picks them up with the same ids, rings and backing sockets.
//!
//! **At stop** (after the program is detached and the workers drained the AF_XDP rings, so the
//! kernel delivers everything to the backing sockets): one sealed memfd named [`STATE_NAME`]
//! holding the [`Record`] (JSON, versioned), and per client endpoint its backing socket, ring
//! memfd and eventfd, each as one message with its own `FDNAME` ([`fd_name`]); then
//! `BARRIER=1`, so that the daemon exits only once the manager has taken them.
//!
//! **At start** every inherited descriptor is hostile until checked ([`Inherited::pickup`]):
//! the record must be a memfd sealed against writes and resizing, at most [`MAX_RECORD`] bytes,
//! of [`RECORD_VERSION`], with ids in range and unique; each endpoint's backing socket must be
//! the same socket (`SO_COOKIE`), still owned by the endpoint's owner (the kernel's socket
//! uid); its ring memfd the same file (inode), sealed and of the recorded size, its wakeup an
//! eventfd ([`Producer::resume`]). The state then checks the socket again as on bind
//! (`backing::inspect`, the binding, the limits). Whatever fails is dropped with one log line
//! and its descriptors closed; the endpoint's client then binds afresh. Afterwards the daemon
//! removes what it was given from the store (`FDSTOREREMOVE=1`): a stale backing socket left
//! there would hold its port.
//!
//! The XDP program, its link and maps are not stored: the next daemon may be another version
//! (another program and map layout), and while no daemon runs, the kernel path (backing
//! sockets) carries the traffic anyway; see docs/ARCHITECTURE.md.

use std::{
    collections::{BTreeSet, HashMap},
    fs::File,
    io::{self, Write as _},
    os::{
        fd::{AsFd as _, AsRawFd as _, OwnedFd},
        unix::fs::{FileExt as _, MetadataExt as _},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{info, warn};

use demux_common::binding::MAX_ENDPOINTS;

use crate::{
    control::BindRequest,
    ring::{ClientFds, Geometry, Producer},
    sys,
};

/// The name of the state record's memfd in the store.
pub const STATE_NAME: &str = "demux-state";
/// The record layout this build writes and reads.
pub const RECORD_VERSION: u32 = 1;
/// The largest record read back.
pub const MAX_RECORD: u64 = 1 << 20;
/// Most descriptors taken from `LISTEN_FDS`.
pub const MAX_INHERITED: usize = 4 * MAX_ENDPOINTS as usize + 1;
/// How long a picked-up endpoint waits for its client to attach again before it closes
/// (persistent ones stay).
pub const GRACE: Duration = Duration::from_secs(10);

/// The store name of one of endpoint `id`'s descriptors: `part` is `sock`, `ring` or `wake`.
pub fn fd_name(id: u32, part: &str) -> String {
    format!("demux-ep{id}-{part}")
}

/// What the next daemon reads first: which endpoints the descriptors belong to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// [`RECORD_VERSION`].
    pub version: u32,
    /// The daemon that wrote it (for the log).
    pub software: String,
    /// The endpoints handed over.
    pub endpoints: Vec<Stored>,
}

/// One endpoint handed over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    /// Its descriptor, kept across the restart.
    pub id: u32,
    /// The uid that bound it.
    pub owner: u32,
    /// Its request, as the daemon held it.
    pub request: BindRequest,
    /// Its backing socket's `SO_COOKIE`.
    pub cookie: u64,
    /// Its ring memfd's inode.
    pub ring_inode: u64,
    /// Ring slots.
    pub slots: u32,
    /// Ring slot size.
    pub slot_size: u32,
    /// The ring's producer index.
    pub produced: u64,
}

/// An endpoint as the stopping daemon hands it over: the record and its descriptors.
pub struct Handed {
    /// What the record says about it.
    pub stored: Stored,
    /// Its backing socket.
    pub backing: OwnedFd,
    /// Its ring.
    pub ring: ClientFds,
}

impl Handed {
    /// Endpoint `id` of `owner` with `request`, its `backing` socket and its ring (`fds`,
    /// `geometry`).
    pub fn new(
        id: u32,
        owner: u32,
        request: BindRequest,
        backing: OwnedFd,
        (ring, geometry): (ClientFds, Geometry),
    ) -> io::Result<Self> {
        let cookie = sys::socket::cookie(&backing)?;
        let ring_inode = File::from(ring.memory.try_clone()?).metadata()?.ino();
        Ok(Self {
            stored: Stored {
                id,
                owner,
                request,
                cookie,
                ring_inode,
                slots: geometry.slots,
                slot_size: geometry.slot_size,
                produced: geometry.produced,
            },
            backing,
            ring,
        })
    }
}

/// An endpoint as the new daemon picked it up, checked as far as the descriptors go.
pub struct Picked {
    /// What the record says about it.
    pub stored: Stored,
    /// Its backing socket (the state checks it again, as on bind).
    pub backing: OwnedFd,
    /// Its ring, resumed where the previous daemon left it.
    pub ring: Producer,
}

/// Why a stored descriptor or record was refused.
#[derive(Debug, Error)]
pub enum PickupError {
    /// No state record among the descriptors.
    #[error("no `{STATE_NAME}` record among the inherited descriptors")]
    NoRecord,
    /// Several.
    #[error("{0} `{STATE_NAME}` records among the inherited descriptors")]
    ManyRecords(usize),
    /// The record's memfd is not sealed as the daemon seals it.
    #[error("the state record is not a memfd sealed against writes and resizing (seals {0:#x})")]
    RecordSeals(i32),
    /// The record is too large.
    #[error("the state record is {0} bytes, more than {MAX_RECORD}")]
    RecordSize(u64),
    /// The record does not parse.
    #[error("the state record does not parse: {0}")]
    RecordParse(String),
    /// Another record version.
    #[error("the state record has version {found}, this build reads version {RECORD_VERSION}")]
    RecordVersion {
        /// The record's.
        found: u32,
    },
    /// An endpoint id out of range or seen twice.
    #[error("endpoint id {0} is out of range or appears twice")]
    BadId(u32),
    /// A descriptor is missing or appears twice.
    #[error("descriptor `{name}`: {count} inherited, want 1")]
    Descriptor {
        /// Its store name.
        name: String,
        /// How many came.
        count: usize,
    },
    /// The backing socket is not the one handed over.
    #[error(
        "the backing socket is not the endpoint's (cookie {found:#x}, recorded {recorded:#x})"
    )]
    Cookie {
        /// The socket's.
        found: u64,
        /// The record's.
        recorded: u64,
    },
    /// The backing socket's kernel owner is not the endpoint's owner.
    #[error("the backing socket belongs to {}, the endpoint to uid {recorded}", found.map_or("no uid the kernel lists".to_owned(), |uid| format!("uid {uid}")))]
    SocketOwner {
        /// The kernel's socket uid, if found.
        found: Option<u32>,
        /// The record's owner.
        recorded: u32,
    },
    /// The ring memfd is not the one handed over.
    #[error("the ring memfd is another file (inode {found}, recorded {recorded})")]
    RingInode {
        /// The file's.
        found: u64,
        /// The record's.
        recorded: u64,
    },
    /// The ring does not resume.
    #[error(transparent)]
    Ring(#[from] crate::ring::RingError),
    /// A system call failed.
    #[error("reading a descriptor: {0}")]
    Io(#[from] io::Error),
}

/// The descriptors the service manager passed (`LISTEN_FDS`), by name.
#[derive(Default)]
pub struct Inherited {
    fds: Vec<(String, OwnedFd)>,
}

impl Inherited {
    /// Takes the descriptors the service manager passed ([`sys::listen_fds`]); logs what was
    /// wrong with its variables. Call first thing, before anything opens a descriptor.
    pub fn take_from_env() -> Self {
        let (fds, problems) = sys::listen_fds(MAX_INHERITED);
        for problem in problems {
            warn!("restart: {problem}");
        }
        Self { fds }
    }

    /// Descriptors given by name (tests).
    pub fn from_named(fds: Vec<(String, OwnedFd)>) -> Self {
        Self { fds }
    }

    /// How many were inherited.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// None inherited.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// The distinct names inherited (to remove from the store once picked up).
    pub fn names(&self) -> BTreeSet<String> {
        self.fds.iter().map(|(name, _)| name.clone()).collect()
    }

    /// Checks the record and every endpoint's descriptors; returns the endpoints that passed.
    /// Each refusal is logged with the endpoint and the reason, and its descriptors closed, as
    /// are descriptors nothing in the record names.
    pub fn pickup(self, netns_uids: impl Fn(u64) -> Option<u32>) -> Vec<Picked> {
        let mut by_name: HashMap<String, Vec<OwnedFd>> = HashMap::new();
        for (name, fd) in self.fds {
            by_name.entry(name).or_default().push(fd);
        }
        let record = match read_record(&mut by_name) {
            Ok(record) => record,
            Err(error) => {
                warn!(
                    "restart: {error}: no endpoint picked up ({} descriptors closed); clients \
                     bind afresh",
                    by_name.values().map(Vec::len).sum::<usize>()
                );
                return Vec::new();
            }
        };
        info!(
            endpoints = record.endpoints.len(),
            from = record.software.as_str(),
            "restart: state record read"
        );
        let mut picked = Vec::new();
        for stored in record.endpoints {
            let id = stored.id;
            match pick(stored, &mut by_name, &netns_uids) {
                Ok(one) => picked.push(one),
                Err(error) => warn!(id, "restart: endpoint not picked up: {error}"),
            }
        }
        for (name, fds) in by_name {
            warn!(
                name = name.as_str(),
                count = fds.len(),
                "restart: inherited descriptor no endpoint claims: closed"
            );
        }
        picked
    }
}

/// Takes and checks the state record.
fn read_record(by_name: &mut HashMap<String, Vec<OwnedFd>>) -> Result<Record, PickupError> {
    let mut fds = by_name.remove(STATE_NAME).unwrap_or_default();
    match fds.len() {
        0 => Err(PickupError::NoRecord),
        1 => read_sealed_record(&fds.remove(0)),
        n => Err(PickupError::ManyRecords(n)),
    }
}

/// Reads and checks the record in `memfd`: sealed against writes and resizing, bounded,
/// parsed ([`parse_record`]).
pub fn read_sealed_record(memfd: &OwnedFd) -> Result<Record, PickupError> {
    let memfd = File::from(memfd.try_clone()?);
    let seals = sys::seals(&memfd).map_err(|_| PickupError::RecordSeals(0))?;
    let needed = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    if seals & needed != needed {
        return Err(PickupError::RecordSeals(seals));
    }
    let size = memfd.metadata()?.len();
    if size > MAX_RECORD {
        return Err(PickupError::RecordSize(size));
    }
    let mut bytes = vec![0u8; size as usize];
    memfd.read_exact_at(&mut bytes, 0)?;
    parse_record(&bytes)
}

/// Parses and bounds-checks a record.
pub fn parse_record(bytes: &[u8]) -> Result<Record, PickupError> {
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u32,
    }
    let version = serde_json::from_slice::<VersionOnly>(bytes)
        .map_err(|e| PickupError::RecordParse(e.to_string()))?
        .version;
    if version != RECORD_VERSION {
        return Err(PickupError::RecordVersion { found: version });
    }
    let record: Record =
        serde_json::from_slice(bytes).map_err(|e| PickupError::RecordParse(e.to_string()))?;
    let mut seen = BTreeSet::new();
    for stored in &record.endpoints {
        if stored.id == 0 || stored.id >= MAX_ENDPOINTS || !seen.insert(stored.id) {
            return Err(PickupError::BadId(stored.id));
        }
    }
    Ok(record)
}

/// Takes the one descriptor named `name`.
fn one(by_name: &mut HashMap<String, Vec<OwnedFd>>, name: String) -> Result<OwnedFd, PickupError> {
    let mut fds = by_name.remove(&name).unwrap_or_default();
    match fds.len() {
        1 => Ok(fds.remove(0)),
        count => Err(PickupError::Descriptor { name, count }),
    }
}

/// Checks one endpoint's descriptors against its record.
fn pick(
    stored: Stored,
    by_name: &mut HashMap<String, Vec<OwnedFd>>,
    socket_uid: &impl Fn(u64) -> Option<u32>,
) -> Result<Picked, PickupError> {
    let id = stored.id;
    let (backing, memory, wake) = (
        one(by_name, fd_name(id, "sock")),
        one(by_name, fd_name(id, "ring")),
        one(by_name, fd_name(id, "wake")),
    );
    let (backing, memory, wake) = (backing?, memory?, wake?);
    let found = sys::socket::cookie(&backing).unwrap_or(0);
    if found != stored.cookie {
        return Err(PickupError::Cookie {
            found,
            recorded: stored.cookie,
        });
    }
    let inode = File::from(memory.try_clone()?).metadata()?.ino();
    let owner = socket_uid(inode_of(&backing)?);
    if owner != Some(stored.owner) {
        return Err(PickupError::SocketOwner {
            found: owner,
            recorded: stored.owner,
        });
    }
    // Seals and size first (what keeps the daemon's mapping from faulting), then the file.
    let ring = Producer::resume(
        memory,
        wake,
        stored.slots,
        stored.slot_size,
        stored.produced,
    )?;
    if inode != stored.ring_inode {
        return Err(PickupError::RingInode {
            found: inode,
            recorded: stored.ring_inode,
        });
    }
    Ok(Picked {
        stored,
        backing,
        ring,
    })
}

/// A socket's inode number (what `/proc/net/udp` lists it by).
fn inode_of(socket: &OwnedFd) -> io::Result<u64> {
    Ok(File::from(socket.try_clone()?).metadata()?.ino())
}

/// The kernel's uid of the UDP socket with inode `inode` in this process's network namespace
/// (`/proc/net/udp` and `udp6`: the uid that created it), if listed.
pub fn udp_socket_uid(inode: u64) -> Option<u32> {
    ["/proc/net/udp", "/proc/net/udp6"].iter().find_map(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(9)?.parse::<u64>().ok()? == inode)
                .then(|| fields.get(7)?.parse().ok())
                .flatten()
        })
    })
}

/// The state record `handed` describe, in a memfd sealed against every change.
pub fn record_memfd(handed: &[Handed]) -> io::Result<OwnedFd> {
    seal_record(&Record {
        version: RECORD_VERSION,
        software: crate::control::SOFTWARE.into(),
        endpoints: handed.iter().map(|h| h.stored.clone()).collect(),
    })
}

/// `record` in a memfd sealed against every change.
pub fn seal_record(record: &Record) -> io::Result<OwnedFd> {
    let bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
    let memfd = sys::memfd(c"demux-state")?;
    // write(2), not pwrite: the seccomp profile (dist/k8s) allows the calls the daemon makes.
    (&memfd).write_all(&bytes)?;
    sys::seal_all(&memfd)?;
    Ok(OwnedFd::from(memfd))
}

/// Stores `handed` and their record with the service manager, one descriptor per message,
/// then waits until the manager has taken them (`BARRIER=1`), all within `within`: a manager
/// that does not read (another supervisor, a test) costs the stop at most that. Nothing is
/// sent when there is nothing to hand over. Returns how many descriptors went.
pub fn store(
    notifier: &super::notify::Notifier,
    handed: &[Handed],
    within: Duration,
) -> Result<usize, super::notify::NotifyError> {
    if handed.is_empty() {
        return Ok(0);
    }
    let deadline = std::time::Instant::now() + within;
    let record = record_memfd(handed).map_err(|source| super::notify::NotifyError::Send {
        message: "FDSTORE=1 (creating the state record)".into(),
        value: String::new(),
        source,
    })?;
    let mut sent = 0;
    for h in handed {
        let id = h.stored.id;
        for (part, fd) in [
            ("sock", h.backing.as_fd()),
            ("ring", h.ring.memory.as_fd()),
            ("wake", h.ring.wake.as_fd()),
        ] {
            notifier.store_fd(&fd_name(id, part), fd.as_raw_fd(), deadline)?;
            sent += 1;
        }
    }
    // The record last: a new daemon that finds it finds every descriptor it names.
    notifier.store_fd(STATE_NAME, record.as_raw_fd(), deadline)?;
    notifier.barrier(deadline)?;
    Ok(sent + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::SinkSpec;

    fn stored(id: u32) -> Stored {
        Stored {
            id,
            owner: 1000,
            request: BindRequest::udp("198.18.0.2:5000", SinkSpec::Ring { slots: 64 }),
            cookie: 7,
            ring_inode: 9,
            slots: 64,
            slot_size: 2048,
            produced: 5,
        }
    }

    fn record(endpoints: Vec<Stored>) -> Vec<u8> {
        serde_json::to_vec(&Record {
            version: RECORD_VERSION,
            software: "demux test".into(),
            endpoints,
        })
        .unwrap()
    }

    #[test]
    fn a_record_round_trips_and_bad_ones_are_refused() {
        let good = record(vec![stored(1), stored(2)]);
        assert_eq!(parse_record(&good).unwrap().endpoints.len(), 2);
        let other = String::from_utf8(good.clone())
            .unwrap()
            .replace("\"version\":1", "\"version\":99");
        assert!(matches!(
            parse_record(other.as_bytes()),
            Err(PickupError::RecordVersion { found: 99 })
        ));
        for bad in [
            record(vec![stored(1), stored(1)]),
            record(vec![stored(0)]),
            record(vec![stored(MAX_ENDPOINTS)]),
        ] {
            assert!(
                matches!(parse_record(&bad), Err(PickupError::BadId(_))),
                "{}",
                String::from_utf8_lossy(&bad)
            );
        }
        let unknown =
            String::from_utf8(good)
                .unwrap()
                .replacen("\"owner\"", "\"extra\":1,\"owner\"", 1);
        assert!(matches!(
            parse_record(unknown.as_bytes()),
            Err(PickupError::RecordParse(_))
        ));
        assert!(matches!(
            parse_record(b"not json"),
            Err(PickupError::RecordParse(_))
        ));
    }

    #[test]
    fn an_unsealed_or_writable_record_is_refused_and_a_sealed_one_read() {
        let bytes = record(vec![]);
        let unsealed = sys::memfd(c"test").unwrap();
        unsealed.write_all_at(&bytes, 0).unwrap();
        let mut by_name = HashMap::from([(STATE_NAME.to_owned(), vec![OwnedFd::from(unsealed)])]);
        assert!(matches!(
            read_record(&mut by_name),
            Err(PickupError::RecordSeals(_))
        ));
        // A ring's seals (size only) are not enough: the record must be write-sealed.
        let size_only = sys::memfd(c"test").unwrap();
        size_only.write_all_at(&bytes, 0).unwrap();
        sys::seal_size(&size_only).unwrap();
        let mut by_name = HashMap::from([(STATE_NAME.to_owned(), vec![OwnedFd::from(size_only)])]);
        assert!(matches!(
            read_record(&mut by_name),
            Err(PickupError::RecordSeals(_))
        ));
        // Not a memfd at all.
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let mut by_name = HashMap::from([(STATE_NAME.to_owned(), vec![OwnedFd::from(a)])]);
        assert!(matches!(
            read_record(&mut by_name),
            Err(PickupError::RecordSeals(_))
        ));
        let good = record_memfd(&[]).unwrap();
        let mut by_name = HashMap::from([(STATE_NAME.to_owned(), vec![good])]);
        assert_eq!(read_record(&mut by_name).unwrap().version, RECORD_VERSION);
    }

    /// A real handover of one ring and socket, then each descriptor swapped for a wrong one.
    #[test]
    fn pickup_checks_every_descriptor_against_the_record() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = socket.local_addr().unwrap().to_string();
        let (producer, _client) = Producer::create(64, 2048).unwrap();
        let me = sys::euid();
        let handed = || {
            Handed::new(
                3,
                me,
                BindRequest::udp(local.clone(), SinkSpec::Ring { slots: 64 }),
                OwnedFd::from(socket.try_clone().unwrap()),
                producer.handover().unwrap(),
            )
            .unwrap()
        };
        let named = |h: Handed, record: OwnedFd| {
            Inherited::from_named(vec![
                (fd_name(3, "sock"), h.backing),
                (fd_name(3, "ring"), h.ring.memory),
                (fd_name(3, "wake"), h.ring.wake),
                (STATE_NAME.into(), record),
            ])
        };
        let owner_is_me = |_: u64| Some(me);
        let h = handed();
        let record = record_memfd(std::slice::from_ref(&h)).unwrap();
        let picked = named(h, record).pickup(owner_is_me);
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].stored.id, 3);

        // Another uid's socket (as the kernel says).
        let h = handed();
        let record = record_memfd(std::slice::from_ref(&h)).unwrap();
        assert!(named(h, record).pickup(|_| Some(me + 1)).is_empty());

        // Another socket under the endpoint's name.
        let mut h = handed();
        let record = record_memfd(std::slice::from_ref(&h)).unwrap();
        h.backing = OwnedFd::from(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        assert!(named(h, record).pickup(owner_is_me).is_empty());

        // An unsealed memfd of the right size as the ring (another inode, and no seals).
        let mut h = handed();
        let record = record_memfd(std::slice::from_ref(&h)).unwrap();
        let fake = sys::memfd(c"fake").unwrap();
        fake.set_len(256 + 64 * 2048).unwrap();
        h.ring.memory = OwnedFd::from(fake);
        assert!(named(h, record).pickup(owner_is_me).is_empty());

        // A socket as the wakeup descriptor.
        let mut h = handed();
        let record = record_memfd(std::slice::from_ref(&h)).unwrap();
        h.ring.wake = OwnedFd::from(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        assert!(named(h, record).pickup(owner_is_me).is_empty());

        // A descriptor missing.
        let h = handed();
        let record = record_memfd(std::slice::from_ref(&h)).unwrap();
        let partial = Inherited::from_named(vec![
            (fd_name(3, "sock"), h.backing),
            (fd_name(3, "ring"), h.ring.memory),
            (STATE_NAME.into(), record),
        ]);
        assert!(partial.pickup(owner_is_me).is_empty());
    }

    #[test]
    fn the_kernel_names_a_sockets_owner() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let inode = inode_of(&OwnedFd::from(socket.try_clone().unwrap())).unwrap();
        assert_eq!(udp_socket_uid(inode), Some(sys::euid()));
    }
}
