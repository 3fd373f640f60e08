//! The library's one place for `unsafe`: thin, safe wrappers over the system calls and raw
//! memory the rest of the crate needs. Every other module is `#![deny(unsafe_code)]` (set at the
//! crate root); every block here carries a `SAFETY:` comment (`clippy::undocumented_unsafe_blocks`).
//!
//! - [`caps`]: reading and lowering the process's capabilities (capget/capset, prctl).
//! - [`scm`]: sending and receiving descriptors over Unix sockets (SCM_RIGHTS).
//! - [`shm`]: shared and anonymous memory mappings with bounds-checked access.
//! - [`sockaddr`]: `SocketAddr` to the C socket address types.
//! - [`flock`]: the exclusive advisory lock libxdp's multi-program protocol takes.
//! - [`netlink`]: a raw `NETLINK_ROUTE` socket (the local routes), an interface's MAC address.
//! - [`socket`]: socket options, namespace cookies and receiving with the destination address.
//! - [`xdp`]: where an AF_XDP socket's rings sit in its mapping (`XDP_MMAP_OFFSETS`).
//! - the functions below: memfd, eventfd, poll, interface and group lookups, the effective uid,
//!   what a passed descriptor is (its access mode, its socket domain and type, a memfd's seals,
//!   whether it is an eventfd), descriptors inherited through `sd_listen_fds`, random bytes, a
//!   cache prefetch hint.

#![deny(missing_docs)]

pub mod caps;
pub mod flock;
pub mod netlink;
pub mod scm;
pub mod shm;
pub mod sockaddr;
pub mod socket;
pub mod xdp;

use std::{
    ffi::CString,
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

/// Turns a returned descriptor into an owned one, or the call's error.
fn owned(fd: i32) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned to us and nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A new anonymous memory file named `name`: close-on-exec, sealable, and not executable
/// (`MFD_NOEXEC_SEAL` where the kernel has it, 6.3 and later).
pub fn memfd(name: &std::ffi::CStr) -> io::Result<File> {
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: a valid NUL-terminated name; the result is checked by `owned`.
    let sealed = owned(unsafe { libc::memfd_create(name.as_ptr(), flags | libc::MFD_NOEXEC_SEAL) });
    match sealed {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // SAFETY: as above, without the flag older kernels do not know.
            owned(unsafe { libc::memfd_create(name.as_ptr(), flags) }).map(File::from)
        }
        other => other.map(File::from),
    }
}

/// Whether the kernel takes `MFD_NOEXEC_SEAL` (6.3 and later): creates and closes a probe.
pub fn has_memfd_noexec_seal() -> bool {
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING | libc::MFD_NOEXEC_SEAL;
    // SAFETY: a valid NUL-terminated name; the descriptor is owned and closed at once.
    owned(unsafe { libc::memfd_create(c"demux-probe".as_ptr(), flags) }).is_ok()
}

/// Seals `memfd`'s size for good: no one holding it (the client included) can shrink or grow
/// it, or change the seals, so a mapping of it can never fault (no SIGBUS).
pub fn seal_size(memfd: &File) -> io::Result<()> {
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a descriptor we own, with an integer argument.
    if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A memfd's seals (`F_GET_SEALS`); `EINVAL` for a descriptor that is no memfd.
pub fn seals(memfd: &impl AsRawFd) -> io::Result<i32> {
    // SAFETY: fcntl on a descriptor we hold, without an argument; it only reads the seals.
    let seals = unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(seals)
}

/// Seals `memfd` for good against any change: writes, size, new seals (a record handed to
/// the next daemon).
pub fn seal_all(memfd: &File) -> io::Result<()> {
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a descriptor we own, with an integer argument.
    if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `fd` is an eventfd (its `/proc/self/fd` link says `anon_inode:[eventfd]`).
pub fn is_eventfd(fd: &impl AsRawFd) -> io::Result<bool> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    Ok(link.as_os_str() == "anon_inode:[eventfd]")
}

/// The descriptors the service manager passed (sd_listen_fds(3) with `unset_environment`):
/// when `LISTEN_PID` is this process, the `LISTEN_FDS` descriptors from 3 on, each with its
/// name from `LISTEN_FDNAMES`, made close-on-exec and owned from here on; the three variables
/// are unset in any case, so a second call takes nothing. At most `max` are taken. Call it
/// before anything opens a descriptor: the numbers are taken as inherited. Also returns what
/// was wrong with the variables.
pub fn listen_fds(max: usize) -> (Vec<(String, OwnedFd)>, Vec<String>) {
    let var = |name| std::env::var(name).ok();
    let (pid, count, names) = (var("LISTEN_PID"), var("LISTEN_FDS"), var("LISTEN_FDNAMES"));
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
    let mut problems = Vec::new();
    let Some(pid) = pid else {
        return (Vec::new(), problems);
    };
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        problems.push(format!(
            "LISTEN_PID={pid} is not this process ({}): no descriptor taken",
            std::process::id()
        ));
        return (Vec::new(), problems);
    }
    let count = match count.as_deref().map(str::parse::<usize>) {
        Some(Ok(n)) if n <= max => n,
        _ => {
            problems.push(format!(
                "LISTEN_FDS={count:?}: not a count up to {max}; no descriptor taken"
            ));
            return (Vec::new(), problems);
        }
    };
    let names: Vec<&str> = names.as_deref().unwrap_or("").split(':').collect();
    let mut fds = Vec::new();
    for k in 0..count {
        let fd = 3 + k as RawFd;
        // SAFETY: F_GETFD only reads the descriptor's flags; a closed number gives EBADF.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            problems.push(format!(
                "LISTEN_FDS names descriptor {fd}, which is not open"
            ));
            continue;
        }
        // SAFETY: an open descriptor inherited at exec (the variables said so, for this very
        // process, and they are gone now, so no one takes it twice); nothing in this process
        // owns it yet, as the caller runs this before opening any.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: fcntl on the descriptor just taken, with an integer argument.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            problems.push(format!(
                "descriptor {fd}: F_SETFD: {}",
                io::Error::last_os_error()
            ));
        }
        fds.push((names.get(k).copied().unwrap_or("").to_owned(), owned));
    }
    (fds, problems)
}

/// A close-on-exec duplicate of `fd` (`F_DUPFD_CLOEXEC`), for descriptors held by types that
/// offer only `AsRawFd` (xdpilone's sockets).
pub fn dup(fd: &impl AsRawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl with an integer argument; a closed or invalid descriptor gives EBADF,
    // and the result is checked by `owned`.
    owned(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })
}

/// A new non-blocking, close-on-exec eventfd. Read and write it as a `File` (8 bytes each).
pub fn eventfd() -> io::Result<File> {
    // SAFETY: plain syscall; the result is checked by `owned`.
    owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) }).map(File::from)
}

/// Waits for events on `fds` for at most `timeout_ms` (-1: forever). Returns how many are
/// ready; `Ok(0)` on timeout or when a signal interrupted the wait.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfds.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if ready < 0 {
        let error = io::Error::last_os_error();
        return match error.kind() {
            io::ErrorKind::Interrupted => Ok(0),
            _ => Err(error),
        };
    }
    Ok(ready as usize)
}

/// The pollfd for `fd` waiting for `events`.
pub fn pollfd(fd: &impl AsRawFd, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    }
}

/// The interface index of `name`, if there is such an interface.
pub fn if_nametoindex(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated name; the call only reads it.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => None,
        index => Some(index),
    }
}

/// The gid of group `name`, if there is such a group.
pub fn group_id(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: a valid C string; getgrnam returns null or a pointer to static storage that we
    // read at once, before any other call could overwrite it.
    let entry = unsafe { libc::getgrnam(name.as_ptr()) };
    // SAFETY: non-null, just returned by getgrnam.
    (!entry.is_null()).then(|| unsafe { (*entry).gr_gid })
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Fills `buf` with random bytes from the kernel (`getrandom(2)`, no flags: it waits, once per
/// boot, until the kernel's pool is initialised, so a key drawn early at boot is never weak).
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid, exclusively borrowed buffer of `rest.len()` bytes.
        let got = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if got < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        filled += got as usize;
    }
    Ok(())
}

/// Now on CLOCK_MONOTONIC, in ns: the clock of the traffic generator's send stamps, the same in
/// every network namespace of the host.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Asks the CPU to bring the cache line holding `value` into its caches (a hint: no effect on
/// the program's meaning; nothing on other architectures). A queue worker issues these for a
/// whole batch before it delivers, so the batch's misses overlap instead of coming one by one.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 only hints; it never faults and reads nothing the program sees, and SSE
    // is part of every x86_64 CPU. The pointer comes from a reference, so it is valid anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (value as *const T).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// How a descriptor was opened: `O_RDONLY`, `O_WRONLY` or `O_RDWR` (`fcntl(F_GETFL)`).
pub fn access_mode(fd: &impl AsRawFd) -> io::Result<i32> {
    // SAFETY: F_GETFL takes no argument and only reads the descriptor's flags.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags & libc::O_ACCMODE)
}

/// A socket's domain and type (`SO_DOMAIN`, `SO_TYPE`), e.g. `(AF_UNIX, SOCK_DGRAM)`;
/// `ENOTSOCK` for a descriptor that is no socket.
pub fn socket_kind(fd: &impl AsRawFd) -> io::Result<(i32, i32)> {
    Ok((
        socket::int_option(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?,
        socket::int_option(fd, libc::SOL_SOCKET, libc::SO_TYPE)?,
    ))
}

/// A value whose `as_raw_fd` names the same open descriptor for the value's whole life: what
/// tokio's `AsyncFd` requires.
///
/// # Safety
///
/// Implement only for types that own their descriptor and never swap or close it while alive.
#[cfg(feature = "async")]
pub unsafe trait StableFd: AsRawFd {}

// SAFETY: an OwnedFd owns its descriptor and closes it only when dropped.
#[cfg(feature = "async")]
unsafe impl StableFd for OwnedFd {}

// SAFETY: the logger owns its ring buffer's map descriptor and keeps it, unchanged, until dropped.
#[cfg(feature = "daemon")]
unsafe impl<T> StableFd for aya_log::EbpfLogger<T> {}

/// Registers `inner` with the tokio reactor for readability.
#[cfg(feature = "async")]
pub fn async_readable<T: StableFd>(inner: T) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `StableFd` promises the descriptor stays open and the same while `inner` lives,
    // which is as long as the AsyncFd holds it.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE)
    }
    .map_err(io::Error::from)
}

/// A UMEM registered on its own anonymous memory. Fields drop in order: the UMEM before the
/// memory it was registered on.
#[cfg(feature = "daemon")]
pub struct UmemArea {
    umem: xdpilone::Umem,
    area: shm::Mapping,
}

#[cfg(feature = "daemon")]
impl UmemArea {
    /// Maps `len` bytes and registers them as a UMEM with `config`.
    pub fn new(config: xdpilone::UmemConfig, len: usize) -> Result<Self, UmemError> {
        let area = shm::Mapping::anonymous(len).map_err(UmemError::Mmap)?;
        // SAFETY: `area` is page aligned and `len` bytes long, and it outlives the UMEM: both
        // live in this struct, the UMEM dropped first.
        let umem = unsafe { xdpilone::Umem::new(config, area.region()) }
            .map_err(|errno| UmemError::Register(errno.to_string()))?;
        Ok(Self { umem, area })
    }

    /// As [`UmemArea::new`], on a sealed memfd of `len` bytes instead of anonymous memory, so
    /// that another process can map the frames (a fast-path lease, `crate::xsk::LeasedSocket`);
    /// returns the memfd too.
    pub fn on_memfd(config: xdpilone::UmemConfig, len: usize) -> Result<(Self, File), UmemError> {
        let memfd = memfd(c"demux-umem").map_err(UmemError::Mmap)?;
        memfd.set_len(len as u64).map_err(UmemError::Mmap)?;
        seal_size(&memfd).map_err(UmemError::Mmap)?;
        let area = shm::Mapping::shared(&memfd, len).map_err(UmemError::Mmap)?;
        // SAFETY: as in `new`: page aligned, `len` bytes, outlives the UMEM registered on it.
        let umem = unsafe { xdpilone::Umem::new(config, area.region()) }
            .map_err(|errno| UmemError::Register(errno.to_string()))?;
        Ok((Self { umem, area }, memfd))
    }

    /// The UMEM, to create sockets and rings on.
    pub fn umem(&self) -> &xdpilone::Umem {
        &self.umem
    }

    /// The frames' memory.
    pub fn bytes(&self) -> &[u8] {
        self.area.as_slice()
    }

    /// The frames' memory, to write frames to send.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.area.as_mut_slice()
    }
}

/// Why a [`UmemArea`] could not be made.
#[cfg(feature = "daemon")]
#[derive(Debug, thiserror::Error)]
pub enum UmemError {
    /// The memory could not be mapped.
    #[error("mapping the UMEM memory: {0}")]
    Mmap(io::Error),
    /// The kernel refused the UMEM.
    #[error("registering the UMEM: {0}")]
    Register(String),
}
