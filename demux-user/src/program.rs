//! The embedded XDP object: loading it into the kernel (verifier included) and handing out its
//! program and maps.

use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};

use aya::{
    maps::{HashMap, MapData, MapError, MapInfo, XskMap},
    programs::{ProgramError, Xdp},
    Ebpf, EbpfError, EbpfLoader,
};
use demux_common::maps;
use thiserror::Error;

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
    #[error("parsing or creating the maps of the embedded XDP object failed: {0}")]
    Object(#[source] EbpfError),
    #[error("the embedded object has no XDP program named `{0}`")]
    MissingProgram(&'static str),
    #[error("the kernel refused to load the XDP program (verifier or permissions): {0}")]
    Verify(#[source] ProgramError),
}

/// A failure to put an AF_XDP socket in its XSKMAP slot.
#[derive(Debug, Error)]
pub enum SocketSlotError {
    #[error("interface number {iface_number} or queue {queue} is beyond the XSKMAP (at most {} interfaces of {} queues)", maps::MAX_IFACES, maps::MAX_QUEUES)]
    OutOfRange { iface_number: u32, queue: u32 },
    #[error("the object has no map {0}")]
    MissingMap(&'static str),
    #[error("updating the socket slots: {0}")]
    Map(#[from] MapError),
}

/// The loaded object: the program is verified and ready to attach; its maps are open.
pub struct Loaded {
    ebpf: Ebpf,
}

impl Loaded {
    /// Loads the embedded object and verifies its XDP program.
    pub fn load(log_level: BpfLogLevel) -> Result<Self, LoadError> {
        Self::load_with_capacity(log_level, None)
    }

    /// As [`Loaded::load`], with each binding table holding at most `bindings` entries instead
    /// of `MAX_BINDINGS` (for tests of a full table).
    pub fn load_with_capacity(
        log_level: BpfLogLevel,
        bindings: Option<u32>,
    ) -> Result<Self, LoadError> {
        let level = log_level as u8;
        let mut loader = EbpfLoader::new();
        loader.override_global("AYA_LOG_LEVEL", &level, false);
        if let Some(bindings) = bindings {
            for table in [maps::CONNECTED, maps::BOUND, maps::PREFIX, maps::WILDCARD] {
                loader.map_max_entries(table, bindings);
            }
        }
        let mut ebpf = loader.load(OBJECT).map_err(LoadError::Object)?;
        let program: &mut Xdp = ebpf
            .program_mut(maps::PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or(LoadError::MissingProgram(maps::PROGRAM))?;
        program.load().map_err(LoadError::Verify)?;
        Ok(Self { ebpf })
    }

    /// The verified XDP program.
    pub fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(maps::PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("checked in load()")
    }

    /// The underlying object, for its maps.
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Steers (interface `ifindex`, rx `queue`) to the AF_XDP socket `fd`. `iface_number`
    /// (0 to `MAX_IFACES - 1`) gives the interface its own block of `MAX_QUEUES` XSKMAP slots.
    pub fn register_socket(
        &mut self,
        ifindex: u32,
        iface_number: u32,
        queue: u32,
        fd: RawFd,
    ) -> Result<(), SocketSlotError> {
        if iface_number >= maps::MAX_IFACES || queue >= maps::MAX_QUEUES {
            return Err(SocketSlotError::OutOfRange {
                iface_number,
                queue,
            });
        }
        let base = iface_number * maps::MAX_QUEUES;
        let slots = self
            .ebpf
            .map_mut(maps::IFACE_SLOTS)
            .ok_or(SocketSlotError::MissingMap(maps::IFACE_SLOTS))?;
        let mut slots: HashMap<&mut MapData, u32, u32> = HashMap::try_from(slots)?;
        slots.insert(ifindex, base, 0)?;
        let xsks = self
            .ebpf
            .map_mut(maps::XSKS)
            .ok_or(SocketSlotError::MissingMap(maps::XSKS))?;
        let mut xsks: XskMap<&mut MapData> = XskMap::try_from(xsks)?;
        xsks.set(base + queue, fd, 0)?;
        Ok(())
    }

    /// Kernel memory of each of the program's maps (name, bytes), as the kernel accounts it
    /// (`memlock` in the map's fdinfo: actual use for maps that allocate on demand).
    pub fn map_memory(&mut self) -> Result<Vec<(String, u64)>, ProgramError> {
        let ids = self.program_mut().info()?.map_ids()?.unwrap_or_default();
        let mut sizes = Vec::with_capacity(ids.len());
        for id in ids {
            let Ok(info) = MapInfo::from_id(id) else {
                continue;
            };
            let Ok(fd) = info.fd() else { continue };
            let fdinfo =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd()))
                    .unwrap_or_default();
            let bytes = fdinfo
                .lines()
                .find_map(|line| line.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            sizes.push((info.name_as_str().unwrap_or("?").to_owned(), bytes));
        }
        Ok(sizes)
    }
}
