//! One AF_XDP socket per (interface, rx queue): its UMEM, fill and rx rings, and the free list
//! that keeps every frame accounted for.
//!
//! The XDP program redirects a steered frame to `XSKS[IFACE_SLOTS[ifindex] + rx queue]` (see
//! [`crate::program::Loaded::register_socket`]) with its [`PacketMeta`] right in front of it;
//! [`QueueSocket::receive`] hands each frame and its metadata to a callback, then returns the
//! frame to the free list and the free list to the fill ring. The kernel may take fewer frames
//! than offered: the rest stay on the free list, never lost (a lost frame would starve the fill
//! ring within seconds). A socket binds in the [`BindMode`] it is given: copy mode on every
//! driver (veth has nothing else), zero-copy where the driver has it (see
//! [`crate::zero_copy`] for when the daemon asks for it). The UMEM suits both: page-aligned
//! memory, 4,096-byte aligned frames (the kernel's aligned mode takes 2,048 up to a page, the
//! range zero-copy drivers handle), no extra headroom; the kernel pins it when it is
//! registered, in either mode.
//!
//! Multi-buffer (jumbo) frames: [`QueueSocket::open`] binds with `XDP_USE_SG` where the kernel
//! takes it (Linux 6.6+; zero-copy also needs the driver's support) and without it where the
//! bind is refused. With it, the kernel puts a frame longer than one UMEM frame
//! ([`MAX_XSK_FRAME`] bytes) in several, one rx descriptor each, `XDP_PKT_CONTD` set on all but
//! the last; [`QueueSocket::receive`] gathers such a chain into one buffer (`Chain`) and
//! hands it over whole, and every frame of the chain goes back to the free list as it is read,
//! also when the chain is broken (counted, [`ChainError`]). The socket's
//! [`QueueSocket::frame_limit`] goes into the program's `XSK_FRAME_LIMITS` beside its `XSKS`
//! slot, so the program passes what the socket could not take.

use std::{
    ffi::CString,
    num::NonZeroU32,
    os::fd::{AsRawFd, RawFd},
    sync::atomic::Ordering::Acquire,
};

use demux_common::meta::{PacketMeta, MAX_XSK_FRAME, MAX_XSK_SEGMENTS, MAX_XSK_SG_FRAME};
use thiserror::Error;
use xdpilone::{
    xdp::{XdpDesc, XdpStatisticsV2},
    DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, UmemConfig, User,
};

use crate::sys::{shm::Mapping, UmemArea};

/// Size of one UMEM frame (the program passes what does not fit one: `pass_too_large`).
pub const FRAME_SIZE: u32 = demux_common::meta::UMEM_FRAME_SIZE;

/// A failed step while opening an AF_XDP socket.
#[derive(Debug, Error)]
pub enum XskError {
    #[error("interface `{iface}`: {reason}")]
    Interface { iface: String, reason: String },
    #[error(
        "AF_XDP on `{iface}` queue {queue}: the driver lacks AF_XDP zero-copy (binding with \
         XDP_ZEROCOPY failed: {errno}); start with `--zero-copy off` or `auto` (`zero_copy` in \
         the config file)"
    )]
    NoZeroCopy {
        iface: String,
        queue: u32,
        errno: String,
    },
    #[error("AF_XDP on `{iface}` queue {queue}: {step} failed: {errno}")]
    Step {
        iface: String,
        queue: u32,
        step: &'static str,
        errno: String,
    },
}

/// How a socket binds to its queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindMode {
    /// `XDP_COPY`: the kernel copies each frame into the UMEM (every driver, veth included).
    Copy,
    /// `XDP_ZEROCOPY`: the driver receives into the UMEM itself; the bind fails where the
    /// driver lacks it.
    ZeroCopy,
}

impl BindMode {
    /// The bind flag.
    pub fn flag(self) -> u16 {
        match self {
            BindMode::Copy => SocketConfig::XDP_BIND_COPY,
            BindMode::ZeroCopy => SocketConfig::XDP_BIND_ZEROCOPY,
        }
    }

    fn name(self) -> &'static str {
        match self {
            BindMode::Copy => "copy mode",
            BindMode::ZeroCopy => "zero-copy",
        }
    }
}

/// The error of binding in `mode`: a zero-copy bind the driver refuses (`EOPNOTSUPP`: no
/// zero-copy at all; `EINVAL`: not with this UMEM or queue) says so and names the fix.
fn bind_error(
    iface: &str,
    queue: u32,
    mode: BindMode,
    what: &'static str,
) -> impl Fn(xdpilone::Errno) -> XskError {
    let iface = iface.to_owned();
    move |errno| {
        let refused = matches!(errno.get_raw(), libc::EOPNOTSUPP | libc::EINVAL);
        if mode == BindMode::ZeroCopy && refused {
            XskError::NoZeroCopy {
                iface: iface.clone(),
                queue,
                errno: errno.to_string(),
            }
        } else {
            XskError::Step {
                iface: iface.clone(),
                queue,
                step: what,
                errno: format!("{errno} ({})", mode.name()),
            }
        }
    }
}

/// The parts every AF_XDP socket here needs: its own UMEM on `frames` chunks, a socket on
/// (`iface`, `queue`), the fill/completion rings, and the packet ring(s) `config` asks for
/// (bound later with `config.bind_flags`).
struct Parts {
    user: User,
    device: DeviceQueue,
    socket: Socket,
    umem: UmemArea,
}

/// Turns an xdpilone errno into an error naming the socket and the step.
fn step(iface: &str, queue: u32, step: &'static str) -> impl Fn(xdpilone::Errno) -> XskError {
    let iface = iface.to_owned();
    move |errno| XskError::Step {
        iface: iface.clone(),
        queue,
        step,
        errno: errno.to_string(),
    }
}

fn open_parts(
    iface: &str,
    queue: u32,
    frames: u32,
    config: SocketConfig,
) -> Result<Parts, XskError> {
    open_parts_on(iface, queue, frames, config, None)
}

/// As [`open_parts`]; with `memfd`, the UMEM is on a sealed memfd, put there.
fn open_parts_on(
    iface: &str,
    queue: u32,
    frames: u32,
    config: SocketConfig,
    memfd: Option<&mut Option<std::fs::File>>,
) -> Result<Parts, XskError> {
    let umem_config = UmemConfig {
        fill_size: frames,
        complete_size: frames,
        frame_size: FRAME_SIZE,
        headroom: 0,
        flags: 0,
    };
    let len = frames as usize * FRAME_SIZE as usize;
    let umem = match memfd {
        None => UmemArea::new(umem_config, len),
        Some(out) => UmemArea::on_memfd(umem_config, len).map(|(umem, file)| {
            *out = Some(file);
            umem
        }),
    }
    .map_err(|e| XskError::Step {
        iface: iface.to_owned(),
        queue,
        step: "allocating and registering the UMEM",
        errno: e.to_string(),
    })?;
    let mut info = IfInfo::invalid();
    let name = CString::new(iface).map_err(|_| XskError::Interface {
        iface: iface.to_owned(),
        reason: "the name contains a NUL byte".into(),
    })?;
    info.from_name(&name).map_err(|e| XskError::Interface {
        iface: iface.to_owned(),
        reason: format!("not found ({e})"),
    })?;
    info.set_queue(queue);
    let socket = Socket::with_shared(&info, umem.umem()).map_err(step(
        iface,
        queue,
        "creating the socket",
    ))?;
    let device = umem.umem().fq_cq(&socket).map_err(step(
        iface,
        queue,
        "creating the fill/completion rings",
    ))?;
    let user = umem.umem().rx_tx(&socket, &config).map_err(step(
        iface,
        queue,
        "creating the packet ring",
    ))?;
    Ok(Parts {
        user,
        device,
        socket,
        umem,
    })
}

/// An AF_XDP socket bound to one rx queue, with its own UMEM.
pub struct QueueSocket {
    // Field order is drop order: rings and socket before the UMEM before its memory.
    rx: RingRx,
    device: DeviceQueue,
    user: User,
    _socket: Socket,
    umem: UmemArea,
    /// Frame addresses the kernel does not hold: handed to the fill ring as it takes them.
    free: Vec<u64>,
    frames: u32,
    /// Bound with `XDP_USE_SG`.
    sg: bool,
    /// Why a bind with `XDP_USE_SG` was refused.
    sg_refused: Option<String>,
    /// The multi-buffer frame being gathered (it may continue in the next batch).
    chain: Chain,
    pub iface: String,
    pub queue: u32,
    mode: BindMode,
}

/// Why [`QueueSocket::open_as`] failed: the bind with `XDP_USE_SG` was refused with this
/// errno, or a step failed.
enum Opened {
    Refused(xdpilone::Errno),
    Failed(XskError),
}

impl From<XskError> for Opened {
    fn from(e: XskError) -> Self {
        Opened::Failed(e)
    }
}

/// One packet [`QueueSocket::receive`] read.
pub enum Received<'a> {
    /// A whole frame (gathered when it spanned several descriptors), with its metadata when the
    /// bytes in front of its first descriptor carry the current ABI version.
    Frame(&'a [u8], Option<PacketMeta>),
    /// A chain of descriptors that is no usable frame: dropped (its frames are recycled).
    Broken(ChainError),
}

impl std::fmt::Debug for Received<'_> {
    /// The frame's length, not its bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Received::Frame(bytes, meta) => write!(f, "Frame({} bytes, {meta:?})", bytes.len()),
            Received::Broken(e) => write!(f, "Broken({e:?})"),
        }
    }
}

/// Why a chain of rx descriptors (`XDP_PKT_CONTD`) was dropped. The kernel produces neither;
/// the worker counts them as `dropped_bad_chain`.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ChainError {
    /// More descriptors than [`MAX_XSK_SEGMENTS`] (longer than the program lets through).
    #[error("a frame over more than {MAX_XSK_SEGMENTS} descriptors")]
    TooLong,
    /// A descriptor that points outside its UMEM frame or outside the UMEM.
    #[error("a descriptor outside its UMEM frame")]
    OutOfFrame,
}

/// A multi-buffer frame being gathered: the bytes of its descriptors so far, in order, and the
/// metadata in front of the first. Pure bookkeeping, so that its rules are tested without a
/// kernel: a chain that breaks (too many descriptors, one out of bounds) swallows descriptors
/// up to its last and is reported once, as [`ChainError`].
#[derive(Default)]
struct Chain {
    bytes: Vec<u8>,
    meta: Option<PacketMeta>,
    segments: u32,
    broken: Option<ChainError>,
}

impl Chain {
    /// Whether a chain is being gathered (its last descriptor not read yet).
    fn is_open(&self) -> bool {
        self.segments > 0
    }

    /// Adds one descriptor's bytes (`None`: the descriptor was out of bounds) and, for the
    /// first, its metadata. `last`: the descriptor has no `XDP_PKT_CONTD`. Returns the packet
    /// when this was the last descriptor.
    fn push(
        &mut self,
        bytes: Option<&[u8]>,
        meta: Option<PacketMeta>,
        last: bool,
    ) -> Option<Received<'_>> {
        if self.segments == 0 {
            self.bytes.clear();
            self.meta = meta;
        }
        self.segments = self.segments.saturating_add(1);
        if self.broken.is_none() {
            match bytes {
                _ if self.segments > MAX_XSK_SEGMENTS => self.broken = Some(ChainError::TooLong),
                None => self.broken = Some(ChainError::OutOfFrame),
                Some(bytes) => self.bytes.extend_from_slice(bytes),
            }
        }
        if !last {
            return None;
        }
        // The bytes stay until the next chain's first push: the packet returned borrows them.
        self.segments = 0;
        let meta = self.meta.take();
        Some(match self.broken.take() {
            Some(e) => Received::Broken(e),
            None => Received::Frame(&self.bytes, meta),
        })
    }
}

impl QueueSocket {
    /// Opens a socket on `iface` rx queue `queue` with `frames` UMEM frames (a power of two),
    /// bound in `mode`, with `XDP_USE_SG` where the kernel (and, for zero-copy, the driver)
    /// takes it, and hands all of them to the fill ring. A bind with `XDP_USE_SG` refused with
    /// `EINVAL` (a kernel before 6.6 knows no such flag) or `EOPNOTSUPP` (a zero-copy driver
    /// without multi-buffer support) is tried again, on a fresh socket, without it:
    /// [`QueueSocket::sg_refused`] says why.
    pub fn open(iface: &str, queue: u32, frames: u32, mode: BindMode) -> Result<Self, XskError> {
        let failed = |opened| match opened {
            Opened::Failed(e) => e,
            Opened::Refused(errno) => {
                bind_error(iface, queue, mode, "binding with XDP_USE_SG")(errno)
            }
        };
        match Self::open_as(iface, queue, frames, mode, true) {
            Ok(socket) => Ok(socket),
            Err(Opened::Refused(errno))
                if matches!(errno.get_raw(), libc::EINVAL | libc::EOPNOTSUPP) =>
            {
                let mut socket =
                    Self::open_as(iface, queue, frames, mode, false).map_err(failed)?;
                socket.sg_refused = Some(errno.to_string());
                Ok(socket)
            }
            Err(e) => Err(failed(e)),
        }
    }

    /// As [`QueueSocket::open`], with `XDP_USE_SG` or without.
    fn open_as(
        iface: &str,
        queue: u32,
        frames: u32,
        mode: BindMode,
        sg: bool,
    ) -> Result<Self, Opened> {
        let sg_flag = if sg { libc::XDP_USE_SG } else { 0 };
        let config = SocketConfig {
            rx_size: NonZeroU32::new(frames),
            tx_size: None,
            bind_flags: mode.flag() | sg_flag,
        };
        let Parts {
            user,
            device,
            socket,
            umem,
        } = open_parts(iface, queue, frames, config)?;
        let rx = user
            .map_rx()
            .map_err(step(iface, queue, "mapping the rx ring"))?;
        if let Err(errno) = umem.umem().bind(&user) {
            if sg {
                return Err(Opened::Refused(errno));
            }
            return Err(bind_error(iface, queue, mode, "binding")(errno).into());
        }
        let mut socket = Self {
            rx,
            device,
            user,
            _socket: socket,
            umem,
            free: (0..u64::from(frames))
                .map(|i| i * u64::from(FRAME_SIZE))
                .collect(),
            frames,
            sg,
            sg_refused: None,
            chain: Chain::default(),
            iface: iface.to_owned(),
            queue,
            mode,
        };
        socket.refill();
        Ok(socket)
    }

    /// The longest frame the socket takes beyond one UMEM frame, for the program's
    /// `XSK_FRAME_LIMITS` ([`crate::program::SocketSlot::set`]): [`MAX_XSK_SG_FRAME`] when it is
    /// bound with `XDP_USE_SG`, 0 when not.
    pub fn frame_limit(&self) -> u32 {
        if self.sg {
            MAX_XSK_SG_FRAME
        } else {
            0
        }
    }

    /// Why the kernel refused `XDP_USE_SG` (the socket is bound without it), if it did.
    pub fn sg_refused(&self) -> Option<&str> {
        self.sg_refused.as_deref()
    }

    /// One line saying how the socket is bound and what frames it takes, for the log.
    pub fn describe(&self) -> String {
        match (&self.sg_refused, self.sg) {
            (_, true) => format!(
                "AF_XDP socket on {} queue {}: {} with XDP_USE_SG (multi-buffer): frames up to \
                 {} bytes through AF_XDP",
                self.iface,
                self.queue,
                self.mode.name(),
                MAX_XSK_SG_FRAME
            ),
            (refused, false) => format!(
                "AF_XDP socket on {} queue {}: {} without XDP_USE_SG ({}): frames longer than \
                 {MAX_XSK_FRAME} bytes pass to the kernel (`pass_too_large`) and reach \
                 endpoints through their backing sockets",
                self.iface,
                self.queue,
                self.mode.name(),
                refused.as_deref().map_or_else(
                    || "not asked".to_owned(),
                    |e| format!("the kernel refused it: {e}")
                ),
            ),
        }
    }

    /// Offers every free frame to the fill ring; what the kernel does not take stays free.
    pub fn refill(&mut self) {
        let mut writer = self.device.fill(self.free.len() as u32);
        let taken = writer.insert(self.free.iter().rev().copied()) as usize;
        writer.commit();
        self.free.truncate(self.free.len() - taken);
    }

    /// Looks at up to `max` descriptors waiting on the rx ring without taking them (the next
    /// [`QueueSocket::receive`] reads them): calls `each` with the endpoint id of every one
    /// whose metadata reads as such. For a worker to prefetch what their deliveries will touch;
    /// a descriptor in the middle of a chain has no metadata and may yield a stray id, which
    /// costs a useless prefetch and nothing else.
    pub fn peek_endpoints(&mut self, max: u32, mut each: impl FnMut(u32)) {
        let memory = self.umem.bytes();
        let mut reader = self.rx.receive(max);
        while let Some(desc) = reader.read() {
            if let Some(meta) = meta_before(memory, desc.addr) {
                each(meta.endpoint);
            }
        }
        // Dropped unreleased: the ring's consumer index stays where it was.
    }

    /// Reads up to `max` rx descriptors: calls `each` once for every packet (a frame of one
    /// descriptor as it lies in the UMEM, a chain gathered; a chain may end in a later call),
    /// then recycles the frames. Returns how many descriptors were read.
    pub fn receive(&mut self, max: u32, mut each: impl FnMut(Received<'_>)) -> u32 {
        let mut read = 0;
        let memory = self.umem.bytes();
        let frame_size = u64::from(FRAME_SIZE);
        let mut reader = self.rx.receive(max);
        while let Some(desc) = reader.read() {
            read += 1;
            let chunk = desc.addr - desc.addr % frame_size;
            let in_umem = chunk + frame_size <= memory.len() as u64;
            let end = desc.addr + u64::from(desc.len);
            let bytes = (in_umem && end <= chunk + frame_size)
                .then(|| &memory[desc.addr as usize..end as usize]);
            let meta = || bytes.and_then(|_| meta_before(memory, desc.addr));
            let last = desc.options & libc::XDP_PKT_CONTD == 0;
            match bytes {
                // The common case: a frame in one descriptor, handed over where it lies.
                Some(bytes) if last && !self.chain.is_open() => {
                    each(Received::Frame(bytes, meta()))
                }
                _ => {
                    let first = !self.chain.is_open();
                    let meta = if first { meta() } else { None };
                    if let Some(packet) = self.chain.push(bytes, meta, last) {
                        each(packet);
                    }
                }
            }
            // The kernel never hands out a chunk outside the UMEM; if it did, it is no frame.
            if in_umem {
                self.free.push(chunk);
            }
        }
        reader.release();
        drop(reader);
        self.refill();
        read
    }

    /// The socket's fd, for the XSKMAP.
    pub fn fd(&self) -> RawFd {
        self.user.as_raw_fd()
    }

    /// Whether the kernel maps the fill ring of this (bound) socket for another mapping, as a
    /// fast-path client would map a leased socket bound before the hand-over. Older kernels
    /// refuse (`EBUSY`: rings are mapped before the bind only).
    pub fn maps_bound_rings(&self) -> bool {
        let fd = self.fd();
        crate::sys::xdp::mmap_offsets(&fd).is_ok_and(|(_, fill)| {
            crate::sys::shm::Mapping::shared_at(
                &fd,
                (fill.desc + 8) as usize,
                libc::XDP_UMEM_PGOFF_FILL_RING,
                false,
            )
            .is_ok()
        })
    }

    /// The kernel's counters for this socket (XDP_STATISTICS: rx dropped, rx ring full, fill
    /// ring empty, …).
    pub fn statistics(&self) -> Result<XdpStatisticsV2, String> {
        self.user.statistics_v2().map_err(|e| e.to_string())
    }

    /// Frames in the UMEM, and how many sit on the free list (not with the kernel).
    pub fn frames(&self) -> (u32, usize) {
        (self.frames, self.free.len())
    }

    /// Frames handed to the fill ring that the kernel has not taken yet, and frames the kernel
    /// put on the rx ring that have not been read yet. With the free list, every frame of the
    /// UMEM is in one of these three places whenever no frame is being received: a frame
    /// missing from all three is lost.
    pub fn ring_frames(&self) -> (u32, u32) {
        (self.device.pending(), self.rx.available())
    }
}

impl AsRawFd for QueueSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd()
    }
}

/// A queue's AF_XDP socket for a fast-path lease (see "The fast path" in docs/ARCHITECTURE.md):
/// a fresh UMEM on a sealed memfd (so it holds no frame from before the lease), fill and rx
/// rings of `frames` entries, opened but not bound, so that the client can still map the rings
/// (the kernel refuses to map the rings of a bound socket). [`LeasedSocket::bind`] binds it
/// once the client said it has mapped them. The daemon never reads or fills it: the kernel
/// counters ([`LeasedSocket::statistics`]) and the rx ring's producer index (frames handed to
/// the client, [`LeasedSocket::handed_to_client`]) are all it keeps of the queue.
pub struct LeasedSocket {
    // Drop order: the daemon's view of the rx ring, rings and socket before the UMEM before
    // its memory.
    rx_head: Mapping,
    rx_producer: usize,
    handed: ProducedCount,
    _device: DeviceQueue,
    user: User,
    _socket: Socket,
    umem: UmemArea,
    memfd: std::fs::File,
    bound: bool,
    mode: BindMode,
    pub frames: u32,
}

impl LeasedSocket {
    /// Opens the socket on `iface` rx queue `queue` with `frames` frames (a power of two),
    /// unbound ([`LeasedSocket::bind`] binds it in `mode`).
    pub fn open(iface: &str, queue: u32, frames: u32, mode: BindMode) -> Result<Self, XskError> {
        let config = SocketConfig {
            rx_size: NonZeroU32::new(frames),
            tx_size: None,
            bind_flags: mode.flag(),
        };
        let mut memfd = None;
        let Parts {
            user,
            device,
            socket,
            umem,
        } = open_parts_on(iface, queue, frames, config, Some(&mut memfd))?;
        // The daemon's own view of the rx ring's producer index (mapped before the bind, which
        // every kernel allows), read-only where the kernel lets it be.
        let fd = user.as_raw_fd();
        let (rx_offsets, _) = crate::sys::xdp::mmap_offsets(&fd).map_err(|e| XskError::Step {
            iface: iface.to_owned(),
            queue,
            step: "reading the leased socket's ring offsets",
            errno: e.to_string(),
        })?;
        let rx_producer = rx_offsets.producer as usize;
        let len = rx_producer + size_of::<u32>();
        let rx_ring = libc::XDP_PGOFF_RX_RING as u64;
        let rx_head = Mapping::shared_at(&fd, len, rx_ring, false)
            .or_else(|_| Mapping::shared_at(&fd, len, rx_ring, true))
            .map_err(|e| XskError::Step {
                iface: iface.to_owned(),
                queue,
                step: "mapping the leased socket's rx ring (producer index)",
                errno: e.to_string(),
            })?;
        let handed = ProducedCount::starting_at(rx_head.u32_at(rx_producer).load(Acquire));
        Ok(Self {
            rx_head,
            rx_producer,
            handed,
            _device: device,
            user,
            _socket: socket,
            umem,
            memfd: memfd.expect("open_parts_on fills the memfd it is given"),
            bound: false,
            mode,
            frames,
        })
    }

    /// What the client receives with: a descriptor of the socket (to map its rx and fill rings,
    /// and to poll), and a read-only descriptor of the UMEM's memfd (it reads frames, never
    /// writes them: a read-only descriptor cannot be mapped writable, truncated or punched).
    pub fn client_fds(&self) -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
        let socket = crate::sys::dup(&self.fd())?;
        let umem = std::fs::File::open(format!("/proc/self/fd/{}", self.memfd.as_raw_fd()))?;
        Ok((socket, umem.into()))
    }

    /// Binds the socket to its queue (in the mode it was opened for), once the client has
    /// mapped its rings.
    pub fn bind(&mut self, iface: &str, queue: u32) -> Result<(), XskError> {
        if !self.bound {
            self.umem.umem().bind(&self.user).map_err(bind_error(
                iface,
                queue,
                self.mode,
                "binding the leased socket",
            ))?;
            self.bound = true;
        }
        Ok(())
    }

    /// Whether [`LeasedSocket::bind`] has bound it.
    pub fn is_bound(&self) -> bool {
        self.bound
    }

    /// The socket's fd, for the XSKMAP.
    pub fn fd(&self) -> RawFd {
        self.user.as_raw_fd()
    }

    /// The kernel's counters for this socket (XDP_STATISTICS).
    pub fn statistics(&self) -> Result<XdpStatisticsV2, String> {
        self.user.statistics_v2().map_err(|e| e.to_string())
    }

    /// Frames the kernel has put on the rx ring since the socket was opened, from the ring's
    /// producer index (read now; see [`ProducedCount`] for how often it must be read). The
    /// index sits in memory the client maps writable: the figure is the client's own claim
    /// about its own lease, any value taken without harm.
    pub fn handed_to_client(&mut self) -> u64 {
        let index = self.rx_head.u32_at(self.rx_producer).load(Acquire);
        self.handed.update(index)
    }
}

/// Entries a ring's producer has published, from its free-running `u32` index read now and
/// then: the forward distance from the previous read (wrapping) is added to a `u64`. Exact as
/// long as fewer than 2^32 entries are produced between two reads (the caller's bound). Any
/// index is taken: an index moved by someone else than the kernel (a fast-path client writing
/// its rx ring's head) adds at most 2^32 − 1 per read and never takes anything away; nothing
/// loops on it, and the sum saturates instead of overflowing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProducedCount {
    last: u32,
    total: u64,
}

impl ProducedCount {
    /// A count of 0 at producer index `index`.
    pub fn starting_at(index: u32) -> Self {
        Self {
            last: index,
            total: 0,
        }
    }

    /// Takes the producer index read now; returns the entries produced since the start.
    pub fn update(&mut self, index: u32) -> u64 {
        let produced = index.wrapping_sub(self.last);
        self.last = index;
        self.total = self.total.saturating_add(u64::from(produced));
        self.total
    }
}

/// An AF_XDP socket that only transmits, for the traffic generator: frames are written into
/// free UMEM chunks, queued on the tx ring, and their chunks come back through the completion
/// ring. In copy mode (veth) the kernel transmits inside the `sendto` that `send` makes.
pub struct TxSocket {
    tx: RingTx,
    device: DeviceQueue,
    _user: User,
    _socket: Socket,
    umem: UmemArea,
    free: Vec<u64>,
    frames: u32,
}

impl TxSocket {
    pub fn open(iface: &str, queue: u32, frames: u32) -> Result<Self, XskError> {
        let config = SocketConfig {
            rx_size: None,
            tx_size: NonZeroU32::new(frames),
            bind_flags: SocketConfig::XDP_BIND_COPY | SocketConfig::XDP_BIND_NEED_WAKEUP,
        };
        let Parts {
            user,
            device,
            socket,
            umem,
        } = open_parts(iface, queue, frames, config)?;
        let tx = user
            .map_tx()
            .map_err(step(iface, queue, "mapping the tx ring"))?;
        umem.umem()
            .bind(&user)
            .map_err(step(iface, queue, "binding (copy mode)"))?;
        Ok(Self {
            tx,
            device,
            _user: user,
            _socket: socket,
            umem,
            free: (0..u64::from(frames))
                .map(|i| i * u64::from(FRAME_SIZE))
                .collect(),
            frames,
        })
    }

    /// Takes back the chunks of transmitted frames.
    pub fn reap(&mut self) -> u32 {
        let mut reader = self.device.complete(self.frames);
        let mut n = 0;
        while let Some(addr) = reader.read() {
            self.free.push(addr - addr % u64::from(FRAME_SIZE));
            n += 1;
        }
        reader.release();
        n
    }

    /// Queues up to `max` frames, each written by `write(chunk) -> length`, and kicks the
    /// kernel. Returns how many were queued (fewer when chunks are still in flight).
    pub fn send(&mut self, max: u32, mut write: impl FnMut(&mut [u8]) -> usize) -> u32 {
        self.reap();
        let n = (max as usize).min(self.free.len());
        let start = self.free.len() - n;
        let memory = self.umem.bytes_mut();
        let descs: Vec<XdpDesc> = self.free[start..]
            .iter()
            .map(|&addr| {
                let chunk = &mut memory[addr as usize..(addr + u64::from(FRAME_SIZE)) as usize];
                let len = write(chunk) as u32;
                XdpDesc {
                    addr,
                    len,
                    options: 0,
                }
            })
            .collect();
        let mut writer = self.tx.transmit(n as u32);
        let queued = writer.insert(descs.into_iter()) as usize;
        writer.commit();
        drop(writer);
        // Chunks the ring took are in flight; the rest stay free.
        self.free.drain(start..start + queued);
        if queued > 0 || self.tx.needs_wakeup() {
            self.tx.wake();
        }
        queued as u32
    }

    /// Frames queued or in transmission (not yet completed).
    pub fn in_flight(&self) -> usize {
        self.frames as usize - self.free.len()
    }
}

/// The metadata the program wrote right before the frame at `addr` of the UMEM `memory`, in the
/// same chunk, if it reads as this ABI's; `None` for a chunk outside the UMEM or no room for it.
fn meta_before(memory: &[u8], addr: u64) -> Option<PacketMeta> {
    let frame_size = u64::from(FRAME_SIZE);
    let chunk = addr - addr % frame_size;
    let start = addr as usize;
    if chunk + frame_size > memory.len() as u64 || start < PacketMeta::LEN + chunk as usize {
        return None;
    }
    PacketMeta::read(&memory[start - PacketMeta::LEN..start])
        .filter(|meta| meta.version == PacketMeta::VERSION)
}

#[cfg(test)]
mod tests {
    use demux_common::meta::{PacketMeta, MAX_XSK_SEGMENTS};

    use super::{Chain, ChainError, ProducedCount, Received};

    fn meta(endpoint: u32) -> Option<PacketMeta> {
        Some(PacketMeta {
            version: PacketMeta::VERSION,
            protocol: 17,
            family: 4,
            endpoint,
            flow_hash: 0,
            l4_offset: 34,
            payload_offset: 42,
            l3_offset: 14,
            _pad: 0,
        })
    }

    /// What a finished packet was: its bytes and endpoint, or why it broke.
    fn outcome(received: Option<Received<'_>>) -> Option<Result<(Vec<u8>, u32), ChainError>> {
        received.map(|r| match r {
            Received::Frame(bytes, meta) => Ok((bytes.to_vec(), meta.unwrap().endpoint)),
            Received::Broken(e) => Err(e),
        })
    }

    #[test]
    fn a_chain_is_gathered_in_order_with_the_first_descriptors_metadata() {
        let mut chain = Chain::default();
        assert!(!chain.is_open());
        assert_eq!(outcome(chain.push(Some(b"abc"), meta(5), false)), None);
        assert!(chain.is_open());
        // Only the first descriptor's metadata counts.
        assert_eq!(outcome(chain.push(Some(b"de"), meta(9), false)), None);
        assert_eq!(
            outcome(chain.push(Some(b"f"), None, true)),
            Some(Ok((b"abcdef".to_vec(), 5)))
        );
        assert!(!chain.is_open());
        // The next chain starts empty.
        assert_eq!(
            outcome(chain.push(Some(b"xy"), meta(6), true)),
            Some(Ok((b"xy".to_vec(), 6)))
        );
    }

    #[test]
    fn a_broken_chain_is_reported_once_at_its_last_descriptor_and_the_next_is_whole() {
        let mut chain = Chain::default();
        // A descriptor out of bounds in the middle.
        assert_eq!(outcome(chain.push(Some(b"a"), meta(1), false)), None);
        assert_eq!(outcome(chain.push(None, None, false)), None);
        assert_eq!(outcome(chain.push(Some(b"c"), None, false)), None);
        assert_eq!(
            outcome(chain.push(Some(b"d"), None, true)),
            Some(Err(ChainError::OutOfFrame))
        );
        // More descriptors than the program lets through: dropped at the end, not before.
        for i in 0..MAX_XSK_SEGMENTS + 3 {
            assert_eq!(outcome(chain.push(Some(b"z"), meta(2), false)), None, "{i}");
        }
        assert_eq!(
            outcome(chain.push(Some(b"z"), None, true)),
            Some(Err(ChainError::TooLong))
        );
        // Exactly the most it takes: whole.
        for _ in 0..MAX_XSK_SEGMENTS - 1 {
            assert_eq!(outcome(chain.push(Some(b"q"), meta(3), false)), None);
        }
        assert_eq!(
            outcome(chain.push(Some(b"q"), None, true)),
            Some(Ok((vec![b'q'; MAX_XSK_SEGMENTS as usize], 3)))
        );
    }

    #[test]
    fn a_producer_index_is_counted_across_its_wrap() {
        let mut count = ProducedCount::starting_at(u32::MAX - 9);
        assert_eq!(count.update(u32::MAX - 9), 0);
        assert_eq!(count.update(u32::MAX), 9);
        // Past the wrap: 0 is one further, 5 six further.
        assert_eq!(count.update(0), 10);
        assert_eq!(count.update(5), 15);
        // Many wraps, each read less than 2^32 after the last: all counted.
        let mut index = 5u32;
        for _ in 0..10 {
            index = index.wrapping_add(3_000_000_000);
            count.update(index);
        }
        assert_eq!(count.update(index), 15 + 30_000_000_000);
    }

    #[test]
    fn any_index_a_client_writes_only_adds_and_never_overflows() {
        let mut count = ProducedCount::starting_at(100);
        // Backwards: taken as almost a full wrap forwards, never as a decrease.
        let after = count.update(99);
        assert_eq!(after, u64::from(u32::MAX));
        let mut previous = after;
        for index in [0, u32::MAX, 1, u32::MAX / 2, 7, 7] {
            let now = count.update(index);
            assert!(now >= previous, "{now} < {previous}");
            previous = now;
        }
        let mut count = ProducedCount {
            last: 0,
            total: u64::MAX - 1,
        };
        assert_eq!(count.update(u32::MAX), u64::MAX);
        assert_eq!(count.update(0), u64::MAX);
    }
}
