//! Sharing an interface with other XDP programs through libxdp's multi-program dispatcher
//! (xdp-tools' `lib/libxdp/protocol.org`, dispatcher version 2).
//!
//! XDP holds one program per interface. libxdp's convention puts a *dispatcher* there: an XDP
//! program that calls ten stub functions `prog0`…`prog9` in turn, each replaced by a component
//! program loaded as an extension (`BPF_PROG_TYPE_EXT`, freplace); a component's return value
//! ends the chain unless its bit is set in the slot's chain-call actions. Components are sorted
//! by run priority (lower first). A change never edits a running dispatcher: a new one is
//! loaded with the new set, every component is linked into it as well, the links and programs
//! are pinned under `<bpffs>/xdp/dispatch-<ifindex>-<dispatcher id>/prog<N>-{link,prog}`, the
//! new dispatcher replaces the old one atomically (`XDP_FLAGS_REPLACE`), and the old one's pins
//! are removed. All of it under an exclusive `flock` on `<bpffs>/xdp` (libxdp's lock; this
//! code holds it for the whole change). `<bpffs>` is `$LIBXDP_BPFFS` or `/sys/fs/bpf`.
//!
//! demux uses libxdp's own dispatcher object as installed by `libxdp1`
//! ([`DISPATCHER_OBJECTS`]), read at run time, so both sides run the same dispatcher code.
//! demux's program joins with run priority [`RUN_PRIORITY`] (after xdp-filter's 10 and
//! libxdp's default 50: filters and firewalls see every packet first) and continues the chain
//! only on `XDP_PASS`: a packet it redirects to an endpoint is done, one it passes goes on to
//! the programs after it and then the kernel.

pub mod config;
pub mod link;

use std::{
    fs::{self, File},
    io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, Map, MapData},
    programs::{
        links::FdLink, loaded_programs, Extension, ProgramError, ProgramFd, ProgramInfo, Xdp,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use thiserror::Error;
use tracing::{info, warn};

use self::{
    config::{DispatcherConfig, Slot, SIZE},
    link::{Attached, XdpState},
};

/// Where Debian's `libxdp1` (and upstream's default install) puts the dispatcher object.
pub const DISPATCHER_OBJECTS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/bpf/xdp-dispatcher.o",
    "/usr/lib/aarch64-linux-gnu/bpf/xdp-dispatcher.o",
    "/usr/lib/bpf/xdp-dispatcher.o",
    "/usr/local/lib/bpf/xdp-dispatcher.o",
];
/// The dispatcher's XDP function (and kernel program name), as libxdp checks it.
pub const DISPATCHER_PROGRAM: &str = "xdp_dispatcher";
/// demux's run priority in a dispatcher: after filtering programs (xdp-filter: 10; libxdp's
/// default: 50).
pub const RUN_PRIORITY: u32 = 100;
/// `XDP_PASS`.
const XDP_PASS: u32 = 2;
/// demux's chain-call actions: only a passed packet continues.
pub const CHAIN_CALL_ACTIONS: u32 = 1 << XDP_PASS;
const _: () = assert!(
    RUN_PRIORITY > 50,
    "demux runs after libxdp's default priority"
);

/// A failed step of the multi-program protocol, naming it.
#[derive(Debug, Error)]
pub enum MultiprogError {
    #[error(
        "no libxdp dispatcher object found (looked in {}); install libxdp1 (`apt install libxdp1`)",
        DISPATCHER_OBJECTS.join(", ")
    )]
    NoDispatcherObject,
    #[error("loading libxdp's dispatcher {path}: {source}")]
    LoadDispatcherObject {
        path: String,
        #[source]
        source: Box<EbpfError>,
    },
    #[error("the kernel refused libxdp's dispatcher: {0}")]
    VerifyDispatcher(#[source] ProgramError),
    #[error("the kernel refused an extension program (BPF_PROG_TYPE_EXT) for a dispatcher slot{}", extension_hint(.source))]
    Extension {
        #[source]
        source: ProgramError,
    },
    #[error("bpffs state directory {path}: {source} (is bpffs mounted there? `mount -t bpf bpf /sys/fs/bpf`)")]
    StateDir {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("taking libxdp's lock on {path}: {source}")]
    Lock {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("reading the XDP program attached to interface {ifindex} (rtnetlink): {source}")]
    Query {
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    #[error("interface {ifindex} runs XDP program {id} (`{name}`), not a libxdp dispatcher: demux cannot share it (use --xdp-mode direct after removing it, or load that program with xdp-loader)")]
    NotADispatcher { ifindex: u32, id: u32, name: String },
    #[error("interface {ifindex}: XDP attached in mode {mode}, which the dispatcher does not use")]
    UnsupportedMode { ifindex: u32, mode: u8 },
    #[error("reading the running dispatcher {id}: {source}")]
    ReadDispatcher {
        id: u32,
        #[source]
        source: ProgramError,
    },
    #[error("reading the running dispatcher {id}'s configuration map: {source}")]
    ReadConfig {
        id: u32,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("opening the pinned component {path}: {source}")]
    OpenComponent {
        path: String,
        #[source]
        source: ProgramError,
    },
    #[error("linking component `{name}` into the new dispatcher's slot {slot}: {source}")]
    Link {
        name: String,
        slot: usize,
        #[source]
        source: ProgramError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("attaching the new dispatcher to interface {ifindex}: {source}")]
    Swap {
        ifindex: u32,
        #[source]
        source: io::Error,
    },
}

impl From<aya::pin::PinError> for PinFailure {
    fn from(error: aya::pin::PinError) -> Self {
        PinFailure(io::Error::other(error.to_string()))
    }
}

/// An aya pin error as an `io::Error`.
struct PinFailure(io::Error);

/// The likely cause of a refused extension.
fn extension_hint(error: &ProgramError) -> &'static str {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(libc::EPERM) = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return " (EPERM before verification: this kernel refuses extension programs, \
                    as some virtualised kernels do; libxdp then falls back to one program per \
                    interface too; use --xdp-mode direct)";
        }
        current = e.source();
    }
    ""
}

/// The mode a new dispatcher is attached in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DispatcherMode {
    /// Native XDP.
    Driver,
    /// Generic XDP.
    Skb,
}

impl DispatcherMode {
    fn flags(self) -> u32 {
        match self {
            DispatcherMode::Driver => link::FLAGS_DRV_MODE,
            DispatcherMode::Skb => link::FLAGS_SKB_MODE,
        }
    }
}

/// A bpffs root set by [`use_bpffs`], over `$LIBXDP_BPFFS`.
static BPFFS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes this process use `root` as libxdp's bpffs (as `LIBXDP_BPFFS` would; for tests, which
/// cannot change their own environment safely). Once per process: a second call is refused
/// with the path it gave.
pub fn use_bpffs(root: PathBuf) -> Result<(), PathBuf> {
    BPFFS.set(root)
}

/// Where libxdp keeps its state: `<bpffs>/xdp`, `<bpffs>` being [`use_bpffs`]'s,
/// `$LIBXDP_BPFFS` or `/sys/fs/bpf`.
pub fn state_dir() -> PathBuf {
    let root = BPFFS.get().cloned().unwrap_or_else(|| {
        std::env::var_os("LIBXDP_BPFFS")
            .unwrap_or_else(|| "/sys/fs/bpf".into())
            .into()
    });
    root.join("xdp")
}

fn dispatch_dir(ifindex: u32, dispatcher_id: u32) -> PathBuf {
    state_dir().join(format!("dispatch-{ifindex}-{dispatcher_id}"))
}

/// libxdp's lock: held while the returned file is open.
fn lock() -> Result<File, MultiprogError> {
    let dir = state_dir();
    let path = dir.display().to_string();
    if let Err(source) = fs::create_dir(&dir) {
        if source.kind() != io::ErrorKind::AlreadyExists {
            return Err(MultiprogError::StateDir { path, source });
        }
    }
    let file = File::open(&dir).map_err(|source| MultiprogError::StateDir {
        path: path.clone(),
        source,
    })?;
    crate::sys::flock::lock_exclusive(&file)
        .map_err(|source| MultiprogError::Lock { path, source })?;
    Ok(file)
}

/// The installed dispatcher object.
pub fn dispatcher_object() -> Result<&'static str, MultiprogError> {
    DISPATCHER_OBJECTS
        .iter()
        .copied()
        .find(|path| Path::new(path).exists())
        .ok_or(MultiprogError::NoDispatcherObject)
}

/// A loaded (not attached) dispatcher.
pub struct Dispatcher {
    ebpf: Ebpf,
}

impl Dispatcher {
    /// Loads libxdp's dispatcher with `config`.
    pub fn load(config: &DispatcherConfig) -> Result<Self, MultiprogError> {
        let path = dispatcher_object()?;
        let bytes = config.to_bytes()?;
        let mut ebpf = EbpfLoader::new()
            .override_global("conf", &bytes, true)
            .load_file(path)
            .map_err(|source| MultiprogError::LoadDispatcherObject {
                path: path.to_owned(),
                source: Box::new(source),
            })?;
        let program: &mut Xdp = ebpf
            .program_mut(DISPATCHER_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| MultiprogError::LoadDispatcherObject {
                path: path.to_owned(),
                source: Box::new(EbpfError::ProgramError(ProgramError::NotLoaded)),
            })?;
        program.load().map_err(MultiprogError::VerifyDispatcher)?;
        Ok(Self { ebpf })
    }

    /// A one-slot dispatcher to load demux's extension against: the kernel checks an
    /// extension's signature at load time against a target, and the same program is then
    /// linked into any dispatcher's slot of the same signature.
    pub fn template() -> Result<Self, MultiprogError> {
        Self::load(&DispatcherConfig {
            is_xdp_frags: false,
            slots: vec![Slot {
                run_prio: RUN_PRIORITY,
                chain_call_actions: CHAIN_CALL_ACTIONS,
                flags: 0,
            }],
        })
    }

    fn program(&self) -> &Xdp {
        self.ebpf
            .program(DISPATCHER_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("checked in load()")
    }

    /// A descriptor of the dispatcher program.
    pub fn fd(&self) -> Result<ProgramFd, ProgramError> {
        self.program().fd()?.try_clone().map_err(ProgramError::from)
    }

    /// The dispatcher's program id.
    pub fn id(&self) -> Result<u32, ProgramError> {
        Ok(self.program().info()?.id())
    }
}

/// The dispatcher on an interface as read back: its id, mode and slots with the kernel names
/// of their programs, in run order.
#[derive(Debug)]
pub struct Description {
    /// The dispatcher's program id.
    pub id: u32,
    /// How it is attached.
    pub mode: DispatcherMode,
    /// (program name, slot) in run order.
    pub slots: Vec<(String, Slot)>,
}

/// What runs on `ifindex` if it is a libxdp dispatcher (`None` for no program); an error for
/// another program or a dispatcher this code cannot read. Takes libxdp's lock.
pub fn describe(ifindex: u32) -> Result<Option<Description>, MultiprogError> {
    let _lock = lock()?;
    Ok(running(ifindex)?.map(|running| Description {
        id: running.id,
        mode: running.mode,
        slots: running
            .components
            .into_iter()
            .map(|c| (c.name, c.slot))
            .collect(),
    }))
}

/// One program in a dispatcher slot, from its pin.
struct Component {
    program: Extension,
    name: String,
    id: u32,
    slot: Slot,
}

/// The dispatcher running on an interface, read under the lock.
struct Running {
    id: u32,
    fd: ProgramFd,
    mode: DispatcherMode,
    /// Enabled slots (pins to remove once replaced).
    slots: usize,
    components: Vec<Component>,
}

fn program_by_id(id: u32) -> Result<ProgramInfo, ProgramError> {
    loaded_programs()
        .filter_map(Result::ok)
        .find(|info| info.id() == id)
        .ok_or(ProgramError::NotLoaded)
}

/// Why a dispatcher's configuration could not be read.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error("a dispatcher has one map, this program has {0}")]
    Maps(usize),
    #[error("reading the program's maps: {0}")]
    Info(#[source] ProgramError),
    #[error("reading the configuration map: {0}")]
    Map(#[source] aya::maps::MapError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}

/// The configuration of the dispatcher program `info` (its one map, `.rodata`).
pub fn read_config(info: &ProgramInfo) -> Result<DispatcherConfig, ReadError> {
    let map_ids = info.map_ids().map_err(ReadError::Info)?.unwrap_or_default();
    let [map_id] = map_ids[..] else {
        return Err(ReadError::Maps(map_ids.len()));
    };
    let map = Map::from_map_data(MapData::from_id(map_id).map_err(ReadError::Map)?)
        .map_err(ReadError::Map)?;
    let array: Array<MapData, [u8; SIZE]> = Array::try_from(map).map_err(ReadError::Map)?;
    Ok(DispatcherConfig::from_bytes(
        &array.get(&0, 0).map_err(ReadError::Map)?,
    )?)
}

/// The program with id `id`.
pub fn program_info(id: u32) -> Result<ProgramInfo, ProgramError> {
    program_by_id(id)
}

/// What runs on `ifindex`: `None` for nothing, the dispatcher and its components, or an error
/// for a program that is not a dispatcher.
fn running(ifindex: u32) -> Result<Option<Running>, MultiprogError> {
    let XdpState { attached, prog_id } =
        link::query(ifindex).map_err(|source| MultiprogError::Query { ifindex, source })?;
    let mode = match attached {
        Attached::None => return Ok(None),
        Attached::Driver => DispatcherMode::Driver,
        Attached::Skb => DispatcherMode::Skb,
        Attached::Other(mode) => return Err(MultiprogError::UnsupportedMode { ifindex, mode }),
    };
    let read = |source| MultiprogError::ReadDispatcher {
        id: prog_id,
        source,
    };
    let info = program_by_id(prog_id).map_err(read)?;
    let name = info.name_as_str().unwrap_or("?").to_owned();
    if name != DISPATCHER_PROGRAM {
        return Err(MultiprogError::NotADispatcher {
            ifindex,
            id: prog_id,
            name,
        });
    }
    let config = read_config(&info).map_err(|error| match error {
        ReadError::Maps(count) => MultiprogError::NotADispatcher {
            ifindex,
            id: prog_id,
            name: format!("{name} with {count} maps"),
        },
        ReadError::Map(source) => MultiprogError::ReadConfig {
            id: prog_id,
            source,
        },
        ReadError::Info(source) => read(source),
        ReadError::Config(error) => MultiprogError::Config(error),
    })?;
    let dir = dispatch_dir(ifindex, prog_id);
    let mut components = Vec::with_capacity(config.slots.len());
    for (i, slot) in config.slots.iter().enumerate() {
        let path = dir.join(format!("prog{i}-prog"));
        let open = |source| MultiprogError::OpenComponent {
            path: path.display().to_string(),
            source,
        };
        let program = Extension::from_pin(&path).map_err(open)?;
        let info = program.info().map_err(open)?;
        components.push(Component {
            name: info.name_as_str().unwrap_or("?").to_owned(),
            id: info.id(),
            program,
            slot: *slot,
        });
    }
    Ok(Some(Running {
        id: prog_id,
        fd: info.fd().map_err(read)?,
        mode,
        slots: components.len(),
        components,
    }))
}

/// Removes the pins of dispatcher `id` on `ifindex` (`slots` of them).
fn unpin(ifindex: u32, id: u32, slots: usize) {
    let dir = dispatch_dir(ifindex, id);
    for i in 0..slots {
        for kind in ["link", "prog"] {
            let path = dir.join(format!("prog{i}-{kind}"));
            if let Err(e) = fs::remove_file(&path) {
                warn!("removing {}: {e}", path.display());
            }
        }
    }
    if let Err(e) = fs::remove_dir(&dir) {
        warn!("removing {}: {e}", dir.display());
    }
}

/// A program to put into a dispatcher: a borrowed extension (demux's own, loaded against a
/// [`Dispatcher::template`]) or one read from another dispatcher's pins.
enum Member<'a> {
    Ours(&'a mut Extension),
    Theirs(Box<Extension>),
}

impl Member<'_> {
    fn extension(&mut self) -> &mut Extension {
        match self {
            Member::Ours(program) => program,
            Member::Theirs(program) => program,
        }
    }
}

/// libxdp's run order: run priority, then program name (libxdp breaks rarer ties by load
/// state, size, tag and load time; two components of equal priority and name do not occur
/// here, as demux drops its own earlier component).
fn run_order(a: (&str, &Slot), b: (&str, &Slot)) -> std::cmp::Ordering {
    (a.1.run_prio, a.0).cmp(&(b.1.run_prio, b.0))
}

/// Builds a dispatcher with `members` (sorted here by run priority, then name, as libxdp
/// does), links and pins every member, and puts it on `ifindex` in place of `old` (or as the
/// first program). Returns the new dispatcher's id.
fn install(
    ifindex: u32,
    mut members: Vec<(Member<'_>, String, Slot)>,
    old: Option<&Running>,
    mode: DispatcherMode,
) -> Result<u32, MultiprogError> {
    members.sort_by(|a, b| run_order((&a.1, &a.2), (&b.1, &b.2)));
    let all_frags = members.iter().all(|m| m.2.flags != 0);
    let config = DispatcherConfig {
        is_xdp_frags: false,
        slots: members.iter().map(|m| m.2).collect(),
    };
    if all_frags && !members.is_empty() {
        warn!("every component takes multi-buffer frames, the new dispatcher does not: demux's program does not either");
    }
    let dispatcher = Dispatcher::load(&config)?;
    let target = dispatcher.fd().map_err(MultiprogError::VerifyDispatcher)?;
    let id = dispatcher.id().map_err(MultiprogError::VerifyDispatcher)?;
    let mut links = Vec::with_capacity(members.len());
    for (slot, (member, name, _)) in members.iter_mut().enumerate() {
        let link_error = |source| MultiprogError::Link {
            name: name.clone(),
            slot,
            source,
        };
        let program = member.extension();
        let link_id = program
            .attach_to_program(&target, &format!("prog{slot}"))
            .map_err(link_error)?;
        let link: FdLink = program.take_link(link_id).map_err(link_error)?.into();
        links.push(link);
    }
    // Pin everything first: once pinned, no crash of ours can unravel the new dispatcher.
    let dir = dispatch_dir(ifindex, id);
    let pin_error = |path: &Path, source: io::Error| MultiprogError::Pin {
        path: path.display().to_string(),
        source,
    };
    fs::create_dir(&dir).map_err(|e| pin_error(&dir, e))?;
    let pinned = (|| {
        for (slot, (link, (member, _, _))) in links.into_iter().zip(members.iter_mut()).enumerate()
        {
            let path = dir.join(format!("prog{slot}-link"));
            link.pin(&path)
                .map_err(|e| pin_error(&path, PinFailure::from(e).0))?;
            let path = dir.join(format!("prog{slot}-prog"));
            member
                .extension()
                .pin(&path)
                .map_err(|e| pin_error(&path, PinFailure::from(e).0))?;
        }
        Ok(())
    })();
    let swapped = pinned.and_then(|()| {
        let new = target.as_fd();
        let result = match old {
            Some(old) => link::set(
                ifindex,
                Some(new),
                mode.flags() | link::FLAGS_REPLACE,
                Some(old.fd.as_fd()),
            ),
            None => link::set(
                ifindex,
                Some(new),
                mode.flags() | link::FLAGS_UPDATE_IF_NOEXIST,
                None,
            ),
        };
        result.map_err(|source| MultiprogError::Swap { ifindex, source })
    });
    if let Err(error) = swapped {
        remove_pins(&dir);
        return Err(error);
    }
    if let Some(old) = old {
        unpin(ifindex, old.id, old.slots);
    }
    Ok(id)
}

/// Removes whatever is pinned in `dir`, then `dir` (undoing a half-made dispatcher).
fn remove_pins(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = fs::remove_file(entry.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Where demux's program went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The interface.
    pub ifindex: u32,
    /// The dispatcher that now runs demux (and the others).
    pub dispatcher_id: u32,
    /// demux's slot in it, counting from 0.
    pub slot: usize,
    /// The other programs in the dispatcher, by kernel name.
    pub others: Vec<String>,
}

/// Whether `ifindex` runs a libxdp dispatcher now.
pub fn has_dispatcher(ifindex: u32) -> Result<bool, MultiprogError> {
    let XdpState { prog_id, .. } =
        link::query(ifindex).map_err(|source| MultiprogError::Query { ifindex, source })?;
    if prog_id == 0 {
        return Ok(false);
    }
    let info = program_by_id(prog_id).map_err(|source| MultiprogError::ReadDispatcher {
        id: prog_id,
        source,
    })?;
    Ok(info.name_as_str() == Some(DISPATCHER_PROGRAM))
}

/// Puts demux's extension `ours` (kernel name `name`) into the dispatcher on `ifindex`, or a
/// new dispatcher in `mode` when the interface has no program. An earlier demux component of
/// the same name (left by a daemon that was killed) is dropped from the new dispatcher.
pub fn join(
    ifindex: u32,
    ours: &mut Extension,
    name: &str,
    mode: DispatcherMode,
) -> Result<Joined, MultiprogError> {
    let _lock = lock()?;
    let mut old = running(ifindex)?;
    let mode = old.as_ref().map_or(mode, |old| old.mode);
    let mut members = Vec::new();
    let mut others = Vec::new();
    for component in old
        .as_mut()
        .map(|old| std::mem::take(&mut old.components))
        .unwrap_or_default()
    {
        if component.name == name {
            info!(
                ifindex,
                id = component.id,
                "dropping a stale demux program from the dispatcher"
            );
            continue;
        }
        others.push(component.name.clone());
        members.push((
            Member::Theirs(Box::new(component.program)),
            component.name,
            component.slot,
        ));
    }
    let ours_slot = Slot {
        run_prio: RUN_PRIORITY,
        chain_call_actions: CHAIN_CALL_ACTIONS,
        flags: 0,
    };
    members.push((Member::Ours(ours), name.to_owned(), ours_slot));
    let mut order: Vec<(&str, &Slot)> = members.iter().map(|m| (m.1.as_str(), &m.2)).collect();
    order.sort_by(|a, b| run_order(*a, *b));
    let slot = order.iter().position(|(n, _)| *n == name).unwrap_or(0);
    let dispatcher_id = install(ifindex, members, old.as_ref(), mode)?;
    Ok(Joined {
        ifindex,
        dispatcher_id,
        slot,
        others,
    })
}

/// Takes the components named `name` (demux's) out of the dispatcher on `ifindex`: a new
/// dispatcher without them replaces it, or, when nothing else is left, the dispatcher is
/// removed from the interface. Their pins are removed either way. Returns how many were taken
/// out (0 when the interface has no dispatcher or none of them).
pub fn leave(ifindex: u32, name: &str) -> Result<usize, MultiprogError> {
    if !state_dir().is_dir() {
        // No libxdp state (no bpffs, or nothing ever pinned): nothing of demux's is pinned.
        return Ok(0);
    }
    let _lock = lock()?;
    let Some(mut old) = running(ifindex)? else {
        return Ok(0);
    };
    let removed = old.components.iter().filter(|c| c.name == name).count();
    if removed == 0 {
        return Ok(0);
    }
    let mut members = Vec::new();
    for component in std::mem::take(&mut old.components) {
        if component.name != name {
            members.push((
                Member::Theirs(Box::new(component.program)),
                component.name,
                component.slot,
            ));
        }
    }
    if members.is_empty() {
        link::set(
            ifindex,
            None,
            old.mode.flags() | link::FLAGS_REPLACE,
            Some(old.fd.as_fd()),
        )
        .map_err(|source| MultiprogError::Swap { ifindex, source })?;
        unpin(ifindex, old.id, old.slots);
    } else {
        install(ifindex, members, Some(&old), old.mode)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demux_runs_after_filters_and_default_priority_programs() {
        let slot = |run_prio| Slot {
            run_prio,
            chain_call_actions: CHAIN_CALL_ACTIONS,
            flags: 0,
        };
        let (filter, default, ours, tie) = (slot(10), slot(50), slot(RUN_PRIORITY), slot(50));
        let mut members = [
            ("demux", &ours),
            ("zz_lb", &default),
            ("xdpfilt_alw_all", &filter),
            ("aa_fw", &tie),
        ];
        members.sort_by(|a, b| run_order(*a, *b));
        let names: Vec<&str> = members.iter().map(|m| m.0).collect();
        assert_eq!(names, ["xdpfilt_alw_all", "aa_fw", "zz_lb", "demux"]);
    }
}
