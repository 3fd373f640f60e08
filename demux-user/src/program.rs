//! The embedded XDP object: loading it into the kernel (verifier included) and handing out its
//! programs and maps. It holds two programs: the XDP program `demux`, and `demux_reuseport`
//! (`SK_REUSEPORT`), which the dataplane attaches to the kernel reuseport groups of backing
//! sockets so that what XDP passes reaches the member XDP would have picked. Every map the daemon uses is taken out of the object once, here, as a typed
//! handle whose key and value sizes aya checks against the `demux-common` types; a map that is
//! missing, of another kind or of another layout fails the load with one line naming it.
//!
//! Every load draws a new flow hash key ([`random_flow_key`], `getrandom`) unless the caller
//! gives one ([`LoadOptions::flow_key`], for tests), and writes it into the program's read-only
//! global `demux_common::hash::KEY_GLOBAL`: each start of the daemon picks group members with a
//! key nobody outside it knows.

use std::{
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd, RawFd},
    sync::{Arc, Mutex, PoisonError},
};

use aya::{
    maps::{Array, Map, MapData, MapError, XskMap},
    programs::{Extension, ProgramError, SkReuseport, Xdp},
    Ebpf, EbpfError, EbpfLoader,
};
use demux_common::{
    binding::MAX_BINDINGS,
    hash::{FlowKey, KEY_GLOBAL},
    local::CHECKS_GLOBAL,
    maps, presence,
};
use thiserror::Error;

use crate::dataplane::maps::Maps;

/// The XDP object built by `build.rs` from `demux-ebpf`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/demux.bpf.o"));

/// How much the program logs through aya-log. `Off` lets the verifier remove every log call,
/// so logging costs nothing per packet unless asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BpfLogLevel {
    #[default]
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

impl std::str::FromStr for BpfLogLevel {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "off" => BpfLogLevel::Off,
            "error" => BpfLogLevel::Error,
            "warn" => BpfLogLevel::Warn,
            "info" => BpfLogLevel::Info,
            "debug" => BpfLogLevel::Debug,
            "trace" => BpfLogLevel::Trace,
            _ => {
                return Err(format!(
                    "bpf log level: `{text}` is not one of off, error, warn, info, debug, trace"
                ))
            }
        })
    }
}

/// A failure while loading the object, naming the step that failed.
#[derive(Debug, Error)]
pub enum LoadError {
    /// No random key for the flow hash (`getrandom` failed).
    #[error("drawing the flow hash key (getrandom): {0}")]
    Key(#[source] std::io::Error),
    #[error("parsing or creating the maps of the embedded XDP object failed: {0}")]
    Object(#[source] EbpfError),
    #[error("the embedded object has no program named `{0}` of the expected type")]
    MissingProgram(&'static str),
    #[error("the kernel refused to load the XDP program (verifier or permissions): {0}")]
    Verify(#[source] ProgramError),
    /// libxdp's dispatcher, the target of the program as an extension, could not be loaded.
    #[error("loading the program as a dispatcher extension: {0}")]
    Dispatcher(#[source] Box<crate::multiprog::MultiprogError>),
    /// The kernel refused `demux_reuseport`, or its descriptor could not be duplicated.
    #[error("the kernel refused to load the reuseport program `{program}` (verifier or permissions): {source}")]
    VerifyReuseport {
        /// Its name (`demux_common::maps::REUSEPORT_PROGRAM`).
        program: &'static str,
        /// What aya reported.
        #[source]
        source: ProgramError,
    },
    /// A map the daemon uses is not in the object.
    #[error("map {map}: the embedded object has no map of that name")]
    MissingMap {
        /// The name looked for (`demux_common::maps`).
        map: &'static str,
    },
    /// A map's key or value size differs from the `demux-common` type the daemon writes.
    #[error(
        "map {map}: {part} size: demux-common expects {expected} bytes, the object has {found}"
    )]
    MapLayout {
        /// The map's name.
        map: &'static str,
        /// `key` or `value`.
        part: &'static str,
        /// `size_of` the `demux-common` type.
        expected: usize,
        /// The size in the object.
        found: usize,
    },
    /// A map is of another kind than the daemon expects.
    #[error("map {map}: expected {expected}, the object has map type {found}")]
    MapKind {
        /// The map's name.
        map: &'static str,
        /// The kind the daemon expects (`a hash map`, `an LPM trie`, …).
        expected: &'static str,
        /// The kernel's map type number in the object.
        found: u32,
    },
    /// Any other failure to open a map.
    #[error("map {map}: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// What aya reported.
        #[source]
        source: MapError,
    },
    /// A second descriptor of a map (for readers on other threads) could not be opened.
    #[error("map {map}: opening a second descriptor for the readers: {source}")]
    Reopen {
        /// The map's name.
        map: &'static str,
        /// What failed.
        #[source]
        source: MapError,
    },
}

/// Takes map `map` out of `ebpf` as the typed handle `T` (a `kind`, for the error): aya checks
/// its key and value sizes against `T`'s types, which come from `demux-common`.
pub(crate) fn take_map<T>(
    ebpf: &mut Ebpf,
    map: &'static str,
    kind: &'static str,
) -> Result<T, LoadError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let raw = ebpf.take_map(map).ok_or(LoadError::MissingMap { map })?;
    T::try_from(raw).map_err(|source| map_error(map, kind, source))
}

/// Names aya's refusal of a typed handle. aya's `size` is the Rust type's, its `expected` the
/// object's.
fn map_error(map: &'static str, kind: &'static str, source: MapError) -> LoadError {
    match source {
        MapError::InvalidKeySize { size, expected } => LoadError::MapLayout {
            map,
            part: "key",
            expected: size,
            found: expected,
        },
        MapError::InvalidValueSize { size, expected } => LoadError::MapLayout {
            map,
            part: "value",
            expected: size,
            found: expected,
        },
        MapError::InvalidMapType { map_type } => LoadError::MapKind {
            map,
            expected: kind,
            found: map_type,
        },
        source => LoadError::Map { map, source },
    }
}

/// A failure to put an AF_XDP socket in its XSKMAP slot.
#[derive(Debug, Error)]
pub enum SocketSlotError {
    #[error("interface number {iface_number} or queue {queue} is beyond the XSKMAP (at most {} interfaces of {} queues)", maps::MAX_IFACES, maps::MAX_QUEUES)]
    OutOfRange { iface_number: u32, queue: u32 },
    #[error("updating the socket slots: {0}")]
    Map(#[from] MapError),
}

/// A new random flow hash key, from the kernel's random pool.
pub fn random_flow_key() -> std::io::Result<FlowKey> {
    let mut bytes = [0u8; 16];
    crate::sys::random_bytes(&mut bytes)?;
    Ok(FlowKey::from_bytes(bytes))
}

/// What [`Loaded::load_with`] loads: the defaults are the daemon's (no logging, full-size
/// tables, a fresh random key).
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// How much the program logs.
    pub log_level: BpfLogLevel,
    /// Each binding table holds at most this many entries instead of `MAX_BINDINGS` (for tests
    /// of a full table).
    pub bindings: Option<u32>,
    /// The flow hash key; `None` draws a random one ([`random_flow_key`]). Tests give one so
    /// that the reference model hashes alike.
    pub flow_key: Option<FlowKey>,
    /// Load the XDP program as an extension (`BPF_PROG_TYPE_EXT`) for a slot of libxdp's
    /// multi-program dispatcher (`crate::multiprog`) instead of as a program of its own.
    pub extension: bool,
}

/// The value of the program's `CHECKS_GLOBAL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DestinationChecks {
    /// Skipped (benchmark comparison only).
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    Off = 0,
    /// Run: every daemon load.
    On = 1,
}

/// The loaded object: the program is verified and ready to attach. Its socket-slot maps stay
/// here; the maps the daemon's rules write are handed out beside it as [`Maps`].
pub struct Loaded {
    ebpf: Ebpf,
    slots: SocketSlots,
    flow_key: FlowKey,
    /// For an extension: the one-slot dispatcher it was verified against (kept loaded while
    /// the extension lives).
    template: Option<crate::multiprog::Dispatcher>,
    /// Every map of the object by name, through a duplicate of its descriptor (most are taken
    /// out of `ebpf` by their typed owners), for [`Loaded::map_memory`].
    map_fds: Vec<(String, OwnedFd)>,
}

/// `XSKS`: which AF_XDP socket receives an (interface, rx queue), and `XSK_FRAME_LIMITS`: how
/// long a frame that socket takes. The interface's block of slots is in its `IFACE_SLOTS`
/// entry, which the dataplane writes (`Dataplane::set_iface`).
struct SocketSlots {
    maps: Arc<Mutex<SlotMaps>>,
}

struct SlotMaps {
    xsks: XskMap<MapData>,
    limits: Array<MapData, u32>,
}

/// One (interface, rx queue) slot of `XSKS`, for the queue's worker, which replaces its socket
/// when a fast-path lease starts or ends (see "The fast path" in docs/ARCHITECTURE.md).
#[derive(Clone)]
pub struct SocketSlot {
    maps: Arc<Mutex<SlotMaps>>,
    index: u32,
}

impl SocketSlot {
    /// Steers the slot's queue to the AF_XDP socket `fd`, which takes frames longer than one
    /// UMEM frame, or split over buffers, up to `frame_limit` bytes (bound with `XDP_USE_SG`:
    /// [`crate::xsk::QueueSocket::frame_limit`]; 0: bound without it). The limit is 0 while the
    /// socket changes, so the program never redirects a frame to a socket that would drop it
    /// (it passes such frames meanwhile, `pass_too_large`).
    pub fn set(&self, fd: RawFd, frame_limit: u32) -> Result<(), SocketSlotError> {
        let mut maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        maps.limits.set(self.index, 0, 0)?;
        maps.xsks.set(self.index, fd, 0)?;
        if frame_limit != 0 {
            maps.limits.set(self.index, frame_limit, 0)?;
        }
        Ok(())
    }

    /// Writes the slot's `XSK_FRAME_LIMITS` entry alone: for tests of the program under
    /// BPF_PROG_TEST_RUN, where no socket takes the redirect (`pass_no_socket`).
    #[cfg(feature = "testing")]
    pub fn set_frame_limit(&self, frame_limit: u32) -> Result<(), SocketSlotError> {
        let mut maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        maps.limits.set(self.index, frame_limit, 0)?;
        Ok(())
    }

    /// Empties the slot: from now on the program passes the queue's steered frames to the
    /// kernel (`pass_no_socket`), whoever still holds the socket that was there.
    pub fn unset(&self) -> Result<(), SocketSlotError> {
        let mut maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        maps.limits.set(self.index, 0, 0)?;
        match maps.xsks.unset(self.index) {
            // Already empty (the socket closed and the kernel took it out).
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            other => Ok(other?),
        }
    }
}

impl Loaded {
    /// Loads the embedded object with a fresh random flow hash key, verifies its XDP program
    /// and takes its maps: the program side, and the dataplane maps the daemon's rules write.
    pub fn load(log_level: BpfLogLevel) -> Result<(Self, Maps), LoadError> {
        Self::load_with(LoadOptions {
            log_level,
            ..LoadOptions::default()
        })
    }

    /// As [`Loaded::load`], with every choice spelled out. The destination checks are always
    /// on: no option turns them off.
    pub fn load_with(options: LoadOptions) -> Result<(Self, Maps), LoadError> {
        Self::load_checked(options, DestinationChecks::On)
    }

    /// As [`Loaded::load_with`], but the program skips the destination checks (`host.rs` in
    /// the eBPF crate): only for the classifier benchmark, which measures what they cost
    /// against this copy in the same run. Such a program steers packets the kernel would not
    /// deliver; nothing but tests and benchmarks can call this (feature `testing`).
    #[cfg(feature = "testing")]
    pub fn load_without_destination_checks(
        options: LoadOptions,
    ) -> Result<(Self, Maps), LoadError> {
        Self::load_checked(options, DestinationChecks::Off)
    }

    fn load_checked(
        options: LoadOptions,
        checks: DestinationChecks,
    ) -> Result<(Self, Maps), LoadError> {
        let flow_key = match options.flow_key {
            Some(key) => key,
            None => random_flow_key().map_err(LoadError::Key)?,
        };
        let level = options.log_level as u8;
        let mut loader = EbpfLoader::new();
        loader.override_global("AYA_LOG_LEVEL", &level, false);
        loader.override_global(KEY_GLOBAL, &flow_key, true);
        let checks = checks as u32;
        loader.override_global(CHECKS_GLOBAL, &checks, true);
        if let Some(bindings) = options.bindings {
            for table in [
                maps::CONNECTED,
                maps::BOUND,
                maps::PREFIX_V4,
                maps::PREFIX_V6,
            ] {
                loader.map_max_entries(table, bindings);
            }
        }
        // The presence filter sized to the tables (`demux_common::presence`).
        let filter = presence::Filter::for_bindings(options.bindings.unwrap_or(MAX_BINDINGS));
        loader.map_max_entries(maps::PRESENCE, filter.entries());
        loader.override_global(presence::WORDS_LOG2_GLOBAL, &filter.words_log2, true);
        if options.extension {
            loader.extension(maps::PROGRAM);
        }
        let mut ebpf = loader.load(OBJECT).map_err(LoadError::Object)?;
        let template = if options.extension {
            let template = crate::multiprog::Dispatcher::template()
                .map_err(|e| LoadError::Dispatcher(Box::new(e)))?;
            let target = template.fd().map_err(LoadError::Verify)?;
            let program: &mut Extension = ebpf
                .program_mut(maps::PROGRAM)
                .and_then(|p| p.try_into().ok())
                .ok_or(LoadError::MissingProgram(maps::PROGRAM))?;
            program.load(target, "prog0").map_err(|source| {
                LoadError::Dispatcher(Box::new(crate::multiprog::MultiprogError::Extension {
                    source,
                }))
            })?;
            Some(template)
        } else {
            let program: &mut Xdp = ebpf
                .program_mut(maps::PROGRAM)
                .and_then(|p| p.try_into().ok())
                .ok_or(LoadError::MissingProgram(maps::PROGRAM))?;
            program.load().map_err(LoadError::Verify)?;
            None
        };
        let reuseport: &mut SkReuseport = ebpf
            .program_mut(maps::REUSEPORT_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or(LoadError::MissingProgram(maps::REUSEPORT_PROGRAM))?;
        let verify_reuseport = |source| LoadError::VerifyReuseport {
            program: maps::REUSEPORT_PROGRAM,
            source,
        };
        reuseport.load().map_err(verify_reuseport)?;
        let reuseport = reuseport
            .fd()
            .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
            .map_err(verify_reuseport)?;
        let map_fds = ebpf
            .maps()
            .filter_map(|(name, map)| {
                let fd = map_data(map)?.fd().as_fd().try_clone_to_owned().ok()?;
                Some((name.to_owned(), fd))
            })
            .collect();
        let slots = SocketSlots {
            maps: Arc::new(Mutex::new(SlotMaps {
                xsks: take_map(&mut ebpf, maps::XSKS, "an XSKMAP")?,
                limits: take_map(&mut ebpf, maps::XSK_FRAME_LIMITS, "an array of u32")?,
            })),
        };
        let dataplane = Maps::take(&mut ebpf, reuseport, filter)?;
        Ok((
            Self {
                ebpf,
                slots,
                flow_key,
                template,
                map_fds,
            },
            dataplane,
        ))
    }

    /// The key the program's flow hash was loaded with (to recompute `PacketMeta::flow_hash`
    /// in user space: `demux_common::hash::flow_hash`).
    pub fn flow_key(&self) -> FlowKey {
        self.flow_key
    }

    /// The verified XDP program.
    ///
    /// # Panics
    ///
    /// If it was loaded as an extension ([`LoadOptions::extension`]): see
    /// [`Loaded::extension_mut`].
    pub fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(maps::PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("loaded as an XDP program (LoadOptions::extension is false)")
    }

    /// The verified program as a dispatcher extension, if it was loaded as one.
    pub fn extension_mut(&mut self) -> Option<&mut Extension> {
        self.template.as_ref()?;
        self.ebpf
            .program_mut(maps::PROGRAM)
            .and_then(|p| p.try_into().ok())
    }

    /// The underlying object: its programs and the maps nobody took (the log ring, the
    /// benchmark's counters).
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// As [`Loaded::ebpf`], mutable (to load another program or start the log reader).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Steers (interface number `iface_number`, rx `queue`) to the AF_XDP socket `fd`, which
    /// takes frames up to `frame_limit` beyond one UMEM frame (see [`SocketSlot::set`]).
    /// `iface_number` (0 to `MAX_IFACES - 1`) gives the interface its own block of `MAX_QUEUES`
    /// XSKMAP slots; the program finds the block through the interface's `IFACE_SLOTS` entry,
    /// written with the same number by `Dataplane::set_iface`.
    pub fn register_socket(
        &mut self,
        iface_number: u32,
        queue: u32,
        fd: RawFd,
        frame_limit: u32,
    ) -> Result<(), SocketSlotError> {
        self.socket_slot(iface_number, queue)?.set(fd, frame_limit)
    }

    /// The slot of (interface number `iface_number`, rx `queue`), as a handle its worker keeps.
    pub fn socket_slot(
        &self,
        iface_number: u32,
        queue: u32,
    ) -> Result<SocketSlot, SocketSlotError> {
        if iface_number >= maps::MAX_IFACES || queue >= maps::MAX_QUEUES {
            return Err(SocketSlotError::OutOfRange {
                iface_number,
                queue,
            });
        }
        Ok(SocketSlot {
            maps: self.slots.maps.clone(),
            index: iface_number * maps::MAX_QUEUES + queue,
        })
    }

    /// Kernel memory of each of the program's maps (name, bytes), as the kernel accounts it
    /// (`memlock` in the map's fdinfo: actual use for maps that allocate on demand). Read
    /// through descriptors kept at load: looking maps up by id would need CAP_SYS_ADMIN,
    /// which the daemon never has.
    pub fn map_memory(&self) -> Vec<(String, u64)> {
        self.map_fds
            .iter()
            .map(|(name, fd)| {
                let fdinfo =
                    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
                        .unwrap_or_default();
                let bytes = fdinfo
                    .lines()
                    .find_map(|line| line.strip_prefix("memlock:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                (name.clone(), bytes)
            })
            .collect()
    }
}

/// The map's handle, for the kinds of map the programs declare.
fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::Array(data)
        | Map::PerCpuArray(data)
        | Map::HashMap(data)
        | Map::PerCpuHashMap(data)
        | Map::LruHashMap(data)
        | Map::LpmTrie(data)
        | Map::XskMap(data)
        | Map::ReusePortSockArray(data)
        | Map::RingBuf(data)
        | Map::PerfEventArray(data) => Some(data),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each draw is new: two loads (two daemon starts) get different keys.
    #[test]
    fn every_draw_is_a_new_key() {
        let keys: Vec<[u8; 16]> = (0..8)
            .map(|_| random_flow_key().expect("getrandom").to_bytes())
            .collect();
        for (i, a) in keys.iter().enumerate() {
            assert_ne!(*a, [0; 16]);
            assert_ne!(*a, FlowKey::UNSET.to_bytes());
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn a_wrong_layout_names_the_map_and_both_sizes() {
        let error = map_error(
            maps::BOUND,
            "a hash map",
            MapError::InvalidKeySize {
                size: 20,
                expected: 24,
            },
        );
        assert_eq!(
            error.to_string(),
            "map BOUND: key size: demux-common expects 20 bytes, the object has 24"
        );
        let error = map_error(
            maps::GROUPS,
            "an array",
            MapError::InvalidValueSize {
                size: 132,
                expected: 128,
            },
        );
        assert_eq!(
            error.to_string(),
            "map GROUPS: value size: demux-common expects 132 bytes, the object has 128"
        );
    }

    #[test]
    fn a_wrong_kind_or_name_names_the_map() {
        let error = map_error(
            maps::PREFIX_V4,
            "an LPM trie",
            MapError::InvalidMapType { map_type: 1 },
        );
        assert_eq!(
            error.to_string(),
            "map PREFIX_V4: expected an LPM trie, the object has map type 1"
        );
        assert_eq!(
            LoadError::MissingMap { map: maps::PORTS }.to_string(),
            "map PORTS: the embedded object has no map of that name"
        );
    }
}
